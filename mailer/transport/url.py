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

import os
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import unquote

from mailer.transport.base import TransportConfigError
from mailer.url_parts import (
    credentials,
    host_name,
    port_number,
    split_url,
    timeout_seconds,
)

Scheme = Literal["smtp", "smtps", "maildir"]
Tls = Literal["none", "starttls", "implicit"]

DEFAULT_TIMEOUT = 30.0
_USAGE = "use smtp://host:port, smtps://host or maildir:///path"
_TLS_VALUES: tuple[Tls, ...] = ("none", "starttls", "implicit")
_BOOLS = {"1": True, "true": True, "yes": True, "on": True}
_BOOLS |= {"0": False, "false": False, "no": False, "off": False}


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
    scheme, parts, query = split_url(url, _fail, ("smtp", "smtps", "maildir"), _USAGE)
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
    host = host_name(parts.hostname or "", _fail, "smtp://mail.example.com:587")
    tls = _tls(scheme, query.pop("tls", None))
    port = port_number(parts, _fail, 465 if tls == "implicit" else 25)
    username, password = _credentials(parts.username, parts.password)
    verify = _bool("verify", query.pop("verify", "true"))
    timeout = timeout_seconds(query.pop("timeout", None), _fail, DEFAULT_TIMEOUT)
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
    return credentials(user, password, _fail)


def _bool(name: str, value: str) -> bool:
    try:
        return _BOOLS[value.lower()]
    except KeyError:
        raise _fail(f"{name} must be true or false, not {value!r}") from None
