"""Fixtures for the terminal UI: a real SQLite file, a real SMTP server, fixed data.

The UI tests run on SQLite only (the store's own tests cover PostgreSQL). The SMTP server
is aiosmtpd's Controller in this process, on a free port of 127.0.0.1; the app reaches it
through the real services (`Services.build`), exactly as `campaigns tui` would.
"""

from __future__ import annotations

import contextlib
import email.parser
import email.policy
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import Engine
from textual.pilot import Pilot
from textual.worker import WorkerCancelled

from campaigns import addresses, campaign, consent, suppression
from campaigns.config import Settings
from campaigns.db import make_engine, session_scope, upgrade
from campaigns.models import ConsentEvent, Contact, ContactTag, Delivery, ReturnEvent
from campaigns.purposes import Kind, Purpose, SuppressionReason
from tui.app import CampaignsApp, create_app
from tui.services import Services

# Everything in the fixed data happened on these days (UTC).
T0 = datetime(2026, 1, 5, 9, 30, tzinfo=UTC)
NOW = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
POLICY = "2026-01"


# ------------------------------------------------------------------ SMTP


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes

    @property
    def message(self) -> Any:
        return email.parser.BytesParser(policy=email.policy.default).parsebytes(self.data)

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])


@dataclass
class SmtpServer:
    port: int
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def messages(self) -> list[Received]:
        with self.lock:
            return list(self.received)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.received.append(
                Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content)
            )
        return "250 Message accepted"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    server = SmtpServer(port=_free_port())
    controller = Controller(server, hostname="127.0.0.1", port=server.port)
    controller.start()
    try:
        yield server
    finally:
        controller.stop()


# ------------------------------------------------------------------ database


@dataclass
class Env:
    """A migrated SQLite file and the settings that point at it (and at the SMTP server)."""

    settings: Settings
    engine: Engine
    smtp: SmtpServer | None = None

    def services(self, **overrides: Any) -> Services:
        defaults: dict[str, Any] = {"refresh_seconds": 0, "tz": UTC, "now": lambda: NOW}
        return Services.build(self.settings, self.engine, **{**defaults, **overrides})

    def app(self, **overrides: Any) -> CampaignsApp:
        return create_app(self.services(**overrides))


def _settings(tmp_path: Path, smtp_url: str = "") -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=f"sqlite:///{tmp_path / 'campaigns.db'}",
        smtp_url=smtp_url or f"maildir://{tmp_path / 'outbox'}",
        secret_key="test-key-1",
        policy_version=POLICY,
        postal_address="Test Shop, 1 Test Street, Testville",
        sender="Test Shop <news@shop.example.com>",
        operator="tester",
        smtp_connections=2,
        retry_delay=0.05,
        max_attempts=2,
        retry_wait=1.0,
    )


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    """The capture transport (a maildir folder): for tests that send nothing by SMTP."""
    settings = _settings(tmp_path)
    engine = make_engine(settings.effective_database_url)
    upgrade(engine)
    yield Env(settings, engine)
    engine.dispose()


@pytest.fixture
def smtp_env(tmp_path: Path, smtp_server: SmtpServer) -> Iterator[Env]:
    """Settings whose smtp_url is the aiosmtpd server of this test."""
    settings = _settings(tmp_path, smtp_server.url)
    engine = make_engine(settings.effective_database_url)
    upgrade(engine)
    yield Env(settings, engine, smtp_server)
    engine.dispose()


# ------------------------------------------------------------------ data


def add_contact(
    engine: Engine,
    address: str,
    name: str = "",
    *grants: Purpose,
    country: str = "DE",
    city: str = "",
    tags: tuple[str, ...] = (),
    attributes: dict[str, str] | None = None,
    created: datetime = T0,
) -> int:
    """A contact with a sign-up event per granted purpose, all at fixed times."""
    with session_scope(engine) as s:
        c = Contact(
            email=address,
            email_key=addresses.key(address),
            name=name,
            country=country,
            city=city,
            attributes=attributes or {},
            created_at=created,
            updated_at=created,
        )
        s.add(c)
        s.flush()
        for tag in tags:
            s.add(ContactTag(contact_id=c.id or 0, tag=tag))
        for i, purpose in enumerate(grants):
            consent.record(
                s,
                c,
                purpose,
                granted=True,
                source="form:signup",
                policy_version=POLICY,
                when=created + timedelta(minutes=i),
            )
        return c.id or 0


def add_campaign(
    engine: Engine,
    name: str,
    kind: Kind = Kind.PROMOTIONAL,
    *,
    subject: str = "Hello {{ first_name }}",
    body: str = "Hello {{ name }},\n\nSomething **new** for you.",
    segment: dict[str, Any] | None = None,
    created: datetime = T0,
) -> int:
    with session_scope(engine) as s:
        c = campaign.create(
            s,
            kind=kind,
            name=name,
            subject=subject,
            body=body,
            sponsor="Kitchenworks GmbH" if kind is Kind.THIRD_PARTY_OFFER else "",
            survey_url="https://survey.example.com/s/1" if kind is Kind.SURVEY else "",
            segment=segment,
        )
        c.created_at = c.updated_at = created
        s.add(c)
        s.flush()
        return c.id or 0


def build_fixed_data(engine: Engine) -> None:
    """The snapshots' world: a dozen people, four campaigns, one of them sent."""
    P, R, T = Purpose.PROMOTIONAL, Purpose.RESEARCH, Purpose.THIRD_PARTY
    people = [
        ("anna.meyer@example.de", "Anna Meyer", (P, R), "DE", "Berlin", ("vip",)),
        ("ben.okafor@example.de", "Ben Okafor", (P,), "DE", "Hamburg", ()),
        ("chloe.silva@example.fr", "Chloé Silva", (P, R, T), "FR", "Lyon", ("events",)),
        ("dmitri.novak@example.nl", "Dmitri Novak", (R,), "NL", "Utrecht", ()),
        ("eva.berg@example.de", "Eva Berg", (P, T), "DE", "Berlin", ("vip", "events")),
        ("farid.haddad@example.gb", "Farid Haddad", (), "GB", "Leeds", ()),
        ("greta.lund@example.de", "Greta Lund", (P, R), "DE", "Berlin", ()),
        ("hiro.rossi@example.fr", "Hiro Rossi", (P,), "FR", "Lyon", ("vip",)),
        ("ines.kowalski@example.de", "Ines Kowalski", (P,), "DE", "Hamburg", ()),
        ("jonas.meyer@example.nl", "Jonas Meyer", (P, R), "NL", "Utrecht", ()),
    ]
    ids = {}
    for i, (address, name, grants, country, city, tags) in enumerate(people):
        ids[address] = add_contact(
            engine,
            address,
            name,
            *grants,
            country=country,
            city=city,
            tags=tags,
            attributes={"loyalty": ("gold", "silver", "bronze")[i % 3]},
            created=T0 + timedelta(days=i),
        )
    with session_scope(engine) as s:
        anna = s.get(Contact, ids["anna.meyer@example.de"])
        assert anna is not None
        consent.record(
            s,
            anna,
            R,
            granted=False,
            source="operator:kim",
            note="letter of 3 February",
            policy_version=POLICY,
            when=datetime(2026, 2, 3, 14, 5, tzinfo=UTC),
        )
        suppression.suppress(s, "ines.kowalski@example.de", SuppressionReason.HARD_BOUNCE)

    add_campaign(engine, "Spring sale", segment={"countries": ["DE"]}, created=T0)
    add_campaign(
        engine,
        "Customer survey",
        Kind.SURVEY,
        subject="Five minutes for us?",
        created=T0 + timedelta(days=1),
    )
    add_campaign(
        engine,
        "Partner offer: cooking class",
        Kind.THIRD_PARTY_OFFER,
        created=T0 + timedelta(days=2),
    )
    sent_id = add_campaign(engine, "Winter sale", created=T0 + timedelta(days=3))
    scheduled_id = add_campaign(engine, "Easter sale", created=T0 + timedelta(days=4))
    with session_scope(engine) as s:
        campaign.schedule(s, "Easter sale", datetime(2026, 4, 2, 7, 0, tzinfo=UTC))
        sent = campaign.get(s, "Winter sale")
        sent.status = "sent"
        sent.started_at = datetime(2026, 2, 10, 8, 0, tzinfo=UTC)
        sent.finished_at = datetime(2026, 2, 10, 8, 4, tzinfo=UTC)
        s.add(sent)
        rows = [("sent", "")] * 6
        rows += [("failed", "550 5.1.1 <x@example.org>: user unknown")] * 2
        rows += [("failed", "552 5.2.2 mailbox full")]
        rows += [("skipped", "consent withdrawn"), ("in_doubt", "connection lost after sending")]
        for status, error in rows:
            s.add(
                Delivery(
                    campaign_id=sent_id,
                    contact_id=None,
                    status=status,
                    error=error,
                    sent_at=datetime(2026, 2, 10, 8, 1, tzinfo=UTC) if status == "sent" else None,
                )
            )
        s.add(
            ConsentEvent(
                contact_id=ids["ben.okafor@example.de"],
                purpose="promotional",
                granted=False,
                occurred_at=datetime(2026, 2, 11, 10, 0, tzinfo=UTC),
                source="one-click",
                policy_version=POLICY,
                campaign_id=sent_id,
            )
        )
        # What came back later (campaigns inbox process): two bounces, a block (a
        # blocklisting: nobody suppressed) and a complaint.
        returned = [
            ("hard_bounce", "user_unknown", "address", ""),
            ("soft_bounce", "mailbox_full", "mailbox", ""),
            ("block", "blocked", "sender", "mail.example.net"),
            ("complaint", "complaint", "complaint", ""),
        ]
        for n, (kind, reason, group, domain) in enumerate(returned):
            s.add(
                ReturnEvent(
                    message_hash=f"{n:064x}",
                    kind=kind,
                    address_hash=f"{n + 10:064x}",
                    occurred_at=datetime(2026, 2, 12, 9, n, tzinfo=UTC),
                    campaign_id=sent_id,
                    reason=reason,
                    reason_group=group,
                    domain=domain,
                )
            )
    assert scheduled_id


# ------------------------------------------------------------------ driving the app


async def settle(pilot: Pilot[Any], rounds: int = 3) -> None:
    """Let workers finish and their results reach the screen."""
    for _ in range(rounds):
        # DirectoryTree's loader lives as long as the tree: it never completes.
        ours = [w for w in pilot.app.workers if w.name != "_loader"]
        for worker in ours:
            # A superseded (exclusive) worker ends cancelled: that is not a failure here.
            with contextlib.suppress(WorkerCancelled):
                await worker.wait()
        await pilot.pause()


async def wait_until(
    pilot: Pilot[Any], condition: Callable[[], bool], timeout: float = 10.0, what: str = ""
) -> None:
    """Poll (letting the app run) until `condition()` holds."""
    waited = 0.0
    while not condition():
        if waited >= timeout:
            raise AssertionError(f"timed out waiting for {what or condition}")
        await pilot.pause(0.05)
        waited += 0.05


async def type_into(pilot: Pilot[Any], selector: str, text: str) -> None:
    """Focus a field and type into it, key by key, as a person would."""
    pilot.app.screen.query_one(selector).focus()
    await pilot.pause()
    await pilot.press(*[_key(ch) for ch in text])


def _key(ch: str) -> str:
    # Textual maps single characters to key names itself; only a line break needs a name.
    return "enter" if ch == "\n" else ch


def notifications(pilot: Pilot[Any]) -> list[str]:
    return [f"{n.title}: {n.message}" for n in pilot.app._notifications]


Run = Callable[[Pilot[Any]], Awaitable[None]]


def snapshot_env(tmp_path: Path) -> Env:
    """A fixed world for snapshots: fixed data, UTC, a frozen clock, no refresh timer."""
    settings = replace(_settings(tmp_path), smtp_url=f"maildir://{tmp_path / 'outbox'}")
    engine = make_engine(settings.effective_database_url)
    upgrade(engine)
    build_fixed_data(engine)
    return Env(settings, engine)
