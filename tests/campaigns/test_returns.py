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


# ------------------------------------------------------------- which delivery a bounce names


def _delivery_row(db: Db, campaign_id: int, contact_id: int, **values: object) -> None:
    """Set a delivery's status and times by hand (what a send would have left)."""
    with db.session() as s:
        d = s.exec(
            select(Delivery).where(
                Delivery.campaign_id == campaign_id, Delivery.contact_id == contact_id
            )
        ).one()
        for key, value in values.items():
            setattr(d, key, value)
        s.add(d)
        s.commit()


@pytest.mark.parametrize(
    ("status", "left_us"),
    [
        ("sent", True),
        ("in_doubt", True),  # maybe accepted: a bounce proves it was
        ("failed", False),  # the server refused it during the send: nothing went out
        ("skipped", False),
        ("claimed", False),
        ("pending", False),
    ],
)
def test_an_address_alone_names_only_a_message_that_left_us(
    db: Db, status: str, left_us: bool
) -> None:
    (a,) = _people(db, 1)
    cid = _campaign(db, Kind.PROMOTIONAL, "c", [a], status="pending")
    recent = utcnow() - timedelta(hours=1)
    # An in-doubt message has no sent_at: its claim time dates it.
    _delivery_row(db, cid, a, status=status, claimed_at=recent)
    out = _apply(db, _msg(Effect.HARD_BOUNCE, addresses=("person0@example.com",)))
    assert out.matched is left_us
    assert (_contact(db, a).suppressed == SuppressionReason.HARD_BOUNCE) is left_us


def test_the_address_window_is_thirty_days_back_from_when_the_bounce_is_read(db: Db) -> None:
    a, b, c = _people(db, 3)
    now = utcnow() - timedelta(days=20)  # read late, e.g. a mailbox processed after an outage
    for pid, age in ((a, timedelta(days=30)), (b, timedelta(days=30, seconds=1))):
        cid = _campaign(db, Kind.PROMOTIONAL, f"c{pid}", [pid])
        _delivery_row(db, cid, pid, sent_at=now - age)
    # Sent 45 days before today but 25 days before the bounce was read: in the window.
    cid = _campaign(db, Kind.PROMOTIONAL, "older", [c])
    _delivery_row(db, cid, c, sent_at=now - timedelta(days=25))
    outcomes = [
        _apply(db, _msg(Effect.HARD_BOUNCE, addresses=(f"person{i}@example.com",)), now=now)
        for i in range(3)
    ]
    assert [o.matched for o in outcomes] == [True, False, True]
    assert [_contact(db, p).suppressed for p in (a, b, c)] == ["hard_bounce", None, "hard_bounce"]


def test_a_token_names_its_own_campaign_even_when_the_address_names_another(db: Db) -> None:
    (a,) = _people(db, 1)
    old = _campaign(db, Kind.SURVEY, "old", [a])
    new = _campaign(db, Kind.PROMOTIONAL, "new", [a])
    out = _apply(
        db,
        _msg(Effect.SOFT_BOUNCE, contact_id=a, campaign_id=old, addresses=("person0@example.com",)),
    )
    assert out.matched and out.campaign_id == old != new
    did = _delivery_id(db, old, a)
    with db.session() as s:
        event = s.exec(select(ReturnEvent)).one()
        assert (event.campaign_id, event.delivery_id) == (old, did)


def test_duplicates_are_matched_and_unknown_ones_are_not(db: Db) -> None:
    (a,) = _people(db, 1)
    cid = _campaign(db, Kind.PROMOTIONAL, "c", [a])
    item = _msg(Effect.SOFT_BOUNCE, contact_id=a, campaign_id=cid)
    first = _apply(db, item)
    assert (first.matched, first.duplicate, first.campaign_id) == (True, False, cid)
    same_message = _apply(db, item)
    assert (same_message.matched, same_message.duplicate) == (True, True)
    same_delivery = _apply(db, _msg(Effect.SOFT_BOUNCE, contact_id=a, campaign_id=cid))
    assert (same_delivery.matched, same_delivery.duplicate) == (True, True)
    stranger = _apply(db, _msg(Effect.SOFT_BOUNCE, addresses=("nobody@example.com",)))
    assert (stranger.matched, stranger.duplicate, stranger.campaign_id) == (False, False, None)
    assert not stranger.suppressed and stranger.withdrawn == 0


# ------------------------------------------------------------------ soft bounces


def _soft(db: Db, person: int, name: str, **kw: object) -> returns.Outcome:
    cid = _campaign(db, Kind.PROMOTIONAL, name, [person])
    item = _msg(Effect.SOFT_BOUNCE, contact_id=person, campaign_id=cid)
    with db.session() as s:
        out = returns.apply(
            s, item, Policy("2026-01", soft_bounce_limit=2, soft_bounce_days=14), **kw
        )  # type: ignore[arg-type]
        s.commit()
    return out


def test_a_soft_bounce_exactly_at_the_window_edge_still_counts(db: Db) -> None:
    a, b = _people(db, 2)
    now = utcnow()
    assert not _soft(db, a, "a1", now=now - timedelta(days=14)).suppressed
    assert _soft(db, a, "a2", now=now).suppressed  # 2 within 14 days, the first at the edge
    assert not _soft(db, b, "b1", now=now - timedelta(days=14, seconds=1)).suppressed
    assert not _soft(db, b, "b2", now=now).suppressed  # the first is just outside
    assert _contact(db, a).suppressed == "soft_bounces" and _contact(db, b).suppressed is None


def test_soft_bounces_count_per_person_and_only_soft_ones(db: Db) -> None:
    a, b, c = _people(db, 3)
    # One soft bounce each for a and b: nobody reaches the limit of 2.
    assert not _soft(db, a, "a1").suppressed
    assert not _soft(db, b, "b1").suppressed
    # c unsubscribed by mail once; one soft bounce after that is still only one.
    offer = _campaign(db, Kind.THIRD_PARTY_OFFER, "offer", [c])
    _apply(db, _msg(Effect.MAILTO, contact_id=c, campaign_id=offer))
    assert not _soft(db, c, "c1").suppressed
    assert [_contact(db, p).suppressed for p in (a, b, c)] == [None, None, None]


def test_a_long_status_is_kept_to_twenty_characters(db: Db) -> None:
    (a,) = _people(db, 1)
    cid = _campaign(db, Kind.PROMOTIONAL, "c", [a])
    _apply(db, _msg(Effect.SOFT_BOUNCE, contact_id=a, campaign_id=cid, status="4.4.7" * 5))
    with db.session() as s:
        assert s.exec(select(ReturnEvent.status)).one() == "4.4.74.4.74.4.74.4.7"


# ------------------------------------------------------------------ withdrawals


def test_withdrawals_carry_the_time_the_message_was_read_and_its_delivery(db: Db) -> None:
    (a,) = _people(db, 1)
    cid = _campaign(db, Kind.SURVEY, "survey", [a])
    when = utcnow() - timedelta(days=2)
    out = _apply(db, _msg(Effect.COMPLAINT, contact_id=a, campaign_id=cid), now=when)
    assert out.withdrawn == 3
    with db.session() as s:
        events = s.exec(select(ConsentEvent).where(ConsentEvent.source == "complaint")).all()
        assert sorted(e.purpose for e in events) == ["promotional", "research", "third_party"]
        assert {(e.granted, e.occurred_at, e.campaign_id, e.policy_version) for e in events} == {
            (False, when, cid, "2026-01")
        }


def test_a_mailto_for_a_campaign_of_unreadable_kind_withdraws_everything(db: Db) -> None:
    """An unknown kind cannot say which purpose to stop: the person asked for less mail,
    never more, so every purpose is withdrawn (and nothing is suppressed)."""
    (a,) = _people(db, 1)
    cid = _campaign(db, Kind.PROMOTIONAL, "c", [a])
    with db.engine.begin() as conn:
        conn.exec_driver_sql(f"UPDATE campaigns SET kind = 'newsletter' WHERE id = {cid}")
    out = _apply(db, _msg(Effect.MAILTO, contact_id=a, campaign_id=cid))
    assert (out.matched, out.withdrawn, out.suppressed) == (True, 3, False)
    c = _contact(db, a)
    assert [consent.state_of(c, p) for p in Purpose] == [ConsentState.WITHDRAWN] * 3
    assert c.suppressed is None


def test_a_message_read_again_after_a_newer_send_changes_nothing(db: Db) -> None:
    """Matched by address, a bounce names the newest delivery: read again after another
    campaign went to the same person, it still counts once (its hash is known)."""
    (a,) = _people(db, 1)
    first = _campaign(db, Kind.PROMOTIONAL, "first", [a])
    item = _msg(Effect.SOFT_BOUNCE, addresses=("person0@example.com",))
    assert _apply(db, item).campaign_id == first
    second = _campaign(db, Kind.PROMOTIONAL, "second", [a])
    again = _apply(db, item)
    assert (again.matched, again.duplicate, again.suppressed) == (True, True, False)
    with db.session() as s:
        assert [e.campaign_id for e in s.exec(select(ReturnEvent)).all()] == [first]
        assert returns.counts_for_campaign(s, second) == {
            "hard_bounce": 0,
            "soft_bounce": 0,
            "complaint": 0,
            "mailto": 0,
            "block": 0,
        }
        assert returns.counts_for_campaign(s, first) == {
            "hard_bounce": 0,
            "soft_bounce": 1,
            "complaint": 0,
            "mailto": 0,
            "block": 0,
        }
