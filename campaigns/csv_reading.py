"""Reading and checking a contacts CSV (DESIGN.md §3 "Contacts CSV"): the half of
campaigns.csv_import that needs no database, so that a second process can do it for
a big file (``_reader_main``) without importing SQLAlchemy. See csv_import for the
choices made.
"""

from __future__ import annotations

import csv
import gc
import hmac
import pickle
import re
import sys
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii as _quote
from operator import itemgetter
from pathlib import Path
from typing import IO, Any

from campaigns import addresses
from campaigns.tags import fold, unique_tags

MAX_FIELD = 10_000
MAX_ROW_CHARS = 1_000_000
_READ_CHUNK = 1 << 20

# Columns the importer understands; any other becomes a custom attribute.
TEXT_COLUMNS = ("name", "address", "postcode", "town", "city", "country")
CONSENT_COLUMNS = ("consent_promotional", "consent_research", "consent_third_party")
KNOWN_COLUMNS = ("email", *TEXT_COLUMNS, *CONSENT_COLUMNS, "tags")
# Lengths the database enforces (PostgreSQL does; SQLite would not, so check here).
# Written out rather than read from campaigns.models, so that the reading process
# need not import SQLAlchemy (~40 MB); a test keeps them equal to the tables'.
_MAX_LEN = {
    "name": 500,
    "address": 1000,
    "postcode": 50,
    "town": 200,
    "city": 200,
    "country": 100,
}
_MAX_TAG = 100

_BAD = object()
_FLAGS: dict[str, Any] = {"": None, "yes": True, "true": True, "1": True}
_FLAGS.update({"no": False, "false": False, "0": False})
_NO_CONSENTS = ("", "", "")
_UNSAID = (None, None, None)
_SHORTEST = min(_MAX_LEN.values())

_CONTROL = r"\x01-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f"
# What sends a row down the careful path (_RowChecker.clean): a control character or
# an undecodable byte anywhere, or a field starting with white space, a formula
# character or a quote. The fields are joined with _SEP for the look; a _SEP inside a
# field only costs a careful look that was not needed.
_SEP = "\ufffd"
_BAD_CHAR = re.compile(rf"[\x00{_CONTROL}\ud800-\udfff]")
_FIELD_START = re.compile(rf"{_SEP}[\s=@+\-']")
_CONTROL_CHAR = re.compile(rf"[\x00{_CONTROL}]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
# What may follow a leading + or -: a number or a phone number.
_NUMBERISH = re.compile(r"[+-]\s*[\d(][\d\s().,/%-]*")
# The exporter's escape of a formula-like value: one more leading quote.
_ESCAPED = re.compile(r"'+[=@+\-\t\r]")

# Payment card numbers.
_CARD_CANDIDATE = re.compile(r"\d(?:[ -]*\d){12}")
_CARD_VALUE = re.compile(r"[1-9](?:[ -]*\d){12,18}")
_CARD_WORDS = frozenset(
    {"cc", "ccn", "ccnum", "ccnumber", "ccno", "pan", "cvv", "cvv2", "cvc", "cvc2", "csc"}
    | {"creditcard", "debitcard", "cardnumber", "cardno", "cardnum", "kreditkarte"}
)
_CARD_QUALIFIERS = frozenset(
    {"number", "no", "num", "nr", "nbr", "credit", "debit", "payment", "visa", "mastercard"}
    | {"amex", "bank", "security", "expiry", "exp"}
)
_CARD_FRAGMENTS = ("creditcard", "debitcard", "cardnumber", "paymentcard", "kartennummer")


# ------------------------------------------------------------------- the report


@dataclass(slots=True)
class RejectedRow:
    line: int
    reason: str


@dataclass(slots=True)
class Conflict:
    """The file tried to re-grant a purpose the person withdrew themselves."""

    line: int
    purpose: str
    reason: str


@dataclass
class ImportReport:
    imported: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: list[RejectedRow] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)
    dry_run: bool = False


class ImportRefused(Exception):
    """The whole file is refused before anything is written; the message is one line."""


# ------------------------------------------------------------------- reading


class _RowTooLong(Exception):
    pass


class _Lines:
    """Physical lines for csv.reader: counted, and capped per row.

    A class rather than a generator so that raising (a row too long) does not end it:
    csv.reader resets itself on the next call and reading resumes with the next line.
    """

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self.lines = 0
        self.row_chars = 0

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        line = self._stream.readline(_READ_CHUNK)
        if not line:
            raise StopIteration
        self.lines += 1
        self.row_chars += len(line)
        if self.row_chars > MAX_ROW_CHARS or len(line) == _READ_CHUNK:
            while len(line) == _READ_CHUNK and line[-1] not in "\r\n":
                line = self._stream.readline(_READ_CHUNK)
            raise _RowTooLong
        return line


def _open(path: Path) -> IO[str]:
    try:
        return open(
            path, encoding="utf-8-sig", errors="surrogateescape", newline="", buffering=1 << 16
        )
    except OSError as exc:
        raise ImportRefused(f"cannot read the file: {exc.strerror or exc}") from None


def _rows(stream: IO[str]) -> Iterator[tuple[int, list[str] | None, str | None]]:
    """(line where the row starts, fields, None) or (line, None, why it cannot be read)."""
    lines = _Lines(stream)
    reader = csv.reader(lines, strict=False)
    while True:
        start = lines.lines + 1
        lines.row_chars = 0
        try:
            row = next(reader)
        except StopIteration:
            return
        except _RowTooLong:
            yield (
                start,
                None,
                f"row is longer than {MAX_ROW_CHARS:,} characters (unbalanced quote?)",
            )
            continue
        except csv.Error as exc:
            if "field larger than field limit" in str(exc):
                yield start, None, f"a field is longer than {MAX_FIELD:,} characters"
            else:
                yield start, None, f"malformed CSV: {exc}"
            continue
        yield start, row, None


def _show(value: str, limit: int = 40) -> str:
    """A value for a message: quoted, escaped, shortened."""
    if len(value) > limit:
        value = value[: limit - 1] + "…"
    return repr(value)


# ------------------------------------------------------------------- header


def _looks_like_card_column(name: str) -> bool:
    words = [w for w in re.split(r"[^0-9a-z]+", name) if w]
    compact = "".join(words)
    if compact == "card" or any(w in _CARD_WORDS for w in words):
        return True
    if "card" in words and any(w in _CARD_QUALIFIERS for w in words):
        return True
    return any(fragment in compact for fragment in _CARD_FRAGMENTS)


def _header(reader_rows: Iterator[tuple[int, list[str] | None, str | None]]) -> list[str]:
    """The header's column names (trimmed, case-folded), or ImportRefused."""
    first = next(reader_rows, None)
    if first is None:
        raise ImportRefused("the file is empty: it needs a header row naming the columns")
    _line, raw, problem = first
    if raw is None:
        raise ImportRefused(f"the header row cannot be read: {problem}")
    if not raw or all(not name.strip() for name in raw):
        raise ImportRefused("the first line is blank: it must be the header row naming the columns")
    names: list[str] = []
    for position, value in enumerate(raw, start=1):
        if _SURROGATE.search(value):
            raise ImportRefused(
                "the header row is not valid UTF-8 text: save the file as UTF-8 CSV"
            )
        if _CONTROL_CHAR.search(value):
            raise ImportRefused(f"column {position}'s name contains a control character")
        name = value.strip()
        if _ESCAPED.match(name):
            name = name[1:]
        elif name[:1] in ("=", "@", "+", "-"):
            raise ImportRefused(
                f"column {position}'s name {_show(name)} looks like a spreadsheet formula"
            )
        name = name.casefold()
        if not name:
            raise ImportRefused(f"column {position} has no name in the header row")
        if name in names:
            raise ImportRefused(f"column {name!r} appears twice in the header row")
        names.append(name)
    if "email" not in names:
        raise ImportRefused(
            "the header row has no 'email' column (the first line must name the columns)"
        )
    for name in names:
        if _looks_like_card_column(name):
            raise ImportRefused(
                f"column {name!r} looks like payment card numbers; payment data is never "
                "accepted: remove the column and import again"
            )
    return names


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def is_card_number(value: str) -> bool:
    """13-19 digits (spaces and dashes allowed), not starting with 0, passing Luhn."""
    value = value.strip().lstrip("'").strip()
    if _CARD_VALUE.fullmatch(value) is None:
        return False
    return _luhn(value.replace(" ", "").replace("-", ""))


def _inspect(path: Path) -> list[str]:
    """Everything that refuses the whole file, checked before anything is written."""
    try:
        with open(path, "rb") as raw:
            start = raw.read(4)
    except OSError as exc:
        raise ImportRefused(f"cannot read the file: {exc.strerror or exc}") from None
    if start[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise ImportRefused("the file is UTF-16 text: save it as UTF-8 CSV")
    try:
        with _open(path) as stream:
            names = _header(_rows(stream))
        if _may_hold_card_numbers(path):
            _find_card_numbers(path, names)
    except OSError as exc:
        raise ImportRefused(f"cannot read the file: {exc.strerror or exc}") from None
    return names


# Bytes -> "0" for a digit, "." for anything else; spaces and dashes dropped. Thirteen
# "0" in a row is then the least any card number leaves behind.
_DIGITS_ONLY = bytes(48 if 48 <= b <= 57 else 46 for b in range(256))


def _may_hold_card_numbers(path: Path) -> bool:
    """A fast scan of the raw bytes: False means no value can be a card number."""
    run = b"0" * 13
    tail = b""
    with open(path, "rb") as raw:
        while chunk := raw.read(_READ_CHUNK):
            shape = tail + chunk.translate(_DIGITS_ONLY, b" -")
            if run in shape:
                return True
            tail = shape[-12:]
    return False


def _find_card_numbers(path: Path, names: list[str]) -> None:
    """The exact check, field by field; refuses the file at the first card number."""
    with _open(path) as stream:
        rows = _rows(stream)
        next(rows)
        for line, row, _problem in rows:
            if not row or not _CARD_CANDIDATE.search("|".join(row)):
                continue
            for position, value in enumerate(row):
                if len(value) >= 13 and is_card_number(value):
                    column = (
                        repr(names[position])
                        if position < len(names)
                        else f"{position + 1} (beyond the header)"
                    )
                    raise ImportRefused(
                        f"column {column} holds payment card numbers (line {line}); payment "
                        "data is never accepted: remove the column and import again"
                    )


# ------------------------------------------------------------------- rows


class _Reject(Exception):
    pass


# A checked row: (line, email, key, texts, consents, tags, attributes, the attributes
# as JSON text, the address's suppression hash).
_Record = tuple[
    int,
    str,
    str,
    tuple[str, ...],
    tuple[bool | None, ...],
    tuple[str, ...],
    dict[str, str],
    str,
    str,
]


class _SeenKeys:
    """The addresses met so far, as 64-bit hashes in 65,536 arrays: about 9 bytes an
    address, where a set of ints takes some 75 (a million rows: 76 MB -> 13 MB)."""

    def __init__(self) -> None:
        self._buckets = [array("Q") for _ in range(1 << 16)]

    def add(self, key: str) -> bool:
        """False if key was met before."""
        digest = hash(key) & 0xFFFF_FFFF_FFFF_FFFF
        bucket = self._buckets[digest & 0xFFFF]
        if digest in bucket:
            return False
        bucket.append(digest)
        return True


class _RowChecker:
    """Turns the fields of one row into a record, or a reason to reject it."""

    def __init__(self, names: list[str], secret: bytes) -> None:
        self.names = names
        self.secret = secret
        self.width = len(names)
        self.email = names.index("email")

        # Every row gets a "" appended at index `width`: what an absent column reads.
        def at(column: str) -> int:
            return names.index(column) if column in names else len(names)

        self.texts = itemgetter(*(at(c) for c in TEXT_COLUMNS))
        self.consents = itemgetter(*(at(c) for c in CONSENT_COLUMNS))
        self.tags = at("tags")
        self.attrs = tuple((i, n) for i, n in enumerate(names) if n not in KNOWN_COLUMNS)
        self.seen = _SeenKeys()

    def clean(self, value: str, position: int) -> str:
        """One field, carefully: the slow path for anything the fast look flags."""
        column = self.names[position]
        if len(value) > MAX_FIELD:
            raise _Reject(f"{column}: longer than {MAX_FIELD:,} characters")
        if _SURROGATE.search(value):
            raise _Reject(f"{column}: not valid UTF-8 text")
        bad = _CONTROL_CHAR.search(value)
        if bad:
            raise _Reject(f"{column}: contains a control character (U+{ord(bad.group()):04X})")
        if value[:1] in ("\t", "\r"):
            raise _Reject(f"{column}: starts with a tab or carriage return (a formula trick)")
        value = value.strip()
        first = value[:1]
        if first == "'":
            if _ESCAPED.match(value):
                value = value[1:]
        elif first in ("=", "@") or (
            first in ("+", "-") and len(value) > 1 and _NUMBERISH.fullmatch(value) is None
        ):
            raise _Reject(
                f"{column}: {_show(value)} looks like a spreadsheet formula "
                "(put a ' in front to import it as text)"
            )
        return value

    def check(self, line: int, row: list[str]) -> _Record | None:
        """The record, or None for a blank row; raises _Reject."""
        if len(row) != self.width:
            if not row or not any(v.strip() for v in row):
                return None
            raise _Reject(f"expected {self.width} fields, found {len(row)}")
        joined = _SEP + _SEP.join(row)
        if (
            len(joined) > MAX_FIELD
            or (not joined.isprintable() and _BAD_CHAR.search(joined))
            or _FIELD_START.search(joined)
        ):
            row = [self.clean(v, i) for i, v in enumerate(row)]
        else:
            row = [v.strip() for v in row]
        row.append("")
        email = row[self.email]
        if not email:
            if not any(row):
                return None
            raise _Reject("no email address")
        email = addresses.normalise(email)
        if not addresses.is_valid(email):
            raise _Reject(f"invalid email address {_show(email)}")
        texts = self.texts(row)
        texts = (*texts[:5], texts[5].upper())
        if max(map(len, texts)) > _SHORTEST:
            for column, value in zip(TEXT_COLUMNS, texts, strict=True):
                if len(value) > _MAX_LEN[column]:
                    raise _Reject(f"{column}: longer than {_MAX_LEN[column]} characters")
        consents = self.consents(row)
        if consents == _NO_CONSENTS:
            consents = _UNSAID
        else:
            consents = tuple([_FLAGS.get(v.lower(), _BAD) for v in consents])
            if _BAD in consents:
                column, value = next(
                    (c, v)
                    for c, v, f in zip(CONSENT_COLUMNS, self.consents(row), consents, strict=True)
                    if f is _BAD
                )
                raise _Reject(f"{column}: {_show(value)} is not yes/no/true/false/1/0")
        tags = row[self.tags]
        if tags:
            tags = [t.strip() for t in tags.split(";")]
            if "" in tags:
                tags = [t for t in tags if t]
            # Tags compare case-insensitively (A-Z): "VIP" and "vip" are one tag.
            if len(tags) > 1 and len({fold(t) for t in tags}) != len(tags):
                tags = unique_tags(tags)
            if len(tags) and max(map(len, tags)) > _MAX_TAG:
                tag = next(t for t in tags if len(t) > _MAX_TAG)
                raise _Reject(f"tags: {_show(tag)} is longer than {_MAX_TAG} characters")
            tags = tuple(tags)
        else:
            tags = ()
        attrs = {name: row[i] for i, name in self.attrs if row[i]}
        key = email.lower()
        if not self.seen.add(key):
            raise _Reject("duplicate of an address earlier in the file")
        # As addresses.suppression_hash: HMAC-SHA256(key, addresses.key(address)).
        address_hash = hmac.digest(self.secret, key.encode(), "sha256").hex()
        attrs_text = _json_text(attrs) if attrs else "{}"
        return (line, email, key, texts, consents, tags, attrs, attrs_text, address_hash)


def _json_text(attrs: dict[str, str]) -> str:
    """json.dumps of a dict of strings, the same text, without its per-call set-up."""
    return "{" + ", ".join([f"{_quote(k)}: {_quote(v)}" for k, v in attrs.items()]) + "}"


# One batch of checked rows: (records, rows rejected while reading, rows read so far).
_Batch = tuple[list[_Record], list[RejectedRow], int]


def _read_batches(path: Path, checker: _RowChecker, batch_rows: int) -> Iterator[_Batch]:
    """The file's checked rows in batches of batch_rows (the last may be short or empty)."""
    done = 0
    batch: list[_Record] = []
    rejected: list[RejectedRow] = []
    check = checker.check
    with _open(path) as stream:
        rows = _rows(stream)
        next(rows)  # the header, checked by _inspect
        for line, row, problem in rows:
            if row is None:
                rejected.append(RejectedRow(line, problem or "unreadable row"))
                done += 1
                continue
            try:
                record = check(line, row)
            except _Reject as exc:
                rejected.append(RejectedRow(line, str(exc)))
                done += 1
                continue
            if record is None:
                continue
            done += 1
            batch.append(record)
            if len(batch) >= batch_rows:
                yield batch, rejected, done
                batch, rejected = [], []
    yield batch, rejected, done


def _reader_main() -> None:
    """The second process (``python -c``): reads (path, names, secret, batch_rows) pickled on
    stdin, writes pickled ("batch", _Batch) messages on stdout, then ("end", None), or
    ("error", exception). Writing blocks while the pipe is full, so it runs at most a
    batch or two ahead of the writer and memory stays flat."""
    out = sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing else may write to the pipe
    # A short-lived process that makes no reference cycles worth collecting.
    gc.disable()
    path, names, secret, batch_rows = pickle.load(sys.stdin.buffer)
    try:
        for item in _read_batches(path, _RowChecker(names, secret), batch_rows):
            # Pickled whole first: while the pipe is full, the writer is waiting for
            # this batch, not for its pickling.
            out.write(pickle.dumps(("batch", item), pickle.HIGHEST_PROTOCOL))
            out.flush()
        message: tuple[str, Any] = ("end", None)
    except BaseException as exc:  # handed to the parent, which raises it
        message = ("error", exc)
    try:
        data = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
    except Exception:  # an exception that cannot be pickled
        data = pickle.dumps(("error", RuntimeError(f"{message[1]!r}")))
    try:
        out.write(data)
        out.flush()
    except BrokenPipeError:  # the writer has stopped (it failed, or was interrupted)
        pass
