"""The send engine against a real SMTP server (aiosmtpd, in-process) and real databases."""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import random
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlmodel import select

import mailer.engine as engine_module
from campaigns import campaign as store
from campaigns import consent, deliveries
from campaigns.models import Contact, Delivery, Suppression
from campaigns.purposes import Kind, Purpose
from mailer.schedule import send_now
from mailer.tokens import TokenKind, signer_from_settings
from mailer.transport import SmtpConnection
from tests.conftest import Db
from tests.mailer.conftest import Inbox, add_people, free_port, new_campaign, smtp_settings


def eligible(db: Db, purpose: Purpose) -> set[str]:
    with db.session() as s:
        return {
            c.email for c in s.exec(select(Contact)) if consent.permission_for(c, purpose).allowed
        }


STATE = st.sampled_from(["granted", "withdrawn", "none", "suppressed"])


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(states=st.lists(st.fixed_dictionaries({p: STATE for p in Purpose}), max_size=12))
def test_each_kind_reaches_exactly_its_eligible_contacts(
    db: Db, inbox: tuple[Inbox, int], states: list[dict[Purpose, str]]
) -> None:
    db.clean()
    handler, port = inbox
    conf = smtp_settings(db.settings, port)
    signer = signer_from_settings(conf)
    add_people(db, states)
    for kind in Kind:
        handler.received.clear()
        cid = new_campaign(db, kind, name=kind.value)
        report = send_now(conf, db.engine, kind.value)
        want = eligible(db, kind.purpose)
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
        if fn is deliveries.commit_progress and args[-1].sent:
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
