"""Pieces of the service URLs that parse alike: CAMPAIGNS_SMTP_URL (mailer.transport.url)
and CAMPAIGNS_INBOX_URL (mailer.mailbox).

Each function takes `fail`, which turns a problem into that URL's own error (its message
names the setting and never repeats the URL, so a password cannot leak into logs).
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

Fail = Callable[[str], Exception]

_HOST_RE = re.compile(r"[a-z0-9]([a-z0-9._-]*[a-z0-9])?", re.ASCII)


def split_url(
    url: object, fail: Fail, schemes: tuple[str, ...], usage: str
) -> tuple[str, SplitResult, dict[str, str]]:
    """(lower-cased scheme, the parts, the query options) of a URL with a known scheme."""
    if not isinstance(url, str):
        raise fail(f"must be a string, not {type(url).__name__}")
    text = url.strip()
    if not text:
        raise fail(f"is empty ({usage})")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise fail("contains control characters")
    if "://" not in text:
        raise fail(f"needs a scheme ({usage})")
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in schemes:
        raise fail(f"unsupported scheme {scheme!r} ({usage})")
    if parts.fragment:
        raise fail("must not have a #fragment")
    return scheme, parts, query_options(parts.query, fail)


def query_options(raw: str, fail: Fail) -> dict[str, str]:
    """`?key=value&…` with lower-cased keys; a key given twice is an error."""
    out: dict[str, str] = {}
    for key, value in parse_qsl(raw, keep_blank_values=True, errors="strict"):
        k = key.strip().lower()
        if k in out:
            raise fail(f"query option {k!r} given twice")
        out[k] = value.strip()
    return out


def host_name(host: str, fail: Fail, example: str) -> str:
    """An IP address or an ASCII (IDNA-encoded) host name."""
    if not host:
        raise fail(f"needs a host, e.g. {example}")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not host.isascii():
        host = host.encode("idna").decode("ascii")  # UnicodeError: the caller's to report
    if len(host) > 253 or not _HOST_RE.fullmatch(host):
        raise fail("the host name is not valid")
    return host


def port_number(parts: SplitResult, fail: Fail, default: int) -> int:
    try:
        port = parts.port
    except ValueError:
        raise fail("the port must be a number from 1 to 65535") from None
    if port is None:
        return default
    if not 0 < port < 65536:
        raise fail("the port must be a number from 1 to 65535")
    return port


def credentials(user: str, password: str, fail: Fail) -> tuple[str, str]:
    """User name and password, percent-decoded, without control characters."""
    username = unquote(user, errors="strict")
    secret = unquote(password, errors="strict")
    for value in (username, secret):
        value.encode("utf-8")  # lone surrogates cannot be sent: UnicodeError for the caller
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
            raise fail("user name and password must not contain control characters")
    return username, secret


def timeout_seconds(value: str | None, fail: Fail, default: float) -> float:
    if value is None:
        return default
    try:
        seconds = float(value)
    except ValueError:
        raise fail(f"timeout must be a number of seconds, not {value!r}") from None
    if not math.isfinite(seconds) or not 0 < seconds <= 3600:
        raise fail("timeout must be more than 0 and at most 3600 seconds")
    return seconds
