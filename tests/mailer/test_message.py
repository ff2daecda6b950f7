"""Per-recipient messages: valid MIME parsed back, headers, tokens, no injection, DKIM."""

from __future__ import annotations

import base64
import binascii
import email.parser
import email.policy
import html
import re
import shutil
import subprocess
import time
import types
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any, cast

import dkim
import premailer
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from campaigns.config import Settings
from campaigns.models import Campaign, Contact
from mailer.dkim import DkimSigner
from mailer.message import (
    HTML,
    TEXT,
    URL_IN_HTML,
    URL_IN_TEXT,
    CompiledCampaign,
    Recipient,
    Slot,
    clean,
    format_address,
    parse_sender,
    phrase,
    qp,
    unstructured_header,
)
from mailer.render import compile_campaign
from mailer.tokens import TokenKind, TokenSigner

SIGNER = TokenSigner(["message-key"])
POSTAL = "Test Shop, 1 Test Street, Testville"
HEADERS = {
    "Date",
    "From",
    "To",
    "Subject",
    "Message-ID",
    "List-Id",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "MIME-Version",
    "Content-Type",
}


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": Path("/nonexistent"),
        "secret_key": "message-key",
        "public_url": "https://news.shop.example",
        "sender": "Shop News <news@shop.example>",
        "postal_address": POSTAL,
        "brand_name": "Test Shop",
    }
    values.update(overrides)
    return Settings(**values)


def make_campaign(kind: str = "promotional", **overrides: Any) -> Campaign:
    values: dict[str, Any] = {
        "id": 21,
        "name": "Spring sale",
        "kind": kind,
        "subject": "Spring sale",
        "body": "Hello {{ name | default('there') }}!\n\nBest wishes from {{ brand }}.\n",
    }
    if kind == "third_party_offer":
        values["sponsor"] = "Acme Travel"
    if kind == "survey":
        values["survey_url"] = "https://survey.example/s/1"
    values.update(overrides)
    return Campaign(**values)


def compiled(campaign: Campaign | None = None, **settings_overrides: Any) -> CompiledCampaign:
    return compile_campaign(
        campaign or make_campaign(), make_settings(**settings_overrides), signer=SIGNER
    )


def parse(raw: bytes) -> EmailMessage:
    msg = email.parser.BytesParser(policy=email.policy.default).parsebytes(raw)
    return cast(EmailMessage, msg)


def body(msg: EmailMessage, kind: str) -> str:
    return cast(EmailMessage, msg.get_body((kind,))).get_content().replace("\r\n", "\n")


def assert_wire_format(raw: bytes) -> None:
    """CRLF everywhere, no line over 998 octets, body lines within 76, ends with CRLF."""
    assert raw.endswith(b"\r\n")
    assert raw.count(b"\n") == raw.count(b"\r\n") == raw.count(b"\r")
    _head, _, rest = raw.partition(b"\r\n\r\n")
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    assert all(len(line) <= 76 for line in rest.split(b"\r\n"))
    assert raw.isascii()


def header_names(raw: bytes) -> list[str]:
    """Names of the top-level header fields, straight from the bytes."""
    head = raw.partition(b"\r\n\r\n")[0].decode("ascii")
    names = []
    for line in head.split("\r\n"):
        if line[:1] in (" ", "\t"):
            continue
        name, colon, _ = line.partition(":")
        assert colon and re.fullmatch(r"[A-Za-z-]+", name), line
        names.append(name)
    return names


ANN = Recipient(contact_id=7, email="ann@example.org", name="Ann Lee", attributes={})


def test_message_is_valid_multipart_alternative() -> None:
    raw = compiled().build(ANN)
    assert_wire_format(raw)
    msg = parse(raw)
    assert msg.get_content_type() == "multipart/alternative"
    kinds = [p.get_content_type() for p in msg.iter_parts()]
    assert kinds == ["text/plain", "text/html"]
    for part in msg.walk():
        assert not part.defects
        if not part.is_multipart():
            assert part.get_content_charset() == "utf-8"
            assert part["Content-Transfer-Encoding"] == "quoted-printable"
    assert "Hello Ann Lee!" in body(msg, "plain")
    assert "Hello Ann Lee!" in body(msg, "html")
    assert "Best wishes from Test Shop." in body(msg, "plain")


def test_headers_present_and_right() -> None:
    campaign = compiled(reply_to="Help Desk <help@shop.example>", return_domain="Ret.Shop.Example")
    raw = campaign.build(ANN)
    msg = parse(raw)
    assert set(header_names(raw)) == HEADERS | {"Reply-To"}
    assert len(header_names(raw)) == len(HEADERS) + 1
    assert msg["From"] == "Shop News <news@shop.example>"
    assert msg["To"] == "Ann Lee <ann@example.org>"
    assert msg["Reply-To"] == "Help Desk <help@shop.example>"
    assert msg["Subject"] == "Spring sale"
    assert msg["MIME-Version"] == "1.0"
    assert msg["List-Id"] == "Spring sale <spring-sale.shop.example>"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert msg["Date"].datetime is not None
    assert re.fullmatch(r"<[0-9a-f]{18}\.[0-9a-f]+@shop\.example>", msg["Message-ID"])
    assert "Precedence" not in msg and "Auto-Submitted" not in msg
    urls = re.findall(r"<([^>]+)>", msg["List-Unsubscribe"])
    assert len(urls) == 2
    web = re.fullmatch(r"https://news\.shop\.example/u/([a-z2-7]+)", urls[0])
    mailto = re.fullmatch(r"mailto:unsubscribe\+([a-z2-7]+)@ret\.shop\.example", urls[1])
    assert web and mailto and web.group(1) == mailto.group(1)
    assert SIGNER.verify(TokenKind.UNSUBSCRIBE, web.group(1)) == (7, 21)
    # The footer link is the same token.
    assert f"https://news.shop.example/u/{web.group(1)}" in body(msg, "plain")


def test_without_return_domain_only_the_web_link() -> None:
    campaign = compiled()
    msg = parse(campaign.build(ANN))
    assert "mailto:" not in msg["List-Unsubscribe"]
    assert "Reply-To" not in msg
    assert campaign.envelope_from(ANN) == "news@shop.example"


def test_envelope_from_is_verp_with_bounce_token() -> None:
    campaign = compiled(return_domain="ret.shop.example")
    sender = campaign.envelope_from(ANN)
    found = re.fullmatch(r"bounces\+([a-z2-7]+)@ret\.shop\.example", sender)
    assert found and len(sender.partition("@")[0]) <= 64
    assert SIGNER.verify(TokenKind.BOUNCE, found.group(1)) == (7, 21)
    assert SIGNER.verify(TokenKind.UNSUBSCRIBE, found.group(1)) is None


def test_message_ids_unique_or_given() -> None:
    campaign = compiled()
    ids = {parse(campaign.build(ANN))["Message-ID"] for _ in range(50)}
    assert len(ids) == 50
    given_id = campaign.new_message_id()
    assert compiled().new_message_id().split(".")[0] != given_id.split(".")[0]  # per compile
    assert parse(campaign.build(ANN, message_id=given_id))["Message-ID"] == given_id


def test_non_ascii_subject_and_name_round_trip() -> None:
    subject = "Früh­lings­angebot: 50 % auf alles — nur heute! 🌸 " * 3
    campaign = compiled(make_campaign(subject=subject, name="Frühling"))
    zoe = Recipient(8, "zoe@example.org", "Zoë Ångström-Ñúñez 山田", {})
    raw = campaign.build(zoe)
    assert_wire_format(raw)
    msg = parse(raw)
    assert msg["Subject"] == clean(subject)
    assert msg["To"].addresses[0].display_name == "Zoë Ångström-Ñúñez 山田"
    assert msg["To"].addresses[0].addr_spec == "zoe@example.org"
    assert msg["List-Id"] == "Frühling <fr-hling.shop.example>"
    assert "Hello Zoë Ångström-Ñúñez 山田!" in body(msg, "plain")
    for name in ("Subject", "To"):
        assert not msg[name].defects


def test_ascii_names_needing_quotes() -> None:
    odd = Recipient(9, "o@example.org", 'Lee, Ann "The Boss" \\o/', {})
    msg = parse(compiled().build(odd))
    assert msg["To"].addresses[0].display_name == 'Lee, Ann "The Boss" \\o/'
    assert msg["To"].addresses[0].addr_spec == "o@example.org"


def test_long_lines_stay_within_limits() -> None:
    word = "x" * 3000
    campaign = compiled(make_campaign(body=f"{word} {{{{ name }}}} {word}\n", subject="y" * 1200))
    raw = campaign.build(Recipient(10, "l@example.org", "N" * 500, {"a": "b"}))
    assert_wire_format(raw)
    msg = parse(raw)
    assert msg["Subject"] == "y" * 1200
    assert f"{word} {'N' * 200} {word}" in body(msg, "plain")


def test_invalid_recipient_address_refused() -> None:
    campaign = compiled()
    for bad in ("no-at-sign", "a@b.example\r\nBcc: x@evil.example", "ä@example.org", ""):
        with pytest.raises(ValueError):
            campaign.build(Recipient(11, bad, "X", {}))


def test_premailer_runs_once_per_campaign(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = premailer.Premailer.transform

    def counting(self: premailer.Premailer, *args: Any, **kwargs: Any) -> str:
        calls.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(premailer.Premailer, "transform", counting)
    campaign = compiled(make_campaign(body="Hi {{ first_name }} of {{ attributes.city }}\n"))
    messages = [
        campaign.build(Recipient(i, f"p{i}@example.org", f"Person {i}", {"city": f"Town {i}"}))
        for i in range(100)
    ]
    assert len(calls) == 1
    assert len(set(messages)) == 100
    for i in (0, 57, 99):
        msg = parse(messages[i])
        assert f"Hi Person of Town {i}" in body(msg, "plain")
        assert f"Hi Person of Town {i}" in body(msg, "html")
        token = re.search(r"/u/([a-z2-7]+)>", msg["List-Unsubscribe"])
        assert token and SIGNER.verify(TokenKind.UNSUBSCRIBE, token.group(1)) == (i, 21)


def test_every_kind_builds() -> None:
    for kind in ("promotional", "survey", "third_party_offer"):
        raw = compiled(make_campaign(kind)).build(ANN)
        assert_wire_format(raw)
        assert parse(raw).get_content_type() == "multipart/alternative"


# --- header injection -------------------------------------------------------------------

nasty = st.lists(
    st.characters(codec="utf-8", exclude_characters="{}%#")
    | st.sampled_from(["\r", "\n", "\r\n", "\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\u2029"])
    | st.sampled_from(["Bcc: evil@x.example", ":", "=?utf-8?b?QmNjOiB4?=", '"', "<", ">"]),
    max_size=30,
).map("".join)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(subject=nasty, campaign_name=nasty, sender_name=nasty, sponsor=nasty)
def test_injection_in_campaign_fields_never_adds_headers(
    subject: str, campaign_name: str, sender_name: str, sponsor: str
) -> None:
    assume(clean(subject) and clean(sponsor))
    sender = '"' + sender_name.replace("\\", "").replace('"', "") + '" <news@shop.example>'
    campaign = make_campaign(
        "third_party_offer", subject=subject, name=campaign_name or "x", sponsor=sponsor
    )
    raw = compile_campaign(
        campaign, make_settings(sender=sender, reply_to=sender), signer=SIGNER
    ).build(ANN)
    assert_wire_format(raw)
    assert sorted(header_names(raw)) == sorted(HEADERS | {"Reply-To"})
    msg = parse(raw)
    assert msg["Subject"] == clean(subject)
    assert msg["From"].addresses[0].addr_spec == "news@shop.example"
    assert clean(sponsor) in " ".join(body(msg, "plain").split())


@settings(max_examples=200, deadline=None)
@given(name=nasty, attribute=nasty)
def test_injection_in_recipient_values_never_adds_headers(name: str, attribute: str) -> None:
    campaign = _INJECTION_CAMPAIGN
    raw = campaign.build(Recipient(12, "r@example.org", name, {"x": attribute}))
    assert_wire_format(raw)
    assert sorted(header_names(raw)) == sorted(HEADERS)
    msg = parse(raw)
    assert msg["To"].addresses[0].addr_spec == "r@example.org"
    # CPython's address parser reads the fold between two encoded words as a space (RFC
    # 2047 says to ignore it), so compare without whitespace.
    shown = msg["To"].addresses[0].display_name
    assert "".join(shown.split()) == "".join(clean(name, 200).split())
    assert msg["Subject"] == clean(f"About {clean(name, 200)}")
    assert f"[{clean(attribute)}]" in body(msg, "plain")
    assert f"[{html.escape(clean(attribute))}]" in body(msg, "html")
    for part in msg.walk():
        assert not part.defects


_INJECTION_CAMPAIGN = compile_campaign(
    make_campaign(
        subject="About {{ name }}",
        body="Value [{{ attributes.x }}] {{ attributes.none | default('a\\r\\nBcc: b') }}\n",
    ),
    make_settings(),
    signer=SIGNER,
)


# --- DKIM ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dkim_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test key")
    folder = tmp_path_factory.mktemp("dkim")
    key = folder / "private.pem"
    subprocess.run(
        ["openssl", "genrsa", "-traditional", "-out", str(key), "2048"],
        check=True,
        capture_output=True,
    )
    public_der = subprocess.run(
        ["openssl", "rsa", "-in", str(key), "-pubout", "-outform", "DER"],
        check=True,
        capture_output=True,
    ).stdout
    record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(public_der)
    return key, record


def test_dkim_signature_verifies_and_covers_unsubscribe(dkim_key: tuple[Path, bytes]) -> None:
    key_path, record = dkim_key
    signer = DkimSigner("mail", "shop.example", key_path)
    campaign = compile_campaign(make_campaign(), make_settings(), signer=SIGNER, dkim=signer)
    raw = campaign.build(ANN)
    assert raw.startswith(b"DKIM-Signature:")
    assert_wire_format(raw)

    def dns(name: bytes, timeout: int = 5) -> bytes:
        assert name == b"mail._domainkey.shop.example."
        return record

    assert dkim.verify(raw, dnsfunc=dns)
    signed = parse(raw)["DKIM-Signature"]
    tags = dict(t.strip().split("=", 1) for t in signed.split(";"))
    covered = re.sub(r"\s", "", tags["h"]).lower().split(":")
    for header in ("from", "to", "subject", "date", "message-id", "list-unsubscribe"):
        assert header in covered
    assert "list-unsubscribe-post" in covered
    assert tags["d"] == "shop.example" and tags["s"] == "mail"
    # Any change to a signed header or the body breaks it; so does an added header.
    assert not dkim.verify(raw.replace(b"Spring sale", b"Autumn sale", 1), dnsfunc=dns)
    assert not dkim.verify(raw.replace(b"Hello", b"Howdy", 1), dnsfunc=dns)
    head, sep, rest = raw.partition(b"\r\n\r\n")
    extra = head + b"\r\nList-Unsubscribe: <https://evil.example/>" + sep + rest
    assert not dkim.verify(extra, dnsfunc=dns)


def test_dkim_bad_key_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key")
    with pytest.raises(ValueError):
        DkimSigner("mail", "shop.example", bad)
    with pytest.raises(ValueError):
        DkimSigner("mail", "shop.example", tmp_path / "missing.pem")


def test_recipient_from_contact() -> None:
    contact = Contact(id=5, email="e@example.org", email_key="e@example.org", name="E")
    contact.attributes = {"city": "Rome"}
    recipient = Recipient.from_contact(contact)
    assert recipient == Recipient(5, "e@example.org", "E", {"city": "Rome"})


# --- one message, byte for byte --------------------------------------------------------


def direct_campaign(**overrides: Any) -> CompiledCampaign:
    """A CompiledCampaign built by hand: pieces as `mailer.render` hands them over."""
    values: dict[str, Any] = {
        "campaign_id": 21,
        "sender": "Shop News <news@shop.example>",
        "subject": ("Hello ", (1, TEXT), "!"),
        "text_part": (
            "Hi ",
            (1, TEXT),
            ",\nyour town:\n",
            (2, TEXT),
            "\nStop: https://news.shop.example/u/",
            (0, URL_IN_TEXT),
        ),
        "html_part": (
            "<p>Hi ",
            (1, HTML),
            '</p>\n<a href="https://shop.example/?m=',
            (3, URL_IN_HTML),
            '">x</a> <a href="https://news.shop.example/u/',
            (0, URL_IN_HTML),
            '">stop</a>',
        ),
        "slots": (
            Slot("token"),
            Slot("name"),
            Slot("attr", "city", (("upper", ()),)),
            Slot("email"),
        ),
        "signer": SIGNER,
        "public_url": "https://news.shop.example/",
        "list_id": "spring-sale.shop.example",
        "list_name": "Spring sale",
        "return_domain": " Ret.Shop.Example ",
        "boundary": "b0",
    }
    values.update(overrides)
    return CompiledCampaign(**values)


ODD_ANN = Recipient(7, "ann@example.org", 'Ann "A" <Lee>', {"City": "oslo & co"})


@pytest.fixture
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """mailer.message's clock stopped at 2023-11-14 22:13:20 UTC, in a UTC+1 zone."""
    now = [1_700_000_000]
    monkeypatch.setattr("mailer.message.time", types.SimpleNamespace(time=lambda: now[0]))
    monkeypatch.setenv("TZ", "CET-1")
    time.tzset()
    yield now
    monkeypatch.undo()
    time.tzset()


def test_a_whole_message_byte_for_byte(fixed_clock: list[int]) -> None:
    raw = direct_campaign().build(ODD_ANN, message_id="<given.1@shop.example>")
    token = re.search(rb"/u/([a-z2-7]+)>", raw)
    assert token is not None
    assert SIGNER.verify(TokenKind.UNSUBSCRIBE, token.group(1).decode()) == (7, 21)
    expected = (
        b"Date: Tue, 14 Nov 2023 23:13:20 +0100\r\n"  # local time, with its offset
        b"From: Shop News <news@shop.example>\r\n"
        b"List-Id: Spring sale <spring-sale.shop.example>\r\n"
        b'To: "Ann \\"A\\" <Lee>" <ann@example.org>\r\n'
        b'Subject: Hello Ann "A" <Lee>!\r\n'
        b"Message-ID: <given.1@shop.example>\r\n"
        b"List-Unsubscribe: <https://news.shop.example/u/TOKEN>,\r\n"
        b" <mailto:unsubscribe+TOKEN@ret.shop.example>\r\n"
        b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
        b"MIME-Version: 1.0\r\n"
        b'Content-Type: multipart/alternative; boundary="b0"\r\n'
        b"\r\n"
        b"--b0\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n"
        b"\r\n"
        # Literal text and values are joined by soft line breaks ("=" CRLF).
        b"Hi=20=\r\n"
        b'Ann "A" <Lee>=\r\n'
        b",\r\n"
        b"your town:\r\n"  # a line break needs no soft break after it
        b"OSLO & CO=\r\n"
        b"\r\n"
        b"Stop: https://news.shop.example/u/=\r\n"
        b"TOKEN=\r\n"  # the part ends with a value: its soft break ends the text
        b"\r\n"
        b"--b0\r\n"
        b"Content-Type: text/html; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n"
        b"\r\n"
        b"<p>Hi=20=\r\n"
        b"Ann &quot;A&quot; &lt;Lee&gt;=\r\n"
        b"</p>\r\n"
        b'<a href=3D"https://shop.example/?m=3D=\r\n'
        b"ann%40example.org=\r\n"
        b'">x</a> <a href=3D"https://news.shop.example/u/=\r\n'
        b"TOKEN=\r\n"
        b'">stop</a>'  # the last literal text: no soft break
        b"\r\n"
        b"--b0--\r\n"
    ).replace(b"TOKEN", token.group(1))
    assert raw == expected
    assert_wire_format(raw)
    msg = parse(raw)
    assert body(msg, "plain") == (
        f'Hi Ann "A" <Lee>,\nyour town:\nOSLO & CO\n'
        f"Stop: https://news.shop.example/u/{token.group(1).decode()}"
    )


def test_date_is_now_in_local_time(fixed_clock: list[int]) -> None:
    campaign = direct_campaign()
    assert campaign.build(ANN).startswith(b"Date: Tue, 14 Nov 2023 23:13:20 +0100\r\nFrom: ")
    assert campaign.build(ANN).startswith(b"Date: Tue, 14 Nov 2023 23:13:20 +0100\r\n")
    fixed_clock[0] += 61
    assert campaign.build(ANN).startswith(b"Date: Tue, 14 Nov 2023 23:14:21 +0100\r\n")
    fixed_clock[0] += 1
    assert campaign.build(ANN).startswith(b"Date: Tue, 14 Nov 2023 23:14:22 +0100\r\n")


def head_of(raw: bytes) -> list[bytes]:
    """The header lines, folds kept, without the Date line."""
    return raw.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]


def test_without_return_domain_or_list_name_or_recipient_name() -> None:
    campaign = direct_campaign(return_domain="  ", list_name="", reply_to="   ")
    raw = campaign.build(Recipient(7, "ann@example.org"))
    lines = head_of(raw)
    assert lines[:4] == [
        b"From: Shop News <news@shop.example>",
        b"List-Id: <spring-sale.shop.example>",
        b"To: ann@example.org",
        b"Subject: Hello !",
    ]
    unsubscribe = [line for line in lines if line.startswith(b"List-Unsubscribe:")]
    assert len(unsubscribe) == 1
    assert re.fullmatch(
        rb"List-Unsubscribe: <https://news\.shop\.example/u/[a-z2-7]+>", unsubscribe[0]
    )
    assert b"mailto" not in raw
    assert campaign.envelope_from(ANN) == "news@shop.example"


def test_defaults_are_no_list_name_no_reply_to_no_verp() -> None:
    campaign = CompiledCampaign(
        campaign_id=3,
        sender="news@shop.example",
        subject=("Hi",),
        html_part=("<p>x ", (0, URL_IN_HTML)),
        text_part=("x ", (0, URL_IN_TEXT)),
        slots=(Slot("token"),),
        signer=SIGNER,
        public_url="https://news.shop.example",
        list_id="hi.shop.example",
        boundary="b1",
    )
    raw = campaign.build(ANN)
    assert head_of(raw)[:4] == [
        b"From: news@shop.example",
        b"List-Id: <hi.shop.example>",
        b"To: Ann Lee <ann@example.org>",
        b"Subject: Hi",
    ]
    assert b"mailto:" not in raw
    assert campaign.envelope_from(ANN) == "news@shop.example"


def test_reply_to_follows_from() -> None:
    campaign = direct_campaign(reply_to=" Help Desk <help@shop.example> ")
    lines = head_of(campaign.build(ANN))
    assert lines[:3] == [
        b"From: Shop News <news@shop.example>",
        b"Reply-To: Help Desk <help@shop.example>",
        b"List-Id: Spring sale <spring-sale.shop.example>",
    ]
    with pytest.raises(ValueError, match="has no valid email address"):
        direct_campaign(reply_to="Help Desk <help-at-shop.example>")


def test_verp_sender_and_message_id_domain_are_lower_case() -> None:
    campaign = direct_campaign(sender="Shop News <News@Shop.Example>")
    found = re.fullmatch(r"bounces\+([a-z2-7]+)@ret\.shop\.example", campaign.envelope_from(ANN))
    assert found and SIGNER.verify(TokenKind.BOUNCE, found.group(1)) == (7, 21)
    raw = campaign.build(ANN)
    assert head_of(raw)[0] == b"From: Shop News <News@Shop.Example>"
    first, second = parse(raw)["Message-ID"], campaign.new_message_id()
    assert re.fullmatch(r"<[0-9a-f]{18}\.0@shop\.example>", first)
    assert second == first.replace(".0@", ".1@")


@pytest.mark.parametrize(
    ("public_url", "base"),
    [
        ("https://news.shop.example//", "https://news.shop.example/u/"),
        ("https://shop.example/NEWSBOX/", "https://shop.example/NEWSBOX/u/"),
        ("https://shop.example/news", "https://shop.example/news/u/"),
    ],
)
def test_unsubscribe_url_under_the_public_url(public_url: str, base: str) -> None:
    url = direct_campaign(public_url=public_url).unsubscribe_url(ANN)
    assert url.startswith(base)
    assert SIGNER.verify(TokenKind.UNSUBSCRIBE, url.removeprefix(base)) == (7, 21)


def test_a_static_subject_of_several_pieces() -> None:
    campaign = direct_campaign(subject=("Spring", " sale ", "ends"))
    assert head_of(campaign.build(ANN))[3] == b"Subject: Spring sale ends"


def test_a_caller_message_id_is_one_clean_line() -> None:
    raw = direct_campaign().build(ANN, message_id="<a.1@shop.example>\r\nBcc: evil@example.net")
    assert b"Message-ID: <a.1@shop.example> Bcc: evil@example.net\r\n" in raw
    assert sorted(header_names(raw)) == sorted(HEADERS)
    # However long, it stays far within the 998 octets of a line.
    raw = direct_campaign().build(ANN, message_id="<" + "m" * 1500 + "@shop.example>")
    assert_wire_format(raw)
    assert b"Message-ID: <" + b"m" * 249 + b"\r\n" in raw


def test_a_value_that_fills_a_line_gets_a_soft_break_that_fits() -> None:
    campaign = direct_campaign()
    for length in (74, 75, 76, 77, 150, 151):
        raw = campaign.build(Recipient(7, "ann@example.org", "N" * length))
        assert_wire_format(raw)
        assert f"Hi {'N' * length},\n" in body(parse(raw), "plain")


def test_empty_and_missing_values_leave_nothing() -> None:
    raw = direct_campaign().build(Recipient(7, "ann@example.org", "", {"city": None}))  # type: ignore[dict-item]
    assert b"Hi=20=\r\n,\r\nyour town:\r\n\r\nStop:" in raw


def test_attributes_found_whatever_the_case_of_the_column() -> None:
    slot = Slot("attr", "City")
    assert slot.value(Recipient(1, "a@example.org", "", {"city": "Oslo"})) == "Oslo"
    assert slot.value(Recipient(1, "a@example.org", "", {"CITY": "Rome", "City": "Bonn"})) == "Bonn"
    assert slot.value(Recipient(1, "a@example.org", "", {"town": "Oslo"})) == ""
    assert slot.value(Recipient(1, "a@example.org", "", {"city": "a\r\nb  c"})) == "a b c"


@pytest.mark.parametrize(
    ("source", "filters", "name", "expected"),
    [
        ("name", (), "  Mary  Ann\nSmith ", "Mary Ann Smith"),
        ("first_name", (), "  Mary  Ann Smith", "Mary"),
        ("email", (), "x", "ann@example.org"),
        ("name", (("default", ("you",)),), "", "you"),
        ("name", (("default", ("you",)),), "Mary", "Mary"),
        ("name", (("default", ()),), "", ""),
        ("name", (("upper", ()),), "Mary Ann", "MARY ANN"),
        ("name", (("lower", ()),), "Mary Ann", "mary ann"),
        ("name", (("capitalize", ()),), "mARY ann", "Mary ann"),
        ("name", (("title", ()),), "mary-ann o'neil", "Mary-Ann O'neil"),
        ("name", (("urlencode", ()),), "A&B /c", "A%26B%20%2Fc"),
        ("name", (("escape", ()),), "<b>", "<b>"),
        ("name", (("default", ("you",)), ("upper", ())), "", "YOU"),
    ],
)
def test_slot_values_and_filters(
    source: str, filters: tuple[tuple[str, tuple[str, ...]], ...], name: str, expected: str
) -> None:
    recipient = Recipient(1, "ann@example.org", name, {})
    assert Slot(source, "", filters).value(recipient) == expected


def test_names_are_cut_to_200_characters() -> None:
    assert Slot("name").value(Recipient(1, "a@example.org", "x" * 250)) == "x" * 200
    assert Slot("first_name").value(Recipient(1, "a@example.org", "x" * 250)) == "x" * 200
    assert (
        Slot("attr", "a").value(Recipient(1, "a@example.org", "", {"a": "y" * 2500})) == "y" * 2000
    )


def test_urlencoded_values_are_not_encoded_twice() -> None:
    assert Slot("name", "", (("urlencode", ()),)).url_encoded
    assert not Slot("name").url_encoded
    assert not Slot("name", "", (("urlencode", ()), ("upper", ()))).url_encoded
    campaign = compiled(
        make_campaign(body="[a](https://shop.example/?n={{ name | urlencode }}&m={{ name }})\n")
    )
    msg = parse(campaign.build(Recipient(7, "ann@example.org", "A&B c")))
    assert "a (https://shop.example/?n=A%26B%20c&m=A%26B%20c)" in body(msg, "plain")


def test_a_value_in_a_link_cannot_leave_its_path_segment() -> None:
    campaign = compiled(
        make_campaign(body="[mine](https://shop.example/p/{{ attributes.code }})\n")
    )
    msg = parse(campaign.build(Recipient(7, "ann@example.org", "Ann", {"code": "../admin?x=1"})))
    assert "mine (https://shop.example/p/..%2Fadmin%3Fx%3D1)" in body(msg, "plain")
    assert 'href="https://shop.example/p/..%2Fadmin%3Fx%3D1"' in body(msg, "html")


def test_filter_aliases_in_a_body() -> None:
    campaign = compiled(make_campaign(body="[{{ name | e }}] [{{ attributes.x | d('none') }}]\n"))
    msg = parse(campaign.build(Recipient(7, "ann@example.org", "<Ann>")))
    assert "[<Ann>] [none]" in body(msg, "plain")
    assert "[&lt;Ann&gt;] [none]" in body(msg, "html")


def test_recipient_of_an_unsaved_contact() -> None:
    contact = Contact(email="e@example.org", email_key="e@example.org", name="E")
    contact.attributes = None  # type: ignore[assignment]
    assert Recipient.from_contact(contact) == Recipient(0, "e@example.org", "E", {})


# --- headers: cleaning, encoding, folding ----------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Spring sale", "Spring sale"),
        ("  Spring   sale  ", "Spring sale"),
        ("Spring \t\r\n sale", "Spring sale"),
        ("a\r\nBcc: evil@example.net", "a Bcc: evil@example.net"),
        ("a\x00b\x07c\x7fd\x85e\u2028f\u2029g\x1bh", "a b c d e f g h"),
        ("\u00a0a\u3000b\u00a0", "a b"),
        (12, "12"),
    ],
)
def test_clean_makes_one_line(raw: object, expected: str) -> None:
    assert clean(raw) == expected


def test_clean_cuts_at_the_limit() -> None:
    assert clean("x" * 2500) == "x" * 2000
    assert clean("y" * 250, 200) == "y" * 200
    assert clean("abc def", 4) == "abc"
    assert clean("ab\tcd ef", 6) == "ab cd"
    assert clean("ab  cd ef", 6) == "ab cd"
    assert clean("abcd", 4) == "abcd"


def decoded_words(header: bytes) -> list[str]:
    """The RFC 2047 words of a header line, decoded one by one with the standard library."""
    value = header.decode("ascii").partition(":")[2]
    words = value.split()
    out = []
    for word in words:
        found = re.fullmatch(r"=\?utf-8\?b\?([A-Za-z0-9+/=]+)\?=", word)
        assert found, word
        out.append(base64.b64decode(found.group(1)).decode("utf-8"))
    return out


def assert_header_lines(header: bytes) -> None:
    assert header.endswith(b"\r\n") and header.isascii()
    lines = header[:-2].split(b"\r\n")
    assert all(len(line) <= 78 for line in lines), lines
    assert all(line.startswith(b" ") for line in lines[1:])


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Spring sale", b"Subject: Spring sale\r\n"),
        ("  Spring \r\n sale ", b"Subject: Spring sale\r\n"),
        # 69 characters still fit on the first line (78 octets with "Subject: ") ...
        ("a" * 60 + " " + "b" * 8, b"Subject: " + b"a" * 60 + b" " + b"b" * 8 + b"\r\n"),
        # ... 70 do not: folded before the word that would pass 78.
        ("a" * 60 + " " + "b" * 9, b"Subject: " + b"a" * 60 + b"\r\n " + b"b" * 9 + b"\r\n"),
        (
            "a" * 60 + " " + "b" * 8 + " c",
            b"Subject: " + b"a" * 60 + b" " + b"b" * 8 + b"\r\n c\r\n",
        ),
        # A word longer than a line is not broken, and nothing is folded before it.
        ("x" * 100 + " y", b"Subject: " + b"x" * 100 + b"\r\n y\r\n"),
        ("x" * 900, b"Subject: " + b"x" * 900 + b"\r\n"),
    ],
)
def test_ascii_subjects_are_folded_at_78(value: str, expected: bytes) -> None:
    assert unstructured_header("Subject", value) == expected


def test_a_folded_header_unfolds_to_the_value() -> None:
    words = [f"word{i}" for i in range(40)]
    header = unstructured_header("Subject", " ".join(words))
    assert_header_lines(header)
    assert header.count(b"\r\n") == 4
    assert header.replace(b"\r\n ", b" ") == ("Subject: " + " ".join(words) + "\r\n").encode()


def test_non_ascii_subjects_are_encoded_words() -> None:
    assert unstructured_header("Subject", "Grüße") == b"Subject: =?utf-8?b?R3LDvMOfZQ==?=\r\n"
    # An ASCII text that looks like an encoded word is encoded too, so it reads as itself.
    header = unstructured_header("Subject", "50% =?utf-8?b?QmNj?=")
    assert b"QmNj" not in header and decoded_words(header) == ["50% =?utf-8?b?QmNj?="]
    # Too long for one line (a word over 900 characters): encoded, every line within 78.
    header = unstructured_header("Subject", "z" * 990)
    assert_header_lines(header)
    assert "".join(decoded_words(header)) == "z" * 990


def test_encoded_words_hold_42_octets_and_never_split_a_character() -> None:
    # "é" is two octets (C3 A9): 21 fit in a word of 42 octets.
    header = unstructured_header("Subject", "é" * 30)
    assert_header_lines(header)
    assert decoded_words(header) == ["é" * 21, "é" * 9]
    # One ASCII letter first: the 42nd octet would be half an "é", so the word ends before it.
    header = unstructured_header("Subject", "x" + "é" * 30)
    assert_header_lines(header)
    assert decoded_words(header) == ["x" + "é" * 20, "é" * 10]
    # Three-octet characters: 14 make 42.
    assert decoded_words(unstructured_header("Subject", "€" * 15)) == ["€" * 14, "€"]
    # Four-octet characters: 10 make 40, the 11th would pass 42.
    assert decoded_words(unstructured_header("Subject", "🌸" * 12)) == ["🌸" * 10, "🌸" * 2]


def test_encoded_words_end_after_a_space_when_they_can() -> None:
    text = "Frühlingsangebot für alle Gäste: 50 % auf alles, nur heute!"
    header = unstructured_header("Subject", text)
    assert_header_lines(header)
    assert decoded_words(header) == [
        "Frühlingsangebot für alle Gäste: 50 % ",
        "auf alles, nur heute!",
    ]
    # The last word is not split at a space: it fits.
    assert decoded_words(unstructured_header("Subject", "é é")) == ["é é"]
    # No space to split after: cut at 42 octets.
    assert decoded_words(unstructured_header("Subject", "é" + "x" * 50)) == [
        "é" + "x" * 40,
        "x" * 10,
    ]
    # Even a one-letter word ends at its space.
    assert decoded_words(unstructured_header("Subject", "a " + "é" * 30)) == [
        "a ",
        "é" * 21,
        "é" * 9,
    ]
    assert decoded_words(unstructured_header("Subject", "ab " + "é" * 30)) == [
        "ab ",
        "é" * 21,
        "é" * 9,
    ]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Ann Lee", "Ann Lee"),
        ("O'Brien & Sons", "O'Brien & Sons"),
        ("", ""),
        ("  \r\n ", ""),
        ("Dr. Who", '"Dr. Who"'),
        ('Lee, Ann "Boss" \\o/', '"Lee, Ann \\"Boss\\" \\\\o/"'),
        ("Ann\r\nBcc: evil@example.net", '"Ann Bcc: evil@example.net"'),
        ("Zoë", "=?utf-8?b?Wm/Dqw==?="),
        ("x" * 250, "x" * 200),
    ],
)
def test_display_names(name: str, expected: str) -> None:
    assert phrase(name) == expected


def test_long_non_ascii_display_name_is_folded_words() -> None:
    shown = phrase("Zoë " * 20)
    lines = shown.split("\r\n ")
    assert len(lines) == 3 and all(len(line) <= 70 for line in lines)
    assert "".join(decoded_words(b"To: " + " ".join(lines).encode())) == "Zoë " * 19 + "Zoë"
    assert format_address("Zoë " * 20, "z@example.org") == shown + " <z@example.org>"


def test_addresses_for_headers() -> None:
    assert format_address("Ann Lee", "ann@example.org") == "Ann Lee <ann@example.org>"
    assert format_address("", "ann@example.org") == "ann@example.org"
    assert format_address("Dr. Who", "who@example.org") == '"Dr. Who" <who@example.org>'
    with pytest.raises(ValueError) as info:
        format_address("Ann", "ann@example.org>\r\nBcc: evil@example.net")
    assert str(info.value).startswith("not a valid email address: 'ann@example.org>")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Shop News <news@shop.example>", ("Shop News", "news@shop.example")),
        ('"News, Shop" <news@shop.example>', ("News, Shop", "news@shop.example")),
        ("news@shop.example", ("", "news@shop.example")),
        ("  Shop\r\n News <news@shop.example> ", ("Shop News", "news@shop.example")),
    ],
)
def test_parse_sender(text: str, expected: tuple[str, str]) -> None:
    assert parse_sender(text) == expected


@pytest.mark.parametrize("text", ["Shop News <not-an-address>", "", "Shop News"])
def test_parse_sender_refuses_a_bad_address(text: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_sender(text)
    assert str(info.value) == f"the sender {text!r} has no valid email address"


# --- quoted-printable -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a b\tc", b"a b\tc"),
        ("a\r\nb\rc\nd", b"a\r\nb\r\nc\r\nd"),
        ("Hi \nx=y", b"Hi=20\r\nx=3Dy"),
        ("Grüße", b"Gr=C3=BC=C3=9Fe"),
        ("x" * 75, b"x" * 75),
        # The last line is kept to 75 octets, so a soft break after it still fits in 76.
        ("x" * 76, b"x" * 73 + b"=\r\nxxx"),
        ("x" * 71 + "=" + "x" * 2, b"x" * 71 + b"=\r\n=3Dxx"),  # never splits =3D
        ("x" * 72 + "=x", b"x" * 72 + b"=\r\n=3Dx"),
        ("x" * 70 + "=xxx", b"x" * 70 + b"=3D=\r\nxxx"),
        ("y\n" + "x" * 76, b"y\r\n" + b"x" * 73 + b"=\r\nxxx"),
    ],
)
def test_quoted_printable(text: str, expected: bytes) -> None:
    assert qp(text) == expected


@settings(deadline=None)
@given(st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=300))
def test_quoted_printable_decodes_to_the_text(text: str) -> None:
    encoded = qp(text)
    lines = encoded.split(b"\r\n")
    assert all(len(line) <= 76 for line in lines)
    assert len(lines[-1]) <= 75
    assert b"\n" not in encoded.replace(b"\r\n", b"")
    expected = text.replace("\r\n", "\n").replace("\r", "\n")
    assert binascii.a2b_qp(encoded.replace(b"\r\n", b"\n")).decode("utf-8") == expected
