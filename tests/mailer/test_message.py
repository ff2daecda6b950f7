"""Per-recipient messages: valid MIME parsed back, headers, tokens, no injection, DKIM."""

from __future__ import annotations

import base64
import email.parser
import email.policy
import html
import re
import shutil
import subprocess
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
from mailer.message import CompiledCampaign, Recipient, clean
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
