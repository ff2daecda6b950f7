"""`campaigns serve` as a real process on a free loopback port, over real HTTP (httpx2).

Also the helpers the browser test shares: `running_server` and `seed_person`.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest
from sqlmodel import select

from campaigns import consent
from campaigns.models import Campaign, ConsentEvent, Contact, Delivery
from campaigns.purposes import ConsentState, Kind, Purpose, SuppressionReason
from mailer.tokens import TokenKind, signer_from_settings
from tests.conftest import Db

CAMPAIGNS = Path(sys.executable).with_name("campaigns")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    base_url: str
    port: int
    process: subprocess.Popen[str]
    output: str = ""


def server_env(db: Db) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAMPAIGNS_")}
    env.update(
        CAMPAIGNS_DATABASE_URL=db.url,
        CAMPAIGNS_SECRET_KEY=db.settings.secret_key,
        CAMPAIGNS_DATA_DIR=str(db.settings.data_dir),
        CAMPAIGNS_POLICY_VERSION=db.settings.policy_version,
        CAMPAIGNS_BRAND_NAME="Test Shop",
        CAMPAIGNS_POSTAL_ADDRESS=db.settings.postal_address,
    )
    return env


@contextmanager
def running_server(db: Db, cwd: Path) -> Iterator[Server]:
    """`campaigns serve` on a free port, healthy; stopped with SIGTERM afterwards."""
    port = free_port()
    process = subprocess.Popen(
        [str(CAMPAIGNS), "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=server_env(db),
        cwd=cwd,  # no campaigns.toml of the checkout may leak in
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    server = Server(f"http://127.0.0.1:{port}", port, process)
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                out = process.stdout.read() if process.stdout else ""
                raise AssertionError(f"the server exited early ({process.returncode}):\n{out}")
            try:
                if httpx2.get(f"{server.base_url}/health", timeout=1).status_code == 200:
                    break
            except httpx2.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("the server did not become healthy in 30 s")
            time.sleep(0.1)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            server.output, _ = process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            server.output, _ = process.communicate()


def seed_person(
    db: Db, email: str, grants: set[Purpose], kind: Kind = Kind.PROMOTIONAL
) -> tuple[int, int, str]:
    """A contact with these grants, a campaign of this kind, and the contact's token."""
    with db.session() as s:
        contact = Contact(email=email, email_key=email.lower())
        campaign = Campaign(name=f"{kind.value} for {email}", kind=kind.value, subject="Hi")
        s.add(contact)
        s.add(campaign)
        s.flush()
        for purpose in grants:
            consent.record(
                s, contact, purpose, granted=True, source="form:signup", policy_version="1"
            )
        # The message that carried the link (links are honoured only for real deliveries).
        s.add(Delivery(campaign_id=campaign.id, contact_id=contact.id, status="sent"))
        s.commit()
        assert contact.id is not None and campaign.id is not None
        cid, kid = contact.id, campaign.id
    token = signer_from_settings(db.settings).sign(TokenKind.UNSUBSCRIBE, cid, kid)
    return cid, kid, token


def ledger(db: Db, contact_id: int) -> list[tuple[str, bool, str, int | None]]:
    with db.session() as s:
        rows = s.exec(
            select(ConsentEvent)
            .where(ConsentEvent.contact_id == contact_id)
            .order_by(ConsentEvent.id)  # type: ignore[arg-type]
        )
        return [(e.purpose, e.granted, e.source, e.campaign_id) for e in rows]


def state(db: Db, contact_id: int) -> tuple[dict[Purpose, str], str | None]:
    with db.session() as s:
        c = s.get(Contact, contact_id)
        assert c is not None
        return {p: consent.state_of(c, p) for p in Purpose}, c.suppressed


def assert_no_client_addresses(output: str, port: int) -> None:
    """Only the listening address may appear; a client's would carry another port."""
    for found in re.finditer(r"127\.0\.0\.1(?::(\d+))?", output):
        assert found.group(1) == str(port), f"a client address was logged: {found.group(0)}"
    assert not re.search(r'"(GET|POST|HEAD|PUT) /', output), "an access log line was written"


@pytest.mark.slow
def test_serve_over_real_http(db: Db, tmp_path: Path) -> None:
    anna, kid, token = seed_person(db, "anna@example.com", {Purpose.PROMOTIONAL, Purpose.RESEARCH})
    bert, bert_kid, bert_token = seed_person(
        db, "bert@example.com", {Purpose.PROMOTIONAL, Purpose.RESEARCH}, Kind.SURVEY
    )
    cleo, _, cleo_token = seed_person(db, "cleo@example.com", {Purpose.PROMOTIONAL})
    with running_server(db, tmp_path) as server, httpx2.Client(base_url=server.base_url) as http:
        # GET shows the page and changes nothing.
        before = ledger(db, anna)
        r = http.get(f"/u/{token}")
        assert r.status_code == 200 and "Test Shop" in r.text and "Promotional offers" in r.text
        assert "set-cookie" not in r.headers
        assert "default-src 'none'" in r.headers["content-security-policy"]
        assert ledger(db, anna) == before

        # One-click, exactly as a mail client sends it (RFC 8058).
        r = http.post(
            f"/u/{token}",
            content=b"List-Unsubscribe=One-Click",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert r.status_code == 200 and not r.is_redirect
        assert ledger(db, anna)[-1] == ("promotional", False, "one-click", kid)
        assert state(db, anna)[0][Purpose.PROMOTIONAL] == ConsentState.WITHDRAWN

        # And as multipart/form-data.
        r = http.post(f"/u/{bert_token}", files={"List-Unsubscribe": (None, "One-Click")})
        assert r.status_code == 200
        assert ledger(db, bert)[-1] == ("research", False, "one-click", bert_kid)

        # The page's form: keep research only; then stop everything for cleo.
        r = http.post(f"/u/{token}", data={"action": "keep", "keep": "research"})
        assert r.status_code == 200 and "Your choices are saved" in r.text
        r = http.post(f"/u/{cleo_token}", data={"action": "stop_all"})
        assert r.status_code == 200
        assert state(db, cleo) == (
            {p: ConsentState.WITHDRAWN for p in Purpose},
            SuppressionReason.UNSUBSCRIBED,
        )

        # Bad input over the wire.
        assert http.get(f"/u/{token[:-2]}").status_code == 400
        big = b"List-Unsubscribe=One-Click&x=" + b"x" * 20000
        r = http.post(
            f"/u/{token}",
            content=big,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert r.status_code == 413
        assert http.delete(f"/u/{token}").status_code == 405
        assert http.get("/nowhere").status_code == 404
    assert server.process.returncode == 0, server.output
    assert "Traceback" not in server.output
    assert_no_client_addresses(server.output, server.port)


@pytest.mark.slow
def test_serve_on_a_busy_port_is_one_clear_error(db: Db, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [str(CAMPAIGNS), "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=server_env(db),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert "cannot listen" in done.stderr and "Traceback" not in done.stderr
