"""The send engine against a real SMTP server (aiosmtpd, in-process) and real databases."""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import random
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import text, update
from sqlmodel import Session, select

import mailer.engine as engine_module
from campaigns import campaign as store
from campaigns import consent, deliveries, segments, suppression
from campaigns.models import Contact, Delivery, Suppression
from campaigns.purposes import Kind, Purpose
from campaigns.segments import Segment
from mailer.schedule import send_now
from mailer.tokens import TokenKind, signer_from_settings
from mailer.transport import SmtpConnection
from tests.campaigns.test_deliveries import CHANGES as BECOME_INELIGIBLE
from tests.conftest import Db
from tests.mailer.conftest import Inbox, add_people, free_port, new_campaign, smtp_settings
from tests.mailer.smtp_server import FaultyHandler, run_smtp_server

# DESIGN.md §2, written out here rather than taken from the product (Kind.purpose,
# consent.permission_for), so that a wrong map in the product fails these tests.
KIND_TO_PURPOSE = {
    "promotional": "promotional",
    "survey": "research",
    "third_party_offer": "third_party",
}


def eligible(people: list[Contact], states: list[dict[Purpose, str]], purpose: str) -> set[str]:
    """Who may get mail of `purpose`, from the states add_people was given: granted for
    that purpose, and no purpose marked "suppressed" (add_people suppresses the address)."""
    return {
        person.email
        for person, state in zip(people, states, strict=True)
        if {p.value: v for p, v in state.items()}.get(purpose) == "granted"
        and "suppressed" not in state.values()
    }


STATE = st.sampled_from(["granted", "withdrawn", "none", "suppressed"])
P, R, T = Purpose.PROMOTIONAL, Purpose.RESEARCH, Purpose.THIRD_PARTY


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(states=st.lists(st.fixed_dictionaries({p: STATE for p in Purpose}), max_size=12))
@example(
    # One person per purpose, so that sending a kind to the wrong purpose shows.
    states=[
        {P: "granted", R: "none", T: "none"},
        {P: "none", R: "granted", T: "withdrawn"},
        {P: "withdrawn", R: "none", T: "granted"},
        {P: "granted", R: "granted", T: "granted"},
        {P: "suppressed", R: "granted", T: "granted"},
    ]
)
def test_each_kind_reaches_exactly_its_eligible_contacts(
    db: Db, inbox: tuple[Inbox, int], states: list[dict[Purpose, str]]
) -> None:
    db.clean()
    handler, port = inbox
    conf = smtp_settings(db.settings, port)
    signer = signer_from_settings(conf)
    people = add_people(db, states)
    for kind, purpose in KIND_TO_PURPOSE.items():
        handler.received.clear()
        cid = new_campaign(db, Kind(kind), name=kind)
        report = send_now(conf, db.engine, kind)
        want = eligible(people, states, purpose)
        got = handler.counts()
        assert set(got) == want and all(n == 1 for n in got.values())
        assert report.finished and report.sent == len(want)
        with db.session() as s:
            by_email = {c.email: c.id for c in s.exec(select(Contact))}
        for _from, rcpt, data in handler.received:
            msg = email.parser.BytesParser(policy=email.policy.default).parsebytes(data)
            assert not msg.defects
            for header in ("Message-ID", "Date", "List-Id", "List-Unsubscribe-Post", "From"):
                assert msg[header], header
            assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
            url = str(msg["List-Unsubscribe"]).strip("<>").split(">")[0]
            token = url.rsplit("/u/", 1)[1]
            assert signer.verify(TokenKind.UNSUBSCRIBE, token) == (by_email[rcpt], cid)
            assert msg.get_content_type() == "multipart/alternative"


def test_withdrawal_mid_send_stops_that_message(db: Db, inbox: tuple[Inbox, int]) -> None:
    handler, port = inbox
    people = add_people(db, [{Purpose.PROMOTIONAL: "granted"}] * 6)
    last = people[-1]

    def withdraw_last(rcpt: str) -> None:
        if len(handler.received) == 1:
            with db.session() as s:
                c = s.get(Contact, last.id)
                consent.record(
                    s,
                    c,
                    Purpose.PROMOTIONAL,
                    granted=False,
                    source="one-click",
                    policy_version="1",
                )
                s.commit()

    handler.on_data = withdraw_last
    new_campaign(db, Kind.PROMOTIONAL)
    conf = smtp_settings(db.settings, port, smtp_connections=1)
    from mailer.engine import SendEngine

    engine = SendEngine(conf, db.engine, claim_size=1)
    with db.session() as s:
        cid = store.get(s, "c").id
    from campaigns import deliveries

    deliveries.start(db.engine, cid)
    report = engine.run_campaign(cid)
    assert last.email not in handler.counts()
    assert len(handler.received) == 5 and report.skipped == 1 and report.finished
    with db.session() as s:
        row = s.exec(select(Delivery).where(Delivery.contact_id == last.id)).one()
        assert row.status == "skipped" and "withdrawn" in row.error


def test_faults_everyone_gets_exactly_one_and_550s_are_suppressed(
    db: Db, inbox: tuple[Inbox, int]
) -> None:
    handler, port = inbox
    people = add_people(db, [{Purpose.PROMOTIONAL: "granted"}] * 40)
    refused = {p.email for p in people[:4]}
    rnd = random.Random(1234)
    lock = threading.Lock()

    def fault(stage: str, rcpt: str) -> str | None:
        if stage == "rcpt" and rcpt in refused:
            return "550 5.1.1 no such user"
        with lock:
            roll = rnd.random()
        if roll < 0.08:
            return rnd.choice(["421 4.3.2 shutting down", "451 4.3.0 try later", "454 4.7.0 TLS"])
        if roll < 0.12 and stage == "rcpt":
            return "drop"  # dropped before the message went: safe to retry
        if stage == "data" and roll < 0.16:
            return "drop-after"
        return None

    handler.fault = fault
    new_campaign(db, Kind.PROMOTIONAL)
    conf = smtp_settings(db.settings, port, smtp_connections=3, max_attempts=30)
    report = send_now(conf, db.engine, "c")
    got = handler.counts()
    assert report.finished
    assert not refused & set(got)
    assert set(got) == {p.email for p in people} - refused
    assert all(n == 1 for n in got.values())
    with db.session() as s:
        statuses = Counter(d.status for d in s.exec(select(Delivery)))
        assert statuses["failed"] == len(refused)
        assert statuses["sent"] + statuses["in_doubt"] == len(people) - len(refused)
        assert len(s.exec(select(Suppression)).all()) == len(refused)
        for p in people[:4]:
            assert s.get(Contact, p.id).suppressed == "hard_bounce"


def test_a_drop_after_the_whole_message_is_in_doubt_and_never_resent(
    db: Db, inbox: tuple[Inbox, int]
) -> None:
    handler, port = inbox
    people = add_people(db, [{Purpose.PROMOTIONAL: "granted"}] * 3)
    target = people[1].email
    handler.fault = lambda stage, rcpt: "drop" if stage == "data" and rcpt == target else None
    new_campaign(db, Kind.PROMOTIONAL)
    report = send_now(smtp_settings(db.settings, port, smtp_connections=1), db.engine, "c")
    # The server saw the whole message and closed without answering: nobody can know
    # whether it was accepted, so it is reported and not sent again.
    assert report.in_doubt == 1 and report.finished
    assert set(handler.counts()) == {people[0].email, people[2].email}
    with db.session() as s:
        row = s.exec(select(Delivery).where(Delivery.contact_id == people[1].id)).one()
        assert row.status == "in_doubt"


def test_pause_mid_send_stops_then_send_goes_on_without_duplicates(
    db: Db, inbox: tuple[Inbox, int]
) -> None:
    from mailer.schedule import send_due

    handler, port = inbox
    people = add_people(db, [{Purpose.PROMOTIONAL: "granted"}] * 40)

    def pause_after_three(rcpt: str) -> None:
        if len(handler.received) == 3:
            with db.session() as s:
                store.pause(s, "c")
                s.commit()

    handler.on_data = pause_after_three
    new_campaign(db, Kind.PROMOTIONAL)
    # At 20/s the engine claims 10 at a time: what was claimed before the pause still goes.
    conf = smtp_settings(db.settings, port, smtp_connections=1, send_rate=20)
    report = send_now(conf, db.engine, "c")
    assert report.stopped == "campaign paused" and not report.finished
    got = len(handler.received)
    assert 3 <= got <= 3 + 2 * 10 + 1
    with db.session() as s:
        assert store.get(s, "c").status == "paused"
        assert store.counts(s, store.get(s, "c").id or 0).pending == 40 - got
    # cron leaves a paused campaign alone ...
    handler.on_data = lambda rcpt: None
    send_due(conf, db.engine)
    assert len(handler.received) == got
    # ... and sending it again goes on with the rest: everyone once, nobody twice.
    again = send_now(conf, db.engine, "c")
    assert again.finished
    assert handler.counts() == Counter(p.email for p in people)
    with db.session() as s:
        assert store.get(s, "c").status == "sent"
        with_errors = [store.pause, store.resume]
        for change in with_errors:
            try:
                change(s, "c")
            except store.CampaignError as exc:
                assert "is sent" in str(exc)
            else:
                raise AssertionError(f"{change.__name__} accepted a sent campaign")


def test_a_claim_carries_each_contacts_attributes(db: Db) -> None:
    from campaigns import deliveries

    people = add_people(db, [{Purpose.PROMOTIONAL: "granted"}] * 3)
    with db.session() as s:
        c = s.get(Contact, people[1].id)
        c.attributes = {"plan": "gold", "city": "Köln"}
        s.add(c)
        s.commit()
    cid = new_campaign(db, Kind.PROMOTIONAL)
    deliveries.start(db.engine, cid)
    got = deliveries.claim(db.engine, cid, "w", 10)
    by_contact = {c.contact_id: c.attributes for c in got.ready}
    assert by_contact == {
        people[0].id: {},
        people[1].id: {"plan": "gold", "city": "Köln"},
        people[2].id: {},
    }


def test_sqlite_checkpoints_in_a_thread_keep_the_send_whole_and_give_the_setting_back(
    db: Db, inbox: tuple[Inbox, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    if db.engine.dialect.name != "sqlite":
        pytest.skip("WAL checkpoints are SQLite's")
    import mailer.engine

    # A checkpoint after every commit, so this short send makes several.
    monkeypatch.setattr(mailer.engine, "_CHECKPOINT_EVERY", 1)
    handler, port = inbox
    people = add_people(db, [{Purpose.PROMOTIONAL: "granted"}] * 30)
    new_campaign(db, Kind.PROMOTIONAL)
    report = send_now(smtp_settings(db.settings, port, smtp_connections=2), db.engine, "c")
    assert report.sent == len(people) and report.finished
    assert sorted(handler.counts().values()) == [1] * len(people)
    with db.engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        assert raw is not None
        # The committer's connection is back in the pool checkpointing by itself again.
        assert raw.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000


class _Boom(RuntimeError):
    pass


def _in_thread(fn: Callable[[], object]) -> tuple[bool, list[object]]:
    """Run `fn` in a thread for at most 10 s: (still running, [its result or error])."""
    out: list[object] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(10)
    return thread.is_alive(), out


def _slow_outcome_commits(monkeypatch: pytest.MonkeyPatch, after: int) -> None:
    """Commits that record `sent` marks take 0.3 s each after the first `after`."""
    real, seen = engine_module._db_call, [0]

    async def db_call(fn: Any, bind: Any, *args: Any) -> Any:
        batch = next((a for a in args if isinstance(a, deliveries.Progress)), None)
        if fn is deliveries.commit_progress and batch is not None and batch.sent:
            seen[0] += 1
            if seen[0] > after:
                await asyncio.sleep(0.3)
        return await real(fn, bind, *args)

    monkeypatch.setattr(engine_module, "_db_call", db_call)


def test_a_connection_dying_after_the_stop_signs_does_not_hang_the_run(
    db: Db, inbox: tuple[Inbox, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run that breaks empties the queue, stop signs included: the other connections
    must be stopped too, not left waiting for a sign (found in review)."""
    _, port = inbox
    people = add_people(db, [{Purpose.PROMOTIONAL: "granted"}] * 2)
    new_campaign(db, Kind.PROMOTIONAL)
    first, second = people[0].email, people[1].email
    conf = smtp_settings(db.settings, port, smtp_connections=2)

    class Conn(SmtpConnection):
        sent_first = False

        async def send(self, envelope_from: str, recipient: str, data: bytes, **kw: Any) -> Any:
            if recipient == second:
                await asyncio.sleep(0.1)
            if recipient == first:
                self.sent_first = True
            return await super().send(envelope_from, recipient, data, **kw)

        async def close(self) -> None:
            await super().close()
            if self.sent_first:
                await asyncio.sleep(0.05)
                raise _Boom("close failed")

    monkeypatch.setattr(engine_module.SendEngine, "_new_connection", lambda self: Conn(self.url))
    _slow_outcome_commits(monkeypatch, after=1)
    hung, out = _in_thread(lambda: send_now(conf, db.engine, "c"))
    assert not hung, "the run hung"
    assert isinstance(out[0], _Boom), out


def test_a_progress_callback_raising_on_the_last_commit_does_not_hang_the_run(
    db: Db, inbox: tuple[Inbox, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    handler, port = inbox
    add_people(db, [{Purpose.PROMOTIONAL: "granted"}])
    new_campaign(db, Kind.PROMOTIONAL)
    conf = smtp_settings(db.settings, port, smtp_connections=2)
    _slow_outcome_commits(monkeypatch, after=0)

    def progress(report: Any) -> None:
        if report.sent:
            raise _Boom("the screen went away")

    hung, out = _in_thread(lambda: send_now(conf, db.engine, "c", progress=progress))
    assert not hung, "the run hung"
    assert isinstance(out[0], _Boom), out
    assert len(handler.received) == 1
    with db.session() as s:  # the mark that was committed stays
        assert [d.status for d in s.exec(select(Delivery))] == ["sent"]


def _limited_server(limit: int) -> tuple[Inbox, int, Controller]:
    """A started SMTP server that, like many relays, takes only `limit` connections per
    client: the ones beyond get a 421 greeting and are closed."""

    class Limited(SMTP):
        open = 0

        def connection_made(self, transport: Any) -> None:
            self.refused = Limited.open >= limit
            if self.refused:
                transport.write(b"421 4.7.0 too many connections from your host\r\n")
                transport.close()
                return
            Limited.open += 1
            super().connection_made(transport)

        def connection_lost(self, error: Exception | None) -> None:
            if self.refused:
                return
            Limited.open -= 1
            super().connection_lost(error)

    class LimitedController(Controller):
        def factory(self) -> SMTP:
            return Limited(self.handler, **self.SMTP_kwargs)

    handler, port = Inbox(), free_port()
    controller = LimitedController(handler, hostname="127.0.0.1", port=port)
    controller.start()
    return handler, port, controller


def test_a_server_taking_fewer_connections_than_configured_gets_everyone_once(
    db: Db, caplog: pytest.LogCaptureFixture
) -> None:
    """A refused extra connection is not the message's fault: no attempt is counted
    (with max_attempts 2 messages used to fail "gave up"), the connection stands down
    and the others send everything."""
    handler, port, controller = _limited_server(3)
    try:
        people = add_people(db, [{Purpose.PROMOTIONAL: "granted"}] * 40)
        new_campaign(db, Kind.PROMOTIONAL)
        conf = smtp_settings(db.settings, port, smtp_connections=8, max_attempts=2)
        report = send_now(conf, db.engine, "c")
    finally:
        controller.stop()
    assert report.finished and report.failed == 0, report
    assert handler.counts() == Counter({p.email: 1 for p in people})
    with db.session() as s:
        rows = s.exec(select(Delivery)).all()
    assert {d.status for d in rows} == {"sent"}
    assert all(d.attempts == 0 for d in rows)
    assert "refused a connection while" in caplog.text


@pytest.mark.parametrize("people", [3, 5, 8])
def test_messages_refused_at_the_end_of_a_run_are_sent_in_that_run(db: Db, people: int) -> None:
    """A requeued message is committed before its connection counts it done, so the
    claimer waiting for the last outcomes finds it pending (found in review)."""
    handler, port, controller = _limited_server(2)
    try:
        everyone = add_people(db, [{Purpose.PROMOTIONAL: "granted"}] * people)
        new_campaign(db, Kind.PROMOTIONAL)
        conf = smtp_settings(db.settings, port, smtp_connections=8)
        hung, out = _in_thread(lambda: send_now(conf, db.engine, "c"))
    finally:
        controller.stop()
    assert not hung, "the run hung"
    assert getattr(out[0], "finished", False), out
    assert handler.counts() == Counter({p.email: 1 for p in everyone})


def test_more_refused_connections_than_a_paced_queue_holds_do_not_hang_the_end(db: Db) -> None:
    """send_rate 4 keeps the queue at 2 messages; 7 of 8 connections stand down and take
    no stop sign, so signs for them would fill the queue for good (found in review)."""
    handler, port, controller = _limited_server(1)
    try:
        everyone = add_people(db, [{Purpose.PROMOTIONAL: "granted"}] * 6)
        new_campaign(db, Kind.PROMOTIONAL)
        conf = smtp_settings(db.settings, port, smtp_connections=8, send_rate=4)
        hung, out = _in_thread(lambda: send_now(conf, db.engine, "c"))
    finally:
        controller.stop()
    assert not hung, f"the run hung; received {handler.counts()}"
    assert getattr(out[0], "finished", False), out
    assert handler.counts() == Counter({p.email: 1 for p in everyone})


def test_a_server_that_is_down_is_retried_and_given_up_on_not_waited_for(db: Db) -> None:
    """Every connection failing at once (nothing listens) is a server that is down,
    not a connection limit: attempts count and the run ends (it used to hang, found in
    review, when the failing connections waited for each other)."""
    add_people(db, [{Purpose.PROMOTIONAL: "granted"}] * 4)
    new_campaign(db, Kind.PROMOTIONAL)
    conf = smtp_settings(db.settings, free_port(), smtp_connections=2, max_attempts=2)
    hung, out = _in_thread(lambda: send_now(conf, db.engine, "c"))
    assert not hung, "the run hung"
    assert getattr(out[0], "failed", 0) == 4, out
    with db.session() as s:
        assert {d.status for d in s.exec(select(Delivery))} == {"failed"}


def test_a_server_going_down_mid_run_does_not_hang_it(db: Db) -> None:
    handler, port = Inbox(), free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    seen = [0]

    def on_data(rcpt: str) -> None:
        seen[0] += 1
        if seen[0] == 10:
            threading.Thread(target=controller.stop, daemon=True).start()

    handler.on_data = on_data
    controller.start()
    add_people(db, [{Purpose.PROMOTIONAL: "granted"}] * 60)
    new_campaign(db, Kind.PROMOTIONAL)
    conf = smtp_settings(db.settings, port, smtp_connections=4, max_attempts=2)
    hung, _ = _in_thread(lambda: send_now(conf, db.engine, "c"))
    assert not hung, f"the run hung after {seen[0]} messages"
    assert max(handler.counts().values()) == 1


def test_a_run_that_breaks_half_way_stops_at_once_and_the_next_run_misses_nobody(
    db: Db, inbox: tuple[Inbox, int]
) -> None:
    """The committer dying (here: the progress callback it calls raises) used to leave
    every connection waiting for its marks for ever, and the send-due lock held."""
    handler, port = inbox
    people = add_people(db, [{Purpose.PROMOTIONAL: "granted"}] * 60)
    new_campaign(db, Kind.PROMOTIONAL)
    conf = smtp_settings(db.settings, port, smtp_connections=4)
    calls: list[int] = []

    def breaks(report: object) -> None:
        calls.append(1)
        if len(calls) == 5:
            raise _Boom("the screen went away")

    outcome: list[BaseException | object] = []

    def run() -> None:
        try:
            outcome.append(send_now(conf, db.engine, "c", progress=breaks))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(30)
    assert not thread.is_alive(), "the run hung after its committer died"
    assert isinstance(outcome[0], _Boom), outcome
    first = len(handler.received)
    assert first < len(people)

    again = send_now(conf, db.engine, "c")
    assert again.finished
    got = handler.counts()
    assert max(got.values()) == 1  # nobody twice
    # Messages whose connection was stopped while sending them are in doubt (they may or
    # may not have arrived) and are never resent; everyone else got theirs.
    with db.session() as s:
        in_doubt = s.exec(select(Delivery).where(Delivery.status == "in_doubt")).all()
        doubtful = {s.get(Contact, d.contact_id).email for d in in_doubt}  # type: ignore[union-attr]
    assert {p.email for p in people} - doubtful <= set(got)
    assert len(in_doubt) <= conf.smtp_connections


# ------------------------------------------------------------------ eligibility at send time


# The same three changes as the claim-level test: a bounce, a withdrawal, an erasure.
INELIGIBLE = BECOME_INELIGIBLE


@pytest.mark.parametrize("when", ["after-snapshot", "mid-send"])
@pytest.mark.parametrize("change", list(INELIGIBLE))
def test_a_person_who_becomes_ineligible_during_a_send_gets_no_message(
    db: Db, inbox: tuple[Inbox, int], change: str, when: str
) -> None:
    """DESIGN.md §2: eligibility is checked again just before the message is handed to
    SMTP. The person bounces (from another campaign), says no, or is erased after the
    audience was snapshotted: before the run, or while it sends to the others."""
    handler, port = inbox
    people = add_people(db, [{Purpose.PROMOTIONAL: "granted"}] * 8)
    target = people[-1]
    cid = new_campaign(db, Kind.PROMOTIONAL)
    deliveries.start(db.engine, cid)
    with db.session() as s:
        target_delivery = s.exec(select(Delivery.id).where(Delivery.contact_id == target.id)).one()

    def make_ineligible() -> None:
        with db.session() as s:
            INELIGIBLE[change](s, target)
            s.commit()

    if when == "after-snapshot":
        make_ineligible()
    else:
        # After the first message: one connection and claims of one keep the last
        # person's claim several messages away.
        handler.on_data = lambda rcpt: make_ineligible() if len(handler.received) == 1 else None
    conf = smtp_settings(db.settings, port, smtp_connections=1)
    report = engine_module.SendEngine(conf, db.engine, claim_size=1).run_campaign(cid)

    assert handler.counts() == Counter({p.email: 1 for p in people[:-1]})
    assert report.finished and report.sent == 7 and report.skipped == 1
    with db.session() as s:
        row = s.get(Delivery, target_delivery)
        assert row is not None and row.status == "skipped" and row.sent_at is None


def test_a_5xx_at_data_fails_the_message_but_never_suppresses_the_address(db: Db) -> None:
    """DESIGN.md §4: a 5xx is a permanent failure of the message; only an *address*
    reason (user unknown, 5.1.1) suppresses. Content rejected as spam at the end of DATA
    says nothing about the person, who stays eligible for the next campaign."""
    people = add_people(db, [{Purpose.PROMOTIONAL: "granted"}] * 3)
    spam, unknown, fine = people
    handler = FaultyHandler(
        rcpt={unknown.email: "550 5.1.1 user unknown"},
        data={spam.email: ["554 5.7.1 message rejected as spam"]},  # the first time only
    )
    with run_smtp_server(handler) as server:
        conf = smtp_settings(db.settings, server.port, smtp_connections=1)
        new_campaign(db, Kind.PROMOTIONAL, name="first")
        report = send_now(conf, db.engine, "first")
        assert handler.recipients() == [fine.email]
        assert report.finished and report.sent == 1 and report.failed == 2
        with db.session() as s:
            rows = {d.contact_id: d for d in s.exec(select(Delivery))}
            assert (rows[spam.id].status, rows[spam.id].attempts) == ("failed", 1)
            assert "554" in rows[spam.id].error
            assert rows[unknown.id].status == "failed"
            # One suppression, the unknown user's; the spam refusal made none.
            assert [r.reason for r in s.exec(select(Suppression))] == ["hard_bounce"]
            assert suppression.suppression_of(s, unknown.email) == "hard_bounce"
            assert suppression.suppression_of(s, spam.email) is None
            assert s.get(Contact, spam.id).suppressed is None  # type: ignore[union-attr]
            # `campaigns contacts count --purpose promotional`: the spam one still counts.
            assert segments.count(s, Segment(purpose=Purpose.PROMOTIONAL)) == 2

        new_campaign(db, Kind.PROMOTIONAL, name="second")
        again = send_now(conf, db.engine, "second")
    assert again.finished and again.sent == 2
    assert Counter(handler.recipients()) == Counter({fine.email: 2, spam.email: 1})


def test_each_delivery_names_the_grant_event_of_its_campaigns_purpose(
    db: Db, inbox: tuple[Inbox, int]
) -> None:
    """Proof of consent (DESIGN.md §2): a sent message's delivery row holds the id of the
    event that granted the campaign's purpose, never another purpose's."""
    handler, port = inbox
    # Contacts granting purposes in different orders (and one who withdrew and granted
    # again), so that each person's three grant ids differ and are not in purpose order.
    # "+purpose" is a grant (a confirmed signup), "-purpose" the person's one-click "no".
    histories = [
        ["+promotional", "+research", "+third_party"],
        ["+third_party", "+research", "+promotional"],
        ["+promotional", "-promotional", "+research", "+third_party", "+promotional"],
        ["+research", "+promotional"],  # no third-party offers
        ["+third_party", "+promotional", "+research", "-research", "+research"],
    ]
    people: list[Contact] = []
    with db.session() as s:
        for i in range(len(histories)):
            email = f"proof{i}@example.com"
            c = Contact(email=email, email_key=email, name=f"Proof {i}")
            s.add(c)
            s.flush()
            people.append(c)
        # Interleaved: event ids of one person are not consecutive.
        for step in range(max(len(h) for h in histories)):
            for c, history in zip(people, histories, strict=True):
                if step < len(history):
                    granted, purpose = history[step][0] == "+", history[step][1:]
                    source = "form:signup" if granted else "one-click"
                    assert consent.record(
                        s, c, Purpose(purpose), granted=granted, source=source, policy_version="1"
                    )
        s.commit()

    def grant_event(s: Session, contact_id: int, purpose: str) -> int | None:
        return s.execute(
            text(
                "SELECT max(id) FROM consent_events"
                " WHERE contact_id = :c AND purpose = :p AND granted = :g"
            ),
            {"c": contact_id, "p": purpose, "g": True},
        ).scalar()

    with db.session() as s:
        for c in people:
            grants = [grant_event(s, c.id, p) for p in KIND_TO_PURPOSE.values()]
            present = [g for g in grants if g is not None]
            assert len(set(present)) == len(present)

    conf = smtp_settings(db.settings, port, smtp_connections=2)
    for kind, purpose in KIND_TO_PURPOSE.items():
        cid = new_campaign(db, Kind(kind), name=kind)
        handler.received.clear()
        report = send_now(conf, db.engine, kind)
        assert report.finished
        with db.session() as s:
            rows = s.exec(select(Delivery).where(Delivery.campaign_id == cid)).all()
            assert {d.status for d in rows} == {"sent"}
            proof = {d.contact_id: d.consent_event_id for d in rows}
            want = {
                c.id: grant_event(s, c.id, purpose)
                for c in people
                if grant_event(s, c.id, purpose) is not None
            }
        assert proof == want, kind
        assert set(handler.counts()) == {c.email for c in people if c.id in want}


# ------------------------------------------------------------------ retries


def test_retries_back_off_exponentially_up_to_an_hour_then_give_up(db: Db) -> None:
    """A 4xx is retried after retry_delay, then twice that, then four times ...
    (deliveries.backoff), never more than an hour apart; after max_attempts it fails.
    retry_wait 0: every run stops at once and leaves the retry to a later run."""
    people = add_people(db, [{Purpose.PROMOTIONAL: "granted"}] * 2)
    slow, fine = people
    handler = FaultyHandler(rcpt={slow.email: "451 4.3.0 try again later"})
    new_campaign(db, Kind.PROMOTIONAL)

    def delivery() -> Delivery:
        with db.session() as s:
            return s.exec(select(Delivery).where(Delivery.contact_id == slow.id)).one()

    def set_row(**values: Any) -> None:
        with db.engine.begin() as conn:
            conn.execute(update(Delivery).where(Delivery.contact_id == slow.id).values(**values))

    with run_smtp_server(handler) as server:
        conf = replace(
            smtp_settings(db.settings, server.port, smtp_connections=1, max_attempts=8),
            retry_delay=100,
            retry_wait=0,
        )

        def run_expecting_retry(attempts: int, delay: float) -> None:
            before = datetime.now(UTC)
            report = send_now(conf, db.engine, "c")
            after = datetime.now(UTC)
            assert report.stopped.startswith("retries wait until") and not report.finished
            row = delivery()
            assert (row.status, row.attempts) == ("pending", attempts)
            assert row.next_attempt_at is not None
            waits = (row.next_attempt_at - before, row.next_attempt_at - after)
            assert before + timedelta(seconds=delay) <= row.next_attempt_at, waits
            assert row.next_attempt_at <= after + timedelta(seconds=delay), waits
            # The retry is due now (as if the wait had passed) for the next run.
            set_row(next_attempt_at=datetime.now(UTC) - timedelta(seconds=1))

        run_expecting_retry(attempts=1, delay=100)
        assert handler.recipients() == [fine.email]
        run_expecting_retry(attempts=2, delay=200)
        run_expecting_retry(attempts=3, delay=400)
        set_row(attempts=5)  # as after more failures
        run_expecting_retry(attempts=6, delay=3200)
        run_expecting_retry(attempts=7, delay=3600)  # not 6400: capped at an hour
        # The 8th failure is the last (max_attempts 8): failed, the campaign done.
        report = send_now(conf, db.engine, "c")
    assert report.finished
    row = delivery()
    assert (row.status, row.attempts) == ("failed", 8)
    assert "451" in row.error
    assert handler.recipients() == [fine.email]
    with db.session() as s:
        assert suppression.suppression_of(s, slow.email) is None
