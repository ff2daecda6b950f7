"""Changing a campaign before it goes out: its fields, its audience, who to preview for.

`campaigns.campaign.create` makes a draft; this module edits one. The same rules apply
(each kind's own fields, one-line headers, unique names), with the same CampaignError.
Only drafts and scheduled campaigns change: once a send has started, the snapshot and
the messages already sent describe the campaign, and editing it would falsify them.
"""

from __future__ import annotations

from sqlmodel import Session, col, select

from campaigns import contacts, segments
from campaigns.campaign import (
    DRAFT,
    SCHEDULED,
    CampaignError,
    checked_fields,
    find,
    get,
)
from campaigns.deliveries import audience_segment
from campaigns.models import Campaign, Contact, utcnow
from campaigns.purposes import Kind
from campaigns.segments import Breakdown, Segment, SegmentError

EDITABLE = frozenset({DRAFT, SCHEDULED})


def _editable(session: Session, name: str) -> Campaign:
    campaign = get(session, name)
    if campaign.status not in EDITABLE:
        raise CampaignError(
            f"campaign {campaign.name!r} is {campaign.status}; "
            "only drafts and scheduled campaigns can be changed"
        )
    return campaign


def update_draft(
    session: Session,
    name: str,
    *,
    kind: Kind,
    new_name: str,
    subject: str,
    body: str,
    template: str = "",
    sponsor: str = "",
    survey_url: str = "",
    preheader: str = "",
    sender: str = "",
) -> Campaign:
    """Change a draft's (or scheduled campaign's) fields, checked as `create` checks them."""
    campaign = _editable(session, name)
    fields = checked_fields(
        kind,
        name=new_name,
        subject=subject,
        body=body,
        template=template,
        sponsor=sponsor,
        survey_url=survey_url,
        preheader=preheader,
        sender=sender,
    )
    other = find(session, fields["name"])
    if other is not None and other.id != campaign.id:
        raise CampaignError(f"a campaign named {fields['name']!r} exists already")
    for key, value in fields.items():
        setattr(campaign, key, value)
    campaign.updated_at = utcnow()
    session.add(campaign)
    session.flush()
    return campaign


def set_segment(session: Session, name: str, segment: Segment) -> Campaign:
    """Store a campaign's audience filters; the purpose always comes from its kind."""
    if segment.purpose is not None:
        raise CampaignError("a campaign's purpose comes from its kind; the segment names none")
    campaign = _editable(session, name)
    campaign.segment = segment.to_json()
    campaign.updated_at = utcnow()
    session.add(campaign)
    session.flush()
    return campaign


def stored_segment(campaign: Campaign) -> Segment:
    """The campaign's filters without a purpose (what the audience editor shows)."""
    return Segment.from_json(campaign.segment or {})


def audience(session: Session, kind: Kind, segment: Segment) -> Breakdown:
    """Who the filters reach for this kind now, and who is left out and why."""
    try:
        with_purpose = Segment.from_json({**segment.to_json(), "purpose": kind.purpose.value})
    except SegmentError as exc:  # cannot happen for a valid segment; keep the one line
        raise CampaignError(str(exc)) from None
    return segments.breakdown(session, with_purpose)


def audience_count(session: Session, campaign: Campaign) -> int:
    """How many people a send of this campaign would reach if it started now."""
    return segments.count(session, audience_segment(campaign))


def preview_contact(session: Session, campaign: Campaign, email: str = "") -> Contact | None:
    """The contact to render a preview for: the one named, else the first of the audience."""
    if email.strip():
        return contacts.find(session, email)
    stmt = (
        select(Contact)
        .where(segments.where_clause(audience_segment(campaign)))
        .order_by(col(Contact.id))
        .limit(1)
    )
    return session.exec(stmt).first()
