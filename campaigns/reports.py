"""Aggregate figures for the dashboard and the campaign report (DESIGN.md §1, §2).

Aggregate only: counts and grouped reasons, never a list of who got, opened or refused
what. SMTP replies often quote the recipient's address; reasons are grouped with any
address replaced by ``<address>``, so the report neither names people nor splits one
reason into a line per person.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, case, func
from sqlmodel import Session, col, select

from campaigns import addresses, returns
from campaigns.campaign import DRAFT, SCHEDULED, Counts, all_campaigns, counts, get
from campaigns.deliveries import FAILED, SKIPPED, audience_segment
from campaigns.models import Contact, Delivery
from campaigns.purposes import ConsentState, Kind, Purpose
from campaigns.segments import count as segment_count


@dataclass(frozen=True)
class ConsentOverview:
    """How many contacts may get each kind of mail now (not suppressed, consent granted)."""

    contacts: int
    promotional: int
    research: int
    third_party: int
    suppressed: int

    def for_purpose(self, purpose: Purpose) -> int:
        return int(getattr(self, Purpose(purpose).value))


def consent_overview(session: Session) -> ConsentOverview:
    """One pass over the contacts table."""
    free = col(Contact.suppressed).is_(None)

    def granted(purpose: Purpose) -> object:
        column = col(getattr(Contact, purpose.value))
        return func.coalesce(
            func.sum(case((and_(free, column == ConsentState.GRANTED.value), 1), else_=0)), 0
        )

    row = session.exec(
        select(  # type: ignore[call-overload]
            func.count(),
            granted(Purpose.PROMOTIONAL),
            granted(Purpose.RESEARCH),
            granted(Purpose.THIRD_PARTY),
            func.coalesce(func.sum(case((free, 0), else_=1)), 0),
        ).select_from(Contact)
    ).one()
    return ConsentOverview(*(int(v) for v in row))


@dataclass(frozen=True)
class CampaignRow:
    """One line of the dashboard."""

    id: int
    name: str
    kind: str
    status: str
    scheduled_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    # Draft/scheduled: who a send would reach now; otherwise the snapshot's size.
    audience: int | None
    total: int
    sent: int
    failed: int
    skipped: int
    in_doubt: int

    @property
    def done(self) -> int:
        return self.sent + self.failed + self.skipped + self.in_doubt

    @property
    def when(self) -> datetime | None:
        """The time that matters now: when it goes out, or when it went."""
        return self.scheduled_at or self.finished_at or self.started_at


def campaign_rows(session: Session) -> list[CampaignRow]:
    by_campaign: dict[int, dict[str, int]] = {}
    for campaign_id, status, n in session.exec(
        select(Delivery.campaign_id, Delivery.status, func.count()).group_by(
            col(Delivery.campaign_id), col(Delivery.status)
        )
    ):
        by_campaign.setdefault(campaign_id, {})[status] = n
    rows = []
    for c in all_campaigns(session):
        assert c.id is not None
        got = by_campaign.get(c.id, {})
        total = sum(got.values())
        audience: int | None = total or None
        if c.status in {DRAFT, SCHEDULED} and not total:
            audience = segment_count(session, audience_segment(c))
        rows.append(
            CampaignRow(
                id=c.id,
                name=c.name,
                kind=c.kind,
                status=c.status,
                scheduled_at=c.scheduled_at,
                started_at=c.started_at,
                finished_at=c.finished_at,
                audience=audience,
                total=total,
                sent=got.get("sent", 0),
                failed=got.get("failed", 0),
                skipped=got.get("skipped", 0),
                in_doubt=got.get("in_doubt", 0),
            )
        )
    return rows


def anonymous_reason(text: str) -> str:
    """A delivery error without the addresses it quotes."""
    return addresses.redact(text) or "(no reason recorded)"


def reasons(session: Session, campaign_id: int, status: str) -> list[tuple[str, int]]:
    """Errors of the campaign's deliveries in `status`, grouped, most frequent first."""
    grouped: Counter[str] = Counter()
    for error, n in session.exec(
        select(Delivery.error, func.count())
        .where(Delivery.campaign_id == campaign_id, Delivery.status == status)
        .group_by(col(Delivery.error))
    ):
        grouped[anonymous_reason(error or "")] += n
    return sorted(grouped.items(), key=lambda item: (-item[1], item[0]))


@dataclass(frozen=True)
class CampaignReport:
    """Everything the report screen shows about one campaign."""

    id: int
    name: str
    kind: str
    purpose: str
    status: str
    subject: str
    sponsor: str
    survey_url: str
    segment: str
    scheduled_at: datetime | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    counts: Counts
    # For drafts and scheduled campaigns: who a send would reach now.
    audience_now: int | None
    failures: list[tuple[str, int]]
    skips: list[tuple[str, int]]
    # What came back, by reason group, and the receiving domains that blocked us most.
    by_group: dict[str, int]
    blocked_domains: list[tuple[str, int]]


def campaign_report(session: Session, name: str) -> CampaignReport:
    c = get(session, name)
    assert c.id is not None
    segment = audience_segment(c)
    audience_now = segment_count(session, segment) if c.status in {DRAFT, SCHEDULED} else None
    return CampaignReport(
        id=c.id,
        name=c.name,
        kind=c.kind,
        purpose=Kind(c.kind).purpose.value,
        status=c.status,
        subject=c.subject,
        sponsor=c.sponsor,
        survey_url=c.survey_url,
        segment=segment.describe(),
        scheduled_at=c.scheduled_at,
        created_at=c.created_at,
        started_at=c.started_at,
        finished_at=c.finished_at,
        counts=counts(session, c.id),
        audience_now=audience_now,
        failures=reasons(session, c.id, FAILED),
        skips=reasons(session, c.id, SKIPPED),
        by_group=returns.by_group(session, c.id),
        blocked_domains=returns.blocked_domains(session, c.id),
    )
