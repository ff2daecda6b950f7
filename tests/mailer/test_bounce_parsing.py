"""How `mailer.bounces.classify` reads a returned message (DESIGN.md §4, README "What comes back").

These tests are about reading, which stays true whatever the rules for hard and soft
bounces become: header fields and their continuation lines, charsets and encoded words,
the MIME structure (reports, embedded originals, quoted text), the limits that keep a
hostile message cheap, the VERP and unsubscribe tokens and the recipients found (best
evidence first), the status and diagnostic taken from a report or a bounce text, ARF
feedback types, auto-reply signals, and that nothing ever raises.

The hard/soft decision of today (a 5xx or `Action: failed` alone makes a hard bounce)
changes with issue #14; the tests that only pin today's decision are in the last section,
headed as such. Expected values are written by hand from the messages in each test.

`bounce_corpus/public/` holds real bounces from public corpora (source in each file's
first header line, `X-Corpus-Source`): they are read as they are, without placeholders.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from campaigns.bounce_reasons import Reason
from mailer.bounces import Kind, Verdict, _clean, _clean_text, classify

PUBLIC = Path(__file__).parent / "bounce_corpus" / "public"

# Tokens only need the token alphabet here ([a-z2-7]); signing is tested in test_bounces.
TOKEN = "verptokenaaaaaaaaaaaaaaa"
OTHER = "othertokenbbbbbbbbbbbbbb"
UNSUB = "unsubtokencccccccccccccc"

MTA_HEADERS = "From: MAILER-DAEMON@mx.example\nTo: news@shop.example\nSubject: Delivery report\n"
PERSON_HEADERS = "From: bob@example.org\nTo: news@shop.example\nSubject: Hello\n"


def part(ctype: str, body: str, headers: str = "") -> str:
    """One MIME part: its Content-Type, any further header lines, a blank line, the body."""
    return f"Content-Type: {ctype}\n{headers}\n{body}"


def multipart(
    parts: list[str], ctype: str = "multipart/report", params: str = "", b: str = "b"
) -> str:
    """A multipart entity (headers and body) whose parts are given as from `part`."""
    body = "".join(f"--{b}\n{p}\n" for p in parts)
    return f'Content-Type: {ctype}{params}; boundary="{b}"\n\n{body}--{b}--\n'


def message(top: str, entity: str) -> bytes:
    return (top + "MIME-Version: 1.0\n" + entity).encode()


def report(
    *parts: str, top: str = MTA_HEADERS, kind: str = "delivery-status", b: str = "b"
) -> bytes:
    return message(top, multipart(list(parts), params=f"; report-type={kind}", b=b))


def dsn_part(*blocks: str, ctype: str = "message/delivery-status") -> str:
    """A delivery-status part: its field blocks separated by blank lines."""
    return part(ctype, "\n".join(blocks))


PER_MESSAGE = "Reporting-MTA: dns; mx.example\n"


# -- entry, limits, robustness -------------------------------------------------------------


def test_anything_that_is_not_bytes_is_kept_as_unreadable() -> None:
    # The safety net says what went wrong and offers nothing to act on.
    expected = Verdict(Kind.UNKNOWN, (), (), (), reason="unreadable (TypeError)")
    assert classify(None) == expected  # type: ignore[arg-type]
    assert classify(12) == expected  # type: ignore[arg-type]


def test_a_blank_message_is_unknown_and_empty() -> None:
    expected = Verdict(Kind.UNKNOWN, (), (), (), reason="empty message")
    assert classify(b"") == expected
    assert classify(b" \r\n\t\n") == expected


def test_only_the_first_megabyte_is_read() -> None:
    # The token's "@" is the last byte read, then the first byte not read.
    def raw(at: int) -> bytes:
        head = b"To: "
        tail = f" bounces+{TOKEN}@r.example\n\nhello\n".encode()
        filler = at - len(head) - len(f" bounces+{TOKEN}".encode())
        return head + b"a" * filler + tail

    inside, outside = raw(999_999), raw(1_000_000)
    assert inside.index(b"@") == 999_999 and outside.index(b"@") == 1_000_000
    assert classify(inside).bounce_tokens == (TOKEN,)
    assert classify(outside).bounce_tokens == ()


def test_at_most_500_header_fields_are_read() -> None:
    def raw(before: int) -> bytes:
        filler = "".join(f"X-Filler-{i}: x\n" for i in range(before))
        return f"{filler}To: bounces+{TOKEN}@r.example\n\nhello\n".encode()

    assert classify(raw(499)).bounce_tokens == (TOKEN,)
    assert classify(raw(500)).bounce_tokens == ()


def nest(depth: int, leaf: str) -> str:
    """`leaf` as the only part at `depth` levels of multipart/mixed below the top."""
    entity = leaf
    for level in range(depth):
        entity = multipart([entity], ctype="multipart/mixed", b=f"n{level}")
    return entity


def test_parts_deeper_than_twelve_levels_are_not_read() -> None:
    leaf = part("text/plain", f"quoted: bounces+{TOKEN}@r.example\n")
    assert classify(message(PERSON_HEADERS, nest(12, leaf))).bounce_tokens == (TOKEN,)
    assert classify(message(PERSON_HEADERS, nest(13, leaf))).bounce_tokens == ()


def test_at_most_200_parts_are_read() -> None:
    def raw(parts_before: int) -> bytes:
        parts = [part("text/plain", "nothing here\n")] * parts_before
        parts.append(part("text/plain", f"bounces+{TOKEN}@r.example\n"))
        return message(PERSON_HEADERS, multipart(parts, ctype="multipart/mixed"))

    # The top counts as one part: 1 + 198 + 1 = 200 are read, the 201st is not.
    assert classify(raw(198)).bounce_tokens == (TOKEN,)
    assert classify(raw(199)).bounce_tokens == ()


def test_the_blocks_of_a_report_part_do_not_use_up_the_part_budget() -> None:
    # 250 recipient blocks are fields of one part, not 250 parts: what follows is read.
    blocks = [PER_MESSAGE] + [
        f"Final-Recipient: rfc822; r{i}@example.org\nAction: delayed\nStatus: 4.4.1\n"
        for i in range(250)
    ]
    raw = report(
        dsn_part(*blocks),
        part("text/rfc822-headers", f"Return-Path: <bounces+{TOKEN}@r.example>\n"),
    )
    verdict = classify(raw)
    assert verdict.bounce_tokens == (TOKEN,)
    # The part's first 200 blocks are read: the per-message block and 199 recipients.
    assert len(verdict.recipients) == 199
    assert verdict.recipients[:2] == ("r0@example.org", "r1@example.org")
    assert verdict.recipients[-1] == "r198@example.org"


FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(st.text(st.characters(codec=None, exclude_categories=())))
def test_the_text_cleaners_never_raise_on_any_string(text: str) -> None:
    # classify only hands them text from parsed bytes; they are its last defence anyway.
    assert "\n" not in _clean(text)
    _clean_text(text)


def test_the_text_cleaners_replace_what_cannot_be_encoded() -> None:
    # A lone surrogate that no decoder produced (not a smuggled byte) becomes "?".
    assert _clean("caf\ud800 \n\t é") == "caf? é"
    assert _clean_text("a\ud800b\ndé") == "a?b\ndé"
    # Smuggled bytes (surrogateescape) are decoded as UTF-8, with U+FFFD where invalid.
    assert _clean("Gr\udcc3\udcbc\udcc3\udc9fe \udcff") == "Grüße \ufffd"
    assert _clean_text("Gr\udcc3\udcbc\udcc3\udc9fe\n\udcff") == "Grüße\n\ufffd"
    assert _clean(123) == "123"


# -- header fields ---------------------------------------------------------------------------


def test_header_names_are_matched_whatever_their_case() -> None:
    raw = f"DELIVERED-TO: bounces+{TOKEN}@r.example\nSUBJECT: OUT OF OFFICE\n\nAway.\n".encode()
    verdict = classify(raw)
    assert verdict.bounce_tokens == (TOKEN,)
    assert (verdict.kind, verdict.reason) == (Kind.AUTO_REPLY, "auto-reply subject")


def test_the_first_of_repeated_header_fields_counts() -> None:
    raw = b"From: bob@example.org\nSubject: Out of Office\nSubject: Hello\n\nAway.\n"
    assert classify(raw).kind == Kind.AUTO_REPLY
    raw = b"From: bob@example.org\nSubject: Hello\nSubject: Out of Office\n\nAway.\n"
    assert classify(raw).kind == Kind.UNKNOWN


def test_raw_utf8_in_a_header_is_read_as_utf8() -> None:
    # 8-bit headers are common in the wild; "é" must be read to see the French auto-reply.
    raw = "From: bob@example.org\nSubject: Réponse automatique : soldes\n\nAbsent.\n".encode()
    verdict = classify(raw)
    assert (verdict.kind, verdict.reason) == (Kind.AUTO_REPLY, "auto-reply subject")


def test_encoded_word_subjects_are_decoded() -> None:
    subject = "=?utf-8?q?Automatische_Antwort=3A_Fr=C3=BChlingsangebot?="
    raw = f"From: bob@example.org\nSubject: {subject}\n\nAbwesend.\n".encode()
    assert classify(raw).reason == "auto-reply subject"
    # "Undeliverable: Spring sale" in base64 makes a bounce notice of a stranger's mail.
    subject = "=?UTF-8?B?VW5kZWxpdmVyYWJsZTogU3ByaW5nIHNhbGU=?="
    raw = f"From: it@corp.example\nSubject: {subject}\n\nRemote said: 550 5.1.1 no\n".encode()
    verdict = classify(raw)
    assert (verdict.status, verdict.reason) == ("5.1.1", "bounce text: 5.1.1")


def test_a_malformed_encoded_word_is_read_as_it_stands() -> None:
    raw = b"From: it@corp.example\nSubject: Undeliverable: =?utf-8?b?#?=\n\n550 5.1.1 gone\n"
    verdict = classify(raw)
    assert (verdict.status, verdict.diagnostic) == ("5.1.1", "550 5.1.1 gone")


def test_header_whitespace_and_folding_are_collapsed() -> None:
    arf = part("message/feedback-report", "Feedback-Type:\tnot-spam\t(user said so)\nVersion: 1\n")
    verdict = classify(report(arf, kind="feedback-report"))
    assert (verdict.kind, verdict.reason) == (Kind.IGNORED, "ARF Feedback-Type: not-spam")
    raw = b"From: bob@example.org\nPrecedence:\n  auto_reply\n\nAway.\n"
    assert classify(raw).reason == "Precedence: auto_reply"


def test_report_fields_in_utf8_and_invalid_bytes_are_read() -> None:
    block = (
        "Final-Recipient: rfc822; anna@example.org\nAction: failed\nStatus: 5.1.1\n"
        "Diagnostic-Code: smtp; 550 5.1.1 Empfänger unbekannt @@FF@@\n"
    )
    raw = report(dsn_part(PER_MESSAGE, block)).replace(b"@@FF@@", b"\xff")  # invalid UTF-8
    verdict = classify(raw)
    assert verdict.diagnostic == "550 5.1.1 Empfänger unbekannt \ufffd"
    assert verdict.recipients == ("anna@example.org",)


def test_control_characters_never_reach_the_diagnostic() -> None:
    block = (
        "Final-Recipient: rfc822; anna@example.org\nAction: failed\n"
        "Diagnostic-Code: smtp; 550 5.1.1 no\x07such\x00user\x7f here\n"
    )
    verdict = classify(report(dsn_part(PER_MESSAGE, block)))
    assert verdict.diagnostic == "550 5.1.1 no such user here"


def test_the_diagnostic_is_cut_at_300_characters() -> None:
    text = "550 5.1.1 " + "x" * 400
    block = (
        f"Final-Recipient: rfc822; a@example.org\nAction: failed\nDiagnostic-Code: smtp; {text}\n"
    )
    assert classify(report(dsn_part(PER_MESSAGE, block))).diagnostic == text[:300]


# -- the MIME structure --------------------------------------------------------------------


def test_the_notice_is_read_part_by_part_in_order() -> None:
    parts = [
        part("text/plain", f"first: bounces+{TOKEN}@r.example\n"),
        part("text/plain", f"second: bounces+{OTHER}@r.example\n"),
    ]
    raw = message(PERSON_HEADERS, multipart(parts, ctype="multipart/mixed"))
    assert classify(raw).bounce_tokens == (TOKEN, OTHER)


def bounce_notice(*parts: str) -> bytes:
    top = (
        "From: Mail Delivery System <MAILER-DAEMON@mx.example>\n"
        "Subject: Undeliverable: Spring sale\n"
    )
    return message(top, multipart(list(parts), ctype="multipart/mixed"))


ORIGINAL_HEADERS = (
    f"Return-Path: <bounces+{TOKEN}@r.example>\nFrom: Shop <news@shop.example>\n"
    "To: Anna <anna@example.org>, bert@example.org\nSubject: Spring sale\n"
)


def test_text_inside_an_attached_message_is_quoted_not_the_notice() -> None:
    # The attached original (with its own parts) quotes an SMTP dialogue of its own:
    # none of it is the notice's text, its tokens still count.
    inner = multipart(
        [
            part(
                "text/plain", f"RCPT TO:<carl@example.org>: 550 5.1.1 unknown\nbounces+{OTHER}@x\n"
            ),
            part("text/html", "<p>Remote said: 550 5.1.1</p>"),
        ],
        ctype="multipart/alternative",
        b="inner",
    )
    raw = bounce_notice(
        part("text/plain", "Your message could not be delivered.\n"),
        part(
            "message/rfc822",
            ORIGINAL_HEADERS.replace("Subject", "MIME-Version: 1.0\nSubject") + inner,
        ),
    )
    verdict = classify(raw)
    # A bounce naming its recipient but no reason: soft, cause unknown (README, Choices).
    assert (verdict.kind, verdict.cause) == (Kind.SOFT_BOUNCE, Reason.UNKNOWN)
    assert (verdict.status, verdict.diagnostic) == ("", "")
    assert verdict.reason == "bounce notice without a reason"
    assert verdict.recipients == ("anna@example.org",)  # the original's first To address
    assert verdict.bounce_tokens == (TOKEN, OTHER)


def test_a_report_inside_an_attached_message_is_not_a_report() -> None:
    # Someone forwards a bounce they got: the forwarded report is only quoted.
    forwarded = report(
        dsn_part(
            PER_MESSAGE,
            "Final-Recipient: rfc822; anna@example.org\nAction: failed\nStatus: 5.1.1\n",
        ),
        part("message/feedback-report", "Feedback-Type: abuse\n"),
        b="forwarded",
    ).decode()
    raw = message(
        "From: bob@example.org\nSubject: Fwd: this came back\n",
        multipart(
            [part("text/plain", "See below.\n"), part("message/rfc822", forwarded)],
            ctype="multipart/mixed",
        ),
    )
    verdict = classify(raw)
    assert (verdict.kind, verdict.status, verdict.recipients) == (Kind.UNKNOWN, "", ())
    assert verdict.reason == "not a report, bounce, auto-reply or unsubscribe"


def test_an_html_notice_is_read_without_its_markup() -> None:
    html = (
        "<html><body><p>Your message to</p><p><b>anna@example.org</b></p>\n"
        "<p>couldn't be delivered.</p>\n"
        "<p>Remote server said: <tt>550 5.1.1 user unknown</tt></p></body></html>\n"
    )
    verdict = classify(bounce_notice(part("text/html; charset=utf-8", html)))
    assert verdict.recipients == ("anna@example.org",)
    assert (verdict.status, verdict.diagnostic) == (
        "5.1.1",
        "Remote server said: 550 5.1.1 user unknown",
    )


def test_what_follows_a_copy_marker_is_quoted_not_the_notice() -> None:
    text = (
        "This message was created automatically by mail delivery software.\n"
        "A message that you sent could not be delivered.\n\n"
        "------ This is a copy of the message, including all the headers. ------\n\n"
        f"Return-Path: <bounces+{TOKEN}@r.example>\n"
        f"List-Unsubscribe: <https://shop.example/u/{UNSUB}>\n"
        "To: anna@example.org\n\nRCPT TO:<carl@example.org>: 550 5.1.1 unknown user\n"
    )
    raw = f"From: MAILER-DAEMON@mx.example\nSubject: Mail delivery failed\n\n{text}".encode()
    verdict = classify(raw)
    assert (verdict.kind, verdict.status, verdict.recipients) == (Kind.UNKNOWN, "", ())
    assert verdict.bounce_tokens == (TOKEN,)
    assert verdict.unsubscribe_tokens == (UNSUB,)


@pytest.mark.parametrize("ctype", ["message/rfc822", "message/global", "text/rfc822-headers"])
def test_the_original_can_be_a_message_or_its_headers(ctype: str) -> None:
    raw = bounce_notice(
        part("text/plain", "Delivery to the following recipient failed permanently.\n"),
        part(ctype, ORIGINAL_HEADERS + "\nbody\n"),
    )
    verdict = classify(raw)
    assert verdict.bounce_tokens == (TOKEN,)
    assert verdict.recipients == ("anna@example.org",)


@pytest.mark.parametrize("ctype", ["message/rfc822", "message/global", "text/rfc822-headers"])
def test_an_original_attached_inside_an_original_is_read_too(ctype: str) -> None:
    innermost = f"Return-Path: <bounces+{OTHER}@r.example>\nTo: carl@example.org\n\nhi\n"
    outer = ORIGINAL_HEADERS + "MIME-Version: 1.0\n" + part(ctype, innermost)
    raw = bounce_notice(part("text/plain", "Not delivered.\n"), part("message/rfc822", outer))
    verdict = classify(raw)
    assert verdict.bounce_tokens == (TOKEN, OTHER)
    assert verdict.recipients == ("anna@example.org", "carl@example.org")


def test_attachments_that_are_not_text_are_not_read() -> None:
    parts = [
        part("text/plain", "Your message could not be delivered.\n"),
        part(
            "application/octet-stream",
            f"<anna@example.org>: 550 5.1.1\nbounces+{TOKEN}@r.example\n",
        ),
        part("image/png", f"unsubscribe+{UNSUB}@r.example\n"),
    ]
    verdict = classify(bounce_notice(*parts))
    assert (verdict.status, verdict.recipients) == ("", ())
    assert (verdict.bounce_tokens, verdict.unsubscribe_tokens) == ((), ())


ARF_ORIGINAL = part("text/rfc822-headers", ORIGINAL_HEADERS)


@pytest.mark.parametrize(
    "params",
    [
        "; report-type=feedback-report",
        "; report-type=Feedback-Report",
        '; report-type="feedback-report"',
    ],
)
def test_the_report_type_alone_makes_a_complaint(params: str) -> None:
    # A feedback loop that leaves out the message/feedback-report part (AOL did).
    entity = multipart(
        [part("text/plain", "This is an abuse report.\n"), ARF_ORIGINAL], params=params
    )
    verdict = classify(message("From: fbl@isp.example\nSubject: Abuse report\n", entity))
    assert (verdict.kind, verdict.reason) == (Kind.COMPLAINT, "ARF Feedback-Type: none")
    assert verdict.recipients == ("anna@example.org",)


def test_the_report_type_is_that_of_the_first_report_outside_an_original() -> None:
    def raw(outer_params: str, inner: str) -> bytes:
        entity = multipart([part("text/plain", "Report.\n"), inner], params=outer_params, b="outer")
        return message("From: fbl@isp.example\nSubject: Report\n", entity)

    arf = multipart([ARF_ORIGINAL], params="; report-type=feedback-report", b="inner")
    # A report without a type holding one with a type: the inner one says what it is.
    assert classify(raw("", arf)).kind == Kind.COMPLAINT
    # The outer report's own type wins over the inner one's.
    assert classify(raw("; report-type=delivery-status", arf)).kind != Kind.COMPLAINT
    # Inside an attached message it is only quoted.
    quoted = part("message/rfc822", "Subject: quoted\nMIME-Version: 1.0\n" + arf)
    assert classify(raw("", quoted)).kind == Kind.UNKNOWN


def test_a_read_receipt_is_ignored() -> None:
    mdn = part(
        "message/disposition-notification",
        "Reporting-UA: x\nDisposition: manual-action/MDN-sent-manually; displayed\n",
    )
    expected = (Kind.IGNORED, "read receipt (MDN)")
    by_type = message(
        PERSON_HEADERS, multipart([mdn], params="; report-type=disposition-notification")
    )
    assert (classify(by_type).kind, classify(by_type).reason) == expected
    # By its part alone, or by the report type alone.
    by_part = message(PERSON_HEADERS, multipart([mdn], ctype="multipart/mixed"))
    assert (classify(by_part).kind, classify(by_part).reason) == expected
    by_param = message(
        PERSON_HEADERS,
        multipart([part("text/plain", "Read.\n")], params="; report-type=disposition-notification"),
    )
    assert (classify(by_param).kind, classify(by_param).reason) == expected
    gmdn = part(
        "message/global-disposition-notification",
        "Disposition: automatic-action/MDN-sent-automatically; displayed\n",
    )
    by_global = message(PERSON_HEADERS, multipart([gmdn], ctype="multipart/mixed"))
    assert (classify(by_global).kind, classify(by_global).reason) == expected


def test_a_recipient_block_that_looks_like_a_message_is_still_read() -> None:
    # A field block claiming "Content-Type: message/rfc822" is parsed as holding a message.
    block = (
        "Final-Recipient: rfc822; anna@example.org\nContent-Type: message/rfc822\n"
        "Action: delayed\nStatus: 4.4.1\n"
    )
    verdict = classify(report(dsn_part(PER_MESSAGE, block)))
    assert (verdict.status, verdict.recipients) == ("4.4.1", ("anna@example.org",))
    assert verdict.reason == "DSN Action: delayed, 4.4.1"


# -- report fields: blocks, continuation lines, line ends ------------------------------------

GLOBAL_DSN = (
    "Reporting-MTA: dns; mx.example\n"
    f"Original-Envelope-Id: {TOKEN}\n"
    "\n"
    " a stray continuation line\n"
    "Final-Recipient: rfc822; anna@example.org\n"
    "Free text without a field name\n"
    "Action: delayed\n"
    "Status: 4.4.1\n"
    "Diagnostic-Code: smtp; 451 4.4.1 <anna@example.org>: try: later\n"
    " second line\n"
    "\tthird line\n"
    " \t \n"
    "Final-Recipient: utf-8; bert@example.org\n"
    "ACTION: Delayed\n"
    "Status: 4.2.2\n"
)


def global_dsn_message(newline: str = "\n") -> bytes:
    raw = report(dsn_part(GLOBAL_DSN, ctype="message/global-delivery-status"))
    return raw.replace(b"\n", newline.encode())


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_the_fields_of_a_global_report_are_read_block_by_block(newline: str) -> None:
    verdict = classify(global_dsn_message(newline))
    assert verdict.kind == Kind.SOFT_BOUNCE
    assert verdict.recipients == ("anna@example.org", "bert@example.org")
    assert verdict.status == "4.4.1"
    assert verdict.diagnostic == "451 4.4.1 <anna@example.org>: try: later second line third line"
    assert verdict.reason == "DSN Action: delayed, 4.4.1"
    assert verdict.bounce_tokens == (TOKEN,)  # the per-message block's envelope id


def test_a_line_without_a_field_name_inside_a_block_starts_a_new_block() -> None:
    block = (
        "Final-Recipient: rfc822; anna@example.org\nthis line is junk\nAction: failed\n"
        "Status: 5.1.1\n"
    )
    top = MTA_HEADERS.replace("Subject", f"Original-Envelope-Id: {OTHER}\nSubject")
    per_message = f"{PER_MESSAGE}Original-Envelope-Id: {TOKEN}\n"
    verdict = classify(
        report(
            dsn_part(per_message, block),
            part("text/plain", "<bert@example.org>: failed\n"),
            top=top,
        )
    )
    assert verdict.status == "5.1.1"
    # The recipient field was cut off from its block: the text names the recipient.
    assert verdict.recipients == ("bert@example.org",)
    assert verdict.bounce_tokens == (OTHER, TOKEN)


def test_every_status_part_of_a_report_is_read() -> None:
    first = "Final-Recipient: rfc822; anna@example.org\nAction: delayed\nStatus: 4.4.1\n"
    second = "Final-Recipient: rfc822; bert@example.org\nAction: delayed\nStatus: 4.2.2\n"
    verdict = classify(report(dsn_part(PER_MESSAGE, first), dsn_part(PER_MESSAGE, second)))
    assert (verdict.recipients, verdict.status) == (
        ("anna@example.org", "bert@example.org"),
        "4.4.1",
    )


def test_the_first_of_repeated_fields_in_a_block_counts() -> None:
    block = (
        "Final-Recipient: rfc822; anna@example.org\nAction: delayed\nStatus: 4.4.7\nStatus: 4.2.2\n"
    )
    assert classify(report(dsn_part(PER_MESSAGE, block))).status == "4.4.7"


# -- tokens, best evidence first ----------------------------------------------------------


def tok(name: str) -> str:
    """A token-shaped name: letters only, padded to 24 characters."""
    return name.ljust(24, "a")


def test_bounce_tokens_come_best_evidence_first() -> None:
    t = {
        n: tok(n)
        for n in [
            *("xoriginalto", "deliveredto", "envelopeto", "tofield", "envidheader"),
            *("envidfield", "postfixsender", "returnpathone", "returnpathtwo", "replyto"),
            *("noticetext", "quotedtext", "notfirstblock"),
        ]
    }
    top = (
        "From: MAILER-DAEMON@mx.example\n"
        f"To: bounces+{t['tofield']}@r.example\n"
        f"Envelope-To: bounces+{t['envelopeto']}@r.example\n"
        f"Delivered-To: bounces+{t['deliveredto']}@r.example\n"
        f"X-Original-To: bounces+{t['xoriginalto']}@r.example\n"
        f"Original-Envelope-Id: {t['envidheader']}\n"
        "Subject: Delivery report\n"
    )
    per_message = (
        f"{PER_MESSAGE}X-Postfix-Sender: rfc822; bounces+{t['postfixsender']}@r.example\n"
        f"Original-Envelope-Id: bounces+{t['envidfield']}@r.example\n"
    )
    recipient = (
        "Final-Recipient: rfc822; anna@example.org\nAction: failed\nStatus: 5.1.1\n"
        f"Original-Envelope-Id: {t['notfirstblock']}\n"  # per message only: not read here
    )
    raw = report(
        part(
            "message/rfc822",
            f"Return-Path: <bounces+{t['returnpathtwo']}@r.example>\n\n"
            f"quoted: bounces+{t['quotedtext']}@r.example\n",
        ),
        part("text/plain", f"The mail system (bounces+{t['noticetext']}@r.example)\n"),
        dsn_part(per_message, recipient),
        part(
            "text/rfc822-headers",
            f"Reply-To: bounces+{t['replyto']}@r.example\n"
            f"Return-Path: <bounces+{t['returnpathone']}@r.example>\n",
        ),
        top=top,
    )
    expected = [
        *("xoriginalto", "deliveredto", "envelopeto", "tofield", "envidheader", "envidfield"),
        *("postfixsender", "returnpathtwo", "returnpathone", "replyto", "noticetext"),
        "quotedtext",
    ]
    assert classify(raw).bounce_tokens == tuple(t[n] for n in expected)


def test_arf_original_mail_from_comes_before_other_report_fields() -> None:
    fields = (
        f"Feedback-Type: abuse\nX-Sender: bounces+{tok('otherfield')}@r.example\n"
        f"Original-Mail-From: <bounces+{tok('originalmailfrom')}@r.example>\n"
    )
    top = MTA_HEADERS + f"Delivered-To: bounces+{tok('deliveredto')}@r.example\n"
    raw = report(
        part("message/feedback-report", fields), ARF_ORIGINAL, top=top, kind="feedback-report"
    )
    expected = (tok("deliveredto"), tok("originalmailfrom"), tok("otherfield"), TOKEN)
    assert classify(raw).bounce_tokens == expected


def test_an_envelope_id_is_a_token_only_when_it_looks_like_one() -> None:
    def raw(envid: str) -> bytes:
        top = MTA_HEADERS.replace("To: news@shop.example", f"Original-Envelope-Id: {envid}")
        return report(
            dsn_part(PER_MESSAGE, "Final-Recipient: rfc822; a@example.org\nAction: failed\n"),
            top=top,
        )

    assert classify(raw(TOKEN.upper())).bounce_tokens == (TOKEN,)
    assert classify(raw(f"<bounces+{TOKEN}@r.example>")).bounce_tokens == (TOKEN,)
    for not_a_token in ("NONE", "a" * 19, "a" * 51, "c7.k1001@shop.example", TOKEN + "1"):
        assert classify(raw(not_a_token)).bounce_tokens == ()


def test_tokens_in_other_senders_verp_addresses_are_not_ours() -> None:
    raw = (
        f"To: automated-bounces+{TOKEN}@r.example\nDelivered-To: x.bounces+{OTHER}@r.example\n"
        f"Subject: hello\n\nmy-unsubscribe+{UNSUB}@r.example\n"
    ).encode()
    verdict = classify(raw)
    assert (verdict.bounce_tokens, verdict.unsubscribe_tokens) == ((), ())


def test_unsubscribe_tokens_come_best_evidence_first() -> None:
    original = (
        f"X-Other: unsubscribe+{tok('otherheader')}@r.example\n"
        f"List-Unsubscribe: <https://shop.example/u/{tok('urltoken')}>,\n"
        f" <mailto:unsubscribe+{tok('mailtotoken')}@r.example?subject=unsubscribe>\n"
        "To: anna@example.org\n"
    )
    notice = (
        f"A mention of unsubscribe+{tok('plainmention')}@r.example is no unsubscribe link.\n"
        f"List-Unsubscribe: <https://shop.example/u/{tok('texturl')}>,\n"
        f"\t<mailto:unsubscribe+{tok('textmailto')}@r.example>\n"
    )
    top = MTA_HEADERS + f"Delivered-To: unsubscribe+{tok('delivered')}@r.example\n"
    raw = report(
        part("text/plain", notice),
        part("message/feedback-report", "Feedback-Type: abuse\n"),
        part("text/rfc822-headers", original),
        top=top,
        kind="feedback-report",
    )
    expected = ["delivered", "mailtotoken", "urltoken", "otherheader", "textmailto", "texturl"]
    assert classify(raw).unsubscribe_tokens == tuple(tok(n) for n in expected)


def test_a_copy_of_our_message_in_a_bounce_text_gives_its_unsubscribe_link() -> None:
    # Exim quotes the original's headers as text; the token in the link is read there.
    text = (
        "A message that you sent could not be delivered.\n"
        "------ This is a copy of the message's headers. ------\n"
        f"List-Unsubscribe: <https://shop.example/u/{UNSUB.upper()}>\n"
    )
    raw = f"From: MAILER-DAEMON@mx.example\nSubject: Mail delivery failed\n\n{text}".encode()
    assert classify(raw).unsubscribe_tokens == (UNSUB,)


def test_a_folded_unsubscribe_header_quoted_with_crlf_line_ends_is_read_whole() -> None:
    text = (
        "A message that you sent could not be delivered.\r\n"
        "------ This is a copy of the message's headers. ------\r\n"
        f"List-Unsubscribe: <https://shop.example/u/{tok('urltoken')}>,\r\n"
        f" <mailto:unsubscribe+{tok('mailtotoken')}@r.example>\r\n"
    )
    raw = "From: MAILER-DAEMON@mx.example\r\nSubject: Mail delivery failed\r\n\r\n" + text
    assert classify(raw.encode()).unsubscribe_tokens == (tok("mailtotoken"), tok("urltoken"))


# -- recipients ---------------------------------------------------------------------------


def text_bounce(body: str, headers: str = "", subject: str = "Undeliverable: Spring sale") -> bytes:
    return f"From: MAILER-DAEMON@mx.example\n{headers}Subject: {subject}\n\n{body}".encode()


def test_failed_recipients_headers_name_every_address_but_our_own() -> None:
    headers = (
        "X-Failed-Recipients: ..Xavier@example.org, postmaster@example.org,\n"
        f" MAILER-DAEMON@example.org, bounces+{TOKEN}@r.example, bert@example.org\n"
        "X-Failed-Recipients: carl@example.org\n"
    )
    verdict = classify(text_bounce("Not delivered.\n", headers))
    assert verdict.recipients == ("Xavier@example.org", "bert@example.org", "carl@example.org")


def test_recipients_in_a_bounce_text() -> None:
    body = (
        "The mail system\n\n"
        "<anna@example.org>: host mx.example.org said: 550 5.1.1 unknown\n"
        "<bert@example.org>... User unknown\n"
        "  <carl@example.org> (expanded from <list@example.org>): mailbox full\n"
        "not a recipient line: <dora@example.org>:\n"
        "Your message to eve@example.org, fred@example.org couldn't be delivered.\n"
    )
    headers = "X-Failed-Recipients: gina@example.org\n"
    verdict = classify(text_bounce(body, headers))
    assert verdict.recipients == (
        "gina@example.org",
        "anna@example.org",
        "bert@example.org",
        "carl@example.org",
        "eve@example.org",
    )


def test_only_the_first_address_after_a_phrase_is_a_recipient() -> None:
    body = "The following address(es) failed: anna@example.org, bert@example.org\n"
    assert classify(text_bounce(body)).recipients == ("anna@example.org",)


def test_each_address_on_a_line_of_its_own_is_a_recipient() -> None:
    # Exim lists every failed address on a line of its own.
    body = "The following address(es) failed:\n\n  anna@example.org\n  bert@example.org\n"
    assert classify(text_bounce(body)).recipients == ("anna@example.org", "bert@example.org")


def test_an_address_after_a_phrase_must_follow_within_200_characters() -> None:
    def body(gap: int) -> str:
        return "Your message to" + " " * gap + "bob@example.org could not be delivered.\n"

    assert classify(text_bounce(body(150))).recipients == ("bob@example.org",)
    assert classify(text_bounce(body(196))).recipients == ()


def test_only_the_first_address_of_a_recipient_line_counts() -> None:
    body = "<anna@example.org,bert@example.org>: 550 5.1.1 unknown\n"
    assert classify(text_bounce(body)).recipients == ("anna@example.org",)


def test_the_originals_first_to_address_is_the_last_resort() -> None:
    original = (
        "To: anna@example.org, bert@example.org\nTo: carl@example.org\nCc: dora@example.org\n\nhi\n"
    )
    raw = bounce_notice(
        part("text/plain", "Not delivered: 550 5.1.1\n"), part("message/rfc822", original)
    )
    assert classify(raw).recipients == ("anna@example.org",)


def test_recipients_are_listed_once_whatever_their_case() -> None:
    headers = "X-Failed-Recipients: Anna@Example.org\n"
    body = "<anna@example.org>: 550 5.1.1 unknown\n<ANNA@EXAMPLE.ORG>: again\n"
    assert classify(text_bounce(body, headers)).recipients == ("Anna@Example.org",)


# -- delivery status reports ---------------------------------------------------------------


def one_dsn(block: str, *more: str, top: str = MTA_HEADERS) -> Verdict:
    return classify(report(dsn_part(PER_MESSAGE, block), *more, top=top))


def test_the_recipient_fields_of_a_report_in_their_order() -> None:
    block = (
        "X-Actual-Recipient: rfc822; dora@example.org\n"
        "Final-Recipient: RFC822;bert@example.org, carl@example.org\n"
        "Original-Recipient: rfc822;<anna@example.org>\n"
        "Action: failed\nStatus: 5.1.1\n"
    )
    text = part("text/plain", "<eve@example.org>: delivered\n")
    verdict = one_dsn(block, text)
    # Original, final, actual; the first address of each; the text's list is not used.
    assert verdict.recipients == ("anna@example.org", "bert@example.org", "dora@example.org")


def test_a_report_without_recipient_fields_falls_back_to_the_text_and_the_original() -> None:
    text = part("text/plain", "<eve@example.org>: host said: 550 5.1.1 unknown\n")
    original = part("text/rfc822-headers", "To: fred@example.org\n")
    verdict = one_dsn("Action: failed\nStatus: 5.1.1\n", text, original)
    assert verdict.recipients == ("eve@example.org", "fred@example.org")
    assert verdict.status == "5.1.1"


@pytest.mark.parametrize(
    ("block", "reason"),
    [
        ("Action: delayed\n", "DSN Action: delayed, no status"),
        ("Status: 4.4.1\n", "DSN Action: none, 4.4.1"),
        (
            "Final-Recipient: rfc822; a@example.org\nDiagnostic-Code: smtp; 451 later\n",
            "DSN Action: none, no status",
        ),
    ],
)
def test_any_of_action_status_or_final_recipient_makes_a_recipient_block(
    block: str, reason: str
) -> None:
    text = part("text/plain", "<a@example.org>: host said: 451 4.2.2 mailbox full\n")
    verdict = one_dsn(block, text)
    assert (verdict.reason, verdict.recipients) == (reason, ("a@example.org",))


def test_the_status_field_beats_a_code_in_the_diagnostic() -> None:
    block = (
        "Final-Recipient: rfc822; a@example.org\nAction: delayed\nStatus: 4.4.7\n"
        "Diagnostic-Code: smtp; 550 5.1.1 x\n"
    )
    assert one_dsn(block).status == "4.4.7"


@pytest.mark.parametrize(
    ("status", "diagnostic", "expected"),
    [
        ("", "smtp; 450 4.2.2 mailbox full", "4.2.2"),
        ("4.2.2 (mailbox full)", "", "4.2.2"),
        ("X.0.0", "smtp; 452 4.2.2 over quota", "4.2.2"),
        ("4.2", "", ""),
        ("", "smtp; 451 try 4.4.1.2 later", ""),
    ],
)
def test_the_status_is_read_from_the_field_or_else_the_diagnostic(
    status: str, diagnostic: str, expected: str
) -> None:
    block = "Final-Recipient: rfc822; a@example.org\nAction: delayed\n"
    block += f"Status: {status}\n" if status else ""
    block += f"Diagnostic-Code: {diagnostic}\n" if diagnostic else ""
    assert one_dsn(block).status == expected


@pytest.mark.parametrize(
    ("action", "status", "reason"),
    [
        ("FAILED", "5.1.1", "DSN Action: failed, 5.1.1"),
        ("failed (permanent)", "5.1.1", "DSN Action: failed, 5.1.1"),
        ("failed", "", "DSN Action: failed, no status"),
        ("", "4.7.1", "DSN Action: none, 4.7.1"),
        ("x" * 60, "4.2.2", "DSN Action: " + "x" * 40 + ", 4.2.2"),
    ],
)
def test_the_reason_names_the_action_and_status_read(action: str, status: str, reason: str) -> None:
    block = "Final-Recipient: rfc822; a@example.org\n"
    block += f"Action: {action}\n" if action else ""
    block += f"Status: {status}\n" if status else ""
    assert one_dsn(block).reason == reason


@pytest.mark.parametrize(
    ("code", "diagnostic"),
    [
        ("smtp; 550 5.1.1 <a@example.org>: unknown", "550 5.1.1 <a@example.org>: unknown"),
        ("smtp;550 5.1.1 unknown", "550 5.1.1 unknown"),
        ("X-Postfix;   host said: 550 unknown", "host said: 550 unknown"),
        ("550 5.1.1 no type given", "550 5.1.1 no type given"),
        ("smtp; 550-5.1.1 one\n 550 5.1.1 two", "550-5.1.1 one 550 5.1.1 two"),
    ],
)
def test_the_diagnostic_is_the_code_without_its_type(code: str, diagnostic: str) -> None:
    block = f"Final-Recipient: rfc822; a@example.org\nAction: failed\nDiagnostic-Code: {code}\n"
    assert one_dsn(block).diagnostic == diagnostic


def test_a_recipient_block_with_only_a_diagnostic_is_still_read() -> None:
    block = (
        "Final-Recipient: rfc822; a@example.org\n"
        "Diagnostic-Code: smtp; 550 Requested action not taken\n"
    )
    verdict = one_dsn(block)
    assert verdict.reason == "DSN Action: none, no status"
    assert verdict.diagnostic == "550 Requested action not taken"
    assert verdict.recipients == ("a@example.org",)


def test_blocks_that_are_not_about_a_recipient_are_passed_over() -> None:
    # A per-message block may carry a diagnostic of its own: it names no recipient.
    per_message = f"{PER_MESSAGE}Diagnostic-Code: smtp; 550 5.1.1 per message\n"
    block = "Final-Recipient: rfc822; a@example.org\nAction: delayed\nStatus: 4.4.1\n"
    verdict = classify(report(dsn_part(per_message, block)))
    assert (verdict.status, verdict.diagnostic, verdict.recipients) == (
        "4.4.1",
        "",
        ("a@example.org",),
    )


@pytest.mark.parametrize(
    "fields", ["Action: delivered\n", "Action: Relayed\n", "Action: expanded\n", "Status: 2.1.5\n"]
)
def test_reports_of_success_are_ignored(fields: str) -> None:
    verdict = one_dsn("Final-Recipient: rfc822; ok@example.org\n" + fields)
    assert (verdict.kind, verdict.recipients) == (Kind.IGNORED, ("ok@example.org",))


def test_an_unreadable_recipient_block_does_not_hide_the_next_one() -> None:
    blocks = [
        "Final-Recipient: rfc822; anna@example.org\nAction: unknown-action\n",
        "Final-Recipient: rfc822; bert@example.org\nAction: delayed\nStatus: 4.4.1\n",
    ]
    verdict = classify(report(dsn_part(PER_MESSAGE, *blocks)))
    assert (verdict.recipients, verdict.status) == (("bert@example.org",), "4.4.1")


def test_a_report_with_no_readable_recipient_block_is_read_as_a_bounce_text() -> None:
    # Neither action, status nor a reply code: the notice's own text is all there is.
    block = "Final-Recipient: rfc822; a@example.org\nAction: unknown-action\n"
    text = part("text/plain", "<a@example.org>: host said: 550 5.1.1 no such user\n")
    top = "From: it@corp.example\nSubject: Notice\n"
    verdict = one_dsn(block, text, top=top)
    assert (verdict.status, verdict.recipients) == ("5.1.1", ("a@example.org",))
    assert verdict.diagnostic == "<a@example.org>: host said: 550 5.1.1 no such user"
    assert verdict.reason == "bounce text: 5.1.1"


def test_recipients_of_the_same_outcome_are_all_listed_the_first_gives_the_status() -> None:
    blocks = [
        "Final-Recipient: rfc822; anna@example.org\nAction: delayed\nStatus: 4.4.1\n"
        "Diagnostic-Code: smtp; 451 4.4.1 first\n",
        "Final-Recipient: rfc822; bert@example.org\nAction: delayed\nStatus: 4.2.2\n"
        "Diagnostic-Code: smtp; 452 4.2.2 second\n",
    ]
    verdict = classify(report(dsn_part(PER_MESSAGE, *blocks)))
    assert verdict.recipients == ("anna@example.org", "bert@example.org")
    assert (verdict.status, verdict.diagnostic) == ("4.4.1", "451 4.4.1 first")


def test_delivered_recipients_are_never_the_ones_reported() -> None:
    blocks = [
        "Final-Recipient: rfc822; ok@example.org\nAction: delivered\nStatus: 2.0.0\n",
        "Final-Recipient: rfc822; late@example.org\nAction: delayed\nStatus: 4.4.1\n",
        "Final-Recipient: rfc822; ok2@example.org\nAction: relayed\nStatus: 2.0.0\n",
    ]
    verdict = classify(report(dsn_part(PER_MESSAGE, *blocks)))
    assert (verdict.kind, verdict.recipients, verdict.status) == (
        Kind.SOFT_BOUNCE,
        ("late@example.org",),
        "4.4.1",
    )
    only_delivered = classify(report(dsn_part(PER_MESSAGE, blocks[0], blocks[2])))
    assert only_delivered.kind == Kind.IGNORED
    assert only_delivered.recipients == ("ok@example.org", "ok2@example.org")
    assert only_delivered.reason == "DSN Action: delivered, 2.0.0"


# -- feedback reports (ARF, RFC 5965) ------------------------------------------------------


def arf(*fields_parts: str, original: str = ARF_ORIGINAL) -> Verdict:
    parts = [part("text/plain", "This is an abuse report.\n")]
    parts += [part("message/feedback-report", f) for f in fields_parts]
    return classify(
        report(
            *parts,
            original,
            top="From: fbl@isp.example\nSubject: FW: Spring sale\n",
            kind="feedback-report",
        )
    )


@pytest.mark.parametrize(
    ("feedback", "kind", "reason"),
    [
        ("abuse", Kind.COMPLAINT, "ARF Feedback-Type: abuse"),
        ("Abuse", Kind.COMPLAINT, "ARF Feedback-Type: abuse"),
        ("fraud", Kind.COMPLAINT, "ARF Feedback-Type: fraud"),
        ("virus", Kind.COMPLAINT, "ARF Feedback-Type: virus"),
        ("other", Kind.COMPLAINT, "ARF Feedback-Type: other"),
        ("abuse (user clicked spam)", Kind.COMPLAINT, "ARF Feedback-Type: abuse"),
        ("not-spam", Kind.IGNORED, "ARF Feedback-Type: not-spam"),
        ("NOT-SPAM", Kind.IGNORED, "ARF Feedback-Type: not-spam"),
        ("auth-failure", Kind.IGNORED, "ARF Feedback-Type: auth-failure"),
        ("x" * 60, Kind.COMPLAINT, "ARF Feedback-Type: " + "x" * 40),
    ],
)
def test_arf_feedback_types(feedback: str, kind: Kind, reason: str) -> None:
    verdict = arf(f"Feedback-Type: {feedback}\nUser-Agent: x/1\nVersion: 1\n")
    assert (verdict.kind, verdict.reason) == (kind, reason)
    assert verdict.bounce_tokens == (TOKEN,) and verdict.status == ""
    assert verdict.recipients == ("anna@example.org",)  # named whatever the type


def test_an_arf_report_without_a_feedback_type_is_a_complaint_of_type_none() -> None:
    verdict = arf("User-Agent: x/1\nVersion: 1\n")
    assert (verdict.kind, verdict.reason) == (Kind.COMPLAINT, "ARF Feedback-Type: none")


def test_the_first_feedback_report_says_the_type() -> None:
    assert arf("Feedback-Type: not-spam\n", "Feedback-Type: abuse\n").kind == Kind.IGNORED
    assert arf("Feedback-Type: abuse\n", "Feedback-Type: not-spam\n").kind == Kind.COMPLAINT


def test_the_complained_about_recipients_in_their_order() -> None:
    first = (
        "Feedback-Type: abuse\nRemoval-Recipient: rem1@example.org, rem2@example.org\n"
        "Original-Rcpt-To: <rcpt@example.org>\n"
    )
    second = "Feedback-Type: abuse\nOriginal-Rcpt-To: other@example.org\n"
    verdict = arf(first, second)
    assert verdict.recipients == (
        "rcpt@example.org",
        "rem1@example.org",
        "rem2@example.org",
        "other@example.org",
        "anna@example.org",  # the original's first To address comes last
    )


def test_arf_fields_after_a_free_text_line_are_still_read() -> None:
    fields = "Feedback-Type: abuse\nThis line is not a field\nOriginal-Rcpt-To: rcpt@example.org\n"
    assert arf(fields).recipients == ("rcpt@example.org", "anna@example.org")


# -- auto-replies -------------------------------------------------------------------------


def person(header: str, subject: str = "Hello", to: str = "news@shop.example") -> Verdict:
    raw = f"From: bob@example.org\nTo: {to}\nSubject: {subject}\n{header}\n\nAway.\n"
    return classify(raw.encode())


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ("X-Autoreply: yes", "X-Autoreply"),
        ("X-Autoreply: YES", "X-Autoreply"),
        ("X-Autorespond: ", "X-Autorespond"),
        ("X-Autorespond: Vacation", "X-Autorespond"),
        ("Precedence: Auto_Reply", "Precedence: auto_reply"),
        (
            "Auto-Submitted: Auto-Replied; owner-email=bob@example.org",
            "Auto-Submitted: auto-replied",
        ),
        ("Auto-Submitted: auto-generated", "Auto-Submitted: auto-generated"),
        ("Auto-Submitted: auto-notified", "Auto-Submitted: auto-notified"),
        ("Auto-Submitted: " + "y" * 60, "Auto-Submitted: " + "y" * 40),
    ],
)
def test_auto_reply_headers(header: str, reason: str) -> None:
    verdict = person(header)
    assert (verdict.kind, verdict.reason) == (Kind.AUTO_REPLY, reason)


@pytest.mark.parametrize(
    "header",
    [
        "X-Autoreply: no",
        "X-Autoreply: No",
        "X-Autoreply: false",
        "X-Autoreply: 0",
        "X-Autoreply: ",
        "Precedence: bulk",
        "Precedence: junk",
        "Auto-Submitted: no",
        "Auto-Submitted: NO",
        "Auto-Submitted: ",
    ],
)
def test_headers_that_say_no_auto_reply(header: str) -> None:
    verdict = person(header)
    assert (verdict.kind, verdict.reason) == (
        Kind.UNKNOWN,
        "not a report, bounce, auto-reply or unsubscribe",
    )


def test_the_strongest_auto_reply_signal_is_named() -> None:
    headers = (
        "X-Autoreply: yes\nX-Autorespond: yes\nPrecedence: auto_reply\nAuto-Submitted: auto-replied"
    )
    assert person(headers, subject="Out of office").reason == "X-Autoreply"
    headers = "X-Autorespond: yes\nPrecedence: auto_reply\nAuto-Submitted: auto-replied"
    assert person(headers, subject="Out of office").reason == "X-Autorespond"
    headers = "Precedence: auto_reply\nAuto-Submitted: auto-replied"
    assert person(headers, subject="Out of office").reason == "Precedence: auto_reply"
    assert (
        person("Auto-Submitted: auto-replied", subject="Out of office").reason
        == "auto-reply subject"
    )


def test_a_persons_auto_replied_header_beats_a_bounce_like_subject() -> None:
    verdict = person("Auto-Submitted: auto-replied", subject="Undeliverable: your order")
    assert (verdict.kind, verdict.reason) == (Kind.AUTO_REPLY, "Auto-Submitted: auto-replied")


def test_a_bounce_notice_is_not_an_auto_reply_for_its_auto_submitted_header() -> None:
    for submitted in ("auto-replied", "auto-generated (failure)"):
        raw = text_bounce(
            "<anna@example.org>: 550 5.1.1 unknown\n", f"Auto-Submitted: {submitted}\n"
        )
        verdict = classify(raw)
        assert verdict.kind != Kind.AUTO_REPLY and verdict.status == "5.1.1"
        assert verdict.recipients == ("anna@example.org",)


def test_a_bounce_subject_is_not_an_auto_reply_subject() -> None:
    verdict = classify(
        text_bounce("550 5.1.1 unknown\n", subject="Auto: Undeliverable: Spring sale")
    )
    assert verdict.kind != Kind.AUTO_REPLY and verdict.status == "5.1.1"


def test_an_auto_reply_to_our_unsubscribe_address_is_an_auto_reply() -> None:
    to = f"unsubscribe+{UNSUB}@r.example"
    verdict = person("Auto-Submitted: auto-replied", to=to)
    assert (verdict.kind, verdict.reason) == (Kind.AUTO_REPLY, "Auto-Submitted: auto-replied")
    assert verdict.unsubscribe_tokens == (UNSUB,)


# -- what kind of message: the order of the checks ------------------------------------------


def test_mail_to_our_unsubscribe_address_unsubscribes_and_offers_nothing_else() -> None:
    for header in ("To", "Delivered-To", "X-Original-To", "Envelope-To"):
        raw = (
            f"From: anna@example.org\n{header}: <unsubscribe+{UNSUB.upper()}@r.example>\n"
            f"Subject: unsubscribe\n\nbounces+{TOKEN}@r.example\n"
        ).encode()
        expected = Verdict(Kind.UNSUBSCRIBE, (), (UNSUB,), (), reason="mail to unsubscribe+")
        assert classify(raw) == expected


def test_an_unsubscribe_address_in_the_body_only_unsubscribes_nobody() -> None:
    raw = f"From: anna@example.org\nSubject: hi\n\nunsubscribe+{UNSUB}@r.example\n"
    verdict = classify(raw.encode())
    assert verdict.kind == Kind.UNKNOWN and verdict.unsubscribe_tokens == ()


@pytest.mark.parametrize(
    "headers",
    [
        "From: it@corp.example\nSender: Mail Delivery Subsystem <mailer-daemon@corp.example>\n",
        "From: it@corp.example\nX-Failed-Recipients: anna@example.org\n",
        "From: Microsoft Outlook <MicrosoftExchange329e71ec88ae4615bbc3@corp.example>\n",
        "From: postmaster@corp.example\n",
    ],
)
def test_a_notice_from_a_mail_system_is_read_as_a_bounce_whatever_its_subject(headers: str) -> None:
    raw = f"{headers}Subject: Notice\n\n<anna@example.org>: Remote said: 550 5.1.1 no such user\n"
    verdict = classify(raw.encode())
    assert (verdict.status, verdict.recipients) == ("5.1.1", ("anna@example.org",))
    assert verdict.diagnostic == "<anna@example.org>: Remote said: 550 5.1.1 no such user"


def test_a_status_part_outside_a_report_makes_a_bounce_notice() -> None:
    # message/delivery-status in multipart/mixed; its one block says nothing readable.
    dsn = dsn_part(PER_MESSAGE, "Final-Recipient: rfc822; a@example.org\nAction: unknown-action\n")
    text = part("text/plain", "<a@example.org>: host said: 550 5.1.1 no such user\n")
    entity = multipart([text, dsn], ctype="multipart/mixed")
    verdict = classify(message("From: it@corp.example\nSubject: Notice\n", entity))
    assert (verdict.status, verdict.recipients) == ("5.1.1", ("a@example.org",))


def test_a_delivery_status_report_without_its_status_part_is_read_as_a_bounce_text() -> None:
    entity = multipart(
        [part("text/plain", "<anna@example.org>: said: 550 5.1.1 unknown\n")],
        params="; report-type=delivery-status",
    )
    verdict = classify(message("From: it@corp.example\nSubject: Notice\n", entity))
    assert (verdict.status, verdict.recipients) == ("5.1.1", ("anna@example.org",))


def test_a_persons_mail_is_unknown_even_with_bounce_words_in_it() -> None:
    body = "<anna@example.org>: Remote said: 550 5.1.1 no such user\n"
    for subject in (
        "Notice",
        "Re: Undeliverable parcels?",
        "AW: Unzustellbar",
        "Fwd: Delivery failure",
    ):
        raw = f"From: bob@example.org\nSubject: {subject}\n\n{body}".encode()
        verdict = classify(raw)
        assert (verdict.kind, verdict.status, verdict.recipients) == (Kind.UNKNOWN, "", ())


# -- bounce texts without a report: status and diagnostic -------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "diagnostic"),
    [
        # The whole line that holds the code, wherever it is.
        ("550 5.1.1 first line\nsecond line\n", "5.1.1", "550 5.1.1 first line"),
        (
            "intro\n  Remote said: 550 5.1.1 no such user  \ntrailer\n",
            "5.1.1",
            "Remote said: 550 5.1.1 no such user",
        ),
        ("intro\nlast line: 550 5.1.1 end", "5.1.1", "last line: 550 5.1.1 end"),
        # A success code is not a failure's; a 5.x.x code beats a bare 5xx reply.
        ("250 2.1.5 ok\nsaid: 550 rejected\nthen: 5.1.1 unknown\n", "5.1.1", "then: 5.1.1 unknown"),
        ("said: 550 rejected\n", "", "said: 550 rejected"),
        ("host mx.example.org: 554-5.7 blocked\n", "", "host mx.example.org: 554-5.7 blocked"),
        # Phrases when there is no code; a temporary code's status still says what it is.
        ("It says 4.4.1 and:\nThe user unknown here.\n", "4.4.1", "It says 4.4.1 and:"),
        (
            "Sorry, no mailbox here by that name. (#5.1.1)\n",
            "5.1.1",
            "Sorry, no mailbox here by that name. (#5.1.1)",
        ),
        (
            "a\nRemote said: 452 4.2.2 Mailbox full\nb\n",
            "4.2.2",
            "Remote said: 452 4.2.2 Mailbox full",
        ),
        ("a\nRemote said: 452 too much mail\nb\n", "", "Remote said: 452 too much mail"),
        ("a\nThe mailbox is full.\nb\n", "", "The mailbox is full."),
        (
            "a\nReported status 4.2.2 for this one\nb\n",
            "4.2.2",
            "Reported status 4.2.2 for this one",
        ),
        ("Nothing to go by here.\n", "", ""),
    ],
)
def test_the_status_and_diagnostic_of_a_bounce_text(
    body: str, status: str, diagnostic: str
) -> None:
    verdict = classify(text_bounce(body))
    assert (verdict.status, verdict.diagnostic) == (status, diagnostic)


def test_a_delay_notice_without_a_code_has_no_status_or_diagnostic() -> None:
    verdict = classify(
        text_bounce("Nothing to go by.\n", subject="Delayed Mail (still being retried)")
    )
    assert (verdict.status, verdict.diagnostic) == ("", "")


def test_a_bounce_text_in_latin1_is_decoded() -> None:
    raw = (
        "From: MAILER-DAEMON@mx.example\nSubject: Unzustellbar\n"
        "Content-Type: text/plain; charset=iso-8859-1\nContent-Transfer-Encoding: 8bit\n\n"
        "<anna@example.org>: 550 5.1.1 Empfänger unbekannt\n"
    ).encode("latin-1")
    verdict = classify(raw)
    assert verdict.diagnostic == "<anna@example.org>: 550 5.1.1 Empfänger unbekannt"
    assert verdict.recipients == ("anna@example.org",)


def test_a_bounce_text_with_an_unknown_charset_is_read_as_utf8() -> None:
    raw = (
        "From: MAILER-DAEMON@mx.example\nSubject: Unzustellbar\n"
        "Content-Type: text/plain; charset=x-unknown-charset\n\n"
        "<anna@example.org>: 550 5.1.1 Empfänger unbekannt\n"
    ).encode()
    assert classify(raw).diagnostic == "<anna@example.org>: 550 5.1.1 Empfänger unbekannt"


def test_a_bounce_text_with_old_mac_line_ends_is_read_line_by_line() -> None:
    text = "The mail system\r\r<anna@example.org>: host said: 550 5.1.1 unknown\rThe end\r"
    body = base64.encodebytes(text.encode()).decode()
    raw = (
        "From: MAILER-DAEMON@mx.example\nSubject: Undelivered Mail\n"
        f"Content-Type: text/plain\nContent-Transfer-Encoding: base64\n\n{body}"
    ).encode()
    verdict = classify(raw)
    assert verdict.recipients == ("anna@example.org",)
    assert verdict.diagnostic == "<anna@example.org>: host said: 550 5.1.1 unknown"


def test_a_quoted_printable_bounce_text_is_decoded() -> None:
    raw = (
        b"From: MAILER-DAEMON@mx.example\nSubject: Undelivered Mail\n"
        b"Content-Type: text/plain\nContent-Transfer-Encoding: quoted-printable\n\n"
        b"Return-Path: <bounces+verptoken=\naaaaaaaaaaaaaaa@r.example>\n"
        b"<anna=40example.org>: 550 5.1.1 unknown\n"
    )
    verdict = classify(raw)
    assert verdict.bounce_tokens == (TOKEN,)
    assert verdict.recipients == ("anna@example.org",)


def test_the_texts_of_a_multipart_notice_are_read_together() -> None:
    raw = bounce_notice(
        part("text/plain", "Your message to anna@example.org couldn't be delivered.\n"),
        part("text/plain", "Remote said: 550 5.1.1 unknown\n"),
    )
    verdict = classify(raw)
    assert (verdict.recipients, verdict.status) == (("anna@example.org",), "5.1.1")
    assert verdict.diagnostic == "Remote said: 550 5.1.1 unknown"


# -- real bounces from public corpora ----------------------------------------------------------


def public(name: str) -> Verdict:
    return classify((PUBLIC / name).read_bytes())


def test_every_public_corpus_file_names_its_source() -> None:
    names = sorted(p.name for p in PUBLIC.glob("*.eml"))
    assert names == [
        "flufl_bounce_sendmail_02.eml",
        "sisimai_arf_03.eml",
        "sisimai_email_exchange2007_02.eml",
        "sisimai_email_exim_02.eml",
    ]
    for name in names:
        assert (PUBLIC / name).read_bytes().startswith(b"X-Corpus-Source: ")


def test_sendmail_text_bounce_from_flufl_bounce() -> None:
    verdict = public("flufl_bounce_sendmail_02.eml")
    assert verdict.recipients == ("foo@rbd.spb.ru",)
    assert (verdict.status, verdict.diagnostic) == ("5.1.1", "(reason: 550 5.1.1 User unknown)")
    assert (verdict.bounce_tokens, verdict.unsubscribe_tokens) == ((), ())


def test_exim_text_bounce_with_two_failed_recipients_from_sisimai() -> None:
    verdict = public("sisimai_email_exim_02.eml")
    # The folded X-Failed-Recipients header names both, before the text does.
    assert verdict.recipients == ("kijitora@example.jp", "sabatora@example.jp")
    assert verdict.status == "5.1.1"
    assert (
        verdict.diagnostic
        == "host mx.example.jp [192.0.2.153]: 550 5.1.1 <kijitora@example.jp>... User Unknown"
    )


def test_exchange_2007_report_from_sisimai() -> None:
    verdict = public("sisimai_email_exchange2007_02.eml")
    assert verdict.recipients == ("john.smith@eu.a.b.c",)
    assert verdict.status == "5.2.3"
    assert (
        verdict.diagnostic
        == "550 5.2.3 RESOLVER.RST.RecipSizeLimit; message too large for this recipient"
    )
    assert verdict.reason == "DSN Action: failed, 5.2.3"
    # "automated-bounces+...@" is another sender's VERP address, not ours.
    assert (verdict.bounce_tokens, verdict.unsubscribe_tokens) == ((), ())


def test_terra_abuse_report_from_sisimai() -> None:
    verdict = public("sisimai_arf_03.eml")
    assert (verdict.kind, verdict.reason) == (Kind.COMPLAINT, "ARF Feedback-Type: abuse")
    # The copy names no address ("undisclosed Terra recipient"): nobody is offered.
    assert (verdict.recipients, verdict.bounce_tokens, verdict.unsubscribe_tokens) == ((), (), ())


# ==========================================================================================
# THE REASON RULES (DESIGN.md §4, issue 14): the enhanced code first, then the words; the
# group of the reason decides. Address = hard; mailbox and transient = soft; sender or
# content = blocked, never suppressing; a failure with no readable reason = soft.
# ==========================================================================================

H, S, B = Kind.HARD_BOUNCE, Kind.SOFT_BOUNCE, Kind.BLOCKED


@pytest.mark.parametrize(
    ("fields", "kind", "cause"),
    [
        # The code decides.
        ("Action: failed\nStatus: 5.1.1\n", H, "user_unknown"),
        ("Action: failed\nStatus: 5.1.2\n", H, "host_unknown"),
        ("Action: failed\nStatus: 5.1.10\n", H, "host_unknown"),  # null MX, RFC 7505
        ("Action: failed\nStatus: 5.1.6\n", H, "has_moved"),
        ("Action: failed\nStatus: 5.2.1\n", H, "disabled"),
        ("Action: failed\nStatus: 5.2.2\n", S, "mailbox_full"),
        ("Action: delayed\nStatus: 5.2.2\n", S, "mailbox_full"),
        ("Action: failed\nStatus: 5.2.3\n", B, "too_big"),
        ("Action: failed\nStatus: 5.7.26\n", B, "auth_failure"),
        ("Status: 5.7.1\n", B, "blocked"),
        # `Action: failed` alone is not hard: expired after the MTA's retries.
        ("Action: failed\nStatus: 4.4.7\n", S, "expired"),
        ("Action: delayed\n", S, "delayed"),
        ("Status: 4.2.2\n", S, "mailbox_full"),
        # A temporary failure never makes an address dead, whatever its words.
        (
            "Action: delayed\nStatus: 4.1.1\nDiagnostic-Code: smtp; 450 4.1.1 user unknown\n",
            S,
            "delayed",
        ),
        # Without a code the words decide; none at all is a soft "unknown".
        ("Diagnostic-Code: smtp; 550 Requested action not taken\n", S, "unknown"),
        ("Diagnostic-Code: smtp; 550 No such user here\n", H, "user_unknown"),
        ("Diagnostic-Code: smtp; 450 Requested action not taken\n", S, "delayed"),
        ("Diagnostic-Code: x-unix; rejected by mx, 554 5.7 policy\n", B, "policy"),
        ("Diagnostic-Code: x-unix; rejected by mx, 454 4.7 later\n", B, "policy"),
        # Words that blame us win over an address code; a full mailbox too.
        (
            "Status: 5.1.1\nDiagnostic-Code: smtp; 550 5.1.1 blocked using zen.spamhaus.org\n",
            B,
            "blocked",
        ),
        (
            "Status: 5.1.1\nDiagnostic-Code: smtp; 552 mailbox is over quota (#5.1.1)\n",
            S,
            "mailbox_full",
        ),
    ],
)
def test_a_dsn_recipient_is_judged_by_code_then_words(fields: str, kind: Kind, cause: str) -> None:
    verdict = one_dsn("Final-Recipient: rfc822; a@example.org\n" + fields)
    assert (verdict.kind, verdict.cause.value) == (kind, cause)
    assert verdict.recipients == ("a@example.org",)
    assert [(f.kind, f.addresses) for f in verdict.failures] == [(kind, ("a@example.org",))]


def test_every_recipient_of_a_report_is_judged_on_its_own() -> None:
    blocks = [
        "Final-Recipient: rfc822; late@example.org\nAction: delayed\nStatus: 4.4.1\n",
        "Final-Recipient: rfc822; gone@example.org\nAction: failed\nStatus: 5.1.1\n"
        "Diagnostic-Code: smtp; 550 5.1.1 gone\n",
        "Final-Recipient: rfc822; ok@example.org\nAction: delivered\nStatus: 2.0.0\n",
        "Final-Recipient: rfc822; spam@example.org\nAction: failed\nStatus: 5.7.1\n"
        "Diagnostic-Code: smtp; 554 5.7.1 message looks like spam\n",
        "Final-Recipient: rfc822; full@example.org\nAction: failed\nStatus: 5.2.2\n",
    ]
    verdict = classify(report(dsn_part(PER_MESSAGE, *blocks)))
    # The worst speaks for the message; every failed one is listed, worst first, the
    # delivered one not at all.
    assert (verdict.kind, verdict.status, verdict.recipients) == (H, "5.1.1", ("gone@example.org",))
    assert verdict.diagnostic == "550 5.1.1 gone"
    assert [(f.addresses[0], f.kind, f.cause.value) for f in verdict.failures] == [
        ("gone@example.org", H, "user_unknown"),
        ("late@example.org", S, "network_error"),  # 4.4.1: no answer from host
        ("full@example.org", S, "mailbox_full"),
        ("spam@example.org", B, "spam_detected"),
    ]
    assert verdict.detector == "dsn"


def test_an_unreadable_report_falls_back_to_the_text() -> None:
    text = part("text/plain", "<a@example.org>: host said: 550 5.1.1 no such user\n")
    assert (
        one_dsn("Final-Recipient: rfc822; a@example.org\nAction: unknown-action\n", text).kind == H
    )


@pytest.mark.parametrize(
    ("subject", "body", "kind", "cause", "reason"),
    [
        ("Undeliverable", "550 5.1.1 first line\n", H, "user_unknown", "bounce text: 5.1.1"),
        ("Undeliverable", "said: 550 rejected\n", B, "policy", "bounce text: 550"),
        ("Undeliverable", "host mx: 554-5.7 blocked\n", B, "blocked", "bounce text: 554"),
        # A 4.x.x code with user-unknown words: never dead.
        (
            "Undeliverable",
            "It says 4.4.1 and:\nThe User Unknown here.\n",
            S,
            "expired",
            "bounce text: 4.4.1",
        ),
        ("Undeliverable", "This is a permanent error.\n", S, "unknown", "bounce text: unknown"),
        (
            "Undeliverable",
            "Remote said: 452 4.2.2 Mailbox full\n",
            S,
            "mailbox_full",
            "bounce text: 4.2.2",
        ),
        ("Undeliverable", "Remote said: 452 too much mail\n", S, "delayed", "bounce text: 452"),
        ("Undeliverable", "The mailbox is full.\n", S, "mailbox_full", "bounce text: mailbox_full"),
        (
            "Undeliverable",
            "Nothing to go by here.\n",
            Kind.UNKNOWN,
            "unknown",
            "bounce notice without a reason",
        ),
        ("Delayed Mail (still being retried)", "550 5.1.1 oddly\n", S, "delayed", "delay notice"),
        (
            "Undeliverable",
            "Remote said: 550 5.7.1 Service unavailable; client blocked using Spamhaus\n",
            B,
            "blocked",
            "bounce text: 5.7.1",
        ),
    ],
)
def test_a_bounce_text_is_judged_by_code_then_words(
    subject: str, body: str, kind: Kind, cause: str, reason: str
) -> None:
    verdict = classify(text_bounce(body, subject=subject))
    assert (verdict.kind, verdict.cause.value, verdict.reason) == (kind, cause, reason)


def test_a_delay_notice_reports_its_temporary_code() -> None:
    body = "a\nsaid: 550 5.1.1 earlier\nnow: 451 4.4.1 still trying\n"
    verdict = classify(text_bounce(body, subject="Delivery Status Notification (Delay)"))
    assert (verdict.kind, verdict.status, verdict.diagnostic) == (
        S,
        "4.4.1",
        "now: 451 4.4.1 still trying",
    )
    body = "a\nsaid: 451 later\n"
    verdict = classify(text_bounce(body, subject="Delivery Status Notification (Delay)"))
    assert (verdict.kind, verdict.status, verdict.diagnostic) == (S, "", "said: 451 later")


def test_each_recipient_of_a_bounce_text_is_judged_on_its_own_words() -> None:
    """Postfix, qmail and Exim texts list recipients one after another, each with its
    own reply; qmail says "I've given up" once, above them all."""
    qmail = (
        "Hi. This is the qmail-send program at example.com.\n"
        "I'm afraid I wasn't able to deliver your message to the following addresses.\n"
        "This is a permanent error; I've given up. Sorry it didn't work out.\n\n"
        "<gone@example.org>:\nSorry, no mailbox here by that name. (#5.1.1)\n\n"
        "<full@example.org>:\n192.0.2.1 said: 552 5.2.2 mailbox full\n\n"
        "<nohost@example.net>:\nSorry, I couldn't find any host by that name.\n"
    )
    verdict = classify(text_bounce(qmail, subject="failure notice"))
    assert sorted((f.addresses, f.kind, f.cause.value) for f in verdict.failures) == [
        (("full@example.org",), S, "mailbox_full"),
        (("gone@example.org",), H, "user_unknown"),
        (("nohost@example.net",), H, "host_unknown"),
    ]
    exim = (
        "A message that you sent could not be delivered to one or more of its\n"
        "recipients. This is a permanent error. The following address(es) failed:\n\n"
        "  anna@example.org\n"
        "    SMTP error from remote mail server after RCPT TO:<anna@example.org>:\n"
        "    host mx.example.org [192.0.2.1]: 550 5.7.1 Service unavailable; client\n"
        "    [192.0.2.9] blocked using zen.spamhaus.org\n"
        "  bert@example.org\n"
        "    SMTP error from remote mail server after RCPT TO:<bert@example.org>:\n"
        "    host mx.example.org [192.0.2.1]: 550 5.1.1 <bert@example.org>: User unknown\n"
    )
    verdict = classify(text_bounce(exim, subject="Mail delivery failed"))
    assert [(f.addresses, f.kind, f.cause.value) for f in verdict.failures] == [
        (("bert@example.org",), H, "user_unknown"),
        (("anna@example.org",), B, "blocked"),
    ]


@pytest.mark.parametrize(
    ("name", "kind", "cause"),
    [
        ("flufl_bounce_sendmail_02.eml", H, "user_unknown"),
        ("sisimai_email_exim_02.eml", H, "user_unknown"),
        ("sisimai_email_exchange2007_02.eml", B, "too_big"),  # 5.2.3: never suppresses
    ],
)
def test_public_corpus_kind(name: str, kind: Kind, cause: str) -> None:
    verdict = public(name)
    assert (verdict.kind, verdict.cause.value) == (kind, cause)


def test_a_report_whose_boundary_is_never_found_is_still_read() -> None:
    """A relay rewrote the boundary in the header but not in the body (seen in Sisimai's
    set): the parts are lost to the MIME parser, their fields and words are not."""
    raw = report(
        part("text/plain", "<gone@example.org>: host mx said: 550 5.1.1 unknown user\n"),
        dsn_part(
            PER_MESSAGE,
            "Final-Recipient: rfc822; gone@example.org\nAction: failed\nStatus: 5.1.1\n",
        ),
        b="written-boundary",
    ).replace(b'boundary="written-boundary"', b'boundary="header-boundary"')
    verdict = classify(raw)
    assert [(f.addresses, f.kind, f.cause.value) for f in verdict.failures] == [
        (("gone@example.org",), H, "user_unknown")
    ]


def test_a_refusal_after_the_message_was_sent_says_nothing_about_the_address() -> None:
    # NTT docomo answers "Unknown user" at the end of DATA to mail it filters.
    text = part(
        "text/plain",
        "<a@example.org>: host mx said: 550 Unknown user a@example.org (in reply to end of "
        "DATA command)\n",
    )
    verdict = one_dsn(
        "Final-Recipient: rfc822; a@example.org\nAction: failed\nStatus: 5.0.0\n"
        "Diagnostic-Code: smtp; 550 Unknown user a@example.org\n",
        text,
    )
    assert (verdict.kind, verdict.cause.value) == (S, "unknown")


@pytest.mark.parametrize(
    ("body", "cause"),
    [
        # RFC 7504: the host or domain takes no mail at all.
        ("said: 521 5.3.2 System not accepting network messages\n", "host_unknown"),
        # Exim's words for a null MX (RFC 7505).
        ("  a@example.org\n    an MX or SRV record indicated no SMTP service\n", "host_unknown"),
        # Postfix's "Recipient address rejected: <why>": the why decides.
        ("said: 550 5.6.0 <a@example.org>: Recipient address rejected: Media error\n", "policy"),
        (
            "said: 554 5.3.0 <a@example.org>: Recipient address rejected: Internal system error\n",
            "system_error",
        ),
        (
            "said: 550 5.7.0 <a@example.org>: Recipient address rejected: No relaying\n",
            "relaying_denied",
        ),
    ],
)
def test_words_that_decide_a_reason(body: str, cause: str) -> None:
    verdict = classify(text_bounce("<a@example.org>:\n" + body if "<a@" not in body else body))
    assert verdict.cause.value == cause


def test_one_reason_read_for_several_recipients_suppresses_none() -> None:
    """Words about several recipients at once: who the "user unknown" is about cannot be
    told, so each is a soft bounce of unknown cause."""
    body = (
        "The following addresses had permanent fatal errors:\n"
        "anna@example.org, bert@example.org\n"
        "X-Failed-Recipients list follows\n550 5.1.1 user unknown\n"
    )
    verdict = classify(
        text_bounce(body, headers="X-Failed-Recipients: anna@example.org, bert@example.org\n")
    )
    assert sorted((f.addresses, f.kind, f.cause.value) for f in verdict.failures) == [
        (("anna@example.org",), S, "unknown"),
        (("bert@example.org",), S, "unknown"),
    ]


def test_a_notice_in_two_languages_counts_each_recipient_once() -> None:
    block = (
        "  anna@example.org\n    host mx: 550 5.2.2 <anna@example.org>... Mailbox Full\n"
        "  bert@example.org\n    host mx: 550 5.1.1 <bert@example.org>... User Unknown\n"
    )
    body = (
        "Das Schreiben konnte nicht zugestellt werden:\n"
        + block
        + "\n***\n"
        + ("The following address(es) failed:\n" + block)
    )
    verdict = classify(text_bounce(body))
    assert sorted((f.addresses, f.kind, f.cause.value) for f in verdict.failures) == [
        (("anna@example.org",), S, "mailbox_full"),
        (("bert@example.org",), H, "user_unknown"),
    ]


# -- Amazon SES notifications (JSON mailed by SNS) ------------------------------------------


def _ses(message: dict[str, object], *, envelope: bool = True, footer: bool = True) -> bytes:
    import json

    body = json.dumps(message)
    if envelope:
        body = json.dumps({"Type": "Notification", "Message": body})
    if footer:
        body += "\n\n--\nIf you wish to stop receiving notifications from this topic, ...\n"
    return (
        "From: AWS Notifications <no-reply@sns.amazonaws.com>\nSubject: AWS Notification "
        f"Message\nContent-Type: text/plain; charset=UTF-8\n\n{body}"
    ).encode()


def _ses_bounce(kind: str, *recipients: tuple[str, str, str]) -> dict[str, object]:
    return {
        "notificationType": "Bounce",
        "bounce": {
            "bounceType": kind,
            "bouncedRecipients": [
                {"emailAddress": a, "action": "failed", "status": st, "diagnosticCode": d}
                for a, st, d in recipients
            ],
        },
    }


@pytest.mark.parametrize("envelope", [True, False])
@pytest.mark.parametrize("footer", [True, False])
def test_an_ses_bounce_notification_is_read_per_recipient(envelope: bool, footer: bool) -> None:
    raw = _ses(
        _ses_bounce(
            "Permanent",
            ("gone@example.org", "5.1.1", "smtp; 550 5.1.1 user unknown"),
            ("full@example.org", "5.2.2", "smtp; 552 5.2.2 mailbox full"),
            ("spam@example.org", "5.7.1", "smtp; 554 5.7.1 message rejected as spam"),
        ),
        envelope=envelope,
        footer=footer,
    )
    verdict = classify(raw)
    assert (verdict.kind, verdict.detector, verdict.status) == (H, "ses", "5.1.1")
    assert verdict.recipients == ("gone@example.org",)
    assert verdict.reason == "Amazon SES bounce notification, 5.1.1"
    assert [(f.addresses, f.kind, f.cause.value, f.diagnostic) for f in verdict.failures] == [
        (("gone@example.org",), H, "user_unknown", "550 5.1.1 user unknown"),
        (("full@example.org",), S, "mailbox_full", "552 5.2.2 mailbox full"),
        (("spam@example.org",), B, "spam_detected", "554 5.7.1 message rejected as spam"),
    ]


def test_a_transient_ses_bounce_never_makes_an_address_dead() -> None:
    raw = _ses(_ses_bounce("Transient", ("a@example.org", "5.1.1", "smtp; 550 5.1.1 unknown")))
    verdict = classify(raw)
    assert [(f.kind, f.cause.value) for f in verdict.failures] == [(S, "delayed")]


def test_an_ses_complaint_names_the_complainer() -> None:
    raw = _ses(
        {
            "notificationType": "Complaint",
            "complaint": {"complainedRecipients": [{"emailAddress": "anna@example.org"}]},
        }
    )
    verdict = classify(raw)
    assert (verdict.kind, verdict.cause.value, verdict.detector) == (
        Kind.COMPLAINT,
        "complaint",
        "ses",
    )
    assert verdict.recipients == ("anna@example.org",)
    assert verdict.reason == "Amazon SES complaint notification"


@pytest.mark.parametrize(
    "message",
    [
        {"notificationType": "Bounce", "bounce": {"bouncedRecipients": []}},
        {"notificationType": "Bounce", "bounce": "not an object"},
        {"notificationType": "Bounce", "bounce": {"bouncedRecipients": ["x", 3]}},
    ],
)
def test_an_ses_bounce_naming_nobody_is_kept(message: dict[str, object]) -> None:
    verdict = classify(_ses(message))
    assert (verdict.kind, verdict.failures) == (Kind.UNKNOWN, ())
    assert verdict.reason == "Amazon SES notification naming nobody"


def test_other_json_is_no_ses_notification() -> None:
    raw = _ses({"notificationType": "Delivery"})
    assert classify(raw).detector != "ses"
