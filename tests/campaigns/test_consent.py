"""Consent rules of DESIGN.md §2, against real databases."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlmodel import select

from campaigns import consent, suppression
from campaigns.consent import ConsentConflict
from campaigns.models import ConsentEvent, Contact
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
