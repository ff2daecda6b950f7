"""The failed addresses of a bounce in no standard format, as GNU Mailman finds them.

flufl.bounce (Mailman 3's bounce detectors, Apache-2.0) knows the layouts of many old
MTAs and providers (Exchange, Lotus, GroupWise, qmail, Yahoo, AOL, SMTP32, Netscape ...)
that `mailer.bounces` does not read by itself. It says which addresses failed and whether
for good or for now, never why: the reason still comes from the notice's own words.

Its detectors are run one by one, in its own order, so that the one that decided can be
recorded; its RFC 3464 detector is skipped (ours reads DSNs, per recipient, with reasons).
An address is kept only when it is literally in the message: nothing is invented.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.message import Message

# The ordered list is not exported; flufl.bounce's version is pinned in pyproject.toml.
from flufl.bounce._scan import _DETECTORS


@dataclass(frozen=True)
class Detected:
    detector: str  # e.g. "flufl:exchange"
    permanent: tuple[str, ...]
    temporary: tuple[str, ...]


def _literal(found: object, haystack: bytes) -> tuple[str, ...]:
    out: list[str] = []
    if not isinstance(found, (set, frozenset, list, tuple)):
        return ()
    for item in found:
        if not isinstance(item, bytes) or b"@" not in item or len(item) > 254:
            continue
        try:
            address = item.decode("ascii").strip()
        except UnicodeDecodeError:
            continue
        if address and address.lower().encode() in haystack and address not in out:
            out.append(address)
    return tuple(sorted(out, key=str.lower))


def detect(msg: Message, readable: bytes) -> Detected | None:
    """The first detector that finds failed addresses that are in `readable` (the text
    the caller read), or None. Never raises."""
    haystack = readable.lower()
    for detector in _DETECTORS:
        name = detector.__name__.lower()
        if name == "dsn":
            continue
        try:
            temporary, permanent = detector().process(msg)
        except Exception:  # a detector tripping over a malformed message: try the next
            continue
        found_permanent, found_temporary = (
            _literal(permanent, haystack),
            _literal(temporary, haystack),
        )
        if found_permanent or found_temporary:
            return Detected(f"flufl:{name}", found_permanent, found_temporary)
    return None
