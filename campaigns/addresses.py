"""Email addresses: normalised for sending, case-folded for every comparison.

Syntax is checked with the WHATWG HTML "valid e-mail address" pattern plus RFC 5321
length limits. email-validator was measured at ~22 µs a call here, which alone would
take a million-row import past its time budget; this pattern costs ~1 µs.
"""

from __future__ import annotations

import hashlib
import hmac
import re

_VALID = re.compile(
    r"[a-zA-Z0-9.!#$%&'*+/=?^_`{|}~-]+@"
    r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
    r"(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)+"
)


# Any address-like word in free text (an SMTP reply, a bounce's diagnostic).
# Also a quoted local part ("john smith"@…) and one written with %40.
_IN_TEXT = re.compile(
    r"<?(?:\"[^\"]{0,64}\"|[^\s<>@\"']+)@[^\s<>\"']+>?|[^\s<>@\"']+%40[^\s<>\"']+",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """Free text (a server's reply) on one line, without the addresses it quotes: the
    words may be stored and shown in aggregate, the addresses are personal data."""
    return _IN_TEXT.sub("<address>", " ".join(text.split()))


def redact_cut(text: str, limit: int, was_cut: bool = False) -> str:
    """`redact`, then at most `limit` characters, cut between words. `was_cut`: the text
    was already cut short by someone else, so its last word may be half an address."""
    if was_cut:
        text = text.rsplit(" ", 1)[0] if " " in text.strip() else ""
    text = redact(text)
    if len(text) <= limit:
        return text
    cut = text[: limit + 1].rsplit(" ", 1)[0]
    return cut if len(cut) <= limit else ""


def normalise(raw: str) -> str:
    """Trim, and lower-case the domain; the local part is kept as given."""
    text = raw.strip()
    local, at, domain = text.rpartition("@")
    if not at:
        return text
    return f"{local}@{domain.lower()}"


def key(address: str) -> str:
    """The comparison key: the normalised address, case-folded whole."""
    return normalise(address).lower()


def is_valid(address: str) -> bool:
    if len(address) > 254 or _VALID.fullmatch(address) is None:
        return False
    local = address.rpartition("@")[0]
    return len(local) <= 64 and not local.startswith(".") and ".." not in local


_DOMAIN = re.compile(
    r"(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+",
    re.IGNORECASE,
)


def is_domain(text: str) -> bool:
    """A domain name (at least two labels): a return domain, a receiving domain."""
    return _DOMAIN.fullmatch(text) is not None


def suppression_hash(address: str, secret: str) -> str:
    """Keyed hash of an address: all that is kept of an erased or suppressed person."""
    return hmac.new(secret.encode(), key(address).encode(), hashlib.sha256).hexdigest()
