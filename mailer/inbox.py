"""`campaigns inbox process`: read the return mailbox once and apply what came back.

Each message is classified (`mailer.bounces`), tied to its delivery by a verified token
(VERP `bounces+<token>@`, the mailto `unsubscribe+<token>@`, or the unsubscribe URL inside
a complaint's copy of our message) or by the failed address, and applied by
`campaigns.returns` in one transaction. Only after that transaction commits is the
message marked in the mailbox; should the run die in between, the next run reads it
again and the unique message hash makes it a no-op. Nothing is ever deleted: what cannot
be understood, or names nobody we mailed, is kept, flagged and reported.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError

from campaigns import addresses
from campaigns.config import Settings
from campaigns.db import session_scope
from campaigns.reports import anonymous_reason
from campaigns.returns import Effect, Outcome, Policy, Returned, already_applied, apply
from mailer.bounces import MAX_DIAGNOSTIC, Kind, Verdict, classify
from mailer.mailbox import Mailbox, open_mailbox
from mailer.tokens import TokenKind, TokenSigner, signer_from_settings

_EFFECTS = {
    Kind.HARD_BOUNCE: Effect.HARD_BOUNCE,
    Kind.SOFT_BOUNCE: Effect.SOFT_BOUNCE,
    Kind.BLOCKED: Effect.BLOCK,
    Kind.COMPLAINT: Effect.COMPLAINT,
    Kind.UNSUBSCRIBE: Effect.MAILTO,
}
# More failed recipients than this in one report: matched by token only (see understand).
MAX_RECIPIENTS = 5
WORDS = {
    Effect.HARD_BOUNCE: "hard bounce",
    Effect.SOFT_BOUNCE: "soft bounce",
    Effect.BLOCK: "block",
    Effect.COMPLAINT: "complaint",
    Effect.MAILTO: "mailto unsubscribe",
}


class InboxNotConfigured(Exception):
    """No return mailbox is configured; the message is one line for the user."""


@dataclass
class InboxReport:
    """What one run did; aggregate, with kept messages named by mailbox key only."""

    read: int = 0
    applied: dict[str, int] = field(default_factory=lambda: {e.value: 0 for e in Effect})
    # Recipients of bounces by reason (campaigns.bounce_reasons), aggregate.
    reasons: dict[str, int] = field(default_factory=dict)
    suppressed: int = 0
    withdrawn: int = 0
    ignored: int = 0
    duplicates: int = 0
    # (mailbox key, why it was kept for a human)
    kept: list[tuple[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            "read": self.read,
            **self.applied,
            "suppressed": self.suppressed,
            "withdrawn": self.withdrawn,
            "ignored": self.ignored,
            "duplicates": self.duplicates,
            "reasons": dict(sorted(self.reasons.items())),
            "kept": [{"key": k, "reason": r} for k, r in self.kept],
        }


def _verified(
    signer: TokenSigner, verdict: Verdict, effect: Effect
) -> tuple[int, int] | tuple[None, None]:
    """The (contact, campaign) of the first token that verifies, best evidence first."""
    candidates: list[tuple[TokenKind, str]] = []
    if effect is not Effect.MAILTO:
        candidates += [(TokenKind.BOUNCE, t) for t in verdict.bounce_tokens]
    candidates += [(TokenKind.UNSUBSCRIBE, t) for t in verdict.unsubscribe_tokens]
    for kind, token in candidates:
        ids = signer.verify(kind, token)
        if ids is not None:
            return ids
    return None, None


def understand(raw: bytes, signer: TokenSigner) -> tuple[Verdict, list[Returned]]:
    """Classify a message; for one with an effect, what `campaigns.returns` needs: one
    item per recipient of a bounce, each judged on its own."""
    verdict = classify(raw)
    effect = _EFFECTS.get(verdict.kind)
    if effect is None:
        return verdict, []
    contact_id, campaign_id = _verified(signer, verdict, effect)
    digest = hashlib.sha256(raw).hexdigest()
    if not verdict.failures:
        return verdict, [
            Returned(
                effect=effect,
                message_hash=digest,
                contact_id=contact_id,
                campaign_id=campaign_id,
                addresses=verdict.recipients if effect is not Effect.MAILTO else (),
                status=verdict.status,
                reason=verdict.cause.value,
                detector=verdict.detector,
            )
        ]
    # Our messages have one recipient each: a report naming many is no bounce of ours
    # (or a relay's expansion); by address alone it could name anyone we mailed.
    crowded = len(verdict.failures) > MAX_RECIPIENTS
    if crowded and contact_id is None:
        return verdict, []
    items = []
    for i, failure in enumerate(verdict.failures):
        first = i == 0
        items.append(
            Returned(
                effect=_EFFECTS[failure.kind],
                # The first keeps the message's own hash (a second reading is a no-op);
                # the others are told apart by their address.
                message_hash=digest
                if first
                else hashlib.sha256(raw + b"\0" + ",".join(failure.addresses).encode()).hexdigest(),
                # The token names one person: it counts for the failure naming them, or
                # for the only one (a relay may report a forwarded address).
                contact_id=contact_id,
                campaign_id=campaign_id,
                sole=len(verdict.failures) == 1,
                by_address=not crowded,
                addresses=failure.addresses or (verdict.recipients if first else ()),
                status=failure.status,
                reason=failure.cause.value,
                diagnostic=addresses.redact_cut(
                    failure.diagnostic, 300, was_cut=len(failure.diagnostic) >= MAX_DIAGNOSTIC
                ),
                detector=verdict.detector,
            )
        )
    return verdict, items


def _apply(engine: Engine, item: Returned, policy: Policy) -> Outcome:
    for attempt in range(3):
        try:
            with session_scope(engine) as session:
                return apply(session, item, policy)
        except IntegrityError:
            # A concurrent run (PostgreSQL) inserted the same message, or a suppression
            # of the same address, between our check and our insert: look again.
            with session_scope(engine) as session:
                if already_applied(session, item.message_hash):
                    return Outcome(matched=True, duplicate=True)
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def process(
    box: Mailbox,
    engine: Engine,
    signer: TokenSigner,
    policy: Policy,
    on_message: Callable[[InboxReport], None] | None = None,
    report: InboxReport | None = None,
) -> InboxReport:
    """Read every unprocessed message once; ``report`` (when given) is filled as it goes,
    so that a caller still knows what was done when the mailbox fails half-way."""
    report = report if report is not None else InboxReport()
    for key, raw in box.unprocessed():
        report.read += 1
        verdict, items = understand(raw, signer)
        if verdict.kind in (Kind.AUTO_REPLY, Kind.IGNORED):
            report.ignored += 1
            box.mark_processed(key)
        elif not items and len(verdict.failures) > MAX_RECIPIENTS:
            many = f"a report naming {len(verdict.failures)} recipients and no token of ours"
            report.kept.append((key, many))
            box.mark_unknown(key)
        elif not items:
            why = anonymous_reason(verdict.reason) if verdict.reason else ""
            report.kept.append((key, f"not understood{': ' + why if why else ''}"))
            box.mark_unknown(key)
        else:
            outcomes = [(item, _apply(engine, item, policy)) for item in items]
            if all(o.duplicate for _, o in outcomes):
                report.duplicates += 1
                box.mark_processed(key)
            elif not any(o.matched for _, o in outcomes):
                report.kept.append((key, f"{WORDS[items[0].effect]} naming no delivery of ours"))
                box.mark_unknown(key)
            else:
                for item, outcome in outcomes:
                    if not outcome.matched or outcome.duplicate:
                        continue
                    report.applied[item.effect.value] += 1
                    report.suppressed += outcome.suppressed
                    report.withdrawn += outcome.withdrawn
                    if item.reason and item.effect is not Effect.MAILTO:
                        report.reasons[item.reason] = report.reasons.get(item.reason, 0) + 1
                box.mark_processed(key)
        if on_message is not None:
            on_message(report)
    return report


def process_inbox(
    settings: Settings, engine: Engine, report: InboxReport | None = None
) -> InboxReport:
    """One run over the configured return mailbox (CAMPAIGNS_INBOX_URL)."""
    if not settings.inbox_url:
        raise InboxNotConfigured(
            "no return mailbox: set CAMPAIGNS_INBOX_URL "
            "(maildir:///path or imaps://user:pass@host/INBOX)"
        )
    policy = Policy(
        policy_version=settings.policy_version,
        soft_bounce_limit=settings.soft_bounce_limit,
        soft_bounce_days=settings.soft_bounce_days,
    )
    signer = signer_from_settings(settings)
    with open_mailbox(settings.inbox_url) as box:
        return process(box, engine, signer, policy, report=report)
