"""A lean asyncio SMTP client for pushing prebuilt messages fast.

Why our own client rather than smtplib or aiosmtplib (the exception to "prefer a
library"): the send engine must reach 0.7 of Postfix's C `smtp-source -s 8` against
`smtp-sink` with at most 120 µs of CPU per message for everything (building, claims and
SMTP). bench/smtp_client.py, 20,000 messages of 5 KB on the 2-core target, as a ratio
to smtp-source timed just before, and our CPU per message:

    this client, 8 connections            1.06-1.3x    ~40 µs
    asyncio streams (readline+wait_for)   0.67x        ~88 µs
    smtplib, 4 / 8 threads                0.55 / 0.43x  150-180 µs
    aiosmtplib, 8 connections             0.24x        ~330 µs

Neither library pipelines (four round trips per message where we need two), and both
pay per command: aiosmtplib a `wait_for` timer task and a response object per reply,
smtplib the GIL across threads and regex passes over every message. This client is an
`asyncio.Protocol`: replies are parsed straight from `data_received` chunks, one future
per round trip wakes the sender, timeouts are one watchdog timer per connection instead
of one per read, and with PIPELINING a message costs two writes and two wake-ups
(MAIL+RCPT+DATA, then the body), or one of each when the caller names the next message
(`send(..., then=...)`: its MAIL+RCPT+DATA go with this body; bench/README.md, send.py:
~14 µs less of our CPU a message, ~8 µs less of smtp-sink's). It speaks only what
sending campaigns needs: EHLO/HELO, STARTTLS or implicit TLS, AUTH PLAIN/LOGIN, PIPELINING, SIZE,
8BITMIME, SMTPUTF8, one recipient per message.

Message bytes must already use CRLF line endings (mailer.message builds them so);
dot-stuffing and the final "." are done here.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import re
import socket
import ssl
from functools import lru_cache

from mailer.transport.base import (
    ConnectionLost,
    Reply,
    SendOutcome,
    Stage,
    TransportConfigError,
    TransportError,
    smtp_error,
)
from mailer.transport.url import SmtpUrl

# Bodies larger than this are written in pieces, waiting for the socket to drain in
# between, so a slow link shows progress to the read timeout.
_CHUNK = 256 * 1024
# A reply line longer than this means the peer is not an SMTP server.
_MAX_LINE = 64 * 1024
# Envelope addresses are put between <> verbatim: no controls, spaces or brackets.
_BAD_ADDRESS = re.compile(r"[\x00-\x20<>\x7f]").search


@lru_cache(maxsize=4)
def _ssl_context(verify: bool) -> ssl.SSLContext:
    # Cached: loading the system CA store costs milliseconds per context.
    ctx = ssl.create_default_context()
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class _Protocol(asyncio.Protocol):
    """Splits the byte stream into replies and wakes whoever waits for them."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.error: BaseException | None = None
        self.activity = 0.0
        self.done: asyncio.Future[None] = loop.create_future()
        self._buf = b""
        self._lines: list[bytes] = []
        self._replies: collections.deque[tuple[int, bytes]] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._need = 0
        self._drain: asyncio.Future[None] | None = None
        self._paused = False

    # -- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self._buf + data if self._buf else data
        start = 0
        find = buf.find
        while (end := find(b"\n", start)) >= 0:
            line = buf[start:end]
            start = end + 1
            if line[-1:] == b"\r":
                line = line[:-1]
            code = line[:3]
            if len(code) != 3 or not code.isdigit() or line[3:4] not in (b"", b" ", b"-"):
                self._fail(ConnectionLost(f"malformed reply from the server: {line[:80]!r}"))
                return
            if line[3:4] == b"-":
                self._lines.append(line[4:])
                continue
            if self._lines:
                self._lines.append(line[4:])
                text = b"\n".join(self._lines)
                self._lines = []
            else:
                text = line[4:]
            self._replies.append((int(code), text))
        self._buf = buf[start:]
        if len(self._buf) > _MAX_LINE:
            self._fail(ConnectionLost("reply line too long: the peer does not speak SMTP"))
            return
        waiter = self._waiter
        if waiter is not None:
            self.activity = self.loop.time()
            if len(self._replies) >= self._need and not waiter.done():
                waiter.set_result(None)

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.error is None:
            reason = f": {exc}" if exc else ""
            self.error = ConnectionLost(f"the server closed the connection{reason}")
        self._wake()
        if not self.done.done():
            self.done.set_result(None)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self.activity = self.loop.time()
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    # -- used by SmtpConnection

    @property
    def waiting(self) -> bool:
        return self._waiter is not None or self._drain is not None

    @property
    def buffered(self) -> bool:
        return bool(self._buf or self._replies or self._lines)

    def write(self, data: bytes) -> None:
        if self.error is not None:
            raise self.failure()
        self.transport.write(data)  # type: ignore[union-attr]

    async def drain(self) -> None:
        if self._paused and self.error is None:
            self._drain = self.loop.create_future()
            self.activity = self.loop.time()
            try:
                await self._drain
            finally:
                self._drain = None
        if self.error is not None:
            raise self.failure()

    async def read(self, n: int) -> list[tuple[int, bytes]]:
        """The next `n` replies (code, text); raises ConnectionLost or TimeoutError."""
        replies = self._replies
        if len(replies) < n:
            if self.error is not None:
                raise self.failure()
            if self._waiter is not None:
                raise RuntimeError("one SmtpConnection cannot send() from two tasks at once")
            self._need = n
            self._waiter = waiter = self.loop.create_future()
            self.activity = self.loop.time()
            try:
                await waiter
            finally:
                self._waiter = None
        popleft = replies.popleft
        return [popleft() for _ in range(n)]

    def take_replies(self) -> list[tuple[int, bytes]]:
        """Every complete reply received and not yet read."""
        replies = list(self._replies)
        self._replies.clear()
        return replies

    def fail(self, error: BaseException) -> None:
        """Stop the connection (timeout, protocol error) and wake the waiter with `error`."""
        self._fail(error)

    def _fail(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
        self._wake()
        if self.transport is not None:
            self.transport.abort()

    def failure(self) -> BaseException:
        """A fresh copy of what stopped the connection (re-raising one instance would
        pile up tracebacks on it)."""
        assert self.error is not None
        return type(self.error)(*self.error.args)

    def _wake(self) -> None:
        for fut in (self._waiter, self._drain):
            if fut is not None and not fut.done():
                fut.set_exception(self.failure())


def _ok(code: int) -> bool:
    return 200 <= code < 300


def _outcome(code: int, text: bytes, stage: Stage) -> SendOutcome:
    return SendOutcome(
        _ok(code), code, text.decode("utf-8", "replace"), stage, not _ok(code) and code >= 500
    )


class SmtpConnection:
    """One SMTP session, reused for many messages (one recipient each).

    After `connect()`, `send()` may be called again and again; `is_open` turns False
    when the server closes (a 421, a dropped connection, a timeout) and the caller
    opens a new connection. Not safe for concurrent `send()` calls: use one
    connection per task.
    """

    def __init__(
        self,
        url: SmtpUrl,
        *,
        local_hostname: str | None = None,
        timeout: float | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if url.scheme not in ("smtp", "smtps"):
            raise TransportConfigError(f"SMTP URL: {url.scheme}:// is not an SMTP server")
        self.url = url
        self.local_hostname = local_hostname
        # None: the URL's ?timeout= (default 30 s). Applies to every read.
        self.timeout = url.timeout if timeout is None else timeout
        # For a private CA; by default the system store, or none with ?verify=false.
        self.ssl_context = ssl_context
        self._open = False
        self.extensions: dict[str, str] = {}
        self.pipelining = False
        self.size_limit = 0
        self.eightbitmime = False
        self.smtputf8 = False
        self._proto: _Protocol | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._rset_pending = 0  # RSET replies still to read (pipelined)
        # MAIL+RCPT of the next message, written (with DATA) after the previous body;
        # their replies are read by the next send.
        self._ahead: bytes | None = None

    @property
    def announced(self) -> bool:
        """True when the next message's MAIL, RCPT and DATA have gone out with the last
        body (`send(..., then=...)`): that message must be the next one sent."""
        return self._ahead is not None

    @property
    def is_open(self) -> bool:
        """True while the session can take a message; False once closed, refused with
        421, timed out, or hung up by the server (an idle timeout too), so the caller
        reconnects before sending rather than losing an attempt."""
        proto = self._proto
        return self._open and proto is not None and proto.error is None

    def __repr__(self) -> str:
        state = "open" if self.is_open else "closed"
        return f"<SmtpConnection {self.url.redacted()} {state}>"

    @property
    def _where(self) -> str:
        return f"{self.url.host}:{self.url.port}"

    # ------------------------------------------------------------------ session

    async def connect(self) -> None:
        """Open the session: greeting, EHLO, STARTTLS, AUTH.

        Raises OSError (cannot connect, TLS failure), TimeoutError, ConnectionLost,
        TransientError/PermanentError (a refusal, with the reply) or TransportError.
        """
        if self._proto is not None:
            await self.close()
        loop = asyncio.get_running_loop()
        url = self.url
        ctx = None
        if url.tls != "none":
            ctx = self.ssl_context or _ssl_context(url.verify)
        implicit = url.tls == "implicit"
        try:
            _, proto = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Protocol(loop),
                    url.host,
                    url.port,
                    ssl=ctx if implicit else None,
                    server_hostname=url.host if implicit else None,
                ),
                self.timeout,
            )
        except TimeoutError:
            raise TimeoutError(
                f"cannot connect to {self._where} within {self.timeout:g}s"
            ) from None
        self._proto = proto
        self._rset_pending = 0
        self._ahead = None
        self._watch()
        try:
            greeting = await self._read_one("greeting")
            if greeting.code != 220:
                raise smtp_error(greeting, f"{self._where} refused the session")
            await self._hello()
            if url.tls == "starttls":
                await self._starttls(loop, ctx)  # type: ignore[arg-type]
            if url.username is not None:
                await self._auth(url.username, url.password or "")
        except BaseException:
            self._abort()
            raise
        self._open = True

    async def close(self) -> None:
        """QUIT and close; quiet about a connection that is already dead."""
        proto = self._proto
        self._open = False
        self._proto = None
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if proto is None or proto.transport is None:
            return
        # (A closing transport would still send what is written to it.) With a next
        # message announced the server waits for its content: abort, never QUIT (or
        # anything else) into it.
        if self._ahead is not None:
            self._ahead = None
            proto.transport.abort()
        elif proto.error is None and not proto.transport.is_closing():
            try:
                proto.write(b"QUIT\r\n")
                await asyncio.wait_for(proto.read(self._rset_pending + 1), min(self.timeout, 5))
            except (TransportError, OSError, TimeoutError, RuntimeError):
                pass  # closing anyway
        proto.transport.close()
        # Let the close (and a TLS close_notify) finish so nothing is left dangling.
        try:
            await asyncio.wait_for(asyncio.shield(proto.done), 1.0)
        except TimeoutError:
            proto.transport.abort()

    def _abort(self) -> None:
        self._open = False
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        proto = self._proto
        if proto is not None and proto.transport is not None:
            proto.transport.abort()

    def _watch(self) -> None:
        # One timer per connection checks the pending read, rather than a timer (or a
        # wait_for task) per read: reads are the hot path.
        proto = self._proto
        if proto is None or proto.closed:
            self._watchdog = None
            return
        loop = proto.loop
        if proto.waiting and loop.time() - proto.activity > self.timeout:
            proto.fail(TimeoutError(f"no reply from {self._where} within {self.timeout:g}s"))
        self._watchdog = loop.call_later(min(1.0, self.timeout / 4), self._watch)

    async def _read_one(self, what: str) -> Reply:
        assert self._proto is not None
        try:
            ((code, text),) = await self._proto.read(1)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc} ({what})") from None
        return Reply(code, text.decode("utf-8", "replace"))

    async def _command(self, line: bytes, what: str) -> Reply:
        assert self._proto is not None
        self._proto.write(line)
        return await self._read_one(what)

    async def _hello(self) -> None:
        name = self.local_hostname or self._default_hostname()
        if not name.isascii():
            name = name.encode("idna").decode("ascii")
        reply = await self._command(f"EHLO {name}\r\n".encode("ascii"), "EHLO")
        self.extensions = {}
        if reply.code >= 500:  # an old server without ESMTP
            reply = await self._command(f"HELO {name}\r\n".encode("ascii"), "HELO")
            if reply.code != 250:
                raise smtp_error(reply, "HELO")
        elif reply.code != 250:
            raise smtp_error(reply, "EHLO")
        else:
            for item in reply.text.split("\n")[1:]:
                keyword, _, params = item.strip().partition(" ")
                if keyword:
                    self.extensions[keyword.upper()] = params.strip()
        ext = self.extensions
        self.pipelining = "PIPELINING" in ext
        self.eightbitmime = "8BITMIME" in ext
        self.smtputf8 = "SMTPUTF8" in ext
        size = ext.get("SIZE", "")
        self.size_limit = int(size) if size.isdigit() else 0

    def _default_hostname(self) -> str:
        # socket.getfqdn() (smtplib's choice) can block on DNS for seconds; a dotted
        # host name or our address literal is what RFC 5321 asks for.
        name = socket.gethostname()
        if "." in name and name.isascii():
            return name
        assert self._proto is not None and self._proto.transport is not None
        sockname = self._proto.transport.get_extra_info("sockname")
        host = sockname[0] if sockname else "127.0.0.1"
        return f"[IPv6:{host}]" if ":" in host else f"[{host}]"

    async def _starttls(self, loop: asyncio.AbstractEventLoop, ctx: ssl.SSLContext) -> None:
        if "STARTTLS" not in self.extensions:
            raise TransportError(
                f"{self._where} does not offer STARTTLS (tls=starttls in the SMTP URL); "
                "check the port, or use smtps:// for implicit TLS"
            )
        reply = await self._command(b"STARTTLS\r\n", "STARTTLS")
        if reply.code != 220:
            raise smtp_error(reply, "STARTTLS")
        proto = self._proto
        assert proto is not None and proto.transport is not None
        if proto.buffered:
            # Bytes sent before the handshake would be trusted afterwards (CVE-2011-0411).
            raise TransportError(f"{self._where} sent data after STARTTLS: refusing")
        tls_transport = await loop.start_tls(
            proto.transport,
            proto,
            ctx,
            server_hostname=self.url.host,
            ssl_handshake_timeout=self.timeout,
        )
        proto.transport = tls_transport  # type: ignore[assignment]
        await self._hello()

    async def _auth(self, username: str, password: str) -> None:
        if "AUTH" not in self.extensions:
            hint = "" if self.url.tls != "none" else " (many servers offer it only over TLS)"
            raise TransportError(f"{self._where} does not offer AUTH{hint}")
        mechanisms = self.extensions["AUTH"].upper().replace("=", " ").split()
        user, secret = username.encode("utf-8"), password.encode("utf-8")
        if "PLAIN" in mechanisms:
            token = base64.b64encode(b"\0" + user + b"\0" + secret)
            reply = await self._command(b"AUTH PLAIN " + token + b"\r\n", "AUTH")
        elif "LOGIN" in mechanisms:
            reply = await self._command(b"AUTH LOGIN\r\n", "AUTH")
            for value in (user, secret):
                if reply.code != 334:
                    break
                reply = await self._command(base64.b64encode(value) + b"\r\n", "AUTH")
        else:
            raise TransportError(
                f"{self._where} offers AUTH {' '.join(mechanisms)}, but not PLAIN or LOGIN"
            )
        if reply.code != 235:
            # The reply never contains the password; the error names the user only.
            raise smtp_error(reply, f"login as {username!r} refused")

    # ------------------------------------------------------------------ sending

    async def send(
        self,
        envelope_from: str,
        recipient: str,
        data: bytes,
        *,
        then: tuple[str, str, bytes] | None = None,
    ) -> SendOutcome:
        """Send one message to one recipient.

        Returns the outcome for any reply. Raises ConnectionLost when the connection
        drops or a reply times out; `data_sent_completely` says whether the message is
        in doubt.

        `then` is the message the caller will send next on this connection, if known:
        with PIPELINING its MAIL, RCPT and DATA go in the same write as this message's
        body (RFC 2920 lets a group start with the message content), saving a write and
        a wake-up per message. Nothing of it can be delivered before its own body goes,
        which only the next `send` writes. The next `send` must then be for that message
        (anything else aborts the session); `close` aborts rather than QUIT while such
        a group waits.
        """
        proto = self._proto
        if not self.is_open or proto is None:
            self._open = False
            raise ConnectionLost("the connection is not open", data_sent_completely=False)
        head = self._head(envelope_from, recipient, data)
        if isinstance(head, SendOutcome):
            if self._ahead is not None:
                self._abort()
                raise ConnectionLost("another message was announced", data_sent_completely=False)
            return head
        # Dot-stuffing: one C-speed replace (returns the same object when no line
        # starts with "."), then the terminator.
        body = data.replace(b"\r\n.", b"\r\n..")
        if body[:1] == b".":
            body = b"." + body
        # The terminator is joined on in the one write of the body (no extra copy).
        end = b".\r\n" if body[-2:] == b"\r\n" else b"\r\n.\r\n"
        try:
            if self.pipelining:
                return await self._send_pipelined(proto, head, body, end, then)
            return await self._send_stepwise(proto, head, body, end)
        except TimeoutError as exc:
            # Only reached before the body went out; see _finish for the in-doubt case.
            self._abort()
            raise ConnectionLost(str(exc), data_sent_completely=False) from None
        except (ConnectionLost, asyncio.CancelledError):
            # Cancelled mid-exchange, the session is in an unknown state: never reuse it.
            self._abort()
            raise

    def _head(self, envelope_from: str, recipient: str, data: bytes) -> bytes | SendOutcome:
        """MAIL FROM and RCPT TO for one message, or the outcome that refuses it here."""
        size = len(data)
        if self.size_limit and size > self.size_limit:
            return SendOutcome(
                False,
                552,
                f"5.3.4 message of {size} bytes exceeds the server's limit of {self.size_limit}",
                "mail",
                True,
            )
        # The envelope: a fast path for plain ASCII addresses, the common case.
        if _BAD_ADDRESS(envelope_from) or _BAD_ADDRESS(recipient):
            bad = "rcpt" if _BAD_ADDRESS(recipient) else "mail"
            return SendOutcome(False, 501, "5.1.3 invalid envelope address", bad, True)
        params = f" SIZE={size}" if self.size_limit else ""
        if self.eightbitmime and not data.isascii():
            params += " BODY=8BITMIME"
        envelope = f"MAIL FROM:<{envelope_from}>{params}\r\nRCPT TO:<{recipient}>\r\n"
        if envelope.isascii():
            return envelope.encode("ascii")
        if self.smtputf8:
            head = f"MAIL FROM:<{envelope_from}>{params} SMTPUTF8\r\nRCPT TO:<{recipient}>\r\n"
            return head.encode("utf-8")
        idna = _idna_envelope(envelope_from, recipient, params)
        if idna is None:
            return SendOutcome(
                False,
                553,
                "5.6.7 a non-ASCII address needs SMTPUTF8, which the server does not offer",
                "mail",
                True,
            )
        return idna

    async def _send_pipelined(
        self,
        proto: _Protocol,
        head: bytes,
        body: bytes,
        end: bytes,
        then: tuple[str, str, bytes] | None,
    ) -> SendOutcome:
        # MAIL, RCPT and DATA in one write (or already written with the previous body),
        # plus the answer to an earlier RSET.
        skip = self._rset_pending
        self._rset_pending = 0
        ahead, self._ahead = self._ahead, None
        if ahead is None:
            proto.write(head + b"DATA\r\n")
        elif ahead != head:
            self._abort()
            raise ConnectionLost(
                "the message announced with the previous one was not sent next",
                data_sent_completely=False,
            )
        try:
            replies = await proto.read(skip + 3)
        except ConnectionLost:
            # A server may refuse (421 above all) and hang up before answering the
            # rest of the group: what it did answer still decides.
            outcome = _first_refusal(proto.take_replies()[skip:])
            if outcome is None:
                raise
            self._abort()
            return outcome
        if skip:
            replies = replies[skip:]
        (mail, _), (rcpt, _), (data, data_text) = replies
        if data == 354 and _ok(mail) and _ok(rcpt):
            next_head = None
            if then is not None:
                got = self._head(*then)
                if isinstance(got, bytes):
                    next_head = got
            return await self._finish(proto, body, end, next_head)
        if data == 354:
            # DATA was accepted although MAIL or RCPT failed: end it with an empty
            # message (RFC 2920 §3.1); its reply and RSET's are read with the next send.
            proto.write(b".\r\nRSET\r\n")
            self._rset_pending = 2
        else:
            proto.write(b"RSET\r\n")
            self._rset_pending = 1
        outcome = _first_refusal(replies) or _outcome(data, data_text, "data")
        if 421 in (mail, rcpt, data):
            self._closing()
        return outcome

    async def _send_stepwise(
        self, proto: _Protocol, head: bytes, body: bytes, end: bytes
    ) -> SendOutcome:
        mail_line, _, rcpt_line = head.partition(b"\r\n")
        for line, stage in ((mail_line, "mail"), (rcpt_line[:-2], "rcpt"), (b"DATA", "data")):
            proto.write(line + b"\r\n")
            ((code, text),) = await proto.read(1)
            expected = code == 354 if stage == "data" else _ok(code)
            if not expected:
                if code == 421:
                    self._closing()
                else:
                    proto.write(b"RSET\r\n")  # no PIPELINING: wait for its reply now
                    await proto.read(1)
                return _outcome(code, text, stage)  # type: ignore[arg-type]
        return await self._finish(proto, body, end)

    async def _finish(
        self, proto: _Protocol, body: bytes, end: bytes, next_head: bytes | None = None
    ) -> SendOutcome:
        """Write the body and read the verdict: once all of it is written, a lost reply
        means the message is in doubt; lost before that, it certainly was not taken.
        `next_head` (the next message's MAIL and RCPT) goes in the same write."""
        try:
            if len(body) <= _CHUNK:
                if next_head is not None:
                    proto.write(b"".join((body, end, next_head, b"DATA\r\n")))
                    self._ahead = next_head
                else:
                    proto.write(body + end)
            else:
                body += end
                view = memoryview(body)
                for i in range(0, len(body), _CHUNK):
                    await proto.drain()
                    proto.write(view[i : i + _CHUNK])  # type: ignore[arg-type]
        except (ConnectionLost, TimeoutError) as exc:
            self._abort()
            raise ConnectionLost(
                f"connection lost while sending the message: {exc}", data_sent_completely=False
            ) from None
        try:
            ((code, text),) = await proto.read(1)
        except (ConnectionLost, TimeoutError) as exc:
            self._abort()
            raise ConnectionLost(
                f"no reply after the message was sent: {exc}", data_sent_completely=True
            ) from None
        if code == 421:
            self._closing()
        return _outcome(code, text, "data")

    def _closing(self) -> None:
        # A 421 means the server is shutting this session: drop it, the caller reconnects.
        self._open = False
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        proto = self._proto
        if proto is not None and proto.transport is not None:
            proto.transport.close()


def _first_refusal(replies: list[tuple[int, bytes]]) -> SendOutcome | None:
    """The outcome of the first refused command among MAIL, RCPT (and DATA's 354)."""
    for (code, text), stage in zip(replies, ("mail", "rcpt", "data"), strict=False):
        if not (code == 354 if stage == "data" else _ok(code)):
            return _outcome(code, text, stage)  # type: ignore[arg-type]
    return None


def _idna_envelope(envelope_from: str, recipient: str, params: str) -> bytes | None:
    """The envelope with IDNA domains, or None when a local part is not ASCII."""
    addresses = []
    for address in (envelope_from, recipient):
        local, at, domain = address.rpartition("@")
        if not local.isascii():
            return None
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            return None
        addresses.append(f"{local}{at}{domain}")
    return f"MAIL FROM:<{addresses[0]}>{params}\r\nRCPT TO:<{addresses[1]}>\r\n".encode("ascii")
