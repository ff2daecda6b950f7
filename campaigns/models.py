"""Table models (SQLModel). Data models for the outside world live beside the functions.

The current consent state per purpose is cached on the contact row (with the id of the
ledger event that set it, the proof of consent) and is always written in the same
transaction as that event. No column anywhere holds an IP address.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column, DateTime, Index, String, Text, TypeDecorator, UniqueConstraint
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Stores UTC; always hands back aware datetimes, on SQLite as on PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database; use an aware one")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def _ts(**kw: Any) -> Any:
    return Field(sa_type=UTCDateTime, **kw)


class AppMeta(SQLModel, table=True):
    __tablename__ = "app_meta"
    key: str = Field(primary_key=True, max_length=64)
    value: str = Field(sa_column=Column(Text, nullable=False))


class Contact(SQLModel, table=True):
    __tablename__ = "contacts"
    # (purpose, country, suppressed): segment counts read the index alone (bench figures
    # in the segments notes: 90 → 9 ms for purpose + country on a million contacts).
    __table_args__ = (
        Index("ix_contacts_promotional_country", "promotional", "country", "suppressed"),
        Index("ix_contacts_research_country", "research", "country", "suppressed"),
        Index("ix_contacts_third_party_country", "third_party", "country", "suppressed"),
        Index("ix_contacts_city", "city"),
        Index("ix_contacts_created_at", "created_at"),
        # Never reuse the id of an erased contact: tokens in old messages name it.
        {"sqlite_autoincrement": True},
    )

    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(max_length=320)
    # Case-folded address: what every comparison uses (de-duplication, forget, bounces).
    email_key: str = Field(max_length=320, unique=True)
    name: str = Field(default="", max_length=500)
    address: str = Field(default="", max_length=1000)
    postcode: str = Field(default="", max_length=50)
    town: str = Field(default="", max_length=200)
    city: str = Field(default="", max_length=200)
    country: str = Field(default="", max_length=100)
    attributes: dict[str, str] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = _ts(default_factory=utcnow)
    updated_at: datetime = _ts(default_factory=utcnow)
    promotional: str = Field(default="none", max_length=10)
    promotional_event_id: int | None = None
    research: str = Field(default="none", max_length=10)
    research_event_id: int | None = None
    third_party: str = Field(default="none", max_length=10)
    third_party_event_id: int | None = None
    # Reason of the suppression that covers this address, if any (cache of `suppressions`).
    suppressed: str | None = Field(default=None, max_length=20)


class ContactTag(SQLModel, table=True):
    __tablename__ = "contact_tags"
    __table_args__ = (Index("ix_contact_tags_tag", "tag", "contact_id"),)

    contact_id: int = Field(foreign_key="contacts.id", primary_key=True, ondelete="CASCADE")
    tag: str = Field(primary_key=True, max_length=100)


class ConsentEvent(SQLModel, table=True):
    """One line of the append-only consent ledger."""

    __tablename__ = "consent_events"
    # Event ids are proofs of consent kept on deliveries: never reused after erasure.
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: int | None = Field(default=None, primary_key=True)
    contact_id: int = Field(foreign_key="contacts.id", index=True, ondelete="CASCADE")
    purpose: str = Field(max_length=20)
    granted: bool
    occurred_at: datetime = _ts(default_factory=utcnow)
    # import:<file>, form:<name>, operator:<name>, unsubscribe-page, one-click, mailto,
    # bounce, complaint.
    source: str = Field(max_length=300)
    note: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    policy_version: str = Field(max_length=50)
    campaign_id: int | None = Field(default=None, index=True)
    delivery_id: int | None = None


class Suppression(SQLModel, table=True):
    """An address that must never be mailed, kept as a keyed hash only."""

    __tablename__ = "suppressions"

    id: int | None = Field(default=None, primary_key=True)
    address_hash: str = Field(sa_column=Column(String(64), unique=True, nullable=False))
    reason: str = Field(max_length=20)
    source: str = Field(default="", max_length=300)
    created_at: datetime = _ts(default_factory=utcnow)
    campaign_id: int | None = Field(default=None, index=True)
    # The delivery whose bounce or complaint caused it, when one did.
    delivery_id: int | None = None


class ReturnEvent(SQLModel, table=True):
    """Something that came back to the return mailbox and had an effect (issue 6).

    One row per returned message: the hash of its bytes is unique, so a message read
    twice (a second run, a crash before the mailbox was marked) changes nothing more.
    The address is kept as the same keyed hash as suppressions, never in clear.
    """

    __tablename__ = "return_events"
    __table_args__ = (Index("ix_return_events_address", "address_hash", "kind", "occurred_at"),)

    id: int | None = Field(default=None, primary_key=True)
    message_hash: str = Field(sa_column=Column(String(64), unique=True, nullable=False))
    # hard_bounce, soft_bounce, complaint, mailto
    kind: str = Field(max_length=20)
    address_hash: str = Field(max_length=64)
    status: str = Field(default="", max_length=20)
    occurred_at: datetime = _ts(default_factory=utcnow)
    campaign_id: int | None = Field(default=None, index=True)
    delivery_id: int | None = None


class Campaign(SQLModel, table=True):
    __tablename__ = "campaigns"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=200, unique=True)
    kind: str = Field(max_length=20)
    subject: str = Field(max_length=500)
    preheader: str = Field(default="", max_length=500)
    body: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    template: str = Field(default="", max_length=200)
    sponsor: str = Field(default="", max_length=300)
    survey_url: str = Field(default="", max_length=2000)
    sender: str = Field(default="", max_length=500)
    segment: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    # draft, scheduled, sending, paused, sent, cancelled
    status: str = Field(default="draft", max_length=20, index=True)
    scheduled_at: datetime | None = _ts(default=None)
    created_at: datetime = _ts(default_factory=utcnow)
    updated_at: datetime = _ts(default_factory=utcnow)
    started_at: datetime | None = _ts(default=None)
    finished_at: datetime | None = _ts(default=None)


class Delivery(SQLModel, table=True):
    """One row per (campaign, contact): the audience snapshot that makes a send idempotent."""

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("campaign_id", "contact_id", name="uq_deliveries_campaign_contact"),
        Index("ix_deliveries_campaign_status", "campaign_id", "status"),
    )

    id: int | None = Field(default=None, primary_key=True)
    campaign_id: int = Field(foreign_key="campaigns.id", ondelete="CASCADE")
    # NULL once the contact is erased: the counts stay, the person does not.
    contact_id: int | None = Field(default=None, foreign_key="contacts.id", ondelete="SET NULL")
    # pending, claimed, sent, failed, skipped, in_doubt
    status: str = Field(default="pending", max_length=20)
    consent_event_id: int | None = None
    attempts: int = 0
    next_attempt_at: datetime | None = _ts(default=None)
    claimed_at: datetime | None = _ts(default=None)
    claimed_by: str = Field(default="", max_length=200)
    sent_at: datetime | None = _ts(default=None)
    error: str = Field(default="", max_length=1000)
    message_id: str = Field(default="", max_length=300)
