"""`campaigns inbox process` end to end: a real send, what comes back, and its effect.

A campaign is sent through the mailer to aiosmtpd with a return domain, so every message
carries its VERP envelope sender and its mailto unsubscribe address. The corpus of
returned messages (tests/mailer/bounce_corpus) is then filled in with those real tokens
and addresses, dropped into a Maildir or a real Dovecot, and processed by the command as
cron runs it.
"""

from __future__ import annotations

import email
import email.policy
import json
import mailbox as stdlib_mailbox
import re
import secrets
import shutil
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlmodel import select

from campaigns import campaign as store
from campaigns import consent
from campaigns.models import Contact, ReturnEvent
from campaigns.purposes import ConsentState, Kind, Purpose, SuppressionReason
from campaigns.returns import Policy
from mailer.inbox import process
from mailer.mailbox import open_mailbox
from mailer.schedule import send_now
from mailer.tokens import signer_from_settings
from tests.conftest import Db
from tests.mailer.conftest import Inbox, add_people, new_campaign, smtp_settings
from tests.mailer.dovecot import DovecotServer, dovecot  # noqa: F401  (the fixture)
from tests.mailer.postfix_bounce import postfix_bounce
from tests.mailer.test_send_due import CAMPAIGNS, env_for

CORPUS = Path(__file__).parent / "bounce_corpus"
RETURN_DOMAIN = "return.test.example"
_VERP = re.compile(r"bounces\+([a-z2-7]+)@")
_UNSUB = re.compile(r"<mailto:unsubscribe\+([a-z2-7]+)@")


@dataclass(frozen=True)
class Sent:
    """What one person received: the envelope sender and the message."""

    address: str
    envelope_from: str
    data: bytes

    @property
    def bounce_token(self) -> str:
        match = _VERP.search(self.envelope_from)
        assert match, self.envelope_from
        return match.group(1)

    @property
    def unsubscribe_token(self) -> str:
        headers = email.message_from_bytes(self.data, policy=email.policy.default)
        match = _UNSUB.search(str(headers["List-Unsubscribe"]))
        assert match, headers["List-Unsubscribe"]
        return match.group(1)

    def returned(self, corpus_file: str) -> bytes:
        """A corpus message as it would come back for this person's message."""
        raw = (CORPUS / corpus_file).read_bytes()
        return (
            raw.replace(b"@@BOUNCE_TOKEN@@", self.bounce_token.encode())
            .replace(b"@@UNSUB_TOKEN@@", self.unsubscribe_token.encode())
            .replace(b"@@RCPT@@", self.address.encode())
        )


def send_campaign(db: Db, inbox: tuple[Inbox, int], people: list[Contact]) -> dict[str, Sent]:
    handler, port = inbox
    new_campaign(db, Kind.PROMOTIONAL, "spring")
    conf = smtp_settings(db.settings, port, return_domain=RETURN_DOMAIN)
    report = send_now(conf, db.engine, "spring")
    assert report.sent == len(people)
    return {rcpt.lower(): Sent(rcpt, mail_from, data) for mail_from, rcpt, data in handler.received}


def new_maildir(path: Path) -> Path:
    stdlib_mailbox.Maildir(path, create=True)
    return path


def drop(maildir: Path, raw: bytes) -> None:
    stdlib_mailbox.Maildir(maildir, create=False).add(raw)


def run_inbox(db: Db, url: str, *extra: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**env_for(db, 25, CAMPAIGNS_INBOX_URL=url), **env}
    return subprocess.run(
        [CAMPAIGNS, "inbox", "process", *extra],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


def contact(db: Db, address: str) -> Contact:
    with db.session() as s:
        c = s.exec(select(Contact).where(Contact.email_key == address.lower())).one()
        return c


def return_events(db: Db) -> int:
    with db.session() as s:
        return len(s.exec(select(ReturnEvent)).all())


def spring_counts(db: Db) -> store.Counts:
    with db.session() as s:
        return store.counts(s, store.get(s, "spring").id or 0)


TWO = {Purpose.PROMOTIONAL: "granted", Purpose.RESEARCH: "granted"}


def test_what_comes_back_is_applied_once_and_nothing_is_lost(
    db: Db, inbox: tuple[Inbox, int], tmp_path: Path
) -> None:
    people = add_people(db, [TWO] * 7)
    sent = send_campaign(db, inbox, people)
    p = [sent[c.email.lower()] for c in people]
    box = new_maildir(tmp_path / "returns")
    for who, corpus_file in [
        (p[0], "postfix_user_unknown.eml"),
        (p[1], "gmail_delay.eml"),
        (p[2], "arf_yahoo_abuse.eml"),
        (p[3], "mailto_unsubscribe_gmail.eml"),
        (p[4], "autoreply_exchange.eml"),
        (p[5], "postfix_mangled_verp.eml"),  # the token is mangled: the address decides
        (p[6], "human_reply.eml"),
    ]:
        drop(box, who.returned(corpus_file))
    # A bounce naming someone we never mailed, with a token nobody signed.
    stranger = replace(p[6], address="stranger@example.net", envelope_from="bounces+aaaa@x.org")
    drop(box, stranger.returned("postfix_mangled_verp.eml"))

    first = run_inbox(db, f"maildir://{box}", "--json")
    assert first.returncode == 1, first.stderr  # two kept for a person: cron should say so
    got = json.loads(first.stdout)
    assert (got["read"], got["hard_bounce"], got["soft_bounce"]) == (8, 2, 1)
    assert (got["complaint"], got["mailto"], got["ignored"]) == (1, 1, 1)
    assert len(got["kept"]) == 2 and got["suppressed"] == 3

    assert contact(db, p[0].address).suppressed == SuppressionReason.HARD_BOUNCE
    assert contact(db, p[1].address).suppressed is None  # one soft bounce is not enough
    complained = contact(db, p[2].address)
    assert complained.suppressed == SuppressionReason.COMPLAINT
    assert all(consent.state_of(complained, q) == ConsentState.WITHDRAWN for q in Purpose)
    mailto = contact(db, p[3].address)
    assert consent.state_of(mailto, Purpose.PROMOTIONAL) == ConsentState.WITHDRAWN
    assert consent.state_of(mailto, Purpose.RESEARCH) == ConsentState.GRANTED
    assert mailto.suppressed is None
    assert contact(db, p[4].address).suppressed is None
    assert contact(db, p[5].address).suppressed == SuppressionReason.HARD_BOUNCE
    assert contact(db, p[6].address).suppressed is None
    counts = spring_counts(db)
    assert (counts.hard_bounces, counts.soft_bounces, counts.complaints) == (2, 1, 1)
    assert counts.unsubscribes == 1

    # A second run finds nothing new, and every message is still in the mailbox.
    second = run_inbox(db, f"maildir://{box}")
    assert second.returncode == 0 and "nothing new" in second.stdout
    root = stdlib_mailbox.Maildir(box, create=False)
    assert len(root) == 0
    assert len(root.get_folder("Kept")) == 2 and len(root.get_folder("Processed")) == 6
    before = return_events(db)

    # Marking failed after the database committed (a crash, a full disk): the messages
    # are read again, and nothing happens twice.
    for f in (box / ".Processed" / "cur").iterdir():
        shutil.copy(f, box / "new" / f.name.split(":")[0])
    third = run_inbox(db, f"maildir://{box}", "--json")
    assert json.loads(third.stdout)["duplicates"] == 5
    assert return_events(db) == before
    assert spring_counts(db) == counts

    # The next research campaign reaches only those who may still get it.
    handler, port = inbox
    handler.received.clear()
    new_campaign(db, Kind.SURVEY, "survey")
    send_now(smtp_settings(db.settings, port), db.engine, "survey")
    reached = {rcpt.lower() for _f, rcpt, _d in handler.received}
    assert reached == {p[i].address.lower() for i in (1, 3, 4, 6)}


def test_the_command_speaks_plainly(db: Db, inbox: tuple[Inbox, int], tmp_path: Path) -> None:
    people = add_people(db, [TWO] * 2)
    sent = send_campaign(db, inbox, people)
    box = new_maildir(tmp_path / "returns")
    drop(box, sent[people[0].email.lower()].returned("exim_user_unknown.eml"))
    drop(box, b"\x00\xff garbage")
    done = run_inbox(db, f"maildir://{box}")
    assert done.returncode == 1, done.stderr  # one kept
    assert "read 2 messages: 1 hard bounce" in done.stdout
    assert "1 address suppressed" in done.stdout
    assert "kept and flagged for a human: 1" in done.stdout
    assert people[0].email.lower() not in done.stdout.lower()  # no personal data printed

    missing = run_inbox(db, "")
    assert missing.returncode == 2 and "CAMPAIGNS_INBOX_URL" in missing.stderr
    assert "Traceback" not in missing.stderr
    bad = run_inbox(db, "pop3://u:secret@host/")
    assert bad.returncode == 2 and "secret" not in bad.stderr
    gone = run_inbox(db, f"maildir://{tmp_path / 'no-such-box'}")
    assert gone.returncode == 1 and len(gone.stderr.strip().splitlines()) == 1
    no_db = run_inbox(
        db, f"maildir://{box}", CAMPAIGNS_DATABASE_URL="postgresql+psycopg://nobody@127.0.0.1:1/x"
    )
    assert no_db.returncode == 1 and len(no_db.stderr.strip().splitlines()) == 1, no_db.stderr


def test_imap_with_a_real_dovecot(
    db: Db,
    inbox: tuple[Inbox, int],
    dovecot: DovecotServer,  # noqa: F811
) -> None:
    people = add_people(db, [TWO] * 3)
    sent = send_campaign(db, inbox, people)
    p = [sent[c.email.lower()] for c in people]
    uids = {
        dovecot.deliver(p[0].returned("exchange_undeliverable.eml")): "hard",
        dovecot.deliver(p[1].returned("arf_aol_original_only.eml")): "complaint",
        dovecot.deliver(p[2].returned("spam.eml")): "unknown",
    }
    env = {"SSL_CERT_FILE": str(dovecot.ca_file)}
    first = run_inbox(db, dovecot.imaps_url, "--json", **env)
    assert first.returncode == 1, first.stderr  # the spam is kept
    got = json.loads(first.stdout)
    assert (got["read"], got["hard_bounce"], got["complaint"], len(got["kept"])) == (3, 1, 1, 1)
    assert contact(db, p[0].address).suppressed == SuppressionReason.HARD_BOUNCE
    assert contact(db, p[1].address).suppressed == SuppressionReason.COMPLAINT
    assert contact(db, p[2].address).suppressed is None

    # Over STARTTLS this time: nothing new, nothing changes.
    events = return_events(db)
    second = run_inbox(db, dovecot.imap_url, "--json", **env)
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["read"] == 0
    assert return_events(db) == events
    flags = dovecot.flags()
    for uid, what in uids.items():
        if what == "unknown":
            assert "\\Flagged" in flags[uid] and "\\Seen" not in flags[uid]
        else:
            assert {"\\Seen", "$CampaignsDone"} <= flags[uid]

    wrong = run_inbox(db, dovecot.url(password="not-it"), **env)
    assert wrong.returncode == 1 and "not-it" not in wrong.stderr


def test_a_bounce_made_by_postfix(db: Db, inbox: tuple[Inbox, int], tmp_path: Path) -> None:
    """Postfix bounces our real message to an unknown local user; the VERP token alone
    names the person (the bounce's address is the local one, not theirs)."""
    people = add_people(db, [TWO] * 3)
    sent = send_campaign(db, inbox, people)
    mine = sent[people[1].email.lower()]
    local = f"nosuch-{secrets.token_hex(4)}"
    raw = postfix_bounce(
        tmp_path, envelope_from=mine.envelope_from, recipient_local=local, message=mine.data
    )
    assert people[1].email.lower().encode() not in raw.lower().split(b"\r\n\r\n", 1)[0]
    box = new_maildir(tmp_path / "returns")
    drop(box, raw)
    done = run_inbox(db, f"maildir://{box}", "--json")
    assert json.loads(done.stdout)["hard_bounce"] == 1, done.stdout + done.stderr
    assert contact(db, people[1].email).suppressed == SuppressionReason.HARD_BOUNCE
    assert [contact(db, people[i].email).suppressed for i in (0, 2)] == [None, None]


MUTATIONS = st.lists(
    st.tuples(st.sampled_from(["flip", "cut", "drop", "dup"]), st.integers(0, 10**6)),
    max_size=4,
)


def _mutate(raw: bytes, steps: list[tuple[str, int]]) -> bytes:
    data = bytearray(raw)
    for op, n in steps:
        if not data:
            break
        i = n % len(data)
        if op == "flip":
            data[i] = (data[i] + 1 + n % 254) % 256
        elif op == "cut":
            del data[i:]
        elif op == "drop":
            del data[i : i + 1 + n % 64]
        else:
            data[i:i] = data[i : i + 1 + n % 64]
    return bytes(data)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    corpus_file=st.sampled_from(sorted(p.name for p in CORPUS.glob("*.eml"))),
    target=st.integers(0, 3),
    steps=MUTATIONS,
)
def test_malformed_returns_never_touch_anyone_not_named(
    db: Db,
    inbox: tuple[Inbox, int],
    tmp_path_factory: pytest.TempPathFactory,
    corpus_file: str,
    target: int,
    steps: list[tuple[str, int]],
) -> None:
    with db.session() as s:
        people = list(s.exec(select(Contact).order_by(Contact.id)))  # type: ignore[arg-type]
    if not people:
        people = add_people(db, [TWO] * 4)
        send_campaign(db, inbox, people)
    handler, _port = inbox
    sent = {rcpt.lower(): Sent(rcpt, f, d) for f, rcpt, d in handler.received}
    raw = _mutate(sent[people[target].email.lower()].returned(corpus_file), steps)

    def states() -> dict[str, tuple[object, ...]]:
        with db.session() as s:
            return {
                c.email_key: (c.suppressed, c.promotional, c.research, c.third_party)
                for c in s.exec(select(Contact))
            }

    before = states()
    box = new_maildir(tmp_path_factory.mktemp("box") / "m")
    drop(box, raw)
    conf = db.settings
    policy = Policy(policy_version="1", soft_bounce_limit=1)
    with open_mailbox(f"maildir://{box}") as mb:
        report = process(mb, db.engine, signer_from_settings(conf), policy)
    assert report.read == 1
    changed = {k for k, v in states().items() if before[k] != v}
    named = {people[target].email_key} | {
        c.email_key for c in people if c.email_key.encode() in raw.lower()
    }
    assert changed <= named


def test_a_mailbox_failing_half_way_still_says_what_was_done(
    db: Db, inbox: tuple[Inbox, int], tmp_path: Path
) -> None:
    people = add_people(db, [TWO] * 2)
    sent = send_campaign(db, inbox, people)
    box = new_maildir(tmp_path / "returns")
    drop(box, sent[people[0].email.lower()].returned("exim_user_unknown.eml"))
    drop(box, b"a message for a human")
    # The folder for kept messages cannot be made: the second message fails to move.
    (box / ".Kept").write_text("in the way")
    done = run_inbox(db, f"maildir://{box}")
    assert done.returncode == 1
    assert "read 2 messages: 1 hard bounce" in done.stdout
    assert "1 address suppressed" in done.stdout
    assert len(done.stderr.strip().splitlines()) == 1 and ".Kept" in done.stderr, done.stderr
    assert contact(db, people[0].email).suppressed == "hard_bounce"
    # The bounce was marked before the failure: the next run does not read it again.
    (box / ".Kept").unlink()
    again = run_inbox(db, f"maildir://{box}", "--json")
    assert json.loads(again.stdout)["read"] == 1, again.stdout
    assert again.returncode == 1  # the human's message, kept this time
