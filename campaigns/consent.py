"""The consent ledger (DESIGN.md §2): append-only events, the derived state, and the
question "may we send purpose P to contact C, and which event allows it?".

The state cached on the contact row is only ever written here (and by the importer,
through `next_state`), in the same transaction as the event that explains it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlmodel import Session, select

from campaigns import addresses
from campaigns.models import ConsentEvent, Contact, Suppression, utcnow
from campaigns.purposes import ConsentState, Purpose, SuppressionReason

# Sources through which the person themselves speaks. Their "no" is final for bulk
# paths (imports); only another of their own acts re-grants.
PERSONAL_SOURCES = frozenset({"unsubscribe-page", "one-click", "mailto", "complaint"})
PERSONAL_PREFIXES = ("operator:", "form:")
# Suppressions a person's own new opt-in lifts; bounces, complaints and erasure stay.
LIFTABLE = frozenset({SuppressionReason.UNSUBSCRIBED})


class ConsentConflict(Exception):
    """A bulk path tried to re-grant what the person withdrew themselves."""


def is_personal(source: str) -> bool:
    return source in PERSONAL_SOURCES or source.startswith(PERSONAL_PREFIXES)


def next_state(current: str, granted: bool, source: str) -> str | None:
    """The state after an event, or None when the event changes nothing.

    Raises ConsentConflict when a bulk source would re-grant a personal withdrawal.
    """
    personal = is_personal(source)
    if granted:
        if current == ConsentState.GRANTED:
            return None
        if current == ConsentState.WITHDRAWN and not personal:
            raise ConsentConflict("the person withdrew this consent themselves")
        return ConsentState.GRANTED
    if personal:
        return None if current == ConsentState.WITHDRAWN else ConsentState.WITHDRAWN
    # A bulk "no" clears a grant but never softens a personal withdrawal.
    return ConsentState.NONE if current == ConsentState.GRANTED else None


def state_of(contact: Contact, purpose: Purpose) -> str:
    return getattr(contact, purpose.value)


def event_id_of(contact: Contact, purpose: Purpose) -> int | None:
    return getattr(contact, f"{purpose.value}_event_id")


def record(
    session: Session,
    contact: Contact,
    purpose: Purpose,
    *,
    granted: bool,
    source: str,
    policy_version: str,
    note: str = "",
    campaign_id: int | None = None,
    delivery_id: int | None = None,
    when: datetime | None = None,
) -> ConsentEvent | None:
    """Append an event and update the cached state; None when nothing changes.

    Raises ConsentConflict for a bulk re-grant of a personal withdrawal.
    """
    purpose = Purpose(purpose)
    new = next_state(state_of(contact, purpose), granted, source)
    if new is None:
        return None
    now = when or utcnow()
    event = ConsentEvent(
        contact_id=contact.id,  # type: ignore[arg-type]
        purpose=purpose.value,
        granted=granted,
        occurred_at=now,
        source=source,
        note=note,
        policy_version=policy_version,
        campaign_id=campaign_id,
        delivery_id=delivery_id,
    )
    session.add(event)
    session.flush()
    setattr(contact, purpose.value, new)
    setattr(contact, f"{purpose.value}_event_id", event.id)
    contact.updated_at = now
    if granted and is_personal(source) and contact.suppressed in LIFTABLE:
        _lift_suppression(session, contact)
    session.add(contact)
    return event


def _lift_suppression(session: Session, contact: Contact) -> None:
    from campaigns.suppression import hash_for  # local: suppression imports this module

    digest = hash_for(session, contact.email)
    row = session.exec(select(Suppression).where(Suppression.address_hash == digest)).first()
    if row is not None:
        session.delete(row)
    contact.suppressed = None


@dataclass(frozen=True)
class Permission:
    """The answer to "may we send purpose P to contact C?", with its proof."""

    allowed: bool
    reason: str
    event_id: int | None = None


def may_send(session: Session, contact_id: int, purpose: Purpose) -> Permission:
    """Eligibility (DESIGN.md §2), read fresh from the database."""
    contact = session.get(Contact, contact_id, populate_existing=True)
    if contact is None:
        return Permission(False, "no such contact (erased?)")
    return permission_for(contact, purpose)


def permission_for(contact: Contact, purpose: Purpose) -> Permission:
    if contact.suppressed:
        return Permission(False, f"suppressed ({contact.suppressed})")
    if not addresses.is_valid(contact.email):
        return Permission(False, "invalid address")
    if state_of(contact, purpose) != ConsentState.GRANTED:
        return Permission(False, f"no {purpose.value} consent")
    return Permission(True, "granted", event_id_of(contact, purpose))


def history(session: Session, contact_id: int) -> list[ConsentEvent]:
    """The contact's ledger, oldest first."""
    stmt = (
        select(ConsentEvent)
        .where(ConsentEvent.contact_id == contact_id)
        .order_by(ConsentEvent.occurred_at, ConsentEvent.id)  # type: ignore[arg-type]
    )
    return list(session.exec(stmt))
