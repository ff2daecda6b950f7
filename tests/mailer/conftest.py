"""Fixtures for the mailer tests: a real SMTP server (aiosmtpd, in-process) and people."""

from __future__ import annotations

import socket
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from campaigns import campaign as store
from campaigns import consent
from campaigns.config import Settings
from campaigns.models import Contact
from campaigns.purposes import Kind, Purpose, SuppressionReason
from tests.conftest import Db

KINDS = {
    Kind.PROMOTIONAL: {},
    Kind.SURVEY: {"survey_url": "https://survey.example.com/s/1"},
    Kind.THIRD_PARTY_OFFER: {"sponsor": "Partner GmbH"},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Inbox:
    """An aiosmtpd handler that records what it accepts; `fault` can refuse or drop."""

    received: list[tuple[str, str, bytes]] = field(default_factory=list)
    # fault(stage, recipient) -> None (accept), "drop", or a reply line like "451 later"
    fault: Callable[[str, str], str | None] = lambda stage, rcpt: None
    on_data: Callable[[str], None] = lambda rcpt: None
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, opts: Any):
        verdict = self.fault("rcpt", address)
        if verdict == "drop":
            server.transport.close()
            return "421 closing"
        if verdict:
            return verdict
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        rcpt = envelope.rcpt_tos[0]
        verdict = self.fault("data", rcpt)
        if verdict and verdict != "drop-after":
            if verdict == "drop":
                server.transport.close()
                return "421 closing"
            return verdict
        with self.lock:
            self.received.append((envelope.mail_from, rcpt, envelope.original_content))
        self.on_data(rcpt)
        if verdict == "drop-after":
            # Accepted, but the reply never reaches the client: the message is in doubt.
            server.transport.close()
        return "250 OK"

    def counts(self) -> Counter[str]:
        return Counter(r for _f, r, _d in self.received)


@pytest.fixture
def inbox() -> Iterator[tuple[Inbox, int]]:
    handler = Inbox()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    yield handler, port
    controller.stop()


def smtp_settings(settings: Settings, port: int, **kw: Any) -> Settings:
    return replace(
        settings, smtp_url=f"smtp://127.0.0.1:{port}", retry_delay=0.01, retry_wait=30, **kw
    )


def add_people(db: Db, states: list[dict[Purpose, str]]) -> list[Contact]:
    """Contacts with the given consent ('granted', 'withdrawn', 'none', 'suppressed')."""
    out = []
    with db.session() as s:
        for i, state in enumerate(states):
            email = f"person{i}@Example.com"
            c = Contact(email=email, email_key=email.lower(), name=f"Person {i}")
            s.add(c)
            s.flush()
            for purpose, value in state.items():
                if value in ("granted", "withdrawn", "suppressed"):
                    consent.record(
                        s, c, purpose, granted=True, source="form:signup", policy_version="1"
                    )
                if value == "withdrawn":
                    consent.record(
                        s, c, purpose, granted=False, source="one-click", policy_version="1"
                    )
            if any(v == "suppressed" for v in state.values()):
                from campaigns import suppression

                suppression.suppress(s, email, SuppressionReason.HARD_BOUNCE, source="bounce")
            out.append(c)
        s.commit()
    return out


def new_campaign(db: Db, kind: Kind, name: str = "c") -> int:
    with db.session() as s:
        c = store.create(
            s,
            kind=kind,
            name=name,
            subject="Hello {{ name }}",
            body="Hi **{{ name }}**",
            **KINDS[kind],
        )
        s.commit()
        return c.id or 0
