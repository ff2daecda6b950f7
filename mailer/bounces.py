"""Understand one message that came back to the return mailbox (DESIGN.md §4, issue 6).

`classify` reads the raw bytes and says what they are: a hard or soft bounce, a complaint,
a mailto unsubscribe, an auto-reply, a report needing no action, or unknown. It also finds
candidate tokens and recipient addresses, best evidence first; the caller verifies the
tokens (`TokenSigner.verify`) and falls back to the recipients. Pure: no network, no
database, and it never raises, whatever the bytes.

Checks run in this order: a DSN (RFC 3464) or ARF (RFC 5965) report, then an auto-reply,
then mail to `unsubscribe+<token>@`, then the texts of bounces that carry no DSN (Exim,
older Exchange, qmail ...). Everything found is ASCII and taken literally from the message
(headers, or decoded bodies), so nothing is ever invented from mangled input.
"""

from __future__ import annotations

import codecs
import email
import email.header
import email.parser
import email.policy
import email.utils
import itertools
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from email.message import Message
from enum import StrEnum
from functools import lru_cache
from typing import Any

from campaigns.bounce_reasons import GROUP, Group, Reason
from mailer.bounce_detectors import detect
from mailer.reasons import at_data, reason_for, text_reason

MAX_BYTES = 1_000_000  # of the raw message; reports and originals' headers come first
MAX_TEXT = 200_000  # of each decoded body part
MAX_PARTS = 200
MAX_DEPTH = 12
MAX_HEADERS = 500
MAX_DIAGNOSTIC = 300
_DETECT_BYTES = 64_000  # of the raw message, for flufl.bounce's detectors


class Kind(StrEnum):
    HARD_BOUNCE = "hard_bounce"  # the address is dead (reason group "address")
    SOFT_BOUNCE = "soft_bounce"  # mailbox full, delayed, expired, errors
    BLOCKED = "blocked"  # about us or our message: never costs the person anything
    COMPLAINT = "complaint"
    UNSUBSCRIBE = "unsubscribe"  # mail sent to our unsubscribe+<token>@ address (RFC 2369 mailto)
    AUTO_REPLY = "auto_reply"  # out-of-office, vacation, Auto-Submitted: auto-replied -> ignored
    IGNORED = "ignored"  # a report needing no action, e.g. DSN Action: delivered/relayed/expanded
    UNKNOWN = "unknown"  # cannot be understood: kept and reported by the caller


@dataclass(frozen=True)
class Failure:
    """One recipient of a bounce, judged on its own (a report may list several)."""

    kind: Kind  # HARD_BOUNCE, SOFT_BOUNCE or BLOCKED
    cause: Reason
    addresses: tuple[str, ...]  # the recipient as the report names it, best first
    status: str = ""
    diagnostic: str = ""


@dataclass(frozen=True)
class Verdict:
    kind: Kind
    bounce_tokens: tuple[str, ...]  # from bounces+<token>@ addresses, best first
    unsubscribe_tokens: tuple[str, ...]  # from unsubscribe+<token>@ and /u/<token>, best first
    recipients: tuple[str, ...]  # failed / complained-about addresses, best first
    status: str = ""  # enhanced status code like "5.1.1", "" if none
    diagnostic: str = ""  # one line, at most 300 chars
    reason: str = ""  # one short line saying why this kind
    # The reason in the taxonomy (campaigns.bounce_reasons) of the worst failure.
    cause: Reason = Reason.UNKNOWN
    # Every recipient of a bounce with its own kind and cause, worst first.
    failures: tuple[Failure, ...] = ()
    # What read it: "dsn", "arf", "text" (a notice's own words), "flufl:<detector>".
    detector: str = ""


_KIND_OF_GROUP = {
    Group.ADDRESS: Kind.HARD_BOUNCE,
    Group.MAILBOX: Kind.SOFT_BOUNCE,
    Group.TRANSIENT: Kind.SOFT_BOUNCE,
    Group.SENDER: Kind.BLOCKED,
    # A failure whose reason cannot be read counts as soft: one never costs the person
    # anything, several within the window do (README, "Choices").
    Group.UNKNOWN: Kind.SOFT_BOUNCE,
}


def kind_of(cause: Reason) -> Kind:
    """What a failure of this cause does to the person."""
    return _KIND_OF_GROUP[GROUP[cause]]


_Make = Callable[..., Verdict]  # builds a Verdict with the tokens already found

# re.ASCII throughout: with IGNORECASE alone, "K" (Kelvin sign) would match "k" and a
# token could come back that is not literally in the message.
_FLAGS = re.IGNORECASE | re.ASCII
# "=" may precede the local part: forwarders rewrite senders to SRS0=hash=tt=domain=local@.
_TOKEN_ADDRESS = re.compile(r"(?<![\w.%+-])(bounces|unsubscribe)\+([a-z2-7]{1,50})@", _FLAGS)
_URL_TOKEN = re.compile(r"/u/([a-z2-7]{1,50})(?![a-z0-9])", _FLAGS)
# An ENVID that is a token itself; real tokens are 24+ characters, so "NONE" is not one.
_BARE_TOKEN = re.compile(r"[a-z2-7]{20,50}", _FLAGS)
_LIST_UNSUBSCRIBE_LINE = re.compile(
    r"^List-Unsubscribe:[ \t]*(.{0,2000}(?:\n[ \t].{0,2000}){0,5})", _FLAGS | re.MULTILINE
)
_ADDRESS = re.compile(
    r"(?<![\w.!#$%&'*+/=?^`{|}~-])[\w.!#$%&'*+/=?^`{|}~-]{1,64}"
    r"@[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?){0,10}",
    _FLAGS,
)
_NOT_RECIPIENTS = re.compile(r"(mailer-daemon|postmaster|(bounces|unsubscribe)\+.*)@", _FLAGS)
_ENHANCED = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?!\d|\.\d)", re.ASCII)
# A basic reply code where an SMTP reply is quoted: at a line start, after "said:" and the
# like, or followed by an enhanced code. "500 MB" in prose is not one.
_REPLY = re.compile(
    r"(?:^[ \t>'\"(]*|(?:said|error|reply|replied|response|returned)\s{0,20}:?\s{0,20}['\"]?|#)"
    r"([45][0-5]\d)(?=[ :-]|$)|(?<![\w.])([45][0-5]\d)[ -](?=[245]\.\d)",
    _FLAGS | re.MULTILINE,
)

_BOUNCE_FROM = re.compile(
    r"mailer-daemon|post_?master|mail delivery (?:system|subsystem)|mail administrator|"
    r"microsoftexchange",
    _FLAGS,
)
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|returned mail|return(?:ed|ing) (?:message|mail) to sender|"
    r"mail delivery failed|delivery (?:status notification|failure|failed|has failed|problem)|"
    r"failure notice|could not send message|delayed mail|delivery delayed|non-?delivery|"
    r"nondeliverable|unzustellbar|non remis|mail system error|message not delivered|"
    r"delivery incomplete",
    _FLAGS,
)
# Subjects of replies and auto-replies, which may quote a bounce-like subject of ours.
_REPLY_PREFIX = re.compile(
    r"\s*(?:re|aw|antw|sv|vs|ref|fw|fwd|wg|tr|automatic reply|automatische antwort|auto|"
    r"autoreply|out of office|abwesenheitsnotiz|absence)\s*:",
    _FLAGS,
)
_DELAY_SUBJECT = re.compile(
    r"\(delay\)|could not send message for past|delayed mail|delivery delayed|"
    r"delivery status notification \(delay|delay(?:ed)? notification|still being retried",
    _FLAGS,
)
_PERMANENT = re.compile(
    r"retry timeout exceeded|does(?: not|n't) exist|unknown user|user unknown|"
    r"no such (?:user|mailbox|address|recipient)|unknown (?:recipient|mailbox|address)|"
    r"recipient (?:address )?rejected|address couldn't be found|recip(?:ient)?notfound|"
    r"mailbox (?:unavailable|not found)|account (?:has been )?disabled|"
    r"invalid (?:recipient|mailbox)|does(?: not|n't) have an? \S+ account",
    _FLAGS,
)
# Boilerplate of final failures (Exim, qmail, Gmail): hard, but says less than the above.
_GAVE_UP = re.compile(
    r"failed permanently|permanent(?:ly)? (?:error|failure|fatal)|i've given up", _FLAGS
)
_TRANSIENT = re.compile(
    r"mailbox (?:is )?full|over ?quota|quota exceeded|insufficient (?:system )?storage|"
    r"temporar(?:y|ily)|try again later|will (?:continue to )?(?:retry|try)|still trying|"
    r"has been delayed|is delayed|deferred|not yet been delivered",
    _FLAGS,
)
# Where a notice starts quoting the original message: below it is not the notice's text.
_ORIGINAL_MARKER = re.compile(
    r"^[ \t-]*(?:this is a copy of the message|original message|below this line is a copy|"
    r"original message headers|the headers? of the original message|"
    r"undelivered message headers|received: ?from )",
    _FLAGS | re.MULTILINE,
)
# Phrases of common bounce texts that the failed address follows closely.
_RECIPIENT_PHRASES = re.compile(
    r"following address(?:\(es\)|es)? (?:failed|had (?:permanent fatal|transient non-fatal) "
    r"errors)|failed to these recipients or groups|delivery to the following recipients? "
    r"(?:failed|has been delayed)|wasn't delivered to|your message to|(?:final|original)-"
    r"recipient:|RCPT TO:",
    _FLAGS,
)
# "<a@b>:" (Postfix, qmail), "<a@b>..." (Sendmail), "a@b: 550 ..." (OpenSMTPD).
_RECIPIENT_LINE = re.compile(
    r"^[ \t]*(?:[245]\d\d[ -])?(?:<([^<>\s]{3,254})>[ \t]*(?::|\.\.\.|\(expanded)|"
    r"([^<>\s:@]{1,64}@[^<>\s:@]{1,190}):[ \t]+[245]\d\d\b)",
    re.M,
)
# A line holding one address and nothing else: Exim's "  a@b", GMX's '"a@b":'.
_ADDRESS_LINE = re.compile(r"^[ \t]*[\"<]?([^\s<>\"]{1,64}@[^\s<>\":]{1,190})[\">]?:?[ \t]*$", re.M)
_AUTO_SUBJECT = re.compile(
    r"^\s*(?:automatic reply|auto(?:matische)? ?(?:antwort|reply|response)|auto:|"
    r"out of (?:the )?office|abwesenheitsnotiz|abwesend|r[ée]ponse automatique|"
    r"respuesta autom[áa]tica|risposta automatica|vacation (?:reply|notice))",
    re.IGNORECASE,
)
_DELIVERY_HEADERS = ("x-original-to", "delivered-to", "envelope-to", "to")
_FIELD_TYPES = (
    "message/delivery-status",
    "message/global-delivery-status",
    "message/feedback-report",
    "message/disposition-notification",
    "message/global-disposition-notification",
)
# Which recipient's result speaks for the whole message: a dead address first.
_SEVERITY = {
    Kind.HARD_BOUNCE: 5,
    Kind.SOFT_BOUNCE: 4,
    Kind.BLOCKED: 3,
    Kind.UNKNOWN: 2,
    Kind.IGNORED: 1,
}
_SINGLE_BYTE = re.compile(r"iso8859|cp12[5]\d|latin|koi8|mac-roman|cp437|cp850|ascii")


def classify(raw: bytes) -> Verdict:
    try:
        return _classify(bytes(raw[:MAX_BYTES]))
    except Exception as exc:  # never raise: the caller keeps what it cannot understand
        return Verdict(Kind.UNKNOWN, (), (), (), reason=f"unreadable ({type(exc).__name__})")


# -- reading the message ------------------------------------------------------------------


def _clean(value: object) -> str:
    """A header value as text: undecodable bytes replaced, folding undone."""
    text = value if isinstance(value, str) else str(value)
    try:
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeError:
        text = text.encode("utf-8", "replace").decode("utf-8", "replace")
    return re.sub(r"\s+", " ", text).strip()


def _headers(msg: Message) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in itertools.islice(msg.raw_items(), MAX_HEADERS):
        out.setdefault(str(name).strip().lower(), []).append(_clean(value))
    return out


def _first(headers: dict[str, list[str]], name: str) -> str:
    values = headers.get(name)
    return values[0] if values else ""


def _one_line(text: str, limit: int = MAX_DIAGNOSTIC) -> str:
    text = re.sub(r"[\x00-\x1f\x7f\s]+", " ", text).strip()
    return text[:limit]


def _decoded_words(value: str) -> str:
    try:
        return str(email.header.make_header(email.header.decode_header(value)))
    except Exception:  # a malformed encoded word: the raw text is still useful
        return value


def _ctype(part: Message) -> str:
    try:
        return part.get_content_type().lower()
    except Exception:
        return "text/plain"


def _param(part: Message, name: str) -> str:
    try:
        value = part.get_param(name)
        if isinstance(value, tuple):
            value = email.utils.collapse_rfc2231_value(value)
        return str(value or "").strip().lower()
    except Exception:
        return ""


@lru_cache(maxsize=64)
def _codec(charset: str) -> str:
    # Only charsets that keep ASCII bytes as they are: a token or address read from the
    # text is then literally in the bytes. Anything else is read as UTF-8 with replacement.
    try:
        name = codecs.lookup(charset).name
    except (LookupError, ValueError, TypeError):
        return "utf-8"
    return name if _SINGLE_BYTE.match(name) else "utf-8"


def _body(part: Message) -> bytes:
    try:
        data = part.get_payload(decode=True)
    except Exception:
        data = None
    return data[:MAX_TEXT] if isinstance(data, bytes) else b""


def _text(part: Message) -> str:
    try:
        charset = part.get_content_charset() or "utf-8"
    except Exception:
        charset = "utf-8"
    text = _body(part).decode(_codec(str(charset)), "replace")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _parse_blocks(text: str) -> list[list[tuple[str, str]]]:
    """Header-like blocks separated by blank lines (a DSN or ARF body given as text)."""
    blocks: list[list[tuple[str, str]]] = []
    for chunk in re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n")):
        fields: list[tuple[str, str]] = []
        for line in chunk.split("\n"):
            if line[:1] in (" ", "\t") and fields:
                fields[-1] = (fields[-1][0], fields[-1][1] + " " + line.strip())
            elif ":" in line:
                name, _, value = line.partition(":")
                fields.append((name.strip().lower(), value.strip()))
        if fields:
            blocks.append([(n, _clean(v)) for n, v in fields])
    return blocks


def _field_blocks(part: Message) -> list[dict[str, str]]:
    """The field blocks of a message/delivery-status or message/feedback-report part."""
    payload = part.get_payload()
    blocks: list[list[tuple[str, str]]] = []
    if isinstance(payload, list):
        # compat32 parses each block (DSN) or the whole report (others) as a header block.
        for block in payload[:MAX_PARTS]:
            if isinstance(block, Message):
                blocks.append([(str(n).lower(), _clean(v)) for n, v in block.raw_items()])
                rest = block.get_payload()
                if isinstance(rest, str) and rest.strip():
                    blocks += _parse_blocks(_clean_text(rest))
    else:
        blocks = _parse_blocks(_text(part))
    out = []
    for block in blocks:
        fields: dict[str, str] = {}
        for name, value in block[:MAX_HEADERS]:
            fields.setdefault(name.strip(), value)
        out.append(fields)
    return out


_DSN_FIELDS = re.compile(r"^final-recipient:[ \t]*rfc822;", _FLAGS | re.MULTILINE)


def _dsn_from_text(text: str) -> list[dict[str, str]]:
    out = []
    for block in _parse_blocks(text)[:MAX_PARTS]:
        fields: dict[str, str] = {}
        for name, value in block[:MAX_HEADERS]:
            fields.setdefault(name, value)
        if "final-recipient" in fields and ({"action", "status"} & fields.keys()):
            out.append(fields)
    return out


def _clean_text(text: str) -> str:
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeError:
        return text.encode("utf-8", "replace").decode("utf-8", "replace")


@dataclass
class _Scan:
    """What one walk over the MIME tree found."""

    headers: dict[str, list[str]]
    report_type: str = ""
    dsn: list[dict[str, str]] = field(default_factory=list)
    arf: list[dict[str, str]] = field(default_factory=list)
    mdn: bool = False
    originals: list[dict[str, list[str]]] = field(default_factory=list)  # embedded headers
    texts: list[str] = field(default_factory=list)  # the notice's own words
    quoted: list[str] = field(default_factory=list)  # text of or below the original


def _walk(root: Message) -> Iterator[tuple[Message, bool]]:
    """Parts depth first, in order, with whether each is inside an embedded message."""
    stack: list[tuple[Message, int, bool]] = [(root, 0, False)]
    seen = 0
    while stack and seen < MAX_PARTS:
        part, depth, inside = stack.pop()
        seen += 1
        yield part, inside
        ctype = _ctype(part)
        if ctype in _FIELD_TYPES or depth >= MAX_DEPTH:
            continue
        try:
            payload = part.get_payload()
        except (LookupError, ValueError):  # e.g. a NUL in a charset parameter
            continue
        if isinstance(payload, list):
            nested = inside or ctype.startswith("message/")
            children = [p for p in payload[:MAX_PARTS] if isinstance(p, Message)]
            stack += [(child, depth + 1, nested) for child in reversed(children)]


def _unsplit(part: Message, ctype: str, inside: bool) -> bool:
    return not inside and ctype.startswith("multipart/") and isinstance(part.get_payload(), str)


def _scan(msg: Message) -> _Scan:
    scan = _Scan(headers=_headers(msg))
    for part, inside in _walk(msg):
        ctype = _ctype(part)
        if ctype == "multipart/report" and not scan.report_type and not inside:
            scan.report_type = _param(part, "report-type")
        if inside and ctype not in ("message/rfc822", "message/global", "text/rfc822-headers"):
            if ctype.startswith("text/"):
                scan.quoted.append(_text(part))
            continue
        if ctype in ("message/delivery-status", "message/global-delivery-status"):
            scan.dsn += _field_blocks(part)
        elif ctype == "message/feedback-report":
            scan.arf += _field_blocks(part)
        elif ctype.endswith("disposition-notification"):
            scan.mdn = True
        elif ctype in ("message/rfc822", "message/global"):
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                scan.originals.append(_headers(payload[0]))
        elif ctype == "text/rfc822-headers":
            parser = email.parser.BytesHeaderParser(policy=email.policy.compat32)
            scan.originals.append(_headers(parser.parsebytes(_body(part))))
        elif (ctype.startswith("text/") and not inside) or _unsplit(part, ctype, inside):
            # (An unsplit multipart: its boundary is missing or never found in the body,
            # as a relay rewrote one of them; the parts are lost, their words are not.)
            text = _text(part) if ctype.startswith("text/") else _clean_text(part.get_payload())
            if ctype == "text/html":
                # Tags become spaces so that no two words are ever joined into an address.
                text = re.sub(r"<[^<>]{0,2000}>", " ", text)
            marker = _ORIGINAL_MARKER.search(text)
            if marker:
                scan.quoted.append(text[marker.start() :])
                text = text[: marker.start()]
            scan.texts.append(text)
    return scan


# -- tokens and addresses -----------------------------------------------------------------


def _parse(raw: bytes) -> Message:
    return email.message_from_bytes(raw, policy=email.policy.compat32)


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    out: dict[str, str] = {}
    for item in items:
        out.setdefault(item.lower(), item)
    return tuple(out.values())


def _address_tokens(text: str, prefix: str) -> list[str]:
    return [
        m.group(2).lower() for m in _TOKEN_ADDRESS.finditer(text) if m.group(1).lower() == prefix
    ]


def _list_unsubscribe_tokens(value: str) -> list[str]:
    return _address_tokens(value, "unsubscribe") + [
        m.group(1).lower() for m in _URL_TOKEN.finditer(value)
    ]


def _delivery_values(headers: dict[str, list[str]]) -> list[str]:
    return [v for name in _DELIVERY_HEADERS for v in headers.get(name, [])]


def _bounce_tokens(scan: _Scan) -> tuple[str, ...]:
    found = [t for v in _delivery_values(scan.headers) for t in _address_tokens(v, "bounces")]
    for envid in scan.headers.get("original-envelope-id", []) + [
        b.get("original-envelope-id", "") for b in scan.dsn[:1]
    ]:
        found += _address_tokens(envid, "bounces")
        if _BARE_TOKEN.fullmatch(envid):
            found.append(envid.lower())
    for fields in scan.arf:
        found += _address_tokens(fields.get("original-mail-from", ""), "bounces")
    for fields in scan.dsn + scan.arf:  # e.g. X-Postfix-Sender, the envelope sender
        found += [t for v in fields.values() for t in _address_tokens(v, "bounces")]
    for original in scan.originals:
        found += [t for v in original.get("return-path", []) for t in _address_tokens(v, "bounces")]
    for original in scan.originals:
        found += [t for vs in original.values() for v in vs for t in _address_tokens(v, "bounces")]
    for text in scan.texts + scan.quoted:
        found += _address_tokens(text, "bounces")
    return _unique(found)


def _unsubscribe_tokens(scan: _Scan) -> tuple[str, ...]:
    found = [t for v in _delivery_values(scan.headers) for t in _address_tokens(v, "unsubscribe")]
    for original in scan.originals:
        found += [
            t for v in original.get("list-unsubscribe", []) for t in _list_unsubscribe_tokens(v)
        ]
    for original in scan.originals:
        found += [
            t for vs in original.values() for v in vs for t in _address_tokens(v, "unsubscribe")
        ]
    for text in scan.texts + scan.quoted:
        for line in _LIST_UNSUBSCRIBE_LINE.finditer(text):
            found += _list_unsubscribe_tokens(line.group(1))
    return _unique(found)


def _addresses(text: str) -> list[str]:
    return [
        m.group(0).strip(".")
        for m in _ADDRESS.finditer(text)
        if not _NOT_RECIPIENTS.fullmatch(m.group(0).lower().split("@")[0] + "@")
    ]


def _text_recipients(scan: _Scan) -> list[str]:
    found = [a for v in scan.headers.get("x-failed-recipients", []) for a in _addresses(v)]
    for text in scan.texts:
        for m in _RECIPIENT_LINE.finditer(text):
            found += _addresses(m.group(1) or m.group(2))[:1]
        for m in _RECIPIENT_PHRASES.finditer(text):
            found += _addresses(text[m.end() : m.end() + 200])[:1]
    for text in scan.texts:  # last: a line holding only an address (Exim, GMX, KDDI)
        for m in _ADDRESS_LINE.finditer(text):
            found += _addresses(m.group(1))[:1]
    return found


def _original_recipients(scan: _Scan) -> list[str]:
    return [a for o in scan.originals for v in o.get("to", [])[:1] for a in _addresses(v)[:1]]


# -- the checks, in order -----------------------------------------------------------------


def _classify(raw: bytes) -> Verdict:
    if not raw.strip():
        return Verdict(Kind.UNKNOWN, (), (), (), reason="empty message")
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    scan = _scan(msg)
    bounce_tokens, unsubscribe_tokens = _bounce_tokens(scan), _unsubscribe_tokens(scan)

    def verdict(kind: Kind, recipients: Iterable[str] = (), **kw: Any) -> Verdict:
        return Verdict(kind, bounce_tokens, unsubscribe_tokens, _unique(recipients), **kw)

    if not scan.dsn and _DSN_FIELDS.search("\n".join(scan.texts)):
        # A report whose MIME structure broke (a boundary indented, say): its fields
        # are still there in the text, recipient by recipient.
        scan.dsn = _dsn_from_text("\n".join(scan.texts))
    if scan.dsn:
        found = _from_dsn(scan)
        if found is not None:
            rows, reason, _action = found
            worst = rows[0]
            recipients = [a for f in rows if f.kind is worst.kind for a in f.addresses]
            if not recipients:
                # Text addresses only when the report names none: its text may also
                # list recipients that were delivered.
                recipients = _text_recipients(scan) + _original_recipients(scan)
                rows[0] = replace(worst, addresses=_unique(recipients))
            failures = tuple(f for f in rows if f.kind is not Kind.IGNORED)
            return verdict(
                worst.kind,
                recipients,
                status=worst.status,
                diagnostic=worst.diagnostic,
                reason=reason,
                cause=worst.cause,
                failures=failures,
                detector="dsn",
            )
    if scan.arf or scan.report_type == "feedback-report":
        return _from_arf(scan, verdict)
    ses = _ses_notification(scan)
    if ses is not None:
        return _from_ses(ses, raw, verdict)
    if scan.mdn or scan.report_type.endswith("disposition-notification"):
        return verdict(Kind.IGNORED, reason="read receipt (MDN)")

    subject = _one_line(_decoded_words(_first(scan.headers, "subject")))
    sender = _first(scan.headers, "from") + " " + _first(scan.headers, "sender")
    from_mailer = bool(
        scan.dsn
        or scan.report_type == "delivery-status"
        or "x-failed-recipients" in scan.headers
        or _BOUNCE_FROM.search(sender)
    )
    # A subject alone makes a bounce only when it is not a person's (or their
    # autoresponder's) reply: "Re: Undeliverable parcels?" quotes our own subject.
    bounce_like = from_mailer or bool(
        _BOUNCE_SUBJECT.search(subject) and not _REPLY_PREFIX.match(subject)
    )
    unsubscribe = [
        t for v in _delivery_values(scan.headers) for t in _address_tokens(v, "unsubscribe")
    ]
    why = _auto_reply(scan.headers, subject, bounce_like, from_mailer, bool(unsubscribe))
    if why:
        return verdict(Kind.AUTO_REPLY, reason=why)
    if unsubscribe:
        return Verdict(
            Kind.UNSUBSCRIBE, (), _unique(unsubscribe), (), reason="mail to unsubscribe+"
        )
    if bounce_like:
        return _from_text(scan, subject, verdict, msg, raw)
    return verdict(Kind.UNKNOWN, reason="not a report, bounce, auto-reply or unsubscribe")


def _status_of(text: str) -> str:
    m = _ENHANCED.search(text)
    return ".".join(m.groups()) if m else ""


def _reply_of(text: str) -> str:
    m = _REPLY.search(text)
    return (m.group(1) or m.group(2)) if m else ""


def _from_dsn(scan: _Scan) -> tuple[list[Failure], str, str] | None:
    """Every recipient block of the report judged on its own, worst first, with the
    worst one's action and the delivered ones as IGNORED."""
    rows: list[tuple[Failure, str]] = []
    for fields in scan.dsn:
        if not ({"action", "status", "final-recipient"} & fields.keys()):
            continue
        action = fields.get("action", "").split(" ")[0].lower()
        diagnostic = fields.get("diagnostic-code", "")
        text = re.sub(r"^[\w-]+;\s*", "", diagnostic)
        status = _status_of(fields.get("status", "")) or _status_of(diagnostic)
        reply = _reply_of(text)
        if action in ("delivered", "relayed", "expanded") or status.startswith("2"):
            kind, cause = Kind.IGNORED, Reason.UNKNOWN
        elif action in ("failed", "delayed") or status[:1] in ("4", "5") or reply:
            cause = reason_for(status, text, reply, action)
            if GROUP[cause] is Group.ADDRESS and len(scan.dsn) <= 2:
                # The notice may say at which stage (Postfix: "in reply to end of DATA").
                notice = "\n".join(scan.texts)
                cause = reason_for(
                    status, text + "\n" + notice if at_data(notice) else text, reply, action
                )
            generic = not status or status.endswith(".0.0")
            vague = cause is Reason.UNKNOWN or (cause is Reason.DELAYED and generic)
            if vague and len(scan.dsn) <= 2:
                # "Status: 5.0.0" and no diagnostic: the notice's own words may say it
                # ("the address couldn't be found"); only for a report about one
                # recipient (a per-message block and one recipient block at most).
                cause = reason_for(status, "\n".join(scan.texts), reply, action)
            kind = kind_of(cause)
        else:
            continue
        addresses = [
            a
            for name in ("original-recipient", "final-recipient", "x-actual-recipient")
            for a in _addresses(re.sub(r"^[\w-]+;", "", fields.get(name, "")))[:1]
        ]
        failure = Failure(kind, cause, _unique(addresses), status, _one_line(text))
        rows.append((failure, action))
    if not rows:
        return None
    # Stable: among equals the report's own order stays.
    rows.sort(key=lambda row: -_SEVERITY[row[0].kind])
    worst, action = rows[0]
    reason = f"DSN Action: {_one_line(action, 40) or 'none'}, {worst.status or 'no status'}"
    return [f for f, _ in rows], reason, action


def _from_arf(scan: _Scan, verdict: _Make) -> Verdict:
    fields = scan.arf[0] if scan.arf else {}
    feedback = fields.get("feedback-type", "").split(" ")[0].lower() or "none"
    recipients = [
        a
        for fields in scan.arf
        for name in ("original-rcpt-to", "removal-recipient")
        for a in _addresses(fields.get(name, ""))
    ] + _original_recipients(scan)
    reason = f"ARF Feedback-Type: {_one_line(feedback, 40)}"
    if feedback in ("not-spam", "auth-failure"):
        return verdict(Kind.IGNORED, recipients, reason=reason, detector="arf")
    return verdict(
        Kind.COMPLAINT, recipients, reason=reason, cause=Reason.COMPLAINT, detector="arf"
    )


def _ses_notification(scan: _Scan) -> dict[str, Any] | None:
    """An Amazon SES bounce or complaint notification (JSON, often inside an SNS
    envelope) mailed to us, or None."""
    for text in scan.texts[:3]:
        body = text.strip()
        if not (body.startswith("{") and len(body) < MAX_TEXT):
            continue
        # SNS appends a footer after the object, and folding may put line breaks inside
        # its strings: the first object is read, leniently.
        decoder = json.JSONDecoder(strict=False)
        try:
            data, _end = decoder.raw_decode(body)
            if isinstance(data, dict) and isinstance(data.get("Message"), str):
                data, _end = decoder.raw_decode(data["Message"].strip())
        except (ValueError, RecursionError):
            continue
        if isinstance(data, dict) and data.get("notificationType") in ("Bounce", "Complaint"):
            return data
    return None


def _ses_list(value: object) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)][:MAX_PARTS] if isinstance(value, list) else []


def _from_ses(data: dict[str, Any], raw: bytes, verdict: _Make) -> Verdict:
    haystack = raw.lower()

    def literal(value: object) -> list[str]:
        found = _addresses(str(value or ""))[:1]
        return [a for a in found if a.lower().encode() in haystack]

    if data.get("notificationType") == "Complaint":
        complaint = data.get("complaint") if isinstance(data.get("complaint"), dict) else {}
        recipients = [
            a
            for r in _ses_list(complaint.get("complainedRecipients"))
            for a in literal(r.get("emailAddress"))
        ]
        return verdict(
            Kind.COMPLAINT,
            recipients,
            reason="Amazon SES complaint notification",
            cause=Reason.COMPLAINT,
            detector="ses",
        )
    bounce = data.get("bounce") if isinstance(data.get("bounce"), dict) else {}
    transient = str(bounce.get("bounceType", "")).lower() == "transient"
    failures = []
    for r in _ses_list(bounce.get("bouncedRecipients")):
        status = _status_of(str(r.get("status") or ""))
        text = re.sub(r"^[\w-]+;\s*", "", str(r.get("diagnosticCode") or ""))
        action = "delayed" if transient else str(r.get("action") or "failed")
        cause = reason_for(status, text, _reply_of(text), action)
        if transient and GROUP[cause] is Group.ADDRESS:
            cause = Reason.DELAYED
        failures.append(
            Failure(
                kind_of(cause),
                cause,
                _unique(literal(r.get("emailAddress"))),
                status,
                _one_line(text),
            )
        )
    if not failures:
        return verdict(Kind.UNKNOWN, reason="Amazon SES notification naming nobody")
    failures.sort(key=lambda f: -_SEVERITY[f.kind])
    worst = failures[0]
    return verdict(
        worst.kind,
        [a for f in failures if f.kind is worst.kind for a in f.addresses],
        status=worst.status,
        diagnostic=worst.diagnostic,
        reason=f"Amazon SES bounce notification, {worst.status or 'no status'}",
        cause=worst.cause,
        failures=tuple(failures),
        detector="ses",
    )


def _auto_reply(
    headers: dict[str, list[str]], subject: str, bounce_like: bool, from_mailer: bool, to_us: bool
) -> str:
    """Why this is an auto-reply, or ""."""
    if _first(headers, "x-autoreply").lower() not in ("", "no", "false", "0"):
        return "X-Autoreply"
    if "x-autorespond" in headers:
        return "X-Autorespond"
    if _first(headers, "precedence").lower() == "auto_reply":
        return "Precedence: auto_reply"
    if _AUTO_SUBJECT.search(subject) and not bounce_like:
        return "auto-reply subject"
    submitted = _first(headers, "auto-submitted").split(";")[0].strip().lower()
    # Bounce notices carry Auto-Submitted too (Exim); a mail client may mark the
    # unsubscribe mail it generates auto-generated: neither is an auto-reply.
    if submitted == "auto-replied" and not from_mailer:
        return "Auto-Submitted: auto-replied"
    if (
        submitted not in ("", "no")
        and not bounce_like
        and (not to_us or submitted == "auto-replied")
    ):
        return f"Auto-Submitted: {_one_line(submitted, 40)}"
    return ""


@dataclass(frozen=True)
class _TextJudgement:
    kind: Kind
    cause: Reason
    status: str
    diagnostic: str
    why: str


def _judge_text(text: str, delay_notice: bool, given_up: bool = False) -> _TextJudgement | None:
    """Read the codes and phrases of a notice's own words; None if they state nothing.
    `given_up`: the notice around these words says the failure is final (qmail puts
    "This is a permanent error; I've given up" once, above every recipient)."""
    enhanced = [m for m in _ENHANCED.finditer(text) if m.group(1) in "45"]
    replies = list(_REPLY.finditer(text))

    def first(matches: list[re.Match[str]], klass: str) -> re.Match[str] | None:
        return next((m for m in matches if (m.group(1) or m.group(2) or "")[0] == klass), None)

    def line(m: re.Match[str] | None) -> str:
        if m is None:
            return ""
        start = text.rfind("\n", 0, m.start()) + 1
        end = text.find("\n", m.end())
        return _one_line(text[start : end if end >= 0 else len(text)])

    def code(m: re.Match[str] | None) -> str:
        if m is None:
            return ""
        return ".".join(m.groups()) if m.re is _ENHANCED else (m.group(1) or m.group(2))

    hard_status, soft_status = first(enhanced, "5"), first(enhanced, "4")
    hard_reply, soft_reply = first(replies, "5"), first(replies, "4")
    permanent = _PERMANENT.search(text) or _GAVE_UP.search(text)
    transient = _TRANSIENT.search(text)
    if delay_notice:
        status_m, reply_m, action = soft_status, soft_reply, "delayed"
    elif hard_status or hard_reply or permanent:
        status_m, reply_m, action = hard_status or soft_status, hard_reply or soft_reply, "failed"
    elif soft_status or soft_reply or transient:
        status_m, reply_m, action = soft_status, soft_reply, "delayed"
    elif given_up and text.strip():
        status_m, reply_m, action = None, None, "failed"
    elif (said := text_reason(text)) is not None:
        # No code, but words that name a reason ("not listed in Domino Directory").
        status_m, reply_m = None, None
        action = "delayed" if GROUP[said] in (Group.MAILBOX, Group.TRANSIENT) else "failed"
    else:
        return None
    if status_m is not None and reply_m is not None and status_m.group(1) != code(reply_m)[:1]:
        # "550 ... 4.4.7": the reply and the code disagree; the code is the finer.
        reply_m = None
    status, reply = code(status_m), code(reply_m)
    cause = _focused_reason(text, status_m or reply_m, status, reply, action)
    if delay_notice and GROUP[cause] is not Group.SENDER:
        cause = Reason.DELAYED
    found = status_m or reply_m or permanent or transient
    what = "delay notice" if delay_notice else f"bounce text: {status or reply or cause.value}"
    return _TextJudgement(kind_of(cause), cause, status, line(found), what)


def _focused_reason(
    text: str, at: re.Match[str] | None, status: str, reply: str, action: str
) -> Reason:
    """The reason from the words around the quoted code first (a notice's boilerplate,
    or a copy of the original's headers, can hold anything), then from all its words."""
    if at is not None:
        start = text.rfind("\n", 0, at.start()) + 1
        end = at.end()
        for _ in range(3):  # the code's line and the two after it
            nxt = text.find("\n", end + 1)
            end = nxt if nxt >= 0 else len(text)
        near = reason_for(status, text[start:end], reply, action)
        if near not in (Reason.UNKNOWN, Reason.POLICY):
            return near
        wide = reason_for(status, text, reply, action)
        return wide if wide not in (Reason.UNKNOWN, Reason.POLICY) else near
    return reason_for(status, text, reply, action)


def _recipient_blocks(text: str) -> list[tuple[str, str]]:
    """A notice's words cut at each line that starts a recipient ("<address>:" in
    Postfix, Sendmail, qmail; a line holding only the address in Exim and GMX), so that
    each recipient is judged on its own words; [] when it names fewer than two."""
    starts = sorted(
        [
            (m.start(), a)
            for m in _RECIPIENT_LINE.finditer(text)
            for a in _addresses(m.group(1) or m.group(2))[:1]
        ]
        + [(m.start(), a) for m in _ADDRESS_LINE.finditer(text) for a in _addresses(m.group(1))[:1]]
    )
    if len({a.lower() for _, a in starts}) < 2:
        return []
    ends = [pos for pos, _ in starts[1:]] + [len(text)]
    return [(a, text[pos:end]) for (pos, a), end in zip(starts, ends, strict=True)]


def _from_text(scan: _Scan, subject: str, verdict: _Make, msg: Message, raw: bytes) -> Verdict:
    """A bounce without a DSN part: read the codes and phrases of its own text, and
    let flufl.bounce find the addresses of the layouts we do not know."""
    text = "\n".join(scan.texts)
    recipients = _text_recipients(scan) + _original_recipients(scan)
    delay = bool(_DELAY_SUBJECT.search(subject))
    failures: list[Failure] = []
    given_up = bool(_PERMANENT.search(text) or _GAVE_UP.search(text))
    blocks = _recipient_blocks(text)
    for address, words in blocks:
        judged = _judge_text(words, delay, given_up)
        if judged is not None:
            failures.append(
                Failure(judged.kind, judged.cause, (address,), judged.status, judged.diagnostic)
            )
    whole = _judge_text(text, delay)
    detector = "text"
    if not failures and not recipients:
        # Only addresses in what we read ourselves as the notice, or in the attached
        # original's headers: never one quoted from the original's body, never one in a
        # binary attachment.
        readable = "\n".join(
            scan.texts + [v for o in scan.originals for vs in o.values() for v in vs]
        )
        # Its detectors read every line against dozens of patterns: 150,000 lines took
        # 11 s. Notices are short and come first, so they get the first 64 KB.
        head = msg if len(raw) <= _DETECT_BYTES else _parse(raw[:_DETECT_BYTES])
        found = detect(head, readable.encode("utf-8", "replace"))
        if found is not None:
            detector = found.detector
            cause = whole.cause if whole is not None else Reason.UNKNOWN
            status = whole.status if whole is not None else ""
            diagnostic = whole.diagnostic if whole is not None else ""
            for address in found.permanent:
                failures.append(Failure(kind_of(cause), cause, (address,), status, diagnostic))
            for address in found.temporary:
                soft = cause if GROUP[cause] is not Group.ADDRESS else Reason.DELAYED
                failures.append(Failure(kind_of(soft), soft, (address,), status, diagnostic))
    if whole is None and not failures:
        if not recipients:
            return verdict(Kind.UNKNOWN, recipients, reason="bounce notice without a reason")
        whole = _TextJudgement(
            kind_of(Reason.UNKNOWN), Reason.UNKNOWN, "", "", "bounce notice without a reason"
        )
    if not failures and whole is not None:
        named = _unique(recipients)
        if len(named) > 1 and whole.kind is Kind.HARD_BOUNCE:
            # One reason read from words about several recipients: who it is about is
            # not known, so nobody is suppressed for it; each counts as unknown (soft).
            unknown = Reason.UNKNOWN
            failures = [
                Failure(kind_of(unknown), unknown, (a,), whole.status, whole.diagnostic)
                for a in named
            ]
        else:
            failures = [Failure(whole.kind, whole.cause, named, whole.status, whole.diagnostic)]
    # A notice in two languages lists each recipient twice: the first reading counts.
    first: dict[str, Failure] = {}
    for f in failures:
        first.setdefault(f.addresses[0].lower() if f.addresses else "", f)
    failures = sorted(first.values(), key=lambda f: -_SEVERITY[f.kind])
    worst = failures[0]
    if whole is None or blocks:
        why = f"bounce text: {worst.status or worst.cause.value}"
    else:
        why = whole.why
    if detector != "text":
        why = f"{detector}, {why}"
    named = [a for f in failures if f.kind is worst.kind for a in f.addresses]
    return verdict(
        worst.kind,
        recipients + named,
        status=worst.status,
        diagnostic=worst.diagnostic,
        reason=why,
        cause=worst.cause,
        failures=tuple(failures),
        detector=detector,
    )
