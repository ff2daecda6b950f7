"""Suppression (DESIGN.md §2): it beats every consent. Only a keyed hash is kept."""

from __future__ import annotations

from sqlalchemy import update
from sqlmodel import Session, col, delete, select

from campaigns import addresses
from campaigns.db import meta_value
from campaigns.models import (
    Contact,
    Delivery,
    ReturnEvent,
    Suppression,
    SuppressionChange,
    utcnow,
)
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
        if not row.replaced_reason:
            row.replaced_reason = row.reason
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


def lift_bounce(
    session: Session, address_hash: str, why: str, source: str, contact_id: int | None = None
) -> bool:
    """Lift a hard-bounce suppression found wrong (a bounce that said nothing about the
    address), with a ledger entry; True if one was lifted. Any other reason stays: a
    complaint, an unsubscribe or an erasure is the person's own act."""
    row = session.exec(select(Suppression).where(Suppression.address_hash == address_hash)).first()
    if row is None or row.reason != SuppressionReason.HARD_BOUNCE:
        return False
    session.add(
        SuppressionChange(
            address_hash=address_hash,
            change="lifted",
            old_reason=row.reason,
            why=why[:300],
            source=source[:300],
            campaign_id=row.campaign_id,
            delivery_id=row.delivery_id,
        )
    )
    restored = row.replaced_reason  # e.g. the person's own "stop everything" before it
    if restored:
        row.reason, row.replaced_reason = restored, ""
        session.add(row)
    else:
        session.delete(row)
    key = meta_value(session, "suppression_key")
    query = select(Contact).where(Contact.suppressed == SuppressionReason.HARD_BOUNCE)
    if contact_id is not None:  # known from the delivery; otherwise look at every one
        query = query.where(Contact.id == contact_id)
    for contact in session.exec(query):
        if addresses.suppression_hash(contact.email, key) == address_hash:
            contact.suppressed = restored or None
            contact.updated_at = utcnow()
            session.add(contact)
    session.flush()
    return True


def forget(session: Session, address: str) -> bool:
    """Erase a contact: everything about them goes, only the suppression hash stays.

    Deliveries keep their counts with the person removed. True if a contact existed.
    """
    contact = session.exec(
        select(Contact).where(Contact.email_key == addresses.key(address))
    ).first()
    suppress(session, address, SuppressionReason.ERASED, source="forget")
    # What came back keeps its counts, without the person's domain or the server's words.
    session.exec(
        update(ReturnEvent)
        .where(col(ReturnEvent.address_hash) == hash_for(session, address))
        .values(domain="", diagnostic="")
    )
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
