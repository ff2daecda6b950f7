"""campaigns.deliveries: the eligibility re-check in claims, and claims shared by workers.

DESIGN.md §2: eligibility is checked when the audience is built and again for each
recipient just before the message goes. §4: on PostgreSQL several workers share one
campaign, claiming with FOR UPDATE SKIP LOCKED.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, event, make_url
from sqlmodel import Session, select

from campaigns import campaign as store
from campaigns import consent, deliveries, suppression
from campaigns.db import make_engine
from campaigns.models import Contact, Delivery
from campaigns.purposes import Kind, Purpose, SuppressionReason
from tests.conftest import Db


def _people(db: Db, n: int) -> list[Contact]:
    """`n` contacts who granted promotional mail (by a confirmed signup)."""
    out = []
    with db.session() as s:
        for i in range(n):
            email = f"reader{i}@example.com"
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
