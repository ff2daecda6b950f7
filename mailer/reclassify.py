"""`campaigns inbox reclassify`: mend the past under the reason rules of issue 14.

Before those rules any permanent failure was a hard bounce, so a blocklisting or a spam
verdict suppressed people whose addresses work. This re-reads what is stored about each
hard-bounce suppression (the status codes and the server's words) and lifts those whose
every piece of evidence now reads as something other than the address: a block, a full
mailbox, a temporary failure. Each lift is a ledger entry (`suppression_changes`) with
its reason. Nothing is lifted on no evidence or on evidence that reads as unknown, and
never a suppression that came from a complaint, an unsubscribe or an erasure.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine

from campaigns.addresses import redact_cut
from campaigns.bounce_reasons import GROUP, Group, Reason
from campaigns.db import session_scope
from campaigns.returns import BounceEvidence, hard_bounce_evidence
from campaigns.suppression import lift_bounce
from mailer.reasons import reason_for

SOURCE = "inbox reclassify"


@dataclass(frozen=True)
class Lift:
    address_hash: str
    campaign_id: int | None
    reason: Reason
    why: str


def judge(evidence: BounceEvidence) -> Lift | None:
    """The lift this evidence calls for under today's rules, or None to keep it."""
    if not evidence.texts:
        return None
    reasons = [reason_for(status, text) for status, text in evidence.texts]
    if any(GROUP[r] in (Group.ADDRESS, Group.UNKNOWN) for r in reasons):
        return None
    status, text = evidence.texts[0]
    words = redact_cut(" ".join(part for part in (status, text) if part), 200)
    why = f"reclassified as {reasons[0].value} ({GROUP[reasons[0]].value}): {words}"
    return Lift(evidence.address_hash, evidence.campaign_id, reasons[0], why)


def reclassify(engine: Engine, dry_run: bool = False) -> list[Lift]:
    """Lift the hard-bounce suppressions the rules now read otherwise; with dry_run,
    only say which."""
    with session_scope(engine) as session:
        found = [(e, judge(e)) for e in hard_bounce_evidence(session)]
        lifts = [(e, lift) for e, lift in found if lift is not None]
        if not dry_run:
            for evidence, lift in lifts:
                lift_bounce(session, lift.address_hash, lift.why, SOURCE, evidence.contact_id)
        else:
            session.rollback()
    return [lift for _, lift in lifts]
