"""CAMPAIGNS_SMTP_URL: one string names the transport (DESIGN.md §3).

    smtp://user:pass@host:587?tls=starttls   submission with STARTTLS and AUTH
    smtps://host:465                         implicit TLS
    smtp://127.0.0.1:2525                    plain (a local relay or a test server)
    maildir:///path                          the capture transport (the default)

Query keys: `tls=none|starttls|implicit`, `verify=false` (skip certificate checks, for
self-signed test servers) and `timeout=SECONDS` (every read, default 30). User name and
password are percent-decoded. Errors never repeat the URL, so they cannot leak the
password into logs.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qsl, unquote, urlsplit

from mailer.transport.base import TransportConfigError

Scheme = Literal["smtp", "smtps", "maildir"]
Tls = Literal["none", "starttls", "implicit"]

DEFAULT_TIMEOUT = 30.0
_TLS_VALUES: tuple[Tls, ...] = ("none", "starttls", "implicit")
_BOOLS = {"1": True, "true": True, "yes": True, "on": True}
_BOOLS |= {"0": False, "false": False, "no": False, "off": False}
_HOST_RE = re.compile(r"[a-z0-9]([a-z0-9._-]*[a-z0-9])?", re.ASCII)


@dataclass(frozen=True)
class SmtpUrl:
    scheme: Scheme
    host: str = ""
    port: int = 0
    username: str | None = None
    # Kept out of repr() so a logged SmtpUrl never shows it.
    password: str | None = field(default=None, repr=False)
    tls: Tls = "none"
    path: str = ""
    verify: bool = True
    timeout: float = DEFAULT_TIMEOUT

    def redacted(self) -> str:
        """The URL for logs and screens, password masked."""
        if self.scheme == "maildir":
            return f"maildir://{self.path}"
        user = f"{self.username}:***@" if self.username is not None else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "smtps" if self.tls == "implicit" else "smtp"
        query = "?tls=starttls" if self.tls == "starttls" else ""
        return f"{scheme}://{user}{host}:{self.port}{query}"


def _fail(problem: str) -> TransportConfigError:
    return TransportConfigError(f"SMTP URL: {problem}")


def parse_smtp_url(url: str) -> SmtpUrl:
    """Parse CAMPAIGNS_SMTP_URL; anything unusable raises TransportConfigError."""
    try:
        return _parse(url)
    except TransportConfigError:
        raise
    except (ValueError, UnicodeError) as exc:
        # urlsplit and the decoders have their own ValueErrors; keep the contract.
        raise _fail(f"cannot be parsed ({type(exc).__name__})") from exc


def _parse(url: str) -> SmtpUrl:
    if not isinstance(url, str):
        raise _fail(f"must be a string, not {type(url).__name__}")
    text = url.strip()
    if not text:
        raise _fail("is empty (use smtp://host:port, smtps://host or maildir:///path)")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise _fail("contains control characters")
    if "://" not in text:
        raise _fail("needs a scheme: smtp://, smtps:// or maildir://")
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in ("smtp", "smtps", "maildir"):
        raise _fail(f"unsupported scheme {scheme!r} (use smtp, smtps or maildir)")
    if parts.fragment:
        raise _fail("must not have a #fragment")
    query = _query(parts.query)
    if scheme == "maildir":
        if query:
            raise _fail(f"maildir takes no query options, got {sorted(query)}")
        # maildir:///abs/path, or maildir://rel/path for a path relative to the cwd.
        path = unquote(parts.netloc + parts.path, errors="strict")
        if not path.strip("/"):
            raise _fail("maildir needs a directory, e.g. maildir:///var/mail/campaigns")
        return SmtpUrl(scheme="maildir", path=os.path.expanduser(path))

    if parts.path not in ("", "/"):
        raise _fail("an smtp URL has no path; options go in the query (?tls=starttls)")
    host = _host(parts.hostname or "")
    tls = _tls(scheme, query.pop("tls", None))
    try:
        port = parts.port
    except ValueError as exc:
        raise _fail("the port must be a number from 1 to 65535") from exc
    if port is None:
        port = 465 if tls == "implicit" else 25
    elif not 0 < port < 65536:
        raise _fail("the port must be a number from 1 to 65535")
    username, password = _credentials(parts.username, parts.password)
    verify = _bool("verify", query.pop("verify", "true"))
    timeout = _timeout(query.pop("timeout", None))
    if query:
        raise _fail(f"unknown query option(s) {sorted(query)} (known: tls, verify, timeout)")
    return SmtpUrl(
        scheme=scheme,  # type: ignore[arg-type]
        host=host,
        port=port,
        username=username,
        password=password,
        tls=tls,
        verify=verify,
        timeout=timeout,
    )


def _query(raw: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in parse_qsl(raw, keep_blank_values=True, errors="strict"):
        k = key.strip().lower()
        if k in out:
            raise _fail(f"query option {k!r} given twice")
        out[k] = value.strip()
    return out


def _host(host: str) -> str:
    if not host:
        raise _fail("needs a host, e.g. smtp://mail.example.com:587")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not host.isascii():
        host = host.encode("idna").decode("ascii")  # UnicodeError -> TransportConfigError
    if len(host) > 253 or not _HOST_RE.fullmatch(host):
        raise _fail("the host name is not valid")
    return host


def _tls(scheme: str, value: str | None) -> Tls:
    if value is None:
        return "implicit" if scheme == "smtps" else "none"
    value = value.lower()
    if value not in _TLS_VALUES:
        raise _fail(f"tls must be none, starttls or implicit, not {value!r}")
    if scheme == "smtps" and value != "implicit":
        raise _fail("smtps:// always uses implicit TLS; use smtp:// with tls=starttls")
    return value  # type: ignore[return-value]


def _credentials(user: str | None, password: str | None) -> tuple[str | None, str | None]:
    if not user:
        if password:
            raise _fail("has a password but no user name")
        return None, None
    if password is None:
        raise _fail("has a user name but no password (smtp://user:password@host)")
    username = unquote(user, errors="strict")
    secret = unquote(password, errors="strict")
    for value in (username, secret):
        value.encode("utf-8")  # lone surrogates cannot be sent; caught by parse_smtp_url
        if "\x00" in value or any(ord(c) < 0x20 for c in value):
            raise _fail("user name and password must not contain control characters")
    return username, secret


def _bool(name: str, value: str) -> bool:
    try:
        return _BOOLS[value.lower()]
    except KeyError:
        raise _fail(f"{name} must be true or false, not {value!r}") from None


def _timeout(value: str | None) -> float:
    if value is None:
        return DEFAULT_TIMEOUT
    try:
        seconds = float(value)
    except ValueError:
        raise _fail(f"timeout must be a number of seconds, not {value!r}") from None
    if not math.isfinite(seconds) or not 0 < seconds <= 3600:
        raise _fail("timeout must be more than 0 and at most 3600 seconds")
    return seconds
