"""campaigns.deliveries: the eligibility re-check in claims, claims shared by workers, and
the rest of a send's rows: snapshot, progress marks, crash recovery, retries, finish.

DESIGN.md §2: eligibility is checked when the audience is built and again for each
recipient just before the message goes. §4: on PostgreSQL several workers share one
campaign, claiming with FOR UPDATE SKIP LOCKED; the snapshot makes a send idempotent;
a message in flight at a crash is in doubt, never re-sent; 4xx are retried with backoff.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, make_url
from sqlmodel import Session, col, select

from campaigns import campaign as store
from campaigns import consent, deliveries, suppression
from campaigns.db import make_engine
from campaigns.deliveries import Claimed, ClaimResult, Progress
from campaigns.models import Campaign, Contact, Delivery, ReturnEvent, Suppression
from campaigns.purposes import Kind, Purpose, SuppressionReason
from tests.conftest import Db


def _people(db: Db, n: int, domain: str = "example.com") -> list[Contact]:
    """`n` contacts who granted promotional mail (by a confirmed signup)."""
    out = []
    with db.session() as s:
        for i in range(n):
            email = f"reader{i}@{domain}"
            c = Contact(email=email, email_key=email, name=f"Reader {i}")
            s.add(c)
            s.flush()
            consent.record(
                s, c, Purpose.PROMOTIONAL, granted=True, source="form:signup", policy_version="1"
            )
            out.append(c)
        s.commit()
    return out


def _promotional_campaign(db: Db) -> int:
    with db.session() as s:
        c = store.create(
            s, kind=Kind.PROMOTIONAL, name="spring", subject="Spring", body="Hello **there**"
        )
        s.commit()
        assert c.id is not None
        return c.id


def _delivery_ids(db: Db, campaign_id: int) -> dict[int, int]:
    """contact id -> delivery id, as the snapshot made them."""
    with db.session() as s:
        rows = s.exec(select(Delivery).where(Delivery.campaign_id == campaign_id))
        return {d.contact_id: d.id for d in rows}


def _statuses(db: Db, campaign_id: int) -> dict[int, tuple[str, str]]:
    """delivery id -> (status, error)."""
    with db.session() as s:
        rows = s.exec(select(Delivery).where(Delivery.campaign_id == campaign_id))
        return {d.id: (d.status, d.error) for d in rows}


def _hard_bounce(s: Session, person: Contact) -> None:
    suppression.suppress(s, person.email, SuppressionReason.HARD_BOUNCE, source="bounce")


def _withdraw(s: Session, person: Contact) -> None:
    contact = s.get(Contact, person.id)
    assert contact is not None
    consent.record(
        s, contact, Purpose.PROMOTIONAL, granted=False, source="one-click", policy_version="1"
    )


def _erase(s: Session, person: Contact) -> None:
    assert suppression.forget(s, person.email)


CHANGES: dict[str, Callable[[Session, Contact], None]] = {
    "hard-bounce": _hard_bounce,
    "consent-withdrawn": _withdraw,
    "erased": _erase,
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_person_who_became_ineligible_after_the_snapshot_is_skipped_at_claim(
    db: Db, change: str
) -> None:
    people = _people(db, 4)
    cid = _promotional_campaign(db)
    deliveries.start(db.engine, cid)
    ids = _delivery_ids(db, cid)
    assert set(ids) == {p.id for p in people}
    target = people[2]
    target_delivery = ids[target.id]  # type: ignore[index]
    # Between the snapshot and the claim the person bounces, says no, or is erased.
    with db.session() as s:
        CHANGES[change](s, target)
        s.commit()

    got = deliveries.claim(db.engine, cid, "worker-1", 10)

    assert got.active
    assert got.skipped == 1
    ready = {c.delivery_id for c in got.ready}
    assert ready == {ids[p.id] for p in people if p is not target}  # type: ignore[index]
    assert target.email not in {c.email for c in got.ready}
    rows = _statuses(db, cid)
    status, error = rows[target_delivery]
    assert status == "skipped" and error
    assert {rows[d][0] for d in ready} == {"claimed"}
    # Nothing is left for a later claim to pick up and send.
    again = deliveries.claim(db.engine, cid, "worker-1", 10)
    assert again.ready == [] and again.skipped == 0
    assert _statuses(db, cid)[target_delivery][0] == "skipped"


# ------------------------------------------------------------------ PostgreSQL workers


def _with_lock_timeout(url: str, ms: int) -> str:
    """`url` whose sessions give up waiting for a row lock after `ms` milliseconds."""
    parsed = make_url(url)
    options = parsed.query.get("options", "")
    if isinstance(options, tuple):
        options = " ".join(options)
    return parsed.update_query_dict(
        {"options": f"{options} -c lock_timeout={ms}".strip()}
    ).render_as_string(hide_password=False)


@pytest.fixture
def two_workers(db: Db) -> Iterator[tuple[Engine, Engine]]:
    """Two engines (two workers' connection pools) on the test's PostgreSQL schema.
    The second gives up on a locked row after 5 s, so a claim that waits for another
    worker's rows fails instead of hanging."""
    if db.dialect != "postgresql":
        pytest.skip("FOR UPDATE SKIP LOCKED claims are PostgreSQL's (SQLite has one writer)")
    a = make_engine(db.url)
    b = make_engine(_with_lock_timeout(db.url, 5000))
    try:
        yield a, b
    finally:
        a.dispose()
        b.dispose()


def test_postgres_workers_claim_disjoint_rows_while_one_claim_is_still_open(
    db: Db, two_workers: tuple[Engine, Engine]
) -> None:
    engine_a, engine_b = two_workers
    people = _people(db, 10)
    cid = _promotional_campaign(db)
    deliveries.start(db.engine, cid)
    all_ids = set(_delivery_ids(db, cid).values())
    assert len(all_ids) == len(people)
    with engine_b.connect() as conn:  # the setting really reaches B's sessions
        assert conn.exec_driver_sql("SHOW lock_timeout").scalar() == "5s"

    holding, release = threading.Event(), threading.Event()

    def hold_commit(conn: Any) -> None:
        # Worker A has picked and updated its rows and is about to commit: keep its
        # transaction (and its row locks) open until the test lets go.
        if not holding.is_set():
            holding.set()
            release.wait(30)

    out_a: list[Any] = []

    def worker_a() -> None:
        try:
            out_a.append(deliveries.claim(engine_a, cid, "worker-a", 4))
        except BaseException as exc:
            out_a.append(exc)

    event.listen(engine_a, "commit", hold_commit)
    thread = threading.Thread(target=worker_a, daemon=True)
    thread.start()
    try:
        assert holding.wait(30), "worker A never reached its commit"
        # A's claim is open, its rows locked. B must not wait for them: it takes the
        # next ones at once (or its lock_timeout turns waiting into an error).
        got_b = deliveries.claim(engine_b, cid, "worker-b", 4)
        assert thread.is_alive() and not out_a, "A's transaction ended before B claimed"
    finally:
        release.set()
        thread.join(30)
        event.remove(engine_a, "commit", hold_commit)
    assert not thread.is_alive()
    got_a = out_a[0]
    assert not isinstance(got_a, BaseException), got_a

    ids_a = {c.delivery_id for c in got_a.ready}
    ids_b = {c.delivery_id for c in got_b.ready}
    assert len(ids_a) == 4 and len(ids_b) == 4
    assert not ids_a & ids_b
    assert ids_a | ids_b <= all_ids
    with db.session() as s:
        rows = s.exec(select(Delivery).where(Delivery.campaign_id == cid)).all()
    claimed_by = {d.id: d.claimed_by for d in rows if d.status == "claimed"}
    assert claimed_by == {**dict.fromkeys(ids_a, "worker-a"), **dict.fromkeys(ids_b, "worker-b")}
    assert [d.status for d in rows].count("pending") == len(people) - 8


# ------------------------------------------------------------------ the send's lifecycle
#
# Each test below drives campaigns.deliveries through its public functions against the
# real database and checks the rows with values written out by hand (DESIGN.md §2, §4).

T = datetime(2031, 3, 4, 9, 30, tzinfo=UTC)  # "now" for the tests: far from the clock
SEC = timedelta(seconds=1)
MIN = timedelta(minutes=1)
KIND_FIELDS: dict[Kind, dict[str, str]] = {
    Kind.PROMOTIONAL: {},
    Kind.SURVEY: {"survey_url": "https://survey.example.com/q3"},
    Kind.THIRD_PARTY_OFFER: {"sponsor": "Partner GmbH"},
}


def _person(
    s: Session,
    email: str,
    *grants: Purpose,
    name: str = "",
    country: str = "",
    attributes: dict[str, str] | None = None,
) -> tuple[Contact, dict[Purpose, int]]:
    """A contact who granted `grants` by a confirmed signup: (contact, {purpose: event id})."""
    c = Contact(
        email=email,
        email_key=email.lower(),
        name=name,
        country=country,
        attributes=attributes or {},
    )
    s.add(c)
    s.flush()
    events = {}
    for purpose in grants:
        ev = consent.record(s, c, purpose, granted=True, source="form:signup", policy_version="1")
        assert ev is not None and ev.id is not None
        events[purpose] = ev.id
    return c, events


def _campaign(
    db: Db, name: str, kind: Kind = Kind.PROMOTIONAL, segment: dict[str, Any] | None = None
) -> int:
    with db.session() as s:
        c = store.create(
            s,
            kind=kind,
            name=name,
            subject="News",
            body="Hello",
            segment=segment,
            **KIND_FIELDS[kind],
        )
        s.commit()
        assert c.id is not None
        return c.id


def _campaign_row(db: Db, campaign_id: int) -> Campaign:
    with db.session() as s:
        c = s.get(Campaign, campaign_id)
        assert c is not None
        return c


def _rows(db: Db, campaign_id: int) -> list[Delivery]:
    """The campaign's deliveries in id order (snapshot order)."""
    with db.session() as s:
        return list(
            s.exec(
                select(Delivery).where(Delivery.campaign_id == campaign_id).order_by(Delivery.id)
            )
        )


def _ids(db: Db, campaign_id: int) -> list[int]:
    return [d.id for d in _rows(db, campaign_id) if d.id is not None]


def _started(db: Db, n: int, name: str = "spring") -> tuple[int, list[int], list[Contact]]:
    """A promotional campaign started at T for `n` readers: (campaign, delivery ids, people)."""
    people = _people(db, n)
    cid = _campaign(db, name)
    assert deliveries.start(db.engine, cid, now=T) == n
    return cid, _ids(db, cid), people


def _state(d: Delivery) -> tuple[str, int, str, str]:
    return (d.status, d.attempts, d.error, d.claimed_by)


def test_start_snapshots_each_kinds_eligible_audience_once_as_pending_with_its_proof(
    db: Db,
) -> None:
    """§2: consent for the campaign's purpose, not suppressed; §4: one row per person."""
    with db.session() as s:
        anna, anna_ev = _person(s, "anna@example.com", Purpose.PROMOTIONAL)
        ben, ben_ev = _person(s, "ben@example.com", Purpose.RESEARCH)
        cleo, _ = _person(s, "cleo@example.com", Purpose.PROMOTIONAL, Purpose.RESEARCH)
        consent.record(
            s, cleo, Purpose.PROMOTIONAL, granted=False, source="one-click", policy_version="1"
        )
        dora, _ = _person(s, "dora@example.com", Purpose.PROMOTIONAL, Purpose.THIRD_PARTY)
        suppression.suppress(s, dora.email, SuppressionReason.HARD_BOUNCE, source="bounce")
        emil, emil_ev = _person(s, "emil@example.com", Purpose.PROMOTIONAL, Purpose.THIRD_PARTY)
        _person(s, "fynn@example.com")  # never granted anything
        s.commit()
    cleo_ev = consent.event_id_of(cleo, Purpose.RESEARCH)
    promo = _campaign(db, "promo")
    survey = _campaign(db, "survey", Kind.SURVEY)
    offer = _campaign(db, "offer", Kind.THIRD_PARTY_OFFER)

    assert deliveries.start(db.engine, promo, now=T) == 2
    assert deliveries.start(db.engine, survey, now=T + SEC) == 2
    assert deliveries.start(db.engine, offer, now=T + 2 * SEC) == 1

    def snapshot(cid: int) -> list[tuple[Any, ...]]:
        return [
            (
                d.contact_id,
                d.status,
                d.consent_event_id,
                d.attempts,
                d.claimed_by,
                d.error,
                d.message_id,
                d.next_attempt_at,
                d.claimed_at,
                d.sent_at,
            )
            for d in _rows(db, cid)
        ]

    rest = (0, "", "", "", None, None, None)
    assert snapshot(promo) == [
        (anna.id, "pending", anna_ev[Purpose.PROMOTIONAL], *rest),
        (emil.id, "pending", emil_ev[Purpose.PROMOTIONAL], *rest),
    ]
    assert snapshot(survey) == [
        (ben.id, "pending", ben_ev[Purpose.RESEARCH], *rest),
        (cleo.id, "pending", cleo_ev, *rest),
    ]
    assert snapshot(offer) == [(emil.id, "pending", emil_ev[Purpose.THIRD_PARTY], *rest)]
    c = _campaign_row(db, promo)
    assert (c.status, c.started_at, c.updated_at) == ("sending", T, T)
    assert _campaign_row(db, offer).started_at == T + 2 * SEC

    # Starting again (a second send-due, a second worker) adds nobody and says so.
    assert deliveries.start(db.engine, promo, now=T + MIN) is None
    assert len(_rows(db, promo)) == 2
    assert _campaign_row(db, promo).started_at == T


def test_start_applies_the_campaigns_own_segment_and_touches_no_other_campaign(db: Db) -> None:
    with db.session() as s:
        anna, _ = _person(s, "anna@example.com", Purpose.PROMOTIONAL, country="DE")
        emil, _ = _person(s, "emil@example.com", Purpose.PROMOTIONAL, country="FR")
        s.commit()
    germans = _campaign(db, "germans", segment={"countries": ["DE"]})
    everyone = _campaign(db, "everyone")

    assert deliveries.start(db.engine, everyone, now=T) == 2
    assert [d.contact_id for d in _rows(db, everyone)] == [anna.id, emil.id]
    assert _campaign_row(db, germans).status == "draft"
    assert _rows(db, germans) == []

    assert deliveries.start(db.engine, germans, now=T) == 1
    assert [d.contact_id for d in _rows(db, germans)] == [anna.id]


def test_start_begins_only_a_draft_or_scheduled_campaign(db: Db) -> None:
    """`campaign send` starts a draft, send-due a scheduled one; nothing else restarts."""
    _people(db, 2)
    ids = {name: _campaign(db, name) for name in ("draft", "scheduled", "paused", "cancelled")}
    with db.session() as s:
        store.schedule(s, "scheduled", T)
        store.cancel(s, "cancelled")
        s.commit()
    assert deliveries.start(db.engine, ids["paused"], now=T) == 2
    with db.session() as s:
        store.pause(s, "paused")
        s.commit()

    got = {name: deliveries.start(db.engine, cid, now=T + MIN) for name, cid in ids.items()}

    assert got == {"draft": 2, "scheduled": 2, "paused": None, "cancelled": None}
    assert {name: _campaign_row(db, cid).status for name, cid in ids.items()} == {
        "draft": "sending",
        "scheduled": "sending",
        "paused": "paused",
        "cancelled": "cancelled",
    }
    assert {name: len(_rows(db, cid)) for name, cid in ids.items()} == {
        "draft": 2,
        "scheduled": 2,
        "paused": 2,
        "cancelled": 0,
    }


def test_start_never_adds_a_second_row_for_someone_already_in_the_campaign(db: Db) -> None:
    """One row per (campaign, contact): a person with a row keeps it, untouched, and a row
    in another campaign does not keep anyone out of this one."""
    with db.session() as s:
        anna, _ = _person(s, "anna@example.com", Purpose.PROMOTIONAL)
        ben, _ = _person(s, "ben@example.com", Purpose.PROMOTIONAL)
        cleo, _ = _person(s, "cleo@example.com", Purpose.PROMOTIONAL)
        s.commit()
    other = _campaign(db, "other")
    cid = _campaign(db, "spring")
    with db.session() as s:
        s.add(Delivery(campaign_id=other, contact_id=ben.id, status="sent"))
        s.add(Delivery(campaign_id=cid, contact_id=anna.id, status="sent", message_id="<m@x>"))
        s.commit()

    assert deliveries.start(db.engine, cid, now=T) == 2

    rows = _rows(db, cid)
    assert [(d.contact_id, d.status, d.message_id) for d in rows] == [
        (anna.id, "sent", "<m@x>"),
        (ben.id, "pending", ""),
        (cleo.id, "pending", ""),
    ]


def test_claim_hands_out_due_rows_in_snapshot_order_with_what_the_message_needs(db: Db) -> None:
    with db.session() as s:
        anna, anna_ev = _person(s, "anna@example.com", Purpose.PROMOTIONAL, name="Anna")
        ben, ben_ev = _person(
            s,
            "Ben@example.com",
            Purpose.PROMOTIONAL,
            name="Ben",
            attributes={"plan": "gold", "city": "Köln"},
        )
        cleo, cleo_ev = _person(s, "cleo@example.com", Purpose.PROMOTIONAL, name="Cleo")
        s.commit()
    cid = _campaign(db, "spring")
    deliveries.start(db.engine, cid, now=T)
    d1, d2, d3 = (d.id for d in _rows(db, cid))

    first = deliveries.claim(db.engine, cid, "worker-1", 2, now=T + MIN)

    assert first == ClaimResult(
        [
            Claimed(d1, anna.id, "anna@example.com", "Anna", {}, anna_ev[Purpose.PROMOTIONAL], 0),
            Claimed(
                d2,
                ben.id,
                "Ben@example.com",
                "Ben",
                {"plan": "gold", "city": "Köln"},
                ben_ev[Purpose.PROMOTIONAL],
                0,
            ),
        ],
        0,
        active=True,
    )
    rows = _rows(db, cid)
    assert [(d.status, d.claimed_by, d.claimed_at) for d in rows] == [
        ("claimed", "worker-1", T + MIN),
        ("claimed", "worker-1", T + MIN),
        ("pending", "", None),
    ]

    second = deliveries.claim(db.engine, cid, "worker-2", 2, now=T + 2 * MIN)
    assert second == ClaimResult(
        [Claimed(d3, cleo.id, "cleo@example.com", "Cleo", {}, cleo_ev[Purpose.PROMOTIONAL], 0)],
        0,
        active=True,
    )
    # Nothing due is left: an active campaign with nothing to hand out.
    assert deliveries.claim(db.engine, cid, "worker-1", 2, now=T + 3 * MIN) == ClaimResult(
        [], 0, active=True, status="sending"
    )
    assert [d.claimed_by for d in _rows(db, cid)] == ["worker-1", "worker-1", "worker-2"]


def test_claim_records_the_consent_event_in_force_when_the_message_goes(db: Db) -> None:
    """Proof of consent (§2): someone who withdrew and signed up again after the snapshot
    is sent the message on the strength of the new grant, and the row names it."""
    with db.session() as s:
        anna, old = _person(s, "anna@example.com", Purpose.PROMOTIONAL)
        s.commit()
    cid = _campaign(db, "spring")
    deliveries.start(db.engine, cid, now=T)
    with db.session() as s:
        c = s.get(Contact, anna.id)
        assert c is not None
        consent.record(
            s, c, Purpose.PROMOTIONAL, granted=False, source="one-click", policy_version="1"
        )
        regrant = consent.record(
            s, c, Purpose.PROMOTIONAL, granted=True, source="form:signup", policy_version="2"
        )
        assert regrant is not None and regrant.id is not None
        new = regrant.id
        s.commit()
    assert new != old[Purpose.PROMOTIONAL]

    got = deliveries.claim(db.engine, cid, "w", 10, now=T + MIN)

    assert [c.consent_event_id for c in got.ready] == [new]
    assert [d.consent_event_id for d in _rows(db, cid)] == [new]


def test_claim_skips_each_ineligible_person_with_the_reason_and_sends_the_rest(db: Db) -> None:
    """§2: checked again just before the message goes. The reasons are what the campaign
    report lists under skipped."""
    with db.session() as s:
        erased, _ = _person(s, "erased@example.com", Purpose.PROMOTIONAL)
        _person(s, "ok1@example.com", Purpose.PROMOTIONAL)
        bounced, _ = _person(s, "bounced@example.com", Purpose.PROMOTIONAL)
        withdrew, _ = _person(s, "withdrew@example.com", Purpose.PROMOTIONAL)
        # Stored before addresses were checked as they are now.
        _person(s, "two..dots@example.com", Purpose.PROMOTIONAL)
        _person(s, "ok2@example.com", Purpose.PROMOTIONAL)
        both, _ = _person(s, "both@example.com", Purpose.PROMOTIONAL)
        s.commit()
    cid = _campaign(db, "spring")
    assert deliveries.start(db.engine, cid, now=T) == 7
    ids = [d.id for d in _rows(db, cid)]
    with db.session() as s:
        _erase(s, erased)
        _hard_bounce(s, bounced)
        _withdraw(s, withdrew)
        _hard_bounce(s, both)
        _withdraw(s, both)
        s.commit()

    got = deliveries.claim(db.engine, cid, "w", 10, now=T + MIN)

    assert got.active and got.skipped == 5
    assert [(c.delivery_id, c.email) for c in got.ready] == [
        (ids[1], "ok1@example.com"),
        (ids[5], "ok2@example.com"),
    ]
    assert [(d.status, d.error) for d in _rows(db, cid)] == [
        ("skipped", "contact erased"),
        ("claimed", ""),
        ("skipped", "suppressed (hard_bounce)"),
        ("skipped", "consent withdrawn"),
        ("skipped", "invalid address"),
        ("claimed", ""),
        ("skipped", "suppressed (hard_bounce)"),
    ]


def test_claim_hands_out_nothing_once_the_campaign_is_not_sending(db: Db) -> None:
    people = _people(db, 2)
    running = _campaign(db, "running")
    held = _campaign(db, "held")
    deliveries.start(db.engine, running, now=T)
    deliveries.start(db.engine, held, now=T)
    with db.session() as s:
        store.pause(s, "held")
        s.commit()

    assert deliveries.claim(db.engine, held, "w", 10, now=T + MIN) == ClaimResult(
        [], 0, active=False, status="paused"
    )
    with db.session() as s:
        store.cancel(s, "held")
        s.commit()
    assert deliveries.claim(db.engine, held, "w", 10, now=T + MIN) == ClaimResult(
        [], 0, active=False, status="cancelled"
    )
    assert deliveries.claim(db.engine, held + running + 100, "w", 10, now=T) == ClaimResult(
        [], 0, active=False, status="deleted"
    )
    assert [_state(d) for d in _rows(db, held)] == [("pending", 0, "", "")] * 2

    got = deliveries.claim(db.engine, running, "w", 10, now=T + MIN)
    assert got.active and [c.contact_id for c in got.ready] == [p.id for p in people]
    assert [d.status for d in _rows(db, held)] == ["pending", "pending"]


def test_a_retry_is_claimed_only_once_its_time_has_come(db: Db) -> None:
    cid, (d1, _d2), _ = _started(db, 2)
    deliveries.claim(db.engine, cid, "w", 10, now=T)
    deliveries.commit_progress(
        db.engine, cid, Progress(retry=[(d1, "451 4.3.0 try again later", T + 5 * MIN)]), now=T
    )
    assert deliveries.next_retry_at(db.engine, cid) == T + 5 * MIN

    early = T + 5 * MIN - timedelta(microseconds=1)
    assert deliveries.claim(db.engine, cid, "w", 10, now=early) == ClaimResult([], 0, active=True)

    due = deliveries.claim(db.engine, cid, "w", 10, now=T + 5 * MIN)
    assert [(c.delivery_id, c.attempts) for c in due.ready] == [(d1, 1)]
    assert [(d.status, d.claimed_at) for d in _rows(db, cid)] == [
        ("claimed", T + 5 * MIN),
        ("claimed", T),
    ]


def _long(prefix: str) -> str:
    return prefix + "." * (1500 - len(prefix))


def _cut(prefix: str) -> str:
    """What is kept of _long(prefix): the first 1000 characters (the column's size)."""
    return prefix + "." * (1000 - len(prefix))


def test_commit_progress_records_each_outcome_as_its_own_mark(db: Db) -> None:
    """§4: sent as soon as accepted; 4xx retried later (one attempt counted); 5xx failed;
    a drop after the whole message in doubt; a refused recipient failed and the address
    suppressed; a message the server never took (no connection) pending again at once."""
    cid, ids, people = _started(db, 8)
    d1, d2, d3, d4, d5, d6, _d7, _d8 = ids
    deliveries.claim(db.engine, cid, "w", 8, now=T)
    deliveries.commit_progress(db.engine, cid, Progress(sending=ids[:7]), now=T)
    assert [d.status for d in _rows(db, cid)] == ["sending"] * 7 + ["claimed"]

    deliveries.commit_progress(
        db.engine,
        cid,
        Progress(
            sent=[d1],
            retry=[(d2, _long("451 4.3.0 retry "), T + 10 * MIN)],
            failed=[(d3, _long("554 5.6.0 content "))],
            in_doubt=[(d4, _long("dropped after the final dot "))],
            bounced=[(d5, people[4].email, _long("550 5.1.1 user unknown "))],
            requeue=[(d6, _long("421 too many connections "))],
        ),
        now=T + SEC,
    )

    rows = _rows(db, cid)
    assert [(*_state(d), d.next_attempt_at, d.sent_at) for d in rows] == [
        ("sent", 0, "", "w", None, T + SEC),
        ("pending", 1, _cut("451 4.3.0 retry "), "", T + 10 * MIN, None),
        ("failed", 1, _cut("554 5.6.0 content "), "w", None, None),
        ("in_doubt", 0, _cut("dropped after the final dot "), "w", None, None),
        ("failed", 1, _cut("550 5.1.1 user unknown "), "w", None, None),
        ("pending", 0, _cut("421 too many connections "), "", T + SEC, None),
        ("sending", 0, "", "w", None, None),
        ("claimed", 0, "", "w", None, None),
    ]
    with db.session() as s:
        hit = s.get(Contact, people[4].id)
        assert hit is not None and hit.suppressed == "hard_bounce"
        assert [(x.reason, x.source, x.campaign_id) for x in s.exec(select(Suppression))] == [
            ("hard_bounce", "bounce", cid)
        ]
        others = s.exec(select(Contact.suppressed).where(Contact.id != people[4].id))
        assert list(others) == [None] * 7

    # The requeued message is due at once, the retry later; in doubt is never handed out.
    again = deliveries.claim(db.engine, cid, "w", 10, now=T + 2 * SEC)
    assert [(c.delivery_id, c.attempts) for c in again.ready] == [(d6, 0)]
    assert deliveries.next_retry_at(db.engine, cid) == T + 10 * MIN


def test_commit_progress_on_a_connection_kept_for_the_whole_run(db: Db) -> None:
    """The send engine's committer keeps one connection (on SQLite the marks-only commits
    take a shorter path): every kind of commit lands, and others see it committed."""
    cid, ids, _ = _started(db, 4)
    d1, d2, d3, d4 = ids
    deliveries.claim(db.engine, cid, "w", 4, now=T)
    with db.engine.connect() as conn:
        deliveries.commit_progress(conn, cid, Progress(sending=[d1, d2, d3]), now=T)
        assert [d.status for d in _rows(db, cid)] == ["sending"] * 3 + ["claimed"]
        deliveries.commit_progress(conn, cid, Progress(sent=[d1], sending=[d4]), now=T + SEC)
        deliveries.commit_progress(
            conn,
            cid,
            Progress(sent=[d2], retry=[(d3, "451 later", T + MIN)]),
            now=T + 2 * SEC,
        )
        deliveries.commit_progress(conn, cid, Progress(in_doubt=[(d4, "dropped")]), now=T)
        rows = _rows(db, cid)
        # Marks that need more than a status change take the full path on SQLite too.
        deliveries.commit_progress(conn, cid, Progress(held=[(d1, "example.com")]), now=T)
        assert _rows(db, cid)[0].status == "held"
        refused = [(d2, "reader1@example.com", "550 5.7.1 no", "blocked")]
        deliveries.commit_progress(conn, cid, Progress(refused=refused), now=T)
        assert _rows(db, cid)[1].status == "failed" and [e.kind for e in _events(db)] == ["block"]
        deliveries.commit_progress(conn, cid, Progress(failed=[(d3, "554 no")]), now=T)
        assert _rows(db, cid)[2].status == "failed"
    assert [(*_state(d), d.sent_at, d.next_attempt_at) for d in rows] == [
        ("sent", 0, "", "w", T + SEC, None),
        ("sent", 0, "", "w", T + 2 * SEC, None),
        ("pending", 1, "451 later", "", None, T + MIN),
        ("in_doubt", 0, "dropped", "w", None, None),
    ]


def test_progress_is_true_when_any_mark_is_waiting_and_merges_in_order() -> None:
    fields = {
        "sending": [1],
        "sent": [2],
        "retry": [(3, "451", T)],
        "failed": [(4, "554")],
        "in_doubt": [(5, "dropped")],
        "bounced": [(6, "a@example.com", "550")],
        "requeue": [(7, "421")],
        "refused": [(8, "c@example.com", "550 5.7.1", "blocked")],
        "hold_domains": ["example.net"],
        "held": [(9, "example.net")],
    }
    assert not Progress()
    assert not Progress(reasons={6: "has_moved"})  # a reason alone is no mark
    for name, value in fields.items():
        assert Progress(**{name: value}), name

    later = {
        "sending": [11],
        "sent": [12],
        "retry": [(13, "452", T + MIN)],
        "failed": [(14, "552")],
        "in_doubt": [(15, "reset")],
        "bounced": [(16, "b@example.com", "551")],
        "requeue": [(17, "421 busy")],
        "refused": [(18, "d@example.com", "552 5.2.2", "mailbox_full")],
        "hold_domains": ["example.org"],
        "held": [(19, "example.org")],
    }
    merged = Progress(**fields, reasons={6: "has_moved"})
    merged.merge(Progress(**later, reasons={16: "disabled"}))
    assert merged == Progress(
        sending=[1, 11],
        sent=[2, 12],
        retry=[(3, "451", T), (13, "452", T + MIN)],
        failed=[(4, "554"), (14, "552")],
        in_doubt=[(5, "dropped"), (15, "reset")],
        bounced=[(6, "a@example.com", "550"), (16, "b@example.com", "551")],
        requeue=[(7, "421"), (17, "421 busy")],
        refused=[(8, "c@example.com", "550 5.7.1", "blocked"), *later["refused"]],
        hold_domains=["example.net", "example.org"],
        held=[(9, "example.net"), (19, "example.org")],
        reasons={6: "has_moved", 16: "disabled"},
    )


def test_release_gives_back_only_the_listed_claims_not_yet_handed_to_smtp(db: Db) -> None:
    cid, ids, _ = _started(db, 4)
    d1, d2, d3, _d4 = ids
    deliveries.claim(db.engine, cid, "w", 4, now=T)
    deliveries.commit_progress(db.engine, cid, Progress(sending=[d2]), now=T)

    deliveries.release(db.engine, [])
    assert [d.status for d in _rows(db, cid)] == ["claimed", "sending", "claimed", "claimed"]
    deliveries.release(db.engine, [d1, d2, d3])

    assert [(d.status, d.claimed_by) for d in _rows(db, cid)] == [
        ("pending", ""),
        ("sending", "w"),
        ("pending", ""),
        ("claimed", "w"),
    ]


def test_recover_requeues_claims_and_puts_messages_in_flight_in_doubt(db: Db) -> None:
    """§4: after a crash, claimed rows (never handed to SMTP) go back to pending; rows
    that were on the wire are in doubt, reported, and never sent again."""
    cid, ids, _ = _started(db, 7)
    deliveries.claim(db.engine, cid, "dead", 3, now=T)  # ids 0-2
    deliveries.claim(db.engine, cid, "alive", 3, now=T)  # ids 3-5; 6 stays pending
    deliveries.commit_progress(
        db.engine, cid, Progress(sending=[ids[1], ids[2], ids[4]], sent=[ids[5]]), now=T
    )
    deliveries.commit_progress(db.engine, cid, Progress(sent=[ids[2]]), now=T)
    assert sorted(deliveries.workers_with_claims(db.engine)) == ["alive", "dead"]

    # PostgreSQL: only the dead worker's rows; the live one goes on.
    assert deliveries.recover(db.engine, ["dead"]) == (1, 1)
    in_flight = "worker stopped while the message was in flight"
    assert [(d.status, d.claimed_by, d.error) for d in _rows(db, cid)] == [
        ("pending", "", ""),
        ("in_doubt", "dead", in_flight),
        ("sent", "dead", ""),
        ("claimed", "alive", ""),
        ("sending", "alive", ""),
        ("sent", "alive", ""),
        ("pending", "", ""),
    ]
    assert deliveries.workers_with_claims(db.engine) == ["alive"]

    # SQLite (the send lock proves nobody else runs): every claim.
    assert deliveries.recover(db.engine) == (1, 1)
    assert [(d.status, d.claimed_by) for d in _rows(db, cid)] == [
        ("pending", ""),
        ("in_doubt", "dead"),
        ("sent", "dead"),
        ("pending", ""),
        ("in_doubt", "alive"),
        ("sent", "alive"),
        ("pending", ""),
    ]
    assert deliveries.workers_with_claims(db.engine) == []
    assert deliveries.recover(db.engine) == (0, 0)

    # In doubt is never handed out again: the next claim has the three pending rows.
    got = deliveries.claim(db.engine, cid, "next", 10, now=T + MIN)
    assert [c.delivery_id for c in got.ready] == [ids[0], ids[3], ids[6]]


def test_next_retry_at_is_the_earliest_waiting_retry_of_that_campaign(db: Db) -> None:
    cid, ids, _ = _started(db, 3, name="spring")
    other = _campaign(db, "autumn")
    assert deliveries.start(db.engine, other, now=T) == 3
    # Freshly snapshotted rows are due now: nothing to wait for.
    assert deliveries.next_retry_at(db.engine, cid) is None

    deliveries.claim(db.engine, cid, "w", 3, now=T)
    deliveries.commit_progress(
        db.engine,
        cid,
        Progress(retry=[(ids[0], "451", T + MIN), (ids[1], "451", T + 20 * MIN)]),
        now=T,
    )
    assert deliveries.next_retry_at(db.engine, cid) == T + MIN
    assert deliveries.next_retry_at(db.engine, other) is None
    # Once the first retry is claimed again, the second is the one waited for.
    deliveries.claim(db.engine, cid, "w", 3, now=T + MIN)
    assert deliveries.next_retry_at(db.engine, cid) == T + 20 * MIN


def test_finish_if_done_marks_the_campaign_sent_only_when_no_row_is_open(db: Db) -> None:
    """Open: pending, claimed, sending. Sent, failed, skipped and in doubt are done."""
    cid, ids, people = _started(db, 5, name="spring")
    other = _campaign(db, "autumn")  # the same people, none of them sent to yet
    assert deliveries.start(db.engine, other, now=T) == 5
    with db.session() as s:
        _withdraw(s, people[4])
        s.commit()
    deliveries.claim(db.engine, cid, "w", 2, now=T)  # ids 0-1 claimed, 2-4 pending
    assert deliveries.finish_if_done(db.engine, cid, now=T) is False

    deliveries.claim(db.engine, cid, "w", 3, now=T)  # ids 2-3 claimed, 4 skipped
    deliveries.commit_progress(db.engine, cid, Progress(sending=ids[:4]), now=T)
    assert deliveries.finish_if_done(db.engine, cid, now=T) is False
    deliveries.commit_progress(
        db.engine,
        cid,
        Progress(sent=[ids[0]], failed=[(ids[1], "554")], in_doubt=[(ids[2], "dropped")]),
        now=T,
    )
    assert deliveries.finish_if_done(db.engine, cid, now=T) is False  # ids[3] is sending
    assert _campaign_row(db, cid).status == "sending"

    deliveries.commit_progress(db.engine, cid, Progress(sent=[ids[3]]), now=T + SEC)
    assert deliveries.finish_if_done(db.engine, cid, now=T + 2 * SEC) is True
    c = _campaign_row(db, cid)
    assert (c.status, c.finished_at, c.updated_at) == ("sent", T + 2 * SEC, T + 2 * SEC)
    # Asking again changes nothing; another campaign is not finished by this one.
    assert deliveries.finish_if_done(db.engine, cid, now=T + MIN) is True
    assert _campaign_row(db, cid).finished_at == T + 2 * SEC
    assert _campaign_row(db, other).status == "sending"


def test_finish_if_done_waits_for_every_open_row_and_never_finishes_a_stopped_send(
    db: Db,
) -> None:
    """Pending, claimed and sending rows are open; a paused or cancelled campaign stays so
    even with nothing open; a campaign that reached nobody is done at once."""
    _people(db, 2)
    names = ("pending", "claimed", "sending", "paused", "cancelled")
    ids = {name: _campaign(db, name) for name in names}
    for name, cid in ids.items():
        assert deliveries.start(db.engine, cid, now=T) == 2
        d1, d2 = _ids(db, cid)
        deliveries.claim(db.engine, cid, "w", 2, now=T)
        deliveries.commit_progress(db.engine, cid, Progress(sent=[d1]), now=T)
        if name == "pending":
            deliveries.release(db.engine, [d2])
        elif name == "sending":
            deliveries.commit_progress(db.engine, cid, Progress(sending=[d2]), now=T)
        elif name in ("paused", "cancelled"):
            deliveries.commit_progress(db.engine, cid, Progress(sent=[d2]), now=T)
    with db.session() as s:
        store.pause(s, "paused")
        store.cancel(s, "cancelled")
        s.commit()
    nobody = _campaign(db, "nobody", segment={"countries": ["ZZ"]})
    assert deliveries.start(db.engine, nobody, now=T) == 0

    assert {
        name: deliveries.finish_if_done(db.engine, cid, now=T) for name, cid in ids.items()
    } == (dict.fromkeys(names, False))
    assert {name: _campaign_row(db, cid).status for name, cid in ids.items()} == {
        "pending": "sending",
        "claimed": "sending",
        "sending": "sending",
        "paused": "paused",
        "cancelled": "cancelled",
    }
    assert {_campaign_row(db, cid).finished_at for cid in ids.values()} == {None}
    assert deliveries.finish_if_done(db.engine, nobody, now=T) is True


@pytest.mark.parametrize(
    ("attempts", "base", "seconds"),
    [
        (0, 30.0, 30),  # the first retry waits retry_delay
        (1, 30.0, 60),
        (2, 30.0, 120),
        (5, 30.0, 960),
        (-1, 30.0, 30),  # never less than the base
        (7, 30.0, 3600),  # 3840 s: capped at an hour
        (0, 3600.0, 3600),
        (1, 1801.0, 3600),
        (40, 30.0, 3600),
    ],
)
def test_backoff_doubles_from_the_base_up_to_an_hour(
    attempts: int, base: float, seconds: int
) -> None:
    assert deliveries.backoff(attempts, base, now=T) == T + timedelta(seconds=seconds)


def test_backoff_counts_from_now_by_default() -> None:
    before = datetime.now(UTC)
    got = deliveries.backoff(0, 30.0)
    after = datetime.now(UTC)
    assert before + timedelta(seconds=30) <= got <= after + timedelta(seconds=30)


def test_due_campaign_ids_lists_scheduled_ones_whose_time_has_come_then_the_running(
    db: Db,
) -> None:
    _people(db, 1)
    names = ["late", "early", "on-time", "future", "draft", "running", "paused", "cancelled"]
    ids = {name: _campaign(db, name) for name in names}
    with db.session() as s:
        store.schedule(s, "late", T - MIN)
        store.schedule(s, "early", T - 60 * MIN)
        store.schedule(s, "on-time", T)
        store.schedule(s, "future", T + SEC)
        store.schedule(s, "running", T - 120 * MIN)
        store.schedule(s, "paused", T - 120 * MIN)
        store.cancel(s, "cancelled")
        s.commit()
    deliveries.start(db.engine, ids["running"], now=T - 120 * MIN)
    deliveries.start(db.engine, ids["paused"], now=T - 120 * MIN)
    with db.session() as s:
        store.pause(s, "paused")
        s.commit()

    due, running = deliveries.due_campaign_ids(db.engine, now=T)

    assert due == [ids["early"], ids["late"], ids["on-time"]]
    assert running == [ids["running"]]
    assert deliveries.due_campaign_ids(db.engine, now=T + SEC)[0] == [
        ids["early"],
        ids["late"],
        ids["on-time"],
        ids["future"],
    ]
    # By the real clock (2026) none of them is due yet.
    assert deliveries.due_campaign_ids(db.engine) == ([], [ids["running"]])


@pytest.fixture
def tokyo() -> Iterator[None]:
    """The machine's local time is Tokyo's (UTC+9) for the test."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = "Asia/Tokyo"
    time.tzset()
    try:
        yield
    finally:
        if before is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = before
        time.tzset()


def test_times_are_written_in_utc_whatever_the_local_time_zone(db: Db, tokyo: None) -> None:
    """README: times are stored in UTC, on a machine (and a PostgreSQL server) that keeps
    local time: here Tokyo's, UTC+9, with `now` given in it."""
    cid, (d1, d2, d3), _ = _started(db, 3)
    local = T.astimezone()
    assert local.utcoffset() == timedelta(hours=9)
    engine = db.engine
    if db.dialect == "postgresql":
        url = make_url(db.url)
        options = f"{url.query['options']} -c timezone=Asia/Tokyo"
        engine = make_engine(url.update_query_dict({"options": options}))
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT 1").scalar() == 1
            if db.dialect == "postgresql":
                assert conn.exec_driver_sql("SHOW timezone").scalar() == "Asia/Tokyo"
        deliveries.claim(engine, cid, "w", 3, now=local)
        with engine.connect() as conn:
            deliveries.commit_progress(conn, cid, Progress(sending=[d1]), now=local)
            deliveries.commit_progress(conn, cid, Progress(sent=[d1]), now=local + SEC)
        deliveries.commit_progress(engine, cid, Progress(sending=[d2, d3]), now=local)
        deliveries.commit_progress(
            engine,
            cid,
            Progress(sent=[d2], retry=[(d3, "451", local + MIN)]),
            now=local + 2 * SEC,
        )
    finally:
        if engine is not db.engine:
            engine.dispose()
    assert [(d.claimed_at, d.sent_at, d.next_attempt_at) for d in _rows(db, cid)] == [
        (T, T + SEC, None),
        (T, T + 2 * SEC, None),
        (T, None, T + MIN),
    ]


def test_checkpoints_are_held_given_back_and_copy_the_wal_into_the_file(
    db: Db, tmp_path: Path
) -> None:
    """SQLite: the send engine stops commits checkpointing by themselves, gives the setting
    back, and checkpoints in a thread instead. PostgreSQL has nothing of it."""
    with db.engine.connect() as conn:
        before = deliveries.hold_checkpoints(conn)
        if db.dialect != "sqlite":
            assert before is None
            deliveries.restore_checkpoints(conn, before)
            return
        raw = conn.connection.dbapi_connection
        assert raw is not None
        assert before == 1000
        assert raw.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        deliveries.restore_checkpoints(conn, None)  # nothing to give back: left as it is
        assert raw.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        deliveries.restore_checkpoints(conn, before)
        assert raw.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000

    cid, _, _ = _started(db, 3)
    deliveries.checkpoint(db.engine)
    # The database file alone, without its -wal file, now holds the snapshot.
    path = Path(make_url(db.url).database or "")
    copy = tmp_path / "copy.db"
    copy.write_bytes(path.read_bytes())
    with sqlite3.connect(copy) as plain:
        n = plain.execute("SELECT count(*) FROM deliveries WHERE campaign_id = ?", (cid,))
        assert n.fetchone()[0] == 3
    plain.close()


# Issue 14: refusals at the send are judged by their reason (DESIGN.md §4 "Returns").
# reason -> (event kind, group): the group table of DESIGN.md §4, written out here.
REFUSAL_KINDS = {
    "user_unknown": ("hard_bounce", "address"),
    "has_moved": ("hard_bounce", "address"),
    "blocked": ("block", "sender"),
    "auth_failure": ("block", "sender"),
    "mailbox_full": ("soft_bounce", "mailbox"),
    "expired": ("soft_bounce", "transient"),
    "not-a-reason": ("soft_bounce", "unknown"),
}


def _events(db: Db) -> list[ReturnEvent]:
    with db.session() as s:
        return list(s.exec(select(ReturnEvent).order_by(col(ReturnEvent.delivery_id))))


def _address_hash(db: Db, email: str) -> str:
    with db.session() as s:
        return suppression.hash_for(s, email)


def test_refusals_at_the_send_are_return_events_of_their_reason(db: Db) -> None:
    """A dead address is suppressed and counted as a hard bounce; a block is counted for
    its receiving domain and costs the person nothing; a full mailbox counts toward the
    soft limit; the server's words are kept without the address they quote."""
    people = _people(db, 7, "mail.example.com")
    cid = _campaign(db, "spring")
    deliveries.start(db.engine, cid, now=T)
    ids = _ids(db, cid)
    deliveries.claim(db.engine, cid, "w", 7, now=T)
    emails = [p.email for p in people]
    said = [
        f"550 {r} for <{e}> said the server" for r, e in zip(REFUSAL_KINDS, emails, strict=False)
    ]
    bounced = [(ids[0], emails[0], said[0]), (ids[1], emails[1], said[1])]
    refused = [
        (ids[i], emails[i].replace("mail.example.com", "Mail.Example.COM"), said[i], reason)
        for i, reason in list(enumerate(REFUSAL_KINDS))[2:]
    ]
    deliveries.commit_progress(
        db.engine,
        cid,
        # The first bounce names no reason: a refused recipient is a user unknown.
        Progress(bounced=bounced, refused=refused, reasons={ids[1]: "has_moved"}),
        now=T + SEC,
    )

    assert [(d.status, d.attempts, d.error) for d in _rows(db, cid)] == [
        ("failed", 1, said[i]) for i in range(7)
    ]
    events = _events(db)
    assert [(e.delivery_id, e.kind, e.reason, e.reason_group) for e in events] == [
        (ids[i], kind, reason, group)
        for i, (reason, (kind, group)) in enumerate(REFUSAL_KINDS.items())
    ]
    for i, e in enumerate(events):
        assert e.campaign_id == cid and e.detector == "smtp" and e.status == ""
        assert e.occurred_at == T + SEC
        assert e.address_hash == _address_hash(db, emails[i])
        reason = list(REFUSAL_KINDS)[i]
        assert e.diagnostic == f"550 {reason} for <address> said the server"
        # Counted per receiving domain only when it is a block.
        assert e.domain == ("mail.example.com" if e.kind == "block" else "")
    assert len({e.message_hash for e in events}) == 7
    with db.session() as s:
        suppressed = {c.email: c.suppressed for c in s.exec(select(Contact))}
    assert suppressed == {e: ("hard_bounce" if i < 2 else None) for i, e in enumerate(emails)}


def test_a_refusal_keeps_at_most_300_characters_of_the_servers_words(db: Db) -> None:
    cid, ids, people = _started(db, 1)
    deliveries.claim(db.engine, cid, "w", 1, now=T)
    error = "552 5.2.2 " + "mailbox full " * 40
    refused = [(ids[0], people[0].email, error, "mailbox_full")]
    deliveries.commit_progress(db.engine, cid, Progress(refused=refused), now=T)
    (event,) = _events(db)
    assert len(event.diagnostic) <= 300 and event.diagnostic.startswith("552 5.2.2 mailbox full")
    assert event.diagnostic.endswith("full") and len(event.diagnostic) > 280


def _campaigns_for(db: Db, names: list[str]) -> list[tuple[int, int]]:
    """(campaign, its only delivery) for each name, all sent to the same existing people."""
    out = []
    for name in names:
        cid = _campaign(db, name)
        deliveries.start(db.engine, cid, now=T)
        deliveries.claim(db.engine, cid, "w", 10, now=T)
        out.append((cid, _ids(db, cid)[0]))
    return out


def test_full_mailboxes_at_the_send_reach_the_soft_limit_within_its_window(db: Db) -> None:
    """§4: soft bounces suppress once there are `limit` of them within `days`; blocks never
    count, however many."""
    (full,) = _people(db, 1)
    sends = _campaigns_for(db, ["one", "two", "three"])
    when = [T - timedelta(days=20), T - timedelta(days=1), T]
    for (cid, did), now in zip(sends, when, strict=True):
        refusal = (did, full.email, "452 4.2.2 mailbox full", "mailbox_full")
        deliveries.commit_progress(
            db.engine, cid, Progress(refused=[refusal]), now=now, soft_limit=(2, 14)
        )
        with db.session() as s:
            contact = s.get(Contact, full.id)
            assert contact is not None
            # The first one is 19 days before the second: outside its window.
            assert contact.suppressed == (None if now < T else "soft_bounces"), now


def test_blocks_at_the_send_never_suppress_however_many(db: Db) -> None:
    (person,) = _people(db, 1)
    for cid, did in _campaigns_for(db, ["one", "two", "three"]):
        refusal = (did, person.email, "550 5.7.1 blocked", "blocked")
        deliveries.commit_progress(
            db.engine, cid, Progress(refused=[refusal]), now=T, soft_limit=(1, 14)
        )
    with db.session() as s:
        contact = s.get(Contact, person.id)
        assert contact is not None and contact.suppressed is None
        assert list(s.exec(select(Suppression))) == []
    assert [e.kind for e in _events(db)] == ["block"] * 3


def test_a_domain_that_keeps_blocking_is_held_and_released_by_domain(db: Db) -> None:
    """Issue 14: the pending deliveries to a blocking domain are held back (with a note),
    so are the claimed ones the engine hands back; other domains, other states and other
    campaigns are untouched; release lets them go again, one domain or all."""
    people = _people(db, 3, "blocks.example")
    people += _people(db, 2, "sub.blocks.example")  # another domain, same suffix
    people += _people(db, 1, "a-b.example")
    people += _people(db, 1, "axb.example")  # held: "a_b.example", whose "_" is no wildcard
    cid = _campaign(db, "spring")
    other = _campaign(db, "other")
    deliveries.start(db.engine, cid, now=T)
    deliveries.start(db.engine, other, now=T)
    ids = _ids(db, cid)
    deliveries.claim(db.engine, cid, "w", 1, now=T)  # ids[0] claimed
    deliveries.commit_progress(db.engine, cid, Progress(sent=[ids[0]]), now=T)
    deliveries.claim(db.engine, cid, "w", 1, now=T)  # ids[1] claimed, not sent

    deliveries.commit_progress(
        db.engine,
        cid,
        Progress(
            held=[(ids[1], "blocks.example")],
            hold_domains=["Blocks.Example", "a_b.example", "A-B.example"],
        ),
        now=T,
    )

    note = "held back: {} kept blocking this send"
    assert [(d.status, d.error, d.claimed_by) for d in _rows(db, cid)] == [
        ("sent", "", "w"),
        ("held", note.format("blocks.example"), ""),
        ("held", note.format("blocks.example"), ""),
        ("pending", "", ""),
        ("pending", "", ""),
        ("held", note.format("a-b.example"), ""),
        ("pending", "", ""),
    ]
    assert [d.status for d in _rows(db, other)] == ["pending"] * 7
    assert deliveries.held_by_domain(db.engine, cid) == {"blocks.example": 2, "a-b.example": 1}
    assert list(deliveries.held_by_domain(db.engine, cid)) == ["blocks.example", "a-b.example"]
    assert deliveries.held_by_domain(db.engine, other) == {}

    assert deliveries.release_held(db.engine, cid, "A-B.example") == 1
    assert deliveries.held_by_domain(db.engine, cid) == {"blocks.example": 2}
    assert deliveries.release_held(db.engine, other) == 0
    assert deliveries.release_held(db.engine, cid) == 2
    assert [(d.status, d.error, d.next_attempt_at) for d in _rows(db, cid)] == [
        ("sent", "", None)
    ] + [("pending", "", None)] * 6
    # Released rows are due at once.
    again = deliveries.claim(db.engine, cid, "w", 10, now=T + SEC)
    assert len(again.ready) == 6
