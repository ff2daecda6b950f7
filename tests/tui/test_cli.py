"""The `campaigns` command as cron, scripts and operators use it (DESIGN.md §3)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlmodel import select

from campaigns import consent
from campaigns.models import Campaign, Contact
from campaigns.purposes import Purpose
from tests.conftest import Db
from tui.cli import main


@pytest.fixture
def cli(db: Db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    """Run `campaigns ARGS` in-process against the test database; returns (code, out, err)."""
    monkeypatch.chdir(tmp_path)
    for key in [k for k in os.environ if k.startswith("CAMPAIGNS_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("CAMPAIGNS_DATABASE_URL", db.url)
    monkeypatch.setenv("CAMPAIGNS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CAMPAIGNS_POLICY_VERSION", "2026-01")

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def _add_contact(db: Db, email: str, *grants: Purpose) -> int:
    with db.session() as s:
        c = Contact(email=email, email_key=email.lower(), name="Anna Meyer", country="DE")
        s.add(c)
        s.flush()
        for p in grants:
            consent.record(s, c, p, granted=True, source="form:signup", policy_version="1")
        s.commit()
        return c.id or 0


def _one_line_error(err: str) -> None:
    assert err.count("\n") == 1 and "Traceback" not in err and err.startswith("campaigns")


def test_operator_consent_change_is_recorded_with_its_note(cli, db: Db) -> None:
    _add_contact(db, "Anna@example.com", Purpose.RESEARCH)
    code, out, _ = cli(
        "contacts",
        "consent",
        "ANNA@EXAMPLE.COM",
        "--purpose",
        "research",
        "--withdraw",
        "--note",
        "letter of 3 May",
        "--operator",
        "kim",
    )
    assert code == 0 and "withdrawn" in out
    code, out, _ = cli("contacts", "show", "anna@example.com", "--json")
    data = json.loads(out)
    assert data["consent"]["research"]["state"] == "withdrawn"
    last = data["consent_history"][-1]
    assert last["source"] == "operator:kim" and last["note"] == "letter of 3 May"
    assert last["policy_version"] == "2026-01" and last["granted"] is False
    # Repeating the same change adds nothing to the ledger.
    code, out, _ = cli(
        "contacts",
        "consent",
        "anna@example.com",
        "--purpose",
        "research",
        "--withdraw",
        "--note",
        "second letter",
    )
    assert code == 0 and "no change" in out
    _, out, _ = cli("contacts", "show", "anna@example.com", "--json")
    assert len(json.loads(out)["consent_history"]) == 2


def test_show_in_words_lists_the_history(cli, db: Db) -> None:
    _add_contact(db, "anna@example.com", Purpose.PROMOTIONAL)
    code, out, _ = cli("contacts", "show", "anna@example.com")
    assert code == 0
    assert "consent promotional: granted" in out and "via form:signup" in out


def test_unknown_contact_is_one_line_and_exit_1(cli) -> None:
    code, out, err = cli("contacts", "show", "nobody@example.com")
    assert code == 1 and out == ""
    _one_line_error(err)
    assert "nobody@example.com" in err


def test_consent_needs_a_note_and_a_known_purpose(cli, db: Db) -> None:
    _add_contact(db, "anna@example.com")
    code, _, err = cli(
        "contacts",
        "consent",
        "anna@example.com",
        "--purpose",
        "everything",
        "--grant",
        "--note",
        "x",
    )
    assert code == 2
    _one_line_error(err)
    code, _, err = cli(
        "contacts",
        "consent",
        "anna@example.com",
        "--purpose",
        "research",
        "--grant",
        "--note",
        "  ",
    )
    assert code == 2
    _one_line_error(err)


def test_forget_leaves_nothing_to_show(cli, db: Db) -> None:
    _add_contact(db, "anna@example.com", Purpose.PROMOTIONAL)
    code, out, _ = cli("contacts", "forget", "Anna@Example.com")
    assert code == 0 and "hash" in out
    code, _, _ = cli("contacts", "show", "anna@example.com")
    assert code == 1
    with db.session() as s:
        assert s.exec(select(Contact)).all() == []


def _body(tmp_path: Path) -> str:
    path = tmp_path / "body.md"
    path.write_text("Hello {{ contact.name }}", encoding="utf-8")
    return str(path)


def test_campaign_create_checks_each_kind(cli, tmp_path: Path) -> None:
    body = _body(tmp_path)
    base = ["campaign", "create", "--subject", "Hi", "--body-file", body]
    code, _, err = cli(*base, "--kind", "third_party_offer", "--name", "p1")
    assert code == 2 and "sponsor" in err
    _one_line_error(err)
    code, _, err = cli(*base, "--kind", "survey", "--name", "s1")
    assert code == 2 and "survey URL" in err
    code, _, err = cli(*base, "--kind", "survey", "--name", "s1", "--survey-url", "javascript:x")
    assert code == 2 and "survey URL" in err
    code, _, err = cli(*base, "--kind", "newsletter", "--name", "n1")
    assert code == 2 and "unknown kind" in err
    code, out, _ = cli(
        *base,
        "--kind",
        "survey",
        "--name",
        "s1",
        "--survey-url",
        "https://s.example.com/1",
        "--json",
    )
    assert code == 0 and json.loads(out)["purpose"] == "research"
    code, _, err = cli(
        *base,
        "--kind",
        "survey",
        "--name",
        "s1",
        "--survey-url",
        "https://s.example.com/1",
    )
    assert code == 2 and "exists already" in err
    code, _, err = cli(
        "campaign",
        "create",
        "--kind",
        "promotional",
        "--name",
        "x",
        "--subject",
        "Hi",
        "--body-file",
        str(tmp_path / "missing.md"),
    )
    assert code == 2 and "not found" in err


def test_campaign_list_show_schedule_cancel(cli, db: Db, tmp_path: Path) -> None:
    body = _body(tmp_path)
    cli(
        "campaign",
        "create",
        "--kind",
        "promotional",
        "--name",
        "Sale",
        "--subject",
        "Sale!",
        "--body-file",
        body,
    )
    code, out, _ = cli("campaign", "schedule", "Sale", "--at", "2030-06-01T09:00+02:00")
    assert code == 0
    with db.session() as s:
        c = s.exec(select(Campaign)).one()
        assert c.status == "scheduled"
        assert c.scheduled_at == datetime(2030, 6, 1, 7, 0, tzinfo=UTC)
    code, out, _ = cli("campaign", "list", "--json")
    [row] = json.loads(out)
    assert row["name"] == "Sale" and row["status"] == "scheduled"
    assert row["counts"]["total"] == 0
    code, out, _ = cli("campaign", "cancel", "Sale")
    assert code == 0
    code, out, _ = cli("campaign", "show", "Sale", "--json")
    assert json.loads(out)["status"] == "cancelled"
    code, _, err = cli("campaign", "cancel", "Sale")
    assert code == 1 and "cannot be cancelled" in err
    code, _, err = cli("campaign", "schedule", "Sale", "--at", "next tuesday")
    assert code == 2 and "ISO 8601" in err


def test_pause_and_resume(cli, db: Db, tmp_path: Path) -> None:
    body = _body(tmp_path)
    args = ["--kind", "promotional", "--name", "Sale", "--subject", "Sale!", "--body-file", body]
    cli("campaign", "create", *args)
    code, _, err = cli("campaign", "pause", "Sale")
    assert code == 1 and "only a sending one can be paused" in err
    _one_line_error(err)
    with db.session() as s:
        c = s.exec(select(Campaign)).one()
        c.status = "sending"  # as a running send leaves it
        s.add(c)
        s.commit()
    code, out, _ = cli("campaign", "pause", "Sale")
    assert code == 0 and "paused 'Sale'" in out
    code, out, _ = cli("campaign", "show", "Sale", "--json")
    assert json.loads(out)["status"] == "paused"
    code, out, _ = cli("campaign", "resume", "Sale", "--json")
    assert code == 0 and json.loads(out)["status"] == "sending"
    code, _, err = cli("campaign", "resume", "Sale")
    assert code == 1 and "only a paused one can be resumed" in err


def test_schedule_without_offset_is_local_time(cli, db: Db, tmp_path: Path) -> None:
    cli(
        "campaign",
        "create",
        "--kind",
        "promotional",
        "--name",
        "Sale",
        "--subject",
        "Sale!",
        "--body-file",
        _body(tmp_path),
    )
    cli("campaign", "schedule", "Sale", "--at", "2030-06-01T09:00")
    local = datetime(2030, 6, 1, 9, 0).astimezone()
    with db.session() as s:
        assert s.exec(select(Campaign)).one().scheduled_at == local


def test_bad_usage_is_one_line_and_exit_2(cli, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["contacts", "frobnicate"])
    assert exc.value.code == 2
    _one_line_error(capsys.readouterr().err)


def test_bad_configuration_is_one_line(cli, tmp_path: Path) -> None:
    (tmp_path / "campaigns.toml").write_text("smtp_connections = 'many'\n")
    code, _, err = cli("campaign", "list")
    assert code == 2 and "smtp_connections" in err
    _one_line_error(err)
    (tmp_path / "campaigns.toml").write_text("[[[")
    code, _, err = cli("campaign", "list")
    assert code == 2
    _one_line_error(err)


def test_console_script_creates_and_upgrades(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("campaigns")
    env = {**os.environ, "CAMPAIGNS_DATA_DIR": str(tmp_path)}
    env.pop("CAMPAIGNS_DATABASE_URL", None)
    first = subprocess.run(
        [exe, "db", "upgrade"], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert first.returncode == 0 and "created" in first.stdout
    assert (tmp_path / "campaigns.db").exists()
    second = subprocess.run(
        [exe, "db", "upgrade", "--json"], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert json.loads(second.stdout)["before"] == json.loads(second.stdout)["after"]
