"""What came back (bounces, complaints, mailto unsubscribes) and its effect, on real databases."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from sqlmodel import select

from campaigns import campaign as store
from campaigns import consent, returns, suppression
from campaigns.models import ConsentEvent, Contact, Delivery, ReturnEvent, Suppression, utcnow
from campaigns.purposes import ConsentState, Kind, Purpose, SuppressionReason
from campaigns.returns import Effect, Policy, Returned
from tests.conftest import Db

POLICY = Policy(policy_version="2026-01", soft_bounce_limit=3, soft_bounce_days=14)


def _people(db: Db, n: int = 3) -> list[int]:
    ids = []
    with db.session() as s:
        for i in range(n):
            email = f"Person{i}@Example.com"
            c = Contact(email=email, email_key=email.lower())
            s.add(c)
            s.flush()
            for p in Purpose:
                consent.record(s, c, p, granted=True, source="form:signup", policy_version="1")
            ids.append(c.id or 0)
        s.commit()
    return ids


def _campaign(
    db: Db, kind: Kind, name: str, people: list[int], status: str = "sent", age_days: float = 0
) -> int:
    extra = {Kind.SURVEY: {"survey_url": "https://s.example.com/1"}}.get(kind, {})
    extra |= {Kind.THIRD_PARTY_OFFER: {"sponsor": "Partner"}}.get(kind, {})
    with db.session() as s:
        c = store.create(s, kind=kind, name=name, subject="Hi", body="Hi", **extra)
        for pid in people:
            sent_at = utcnow() - timedelta(days=age_days) if status == "sent" else None
            s.add(Delivery(campaign_id=c.id or 0, contact_id=pid, status=status, sent_at=sent_at))
        s.commit()
        return c.id or 0


_n = 0


def _msg(effect: Effect, **kw: object) -> Returned:
    global _n
    _n += 1
    return Returned(effect=effect, message_hash=hashlib.sha256(str(_n).encode()).hexdigest(), **kw)  # type: ignore[arg-type]


def _apply(db: Db, item: Returned, **kw: object) -> returns.Outcome:
    with db.session() as s:
        out = returns.apply(s, item, POLICY, **kw)  # type: ignore[arg-type]
        s.commit()
        return out


def _contact(db: Db, cid: int) -> Contact:
    with db.session() as s:
        c = s.get(Contact, cid)
        assert c is not None
        return c


def _counts(db: Db, campaign_id: int) -> store.Counts:
    with db.session() as s:
        return store.counts(s, campaign_id)


def _delivery_id(db: Db, campaign_id: int, contact_id: int) -> int:
    with db.session() as s:
        d = s.exec(
            select(Delivery).where(
                Delivery.campaign_id == campaign_id, Delivery.contact_id == contact_id
            )
        ).one()
        return d.id or 0


def test_hard_bounce_by_token_suppresses_that_person_with_its_delivery(db: Db) -> None:
    a, b, _ = _people(db)
    cid = _campaign(db, Kind.PROMOTIONAL, "spring", [a, b])
    out = _apply(db, _msg(Effect.HARD_BOUNCE, contact_id=a, campaign_id=cid, status="5.1.1"))
    assert out.matched and out.suppressed and out.campaign_id == cid
    assert _contact(db, a).suppressed == SuppressionReason.HARD_BOUNCE
    assert _contact(db, b).suppressed is None
    did = _delivery_id(db, cid, a)
    with db.session() as s:
        row = s.exec(select(Suppression)).one()
        assert (row.reason, row.source) == ("hard_bounce", "bounce")
        assert (row.campaign_id, row.delivery_id) == (cid, did)
        assert not consent.may_send(s, a, Purpose.PROMOTIONAL).allowed
        event = s.exec(select(ReturnEvent)).one()
        assert (event.kind, event.status, event.delivery_id) == (
            "hard_bounce",
            "5.1.1",
            did,
        )
    assert _counts(db, cid).hard_bounces == 1


def test_the_same_message_twice_changes_nothing_more(db: Db) -> None:
    (a,) = _people(db, 1)
    cid = _campaign(db, Kind.PROMOTIONAL, "c", [a])
    item = _msg(Effect.SOFT_BOUNCE, contact_id=a, campaign_id=cid)
    assert not _apply(db, item).duplicate
    again = _apply(db, item)
    assert again.duplicate
    with db.session() as s:
        assert len(s.exec(select(ReturnEvent)).all()) == 1


def test_soft_bounces_suppress_only_at_the_limit_within_the_window(db: Db) -> None:
    (a,) = _people(db, 1)
    c1, c2, c3, c4 = (_campaign(db, Kind.PROMOTIONAL, f"c{i}", [a]) for i in range(4))
    now = utcnow()
    # An old one, outside the 14-day window, does not count.
    _apply(db, _msg(Effect.SOFT_BOUNCE, contact_id=a, campaign_id=c1), now=now - timedelta(days=20))
    _apply(db, _msg(Effect.SOFT_BOUNCE, contact_id=a, campaign_id=c2), now=now - timedelta(days=2))
    out = _apply(db, _msg(Effect.SOFT_BOUNCE, contact_id=a, campaign_id=c3), now=now)
    assert not out.suppressed and _contact(db, a).suppressed is None
    out = _apply(db, _msg(Effect.SOFT_BOUNCE, contact_id=a, campaign_id=c4), now=now)
    assert out.suppressed
    assert _contact(db, a).suppressed == SuppressionReason.SOFT_BOUNCES
    assert [_counts(db, c).soft_bounces for c in (c1, c2, c3, c4)] == [1, 1, 1, 1]


def test_one_delivery_counts_once_per_kind(db: Db) -> None:
    """Delay warnings at 24, 48 and 72 hours, or two copies of one bounce, are one."""
    (a,) = _people(db, 1)
    cid = _campaign(db, Kind.PROMOTIONAL, "c", [a])
    for _ in range(3):
        _apply(db, _msg(Effect.SOFT_BOUNCE, contact_id=a, campaign_id=cid))
    assert _contact(db, a).suppressed is None
    first = _apply(db, _msg(Effect.HARD_BOUNCE, contact_id=a, campaign_id=cid))
    copy = _apply(db, _msg(Effect.HARD_BOUNCE, contact_id=a, campaign_id=cid))
    assert first.suppressed and copy.duplicate
    counts = _counts(db, cid)
    assert (counts.soft_bounces, counts.hard_bounces) == (1, 1)


def test_a_complaint_withdraws_every_purpose_and_suppresses(db: Db) -> None:
    a, b = _people(db, 2)
    cid = _campaign(db, Kind.SURVEY, "survey", [a, b])
    out = _apply(db, _msg(Effect.COMPLAINT, contact_id=a, campaign_id=cid))
    assert out.withdrawn == 3 and out.suppressed
    c = _contact(db, a)
    assert c.suppressed == SuppressionReason.COMPLAINT
    assert all(consent.state_of(c, p) == ConsentState.WITHDRAWN for p in Purpose)
    did = _delivery_id(db, cid, a)
    with db.session() as s:
        events = s.exec(select(ConsentEvent).where(ConsentEvent.source == "complaint")).all()
        assert {e.delivery_id for e in events} == {did}
        assert {e.contact_id for e in events} == {a}
    # The other person is untouched; a bulk import can never re-grant a complaint.
    assert all(consent.state_of(_contact(db, b), p) == ConsentState.GRANTED for p in Purpose)
    with db.session() as s, pytest.raises(consent.ConsentConflict):
        consent.record(
            s, s.get(Contact, a), Purpose.PROMOTIONAL, granted=True, source="import:x.csv",
            policy_version="1",
        )  # fmt: skip
    counts = _counts(db, cid)
    assert (counts.complaints, counts.unsubscribes) == (1, 0)


def test_mailto_withdraws_only_the_campaigns_purpose(db: Db) -> None:
    a, b = _people(db, 2)
    cid = _campaign(db, Kind.THIRD_PARTY_OFFER, "offer", [a, b])
    out = _apply(db, _msg(Effect.MAILTO, contact_id=b, campaign_id=cid))
    assert out.withdrawn == 1 and not out.suppressed
    c = _contact(db, b)
    assert consent.state_of(c, Purpose.THIRD_PARTY) == ConsentState.WITHDRAWN
    assert consent.state_of(c, Purpose.PROMOTIONAL) == ConsentState.GRANTED
    assert c.suppressed is None
    did = _delivery_id(db, cid, b)
    with db.session() as s:
        event = s.exec(select(ConsentEvent).where(ConsentEvent.source == "mailto")).one()
        assert (event.campaign_id, event.delivery_id) == (cid, did)
    assert _counts(db, cid).unsubscribes == 1


def test_mailto_without_a_valid_token_changes_nothing(db: Db) -> None:
    (a,) = _people(db, 1)
    _campaign(db, Kind.PROMOTIONAL, "c", [a])
    out = _apply(db, _msg(Effect.MAILTO, addresses=("person0@example.com",)))
    assert not out.matched
    assert consent.state_of(_contact(db, a), Purpose.PROMOTIONAL) == ConsentState.GRANTED


def test_without_a_token_the_address_finds_the_newest_delivery_ignoring_case(db: Db) -> None:
    a, b, _ = _people(db)
    first = _campaign(db, Kind.PROMOTIONAL, "first", [a, b])
    second = _campaign(db, Kind.SURVEY, "second", [a])
    out = _apply(db, _msg(Effect.HARD_BOUNCE, addresses=("PERSON0@EXAMPLE.COM",)))
    assert out.matched and out.campaign_id == second != first
    assert _contact(db, a).suppressed == SuppressionReason.HARD_BOUNCE
    assert _contact(db, b).suppressed is None


def test_an_address_we_never_mailed_is_not_suppressed(db: Db) -> None:
    a, b, c = _people(db)
    _campaign(db, Kind.PROMOTIONAL, "c", [a])
    _campaign(db, Kind.PROMOTIONAL, "pending", [b], status="pending")
    for address in ("person1@example.com", "person2@example.com", "stranger@example.com"):
        out = _apply(db, _msg(Effect.HARD_BOUNCE, addresses=(address,)))
        assert not out.matched
    with db.session() as s:
        assert s.exec(select(Suppression)).all() == []
        assert s.exec(select(ReturnEvent)).all() == []
    assert all(_contact(db, i).suppressed is None for i in (a, b, c))


def test_a_complaint_without_a_token_names_nobody(db: Db) -> None:
    """Anyone can send an ARF naming anyone: withdrawing consent for good needs a token."""
    (a,) = _people(db, 1)
    _campaign(db, Kind.PROMOTIONAL, "c", [a])
    out = _apply(db, _msg(Effect.COMPLAINT, addresses=("person0@example.com",)))
    assert not out.matched
    c = _contact(db, a)
    assert c.suppressed is None
    assert all(consent.state_of(c, p) == ConsentState.GRANTED for p in Purpose)


def test_an_address_alone_only_matches_a_recent_delivery(db: Db) -> None:
    a, b = _people(db, 2)
    _campaign(db, Kind.PROMOTIONAL, "old", [a, b], age_days=returns.ADDRESS_MATCH_DAYS + 1)
    _campaign(db, Kind.PROMOTIONAL, "new", [b], age_days=returns.ADDRESS_MATCH_DAYS - 1)
    assert not _apply(db, _msg(Effect.HARD_BOUNCE, addresses=("person0@example.com",))).matched
    assert _apply(db, _msg(Effect.HARD_BOUNCE, addresses=("person1@example.com",))).matched


def test_a_token_without_a_delivery_falls_back_to_the_address(db: Db) -> None:
    a, b = _people(db, 2)
    cid = _campaign(db, Kind.PROMOTIONAL, "c", [a])
    # A test send (contact 0) or a token for someone outside the snapshot.
    for contact_id in (0, b):
        out = _apply(db, _msg(Effect.HARD_BOUNCE, contact_id=contact_id, campaign_id=cid))
        assert not out.matched
    out = _apply(
        db,
        _msg(Effect.HARD_BOUNCE, contact_id=b, campaign_id=cid, addresses=("person0@example.com",)),
    )
    assert out.matched and _contact(db, a).suppressed and not _contact(db, b).suppressed


def test_an_erased_contact_stays_erased(db: Db) -> None:
    (a,) = _people(db, 1)
    cid = _campaign(db, Kind.PROMOTIONAL, "c", [a])
    with db.session() as s:
        suppression.forget(s, "person0@example.com")
        s.commit()
    out = _apply(db, _msg(Effect.HARD_BOUNCE, contact_id=a, campaign_id=cid))
    assert not out.matched
    with db.session() as s:
        assert s.exec(select(Suppression.reason)).one() == "erased"


def test_two_runs_at_once_lose_no_effect(db: Db) -> None:
    """Two different bounces for one address applied at once (two `inbox process` runs on
    PostgreSQL race for the same suppression row): both are recorded."""
    import threading

    from mailer.inbox import _apply as apply_with_retry

    (a,) = _people(db, 1)
    campaigns = [_campaign(db, Kind.PROMOTIONAL, f"c{i}", [a]) for i in range(2)]
    items = [_msg(Effect.HARD_BOUNCE, contact_id=a, campaign_id=c) for c in campaigns]
    start = threading.Barrier(2)
    outcomes: list[returns.Outcome] = []

    def run(item: Returned) -> None:
        start.wait()
        outcomes.append(apply_with_retry(db.engine, item, POLICY))

    threads = [threading.Thread(target=run, args=(i,)) for i in items]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(o.duplicate for o in outcomes) == [False, False]
    assert [_counts(db, c).hard_bounces for c in campaigns] == [1, 1]
