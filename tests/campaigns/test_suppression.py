"""Suppression (DESIGN.md §2): it beats every consent, keeps only a keyed hash of the
address, is compared without regard to case, and a weaker reason never replaces a
stronger one. Erasure leaves nothing of the person but that hash."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime

from sqlmodel import select

from campaigns import consent, suppression
from campaigns.models import (
    AppMeta,
    Campaign,
    ConsentEvent,
    Contact,
    ContactTag,
    Delivery,
    Suppression,
)
from campaigns.purposes import Purpose, SuppressionReason
from tests.conftest import Db

LONG_AGO = datetime(2020, 1, 1, tzinfo=UTC)

# Weakest first: a later suppression replaces the reason only with a stronger one, so
# nothing ever turns a bounce, complaint or erasure into "unsubscribed" (which the
# person's own opt-in lifts).
STRENGTH = ["soft_bounces", "unsubscribed", "hard_bounce", "complaint", "erased"]


def _contact(db: Db, email: str) -> int:
    with db.session() as s:
        c = Contact(email=email, email_key=email.lower(), updated_at=LONG_AGO)
        s.add(c)
        s.commit()
        assert c.id is not None
        return c.id


def _contact_row(db: Db, cid: int) -> Contact:
    with db.session() as s:
        c = s.get(Contact, cid)
        assert c is not None
        return c


def _rows(db: Db) -> list[Suppression]:
    with db.session() as s:
        return list(s.exec(select(Suppression).order_by(Suppression.id)))  # type: ignore[arg-type]


def test_only_a_keyed_hash_of_the_case_folded_address_is_kept(db: Db) -> None:
    with db.session() as s:
        key = s.get(AppMeta, "suppression_key").value  # type: ignore[union-attr]
        assert suppression.suppress(s, "  Anna.Smith@Example.COM ", SuppressionReason.COMPLAINT)
        s.commit()
    expected = hmac.new(key.encode(), b"anna.smith@example.com", hashlib.sha256).hexdigest()
    [row] = _rows(db)
    assert row.address_hash == expected
    # Its own key, never the token-signing key: rotating those brings nobody back.
    signing = hmac.new(b"test-key-1", b"anna.smith@example.com", hashlib.sha256).hexdigest()
    assert row.address_hash != signing
    assert row.reason == "complaint"
    with db.session() as s:
        assert suppression.hash_for(s, "ANNA.SMITH@example.com") == expected
        for spelling in (
            "anna.smith@example.com",
            "ANNA.SMITH@EXAMPLE.COM",
            " Anna.Smith@example.com",
        ):
            assert suppression.suppression_of(s, spelling) == "complaint"
        assert suppression.suppression_of(s, "anna.smith@example.org") is None
        assert suppression.suppression_of(s, "anna.smit@example.com") is None


def test_a_stronger_reason_replaces_a_weaker_one_never_the_reverse(db: Db) -> None:
    for i, first in enumerate(STRENGTH):
        for j, second in enumerate(STRENGTH):
            address = f"p{i}{j}@example.com"
            with db.session() as s:
                assert suppression.suppress(s, address, SuppressionReason(first), source="one")
                changed = suppression.suppress(s, address, SuppressionReason(second), source="two")
                s.commit()
                expected = second if j > i else first
                assert changed is (j > i), (first, second)
                assert suppression.suppression_of(s, address) == expected, (first, second)
                row = s.exec(
                    select(Suppression).where(
                        Suppression.address_hash == suppression.hash_for(s, address)
                    )
                ).one()
                assert row.source == ("two" if j > i else "one"), (first, second)
    # One row per address, however often it was suppressed.
    assert len(_rows(db)) == 25


def test_what_caused_a_suppression_is_kept_and_a_stronger_one_takes_over(db: Db) -> None:
    with db.session() as s:
        assert suppression.suppress(
            s,
            "b@example.com",
            SuppressionReason.SOFT_BOUNCES,
            source="bounce",
            campaign_id=3,
            delivery_id=30,
        )
        s.commit()
    [row] = _rows(db)
    assert (row.reason, row.source, row.campaign_id, row.delivery_id) == (
        "soft_bounces",
        "bounce",
        3,
        30,
    )
    with db.session() as s:
        assert suppression.suppress(
            s,
            "B@example.com",
            SuppressionReason.HARD_BOUNCE,
            source="bounce",
            campaign_id=4,
            delivery_id=40,
        )
        s.commit()
    [row] = _rows(db)
    assert (row.reason, row.source, row.campaign_id, row.delivery_id) == (
        "hard_bounce",
        "bounce",
        4,
        40,
    )
    # An erasure names no campaign: the one the bounce came from stays on record.
    with db.session() as s:
        assert suppression.suppress(s, "b@example.com", SuppressionReason.ERASED, source="forget")
        s.commit()
    [row] = _rows(db)
    assert (row.reason, row.source, row.campaign_id, row.delivery_id) == (
        "erased",
        "forget",
        4,
        40,
    )
    # Without a cause given, none is recorded.
    with db.session() as s:
        suppression.suppress(s, "c@example.com", "unsubscribed")  # type: ignore[arg-type]
        s.commit()
    row = _rows(db)[1]
    assert (row.reason, row.source, row.campaign_id, row.delivery_id) == (
        "unsubscribed",
        "",
        None,
        None,
    )


def test_the_contact_row_shows_the_strongest_reason(db: Db) -> None:
    cid = _contact(db, "Dora@Example.com")
    other = _contact(db, "dora@example.org")
    with db.session() as s:
        assert suppression.suppress(s, "DORA@example.COM", SuppressionReason.HARD_BOUNCE)
        s.commit()
    c = _contact_row(db, cid)
    assert c.suppressed == "hard_bounce"
    assert c.updated_at > LONG_AGO
    with db.session() as s:
        # Weaker, and the same again: nothing changes, the contact keeps the stronger one.
        assert suppression.suppress(s, "dora@example.com", SuppressionReason.UNSUBSCRIBED) is False
        assert suppression.suppress(s, "dora@example.com", SuppressionReason.HARD_BOUNCE) is False
        s.commit()
    assert _contact_row(db, cid).suppressed == "hard_bounce"
    with db.session() as s:
        assert suppression.suppress(s, "dora@example.com", SuppressionReason.COMPLAINT)
        s.commit()
    assert _contact_row(db, cid).suppressed == "complaint"
    # Another address is nobody's business here.
    untouched = _contact_row(db, other)
    assert untouched.suppressed is None and untouched.updated_at == LONG_AGO
    with db.session() as s:
        assert consent.may_send(s, other, Purpose.PROMOTIONAL).reason == "no promotional consent"


def test_a_contact_added_after_its_suppression_is_covered_once_suppressed_again(db: Db) -> None:
    with db.session() as s:
        assert suppression.suppress(s, "eve@example.com", SuppressionReason.HARD_BOUNCE)
        s.commit()
    cid = _contact(db, "Eve@example.com")
    assert _contact_row(db, cid).suppressed is None
    with db.session() as s:
        # The list already holds the address; the contact row still has to say so.
        assert suppression.suppress(s, "eve@example.com", SuppressionReason.UNSUBSCRIBED)
        s.commit()
        assert not suppression.suppress(s, "eve@example.com", SuppressionReason.UNSUBSCRIBED)
    c = _contact_row(db, cid)
    assert c.suppressed == "hard_bounce" and c.updated_at > LONG_AGO
    assert [r.reason for r in _rows(db)] == ["hard_bounce"]


def _campaign(db: Db) -> int:
    with db.session() as s:
        k = Campaign(name="Sale", kind="promotional", subject="Hi")
        s.add(k)
        s.commit()
        assert k.id is not None
        return k.id


def test_forget_erases_the_person_keeps_the_counts_and_the_hash(db: Db) -> None:
    kid = _campaign(db)
    gone = _contact(db, "Gone@Example.com")
    stays = _contact(db, "stays@example.com")
    with db.session() as s:
        for cid in (gone, stays):
            c = s.get(Contact, cid)
            consent.record(
                s, c, Purpose.PROMOTIONAL, granted=True, source="form:x", policy_version="1"
            )
            s.add(ContactTag(contact_id=cid, tag="vip"))
            s.add(Delivery(campaign_id=kid, contact_id=cid, status="sent"))
        s.commit()
    with db.session() as s:
        assert suppression.forget(s, "gone@EXAMPLE.com")
        s.commit()
    with db.session() as s:
        assert [c.id for c in s.exec(select(Contact))] == [stays]
        assert [e.contact_id for e in s.exec(select(ConsentEvent))] == [stays]
        assert [t.contact_id for t in s.exec(select(ContactTag))] == [stays]
        deliveries = s.exec(select(Delivery).order_by(Delivery.id)).all()  # type: ignore[arg-type]
        assert [(d.contact_id, d.status) for d in deliveries] == [(None, "sent"), (stays, "sent")]
        assert suppression.suppression_of(s, "GONE@example.com") == "erased"
        assert suppression.suppression_of(s, "stays@example.com") is None
    # An address nobody holds is kept out all the same (a later import cannot bring
    # it in); there was no one to erase.
    with db.session() as s:
        assert suppression.forget(s, "never@example.com") is False
        s.commit()
    with db.session() as s:
        assert suppression.suppression_of(s, "Never@Example.com") == "erased"
    assert [(r.reason, r.source) for r in _rows(db)] == [("erased", "forget")] * 2
