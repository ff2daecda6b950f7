"""What came back to the return mailbox, and its effect (DESIGN.md §2, §4; issue 6).

The mailer reads and understands the messages; this module applies one: a hard bounce
suppresses the address, soft bounces suppress it once `limit` fall within `days`, a
complaint withdraws every purpose and suppresses, a mailto unsubscribe withdraws the
campaign's purpose. Every effect is written with the delivery it belongs to, in one
transaction with a `ReturnEvent` whose unique message hash makes a second reading of the
same message change nothing.

A returned message names its delivery by a signed token (verified by the caller) or, when
the token is missing or mangled, by the failed recipient's address. Anyone can send mail
to the return domain, so an address alone is trusted only for a bounce, and only when we
sent that person a campaign within ADDRESS_MATCH_DAYS: a complaint or a mailto
unsubscribe withdraws consent for good (the person's own "no"), and needs a token.
One delivery is counted once per kind: the 24-, 48- and 72-hour delay warnings of one
message are one soft bounce, and two copies of one bounce are one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import func
from sqlmodel import Session, col, select

from campaigns import addresses, consent, suppression
from campaigns.bounce_reasons import GROUP, Reason
from campaigns.db import meta_value
from campaigns.models import Campaign, Contact, Delivery, ReturnEvent, Suppression, utcnow
from campaigns.purposes import Kind, Purpose, SuppressionReason

# Deliveries whose message left us: only these can bounce or be complained about.
_LEFT_US = ("sent", "in_doubt")
# A bounce without a valid token must name a delivery at most this old: late bounces
# come within days (queue lifetimes are about five), forged ones at any time.
ADDRESS_MATCH_DAYS = 30


class Effect(StrEnum):
    HARD_BOUNCE = "hard_bounce"
    SOFT_BOUNCE = "soft_bounce"
    BLOCK = "block"  # the receiving side refused us, not the person: counted, nothing else
    COMPLAINT = "complaint"
    MAILTO = "mailto"


# The source written on consent events and suppressions (DESIGN.md §2).
SOURCE = {
    Effect.HARD_BOUNCE: "bounce",
    Effect.SOFT_BOUNCE: "bounce",
    Effect.BLOCK: "bounce",
    Effect.COMPLAINT: "complaint",
    Effect.MAILTO: "mailto",
}


@dataclass(frozen=True)
class Returned:
    """One understood message: what it is and what names its delivery."""

    effect: Effect
    message_hash: str
    # From a verified token: the contact and campaign it was signed for.
    contact_id: int | None = None
    campaign_id: int | None = None
    # Fallback when no token verifies: the failed or complained-about addresses.
    addresses: tuple[str, ...] = ()
    status: str = ""
    # A report naming several recipients: the token (which names one person) counts
    # only for the failure naming that person; `sole` is True when there is just one.
    sole: bool = True
    # False: never matched by address alone (a report naming more recipients than a
    # bounce of ours would; anyone can send one, naming anyone).
    by_address: bool = True
    # campaigns.bounce_reasons.Reason, and the server's words with addresses taken out.
    reason: str = ""
    diagnostic: str = ""
    detector: str = ""  # what read it (mailer.bounces.Verdict.detector)


@dataclass(frozen=True)
class Policy:
    policy_version: str
    soft_bounce_limit: int = 3
    soft_bounce_days: int = 14


@dataclass(frozen=True)
class Outcome:
    """What applying a message did; `matched` is False when it names nobody we mailed."""

    matched: bool
    duplicate: bool = False
    suppressed: bool = False
    withdrawn: int = 0
    campaign_id: int | None = None


def _delivery_for_token(
    session: Session, contact_id: int, campaign_id: int
) -> tuple[Contact, Delivery] | None:
    row = session.exec(
        select(Contact, Delivery)
        .join(Delivery, col(Delivery.contact_id) == Contact.id)
        .where(Contact.id == contact_id, Delivery.campaign_id == campaign_id)
    ).first()
    return (row[0], row[1]) if row else None


def _delivery_for_address(
    session: Session, address: str, now: datetime
) -> tuple[Contact, Delivery] | None:
    """The newest recent delivery that left us for this address (compared without case)."""
    key = addresses.key(addresses.normalise(address))
    since = now - timedelta(days=ADDRESS_MATCH_DAYS)
    row = session.exec(
        select(Contact, Delivery)
        .join(Delivery, col(Delivery.contact_id) == Contact.id)
        .where(
            Contact.email_key == key,
            col(Delivery.status).in_(_LEFT_US),
            func.coalesce(Delivery.sent_at, Delivery.claimed_at) >= since,
        )
        .order_by(col(Delivery.id).desc())
        .limit(1)
    ).first()
    return (row[0], row[1]) if row else None


def find_target(
    session: Session, item: Returned, now: datetime | None = None
) -> tuple[Contact, Delivery] | None:
    """The contact and delivery the message is about: the token first, then addresses."""
    if item.contact_id is not None and item.campaign_id is not None:
        found = _delivery_for_token(session, item.contact_id, item.campaign_id)
        named = {addresses.key(a) for a in item.addresses}
        if found is not None and (item.sole or not named or found[0].email_key in named):
            return found
    if item.effect in (Effect.MAILTO, Effect.COMPLAINT) or not item.by_address:
        # Anyone can write to the return domain, naming anyone: only a token counts.
        return None
    for address in item.addresses:
        if addresses.is_valid(addresses.normalise(address)):
            found = _delivery_for_address(session, address, now or utcnow())
            if found is not None:
                return found
    return None


def _group_name(reason: str) -> str:
    try:
        return GROUP[Reason(reason)].value
    except ValueError:
        return ""


def _domain(email: str) -> str:
    return email.rpartition("@")[2].lower()[:255]


def _counted(session: Session, delivery_id: int | None, effect: Effect) -> bool:
    """True when this delivery already brought back a message of this kind."""
    return (
        session.exec(
            select(ReturnEvent.id).where(
                ReturnEvent.delivery_id == delivery_id, ReturnEvent.kind == effect.value
            )
        ).first()
        is not None
    )


def already_applied(session: Session, message_hash: str) -> bool:
    return (
        session.exec(select(ReturnEvent.id).where(ReturnEvent.message_hash == message_hash)).first()
        is not None
    )


def _purpose_of(session: Session, campaign_id: int) -> Purpose | None:
    kind = session.exec(select(Campaign.kind).where(Campaign.id == campaign_id)).first()
    try:
        return Kind(kind).purpose if kind else None
    except ValueError:
        return None


def soft_bounces_within(session: Session, address_hash: str, days: int, now: datetime) -> int:
    return session.exec(
        select(func.count())
        .select_from(ReturnEvent)
        .where(
            ReturnEvent.address_hash == address_hash,
            ReturnEvent.kind == Effect.SOFT_BOUNCE.value,
            col(ReturnEvent.occurred_at) >= now - timedelta(days=days),
        )
    ).one()


def apply(session: Session, item: Returned, policy: Policy, now: datetime | None = None) -> Outcome:
    """Apply one returned message inside the caller's transaction."""
    now = now or utcnow()
    if already_applied(session, item.message_hash):
        return Outcome(matched=True, duplicate=True)  # already processed
    target = find_target(session, item, now)
    if target is None:
        return Outcome(matched=False)
    contact, delivery = target
    campaign_id, delivery_id = delivery.campaign_id, delivery.id
    if _counted(session, delivery_id, item.effect):
        return Outcome(matched=True, duplicate=True)  # already counted
    source = SOURCE[item.effect]
    address_hash = suppression.hash_for(session, contact.email)
    session.add(
        ReturnEvent(
            message_hash=item.message_hash,
            kind=item.effect.value,
            address_hash=address_hash,
            status=item.status[:20],
            occurred_at=now,
            campaign_id=campaign_id,
            delivery_id=delivery_id,
            reason=item.reason[:30],
            reason_group=_group_name(item.reason),
            domain=_domain(contact.email) if item.effect is Effect.BLOCK else "",
            diagnostic=item.diagnostic[:300],
            detector=item.detector[:30],
        )
    )
    session.flush()
    withdrawn = 0
    suppressed = False

    def withdraw(purposes: list[Purpose]) -> None:
        nonlocal withdrawn
        for p in purposes:
            event = consent.record(
                session,
                contact,
                p,
                granted=False,
                source=source,
                policy_version=policy.policy_version,
                campaign_id=campaign_id,
                delivery_id=delivery_id,
                when=now,
            )
            withdrawn += event is not None

    def suppress(reason: SuppressionReason) -> None:
        nonlocal suppressed
        suppressed = suppression.suppress(
            session,
            contact.email,
            reason,
            source=source,
            campaign_id=campaign_id,
            delivery_id=delivery_id,
        )

    if item.effect is Effect.HARD_BOUNCE:
        suppress(SuppressionReason.HARD_BOUNCE)
    elif item.effect is Effect.SOFT_BOUNCE:
        n = soft_bounces_within(session, address_hash, policy.soft_bounce_days, now)
        if n >= policy.soft_bounce_limit:
            suppress(SuppressionReason.SOFT_BOUNCES)
    elif item.effect is Effect.BLOCK:
        pass  # about us, never about the person: counted, and nothing else
    elif item.effect is Effect.COMPLAINT:
        withdraw(list(Purpose))
        suppress(SuppressionReason.COMPLAINT)
    else:
        purpose = _purpose_of(session, campaign_id)
        # An unreadable kind: the person asked for less mail, never more.
        withdraw([purpose] if purpose is not None else list(Purpose))
    return Outcome(
        matched=True,
        suppressed=suppressed,
        withdrawn=withdrawn,
        campaign_id=campaign_id,
    )


def counts_for_campaign(session: Session, campaign_id: int) -> dict[str, int]:
    """Aggregate: how many bounces, complaints and mailto unsubscribes it brought back."""
    got = {e.value: 0 for e in Effect}
    for kind, n in session.exec(
        select(ReturnEvent.kind, func.count())
        .where(ReturnEvent.campaign_id == campaign_id)
        .group_by(col(ReturnEvent.kind))
    ):
        got[kind] = n
    return got


def by_group(session: Session, campaign_id: int) -> dict[str, int]:
    """Bounces, blocks and complaints of a campaign by reason group (aggregate); events
    from before reasons were stored (schema 0005) count as "unclassified"."""
    got: dict[str, int] = {}
    for kind, group, n in session.exec(
        select(ReturnEvent.kind, ReturnEvent.reason_group, func.count())
        .where(ReturnEvent.campaign_id == campaign_id, ReturnEvent.kind != Effect.MAILTO.value)
        .group_by(col(ReturnEvent.kind), col(ReturnEvent.reason_group))
    ):
        name = group or ("complaint" if kind == Effect.COMPLAINT.value else "unclassified")
        got[name] = got.get(name, 0) + n
    return dict(sorted(got.items()))


def blocked_domains(session: Session, campaign_id: int, limit: int = 10) -> list[tuple[str, int]]:
    """The receiving domains that blocked the campaign most, with how many blocks."""
    n = func.count()
    rows = session.exec(
        select(ReturnEvent.domain, n)
        .where(ReturnEvent.campaign_id == campaign_id, ReturnEvent.kind == Effect.BLOCK.value)
        .group_by(col(ReturnEvent.domain))
        .order_by(n.desc(), col(ReturnEvent.domain))
        .limit(limit)
    ).all()
    return [(str(d), int(c)) for d, c in rows]


@dataclass(frozen=True)
class BounceEvidence:
    """What is stored about one hard-bounce suppression: the words and codes that made
    it, to be read again under new rules (`campaigns inbox reclassify`)."""

    address_hash: str
    campaign_id: int | None
    delivery_id: int | None
    contact_id: int | None
    # (status code, the server's words) from each return event or refused delivery.
    texts: tuple[tuple[str, str], ...]


def hard_bounce_evidence(session: Session) -> list[BounceEvidence]:
    """Every hard-bounce suppression with what is stored about why it was made."""
    key = meta_value(session, "suppression_key")
    rows = session.exec(
        select(Suppression).where(Suppression.reason == SuppressionReason.HARD_BOUNCE)
    ).all()
    out = []
    for row in rows:
        texts: list[tuple[str, str]] = [
            (e.status, e.diagnostic)
            for e in session.exec(
                select(ReturnEvent).where(
                    ReturnEvent.address_hash == row.address_hash,
                    ReturnEvent.kind == Effect.HARD_BOUNCE.value,
                )
            )
        ]
        contact_id = None
        delivery = session.get(Delivery, row.delivery_id) if row.delivery_id else None
        if delivery is None and row.campaign_id is not None:
            # A refusal during a send before schema 0005 named no delivery: find the
            # campaign's failed delivery to the contact with this hash.
            for d, email in session.exec(
                select(Delivery, Contact.email)
                .join(Contact, col(Contact.id) == Delivery.contact_id)
                .where(Delivery.campaign_id == row.campaign_id, Delivery.status == "failed")
                .where(Contact.suppressed == SuppressionReason.HARD_BOUNCE)
            ):
                if addresses.suppression_hash(email, key) == row.address_hash:
                    delivery = d
                    break
        if delivery is not None:
            contact_id = delivery.contact_id
            # The refusal during the send counts beside any later bounce: a "550 5.1.1"
            # at RCPT is not lifted for a later "5.7.1" of another campaign.
            if delivery.status == "failed" and delivery.error:
                texts.append(("", delivery.error))
        out.append(
            BounceEvidence(
                row.address_hash,
                row.campaign_id,
                delivery.id if delivery is not None else row.delivery_id,
                contact_id,
                tuple(texts),
            )
        )
    return out
