"""Looking up, describing and changing single contacts (the operator's paths)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, or_
from sqlmodel import Session, col, select

from campaigns import addresses, consent
from campaigns.models import Campaign, ConsentEvent, Contact, ContactTag, Delivery
from campaigns.purposes import Purpose


class ContactNotFound(LookupError):
    def __init__(self, email: str) -> None:
        super().__init__(f"no contact with address {email}")


def find(session: Session, email: str) -> Contact | None:
    """The contact with this address, compared without regard to case."""
    return session.exec(select(Contact).where(Contact.email_key == addresses.key(email))).first()


def get(session: Session, email: str) -> Contact:
    contact = find(session, email)
    if contact is None:
        raise ContactNotFound(email)
    return contact


def tags_of(session: Session, contact_id: int) -> list[str]:
    rows = session.exec(
        select(ContactTag.tag).where(ContactTag.contact_id == contact_id).order_by(ContactTag.tag)
    )
    return list(rows)


def event_dict(event: ConsentEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "purpose": event.purpose,
        "granted": event.granted,
        "when": event.occurred_at.isoformat(),
        "source": event.source,
        "note": event.note,
        "policy_version": event.policy_version,
        "campaign_id": event.campaign_id,
    }


def profile(session: Session, email: str) -> dict[str, Any]:
    """Everything held about one person: a subject-access answer."""
    c = get(session, email)
    assert c.id is not None
    deliveries = session.exec(
        select(Campaign.name, Campaign.kind, Delivery.status, Delivery.sent_at)
        .join(Campaign, col(Campaign.id) == Delivery.campaign_id)
        .where(Delivery.contact_id == c.id)
        .order_by(col(Delivery.id))
    )
    return {
        "email": c.email,
        "name": c.name,
        "address": c.address,
        "postcode": c.postcode,
        "town": c.town,
        "city": c.city,
        "country": c.country,
        "tags": tags_of(session, c.id),
        "attributes": dict(c.attributes),
        "signed_up": c.created_at.isoformat(),
        "updated": c.updated_at.isoformat(),
        "consent": {
            p.value: {"state": consent.state_of(c, p), "event_id": consent.event_id_of(c, p)}
            for p in Purpose
        },
        "suppressed": c.suppressed,
        "consent_history": [event_dict(e) for e in consent.history(session, c.id)],
        "messages": [
            {
                "campaign": name,
                "kind": kind,
                "status": status,
                "sent_at": sent.isoformat() if sent else None,
            }
            for name, kind, status, sent in deliveries
        ],
    }


def record_operator_change(
    session: Session,
    email: str,
    purpose: Purpose,
    *,
    granted: bool,
    operator: str,
    note: str,
    policy_version: str,
) -> ConsentEvent | None:
    """A change that came by letter, phone or email; None when it changes nothing."""
    if not note.strip():
        raise ValueError("a note is required (say how the request came, e.g. 'letter of 3 May')")
    # Locked, so a one-click arriving at the same moment cannot be lost (PostgreSQL).
    contact = session.exec(
        select(Contact).where(Contact.email_key == addresses.key(email)).with_for_update()
    ).first()
    if contact is None:
        raise ContactNotFound(email)
    return consent.record(
        session,
        contact,
        purpose,
        granted=granted,
        source=f"operator:{operator}",
        note=note.strip(),
        policy_version=policy_version,
    )


@dataclass(frozen=True)
class ContactRow:
    """What a list of contacts shows."""

    id: int
    email: str
    name: str
    country: str
    promotional: str
    research: str
    third_party: str
    suppressed: str | None


def search(
    session: Session,
    text: str = "",
    *,
    purpose: Purpose | None = None,
    country: str = "",
    limit: int = 100,
    offset: int = 0,
) -> list[ContactRow]:
    """Contacts whose address or name contains the text, filtered by consent and country."""
    stmt = select(Contact)
    if text.strip():
        pattern = f"%{text.strip().lower()}%"
        stmt = stmt.where(
            or_(col(Contact.email_key).like(pattern), func.lower(Contact.name).like(pattern))
        )
    if purpose is not None:
        stmt = stmt.where(getattr(Contact, purpose.value) == "granted")
    if country.strip():
        stmt = stmt.where(Contact.country == country.strip().upper())
    stmt = stmt.order_by(col(Contact.id)).offset(offset).limit(limit)
    return [
        ContactRow(
            id=c.id or 0,
            email=c.email,
            name=c.name,
            country=c.country,
            promotional=c.promotional,
            research=c.research,
            third_party=c.third_party,
            suppressed=c.suppressed,
        )
        for c in session.exec(stmt)
    ]
