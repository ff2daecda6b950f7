"""Refusals during a send, read by their reason (DESIGN.md §4, issue 14).

A server that refuses *us* (a blocklist, our reputation, spam found in the message) says
nothing about the person: nobody is suppressed for it, and a receiving domain that keeps
blocking us is held back while everyone else is sent. Only an address reason (user
unknown) suppresses. The oracle is the reply text and DESIGN.md's rules, not the
product's classifier.
"""

from __future__ import annotations

from collections import Counter

import pytest
from sqlmodel import select

from campaigns import campaign as store
from campaigns import consent, segments, suppression
from campaigns.models import Contact, Delivery, ReturnEvent, Suppression
from campaigns.purposes import Kind, Purpose
from campaigns.segments import Segment
from mailer.schedule import send_now
from tests.campaigns.test_deliveries import _people as people_granting
from tests.conftest import Db
from tests.mailer.conftest import Inbox, new_campaign, smtp_settings
from tui.cli import main

SPAMHAUS = "550 5.7.1 Service unavailable; client [127.0.0.1] blocked using zen.spamhaus.org"


def _people(db: Db, domain: str, n: int) -> list[str]:
    """The addresses of `n` people at `domain` who granted promotional mail."""
    return [c.email for c in people_granting(db, n, domain=domain)]


def _statuses(db: Db, domain: str) -> Counter[str]:
    with db.session() as s:
        rows = s.exec(
            select(Delivery.status)
            .join(Contact, Contact.id == Delivery.contact_id)  # type: ignore[arg-type]
            .where(Contact.email_key.endswith("@" + domain))  # type: ignore[attr-defined]
        ).all()
    return Counter(rows)


def test_a_domain_that_keeps_blocking_is_held_back_and_nobody_is_suppressed(
    db: Db, inbox: tuple[Inbox, int]
) -> None:
    handler, port = inbox
    blocked = _people(db, "blocked.example", 30)
    fine = _people(db, "fine.example", 12)
    blocking = {"on": True}
    handler.fault = lambda stage, rcpt: (
        SPAMHAUS
        if blocking["on"] and stage == "rcpt" and rcpt.endswith("@blocked.example")
        else None
    )
    # One connection: the messages go one by one, so exactly the threshold is tried.
    conf = smtp_settings(db.settings, port, smtp_connections=1, block_hold_count=5)
    campaign_id = new_campaign(db, Kind.PROMOTIONAL, name="spring")

    report = send_now(conf, db.engine, "spring")

    # Everyone at the other domain got it, once.
    assert handler.counts() == Counter({e: 1 for e in fine})
    # Five tries were refused, the other 25 wait; the campaign is not done.
    assert _statuses(db, "blocked.example") == Counter({"failed": 5, "held": 25})
    assert not report.finished
    assert (report.held, report.held_domains) == (25, ("blocked.example",))
    with db.session() as s:
        # Nobody lost anything for our blocklisting: no suppression, still eligible.
        assert s.exec(select(Suppression)).all() == []
        assert all(suppression.suppression_of(s, e) is None for e in blocked)
        assert segments.count(s, Segment(purpose=Purpose.PROMOTIONAL)) == 42
        # The blocks are counted for the campaign and the receiving domain.
        events = s.exec(select(ReturnEvent).where(ReturnEvent.campaign_id == campaign_id)).all()
        assert [(e.kind, e.reason, e.reason_group, e.domain) for e in events] == [
            ("block", "blocked", "sender", "blocked.example")
        ] * 5

    # The operator gets delisted, releases the held ones, and the send finishes.
    blocking["on"] = False
    assert store.release_held(db.engine, "spring", "Blocked.Example") == 25
    again = send_now(conf, db.engine, "spring")
    assert again.finished and again.sent == 25
    received = handler.counts()
    assert received == Counter({**{e: 1 for e in fine}, **{e: 1 for e in blocked[5:]}})


def test_blocks_below_the_share_of_a_domains_tries_hold_nothing_back(
    db: Db, inbox: tuple[Inbox, int]
) -> None:
    """Both marks must be passed: the count, and the share of the domain's tries."""
    handler, port = inbox
    people = _people(db, "big.example", 40)
    refused = set(people[10:13])  # the 11th to 13th tries: 3 blocks in 13 tries, 23 %
    handler.fault = lambda stage, rcpt: SPAMHAUS if stage == "rcpt" and rcpt in refused else None

    def run(name: str, share: float):
        conf = smtp_settings(
            db.settings, port, smtp_connections=1, block_hold_count=3, block_hold_share=share
        )
        new_campaign(db, Kind.PROMOTIONAL, name=name)
        return send_now(conf, db.engine, name)

    lenient = run("lenient", 0.5)
    assert lenient.finished and (lenient.sent, lenient.failed, lenient.held) == (37, 3, 0)
    strict = run("strict", 0.2)
    assert not strict.finished and (strict.sent, strict.failed, strict.held) == (10, 3, 27)


@pytest.mark.parametrize(
    ("reply", "suppressed", "event"),
    [
        (
            "550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown",
            "hard_bounce",
            "hard_bounce",
        ),
        ("550 5.7.26 Unauthenticated email is not accepted due to DMARC policy", None, "block"),
        ("554 5.7.1 Message rejected as spam by Content Filtering", None, "block"),
        ("552 5.2.2 <{rcpt}>: Mailbox full", None, "soft_bounce"),
        ("550 5.4.1 Recipient address rejected: Access denied", "hard_bounce", "hard_bounce"),
    ],
)
def test_a_refused_recipient_is_judged_by_the_reason_of_the_reply(
    db: Db, inbox: tuple[Inbox, int], reply: str, suppressed: str | None, event: str | None
) -> None:
    handler, port = inbox
    (person,) = _people(db, "example.org", 1)
    handler.fault = lambda stage, rcpt: reply.format(rcpt=rcpt) if stage == "rcpt" else None
    new_campaign(db, Kind.PROMOTIONAL, name="c")
    report = send_now(smtp_settings(db.settings, port), db.engine, "c")
    assert report.failed == 1 and report.finished
    with db.session() as s:
        assert suppression.suppression_of(s, person) == suppressed
        kinds = [e.kind for e in s.exec(select(ReturnEvent))]
    # Counted like a bounce of the same reason (campaign show: hard_bounces, blocks ...).
    assert kinds == ([event] if event else [])


def test_the_cli_says_what_was_held_and_fails_until_it_is_released(
    db: Db, inbox: tuple[Inbox, int], monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    handler, port = inbox
    _people(db, "blocked.example", 4)
    _people(db, "fine.example", 2)
    blocking = {"on": True}
    handler.fault = lambda stage, rcpt: (
        SPAMHAUS
        if blocking["on"] and stage == "rcpt" and rcpt.endswith("@blocked.example")
        else None
    )
    new_campaign(db, Kind.PROMOTIONAL, name="c")
    monkeypatch.setenv("CAMPAIGNS_DATABASE_URL", db.url)
    monkeypatch.setenv("CAMPAIGNS_SMTP_URL", f"smtp://127.0.0.1:{port}")
    monkeypatch.setenv("CAMPAIGNS_SMTP_CONNECTIONS", "1")
    monkeypatch.setenv("CAMPAIGNS_BLOCK_HOLD_COUNT", "2")
    monkeypatch.setenv("CAMPAIGNS_SECRET_KEY", db.settings.secret_key)

    assert main(["campaign", "send", "c"]) == 1
    out = capsys.readouterr().out
    assert "held back: blocked.example (2)" in out and "sent 2" in out
    assert main(["campaign", "release", "c", "--domain", "other.example"]) == 0
    assert "nothing of 'c' is held back for other.example" in capsys.readouterr().out
    assert main(["campaign", "release", "c", "--domain", "bad domain%_"]) == 2
    assert "not a domain name" in capsys.readouterr().err
    blocking["on"] = False
    assert main(["campaign", "release", "c", "--domain", "blocked.example"]) == 0
    assert "released 2" in capsys.readouterr().out
    assert main(["campaign", "send", "c"]) == 0
    assert "sent 2" in capsys.readouterr().out


def test_a_provider_that_keeps_throttling_us_is_held_back_too(
    db: Db, inbox: tuple[Inbox, int]
) -> None:
    """Temporary blocks (421 4.7.0 rate limiting) count toward holding a domain back:
    retrying them at once would only hammer it; the rest of the send goes on."""
    handler, port = inbox
    throttled = _people(db, "yahoo.example", 10)
    fine = _people(db, "fine.example", 5)
    handler.fault = lambda stage, rcpt: (
        "421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected "
        "volume or user complaints"
        if stage == "rcpt" and rcpt.endswith("@yahoo.example")
        else None
    )
    conf = smtp_settings(db.settings, port, smtp_connections=1, block_hold_count=3)
    new_campaign(db, Kind.PROMOTIONAL, name="c")
    report = send_now(conf, db.engine, "c")
    assert handler.counts() == Counter({e: 1 for e in fine})
    assert not report.finished and report.held_domains == ("yahoo.example",)
    # Every one of them is held, none failed or lost; nobody suppressed.
    assert _statuses(db, "yahoo.example") == Counter({"held": 10})
    with db.session() as s:
        assert all(suppression.suppression_of(s, e) is None for e in throttled)


def test_holding_a_domain_back_costs_nobody_else_an_attempt_when_pipelining(db: Db) -> None:
    """With pipelining the next message is announced with the current body: a held one
    must not be announced, and one announced before the hold goes out (outside probe:
    fine.example people lost attempts, one gave up, when held messages were skipped)."""
    from tests.mailer.smtp_server import FaultyHandler, run_smtp_server

    # Interleaved in claim order: blocked, fine, blocked, fine ...
    blocked, fine = [], []
    with db.session() as s:
        for i in range(80):
            email = f"p{i}@blocked.example" if i % 2 == 0 else f"p{i}@fine.example"
            c = Contact(email=email, email_key=email, name="")
            s.add(c)
            s.flush()
            consent.record(
                s, c, Purpose.PROMOTIONAL, granted=True, source="form:signup", policy_version="1"
            )
            (blocked if i % 2 == 0 else fine).append(email)
        s.commit()
    handler = FaultyHandler(rcpt={e: SPAMHAUS for e in blocked})
    with run_smtp_server(handler, pipelining=True) as server:
        conf = smtp_settings(
            db.settings, server.port, smtp_connections=2, block_hold_count=3, max_attempts=2
        )
        new_campaign(db, Kind.PROMOTIONAL, name="c")
        report = send_now(conf, db.engine, "c")
    assert Counter(handler.recipients()) == Counter({e: 1 for e in fine})
    assert _statuses(db, "fine.example") == Counter({"sent": 40})
    statuses = _statuses(db, "blocked.example")
    assert statuses["held"] >= 30 and statuses["sent"] == 0
    assert report.held == statuses["held"]


def test_full_mailboxes_at_the_send_reach_the_soft_bounce_limit(
    db: Db, inbox: tuple[Inbox, int]
) -> None:
    """Outside probe: five 552 5.2.2 refusals in a row never suppressed. Three within
    the window (soft_bounce_limit) do, as three that came back would."""
    handler, port = inbox
    (full,) = _people(db, "example.org", 1)
    handler.fault = lambda stage, rcpt: "552 5.2.2 Mailbox full" if stage == "rcpt" else None
    conf = smtp_settings(db.settings, port, soft_bounce_limit=3, soft_bounce_days=14)
    for n in range(1, 4):
        new_campaign(db, Kind.PROMOTIONAL, name=f"c{n}")
        send_now(conf, db.engine, f"c{n}")
        with db.session() as s:
            expected = "soft_bounces" if n == 3 else None
            assert suppression.suppression_of(s, full) == expected, n
