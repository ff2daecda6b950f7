"""Consent rules of DESIGN.md §2, against real databases."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlmodel import select

from campaigns import consent, suppression
from campaigns.consent import ConsentConflict
from campaigns.models import Campaign, ConsentEvent, Contact, Delivery
from campaigns.purposes import ConsentState, Purpose, SuppressionReason
from tests.conftest import Db


def _contact(db: Db, email: str = "Anna@Example.com") -> Contact:
    with db.session() as s:
        c = Contact(email=email, email_key=email.lower())
        s.add(c)
        s.commit()
        s.refresh(c)
        return c


def _grant(db: Db, cid: int, purpose: Purpose, source: str) -> ConsentEvent | None:
    with db.session() as s:
        c = s.get(Contact, cid)
        ev = consent.record(s, c, purpose, granted=True, source=source, policy_version="1")
        s.commit()
        return ev


def _withdraw(db: Db, cid: int, purpose: Purpose, source: str) -> ConsentEvent | None:
    with db.session() as s:
        c = s.get(Contact, cid)
        ev = consent.record(s, c, purpose, granted=False, source=source, policy_version="1")
        s.commit()
        return ev


def test_new_contact_may_receive_nothing(db: Db) -> None:
    c = _contact(db)
    with db.session() as s:
        for purpose in Purpose:
            assert not consent.may_send(s, c.id, purpose).allowed


def test_grant_allows_and_names_the_event(db: Db) -> None:
    c = _contact(db)
    ev = _grant(db, c.id, Purpose.PROMOTIONAL, "form:signup")
    with db.session() as s:
        p = consent.may_send(s, c.id, Purpose.PROMOTIONAL)
        assert p.allowed and p.event_id == ev.id
        # Granting one purpose never grants another, third-party least of all.
        assert not consent.may_send(s, c.id, Purpose.THIRD_PARTY).allowed
        assert not consent.may_send(s, c.id, Purpose.RESEARCH).allowed


def test_personal_withdrawal_beats_a_later_import(db: Db) -> None:
    c = _contact(db)
    _grant(db, c.id, Purpose.PROMOTIONAL, "import:a.csv")
    _withdraw(db, c.id, Purpose.PROMOTIONAL, "one-click")
    with pytest.raises(ConsentConflict):
        _grant(db, c.id, Purpose.PROMOTIONAL, "import:b.csv")
    with db.session() as s:
        assert not consent.may_send(s, c.id, Purpose.PROMOTIONAL).allowed
    # The person's own new opt-in re-grants.
    assert _grant(db, c.id, Purpose.PROMOTIONAL, "operator:kim") is not None
    with db.session() as s:
        assert consent.may_send(s, c.id, Purpose.PROMOTIONAL).allowed


def test_bulk_no_does_not_soften_a_personal_no(db: Db) -> None:
    c = _contact(db)
    _grant(db, c.id, Purpose.RESEARCH, "import:a.csv")
    _withdraw(db, c.id, Purpose.RESEARCH, "unsubscribe-page")
    assert _withdraw(db, c.id, Purpose.RESEARCH, "import:b.csv") is None
    with db.session() as s, pytest.raises(ConsentConflict):
        c2 = s.get(Contact, c.id)
        assert c2.research == ConsentState.WITHDRAWN
        consent.record(s, c2, Purpose.RESEARCH, granted=True, source="import:c", policy_version="1")


def test_every_state_change_has_its_event_and_repeats_add_none(db: Db) -> None:
    c = _contact(db)
    steps = [
        (Purpose.PROMOTIONAL, True, "import:a.csv"),
        (Purpose.PROMOTIONAL, True, "import:a.csv"),  # no change
        (Purpose.PROMOTIONAL, False, "one-click"),
        (Purpose.PROMOTIONAL, False, "one-click"),  # no change
        (Purpose.THIRD_PARTY, True, "form:partners"),
    ]
    for purpose, granted, source in steps:
        (_grant if granted else _withdraw)(db, c.id, purpose, source)
    with db.session() as s:
        events = consent.history(s, c.id)
        assert [(e.purpose, e.granted, e.source) for e in events] == [
            ("promotional", True, "import:a.csv"),
            ("promotional", False, "one-click"),
            ("third_party", True, "form:partners"),
        ]
        contact = s.get(Contact, c.id)
        # The cached state points at the event that explains it.
        assert contact.promotional_event_id == events[1].id
        assert contact.third_party_event_id == events[2].id
        assert all(e.policy_version == "1" for e in events)


def test_suppression_beats_consent(db: Db) -> None:
    c = _contact(db)
    _grant(db, c.id, Purpose.PROMOTIONAL, "form:signup")
    with db.session() as s:
        suppression.suppress(s, "ANNA@example.com", SuppressionReason.HARD_BOUNCE, source="bounce")
        s.commit()
        p = consent.may_send(s, c.id, Purpose.PROMOTIONAL)
        assert not p.allowed and "hard_bounce" in p.reason


def test_opt_in_lifts_unsubscribe_all_but_not_a_bounce(db: Db) -> None:
    c = _contact(db)
    with db.session() as s:
        suppression.suppress(s, c.email, SuppressionReason.UNSUBSCRIBED, source="unsubscribe-page")
        s.commit()
    _grant(db, c.id, Purpose.PROMOTIONAL, "operator:kim")
    with db.session() as s:
        assert consent.may_send(s, c.id, Purpose.PROMOTIONAL).allowed
        suppression.suppress(s, c.email, SuppressionReason.HARD_BOUNCE, source="bounce")
        s.commit()
    _withdraw(db, c.id, Purpose.PROMOTIONAL, "operator:kim")
    _grant(db, c.id, Purpose.PROMOTIONAL, "operator:kim")
    with db.session() as s:
        assert not consent.may_send(s, c.id, Purpose.PROMOTIONAL).allowed


def test_forget_leaves_only_the_hash(db: Db) -> None:
    c = _contact(db, "Bob@Example.org")
    _grant(db, c.id, Purpose.PROMOTIONAL, "form:signup")
    with db.session() as s:
        assert suppression.forget(s, "bob@EXAMPLE.org")
        s.commit()
    with db.session() as s:
        assert s.exec(select(Contact)).all() == []
        assert s.exec(select(ConsentEvent)).all() == []
        assert suppression.suppression_of(s, "BOB@example.org") == SuppressionReason.ERASED
    # Nothing readable remains: the address appears nowhere in the database file.
    if db.dialect == "sqlite":
        db.engine.dispose()
        raw = Path(db.url.removeprefix("sqlite:///")).read_bytes().lower()
        assert b"bob@example.org" not in raw


def test_an_erased_contacts_id_is_never_given_again(db: Db) -> None:
    # Old messages carry tokens naming the contact id: a newcomer must not inherit it.
    c = _contact(db, "old@example.com")
    with db.session() as s:
        suppression.forget(s, "old@example.com")
        s.commit()
    newcomer = _contact(db, "new@example.com")
    assert newcomer.id != c.id


# ---------------------------------------------------------------- who speaks, what follows

# The person's own acts (DESIGN.md §2): unsubscribe page, one-click, mailto, complaint,
# an operator recording their letter or call, a confirmed signup form.
PERSONAL = ["unsubscribe-page", "one-click", "mailto", "complaint", "operator:kim", "form:signup"]
BULK = ["import:a.csv", "bounce", "", "operator", "form", "import:operator:kim", "xform:a"]


@pytest.mark.parametrize("source", PERSONAL)
def test_the_persons_own_acts_are_personal(source: str) -> None:
    assert consent.is_personal(source) is True


@pytest.mark.parametrize("source", BULK)
def test_bulk_paths_are_not_personal(source: str) -> None:
    assert consent.is_personal(source) is False


@given(name=st.text(max_size=30))
def test_any_operator_or_form_speaks_for_the_person_no_import_does(name: str) -> None:
    assert consent.is_personal(f"operator:{name}")
    assert consent.is_personal(f"form:{name}")
    assert not consent.is_personal(f"import:{name}")


CONFLICT = "conflict"
# (state before, granted?, source) -> state after; None: nothing changes.
TRANSITIONS = [
    ("none", True, "import:a.csv", "granted"),
    ("none", True, "form:signup", "granted"),
    ("granted", True, "import:a.csv", None),
    ("granted", True, "operator:kim", None),
    ("withdrawn", True, "import:a.csv", CONFLICT),
    ("withdrawn", True, "operator:kim", "granted"),
    ("withdrawn", True, "unsubscribe-page", "granted"),
    ("none", False, "one-click", "withdrawn"),
    ("granted", False, "mailto", "withdrawn"),
    ("withdrawn", False, "complaint", None),
    ("granted", False, "import:a.csv", "none"),
    ("none", False, "import:a.csv", None),
    ("withdrawn", False, "import:a.csv", None),
]


@pytest.mark.parametrize(("current", "granted", "source", "after"), TRANSITIONS)
def test_next_state(current: str, granted: bool, source: str, after: str | None) -> None:
    if after == CONFLICT:
        with pytest.raises(ConsentConflict) as refused:
            consent.next_state(current, granted, source)
        # What the terminal UI would show (tui/services.error_text).
        assert str(refused.value) == "the person withdrew this consent themselves"
    else:
        assert consent.next_state(current, granted, source) == after


# ---------------------------------------------------------------- the ledger


def test_an_event_records_everything_and_the_contact_points_at_it(db: Db) -> None:
    c = _contact(db)
    when = datetime(2026, 5, 3, 9, 30, tzinfo=UTC)
    with db.session() as s:
        k = Campaign(name="Sale", kind="promotional", subject="Hi")
        s.add(k)
        s.flush()
        d = Delivery(campaign_id=k.id, contact_id=c.id, status="sent")
        s.add(d)
        s.flush()
        kid, did = k.id, d.id
        contact = s.get(Contact, c.id)
        ev = consent.record(
            s,
            contact,
            "research",  # type: ignore[arg-type]
            granted=False,
            source="operator:kim",
            policy_version="2026-05",
            note="letter of 3 May",
            campaign_id=kid,
            delivery_id=did,
            when=when,
        )
        s.commit()
        assert ev is not None and ev.id is not None
        eid = ev.id
    with db.session() as s:
        [stored] = consent.history(s, c.id)
        assert stored.model_dump() == {
            "id": eid,
            "contact_id": c.id,
            "purpose": "research",
            "granted": False,
            "occurred_at": when,
            "source": "operator:kim",
            "note": "letter of 3 May",
            "policy_version": "2026-05",
            "campaign_id": kid,
            "delivery_id": did,
        }
        row = s.get(Contact, c.id)
        assert (row.research, row.research_event_id, row.updated_at) == ("withdrawn", eid, when)
        assert (row.promotional, row.promotional_event_id) == ("none", None)


def test_an_event_without_a_time_is_stamped_now_and_a_repeat_writes_nothing(db: Db) -> None:
    c = _contact(db)
    first = _grant(db, c.id, Purpose.THIRD_PARTY, "form:partners")
    assert first is not None
    with db.session() as s:
        [stored] = consent.history(s, c.id)
        assert stored.occurred_at.year >= 2026 and stored.note == ""
        assert (stored.campaign_id, stored.delivery_id) == (None, None)
        assert s.get(Contact, c.id).updated_at == stored.occurred_at
    # The same opt-in again (another of the person's own acts) adds nothing; the proof
    # of consent stays the first event.
    assert _grant(db, c.id, Purpose.THIRD_PARTY, "operator:kim") is None
    with db.session() as s:
        assert [e.id for e in consent.history(s, c.id)] == [first.id]
        p = consent.may_send(s, c.id, Purpose.THIRD_PARTY)
        assert p == consent.Permission(True, "granted", first.id)


def test_history_is_the_contacts_own_ledger_oldest_first(db: Db) -> None:
    c = _contact(db)
    other = _contact(db, "other@example.com")
    times = {
        Purpose.PROMOTIONAL: datetime(2026, 3, 1, tzinfo=UTC),
        Purpose.RESEARCH: datetime(2026, 1, 1, tzinfo=UTC),
        Purpose.THIRD_PARTY: datetime(2026, 3, 1, tzinfo=UTC),
    }
    with db.session() as s:
        for cid in (c.id, other.id):
            contact = s.get(Contact, cid)
            for purpose, when in times.items():
                consent.record(
                    s,
                    contact,
                    purpose,
                    granted=True,
                    source="form:x",
                    policy_version="1",
                    when=when,
                )
        s.commit()
    with db.session() as s:
        events = consent.history(s, c.id)
        # By time; the same time in the order written.
        assert [(e.purpose, e.contact_id) for e in events] == [
            ("research", c.id),
            ("promotional", c.id),
            ("third_party", c.id),
        ]
        assert consent.history(s, 987654) == []


# ---------------------------------------------------------------- suppression and opt-in


def _suppress(db: Db, email: str, reason: SuppressionReason) -> None:
    with db.session() as s:
        suppression.suppress(s, email, reason, source="test")
        s.commit()


def test_only_the_persons_own_opt_in_lifts_stop_everything(db: Db) -> None:
    anna = _contact(db)
    other = _contact(db, "other@example.com")
    # The other address is listed first: only the person's own entry may go.
    _suppress(db, other.email, SuppressionReason.UNSUBSCRIBED)
    _suppress(db, anna.email, SuppressionReason.UNSUBSCRIBED)
    # An import's grant is stored, but the address stays suppressed.
    assert _grant(db, anna.id, Purpose.PROMOTIONAL, "import:a.csv") is not None
    with db.session() as s:
        assert s.get(Contact, anna.id).suppressed == "unsubscribed"
        assert suppression.suppression_of(s, "anna@example.com") == "unsubscribed"
        p = consent.may_send(s, anna.id, Purpose.PROMOTIONAL)
        assert p == consent.Permission(False, "suppressed (unsubscribed)")
    # So does a withdrawal, even the person's own.
    assert _withdraw(db, anna.id, Purpose.PROMOTIONAL, "operator:kim") is not None
    with db.session() as s:
        assert s.get(Contact, anna.id).suppressed == "unsubscribed"
        assert suppression.suppression_of(s, "anna@example.com") == "unsubscribed"
    # Their own opt-in lifts it: gone from the list itself, not only from the contact
    # row, so a later check of the address (a re-import, a signup) finds nothing.
    assert _grant(db, anna.id, Purpose.RESEARCH, "form:signup") is not None
    with db.session() as s:
        assert s.get(Contact, anna.id).suppressed is None
        assert suppression.suppression_of(s, "ANNA@example.com") is None
        assert consent.may_send(s, anna.id, Purpose.RESEARCH).allowed
        assert suppression.suppression_of(s, "other@example.com") == "unsubscribed"
        assert s.get(Contact, other.id).suppressed == "unsubscribed"


def test_the_persons_opt_in_leaves_bounces_and_complaints(db: Db) -> None:
    for reason in ("hard_bounce", "soft_bounces", "complaint"):
        email = f"{reason}@example.com"
        c = _contact(db, email)
        _suppress(db, email, SuppressionReason(reason))
        assert _grant(db, c.id, Purpose.PROMOTIONAL, "operator:kim") is not None
        with db.session() as s:
            assert s.get(Contact, c.id).suppressed == reason
            assert suppression.suppression_of(s, email) == reason
            assert not consent.may_send(s, c.id, Purpose.PROMOTIONAL).allowed


# ---------------------------------------------------------------- eligibility


def test_the_answer_says_why_not(db: Db) -> None:
    good = _contact(db)
    bad = _contact(db, "not-an-address")
    for cid in (good.id, bad.id):
        _grant(db, cid, Purpose.PROMOTIONAL, "form:signup")
    with db.session() as s:
        assert consent.may_send(s, bad.id, Purpose.PROMOTIONAL) == consent.Permission(
            False, "invalid address"
        )
        assert consent.may_send(s, good.id, Purpose.RESEARCH) == consent.Permission(
            False, "no research consent"
        )
        assert consent.may_send(s, 987654, Purpose.RESEARCH) == consent.Permission(
            False, "no such contact (erased?)"
        )
    _suppress(db, good.email, SuppressionReason.COMPLAINT)
    with db.session() as s:
        assert consent.may_send(s, good.id, Purpose.PROMOTIONAL) == consent.Permission(
            False, "suppressed (complaint)"
        )


def test_may_send_reads_the_database_not_what_the_session_remembers(db: Db) -> None:
    # Checked again just before each message goes (DESIGN.md §2): a withdrawal written
    # by another process meanwhile must stop it, though the sender's session has the
    # contact loaded already.
    c = _contact(db)
    ev = _grant(db, c.id, Purpose.PROMOTIONAL, "form:signup")
    sender = db.session()
    try:
        loaded = sender.get(Contact, c.id)  # e.g. while building the audience
        assert loaded is not None and loaded.promotional == "granted"
        assert consent.may_send(sender, c.id, Purpose.PROMOTIONAL).event_id == ev.id
        sender.commit()
        _withdraw(db, c.id, Purpose.PROMOTIONAL, "one-click")
        p = consent.may_send(sender, c.id, Purpose.PROMOTIONAL)
        assert p == consent.Permission(False, "no promotional consent")
        sender.commit()
    finally:
        sender.close()
