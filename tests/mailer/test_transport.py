"""Transports against real servers: aiosmtpd in a thread, and a scripted raw server."""

from __future__ import annotations

import asyncio
import email
import email.policy
import itertools
import mailbox
import ssl
import stat
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailer.transport import (
    ConnectionLost,
    MaildirTransport,
    PermanentError,
    RateLimiter,
    SendOutcome,
    SmtpConnection,
    SmtpUrl,
    TransientError,
    TransportConfigError,
    TransportError,
    parse_smtp_url,
)
from tests.mailer.smtp_server import (
    ACCEPT_THEN_DROP,
    DROP,
    FaultyHandler,
    RawSmtpServer,
    RecordingHandler,
    TlsFiles,
    make_tls_files,
    run_smtp_server,
)

T = TypeVar("T")

FROM = "bounces+abc@example.com"
MESSAGE = b"From: Shop <shop@example.com>\r\nTo: <a@example.org>\r\nSubject: Hi\r\n\r\nHello!\r\n"


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def message(n: int, body: bytes = b"Hello!\r\n") -> bytes:
    return f"Subject: message {n}\r\nMessage-ID: <{n}@example.com>\r\n\r\n".encode() + body


async def connected(url: str, **kwargs: Any) -> SmtpConnection:
    conn = SmtpConnection(parse_smtp_url(url), local_hostname="client.example.com", **kwargs)
    await conn.connect()
    return conn


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


# ------------------------------------------------------------------ URLs


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "smtp://user:pass@mail.example.com:587?tls=starttls",
            SmtpUrl("smtp", "mail.example.com", 587, "user", "pass", "starttls"),
        ),
        ("smtps://mail.example.com:465", SmtpUrl("smtps", "mail.example.com", 465, tls="implicit")),
        ("smtps://Mail.Example.COM", SmtpUrl("smtps", "mail.example.com", 465, tls="implicit")),
        ("smtp://127.0.0.1:2525", SmtpUrl("smtp", "127.0.0.1", 2525)),
        ("smtp://relay.local", SmtpUrl("smtp", "relay.local", 25)),
        ("smtp://[::1]:2525/", SmtpUrl("smtp", "::1", 2525)),
        ("SMTP://relay.local?tls=implicit", SmtpUrl("smtp", "relay.local", 465, tls="implicit")),
        (
            "smtp://me%40example.com:p%40ss%3Aw%2Ford@h:587?tls=starttls",
            SmtpUrl("smtp", "h", 587, "me@example.com", "p@ss:w/ord", "starttls"),
        ),
        ("smtp://u:@h", SmtpUrl("smtp", "h", 25, "u", "")),
        (
            "smtp://h:25?verify=false&timeout=2.5",
            SmtpUrl("smtp", "h", 25, verify=False, timeout=2.5),
        ),
        ("  smtp://h:25?TLS=NONE  ", SmtpUrl("smtp", "h", 25)),
        ("smtp://bücher.example:25", SmtpUrl("smtp", "xn--bcher-kva.example", 25)),
        ("maildir:///var/mail/out", SmtpUrl("maildir", path="/var/mail/out")),
        ("maildir:///var/mail/my%20out", SmtpUrl("maildir", path="/var/mail/my out")),
        ("maildir://relative/dir", SmtpUrl("maildir", path="relative/dir")),
    ],
)
def test_parse_good_urls(url: str, expected: SmtpUrl) -> None:
    assert parse_smtp_url(url) == expected


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("", "empty"),
        ("mail.example.com:25", "scheme"),
        ("http://example.com", "unsupported scheme"),
        ("smtp://", "host"),
        ("smtp://h:0", "port"),
        ("smtp://h:99999", "port"),
        ("smtp://h:abc", "port"),
        ("smtp://h?tls=startls", "tls must be"),
        ("smtps://h?tls=starttls", "implicit"),
        ("smtp://h?verify=maybe", "verify"),
        ("smtp://h?timeout=-1", "timeout"),
        ("smtp://h?timeout=nan", "timeout"),
        ("smtp://h?tsl=none", "unknown query"),
        ("smtp://h?tls=none&tls=starttls", "twice"),
        ("smtp://h/path", "no path"),
        ("smtp://h#frag", "fragment"),
        ("smtp://user@h", "no password"),
        ("smtp://:secret@h", "no user"),
        ("smtp://h_ost!:25", "host"),
        ("smtp://[::1:25", "cannot be parsed"),
        ("smtp://h\n:25", "control"),
        ("maildir://", "directory"),
        ("maildir:///x?tls=none", "query"),
    ],
)
def test_parse_bad_urls(url: str, words: str) -> None:
    with pytest.raises(TransportConfigError) as info:
        parse_smtp_url(url)
    text = str(info.value)
    assert words in text
    assert "\n" not in text
    assert isinstance(info.value, ValueError)


def test_password_never_shown() -> None:
    url = parse_smtp_url("smtp://alice:s3cr3t-pw@h:587?tls=starttls")
    for text in (repr(url), url.redacted(), repr(SmtpConnection(url))):
        assert "s3cr3t-pw" not in text
    assert url.redacted() == "smtp://alice:***@h:587?tls=starttls"
    with pytest.raises(TransportConfigError) as info:
        parse_smtp_url("smtp://alice:s3cr3t-pw@h:587?tls=bogus")
    assert "s3cr3t-pw" not in str(info.value)


_url_parts = st.builds(
    lambda scheme, user, host, port, query: f"{scheme}://{user}{host}{port}{query}",
    st.sampled_from(["smtp", "smtps", "maildir", "SMTP", "http", "", "smtp:"]),
    st.sampled_from(["", "u:p@", "u@", ":p@", "%ff:%zz@", "a:b:c@", "@"]) | st.text(max_size=8),
    st.sampled_from(["h", "127.0.0.1", "[::1]", "[::1", "", "-h", "h..x"]) | st.text(max_size=10),
    st.sampled_from(["", ":25", ":0", ":-1", ":99999", ":x", ":"]) | st.text(max_size=5),
    st.sampled_from(["", "?tls=starttls", "?verify=no", "?timeout=1e9", "?a=b", "?tls"])
    | st.text(max_size=12),
)


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=60) | _url_parts)
def test_parse_never_fails_otherwise(url: str) -> None:
    try:
        parsed = parse_smtp_url(url)
    except TransportConfigError as exc:
        assert str(exc).startswith("SMTP URL: ")
        return
    assert parsed.scheme in ("smtp", "smtps", "maildir")
    if parsed.scheme != "maildir":
        assert parsed.host and 0 < parsed.port < 65536
        assert parsed.tls in ("none", "starttls", "implicit")


# ------------------------------------------------------------------ plain SMTP


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "stepwise"])
def test_plain_send_reuses_connection_and_keeps_bytes(pipelining: bool) -> None:
    tricky = [
        message(1),
        # Lines starting with ".", a lone "." line, and ".." must survive dot-stuffing.
        b".leading dot header-ish\r\nSubject: dots\r\n\r\n.\r\n..\r\n.x\r\nend\r\n",
        message(3, b"no final line break"),  # the client adds CRLF
        message(4, "Grüße, 8-bit body ✓\r\n".encode()),
        message(5, b"x" * 70 + b"\r\n.\r\n" * 4000),  # 300 KB: written in pieces
    ]
    handler = RecordingHandler()

    async def go() -> tuple[list[SendOutcome], SmtpConnection]:
        conn = await connected(server.url)
        assert conn.pipelining is pipelining
        outcomes = [
            await conn.send(FROM, f"user{i}@example.org", data) for i, data in enumerate(tricky)
        ]
        assert conn.is_open
        await conn.close()
        return outcomes, conn

    with run_smtp_server(handler, pipelining=pipelining) as server:
        outcomes, conn = run(go())
    assert all(o.accepted and o.code == 250 and o.stage == "data" for o in outcomes), outcomes
    assert not conn.is_open
    got = handler.messages
    assert [m.data for m in got] == [d if d.endswith(b"\r\n") else d + b"\r\n" for d in tricky]
    assert [m.rcpt_tos for m in got] == [[f"user{i}@example.org"] for i in range(len(tricky))]
    assert {m.mail_from for m in got} == {FROM}
    assert len({m.peer for m in got}) == 1  # one connection for all


def test_empty_sender_size_limit_and_bad_addresses() -> None:
    handler = RecordingHandler()

    async def go() -> list[SendOutcome]:
        conn = await connected(server.url)
        assert conn.size_limit == 3000
        outcomes = [
            await conn.send("", "a@example.org", MESSAGE),  # null sender (bounces)
            await conn.send(FROM, "b@example.org", MESSAGE + b"x" * 5000),
            await conn.send(FROM, "c@example.org>\r\nRCPT TO:<evil@x", MESSAGE),
            await conn.send(FROM, "d@example.org", MESSAGE),
        ]
        await conn.close()
        return outcomes

    with run_smtp_server(handler, data_size_limit=3000) as server:
        ok, too_big, injected, ok2 = run(go())
    assert ok.accepted and ok2.accepted
    assert (too_big.code, too_big.stage, too_big.permanent) == (552, "mail", True)
    assert (injected.code, injected.stage, injected.permanent) == (501, "rcpt", True)
    assert handler.recipients() == ["a@example.org", "d@example.org"]
    assert handler.messages[0].mail_from == "<>"


def test_non_ascii_envelope() -> None:
    async def go(url: str) -> list[SendOutcome]:
        conn = await connected(url)
        outcomes = [
            await conn.send(FROM, "josé@example.org", MESSAGE),
            await conn.send(FROM, "ana@bücher.example", MESSAGE),
        ]
        await conn.close()
        return outcomes

    with_utf8 = RecordingHandler()
    with run_smtp_server(with_utf8) as server:
        a, b = run(go(server.url))
    assert a.accepted and b.accepted
    assert with_utf8.recipients() == ["josé@example.org", "ana@bücher.example"]

    without = RecordingHandler()
    with run_smtp_server(without, enable_SMTPUTF8=False) as server:
        a, b = run(go(server.url))
    assert (a.accepted, a.code, a.stage) == (False, 553, "mail")  # not a bounce
    assert b.accepted  # the domain went as IDNA
    assert without.recipients() == ["ana@xn--bcher-kva.example"]


# ------------------------------------------------------------------ TLS and AUTH


@pytest.mark.parametrize("tls", ["starttls", "implicit"])
def test_tls_verified_against_our_ca(tls: str, tls_files: TlsFiles) -> None:
    handler = RecordingHandler()

    async def go(url: str, ctx: ssl.SSLContext | None) -> SendOutcome:
        conn = await connected(url, ssl_context=ctx)
        outcome = await conn.send(FROM, "a@example.org", MESSAGE)
        await conn.close()
        return outcome

    with run_smtp_server(handler, tls=tls, tls_files=tls_files) as server:
        assert run(go(server.url, tls_files.client_context())).accepted
        sep = "&" if "?" in server.url else "?"
        assert run(go(f"{server.url}{sep}verify=false", None)).accepted
        # The system store does not know our CA: verification must fail.
        with pytest.raises(ssl.SSLCertVerificationError):
            run(go(server.url, None))
    assert [m.tls for m in handler.messages] == [True, True]


def test_starttls_missing_fails_clearly() -> None:
    with run_smtp_server(RecordingHandler()) as server, pytest.raises(TransportError) as info:
        run(connected(server.url + "?tls=starttls"))
    assert "does not offer STARTTLS" in str(info.value)


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_auth(mechanism: str) -> None:
    handler = RecordingHandler()
    other = {"PLAIN": ["LOGIN"], "LOGIN": ["PLAIN"]}[mechanism]
    users = {"alice@example.com": "pä ss:w@rd"}

    async def go(url: str) -> SendOutcome:
        conn = await connected(url)
        outcome = await conn.send(FROM, "a@example.org", MESSAGE)
        await conn.close()
        return outcome

    with run_smtp_server(
        handler,
        users=users,
        auth_require_tls=False,
        auth_required=True,
        auth_exclude_mechanism=other,
    ) as server:
        good = server.url.replace("//", "//alice%40example.com:p%C3%A4%20ss%3Aw%40rd@")
        assert run(go(good)).accepted
        bad = server.url.replace("//", "//alice%40example.com:wrong-secret@")
        with pytest.raises(PermanentError) as info:
            run(go(bad))
        assert info.value.code == 535
        assert "wrong-secret" not in str(info.value)
        # Without credentials the server refuses the transaction: a permanent
        # failure at MAIL, not a bounce.
        refused = run(go(server.url))
        assert (refused.accepted, refused.code, refused.stage) == (False, 530, "mail")
        assert not refused.recipient_rejected
    assert [m.login for m in handler.messages] == ["alice@example.com"]


def test_auth_over_starttls(tls_files: TlsFiles) -> None:
    handler = RecordingHandler()
    with run_smtp_server(
        handler, tls="starttls", tls_files=tls_files, users={"bob": "pw"}, auth_required=True
    ) as server:
        url = server.url.replace("//", "//bob:pw@")

        async def go() -> SendOutcome:
            conn = await connected(url, ssl_context=tls_files.client_context())
            outcome = await conn.send(FROM, "a@example.org", MESSAGE)
            await conn.close()
            return outcome

        assert run(go()).accepted
        # AUTH is offered only after STARTTLS here: asking for it in plain says so.
        with pytest.raises(TransportError, match="only over TLS"):
            run(connected(server.url.replace("//", "//bob:pw@").split("?")[0]))
    assert [(m.login, m.tls) for m in handler.messages] == [("bob", True)]


# ------------------------------------------------------------------ faults


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "stepwise"])
def test_rejections_keep_the_connection_usable(pipelining: bool) -> None:
    handler = FaultyHandler(
        rcpt={
            "gone@example.org": "550 5.1.1 no such user",
            "busy@example.org": "451 4.3.0 try later",
            "tls@example.org": "454 4.7.0 TLS not available",
        },
        data={"spam@example.org": "554 5.7.1 looks like spam", "slow@example.org": "452 4.3.1"},
    )
    order = ["gone", "ok1", "busy", "ok2", "tls", "spam", "ok3", "slow", "ok4"]

    async def go() -> tuple[list[SendOutcome], bool]:
        conn = await connected(server.url)
        outcomes = [await conn.send(FROM, f"{name}@example.org", MESSAGE) for name in order]
        still_open = conn.is_open
        await conn.close()
        return outcomes, still_open

    with run_smtp_server(handler, pipelining=pipelining) as server:
        outcomes, still_open = run(go())
    got = {name: o for name, o in zip(order, outcomes, strict=True)}
    assert still_open
    assert (got["gone"].code, got["gone"].stage, got["gone"].permanent) == (550, "rcpt", True)
    assert got["gone"].recipient_rejected and got["gone"].text == "5.1.1 no such user"
    assert (got["busy"].code, got["busy"].permanent, got["busy"].stage) == (451, False, "rcpt")
    assert (got["tls"].code, got["tls"].permanent) == (454, False)
    assert (got["spam"].code, got["spam"].stage, got["spam"].permanent) == (554, "data", True)
    assert not got["spam"].recipient_rejected
    assert (got["slow"].code, got["slow"].permanent) == (452, False)
    assert all(got[f"ok{i}"].accepted for i in range(1, 5))
    assert handler.recipients() == [f"ok{i}@example.org" for i in range(1, 5)]
    assert len({m.peer for m in handler.messages}) == 1


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "stepwise"])
@pytest.mark.parametrize("stage", ["rcpt", "data"])
def test_421_closes_and_reconnect_works(pipelining: bool, stage: str) -> None:
    fault = {"closing@example.org": "421 4.3.2 shutting down"}
    handler = FaultyHandler(**{stage: fault})  # type: ignore[arg-type]

    async def go() -> tuple[SendOutcome, bool, SendOutcome]:
        conn = await connected(server.url)
        outcome = await conn.send(FROM, "closing@example.org", MESSAGE)
        was_open = conn.is_open
        await conn.close()  # tolerant of the closed connection
        conn = await connected(server.url)
        after = await conn.send(FROM, "next@example.org", MESSAGE)
        await conn.close()
        return outcome, was_open, after

    with run_smtp_server(handler, pipelining=pipelining) as server:
        outcome, was_open, after = run(go())
    assert (outcome.accepted, outcome.code, outcome.permanent, outcome.stage) == (
        False,
        421,
        False,
        stage,
    )
    assert not was_open
    assert after.accepted
    assert handler.recipients() == ["next@example.org"]


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "stepwise"])
@pytest.mark.parametrize(
    ("stage", "fault", "in_doubt", "stored"),
    [
        ("rcpt", DROP, False, False),
        ("data", DROP, True, False),
        ("data", ACCEPT_THEN_DROP, True, True),
    ],
)
def test_dropped_connection(
    pipelining: bool, stage: str, fault: str, in_doubt: bool, stored: bool
) -> None:
    handler = FaultyHandler(**{stage: {"x@example.org": fault}})  # type: ignore[arg-type]

    async def go() -> tuple[ConnectionLost, SmtpConnection]:
        conn = await connected(server.url)
        assert (await conn.send(FROM, "before@example.org", MESSAGE)).accepted
        with pytest.raises(ConnectionLost) as info:
            await conn.send(FROM, "x@example.org", MESSAGE)
        assert not conn.is_open
        with pytest.raises(ConnectionLost) as again:
            await conn.send(FROM, "y@example.org", MESSAGE)
        assert again.value.data_sent_completely is False
        await conn.close()  # a dead socket: no error
        return info.value, conn

    with run_smtp_server(handler, pipelining=pipelining) as server:
        lost, _ = run(go())
    assert lost.data_sent_completely is in_doubt
    expected = ["before@example.org"] + (["x@example.org"] if stored else [])
    assert handler.recipients() == expected


def test_retry_after_transient_and_chaos() -> None:
    # A list of faults applies to successive attempts; None behaves.
    handler = FaultyHandler(rcpt={"r@example.org": ["451 4.3.0 later", None]}, chaos=0.3, seed=7)
    wanted = [f"c{i}@example.org" for i in range(60)] + ["r@example.org"]

    async def go() -> dict[str, int]:
        tries: dict[str, int] = {}
        pending = list(wanted)
        conn: SmtpConnection | None = None
        while pending:
            rcpt = pending.pop(0)
            tries[rcpt] = tries.get(rcpt, 0) + 1
            try:
                if conn is None or not conn.is_open:
                    conn = await connected(server.url)
                outcome = await conn.send(FROM, rcpt, MESSAGE)
            except ConnectionLost:
                conn = None  # chaos drops only before accepting: safe to resend
                pending.append(rcpt)
                continue
            if not outcome.accepted:
                assert not outcome.permanent
                pending.append(rcpt)
        if conn is not None:
            await conn.close()
        return tries

    with run_smtp_server(handler, pipelining=True) as server:
        tries = run(go())
    assert sorted(handler.recipients()) == sorted(wanted)  # each exactly once
    assert ("rcpt", "r@example.org", "451 4.3.0 later") in handler.faults_injected
    assert handler.faults_injected  # chaos did something
    assert sum(tries.values()) == len(wanted) + len(handler.faults_injected)


def test_idle_close_by_server_shows_before_sending() -> None:
    # Servers drop idle sessions; the caller must see it and reconnect rather than
    # spend an attempt on a dead connection.
    async def go() -> None:
        conn = await connected(server.url)
        assert conn.is_open
        await asyncio.sleep(0.8)
        assert not conn.is_open
        with pytest.raises(ConnectionLost) as info:
            await conn.send(FROM, "a@example.org", MESSAGE)
        assert not info.value.data_sent_completely
        await conn.close()

    with run_smtp_server(RecordingHandler(), timeout=0.3) as server:
        run(go())


# ------------------------------------------------------------------ the raw server


def test_fragmented_replies_and_multiline() -> None:
    async def go() -> tuple[SendOutcome, SmtpConnection, RawSmtpServer]:
        async with RawSmtpServer(chunk=1) as server:
            conn = await connected(server.url)
            outcome = await conn.send(FROM, "a@example.org", b".dot\r\nbody\r\n")
            await conn.close()
            return outcome, conn, server

    outcome, conn, server = run(go())
    assert outcome.accepted and outcome.text == "2.0.0 Ok: queued"
    assert conn.pipelining and conn.eightbitmime and conn.size_limit == 1_000_000
    assert server.bodies == [b"..dot\r\nbody\r\n.\r\n"]
    assert server.commands[0] == b"EHLO client.example.com\r\n"


def test_helo_fallback_without_esmtp() -> None:
    async def go() -> tuple[SendOutcome, SmtpConnection, list[bytes]]:
        async with RawSmtpServer(replies={"EHLO": b"502 5.5.2 no ESMTP here\r\n"}) as server:
            conn = await connected(server.url)
            outcome = await conn.send(FROM, "a@example.org", MESSAGE)
            await conn.close()
            return outcome, conn, server.commands

    outcome, conn, commands = run(go())
    assert outcome.accepted and not conn.pipelining
    assert [c.split(b" ")[0].split(b":")[0] for c in commands] == [
        b"EHLO",
        b"HELO",
        b"MAIL",
        b"RCPT",
        b"DATA\r\n",
        b"QUIT\r\n",
    ]
    assert b"SIZE=" not in commands[2]


@pytest.mark.parametrize(
    ("greeting", "error"),
    [
        (b"421 4.3.2 too busy\r\n", TransientError),
        (b"554-5.7.1 go away\r\n554 5.7.1 really\r\n", PermanentError),
    ],
)
def test_refused_greeting(greeting: bytes, error: type[Exception]) -> None:
    async def go() -> None:
        async with RawSmtpServer(greeting=greeting) as server:
            await connected(server.url)

    with pytest.raises(error) as info:
        run(go())
    if greeting.startswith(b"554"):
        assert info.value.text == "5.7.1 go away\n5.7.1 really"  # type: ignore[attr-defined]


def test_timeouts() -> None:
    async def silent_greeting() -> None:
        async with RawSmtpServer(greeting=None) as server:
            await connected(server.url, timeout=0.3)

    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="greeting"):
        run(silent_greeting())
    assert time.monotonic() - t0 < 2

    async def silent(verb: str) -> ConnectionLost:
        async with RawSmtpServer(replies={verb: None}) as server:
            conn = await connected(server.url + "?timeout=0.3")
            with pytest.raises(ConnectionLost) as info:
                await conn.send(FROM, "a@example.org", MESSAGE)
            assert not conn.is_open
            await conn.close()
            return info.value

    assert run(silent("RCPT")).data_sent_completely is False
    assert run(silent(".")).data_sent_completely is True


def test_garbage_reply() -> None:
    async def go() -> None:
        async with RawSmtpServer(replies={"MAIL": b"hello there\r\n"}) as server:
            conn = await connected(server.url)
            await conn.send(FROM, "a@example.org", MESSAGE)

    with pytest.raises(ConnectionLost, match="malformed"):
        run(go())


def test_connect_refused_and_send_before_connect() -> None:
    async def go() -> None:
        async with RawSmtpServer() as server:
            port = server.port
        conn = SmtpConnection(parse_smtp_url(f"smtp://127.0.0.1:{port}"))
        with pytest.raises(ConnectionLost):
            await conn.send(FROM, "a@example.org", MESSAGE)
        with pytest.raises(OSError):
            await conn.connect()
        await conn.close()

    run(go())


# ------------------------------------------------------------------ rate


def test_rate_limiter_is_smooth_across_connections() -> None:
    limiter = RateLimiter(20)
    stamps: list[float] = []

    async def connection(n: int) -> None:
        for _ in range(n):
            await limiter.wait()
            stamps.append(time.monotonic())

    async def go() -> float:
        t0 = time.monotonic()
        await asyncio.gather(*(connection(10) for _ in range(4)))
        return time.monotonic() - t0

    elapsed = run(go())
    assert 1.8 <= elapsed <= 3.0  # 39 gaps of 50 ms
    gaps = sorted(b - a for a, b in itertools.pairwise(stamps))
    median = gaps[len(gaps) // 2]
    assert 0.04 <= median <= 0.07
    # No bursts: hardly any two messages go together (a late wake-up may pair two).
    assert sum(g < 0.01 for g in gaps) <= 3


def test_rate_limiter_unlimited_is_cheap() -> None:
    limiter = RateLimiter(0)

    async def go() -> float:
        t0 = time.perf_counter()
        for _ in range(10_000):
            await limiter.wait()
        return time.perf_counter() - t0

    assert run(go()) < 0.5
    with pytest.raises(ValueError):
        RateLimiter(-1)


# ------------------------------------------------------------------ maildir


def test_maildir_capture(tmp_path: Path) -> None:
    box = tmp_path / "outbox"
    transport = MaildirTransport(box)
    body = (
        "Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "\r\nHallo ✓\r\n.line\r\n"
    ).encode()
    outcome = transport.deliver(FROM, "a@example.org", body)
    assert outcome.accepted and outcome.code == 250
    assert run(transport.send("", "b@example.org", b"Subject: two\r\n\r\nno newline")).accepted

    files = sorted((box / "new").iterdir())
    assert len(files) == 2 and not list((box / "tmp").iterdir())
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    parsed = {
        m["Delivered-To"]: m
        for m in (
            email.message_from_bytes(f.read_bytes(), policy=email.policy.default) for f in files
        )
    }
    first = parsed["a@example.org"]
    assert first["Return-Path"] == f"<{FROM}>"
    assert first["Subject"] == "Grüße"
    assert first.get_content() == "Hallo ✓\n.line\n"
    assert parsed["b@example.org"]["Return-Path"] == "<>"
    # A standard Maildir reader sees both.
    assert sorted(m["Subject"] for m in mailbox.Maildir(box, create=False)) == [
        "=?utf-8?q?Gr=C3=BC=C3=9Fe?=",
        "two",
    ]
    forged = transport.deliver(FROM, "x@example.org\r\nBcc: y@example.org", body)
    assert (forged.accepted, forged.code, forged.stage) == (False, 501, "rcpt")
    assert len(list((box / "new").iterdir())) == 2


def test_maildir_url_is_not_smtp() -> None:
    with pytest.raises(TransportConfigError):
        SmtpConnection(parse_smtp_url("maildir:///tmp/x"))


# ------------------------------------------------------------------ the next message announced


def test_announcing_the_next_message_keeps_outcomes_and_bytes() -> None:
    # Each body goes in one write with the next message's MAIL, RCPT and DATA.
    handler = FaultyHandler(
        rcpt={"gone@example.org": "550 5.1.1 no such user", "busy@example.org": "451 4.3.0"},
        data={"spam@example.org": "554 5.7.1 looks like spam"},
    )
    order = ["ok0", "gone", "ok1", "busy", "ok2", "spam", "ok3", "ok4"]
    datas = [message(i, b".dot\r\n" if i % 2 else b"plain\r\n") for i in range(len(order))]

    async def go() -> tuple[list[SendOutcome], bool]:
        conn = await connected(server.url)
        outcomes = []
        for i, name in enumerate(order):
            then = None
            if i + 1 < len(order):
                then = (FROM, f"{order[i + 1]}@example.org", datas[i + 1])
            outcomes.append(await conn.send(FROM, f"{name}@example.org", datas[i], then=then))
        still_open = conn.is_open
        await conn.close()
        return outcomes, still_open

    with run_smtp_server(handler, pipelining=True) as server:
        outcomes, still_open = run(go())
    got = dict(zip(order, outcomes, strict=True))
    assert still_open
    assert (got["gone"].code, got["gone"].stage) == (550, "rcpt")
    assert (got["busy"].code, got["busy"].permanent) == (451, False)
    assert (got["spam"].code, got["spam"].stage) == (554, "data")
    assert all(got[f"ok{i}"].accepted for i in range(5))
    assert handler.recipients() == [f"ok{i}@example.org" for i in range(5)]
    assert [m.data for m in handler.messages] == [datas[i] for i in (0, 2, 4, 6, 7)]
    assert len({m.peer for m in handler.messages}) == 1


def test_an_announced_message_is_never_delivered_without_its_own_send() -> None:
    handler = RecordingHandler()

    async def go() -> None:
        # Announced, then the connection is closed: the server gets no message for it.
        conn = await connected(server.url)
        then = (FROM, "next@example.org", message(2))
        assert (await conn.send(FROM, "first@example.org", message(1), then=then)).accepted
        await conn.close()
        # Announced, then another message is sent instead: refused before anything goes.
        conn = await connected(server.url)
        then = (FROM, "announced@example.org", message(4))
        assert (await conn.send(FROM, "third@example.org", message(3), then=then)).accepted
        with pytest.raises(ConnectionLost) as info:
            await conn.send(FROM, "other@example.org", message(5))
        assert info.value.data_sent_completely is False and not conn.is_open
        await conn.close()

    with run_smtp_server(handler, pipelining=True) as server:
        run(go())
        time.sleep(0.2)
    assert handler.recipients() == ["first@example.org", "third@example.org"]


@pytest.mark.parametrize("fault", ["421 4.3.2 shutting down", DROP])
def test_a_refused_or_dropped_body_drops_the_announced_message_too(fault: str) -> None:
    handler = FaultyHandler(data={"x@example.org": fault})

    async def go() -> bool:
        conn = await connected(server.url)
        then = (FROM, "next@example.org", MESSAGE)
        try:
            outcome = await conn.send(FROM, "x@example.org", MESSAGE, then=then)
            assert outcome.code == 421
        except ConnectionLost as exc:
            assert exc.data_sent_completely
        was_open = conn.is_open
        await conn.close()
        conn = await connected(server.url)
        assert (await conn.send(FROM, "next@example.org", MESSAGE)).accepted
        await conn.close()
        return was_open

    with run_smtp_server(handler, pipelining=True) as server:
        was_open = run(go())
    assert not was_open
    assert handler.recipients() == ["next@example.org"]
