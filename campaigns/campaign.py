"""Campaign drafts: creation with each kind's own rules, listing, status and cancelling."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Engine, func
from sqlmodel import Session, col, select

from campaigns import returns
from campaigns.models import Campaign, ConsentEvent, Delivery, Suppression, utcnow
from campaigns.purposes import Kind

# Statuses a campaign moves through; "sent" only once no delivery is pending.
DRAFT, SCHEDULED, SENDING, PAUSED, SENT, CANCELLED = (
    "draft",
    "scheduled",
    "sending",
    "paused",
    "sent",
    "cancelled",
)
CANCELLABLE = frozenset({DRAFT, SCHEDULED, SENDING, PAUSED})


class CampaignError(ValueError):
    """A campaign cannot be created or changed as asked; one line for the user."""


class CampaignNotFound(LookupError):
    def __init__(self, name: str) -> None:
        super().__init__(f"no campaign named {name!r}")


def _one_line(label: str, value: str, *, required: bool = True, limit: int = 500) -> str:
    value = value.strip()
    if required and not value:
        raise CampaignError(f"{label} must not be empty")
    if "\r" in value or "\n" in value:
        raise CampaignError(f"{label} must be a single line")
    if len(value) > limit:
        raise CampaignError(f"{label} is longer than {limit} characters")
    return value


def validate_survey_url(url: str) -> str:
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.netloc or any(c.isspace() for c in url):
        raise CampaignError(f"survey URL must be an http(s) address, got {url!r}")
    return url


def checked_fields(
    kind: Kind,
    *,
    name: str,
    subject: str,
    body: str,
    template: str = "",
    sponsor: str = "",
    survey_url: str = "",
    preheader: str = "",
    sender: str = "",
) -> dict[str, str]:
    """A campaign's fields, cleaned and checked against what its kind needs."""
    kind = Kind(kind)
    if not body.strip():
        raise CampaignError("the body must not be empty")
    fields = {
        "kind": kind.value,
        "name": _one_line("name", name, limit=200),
        "subject": _one_line("subject", subject),
        "preheader": _one_line("preheader", preheader, required=False),
        "sender": _one_line("sender", sender, required=False),
        "body": body,
        "template": template.strip(),
        "sponsor": "",
        "survey_url": "",
    }
    if kind is Kind.THIRD_PARTY_OFFER:
        fields["sponsor"] = _one_line(
            "a third-party offer's sponsor (--sponsor)", sponsor, limit=300
        )
    elif sponsor.strip():
        raise CampaignError("only third-party offers name a sponsor")
    if kind is Kind.SURVEY:
        if not survey_url.strip():
            raise CampaignError("a survey needs its survey URL (--survey-url)")
        fields["survey_url"] = validate_survey_url(survey_url)
    elif survey_url.strip():
        raise CampaignError("only surveys carry a survey URL")
    return fields


def create(
    session: Session,
    *,
    kind: Kind,
    name: str,
    subject: str,
    body: str,
    template: str = "",
    sponsor: str = "",
    survey_url: str = "",
    preheader: str = "",
    sender: str = "",
    segment: dict[str, Any] | None = None,
) -> Campaign:
    """Create a draft, checking what its kind needs."""
    fields = checked_fields(
        kind,
        name=name,
        subject=subject,
        body=body,
        template=template,
        sponsor=sponsor,
        survey_url=survey_url,
        preheader=preheader,
        sender=sender,
    )
    if find(session, fields["name"]) is not None:
        raise CampaignError(f"a campaign named {fields['name']!r} exists already")
    campaign = Campaign(**fields, segment=segment or {})
    session.add(campaign)
    session.flush()
    return campaign


def find(session: Session, name: str) -> Campaign | None:
    return session.exec(select(Campaign).where(Campaign.name == name.strip())).first()


def get(session: Session, name: str) -> Campaign:
    campaign = find(session, name)
    if campaign is None:
        raise CampaignNotFound(name)
    return campaign


def release_held(engine: Engine, name: str, domain: str = "") -> int:
    """Let the deliveries held back because their receiving domain kept blocking us go
    on (all, or one domain's): the next send sends them. How many were released."""
    from campaigns import deliveries  # it imports this module

    with Session(engine) as session:
        campaign_id = get(session, name).id
    assert campaign_id is not None
    return deliveries.release_held(engine, campaign_id, domain.strip().lower())


def all_campaigns(session: Session) -> list[Campaign]:
    return list(session.exec(select(Campaign).order_by(col(Campaign.id))))


def cancel(session: Session, name: str) -> Campaign:
    """Cancel a draft, scheduled, paused or running campaign; what was sent stays sent."""
    campaign = get(session, name)
    if campaign.status not in CANCELLABLE:
        raise CampaignError(
            f"campaign {campaign.name!r} is {campaign.status}; it cannot be cancelled"
        )
    campaign.status = CANCELLED
    campaign.scheduled_at = None
    campaign.updated_at = utcnow()
    session.add(campaign)
    session.flush()
    return campaign


def pause(session: Session, name: str) -> Campaign:
    """Stop a running send for now: workers finish the messages in flight and stop.

    Nothing is lost: the rest stays queued until `resume` (or `campaign send`).
    """
    campaign = get(session, name)
    if campaign.status != SENDING:
        raise CampaignError(
            f"campaign {campaign.name!r} is {campaign.status}; only a sending one can be paused"
        )
    return _set_status(session, campaign, PAUSED)


def resume(session: Session, name: str) -> Campaign:
    """Let a paused send go on: the next `send-due` (or `campaign send`) continues it."""
    campaign = get(session, name)
    if campaign.status != PAUSED:
        raise CampaignError(
            f"campaign {campaign.name!r} is {campaign.status}; only a paused one can be resumed"
        )
    return _set_status(session, campaign, SENDING)


def _set_status(session: Session, campaign: Campaign, status: str) -> Campaign:
    campaign.status = status
    campaign.updated_at = utcnow()
    session.add(campaign)
    session.flush()
    return campaign


def schedule(session: Session, name: str, when: datetime) -> Campaign:
    if when.tzinfo is None:
        raise ValueError("schedule time must be timezone-aware")
    campaign = get(session, name)
    if campaign.status not in {DRAFT, SCHEDULED}:
        raise CampaignError(
            f"campaign {campaign.name!r} is {campaign.status}; it cannot be scheduled"
        )
    campaign.status = SCHEDULED
    campaign.scheduled_at = when
    campaign.updated_at = utcnow()
    session.add(campaign)
    session.flush()
    return campaign


@dataclass(frozen=True)
class Counts:
    """Delivery counts of one campaign; aggregate only, never per person."""

    total: int = 0
    pending: int = 0
    claimed: int = 0
    sending: int = 0
    sent: int = 0
    failed: int = 0
    skipped: int = 0
    in_doubt: int = 0
    # People who withdrew a consent through this campaign (page, one-click, mailto).
    unsubscribes: int = 0
    suppressions: int = 0
    # What came back to the return mailbox (campaigns inbox process).
    hard_bounces: int = 0
    soft_bounces: int = 0
    complaints: int = 0
    # Refused because of us, not the person (a blocklist, spam found ...), at the send or
    # later; and deliveries held back because their domain kept blocking (issue 14).
    blocks: int = 0
    held: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def counts(session: Session, campaign_id: int) -> Counts:
    rows = session.exec(
        select(Delivery.status, func.count())
        .where(Delivery.campaign_id == campaign_id)
        .group_by(Delivery.status)
    ).all()
    by_status = {status: n for status, n in rows}
    # People, not events: "stop everything" is one person withdrawing three purposes.
    unsubscribes = session.exec(
        select(func.count(func.distinct(ConsentEvent.contact_id))).where(
            ConsentEvent.campaign_id == campaign_id,
            col(ConsentEvent.granted).is_(False),
            ConsentEvent.source != "complaint",
        )
    ).one()
    suppressions = session.exec(
        select(func.count()).select_from(Suppression).where(Suppression.campaign_id == campaign_id)
    ).one()
    known = {"pending", "claimed", "sending", "sent", "failed", "skipped", "in_doubt", "held"}
    returned = returns.counts_for_campaign(session, campaign_id)
    return Counts(
        total=sum(by_status.values()),
        unsubscribes=unsubscribes,
        suppressions=suppressions,
        hard_bounces=returned["hard_bounce"],
        soft_bounces=returned["soft_bounce"],
        complaints=returned["complaint"],
        blocks=returned["block"],
        **{k: v for k, v in by_status.items() if k in known},
    )


def summary(session: Session, campaign: Campaign) -> dict[str, Any]:
    """What `campaign show` and `campaign list --json` print."""
    assert campaign.id is not None
    return {
        "name": campaign.name,
        "kind": campaign.kind,
        "purpose": Kind(campaign.kind).purpose.value,
        "status": campaign.status,
        "subject": campaign.subject,
        "sponsor": campaign.sponsor or None,
        "survey_url": campaign.survey_url or None,
        "template": campaign.template or None,
        "segment": campaign.segment,
        "scheduled_at": campaign.scheduled_at.isoformat() if campaign.scheduled_at else None,
        "created_at": campaign.created_at.isoformat(),
        "started_at": campaign.started_at.isoformat() if campaign.started_at else None,
        "finished_at": campaign.finished_at.isoformat() if campaign.finished_at else None,
        "counts": counts(session, campaign.id).as_dict(),
        # Aggregate: returns by reason group, and the receiving domains that blocked us.
        "returns_by_group": returns.by_group(session, campaign.id),
        "blocked_domains": [
            {"domain": d, "blocks": n} for d, n in returns.blocked_domains(session, campaign.id)
        ],
    }
