"""`campaigns inbox reclassify`: past hard bounces read again under the reason rules.

The rows are what the rules before issue 14 left in real databases: any 5.x.x from the
return mailbox, or any 5xx at RCPT during a send, became a hard-bounce suppression. The
oracle is DESIGN.md §4: a block (blocklist, spam verdict) says nothing about the address,
so it is lifted; user unknown stays; complaints, unsubscribes and erasures are never
touched, nor is a suppression nothing is known about.
"""

from __future__ import annotations

import json

import pytest
from sqlmodel import select

from campaigns import consent, segments, suppression
from campaigns.models import Contact, Delivery, ReturnEvent, Suppression, SuppressionChange
from campaigns.purposes import Kind, Purpose, SuppressionReason
from campaigns.segments import Segment
from mailer.reclassify import reclassify
from tests.conftest import Db
from tests.mailer.conftest import new_campaign
from tui.cli import main

SPAMHAUS = "550 5.7.1 Service unavailable; client [192.0.2.1] blocked using zen.spamhaus.org"


def _person(db: Db, email: str) -> int:
    with db.session() as s:
        c = Contact(email=email, email_key=email, name="")
        s.add(c)
        s.flush()
        consent.record(
            s, c, Purpose.PROMOTIONAL, granted=True, source="form:signup", policy_version="1"
        )
        s.commit()
        assert c.id is not None
        return c.id


def _old_state(db: Db) -> dict[str, int]:
    """One person per way the old rules suppressed, and the ones that must stay."""
    campaign_id = new_campaign(db, Kind.PROMOTIONAL, name="spring")
    ids = {
        e: _person(db, f"{e}@example.org")
        for e in ("inbox_block", "send_unknown", "send_block", "complaint", "nothing", "unsub")
    }
    with db.session() as s:
        for name in ids:
            email = f"{name}@example.org"
            h = suppression.hash_for(s, email)
            d = Delivery(campaign_id=campaign_id, contact_id=ids[name], status="sent")
            s.add(d)
            s.flush()
            # What the old rules wrote for a DSN with Status: 5.7.1 (before schema 0005).
            old_bounce = ReturnEvent(
                message_hash=name,
                kind="hard_bounce",
                address_hash=h,
                status="5.7.1",
                campaign_id=campaign_id,
                delivery_id=d.id,
            )
            if name == "inbox_block":
                s.add(old_bounce)
                suppression.suppress(
                    s,
                    email,
                    SuppressionReason.HARD_BOUNCE,
                    source="bounce",
                    campaign_id=campaign_id,
                    delivery_id=d.id,
                )
            elif name in ("send_unknown", "send_block"):  # refused at RCPT, no delivery id
                d.status = "failed"
                d.error = (
                    f"550 5.1.1 <{email}>: Recipient address rejected: User unknown"
                    if name == "send_unknown"
                    else SPAMHAUS
                )
                s.add(d)
                suppression.suppress(
                    s,
                    email,
                    SuppressionReason.HARD_BOUNCE,
                    source="bounce",
                    campaign_id=campaign_id,
                )
            elif name == "complaint":  # bounced, then complained: the complaint stays
                s.add(old_bounce)
                suppression.suppress(s, email, SuppressionReason.COMPLAINT, source="complaint")
            elif name == "nothing":  # suppressed with nothing stored about why
                suppression.suppress(s, email, SuppressionReason.HARD_BOUNCE, source="bounce")
            else:
                suppression.suppress(s, email, SuppressionReason.UNSUBSCRIBED, source="one-click")
        s.commit()
    return ids


def _suppressed(db: Db) -> dict[str, str | None]:
    with db.session() as s:
        return {c.email.split("@")[0]: c.suppressed for c in s.exec(select(Contact))}


def test_blocks_are_lifted_and_dead_addresses_complaints_and_the_unknown_stay(db: Db) -> None:
    _old_state(db)
    before = _suppressed(db)

    planned = reclassify(db.engine, dry_run=True)
    assert sorted(x.reason.value for x in planned) == ["blocked", "blocked"]
    assert _suppressed(db) == before  # a dry run changes nothing

    lifted = reclassify(db.engine)
    assert len(lifted) == 2
    assert _suppressed(db) == {
        "inbox_block": None,
        "send_unknown": "hard_bounce",
        "send_block": None,
        "complaint": "complaint",
        "nothing": "hard_bounce",
        "unsub": "unsubscribed",
    }
    with db.session() as s:
        # Eligible again: the two lifted and nobody else.
        assert segments.count(s, Segment(purpose=Purpose.PROMOTIONAL)) == 2
        assert {x.reason for x in s.exec(select(Suppression))} == {
            "hard_bounce",
            "complaint",
            "unsubscribed",
        }
        ledger = s.exec(select(SuppressionChange)).all()
    assert [(x.change, x.old_reason, x.source) for x in ledger] == [
        ("lifted", "hard_bounce", "inbox reclassify")
    ] * 2
    assert all("blocked" in x.why and "@" not in x.why for x in ledger)
    # Done once: a second run finds nothing more.
    assert reclassify(db.engine) == []


def test_the_cli_lists_what_it_would_lift(db: Db, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    _old_state(db)
    monkeypatch.setenv("CAMPAIGNS_DATABASE_URL", db.url)
    assert main(["inbox", "reclassify", "--dry-run", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["dry_run"], data["lifted"]) == (True, 2)
    assert main(["inbox", "reclassify"]) == 0
    assert capsys.readouterr().out.startswith("lifted 2 hard-bounce suppressions:")
    assert main(["inbox", "reclassify"]) == 0
    assert "lifted 0 hard-bounce suppressions" in capsys.readouterr().out


def test_a_refusal_at_the_send_is_not_lifted_for_a_later_block(db: Db) -> None:
    """Outside probe: a 550 5.1.1 at RCPT (old rules, no delivery id) and a later 5.7.1
    bounce of another campaign: the address is dead whatever came after."""
    first = new_campaign(db, Kind.PROMOTIONAL, name="first")
    second = new_campaign(db, Kind.PROMOTIONAL, name="second")
    email = "gone@example.org"
    contact_id = _person(db, email)
    with db.session() as s:
        s.add(
            Delivery(
                campaign_id=first,
                contact_id=contact_id,
                status="failed",
                error=f"550 5.1.1 <{email}>: Recipient address rejected: User unknown",
            )
        )
        suppression.suppress(s, email, SuppressionReason.HARD_BOUNCE, campaign_id=first)
        s.add(
            ReturnEvent(
                message_hash="later",
                kind="hard_bounce",
                address_hash=suppression.hash_for(s, email),
                status="5.7.1",
                campaign_id=second,
            )
        )
        s.commit()
    assert reclassify(db.engine) == []
    assert _suppressed(db) == {"gone": "hard_bounce"}


def test_lifting_a_bounce_restores_the_persons_own_stop_everything(db: Db) -> None:
    """Outside probe: "stop everything" (unsubscribed), then a hard bounce that was a
    block: lifting the bounce must leave the person's own "no" in place."""
    campaign_id = new_campaign(db, Kind.PROMOTIONAL, name="spring")
    email = "quiet@example.org"
    _person(db, email)
    with db.session() as s:
        suppression.suppress(s, email, SuppressionReason.UNSUBSCRIBED, source="one-click")
        suppression.suppress(
            s, email, SuppressionReason.HARD_BOUNCE, source="bounce", campaign_id=campaign_id
        )
        s.add(
            ReturnEvent(
                message_hash="m",
                kind="hard_bounce",
                address_hash=suppression.hash_for(s, email),
                status="5.7.1",
                diagnostic="550 5.7.1 client blocked using zen.spamhaus.org",
                campaign_id=campaign_id,
            )
        )
        s.commit()
    assert len(reclassify(db.engine)) == 1
    assert _suppressed(db) == {"quiet": "unsubscribed"}
    with db.session() as s:
        assert suppression.suppression_of(s, email) == "unsubscribed"
