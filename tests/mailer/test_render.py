"""Rendering once per campaign: layouts per kind, Markdown, variables, readable errors."""

from __future__ import annotations

import email.parser
import email.policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any, cast

import pytest

from campaigns.config import Settings
from campaigns.models import Campaign
from mailer.message import Recipient
from mailer.render import TemplateProblem, compile_campaign, preview
from mailer.tokens import TokenSigner

SIGNER = TokenSigner(["render-key"])
POSTAL = "Test Shop, 1 Test Street, Testville"


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": Path("/nonexistent"),
        "secret_key": "render-key",
        "public_url": "https://news.shop.example/",
        "sender": "Shop News <news@shop.example>",
        "postal_address": POSTAL,
        "brand_name": "Test Shop",
        "policy_url": "https://shop.example/privacy",
    }
    values.update(overrides)
    return Settings(**values)


def make_campaign(kind: str = "promotional", **overrides: Any) -> Campaign:
    values: dict[str, Any] = {
        "id": 12,
        "name": "Spring sale",
        "kind": kind,
        "subject": "Spring sale",
        "body": "Hello {{ first_name | default('there') }}!\n\nSee [the shop](https://shop.example/spring).\n",
    }
    if kind == "third_party_offer":
        values["sponsor"] = "Acme Travel"
    if kind == "survey":
        values["survey_url"] = "https://survey.example/s/1?a=1&b=2"
    values.update(overrides)
    return Campaign(**values)


ANN = Recipient(contact_id=3, email="ann@example.org", name="Ann Lee", attributes={"city": "Oslo"})


def parts(campaign: Campaign, recipient: Recipient = ANN, **settings: Any) -> tuple[str, str]:
    """(text, html) of one built message, decoded by the email package."""
    _, msg = preview(campaign, make_settings(**settings), recipient, SIGNER)
    text = cast(EmailMessage, msg.get_body(("plain",))).get_content()
    html = cast(EmailMessage, msg.get_body(("html",))).get_content()
    return text.replace("\r\n", "\n"), html.replace("\r\n", "\n")


def problem(campaign: Campaign, **kwargs: Any) -> str:
    with pytest.raises(TemplateProblem) as info:
        compile_campaign(campaign, make_settings(), signer=SIGNER, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- layouts per kind ------------------------------------------------------------------


def test_promotional_footer_states_consent_address_and_unsubscribe() -> None:
    text, html = parts(make_campaign())
    reason = "you agreed to receive promotional email from Test Shop"
    assert reason in text and reason in html
    assert POSTAL in text and POSTAL in html
    assert "https://news.shop.example/u/" in text
    assert 'href="https://news.shop.example/u/' in html
    assert "Unsubscribe or change which emails you get" in html
    assert 'href="https://shop.example/privacy"' in html


def test_survey_carries_the_survey_link_as_a_button() -> None:
    text, html = parts(make_campaign("survey"))
    assert 'class="button" href="https://survey.example/s/1?a=1&amp;b=2"' in html
    assert "Take the survey: https://survey.example/s/1?a=1&b=2" in text
    assert "agreed to be contacted by Test Shop for market research" in text


def test_third_party_offer_names_sponsor_and_says_no_data_shared() -> None:
    text, html = parts(make_campaign("third_party_offer", sponsor="Acme <Travel>"))
    for part, sponsor in ((text, "Acme <Travel>"), (html, "Acme &lt;Travel&gt;")):
        assert f"on behalf of {sponsor}" in part
        assert f"no personal data about you was shared with {sponsor}" in " ".join(part.split())
        assert "offers from its partners" in " ".join(part.split())


def test_css_is_inlined_and_media_queries_kept() -> None:
    _, html = parts(make_campaign())
    assert '<td class="content" style="padding:' in html
    assert '<p style="margin:0 0 14px 0">' in html
    assert "@media only screen" in html and "!important" in html
    assert ".content p {" not in html  # inlined rules leave the <style> block


def test_preheader_is_hidden_in_the_html() -> None:
    _, html = parts(make_campaign(preheader="Half price for {{ first_name }}"))
    assert 'class="preheader" style="display:none' in html
    assert "Half price for Ann</div>" in html


# --- the body and its variables ---------------------------------------------------------


def test_markdown_body_in_both_parts() -> None:
    body = (
        "# Big news\n\nSome *emphasis* and **bold**, and [a link](https://e.example/x).\n\n"
        "- one\n- two\n\n1. first\n2. second\n\n> a quote\n\n<https://auto.example>\n"
    )
    text, html = parts(make_campaign(body=body))
    assert "<h1" in html and "<em>emphasis</em>" in html and "<strong>bold</strong>" in html
    assert "# Big news" in text
    assert "and a link (https://e.example/x)." in text
    assert "- one\n- two" in text and "1. first\n2. second" in text
    assert "> a quote" in text
    assert "https://auto.example" in text


def test_per_recipient_values_escaped_per_part() -> None:
    body = (
        "Hi {{ name }} ({{ email }}), from {{ contact.attributes.city }}.\n\n"
        "[Your page](https://shop.example/p?n={{ name }}&c={{ attributes.city }})\n"
    )
    bob = Recipient(4, "bob@example.org", 'Bob <b>&"Co"', {"city": "Zürich & Co"})
    text, html = parts(make_campaign(body=body), bob)
    assert 'Hi Bob <b>&"Co" (bob@example.org), from Zürich & Co.' in text
    assert "Hi Bob &lt;b&gt;&amp;&quot;Co&quot; (bob@example.org)" in html
    url = "https://shop.example/p?n=Bob%20%3Cb%3E%26%22Co%22&c=Z%C3%BCrich%20%26%20Co"
    assert f"Your page ({url})" in text
    assert f'href="{url.replace("&", "&amp;")}"' in html


def test_missing_attribute_is_empty_and_default_fills_it() -> None:
    body = "A[{{ contact.attributes.tier }}] B[{{ attributes.tier | default('none') | upper }}]\n"
    text, _ = parts(make_campaign(body=body), Recipient(5, "c@example.org", "", {}))
    assert "A[] B[NONE]" in text
    text, _ = parts(make_campaign(body=body), Recipient(5, "c@example.org", "", {"Tier": "gold"}))
    assert "A[gold] B[GOLD]" in text


def test_first_name_and_filters() -> None:
    body = "{{ first_name | lower }}/{{ name | title }}/{{ name | d('x') | trim }}\n"
    text, _ = parts(make_campaign(body=body), Recipient(6, "d@example.org", "  mary ann  smith"))
    assert "mary/Mary Ann Smith/mary ann smith" in text


def test_personalised_subject() -> None:
    raw, msg = preview(
        make_campaign(subject="{{ first_name | default('Friend') }}, our sale"),
        make_settings(),
        ANN,
        SIGNER,
    )
    assert msg["Subject"] == "Ann, our sale"
    assert b"Subject: Ann, our sale\r\n" in raw


# --- problems, in plain words, at compile time -----------------------------------------


def test_undefined_variable_fails_at_compile_with_line() -> None:
    message = problem(make_campaign(body="Hello\n\n{{ nickname }}\n"))
    assert message == "the body line 3: 'nickname' is undefined"


def test_unknown_contact_field_explains_attributes() -> None:
    message = problem(make_campaign(body="{{ contact.city }}"))
    assert "contact has no field 'city'" in message
    assert "contact.attributes.city" in message


def test_syntax_error_names_line() -> None:
    message = problem(make_campaign(subject="Hi {{ name", body="x"))
    assert message.startswith("the subject line 1:")


def test_tests_on_per_recipient_values_are_refused() -> None:
    message = problem(make_campaign(body="{% if name %}Hi {{ name }}{% endif %}"))
    assert message.startswith("the body line 1: name differs per recipient")
    assert "default" in message


def test_unsupported_filter_on_per_recipient_value() -> None:
    message = problem(make_campaign(body="\n{{ name | truncate(3) }}"))
    assert message.startswith("the body line 2: the filter 'truncate' cannot be used on name")


def test_changed_placeholder_is_refused() -> None:
    message = problem(make_campaign(body="{{ ('Hi ' ~ name) | upper }}"))
    assert "changed by an expression" in message


def test_raw_html_is_refused_with_line() -> None:
    message = problem(make_campaign(body="Hello\n\nPress <b>now</b>\n"))
    assert message.startswith("the body has raw HTML on line 3 (<b>)")
    text, _ = parts(make_campaign(body="Press \\<b> now, 1 < 2\n"))
    assert "Press <b> now, 1 < 2" in text


def test_sandbox_blocks_internals() -> None:
    message = problem(make_campaign(body="{{ ''.__class__.__mro__ }}"))
    assert message.startswith("the body line 1:")


def test_whole_contact_cannot_be_printed() -> None:
    assert "contact cannot be shown whole" in problem(make_campaign(body="{{ contact }}"))
    assert "use attributes.NAME" in problem(make_campaign(body="{{ attributes }}"))


def test_postal_address_is_required() -> None:
    with pytest.raises(TemplateProblem, match="no postal address"):
        compile_campaign(make_campaign(), make_settings(postal_address=" "), signer=SIGNER)


@pytest.mark.parametrize(
    ("campaign", "expected"),
    [
        (make_campaign("third_party_offer", sponsor=" "), "needs a sponsor"),
        (make_campaign("survey", survey_url=""), "needs a survey URL"),
        (make_campaign("survey", survey_url="javascript:alert(1)"), "needs a survey URL"),
        (make_campaign("newsletter"), "unknown kind 'newsletter'"),
        (make_campaign(subject="  "), "the subject is empty"),
        (make_campaign(body="\n"), "the body is empty"),
        (make_campaign(template="../etc"), "bad template name"),
        (make_campaign(template="nope"), "there is no template named 'nope.html'"),
        (make_campaign(sender="Nobody <not-an-address>"), "no valid email address"),
        (make_campaign(subject="{{ unsubscribe_url }}"), "cannot contain the unsubscribe"),
    ],
)
def test_campaign_problems(campaign: Campaign, expected: str) -> None:
    assert expected in problem(campaign)


# --- custom layouts ---------------------------------------------------------------------


def write_layout(folder: Path, name: str, html_extra: str, txt: str) -> None:
    (folder / f"{name}.html").write_text(
        '{% extends "promotional.html" %}{% block after_body %}' + html_extra + "{% endblock %}"
    )
    (folder / f"{name}.txt").write_text(txt)


def test_custom_layout_from_template_dirs(tmp_path: Path) -> None:
    write_layout(
        tmp_path, "seasonal", "<tr><td>Seasonal!</td></tr>", '{% extends "promotional.txt" %}'
    )
    campaign = make_campaign(template="seasonal")
    compiled = compile_campaign(campaign, make_settings(), signer=SIGNER, template_dirs=[tmp_path])
    msg = email.parser.BytesParser(policy=email.policy.default).parsebytes(compiled.build(ANN))
    html = cast(EmailMessage, msg.get_body(("html",))).get_content()
    assert "<td>Seasonal!</td>" in html and "promotional email" in html


def test_layout_error_names_file_and_line(tmp_path: Path) -> None:
    write_layout(tmp_path, "broken", "\n\n{{ missing_thing }}", '{% extends "promotional.txt" %}')
    message = problem(make_campaign(template="broken"), template_dirs=[tmp_path])
    assert message == "the 'broken' layout (broken.html) line 3: 'missing_thing' is undefined"


def test_layout_without_footer_is_refused(tmp_path: Path) -> None:
    (tmp_path / "bare.html").write_text("<html><body>{{ body }}</body></html>")
    (tmp_path / "bare.txt").write_text("{{ body }}")
    message = problem(make_campaign(template="bare"), template_dirs=[tmp_path])
    assert "has no unsubscribe link" in message
