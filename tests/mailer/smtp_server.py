"""Real SMTP servers for tests: aiosmtpd in a thread, handlers that record or misbehave.

    handler = FaultyHandler(rcpt={"bob@example.org": "550 5.1.1 no such user"})
    with run_smtp_server(handler, pipelining=True) as server:
        ... connect to server.url ...
    handler.messages  # what the server accepted, with the envelope

- `RecordingHandler` keeps every accepted message (`Received`), thread-safe.
- `FaultyHandler` misbehaves per recipient (a reply, or a list of replies for
  successive attempts) or at random (`chaos`, seeded): 421/451/454/550 at RCPT or at
  the end of DATA, dropped connections (`DROP`, and `ACCEPT_THEN_DROP` at DATA, which
  keeps the message but never answers: the client cannot know).
- `run_smtp_server` runs aiosmtpd's Controller on a free port (port 0, read back), plain,
  STARTTLS or implicit TLS, optionally with AUTH users; `url` is ready for
  `parse_smtp_url`.
- `RawSmtpServer` is a tiny scripted server for what aiosmtpd cannot do: replies cut
  into 1-byte writes, odd greetings, silence (timeouts), no ESMTP, garbage.
- `make_tls_files` writes a throwaway CA and a server certificate for 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import random
import ssl
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

DROP = "drop"  # close the connection without a reply
ACCEPT_THEN_DROP = "accept-then-drop"  # at DATA: keep the message, then drop (in doubt)

# What `chaos` picks from: (stage, reply). ACCEPT_THEN_DROP is left out, because it
# makes a message in doubt, which a sender must report rather than resend.
CHAOS_FAULTS: tuple[tuple[str, str], ...] = (
    ("rcpt", "421 4.3.2 Service shutting down"),
    ("rcpt", "451 4.3.0 Temporary failure, try again"),
    ("rcpt", "454 4.7.0 TLS not available due to local problem"),
    ("rcpt", DROP),
    ("data", "451 4.3.0 Error in processing"),
    ("data", "421 4.3.2 Service shutting down"),
    ("data", DROP),
)

Fault = str | Sequence[str | None] | None


@dataclass(frozen=True)
class Received:
    """One message the server accepted."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes  # as the server stored it: dot-stuffing undone
    peer: Any  # (host, port) of the client: the same for messages on one connection
    login: str | None  # the AUTH user, if any
    tls: bool


class RecordingHandler:
    """Accepts everything and keeps it in `messages`."""

    def __init__(self) -> None:
        self.messages: list[Received] = []
        self.lock = threading.Lock()
        self.pipelining = False  # set by run_smtp_server(pipelining=True)

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname  # the 5-argument hook must set it itself
        if self.pipelining:
            responses.insert(1, "250-PIPELINING")  # aiosmtpd copes; it just doesn't say so
        return responses

    def record(self, server: SMTP, session: Session, envelope: Envelope) -> None:
        auth = session.auth_data
        transport = server.transport
        login = auth.login.decode() if isinstance(auth, LoginPassword) else None
        message = Received(
            mail_from=envelope.mail_from or "",
            rcpt_tos=list(envelope.rcpt_tos),
            data=bytes(envelope.original_content or b""),
            peer=session.peer,
            login=login,
            tls=transport is not None and transport.get_extra_info("ssl_object") is not None,
        )
        with self.lock:
            self.messages.append(message)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.record(server, session, envelope)
        return f"250 2.0.0 Ok: queued as {len(self.messages)}"

    def recipients(self) -> list[str]:
        with self.lock:
            return [r for m in self.messages for r in m.rcpt_tos]


class FaultyHandler(RecordingHandler):
    """Misbehaves as configured, otherwise records like RecordingHandler.

    `rcpt` and `data` map a recipient (any case) to a fault at that stage: a reply
    line ("550 5.1.1 no such user"), DROP, ACCEPT_THEN_DROP (data only), or a list of
    those for successive attempts, where None means "behave" (e.g. ["451 ...", None]
    fails once, then accepts). A 421 reply is followed by closing the connection, as
    real servers do. `chaos` is the chance that any transaction gets a random fault
    from `chaos_faults`, drawn from `random.Random(seed)`.
    """

    def __init__(
        self,
        *,
        rcpt: dict[str, Fault] | None = None,
        data: dict[str, Fault] | None = None,
        chaos: float = 0.0,
        seed: int | None = None,
        chaos_faults: Sequence[tuple[str, str]] = CHAOS_FAULTS,
    ) -> None:
        super().__init__()
        self.rcpt_faults = {k.lower(): _queue(v) for k, v in (rcpt or {}).items()}
        self.data_faults = {k.lower(): _queue(v) for k, v in (data or {}).items()}
        self.chaos = chaos
        self.chaos_faults = list(chaos_faults)
        self.random = random.Random(seed)
        self.faults_injected: list[tuple[str, str, str]] = []  # (stage, recipient, fault)

    def _next(self, table: dict[str, list[str | None] | str], address: str) -> str | None:
        with self.lock:
            entry = table.get(address.lower())
            if isinstance(entry, list):
                return entry.pop(0) if entry else None
            return entry

    def _note(self, stage: str, address: str, fault: str) -> None:
        with self.lock:
            self.faults_injected.append((stage, address, fault))

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        fault = self._next(self.rcpt_faults, address)
        if fault is None and self.chaos and self.random.random() < self.chaos:
            stage, fault = self.random.choice(self.chaos_faults)
            if stage == "data":
                envelope.planned_fault = fault  # type: ignore[attr-defined]
                fault = None
        if fault is None:
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(rcpt_options)
            return "250 2.1.5 Ok"
        self._note("rcpt", address, fault)
        return await _misbehave(server, fault)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        address = envelope.rcpt_tos[0] if envelope.rcpt_tos else ""
        fault = getattr(envelope, "planned_fault", None) or self._next(self.data_faults, address)
        if fault is None:
            return await super().handle_DATA(server, session, envelope)
        self._note("data", address, fault)
        if fault == ACCEPT_THEN_DROP:
            self.record(server, session, envelope)
            fault = DROP
        return await _misbehave(server, fault)


def _queue(fault: Fault) -> list[str | None] | str:
    return fault if isinstance(fault, str) else list(fault or [])


async def _misbehave(server: SMTP, fault: str) -> str:
    if fault == DROP:
        assert server.transport is not None
        server.transport.abort()
    elif fault.startswith("421"):
        await server.push(fault)
        assert server.transport is not None
        server.transport.close()
    else:
        return fault
    # Closing the transport cancels this handler (aiosmtpd's connection_lost); wait
    # for that instead of returning a reply to a dead connection.
    await asyncio.sleep(30)
    return "421 4.3.2 should have been cancelled"


# --------------------------------------------------------------------- servers


class Authenticator:
    """aiosmtpd authenticator for a dict of user -> password."""

    def __init__(self, users: dict[str, str]) -> None:
        self.users = users

    def __call__(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if isinstance(auth_data, LoginPassword):
            user = auth_data.login.decode("utf-8", "replace")
            if self.users.get(user) == auth_data.password.decode("utf-8", "replace"):
                return AuthResult(success=True, auth_data=auth_data)
        return AuthResult(success=False, handled=False)


class _FreePortController(Controller):
    # aiosmtpd 1.4 pings its own port after binding, so with port 0 it must learn the
    # real port first; this avoids the race of picking a "free" port beforehand.
    def _trigger_server(self) -> None:
        assert self.server is not None
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


@dataclass
class TlsFiles:
    ca: Path  # trust this to verify the server
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert, self.key)
        return ctx

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))


def make_tls_files(directory: Path) -> TlsFiles:
    """A throwaway CA and a server certificate for 127.0.0.1 and localhost."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "campaigns test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files


@dataclass
class RunningServer:
    controller: Controller
    handler: Any
    url: str  # for parse_smtp_url, e.g. smtp://127.0.0.1:40123

    @property
    def port(self) -> int:
        return int(self.controller.port)


@contextmanager
def run_smtp_server(
    handler: Any,
    *,
    tls: str = "none",
    tls_files: TlsFiles | None = None,
    users: dict[str, str] | None = None,
    pipelining: bool = False,
    **smtp_kwargs: Any,
) -> Iterator[RunningServer]:
    """aiosmtpd on 127.0.0.1 and a free port; `tls` is none, starttls or implicit.

    With `users`, AUTH PLAIN/LOGIN is offered (pass auth_require_tls=False to offer it
    without TLS, auth_required=True to insist). Other keywords go to aiosmtpd's SMTP.
    """
    if hasattr(handler, "pipelining"):
        handler.pipelining = pipelining
    kwargs: dict[str, Any] = {"hostname": "127.0.0.1", "port": 0, "server_hostname": "test.local"}
    scheme = "smtp"
    query = ""
    if tls != "none":
        assert tls_files is not None, "TLS needs tls_files (make_tls_files)"
        if tls == "starttls":
            kwargs["tls_context"] = tls_files.server_context()
            query = "?tls=starttls"
        else:
            kwargs["ssl_context"] = tls_files.server_context()
            scheme = "smtps"
    if users is not None:
        kwargs["authenticator"] = Authenticator(users)
    kwargs.update(smtp_kwargs)
    controller = _FreePortController(handler, **kwargs)
    controller.start()
    try:
        url = f"{scheme}://127.0.0.1:{controller.port}{query}"
        yield RunningServer(controller, handler, url)
    finally:
        controller.stop()


# --------------------------------------------------------------------- scripted server


@dataclass
class RawSmtpServer:
    """A scripted SMTP server in the test's own event loop (`async with`).

    `replies` maps a command verb (EHLO, MAIL, RCPT, DATA, ".", RSET, QUIT, STARTTLS...)
    to the reply bytes (CRLF included, several lines allowed); None means stay silent.
    `chunk` cuts every reply into writes of that many bytes, with a pause between, so
    the client sees arbitrarily fragmented reads.
    """

    greeting: bytes | None = b"220 raw.test ESMTP\r\n"
    replies: dict[str, bytes | None] = field(default_factory=dict)
    chunk: int = 0
    port: int = 0
    commands: list[bytes] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    _server: asyncio.AbstractServer | None = None

    DEFAULTS = {
        "EHLO": b"250-raw.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 1000000\r\n",
        "HELO": b"250 raw.test\r\n",
        "MAIL": b"250 2.1.0 Ok\r\n",
        "RCPT": b"250 2.1.5 Ok\r\n",
        "DATA": b"354 go ahead\r\n",
        ".": b"250 2.0.0 Ok: queued\r\n",
        "RSET": b"250 2.0.0 Ok\r\n",
        "NOOP": b"250 2.0.0 Ok\r\n",
        "QUIT": b"221 2.0.0 Bye\r\n",
    }

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    async def __aenter__(self) -> RawSmtpServer:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _say(self, writer: asyncio.StreamWriter, data: bytes | None) -> None:
        if data is None:
            return
        if not self.chunk:
            writer.write(data)
        else:
            for i in range(0, len(data), self.chunk):
                writer.write(data[i : i + self.chunk])
                await writer.drain()
                await asyncio.sleep(0.001)
        await writer.drain()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._say(writer, self.greeting)
            while line := await reader.readline():
                self.commands.append(line)
                verb = line.split(b" ", 1)[0].strip().upper().decode("ascii", "replace")
                verb = verb.split(":", 1)[0]
                reply = self.replies.get(verb, self.DEFAULTS.get(verb, b"502 5.5.2 what?\r\n"))
                await self._say(writer, reply)
                if verb == "DATA" and reply is not None and reply.startswith(b"354"):
                    body = await reader.readuntil(b"\r\n.\r\n")
                    self.bodies.append(body)
                    await self._say(writer, self.replies.get(".", self.DEFAULTS["."]))
                if verb == "QUIT":
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
