"""A recipient's own preferences: what the unsubscribe page shows and changes (DESIGN.md §3).

The web handlers (mailer/web.py) only verify the token and call these functions; all the
SQL of the page lives here. Each function works inside the caller's session and leaves
the commit to it, so one request is one short transaction.

- `view` reads and changes nothing (link scanners fetch the page).
- `one_click` withdraws the campaign's purpose (RFC 8058), source `one-click`.
- `apply` applies the form's choice, source `unsubscribe-page`: stop this kind, stop
  everything (every purpose withdrawn and the address suppressed), or keep some kinds
  (unticked granted purposes withdrawn, ticked ones not granted opted into by the person).

Every change goes through `consent.record`, which writes nothing when the state does not
change, so repeating a request changes nothing more.

A token names (contact id, campaign id), and a link is only honoured while the delivery
that carried it still names that contact. Ids are not enough: SQLite hands the id of the
newest contact to the next one once it is erased, and an erased person's old link must
never show or change a stranger's preferences. Erasure unlinks deliveries, so unknown
contacts, erased ones and links that never came in a real message (test sends, previews)
all look the same here: None / False.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import Engine, and_, bindparam
from sqlmodel import Session, col, select

from campaigns import consent
from campaigns.models import Campaign, Contact, Delivery
from campaigns.purposes import ConsentState, Kind, Purpose, SuppressionReason
from campaigns.suppression import suppress

ONE_CLICK = "one-click"
PAGE = "unsubscribe-page"


class Action(StrEnum):
    """The choices of the page's form."""

    STOP_KIND = "stop_kind"
    STOP_ALL = "stop_all"
    KEEP = "keep"


@dataclass(frozen=True)
class PreferencesView:
    """What one person receives from us, as the page shows it."""

    contact_id: int
    campaign_id: int
    campaign_name: str
    # None should the campaign's kind be unreadable: the page then offers no "stop this kind".
    campaign_purpose: Purpose | None
    # The consent state of every purpose (ConsentState values).
    states: dict[Purpose, str]
    # The suppression reason that stops all mail to the address, if any.
    suppressed: str | None
    # Whether this request changed anything (always False for `view`).
    changed: bool = False

    @property
    def granted(self) -> frozenset[Purpose]:
        """Purposes the person agreed to (what the checkboxes show)."""
        return frozenset(p for p, s in self.states.items() if s == ConsentState.GRANTED)

    @property
    def receives(self) -> frozenset[Purpose]:
        """Purposes that actually reach the person: granted and not suppressed."""
        return frozenset() if self.suppressed else self.granted


@dataclass(frozen=True)
class _Campaign:
    name: str
    # None should the kind be unreadable.
    purpose: Purpose | None


def _purpose_of(kind: str) -> Purpose | None:
    try:
        return Kind(kind).purpose
    except ValueError:
        return None


# Built once: this runs for every click, and a statement object that is reused keeps its
# compiled form and cache key (building and keying a select anew costs more than running it).
_TARGET = (
    select(Contact, Campaign.name, Campaign.kind)
    .join(
        Delivery,
        and_(
            col(Delivery.contact_id) == Contact.id,
            col(Delivery.campaign_id) == bindparam("campaign_id"),
        ),
    )
    .join(Campaign, col(Campaign.id) == Delivery.campaign_id)
    .where(Contact.id == bindparam("contact_id"))
)
# On PostgreSQL two requests for one person must not both see "granted" and both append a
# withdrawal; SQLite's BEGIN IMMEDIATE (campaigns/db.py) already serialises writers.
_TARGET_FOR_UPDATE = _TARGET.with_for_update(of=Contact)  # type: ignore[arg-type]


def _target(
    session: Session, contact_id: int, campaign_id: int, *, for_update: bool
) -> tuple[Contact, _Campaign] | None:
    """The contact the link was sent to and its campaign, or None (see the docstring)."""
    row = session.exec(
        _TARGET_FOR_UPDATE if for_update else _TARGET,
        params={"contact_id": contact_id, "campaign_id": campaign_id},
    ).first()
    if row is None:
        return None
    contact, name, kind = row
    return contact, _Campaign(name, _purpose_of(kind))


def _view(
    contact: Contact, campaign_id: int, campaign: _Campaign, changed: bool = False
) -> PreferencesView:
    assert contact.id is not None
    return PreferencesView(
        contact_id=contact.id,
        campaign_id=campaign_id,
        campaign_name=campaign.name,
        campaign_purpose=campaign.purpose,
        states={p: consent.state_of(contact, p) for p in Purpose},
        suppressed=contact.suppressed,
        changed=changed,
    )


def view(session: Session, contact_id: int, campaign_id: int) -> PreferencesView | None:
    """The person's current preferences, or None for an unknown (or erased) contact.

    Reads only: safe for link scanners' prefetches.
    """
    target = _target(session, contact_id, campaign_id, for_update=False)
    if target is None:
        return None
    return _view(target[0], campaign_id, target[1])


def one_click(session: Session, contact_id: int, campaign_id: int, policy_version: str) -> bool:
    """RFC 8058 one-click: withdraw the campaign's purpose at once.

    True when the request is honoured (changed, or withdrawn already); False for an unknown
    or erased contact. Should the campaign's kind be unreadable, every purpose is
    withdrawn: the person asked for less mail, never more.
    """
    target = _target(session, contact_id, campaign_id, for_update=True)
    if target is None:
        return False
    contact, campaign = target
    for p in [campaign.purpose] if campaign.purpose is not None else list(Purpose):
        consent.record(
            session,
            contact,
            p,
            granted=False,
            source=ONE_CLICK,
            policy_version=policy_version,
            campaign_id=campaign_id,
        )
    return True


class ChoiceError(ValueError):
    """The form's choice cannot be applied ("stop this kind" of an unreadable kind)."""


def apply(
    session: Session,
    contact_id: int,
    campaign_id: int,
    *,
    action: Action,
    keep: set[Purpose] | frozenset[Purpose] = frozenset(),
    policy_version: str,
) -> PreferencesView | None:
    """Apply the page's form; the preferences afterwards, or None for an unknown contact.

    Raises ChoiceError for "stop this kind" when the campaign's kind is unreadable.
    """
    action = Action(action)
    target = _target(session, contact_id, campaign_id, for_update=True)
    if target is None:
        return None
    contact, campaign = target
    changed = False

    def set_state(purpose: Purpose, granted: bool) -> None:
        nonlocal changed
        event = consent.record(
            session,
            contact,
            purpose,
            granted=granted,
            source=PAGE,
            policy_version=policy_version,
            campaign_id=campaign_id,
        )
        changed = changed or event is not None

    if action is Action.STOP_KIND:
        if campaign.purpose is None:
            raise ChoiceError("this campaign's kind is unknown; choose what to keep instead")
        set_state(campaign.purpose, False)
    elif action is Action.STOP_ALL:
        for p in Purpose:
            set_state(p, False)
        if suppress(
            session,
            contact.email,
            SuppressionReason.UNSUBSCRIBED,
            source=PAGE,
            campaign_id=campaign_id,
        ):
            changed = True
    else:
        wanted = {Purpose(p) for p in keep}
        for p in Purpose:
            state = consent.state_of(contact, p)
            if p in wanted and state != ConsentState.GRANTED:
                # A ticked box that was not ticked before: the person's own opt-in, the
                # one way to re-grant here (and it lifts an "unsubscribed" suppression).
                set_state(p, True)
            elif p not in wanted and state == ConsentState.GRANTED:
                set_state(p, False)
    session.flush()
    return _view(contact, campaign_id, campaign, changed)


def check_database(engine: Engine) -> None:
    """A trivial query, for the health route; raises when the database is unreachable.

    Uses the driver's connection directly: on SQLite every ORM transaction starts with
    BEGIN IMMEDIATE (campaigns/db.py), and a health probe must not queue for the write lock.
    """
    conn = engine.raw_connection()
    try:
        cursor = conn.cursor()
        try:
            cursor.execute("SELECT 1")
            cursor.fetchone()
        finally:
            cursor.close()
    finally:
        conn.close()
