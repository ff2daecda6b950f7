"""The installed `campaigns` console script, run as a user runs it (DESIGN.md §3).

Every test runs the real script in a subprocess, with a clean environment (no
CAMPAIGNS_* variable but CAMPAIGNS_DATA_DIR, pointing at the test's folder, and what a
test adds), in that folder, against a fresh SQLite file. What is checked is what a user
sees: the words on stdout, the `--json` shapes, the exit status (0 success, 1 failure,
2 bad usage or unusable input) and one line on stderr for an error, never a traceback.

The expected numbers and people are written out by hand from PEOPLE_CSV below, never
computed with the product's own functions.

A subprocess costs about half a second, so tests group the commands of one story, and
one imported database (`world`) is made once per module and copied for each test.
Read-only commands that do not depend on each other run side by side (`Cli.many`).
"""

from __future__ import annotations

import csv
import email.parser
import email.policy
import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.mailer.smtp_server import FaultyHandler, run_smtp_server

EXE = Path(sys.executable).with_name("campaigns")

# Line 1 is the header; the comments give each row's line number in the file.
PEOPLE_CSV = """\
email,name,country,consent_promotional,consent_research,consent_third_party,tags,plan
anna@example.com,Anna Adler,DE,yes,yes,no,vip;events,gold
Ben@Example.COM,Ben Brandt,DE,yes,no,,,silver
not-an-address,Nobody,DE,yes,,,,
carla@example.com,Carla Conti,FR,true,1,yes,events,gold
dirk@example.com,Dirk Dahl,DE,no,yes,0,vip,
eva@example.com,Eva Eng,DE,1,,yes,VIP,bronze
farid@example.com,Farid Fahmi,GB,yes,yes,no,vip,
greta@example.com,Greta Gold,DE,yes,yes,no,vip,gold
hans@example.com,Hans Holm,DE,yes,false,no,vip;events,
ines@example.com,Ines Iver,DE,maybe,,,,
jan@example.com,=SUM(A1),DE,yes,,,,
"""
# Rows rejected, by line: an invalid address, a consent that is not yes/no, a formula.
REJECTED_LINES = (4, 11, 12)

# The eight people stored, as `contacts export` must give them back: the address as
# given with the domain lower-cased, consent as yes/no (blank = not granted for a new
# contact), tags sorted and `;`-joined, the custom column `plan` as an attribute.
EXPORT_HEADER = [
    "email",
    "name",
    "address",
    "postcode",
    "town",
    "city",
    "country",
    "consent_promotional",
    "consent_research",
    "consent_third_party",
    "tags",
    "plan",
]
EXPORTED = {
    # email: (name, country, promotional, research, third_party, tags, plan)
    "anna@example.com": ("Anna Adler", "DE", "yes", "yes", "no", "events;vip", "gold"),
    "Ben@example.com": ("Ben Brandt", "DE", "yes", "no", "no", "", "silver"),
    "carla@example.com": ("Carla Conti", "FR", "yes", "yes", "yes", "events", "gold"),
    "dirk@example.com": ("Dirk Dahl", "DE", "no", "yes", "no", "vip", ""),
    "eva@example.com": ("Eva Eng", "DE", "yes", "no", "yes", "VIP", "bronze"),
    "farid@example.com": ("Farid Fahmi", "GB", "yes", "yes", "no", "vip", ""),
    "greta@example.com": ("Greta Gold", "DE", "yes", "yes", "no", "vip", "gold"),
    "hans@example.com": ("Hans Holm", "DE", "yes", "no", "no", "events;vip", ""),
}

BODY = "Hello {{ name }},\n\nOur **spring sale** starts today.\n"


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def one_line_error(r: Result, code: int) -> str:
    """Exit `code`, nothing on stdout, one line on stderr, no traceback; the line."""
    assert r.code == code, r
    assert r.out == "", r
    assert r.err.startswith("campaigns") and r.err.endswith("\n"), r
    assert r.err.count("\n") == 1 and "Traceback" not in r.err, r
    return r.err


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """os.environ without any CAMPAIGNS_* (PYTHONPATH etc. pass through), plus the data
    folder and what the test adds."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAMPAIGNS_")}
    env["CAMPAIGNS_DATA_DIR"] = str(home)
    env.update(extra)
    return env


class Cli:
    """`campaigns ARGS` in the folder `home` (also the data folder)."""

    def __init__(self, home: Path, **extra_env: str) -> None:
        self.home = home
        self.env = clean_env(home, **extra_env)

    def _start(self, args: tuple[str, ...]) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [str(EXE), *args],
            cwd=self.home,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def __call__(self, *args: str) -> Result:
        proc = self._start(args)
        out, err = proc.communicate(timeout=120)
        return Result(proc.returncode, out, err)

    def many(self, *commands: tuple[str, ...]) -> list[Result]:
        """Run commands that only read side by side; results in the same order."""
        procs = [self._start(args) for args in commands]
        results = []
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            results.append(Result(proc.returncode, out, err))
        return results

    def write(self, name: str, text: str) -> str:
        (self.home / name).write_text(text, encoding="utf-8")
        return name


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Result]:
    """A data folder into which PEOPLE_CSV was imported once, and what the import said."""
    home = tmp_path_factory.mktemp("world")
    cli = Cli(home)
    cli.write("people.csv", PEOPLE_CSV)
    cli.write("body.md", BODY)
    return home, cli("contacts", "import", "people.csv")


@pytest.fixture
def cli(world: tuple[Path, Result], tmp_path: Path) -> Cli:
    """A copy of the world of its own, for one test."""
    home = tmp_path / "home"
    shutil.copytree(world[0], home)
    return Cli(home)


def read_export(path: Path) -> tuple[list[str], dict[str, tuple[str, ...]]]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = list(reader.fieldnames or [])
        rows = [dict(r) for r in reader]
    by_email = {
        r["email"]: (
            r["name"],
            r["country"],
            r["consent_promotional"],
            r["consent_research"],
            r["consent_third_party"],
            r["tags"],
            r["plan"],
        )
        for r in rows
    }
    assert len(by_email) == len(rows), "an address exported twice"
    return header, by_email


# ------------------------------------------------------------------ contacts


def test_import_with_bad_rows_exits_1_keeps_the_good_ones_and_export_gives_them_back(
    world: tuple[Path, Result], cli: Cli
) -> None:
    imported = world[1]
    assert imported.code == 1, imported
    lines = imported.out.splitlines()
    assert lines[0] == "imported 8, updated 0, unchanged 0, rejected 3"
    rejected = [line for line in lines if "rejected:" in line]
    assert [line.split(":")[0] for line in rejected] == [f"line {n}" for n in REJECTED_LINES]
    assert "not-an-address" in rejected[0] and "email" in rejected[0]
    assert "consent_promotional" in rejected[1] and "maybe" in rejected[1]
    assert "name" in rejected[2] and "formula" in rejected[2]
    assert "Traceback" not in imported.err

    # Importing the same file again: nothing new, the same three rows refused, exit 1.
    again = cli("contacts", "import", "people.csv", "--json")
    assert again.code == 1
    data = again.json()
    assert (data["imported"], data["updated"], data["unchanged"]) == (0, 0, 8)
    assert data["rejected"] == 3
    assert [r["line"] for r in data["rejected_rows"]] == list(REJECTED_LINES)
    assert data["dry_run"] is False

    exported = cli("contacts", "export", "out.csv")
    assert exported.code == 0 and exported.out.strip() == "exported 8 contacts"
    header, rows = read_export(cli.home / "out.csv")
    assert header == EXPORT_HEADER
    assert rows == EXPORTED


def test_clean_import_dry_run_update_and_card_numbers(tmp_path: Path) -> None:
    cli = Cli(tmp_path)
    cli.write(
        "two.csv",
        "email,name,country,consent_promotional,tags\n"
        " kim@Example.ORG ,Kim Kern,DE,yes,vip\n"
        "lea@example.org,Lea Lang,FR,no,\n",
    )
    # A column of card numbers, whatever its name: refused whole, before anything is
    # written, naming the column, even though its other rows are fine.
    cli.write(
        "cards.csv",
        "email,name,consent_promotional,reference\n"
        "max@example.org,Max Mohr,yes,x-1\n"
        "nina@example.org,Nina Nagel,yes,4111 1111 1111 1111\n",
    )
    dry = cli("contacts", "import", "two.csv", "--dry-run")
    assert dry.code == 0, dry
    assert dry.out == ("dry run, nothing written: imported 2, updated 0, unchanged 0, rejected 0\n")
    count, show, cards, missing = cli.many(
        ("contacts", "count", "--json"),
        ("contacts", "show", "kim@example.org"),
        ("contacts", "import", "cards.csv"),
        ("contacts", "import", "nowhere.csv"),
    )
    assert count.json() == {"count": 0}
    one_line_error(show, 1)
    err = one_line_error(cards, 2)
    assert "'reference'" in err and "card" in err
    assert "nowhere.csv" in one_line_error(missing, 2)

    clean = cli("contacts", "import", "two.csv")
    assert (clean.code, clean.out) == (0, "imported 2, updated 0, unchanged 0, rejected 0\n")

    # Blank cells leave an existing contact alone; a non-blank one changes it.
    cli.write(
        "update.csv",
        "email,name,country,consent_promotional,tags\nKIM@example.org,,,,\nlea@example.org,,,yes,\n",
    )
    update = cli("contacts", "import", "update.csv", "--json")
    assert update.code == 0
    data = update.json()
    assert (data["imported"], data["updated"], data["unchanged"], data["rejected"]) == (0, 1, 1, 0)
    assert data["rejected_rows"] == []

    count, max_, nina, kim = cli.many(
        ("contacts", "count", "--purpose", "promotional"),
        ("contacts", "show", "max@example.org"),
        ("contacts", "show", "nina@example.org"),
        ("contacts", "show", "kim@example.org", "--json"),
    )
    assert (count.code, count.out) == (0, "2\n")  # Kim, and Lea since the update
    one_line_error(max_, 1)
    one_line_error(nina, 1)
    kim_data = kim.json()
    assert kim_data["email"] == "kim@example.org"
    assert (kim_data["name"], kim_data["country"], kim_data["tags"]) == ("Kim Kern", "DE", ["vip"])
    assert kim_data["consent"]["promotional"]["state"] == "granted"


def test_consent_forget_and_counts_by_purpose_country_tag(cli: Cli) -> None:
    withdraw = cli(
        "contacts",
        "consent",
        "GRETA@example.com",
        "--purpose",
        "promotional",
        "--withdraw",
        "--note",
        "letter of 3 May",
        "--operator",
        "kim",
    )
    assert (withdraw.code, withdraw.out) == (0, "promotional consent withdrawn\n")
    grant = cli(
        "contacts",
        "consent",
        "dirk@example.com",
        "--purpose",
        "promotional",
        "--grant",
        "--note",
        "phone call of 4 May",
        "--json",
    )
    assert grant.code == 0
    assert grant.json() == {"changed": True, "purpose": "promotional", "granted": True}
    forget = cli("contacts", "forget", "Hans@Example.com")
    assert (forget.code, forget.out) == (
        0,
        "erased; only a keyed hash stays on the suppression list\n",
    )
    # The erased address cannot be brought back by an import.
    cli.write("back.csv", "email,consent_promotional\nhans@example.com,yes\n")
    back = cli("contacts", "import", "back.csv")
    assert back.code == 1
    assert back.out.splitlines()[0] == "imported 0, updated 0, unchanged 0, rejected 1"
    assert back.out.splitlines()[1].startswith("line 2: rejected: ")

    # Now: anna P R (DE; vip, events), Ben P (DE), carla P R T (FR; events), dirk P R
    # (DE; vip), eva P T (DE; VIP), farid P R (GB; vip), greta R (DE; vip); hans erased.
    expected = {
        (): 7,
        ("--purpose", "promotional"): 6,
        ("--purpose", "promotional", "--country", "DE"): 4,  # anna Ben dirk eva
        ("--purpose", "promotional", "--country", "DE", "--tag", "vip"): 3,  # anna dirk eva
        ("--purpose", "research", "--country", "DE"): 3,  # anna dirk greta
        ("--purpose", "third_party"): 2,  # carla eva
        ("--tag", "vip", "--tag", "events"): 1,  # anna (hans is gone)
        ("--purpose", "promotional", "--tag", "EVENTS"): 2,  # anna carla
    }
    results = cli.many(
        *[("contacts", "count", *k, "--json") for k in expected],
        ("contacts", "show", "greta@example.com", "--json"),
        ("contacts", "show", "greta@example.com"),
        ("contacts", "show", "hans@example.com"),
        ("contacts", "count", "--purpose", "everything"),
    )
    counts, rest = results[: len(expected)], results[len(expected) :]
    got = {}
    for key, r in zip(expected, counts, strict=True):
        assert r.code == 0, (key, r)
        data = r.json()
        assert list(data) == ["count"] and type(data["count"]) is int
        got[key] = data["count"]
    assert got == expected
    greta_json, greta_text, hans, bad_purpose = rest

    data = greta_json.json()
    assert data["email"] == "greta@example.com" and data["name"] == "Greta Gold"
    assert data["consent"]["promotional"]["state"] == "withdrawn"
    assert data["consent"]["research"]["state"] == "granted"
    last = data["consent_history"][-1]
    assert (last["purpose"], last["granted"], last["note"]) == (
        "promotional",
        False,
        "letter of 3 May",
    )
    assert last["source"] == "operator:kim"
    assert [e["source"] for e in data["consent_history"][:-1]] == ["import:people.csv"] * 2
    assert "consent promotional: withdrawn" in greta_text.out.splitlines()
    assert "(letter of 3 May)" in greta_text.out
    assert "hans@example.com" in one_line_error(hans, 1)
    assert "everything" in one_line_error(bad_purpose, 2)


# ------------------------------------------------------------------ campaigns


def test_campaign_create_list_show_preview_schedule_cancel(cli: Cli) -> None:
    cli.env["CAMPAIGNS_PUBLIC_URL"] = "https://news.example.test"
    cli.env["CAMPAIGNS_POSTAL_ADDRESS"] = "Shop Ltd, 1 High Street, Testville"
    base = ("campaign", "create", "--body-file", "body.md")
    promo = cli(*base, "--kind", "promotional", "--name", "Spring sale", "--subject", "Sale!")
    assert (promo.code, promo.out) == (0, "created draft 'Spring sale' (promotional)\n")
    survey = cli(
        *base,
        "--kind",
        "survey",
        "--name",
        "Q3 survey",
        "--subject",
        "Tell us",
        "--survey-url",
        "https://survey.example.com/q3",
        "--segment",
        "country=DE",
        "--json",
    )
    assert survey.code == 0
    s = survey.json()
    assert (s["name"], s["kind"], s["purpose"], s["status"]) == (
        "Q3 survey",
        "survey",
        "research",
        "draft",
    )
    assert s["survey_url"] == "https://survey.example.com/q3"
    assert s["segment"] == {"countries": ["DE"]}
    partner = cli(
        *base,
        "--kind",
        "third_party_offer",
        "--name",
        "Cooking class",
        "--subject",
        "Kochkurs für Sie",
        "--sponsor",
        "Kitchenworks GmbH",
    )
    assert (partner.code, partner.out) == (0, "created draft 'Cooking class' (third_party_offer)\n")

    scheduled = cli(
        "campaign", "schedule", "Spring sale", "--at", "2099-06-01T09:00+02:00", "--json"
    )
    assert scheduled.code == 0
    assert scheduled.json()["status"] == "scheduled"
    at = datetime.fromisoformat(scheduled.json()["scheduled_at"])
    assert at == datetime(2099, 6, 1, 7, 0, tzinfo=UTC)
    cancel = cli("campaign", "cancel", "Spring sale")
    assert (cancel.code, cancel.out) == (0, "cancelled 'Spring sale'\n")
    preview = cli(
        "campaign", "preview", "Cooking class", "--to", "carla@example.com", "--out", "m.eml"
    )
    assert preview.code == 0, preview
    assert preview.out.rstrip().endswith("(written to m.eml)")

    results = cli.many(
        ("campaign", "list"),
        ("campaign", "list", "--json"),
        ("campaign", "show", "Cooking class"),
        ("campaign", "show", "Spring sale", "--json"),
        ("campaign", "cancel", "Spring sale"),
        ("campaign", "pause", "Q3 survey"),
        ("campaign", "resume", "Q3 survey"),
        ("campaign", "show", "No such campaign"),
        ("campaign", "schedule", "Q3 survey", "--at", "next tuesday"),
        (*base, "--kind", "third_party_offer", "--name", "X", "--subject", "X"),
        (*base, "--kind", "survey", "--name", "Y", "--subject", "Y"),
        (*base, "--kind", "newsletter", "--name", "Z", "--subject", "Z"),
    )
    listed, listed_json, show, show_json, *errors = results
    cancel_again, pause_draft, resume_draft, unknown, bad_time, no_sponsor, no_url, bad_kind = (
        errors
    )
    assert listed.code == 0
    lines = listed.out.splitlines()
    assert len(lines) == 3
    assert lines[0].split()[:4] == ["Spring", "sale", "promotional", "cancelled"]
    assert lines[1].split()[:4] == ["Q3", "survey", "survey", "draft"]
    assert lines[2].split()[:4] == ["Cooking", "class", "third_party_offer", "draft"]
    rows = listed_json.json()
    assert [(r["name"], r["kind"], r["status"]) for r in rows] == [
        ("Spring sale", "promotional", "cancelled"),
        ("Q3 survey", "survey", "draft"),
        ("Cooking class", "third_party_offer", "draft"),
    ]
    assert all(r["counts"]["total"] == 0 and r["counts"]["sent"] == 0 for r in rows)
    assert "sponsor: Kitchenworks GmbH" in show.out.splitlines()
    assert "purpose: third_party" in show.out.splitlines()
    assert "status: draft" in show.out.splitlines()
    sale = show_json.json()
    assert (sale["status"], sale["purpose"]) == ("cancelled", "promotional")
    assert isinstance(sale["counts"]["total"], int)
    assert "cancel" in one_line_error(cancel_again, 1)
    assert "paused" in one_line_error(pause_draft, 1)
    assert "paused" in one_line_error(resume_draft, 1)
    assert "No such campaign" in one_line_error(unknown, 1)
    assert "ISO 8601" in one_line_error(bad_time, 2)
    assert "sponsor" in one_line_error(no_sponsor, 2)
    assert "survey" in one_line_error(no_url, 2)
    assert "newsletter" in one_line_error(bad_kind, 2)

    # The preview is one real message, as Carla would get it.
    raw = (cli.home / "m.eml").read_bytes()
    msg = email.parser.BytesParser(policy=email.policy.default).parsebytes(raw)
    assert str(msg["Subject"]) == "Kochkurs für Sie"
    assert "carla@example.com" in str(msg["To"])
    assert str(msg["List-Unsubscribe"]).startswith("<https://news.example.test/u/")
    assert str(msg["List-Unsubscribe-Post"]) == "List-Unsubscribe=One-Click"
    assert msg["Message-ID"] and msg["Date"]
    assert msg.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
    text = msg.get_body(preferencelist=("plain",)).get_content()
    html = msg.get_body(preferencelist=("html",)).get_content()
    for body in (text, " ".join(html.split())):
        assert "Carla Conti" in body  # rendered for the contact given with --to
        assert "Our <strong>spring sale</strong>" in body or "Our **spring sale**" in body
        # Why she gets it (her consent to partners' offers), and on whose behalf.
        words = " ".join(body.split())
        assert "because you asked" in words and "offers from its partners" in words
        assert "Kitchenworks GmbH" in words
        assert "Shop Ltd, 1 High Street, Testville" in words
        assert "https://news.example.test/u/" in words


def test_test_send_and_real_send_through_smtp(cli: Cli) -> None:
    # Eva's server answers 550 5.1.1: a hard bounce, so her address is suppressed.
    handler = FaultyHandler(rcpt={"eva@example.com": "550 5.1.1 no such user"})
    with run_smtp_server(handler) as server:
        cli.env["CAMPAIGNS_SMTP_URL"] = server.url
        cli.env["CAMPAIGNS_SMTP_CONNECTIONS"] = "2"
        created = cli(
            "campaign",
            "create",
            "--kind",
            "promotional",
            "--name",
            "Spring sale",
            "--subject",
            "Spring sale",
            "--body-file",
            "body.md",
            "--segment",
            "country=DE",
        )
        assert created.code == 0
        test = cli("campaign", "send", "Spring sale", "--test-to", "you@example.com")
        assert (test.code, test.out) == (0, "test sent to you@example.com\n")
        assert [m.rcpt_tos for m in handler.messages] == [["you@example.com"]]
        test_copy = email.parser.BytesParser(policy=email.policy.default).parsebytes(
            handler.messages[0].data
        )
        assert str(test_copy["X-Campaigns-Test"]) == "yes"
        assert "TEST" in str(test_copy["Subject"])

        sent = cli("campaign", "send", "Spring sale", "--json")
        real = [r for m in handler.messages[1:] for r in m.rcpt_tos]

    assert sent.code == 0, sent
    # Promotional consent and in DE: anna, Ben, eva, greta, hans; eva bounced.
    assert sorted(real) == sorted(
        ["anna@example.com", "Ben@example.com", "greta@example.com", "hans@example.com"]
    )
    run = sent.json()
    assert (run["total"], run["sent"], run["failed"], run["finished"]) == (5, 4, 1, True)
    for m in handler.messages[1:]:
        message = email.parser.BytesParser(policy=email.policy.default).parsebytes(m.data)
        assert "X-Campaigns-Test" not in message
        assert str(message["Subject"]) == "Spring sale"

    shown, count, eva = cli.many(
        ("campaign", "show", "Spring sale", "--json"),
        ("contacts", "count", "--purpose", "promotional", "--country", "DE", "--json"),
        ("contacts", "show", "eva@example.com", "--json"),
    )
    data = shown.json()
    assert data["status"] == "sent"
    counts = data["counts"]
    # The test copy is not counted: five people, not six.
    assert (counts["total"], counts["sent"], counts["failed"]) == (5, 4, 1)
    assert (counts["suppressions"], counts["unsubscribes"], counts["skipped"]) == (1, 0, 0)
    assert count.json() == {"count": 4}  # eva is suppressed now
    assert eva.json()["suppressed"] == "hard_bounce"
    assert eva.json()["consent"]["promotional"]["state"] == "granted"


def test_send_due_sends_what_is_due_into_the_capture_outbox(cli: Cli) -> None:
    created = cli(
        "campaign",
        "create",
        "--kind",
        "survey",
        "--name",
        "Q3 survey",
        "--subject",
        "Five minutes?",
        "--body-file",
        "body.md",
        "--survey-url",
        "https://survey.example.com/q3",
        "--segment",
        "country=DE",
    )
    assert created.code == 0
    later = cli("campaign", "schedule", "Q3 survey", "--at", "2099-01-01T00:00Z")
    assert later.code == 0
    not_yet = cli("send-due")
    assert (not_yet.code, not_yet.out) == (0, "nothing due\n")
    outbox = cli.home / "outbox"  # the capture transport: no smtp_url is set
    assert not outbox.exists() or not [p for p in outbox.rglob("*") if p.is_file()]

    due = cli("campaign", "schedule", "Q3 survey", "--at", "2020-01-01T00:00Z")
    assert due.code == 0
    ran = cli("send-due")
    assert ran.code == 0, ran
    # Research consent and in DE: anna, dirk, greta.
    assert ran.out == "Q3 survey: sent 3, failed 0, skipped 0, in doubt 0, retrying 0; finished\n"
    parser = email.parser.BytesParser(policy=email.policy.default)
    messages = [parser.parsebytes(p.read_bytes()) for p in (outbox / "new").iterdir()]
    assert sorted(str(m["Delivered-To"]) for m in messages) == [
        "anna@example.com",
        "dirk@example.com",
        "greta@example.com",
    ]
    assert {str(m["Subject"]) for m in messages} == {"Five minutes?"}

    again, shown = cli.many(("send-due", "--json"), ("campaign", "show", "Q3 survey", "--json"))
    assert again.code == 0 and again.json()["runs"] == []
    assert shown.json()["status"] == "sent"
    assert shown.json()["counts"]["sent"] == 3
    assert len(list((outbox / "new").iterdir())) == 3


# ------------------------------------------------------------------ the rest


def test_db_upgrade_inbox_and_bad_usage(tmp_path: Path) -> None:
    cli = Cli(tmp_path)
    first = cli("db", "upgrade")
    assert first.code == 0 and first.out.startswith("created a new database at schema ")
    assert (tmp_path / "campaigns.db").is_file()
    for sub in ("new", "cur", "tmp"):
        (tmp_path / "inbox" / sub).mkdir(parents=True)

    results = cli.many(
        ("db", "upgrade", "--json"),
        ("frobnicate",),
        ("contacts", "count", "--bogus"),
        ("--config", "missing.toml", "campaign", "list"),
        ("inbox", "process"),
        ("serve", "--port", "0"),
        ("campaign", "list", "--json"),
    )
    upgrade, *usage, missing_config, no_inbox, bad_port, empty = results
    data = upgrade.json()
    assert upgrade.code == 0 and data["before"] == data["after"] and data["after"]
    for r in usage:
        assert "--help" in one_line_error(r, 2)
    assert "missing.toml" in one_line_error(missing_config, 2)
    one_line_error(no_inbox, 2)
    assert "port" in one_line_error(bad_port, 2)
    assert (empty.code, empty.json()) == (0, [])

    cli.env["CAMPAIGNS_INBOX_URL"] = f"maildir://{tmp_path / 'inbox'}"
    inbox = cli("inbox", "process")
    assert (inbox.code, inbox.out) == (0, "the return mailbox holds nothing new\n")


def test_what_an_operator_may_mistype_is_one_line_and_changes_nothing(cli: Cli) -> None:
    """Issue 15: each of these was an internal error, or quietly made a new database."""
    created = cli(
        "campaign", "create", "--kind", "promotional", "--name", "Spring sale",
        "--subject", "Spring sale", "--body-file", "body.md",
    )  # fmt: skip
    assert created.code == 0, created
    # A socket bound but not listening: connecting to it is refused, always.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        cli.env["CAMPAIGNS_SMTP_URL"] = f"smtp://127.0.0.1:{port}"
        refused = cli("campaign", "send", "Spring sale", "--test-to", "you@example.com")
    del cli.env["CAMPAIGNS_SMTP_URL"]
    assert one_line_error(refused, 1) == (
        "campaigns: error: test send failed: cannot connect to the SMTP server: "
        "Connection refused\n"
    )
    # Year 9999 at -12:00 is year 10000 in UTC.
    far, bad = cli.many(
        ("campaign", "schedule", "Spring sale", "--at", "9999-12-31T23:59:59-12:00"),
        ("campaign", "schedule", "Spring sale", "--at", "next tuesday"),
    )
    assert "out of range" in one_line_error(far, 2) and "9999-12-31" in far.err
    assert "not an ISO 8601 time" in one_line_error(bad, 2)
    shown = cli("campaign", "show", "Spring sale", "--json")
    assert shown.json()["status"] == "draft"

    nowhere = cli.home / "nowhere" / "dir"
    cli.env["CAMPAIGNS_DATABASE_URL"] = f"sqlite:///{nowhere / 'x.db'}"
    lost = cli("contacts", "count")
    assert one_line_error(lost, 1) == (
        f"campaigns: error: the SQLite database's folder does not exist: {nowhere}\n"
    )
    assert not (cli.home / "nowhere").exists()
    del cli.env["CAMPAIGNS_DATABASE_URL"]

    key = cli.home / "secret_key"
    key.unlink(missing_ok=True)
    key.mkdir()
    preview = cli("campaign", "preview", "Spring sale")
    assert one_line_error(preview, 2) == (
        f"campaigns: error: the key file {key} cannot be read: Is a directory\n"
    )
    count = cli("contacts", "count", "--json")
    assert count.code == 0 and count.json()["count"] > 0  # nothing stored was lost
