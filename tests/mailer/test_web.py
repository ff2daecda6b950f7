"""The unsubscribe and preference pages (DESIGN.md §3), through Starlette's TestClient.

Every route and every bad input, on real databases; hypothesis fuzzes tokens and form
bodies: never a 500, never a change to anyone but the token's own contact.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
from collections.abc import Iterator
from dataclasses import replace
from typing import Any
from urllib.parse import quote, urlencode

import httpx2
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine
from sqlmodel import select
from starlette.testclient import TestClient

from campaigns import consent, preferences, suppression
from campaigns.models import Campaign, ConsentEvent, Contact, Delivery, Suppression
from campaigns.purposes import ConsentState, Kind, Purpose, SuppressionReason
from mailer.tokens import TokenKind, TokenSigner, signer_from_settings
from mailer.web import MAX_BODY, RATE_LIMIT, RateLimiter, create_app
from tests.conftest import Db

ONE_CLICK = {"List-Unsubscribe": "One-Click"}
FORM = "application/x-www-form-urlencoded"


# ---------------------------------------------------------------- helpers


def add_contact(db: Db, email: str, grants: set[Purpose] | frozenset[Purpose] = frozenset()) -> int:
    with db.session() as s:
        contact = Contact(email=email, email_key=email.lower())
        s.add(contact)
        s.flush()
        for purpose in grants:
            consent.record(
                s, contact, purpose, granted=True, source="form:signup", policy_version="1"
            )
        s.commit()
        assert contact.id is not None
        return contact.id


def add_campaign(db: Db, kind: Kind = Kind.PROMOTIONAL, name: str = "Spring sale") -> int:
    with db.session() as s:
        campaign = Campaign(name=name, kind=kind.value, subject="Hello")
        s.add(campaign)
        s.commit()
        assert campaign.id is not None
        return campaign.id


def token_for(db: Db, contact_id: int, campaign_id: int) -> str:
    """A genuine token; it only works for a delivery that `link` (or a send) made."""
    return signer_from_settings(db.settings).sign(TokenKind.UNSUBSCRIBE, contact_id, campaign_id)


def link(db: Db, contact_id: int, campaign_id: int) -> str:
    """The token of a message really sent: its delivery row, then the token."""
    with db.session() as s:
        s.add(Delivery(campaign_id=campaign_id, contact_id=contact_id, status="sent"))
        s.commit()
    return token_for(db, contact_id, campaign_id)


def events(db: Db, contact_id: int | None = None) -> list[ConsentEvent]:
    with db.session() as s:
        stmt = select(ConsentEvent).order_by(ConsentEvent.id)  # type: ignore[arg-type]
        if contact_id is not None:
            stmt = stmt.where(ConsentEvent.contact_id == contact_id)
        return list(s.exec(stmt))


def contact(db: Db, contact_id: int) -> Contact:
    with db.session() as s:
        c = s.get(Contact, contact_id)
        assert c is not None
        return c


def states(db: Db, contact_id: int) -> dict[Purpose, str]:
    c = contact(db, contact_id)
    return {p: consent.state_of(c, p) for p in Purpose}


def everything(db: Db) -> dict[str, Any]:
    """The whole ledger, every contact's row and the suppression list."""
    with db.session() as s:
        return {
            "events": [e.model_dump() for e in s.exec(select(ConsentEvent))],
            "contacts": [c.model_dump() for c in s.exec(select(Contact))],
            "suppressions": [x.model_dump() for x in s.exec(select(Suppression))],
        }


def others(db: Db, contact_id: int) -> dict[str, Any]:
    """Everything that belongs to contacts other than `contact_id`."""
    with db.session() as s:
        own = s.get(Contact, contact_id)
        own_hash = suppression.hash_for(s, own.email) if own else None
        return {
            "events": sorted(
                (
                    e.model_dump()
                    for e in s.exec(select(ConsentEvent))
                    if e.contact_id != contact_id
                ),
                key=lambda e: e["id"],
            ),
            "contacts": sorted(
                (c.model_dump() for c in s.exec(select(Contact)) if c.id != contact_id),
                key=lambda c: c["id"],
            ),
            "suppressions": sorted(
                (x.model_dump() for x in s.exec(select(Suppression)) if x.address_hash != own_hash),
                key=lambda x: x["id"],
            ),
        }


def checkbox(html: str, purpose: str) -> str:
    found = re.search(rf'<input type="checkbox" name="keep" value="{purpose}"[^>]*>', html)
    assert found, f"no checkbox for {purpose}"
    return found.group(0)


@pytest.fixture
def client(db: Db) -> Iterator[TestClient]:
    with TestClient(create_app(db.settings, db.engine), follow_redirects=False) as c:
        yield c


@pytest.fixture
def anna(db: Db) -> tuple[int, int, str]:
    """A contact with promotional and research consent, and a promotional campaign."""
    cid = add_contact(db, "Anna@Example.com", {Purpose.PROMOTIONAL, Purpose.RESEARCH})
    kid = add_campaign(db)
    return cid, kid, link(db, cid, kid)


# ---------------------------------------------------------------- GET


def test_get_shows_what_the_person_gets_and_changes_nothing(
    db: Db, client: TestClient, anna: tuple[int, int, str]
) -> None:
    _, _, token = anna
    before = everything(db)
    r = client.get(f"/u/{token}")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    html = r.text
    assert "Spring sale" in html
    assert "Promotional offers" in html and "Market research surveys" in html
    assert 'value="stop_kind"' in html and 'value="stop_all"' in html and 'value="keep"' in html
    assert "checked" in checkbox(html, "promotional")
    assert "checked" in checkbox(html, "research")
    # The address itself is never shown: a forwarded link must not reveal it.
    assert "anna@example.com" not in html.lower()
    assert 'name="viewport"' in html
    assert "<script" not in html.lower()
    # HEAD too, and many times over: link scanners prefetch.
    for _ in range(3):
        assert client.get(f"/u/{token}").status_code == 200
        assert client.head(f"/u/{token}").status_code == 200
    assert everything(db) == before


def test_third_party_box_is_never_pre_ticked_unless_granted(db: Db, client: TestClient) -> None:
    kid = add_campaign(db, Kind.THIRD_PARTY_OFFER, "Partner offer")
    plain = add_contact(db, "plain@example.com", {Purpose.PROMOTIONAL})
    html = client.get(f"/u/{link(db, plain, kid)}").text
    assert "checked" not in checkbox(html, "third_party")
    assert "checked" in checkbox(html, "promotional")
    assert "an offer from one of our partners" in html
    opted = add_contact(db, "opted@example.com", {Purpose.THIRD_PARTY})
    html = client.get(f"/u/{link(db, opted, kid)}").text
    assert "checked" in checkbox(html, "third_party")
    assert "checked" not in checkbox(html, "promotional")


def test_branding_address_and_policy_link(db: Db, anna: tuple[int, int, str]) -> None:
    _, _, token = anna
    branded = replace(
        db.settings, brand_name="Test Shop", policy_url="https://shop.example/privacy"
    )
    with TestClient(create_app(branded, db.engine)) as c:
        html = c.get(f"/u/{token}").text
    assert "Test Shop" in html
    assert "Test Shop, 1 Test Street, Testville" in html
    assert 'href="https://shop.example/privacy"' in html
    sneaky = replace(db.settings, policy_url="javascript:alert(1)")
    with TestClient(create_app(sneaky, db.engine)) as c:
        html = c.get(f"/u/{token}").text
    assert "javascript:" not in html and "privacy policy" not in html


def test_campaign_name_is_escaped(db: Db, client: TestClient) -> None:
    kid = add_campaign(db, name='<b onclick="x">Sale</b>')
    cid = add_contact(db, "b@example.com", {Purpose.PROMOTIONAL})
    html = client.get(f"/u/{link(db, cid, kid)}").text
    assert "<b onclick" not in html and "&lt;b onclick=" in html


def test_suppressed_person_is_told_they_get_nothing(db: Db, client: TestClient) -> None:
    kid = add_campaign(db)
    cid = add_contact(db, "bounced@example.com", {Purpose.PROMOTIONAL})
    with db.session() as s:
        suppression.suppress(s, "bounced@example.com", SuppressionReason.HARD_BOUNCE)
        s.commit()
    html = client.get(f"/u/{link(db, cid, kid)}").text
    assert "no marketing email" in html


# ---------------------------------------------------------------- one-click


@pytest.mark.parametrize("multipart", [False, True])
def test_one_click_withdraws_the_campaigns_purpose(
    db: Db, client: TestClient, anna: tuple[int, int, str], multipart: bool
) -> None:
    cid, kid, token = anna
    before = len(events(db, cid))
    if multipart:
        r = client.post(f"/u/{token}", files={"List-Unsubscribe": (None, "One-Click")})
    else:
        r = client.post(f"/u/{token}", data=ONE_CLICK)
    assert r.status_code == 200
    assert len(r.content) < 100 and "location" not in r.headers
    new = events(db, cid)[before:]
    assert len(new) == 1
    assert (new[0].purpose, new[0].granted, new[0].source) == ("promotional", False, "one-click")
    assert new[0].campaign_id == kid and new[0].policy_version == "2026-01"
    assert states(db, cid) == {
        Purpose.PROMOTIONAL: ConsentState.WITHDRAWN,
        Purpose.RESEARCH: ConsentState.GRANTED,
        Purpose.THIRD_PARTY: ConsentState.NONE,
    }
    with db.session() as s:
        assert not consent.may_send(s, cid, Purpose.PROMOTIONAL).allowed
        assert consent.may_send(s, cid, Purpose.RESEARCH).allowed
    # Repeating it changes nothing more.
    assert client.post(f"/u/{token}", data=ONE_CLICK).status_code == 200
    assert len(events(db, cid)) == before + 1


def test_one_click_of_a_survey_stops_research_only(db: Db, client: TestClient) -> None:
    kid = add_campaign(db, Kind.SURVEY, "Survey")
    cid = add_contact(db, "s@example.com", {Purpose.PROMOTIONAL, Purpose.RESEARCH})
    assert client.post(f"/u/{link(db, cid, kid)}", data=ONE_CLICK).status_code == 200
    assert states(db, cid)[Purpose.RESEARCH] == ConsentState.WITHDRAWN
    assert states(db, cid)[Purpose.PROMOTIONAL] == ConsentState.GRANTED


def test_a_campaign_of_unreadable_kind_stops_every_kind(db: Db, client: TestClient) -> None:
    with db.session() as s:
        odd = Campaign(name="Odd", kind="newsletter", subject="Hi")
        s.add(odd)
        s.commit()
        kid = odd.id
    assert kid is not None
    cid = add_contact(db, "odd@example.com", {Purpose.PROMOTIONAL, Purpose.RESEARCH})
    token = link(db, cid, kid)
    html = client.get(f"/u/{token}").text
    assert "Odd" in html and 'value="stop_kind"' not in html and 'value="keep"' in html
    assert client.post(f"/u/{token}", data={"action": "stop_kind"}).status_code == 400
    assert states(db, cid)[Purpose.PROMOTIONAL] == ConsentState.GRANTED
    assert client.post(f"/u/{token}", data=ONE_CLICK).status_code == 200
    assert set(states(db, cid).values()) == {ConsentState.WITHDRAWN}


def test_links_from_no_real_message_lead_nowhere(db: Db, client: TestClient) -> None:
    # A genuine signature is not enough: the delivery must exist (not a preview, not a
    # test send, not a campaign that never went to this person).
    kid = add_campaign(db)
    cid = add_contact(db, "v@example.com", {Purpose.PROMOTIONAL})
    other_kid = add_campaign(db, name="Other")
    link(db, cid, other_kid)
    before = everything(db)
    for token in (token_for(db, cid, kid), token_for(db, cid, 987654)):
        assert client.get(f"/u/{token}").status_code == 404
        assert client.post(f"/u/{token}", data=ONE_CLICK).status_code == 404
        assert client.post(f"/u/{token}", data={"action": "stop_all"}).status_code == 404
    assert everything(db) == before


def test_an_erased_persons_link_never_reaches_whoever_gets_their_id(
    db: Db, client: TestClient
) -> None:
    kid = add_campaign(db)
    old = add_contact(db, "erased@example.com", {Purpose.PROMOTIONAL})
    old_token = link(db, old, kid)
    with db.session() as s:
        suppression.forget(s, "erased@example.com")
        s.commit()
    # SQLite gives the newest contact's id to the next one once it is erased; on
    # PostgreSQL force the same situation.
    with db.session() as s:
        newcomer = Contact(id=old, email="new@example.com", email_key="new@example.com")
        s.add(newcomer)
        s.flush()
        consent.record(
            s, newcomer, Purpose.PROMOTIONAL, granted=True, source="form:x", policy_version="1"
        )
        s.commit()
    before = everything(db)
    r = client.get(f"/u/{old_token}")
    assert r.status_code == 404 and "Promotional offers" not in r.text
    assert client.post(f"/u/{old_token}", data=ONE_CLICK).status_code == 404
    assert client.post(f"/u/{old_token}", data={"action": "stop_all"}).status_code == 404
    assert everything(db) == before


# ---------------------------------------------------------------- the form


def test_stop_this_kind(db: Db, client: TestClient, anna: tuple[int, int, str]) -> None:
    cid, kid, token = anna
    r = client.post(f"/u/{token}", data={"action": "stop_kind"})
    assert r.status_code == 200 and "Your choices are saved" in r.text
    new = events(db, cid)[-1]
    assert (new.purpose, new.granted, new.source, new.campaign_id) == (
        "promotional",
        False,
        "unsubscribe-page",
        kid,
    )
    receive, _, not_receive = r.text.partition("You will not receive")
    assert "Market research surveys" in receive and "Promotional offers" not in receive
    assert "Promotional offers" in not_receive


def test_stop_everything_withdraws_all_and_suppresses(
    db: Db, client: TestClient, anna: tuple[int, int, str]
) -> None:
    cid, _, token = anna
    r = client.post(f"/u/{token}", data={"action": "stop_all"})
    assert r.status_code == 200
    assert set(states(db, cid).values()) == {ConsentState.WITHDRAWN}
    assert all(e.source == "unsubscribe-page" for e in events(db, cid)[2:])
    assert contact(db, cid).suppressed == SuppressionReason.UNSUBSCRIBED
    with db.session() as s:
        assert suppression.suppression_of(s, "anna@example.com") == "unsubscribed"
        for purpose in Purpose:
            assert not consent.may_send(s, cid, purpose).allowed
    assert "No marketing email from us." in r.text
    n = len(events(db, cid))
    assert client.post(f"/u/{token}", data={"action": "stop_all"}).status_code == 200
    assert len(events(db, cid)) == n
    assert "Nothing needed changing" in client.post(f"/u/{token}", data={"action": "stop_all"}).text


def test_keep_some_kinds(db: Db, client: TestClient, anna: tuple[int, int, str]) -> None:
    cid, _, token = anna
    before = len(events(db, cid))
    # Untick research, keep promotional, tick third-party: the person's own opt-in.
    r = client.post(f"/u/{token}", data={"action": "keep", "keep": ["promotional", "third_party"]})
    assert r.status_code == 200
    assert states(db, cid) == {
        Purpose.PROMOTIONAL: ConsentState.GRANTED,
        Purpose.RESEARCH: ConsentState.WITHDRAWN,
        Purpose.THIRD_PARTY: ConsentState.GRANTED,
    }
    new = events(db, cid)[before:]
    assert {(e.purpose, e.granted) for e in new} == {("research", False), ("third_party", True)}
    assert {e.source for e in new} == {"unsubscribe-page"}
    # The same choice again changes nothing.
    client.post(f"/u/{token}", data={"action": "keep", "keep": ["promotional", "third_party"]})
    assert len(events(db, cid)) == before + 2


def test_keep_with_no_boxes_ticked_stops_what_was_granted(
    db: Db, client: TestClient, anna: tuple[int, int, str]
) -> None:
    cid, _, token = anna
    assert client.post(f"/u/{token}", data={"action": "keep"}).status_code == 200
    assert states(db, cid) == {
        Purpose.PROMOTIONAL: ConsentState.WITHDRAWN,
        Purpose.RESEARCH: ConsentState.WITHDRAWN,
        Purpose.THIRD_PARTY: ConsentState.NONE,
    }
    assert contact(db, cid).suppressed is None


def test_opting_back_in_after_stopping_everything(
    db: Db, client: TestClient, anna: tuple[int, int, str]
) -> None:
    cid, _, token = anna
    client.post(f"/u/{token}", data={"action": "stop_all"})
    r = client.post(f"/u/{token}", data={"action": "keep", "keep": "promotional"})
    assert r.status_code == 200
    assert states(db, cid)[Purpose.PROMOTIONAL] == ConsentState.GRANTED
    assert contact(db, cid).suppressed is None
    with db.session() as s:
        assert consent.may_send(s, cid, Purpose.PROMOTIONAL).allowed
        assert not consent.may_send(s, cid, Purpose.RESEARCH).allowed


def test_a_bounce_is_not_lifted_by_the_page(db: Db, client: TestClient) -> None:
    kid = add_campaign(db)
    cid = add_contact(db, "hb@example.com")
    with db.session() as s:
        suppression.suppress(s, "hb@example.com", SuppressionReason.HARD_BOUNCE)
        s.commit()
    r = client.post(f"/u/{link(db, cid, kid)}", data={"action": "keep", "keep": "research"})
    assert r.status_code == 200
    assert contact(db, cid).suppressed == SuppressionReason.HARD_BOUNCE
    assert "No marketing email from us." in r.text


# ---------------------------------------------------------------- bad input


def _variants(token: str) -> list[str]:
    flip = "a" if token[5] != "a" else "b"
    return [
        "",
        "x",
        "not-a-token",
        token[:-1],
        token[:-4],
        token[:10],
        token + "a",
        token[:5] + flip + token[6:],
        token[:-1] + ("a" if token[-1] != "a" else "b"),
        token.replace(token[0], "1", 1),
        "a" * 200,
        "%00" + token,
        "ü" + token,
    ]


def test_bad_tokens_are_400_and_change_nothing(
    db: Db, client: TestClient, anna: tuple[int, int, str]
) -> None:
    cid, kid, token = anna
    wrong_kind = signer_from_settings(db.settings).sign(TokenKind.BOUNCE, cid, kid)
    wrong_key = TokenSigner(["another-key"]).sign(TokenKind.UNSUBSCRIBE, cid, kid)
    before = everything(db)
    for bad in [*_variants(token), wrong_kind, wrong_key]:
        assert client.get(f"/u/{bad}").status_code in (400, 404), bad
        for body in (ONE_CLICK, {"action": "stop_all"}):
            r = client.post(f"/u/{bad}", data=body)
            assert r.status_code in (400, 404), bad
    for bad in (wrong_kind, wrong_key, token[:-1], token[:5] + "q" + token[6:]):
        assert client.get(f"/u/{bad}").status_code == 400
    assert everything(db) == before


def test_unknown_and_erased_contacts_get_the_same_404(db: Db, client: TestClient) -> None:
    kid = add_campaign(db)
    gone = add_contact(db, "gone@example.com", {Purpose.PROMOTIONAL})
    gone_token = link(db, gone, kid)
    with db.session() as s:
        suppression.forget(s, "gone@example.com")
        s.commit()
    unknown_token = token_for(db, gone + 1000, kid)
    before = everything(db)
    pages = []
    for token in (gone_token, unknown_token):
        for response in (
            client.get(f"/u/{token}"),
            client.post(f"/u/{token}", data=ONE_CLICK),
            client.post(f"/u/{token}", data={"action": "stop_all"}),
        ):
            assert response.status_code == 404
            pages.append(response.text)
    assert len(set(pages)) == 1
    assert "gone@example.com" not in pages[0]
    assert everything(db) == before


def test_test_message_tokens_name_nobody(db: Db, client: TestClient) -> None:
    # Test sends sign contact id 0: such a link must lead nowhere and change nothing.
    kid = add_campaign(db)
    assert client.post(f"/u/{token_for(db, 0, kid)}", data=ONE_CLICK).status_code == 404


def test_tokens_signed_with_an_older_key_still_work(db: Db, anna: tuple[int, int, str]) -> None:
    cid, kid, _ = anna
    old_token = TokenSigner(["old-key"]).sign(TokenKind.UNSUBSCRIBE, cid, kid)
    rotated = replace(db.settings, secret_key="new-key,old-key")
    with TestClient(create_app(rotated, db.engine)) as c:
        assert c.get(f"/u/{old_token}").status_code == 200
        assert c.post(f"/u/{old_token}", data=ONE_CLICK).status_code == 200
        # Case may be changed by mail systems; the token still names the same person.
        assert c.get(f"/u/{old_token.upper()}").status_code == 200
    assert states(db, cid)[Purpose.PROMOTIONAL] == ConsentState.WITHDRAWN


def test_oversized_bodies_are_refused(
    db: Db, client: TestClient, anna: tuple[int, int, str]
) -> None:
    _, _, token = anna
    before = everything(db)
    big = b"List-Unsubscribe=One-Click&pad=" + b"x" * MAX_BODY
    r = client.post(f"/u/{token}", content=big, headers={"content-type": FORM})
    assert r.status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: the cap must hold on the stream
        yield b"List-Unsubscribe=One-Click&pad="
        for _ in range(20):
            yield b"y" * 1024

    r = client.post(f"/u/{token}", content=chunks(), headers={"content-type": FORM})
    assert r.status_code == 413
    # A lying Content-Length changes nothing either.
    r = client.post(
        f"/u/{token}", content=big, headers={"content-type": FORM, "content-length": "10"}
    )
    assert r.status_code in (400, 413)
    big_multipart = {"List-Unsubscribe": (None, "One-Click"), "pad": (None, "z" * MAX_BODY)}
    assert client.post(f"/u/{token}", files=big_multipart).status_code == 413
    assert everything(db) == before


@pytest.mark.parametrize(
    "content_type", [None, "application/json", "text/plain", "application/xml", "image/png"]
)
def test_other_content_types_are_415(
    db: Db, client: TestClient, anna: tuple[int, int, str], content_type: str | None
) -> None:
    _, _, token = anna
    before = everything(db)
    headers = {"content-type": content_type} if content_type else {}
    r = client.post(f"/u/{token}", content=b"List-Unsubscribe=One-Click", headers=headers)
    assert r.status_code == 415
    assert everything(db) == before


@pytest.mark.parametrize(
    "body",
    [
        {"other": "x"},
        {"List-Unsubscribe": "Two-Clicks"},
        {"action": "delete_everything"},
        {"action": ["stop_all", "keep"]},
        {"action": "keep", "keep": "everything"},
        {"action": "keep", "keep": ["promotional", "sms"]},
        {"action": ""},
    ],
)
def test_forms_that_ask_for_nothing_known_are_400(
    db: Db, client: TestClient, anna: tuple[int, int, str], body: dict[str, Any]
) -> None:
    _, _, token = anna
    before = everything(db)
    assert client.post(f"/u/{token}", data=body).status_code == 400
    assert client.post(f"/u/{token}", headers={"content-type": FORM}).status_code == 400
    assert everything(db) == before


def test_file_uploads_and_broken_multipart_are_400(
    db: Db, client: TestClient, anna: tuple[int, int, str]
) -> None:
    _, _, token = anna
    before = everything(db)
    r = client.post(
        f"/u/{token}",
        data=ONE_CLICK,
        files={"upload": ("a.txt", b"hello", "text/plain")},
    )
    assert r.status_code == 400
    for content_type in ("multipart/form-data", "multipart/form-data; boundary=zzz"):
        r = client.post(
            f"/u/{token}",
            content=b"List-Unsubscribe=One-Click",
            headers={"content-type": content_type},
        )
        assert r.status_code == 400
    assert everything(db) == before


# ---------------------------------------------------------------- headers, methods, paths


def _assert_private(r: Any) -> None:
    assert "set-cookie" not in r.headers
    csp = r.headers["content-security-policy"]
    for directive in (
        "default-src 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ):
        assert directive in csp
    assert "unsafe-inline" not in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "no-referrer"
    assert r.headers["cache-control"] == "no-store"


def test_every_response_is_private_and_cookie_free(
    db: Db, client: TestClient, anna: tuple[int, int, str]
) -> None:
    _, _, token = anna
    responses = [
        client.get(f"/u/{token}"),
        client.post(f"/u/{token}", data={"action": "keep", "keep": "promotional"}),
        client.post(f"/u/{token}", data=ONE_CLICK),
        client.get("/u/garbage"),
        client.get(f"/u/{token_for(db, 99999, 1)}"),
        client.put(f"/u/{token}"),
        client.post(f"/u/{token}", content=b"x", headers={"content-type": "text/plain"}),
        client.get("/health"),
        client.get("/"),
        client.get("/favicon.ico"),
    ]
    for r in responses:
        _assert_private(r)
    assert not client.cookies


def test_the_inline_style_is_allowed_by_its_hash(
    client: TestClient, anna: tuple[int, int, str]
) -> None:
    _, _, token = anna
    r = client.get(f"/u/{token}")
    style = re.search(r"<style>(.*?)</style>", r.text, re.S)
    assert style is not None and "</" not in style.group(1)
    digest = base64.b64encode(hashlib.sha256(style.group(1).encode()).digest()).decode()
    assert f"style-src 'sha256-{digest}'" in r.headers["content-security-policy"]
    # Nothing on the page loads from elsewhere.
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", r.text)


def test_methods_and_paths(client: TestClient, anna: tuple[int, int, str]) -> None:
    _, _, token = anna
    for method in ("PUT", "DELETE", "PATCH", "OPTIONS"):
        r = client.request(method, f"/u/{token}")
        assert r.status_code == 405, method
        assert set(r.headers["allow"].replace(" ", "").split(",")) >= {"GET", "POST"}
    assert client.post("/health").status_code == 405
    for path in ("/", "/u", "/u/", f"/u/{token}/", f"/u/{token}/x", "/admin", "/favicon.ico"):
        r = client.get(path)
        assert r.status_code == 404, path
        assert r.headers["content-type"].startswith("text/html")


def test_health(db: Db, client: TestClient) -> None:
    r = client.get("/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_health_and_pages_say_503_without_a_database(db: Db, tmp_path: Any) -> None:
    broken = create_engine(f"sqlite:///{tmp_path}/missing/dir/x.db")
    token = token_for(db, 1, 1)
    with TestClient(create_app(db.settings, broken)) as c:
        r = c.get("/health")
        assert r.status_code == 503 and r.json() == {"status": "unavailable"}
        assert c.get(f"/u/{token}").status_code == 503
        assert c.post(f"/u/{token}", data=ONE_CLICK).status_code == 503
    broken.dispose()


def test_an_unexpected_error_is_a_plain_500(
    db: Db, anna: tuple[int, int, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, _, token = anna

    def boom(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("secret detail")

    monkeypatch.setattr(preferences, "view", boom)
    with TestClient(create_app(db.settings, db.engine), raise_server_exceptions=False) as c:
        r = c.get(f"/u/{token}")
    assert r.status_code == 500
    assert "secret detail" not in r.text and "Traceback" not in r.text
    _assert_private(r)


# ---------------------------------------------------------------- rate limit


def test_rate_limit_sheds_floods_but_never_blocks_the_page(
    db: Db, client: TestClient, anna: tuple[int, int, str]
) -> None:
    cid, _, token = anna
    for _ in range(RATE_LIMIT):
        assert client.post(f"/u/{token}", data=ONE_CLICK).status_code == 200
    r = client.post(f"/u/{token}", data=ONE_CLICK)
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    _assert_private(r)
    # GET is never limited, and a different choice is not blocked by a flood of another.
    for _ in range(RATE_LIMIT + 5):
        assert client.get(f"/u/{token}").status_code == 200
    assert client.post(f"/u/{token}", data={"action": "stop_all"}).status_code == 200
    assert contact(db, cid).suppressed == SuppressionReason.UNSUBSCRIBED
    # Another person's link is untouched by the flood.
    other = add_contact(db, "other@example.com", {Purpose.PROMOTIONAL})
    assert client.post(f"/u/{link(db, other, anna[1])}", data=ONE_CLICK).status_code == 200


def test_rate_limiter_window_and_memory() -> None:
    now = [0.0]
    limiter = RateLimiter(3, 60.0, clock=lambda: now[0], max_keys=10)
    assert [limiter.hit("a") for _ in range(3)] == [None, None, None]
    assert limiter.hit("a") == 60.0
    now[0] = 59.0
    assert limiter.hit("a") == pytest.approx(1.0)
    assert limiter.hit("b") is None
    now[0] = 60.0
    assert limiter.hit("a") is None
    for i in range(100):
        limiter.hit(i)
    assert len(limiter._windows) <= 10


# ---------------------------------------------------------------- hypothesis

FIELD_NAMES = ["action", "keep", "List-Unsubscribe", "list-unsubscribe", "x", ""]
FIELD_VALUES = [
    "stop_kind",
    "stop_all",
    "keep",
    "promotional",
    "research",
    "third_party",
    "One-Click",
    "one-click",
    "",
]
fields = st.lists(
    st.tuples(
        st.one_of(st.sampled_from(FIELD_NAMES), st.text(max_size=20)),
        st.one_of(st.sampled_from(FIELD_VALUES), st.text(max_size=40)),
    ),
    max_size=8,
)
content_types = st.one_of(
    st.sampled_from(
        [FORM, "multipart/form-data; boundary=b0undary", "multipart/form-data", "text/plain"]
    ),
    st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30),
)


def _mutations(token: str) -> st.SearchStrategy[str]:
    # Fixed bounds (ids, and so token lengths, differ between examples on PostgreSQL).
    pos = st.integers(0, 60).map(lambda i: min(i, len(token)))
    alphabet = st.sampled_from("abcdefghijklmnopqrstuvwxyz234567ABC01-_.%")
    return st.one_of(
        st.builds(lambda i, c: token[:i] + c + token[i + 1 :], pos, alphabet),
        st.builds(lambda i, c: token[:i] + c + token[i:], pos, alphabet),
        st.builds(lambda i: token[:i] + token[i + 1 :], pos),
        st.builds(lambda i: token[:i], pos),
        st.builds(lambda i: token.upper()[:i] + token[i:], pos),
    )


def _fresh_world(db: Db) -> tuple[int, int, int, str]:
    """Three people and a campaign; returns (target, other, campaign, target's token)."""
    db.clean()
    kid = add_campaign(db)
    target = add_contact(db, "target@example.com", {Purpose.PROMOTIONAL, Purpose.RESEARCH})
    other = add_contact(db, "other@example.com", {Purpose.PROMOTIONAL, Purpose.THIRD_PARTY})
    add_contact(db, "third@example.com", {Purpose.RESEARCH})
    return target, other, kid, link(db, target, kid)


@pytest.fixture
def fuzz_client(db: Db) -> Iterator[TestClient]:
    # Fuzzing repeats one token many times: a limiter that never sheds.
    app = create_app(db.settings, db.engine, limiter=RateLimiter(10**9))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_fuzzed_tokens_never_500_and_never_touch_anyone_else(
    db: Db, fuzz_client: TestClient, data: st.DataObject
) -> None:
    target, _, kid, token = _fresh_world(db)
    candidate = data.draw(st.one_of(st.text(max_size=60), _mutations(token)), label="token")
    assume("/" not in candidate)
    genuine = signer_from_settings(db.settings).verify(TokenKind.UNSUBSCRIBE, candidate)
    before_all = everything(db)
    before_others = others(db, target)
    # Percent-encoded, so that the server sees exactly the candidate.
    path = "/u/" + quote(candidate, safe="")
    for response in (fuzz_client.get(path), fuzz_client.post(path, data=ONE_CLICK)):
        assert response.status_code in (200, 400, 404)
        assert (response.status_code == 200) == (genuine is not None)
    if genuine is None:
        assert everything(db) == before_all
    else:
        assert genuine == (target, kid)
        assert others(db, target) == before_others


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    form=fields,
    raw=st.one_of(st.none(), st.binary(max_size=300)),
    content_type=content_types,
    multipart=st.booleans(),
)
def test_fuzzed_bodies_never_500_and_never_touch_anyone_else(
    db: Db,
    fuzz_client: TestClient,
    form: list[tuple[str, str]],
    raw: bytes | None,
    content_type: str,
    multipart: bool,
) -> None:
    target, _, _, token = _fresh_world(db)
    before = others(db, target)
    if raw is not None:
        r = fuzz_client.post(f"/u/{token}", content=raw, headers={"content-type": content_type})
    elif multipart:
        r = fuzz_client.post(f"/u/{token}", files=[(k, (None, v)) for k, v in form])
    else:
        r = fuzz_client.post(f"/u/{token}", content=urlencode(form), headers={"content-type": FORM})
    assert r.status_code in (200, 400, 413, 415), r.status_code
    assert others(db, target) == before
    if r.status_code != 200:
        assert states(db, target) == {
            Purpose.PROMOTIONAL: ConsentState.GRANTED,
            Purpose.RESEARCH: ConsentState.GRANTED,
            Purpose.THIRD_PARTY: ConsentState.NONE,
        }


# ---------------------------------------------------------------- concurrency


def test_concurrent_posts_each_land_once(db: Db) -> None:
    """Many requests at once (batched into shared transactions on SQLite): each applied."""
    kid = add_campaign(db)
    people = [add_contact(db, f"p{i}@example.com", {Purpose.PROMOTIONAL}) for i in range(40)]
    app = create_app(db.settings, db.engine)

    async def run() -> list[int]:
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://test") as http:
            requests = [http.post(f"/u/{link(db, cid, kid)}", data=ONE_CLICK) for cid in people]
            # The same person twice more at once, and a choice that fails alone.
            again = token_for(db, people[0], kid)
            requests += [http.post(f"/u/{again}", data=ONE_CLICK) for _ in range(2)]
            # A link that came in no message fails alone.
            requests.append(http.post(f"/u/{token_for(db, people[1], 424242)}", data=ONE_CLICK))
            return [r.status_code for r in await asyncio.gather(*requests)]

    try:
        statuses = asyncio.run(run())
    finally:
        app.state.web.close()
    assert statuses == [200] * 42 + [404]
    one_clicks = [e for e in events(db) if e.source == "one-click"]
    assert sorted(e.contact_id for e in one_clicks) == sorted(people)


def test_sqlite_worker_runs_a_failing_job_alone(db: Db) -> None:
    from mailer.web import SqliteWorker

    cid = add_contact(db, "w@example.com", {Purpose.PROMOTIONAL, Purpose.RESEARCH})
    worker = SqliteWorker(db.engine)

    def withdraw(purpose: Purpose) -> Any:
        def work(s: Any) -> bool:
            c = s.get(Contact, cid)
            consent.record(s, c, purpose, granted=False, source="one-click", policy_version="1")
            return True

        return work

    def fail(s: Any) -> None:
        raise ValueError("this one only")

    async def run() -> list[Any]:
        jobs = [worker.submit(withdraw(Purpose.PROMOTIONAL)), worker.submit(fail)]
        jobs.append(worker.submit(withdraw(Purpose.RESEARCH)))
        return await asyncio.gather(*jobs, return_exceptions=True)

    try:
        results = asyncio.run(run())
    finally:
        worker.close()
    assert results[0] is True and results[2] is True
    assert isinstance(results[1], ValueError)
    assert states(db, cid)[Purpose.PROMOTIONAL] == ConsentState.WITHDRAWN
    assert states(db, cid)[Purpose.RESEARCH] == ConsentState.WITHDRAWN
