"""Suppression (DESIGN.md §2): it beats every consent. Only a keyed hash is kept."""

from __future__ import annotations

from sqlalchemy import update
from sqlmodel import Session, col, delete, select

from campaigns import addresses
from campaigns.db import meta_value
from campaigns.models import Contact, Delivery, Suppression, utcnow
from campaigns.purposes import SuppressionReason

# Stronger reasons replace weaker ones on the same hash; erasure is the strongest.
_RANK = {
    SuppressionReason.SOFT_BOUNCES: 0,
    SuppressionReason.UNSUBSCRIBED: 1,
    SuppressionReason.HARD_BOUNCE: 2,
    SuppressionReason.COMPLAINT: 3,
    SuppressionReason.ERASED: 4,
}


def hash_for(session: Session, address: str) -> str:
    return addresses.suppression_hash(address, meta_value(session, "suppression_key"))


def suppression_of(session: Session, address: str) -> str | None:
    """The reason an address is suppressed, or None."""
    digest = hash_for(session, address)
    row = session.exec(select(Suppression).where(Suppression.address_hash == digest)).first()
    return row.reason if row else None


def suppress(
    session: Session,
    address: str,
    reason: SuppressionReason,
    *,
    source: str = "",
    campaign_id: int | None = None,
    delivery_id: int | None = None,
) -> bool:
    """Suppress an address (and its contact, if any); True if anything changed."""
    reason = SuppressionReason(reason)
    digest = hash_for(session, address)
    row = session.exec(select(Suppression).where(Suppression.address_hash == digest)).first()
    changed = False
    if row is None:
        session.add(
            Suppression(
                address_hash=digest,
                reason=reason,
                source=source,
                campaign_id=campaign_id,
                delivery_id=delivery_id,
            )
        )
        changed = True
    elif _RANK[reason] > _RANK[SuppressionReason(row.reason)]:
        row.reason = reason
        row.source = source
        if campaign_id is not None:  # an erasure keeps the campaign the bounce came from
            row.campaign_id, row.delivery_id = campaign_id, delivery_id
        session.add(row)
        changed = True
    current = row.reason if row is not None else reason
    contact = session.exec(
        select(Contact).where(Contact.email_key == addresses.key(address))
    ).first()
    if contact is not None and contact.suppressed != current:
        contact.suppressed = current
        contact.updated_at = utcnow()
        session.add(contact)
        changed = True
    session.flush()
    return changed


def forget(session: Session, address: str) -> bool:
    """Erase a contact: everything about them goes, only the suppression hash stays.

    Deliveries keep their counts with the person removed. True if a contact existed.
    """
    contact = session.exec(
        select(Contact).where(Contact.email_key == addresses.key(address))
    ).first()
    suppress(session, address, SuppressionReason.ERASED, source="forget")
    if contact is None:
        return False
    cid = contact.id
    session.exec(update(Delivery).where(col(Delivery.contact_id) == cid).values(contact_id=None))
    from campaigns.models import ConsentEvent, ContactTag

    session.exec(delete(ConsentEvent).where(col(ConsentEvent.contact_id) == cid))
    session.exec(delete(ContactTag).where(col(ContactTag.contact_id) == cid))
    session.delete(contact)
    session.flush()
    return True
