"""What comes back, applied by its reason and per recipient (issue 14).

A real send into aiosmtpd gives each person a real VERP token; the bounces below are what
MTAs send back, built by hand from the formats (the oracle is DESIGN.md §4: user unknown
suppresses, a block never does, a full mailbox counts toward the soft limit).
"""

from __future__ import annotations

from pathlib import Path

from sqlmodel import select

from campaigns import campaign as store
from campaigns import segments, suppression
from campaigns.models import ReturnEvent
from campaigns.purposes import Purpose
from campaigns.returns import Policy
from campaigns.segments import Segment
from mailer.inbox import process
from mailer.mailbox import open_mailbox
from mailer.tokens import signer_from_settings
from tests.conftest import Db
from tests.mailer.conftest import Inbox, add_people
from tests.mailer.test_inbox import drop, new_maildir, send_campaign

GRANTED = {Purpose.PROMOTIONAL: "granted"}


def _dsn(token: str, rows: list[tuple[str, str, str]]) -> bytes:
    blocks = "".join(
        f"\nFinal-Recipient: rfc822; {rcpt}\nAction: failed\nStatus: {status}\n"
        f"Diagnostic-Code: smtp; {diag}\n"
        for rcpt, status, diag in rows
    )
    return (
        "From: MAILER-DAEMON@mx.example.net (Mail Delivery System)\n"
        f"To: bounces+{token}@return.test.example\n"
        "Subject: Undelivered Mail Returned to Sender\nMIME-Version: 1.0\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\n\n'
        "--b\nContent-Type: text/plain\n\nThe mail system could not deliver it.\n\n"
        "--b\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mx.example.net\n"
        f"{blocks}\n--b--\n"
    ).encode()


def test_each_recipient_gets_what_its_reason_calls_for(
    db: Db, inbox: tuple[Inbox, int], tmp_path: Path
) -> None:
    people = add_people(db, [GRANTED] * 4)
    sent = send_campaign(db, inbox, people)
    gone, blocked, full, dmarc = (p.email for p in people)
    box = new_maildir(tmp_path / "Maildir")
    # One report for three of our recipients (a relay batching them), named by address.
    drop(
        box,
        _dsn(
            sent[gone.lower()].bounce_token,
            [
                (gone, "5.1.1", f"550 5.1.1 <{gone}>: Recipient address rejected: User unknown"),
                (
                    blocked,
                    "5.7.1",
                    "550 5.7.1 Service unavailable; client [192.0.2.1] blocked "
                    "using zen.spamhaus.org",
                ),
                (full, "5.2.2", f"552 5.2.2 <{full}>: Mailbox full"),
            ],
        ),
    )
    # Gmail's DMARC refusal for the fourth, with its token.
    drop(
        box,
        _dsn(
            sent[dmarc.lower()].bounce_token,
            [
                (
                    dmarc,
                    "5.7.26",
                    "550-5.7.26 Unauthenticated email from example.com is not "
                    "accepted due to domain's DMARC policy",
                )
            ],
        ),
    )
    policy = Policy(policy_version="1")
    signer = signer_from_settings(db.settings)
    with open_mailbox(f"maildir://{box}") as mailbox:
        report = process(mailbox, db.engine, signer, policy)

    assert report.kept == []
    assert report.as_dict()["reasons"] == {
        "auth_failure": 1,
        "blocked": 1,
        "mailbox_full": 1,
        "user_unknown": 1,
    }
    assert (report.applied["hard_bounce"], report.applied["block"]) == (1, 2)
    assert report.applied["soft_bounce"] == 1 and report.suppressed == 1
    with db.session() as s:
        assert suppression.suppression_of(s, gone) == "hard_bounce"
        for email in (blocked, full, dmarc):
            assert suppression.suppression_of(s, email) is None
        # Three of the four may still get promotional mail.
        assert segments.count(s, Segment(purpose=Purpose.PROMOTIONAL)) == 3
        summary = store.summary(s, store.get(s, "spring"))
    assert summary["returns_by_group"] == {"address": 1, "mailbox": 1, "sender": 2}
    assert summary["blocked_domains"] == [{"domain": "example.com", "blocks": 2}]
    assert summary["counts"]["blocks"] == 2

    # Read again: nothing more happens.
    drop(box, _dsn(sent[dmarc.lower()].bounce_token, [(dmarc, "5.7.26", "550-5.7.26 DMARC")]))
    with open_mailbox(f"maildir://{box}") as mailbox:
        again = process(mailbox, db.engine, signer, policy)
    assert again.applied["block"] == 0 and again.duplicates == 1

    # Erasing a person keeps the counts but blanks their domain and the server's words.
    with db.session() as s:
        suppression.forget(s, blocked)
        s.commit()
        h = suppression.hash_for(s, blocked)
        rows = s.exec(select(ReturnEvent).where(ReturnEvent.address_hash == h)).all()
    assert [(r.kind, r.domain, r.diagnostic) for r in rows] == [("block", "", "")]


def test_the_servers_words_are_kept_without_addresses(
    db: Db, inbox: tuple[Inbox, int], tmp_path: Path
) -> None:
    people = add_people(db, [GRANTED])
    sent = send_campaign(db, inbox, people)
    email = people[0].email
    box = new_maildir(tmp_path / "Maildir")
    drop(
        box,
        _dsn(
            sent[email.lower()].bounce_token,
            [
                (
                    email,
                    "5.7.1",
                    f"554 5.7.1 <{email}>: message from <x@example.org> looks like spam",
                )
            ],
        ),
    )
    with open_mailbox(f"maildir://{box}") as mailbox:
        process(mailbox, db.engine, signer_from_settings(db.settings), Policy(policy_version="1"))
    with db.session() as s:
        (event,) = s.exec(select(ReturnEvent)).all()
    assert (event.kind, event.reason, event.reason_group) == ("block", "spam_detected", "sender")
    assert event.detector == "dsn"
    assert "@" not in event.diagnostic and "looks like spam" in event.diagnostic


def test_a_token_counts_only_for_the_failure_naming_its_person(
    db: Db, inbox: tuple[Inbox, int], tmp_path: Path
) -> None:
    """Outside probe: a report to alice's token listing her block and a stranger's dead
    address suppressed alice. The token names one person; the stranger is nobody of ours."""
    people = add_people(db, [GRANTED] * 2)
    sent = send_campaign(db, inbox, people)
    alice, bob = (p.email for p in people)
    box = new_maildir(tmp_path / "Maildir")
    drop(
        box,
        _dsn(
            sent[alice.lower()].bounce_token,
            [
                (alice, "5.7.1", "550 5.7.1 client blocked using zen.spamhaus.org"),
                ("stranger@elsewhere.example", "5.1.1", "550 5.1.1 user unknown"),
            ],
        ),
    )
    with open_mailbox(f"maildir://{box}") as mailbox:
        report = process(
            mailbox, db.engine, signer_from_settings(db.settings), Policy(policy_version="1")
        )
    assert (report.applied["block"], report.applied["hard_bounce"], report.suppressed) == (1, 0, 0)
    with db.session() as s:
        assert suppression.suppression_of(s, alice) is None
        assert suppression.suppression_of(s, bob) is None


def test_a_report_naming_many_of_ours_without_a_token_touches_nobody(
    db: Db, inbox: tuple[Inbox, int], tmp_path: Path
) -> None:
    """Anyone can mail the return domain: a forged report naming everyone we mailed must
    not suppress them all. Our messages have one recipient each."""
    people = add_people(db, [GRANTED] * 6)
    send_campaign(db, inbox, people)
    box = new_maildir(tmp_path / "Maildir")
    forged = _dsn(
        "aaaaaaaaaaaaaaaaaaaaaaaaaa", [(p.email, "5.1.1", "550 5.1.1 user unknown") for p in people]
    )
    drop(box, forged)
    with open_mailbox(f"maildir://{box}") as mailbox:
        report = process(
            mailbox, db.engine, signer_from_settings(db.settings), Policy(policy_version="1")
        )
    assert report.suppressed == 0
    assert [why for _key, why in report.kept] == [
        "a report naming 6 recipients and no token of ours"
    ]
    with db.session() as s:
        assert segments.count(s, Segment(purpose=Purpose.PROMOTIONAL)) == 6


def test_an_address_cut_in_half_by_the_length_limit_is_not_stored(
    db: Db, inbox: tuple[Inbox, int], tmp_path: Path
) -> None:
    people = add_people(db, [GRANTED])
    sent = send_campaign(db, inbox, people)
    email = people[0].email
    # The address straddles the 300th character of the diagnostic.
    words = "554 5.7.1 " + "x" * 270 + " john.smith@example.org is refused as spam"
    box = new_maildir(tmp_path / "Maildir")
    drop(box, _dsn(sent[email.lower()].bounce_token, [(email, "5.7.1", words)]))
    with open_mailbox(f"maildir://{box}") as mailbox:
        process(mailbox, db.engine, signer_from_settings(db.settings), Policy(policy_version="1"))
    with db.session() as s:
        (event,) = s.exec(select(ReturnEvent)).all()
    assert "john" not in event.diagnostic and event.diagnostic.startswith("554 5.7.1 xxx")
