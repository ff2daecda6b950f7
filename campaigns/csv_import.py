"""Importing contacts from CSV (DESIGN.md §3 "Contacts CSV", with the consent rules of §2).

Two passes over the file, both streaming:

1. *Inspection*, before anything is written: the header is checked, and the file is
   searched for payment card numbers (a column named like one, or any value of 13-19
   digits that passes the Luhn check). A file that fails is refused whole
   (``ImportRefused``, one line for the user).
2. *Import*, in batches of ``BATCH_ROWS`` rows, one transaction per batch: rows are
   checked one by one (a bad row is reported with its line number and never stops the
   good ones), then each batch is looked up and written with a handful of bulk
   statements. A row is written whole or not at all.

Choices made where the design is silent:

- For an existing contact (matched on the case-folded address) a blank cell changes
  nothing, for every column; a non-blank one replaces the stored value, except ``tags``,
  whose tags are added, and the address itself, which stays as first stored.
- A line with no fields at all (a blank line), or whose every field is blank, is skipped.
- A value starting with ``=``, ``@``, a tab or a carriage return, or with ``+``/``-``
  followed by something that is not a number or a phone number, looks like a
  spreadsheet formula and its row is rejected. Quoted with a leading ``'`` (what
  ``campaigns contacts export`` writes) it is the literal text: the quote is removed.
- A "card number" value is 13-19 digits, spaces and dashes allowed, not starting with 0
  (no payment card does; many phone numbers written ``0049…`` would otherwise be
  refused whenever they pass the Luhn check, one in ten), passing the Luhn check.
- A row may read at most ``MAX_ROW_CHARS`` characters: an unbalanced quote cannot
  swallow the rest of the file into memory; the row is rejected and reading resumes on
  the next line.
"""

from __future__ import annotations

import csv
import fcntl
import gc
import hmac
import json
import os
import pickle
import re
import subprocess
import sys
from array import array
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from itertools import product
from json.encoder import encode_basestring_ascii as _quote
from operator import itemgetter
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Connection, Engine, func, select
from sqlalchemy.exc import IntegrityError, OperationalError

from campaigns import addresses
from campaigns.consent import ConsentConflict, next_state
from campaigns.models import AppMeta, ConsentEvent, Contact, ContactTag, Suppression, utcnow
from campaigns.purposes import ConsentState, Purpose, SuppressionReason

BATCH_ROWS = 10_000
MAX_FIELD = 10_000
MAX_ROW_CHARS = 1_000_000
_READ_CHUNK = 1 << 20

# Columns the importer understands; any other becomes a custom attribute.
TEXT_COLUMNS = ("name", "address", "postcode", "town", "city", "country")
CONSENT_COLUMNS = ("consent_promotional", "consent_research", "consent_third_party")
PURPOSES = (Purpose.PROMOTIONAL, Purpose.RESEARCH, Purpose.THIRD_PARTY)
KNOWN_COLUMNS = ("email", *TEXT_COLUMNS, *CONSENT_COLUMNS, "tags")
# Lengths the database enforces (PostgreSQL does; SQLite would not, so check here).
_MAX_LEN = {name: Contact.__table__.c[name].type.length for name in TEXT_COLUMNS}
_MAX_TAG = ContactTag.__table__.c.tag.type.length
_MAX_SOURCE = ConsentEvent.__table__.c.source.type.length
_MAX_POLICY = ConsentEvent.__table__.c.policy_version.type.length

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
            if len(set(tags)) != len(tags):
                tags = list(dict.fromkeys(tags))
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


# ------------------------------------------------------------------- writing

_contacts = Contact.__table__
_events = ConsentEvent.__table__
_tags = ContactTag.__table__
_suppressions = Suppression.__table__

_EXISTING_COLUMNS = (
    "id",
    "email_key",
    *TEXT_COLUMNS,
    "attributes",
    *(p.value for p in PURPOSES),
    *(f"{p.value}_event_id" for p in PURPOSES),
)
# Values per IN (...) look-up: well under every driver's limit on parameters.
_IN_CHUNK = 1_000
_STATE_COLUMNS = tuple(c for p in PURPOSES for c in (p.value, f"{p.value}_event_id"))
_CONTACT_INSERT = (
    "id",
    "email",
    "email_key",
    *TEXT_COLUMNS,
    "attributes",
    "created_at",
    "updated_at",
    "suppressed",
    *_STATE_COLUMNS,
)
_CONTACT_UPDATE = (*TEXT_COLUMNS, "attributes", "updated_at", *_STATE_COLUMNS)
_EVENT_INSERT = (
    "id",
    "contact_id",
    "purpose",
    "granted",
    "occurred_at",
    "source",
    "note",
    "policy_version",
)
_TAG_INSERT = ("contact_id", "tag")


def _new_states() -> dict[tuple[bool | None, ...], tuple[tuple[Any, ...], tuple[Any, ...]]]:
    """For each (promotional, research, third_party) a file can say about a new
    contact: the state columns of its row, and (index of the event id column, purpose)
    for each consent it grants. Only an explicit yes grants; blank and no leave none."""
    table = {}
    first = _CONTACT_INSERT.index(_STATE_COLUMNS[0])
    for flags in product((True, False, None), repeat=len(PURPOSES)):
        states: list[Any] = []
        grants = []
        for i, (purpose, flag) in enumerate(zip(PURPOSES, flags, strict=True)):
            if flag is True:
                states += (ConsentState.GRANTED.value, None)
                grants.append((first + 2 * i + 1, purpose.value))
            else:
                states += (ConsentState.NONE.value, None)
        table[flags] = (tuple(states), tuple(grants))
    return table


_NEW_STATES = _new_states()


def _json_text(attrs: dict[str, str]) -> str:
    """json.dumps of a dict of strings, the same text, without its per-call set-up."""
    return "{" + ", ".join([f"{_quote(k)}: {_quote(v)}" for k, v in attrs.items()]) + "}"


class _Statements:
    """The batch look-ups and bulk writes as driver-level SQL (executemany).

    Built once per import from the tables' own names and types. SQLAlchemy's per-row
    parameter handling in executemany (and compiling an expanding IN per batch) cost
    more than everything else the import does in Python; here, values that need a
    conversion (timestamps, booleans) go through the columns' own SQLAlchemy bind
    processors once per batch, and attributes are sent as JSON text.
    """

    def __init__(self, dialect: Any) -> None:
        style = dialect.paramstyle
        if style == "qmark":

            def marks(n: int) -> list[str]:
                return ["?"] * n
        elif style in ("format", "pyformat"):

            def marks(n: int) -> list[str]:
                return ["%s"] * n
        elif style == "numeric":

            def marks(n: int) -> list[str]:
                return [f":{i}" for i in range(1, n + 1)]
        else:
            raise NotImplementedError(f"database driver paramstyle {style!r}")
        q = dialect.identifier_preparer

        def insert_sql(table: Any, columns: tuple[str, ...]) -> str:
            names = ", ".join(q.quote(c) for c in columns)
            values = ", ".join(marks(len(columns)))
            return f"INSERT INTO {q.format_table(table)} ({names}) VALUES ({values})"

        self.marks = marks
        self.quote = q.quote
        self.table = q.format_table
        self._lookups: dict[tuple[str, int], str] = {}
        self.insert_contact = insert_sql(_contacts, _CONTACT_INSERT)
        self.insert_event = insert_sql(_events, _EVENT_INSERT)
        self.insert_tag = insert_sql(_tags, _TAG_INSERT)
        m = marks(len(_CONTACT_UPDATE) + 1)
        sets = ", ".join(
            f"{q.quote(c)} = {mark}" for c, mark in zip(_CONTACT_UPDATE, m, strict=False)
        )
        self.update_contact = (
            f"UPDATE {q.format_table(_contacts)} SET {sets} WHERE {q.quote('id')} = {m[-1]}"
        )

        def processor(column: Any) -> Callable[[Any], Any]:
            proc = column.type.dialect_impl(dialect).bind_processor(dialect)
            return proc or (lambda v: v)

        self.when = processor(_contacts.c.created_at)
        granted = processor(_events.c.granted)
        self.granted = {True: granted(True), False: granted(False)}

        attributes = _contacts.c.attributes.type.dialect_impl(dialect)
        self.load_json = attributes.result_processor(dialect, None) or (lambda v: v)

    def many(self, conn: Connection, statement: str, rows: list[Any]) -> None:
        # (SQLAlchemy takes tuples; the rows are lists only to fill in the event ids.)
        conn.exec_driver_sql(statement, list(map(tuple, rows)))

    def lookup(
        self,
        conn: Connection,
        table: Any,
        columns: tuple[str, ...],
        where: str,
        values: list[Any],
        suffix: str = "",
    ) -> list[Any]:
        """SELECT columns FROM table WHERE where IN (values), in chunks the driver takes."""
        found: list[Any] = []
        for i in range(0, len(values), _IN_CHUNK):
            chunk = tuple(values[i : i + _IN_CHUNK])
            key = (f"{table.name}.{where}.{','.join(columns)}{suffix}", len(chunk))
            statement = self._lookups.get(key)
            if statement is None:
                names = ", ".join(self.quote(c) for c in columns)
                statement = self._lookups[key] = (
                    f"SELECT {names} FROM {self.table(table)} WHERE {self.quote(where)} "
                    f"IN ({', '.join(self.marks(len(chunk)))}){suffix}"
                )
            found += conn.exec_driver_sql(statement, chunk).fetchall()
        return found


@dataclass
class _Context:
    source: str
    policy_version: str
    dry_run: bool
    postgres: bool
    secret: bytes
    sql: _Statements


@dataclass
class _Outcome:
    imported: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: list[RejectedRow] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)


def _allocate(conn: Connection, table: Any, n: int, postgres: bool) -> list[int]:
    """n fresh primary keys for table, so that rows can point at each other before
    they are inserted (contacts at their consent events and back) without a round trip
    per row. PostgreSQL: from the column's sequence. SQLite: after the largest, which
    is what SQLite itself does, under the write lock that BEGIN IMMEDIATE took."""
    if n == 0:
        return []
    if postgres:
        seq = func.pg_get_serial_sequence(table.name, "id")
        stmt = select(func.nextval(seq)).select_from(func.generate_series(1, n))
        return list(conn.execute(stmt).scalars())
    top = conn.execute(select(func.coalesce(func.max(table.c.id), 0))).scalar_one()
    seq = conn.exec_driver_sql(
        "SELECT seq FROM sqlite_sequence WHERE name = ?", (table.name,)
    ).scalar()
    top = max(top, seq or 0)
    return list(range(top + 1, top + 1 + n))


def _withdrawal_reasons(conn: Connection, event_ids: set[int]) -> dict[int, str]:
    if not event_ids:
        return {}
    rows = conn.execute(
        select(_events.c.id, _events.c.source, _events.c.occurred_at).where(
            _events.c.id.in_(sorted(event_ids))
        )
    )
    return {eid: f"{source}, {when:%Y-%m-%d}" for eid, source, when in rows}


def _write_batch(conn: Connection, records: list[_Record], ctx: _Context) -> _Outcome:
    """Look the batch up and write it; the caller's transaction makes it all or nothing."""
    out = _Outcome()
    sql = ctx.sql
    # Hold the rows on PostgreSQL: a person unsubscribing meanwhile must not be
    # overwritten. (SQLite: BEGIN IMMEDIATE already keeps every other writer out.) No
    # ORDER BY: with one, PostgreSQL walks the whole primary key to avoid a sort.
    lock = " FOR UPDATE" if ctx.postgres and not ctx.dry_run else ""
    if ctx.postgres:
        # The look-ups below go by unique keys. Without fresh statistics (a table the
        # import itself is filling) PostgreSQL may scan the whole table instead, for
        # every batch: measured at 0.8 s per look-up with 100,000 contacts.
        conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
    keys = [r[2] for r in records]
    existing = {
        row[1]: row
        for row in sql.lookup(conn, _contacts, _EXISTING_COLUMNS, "email_key", keys, lock)
    }

    # Suppressions of the new addresses; erased ones are refused.
    hashes = {r[2]: r[8] for r in records if r[2] not in existing}
    suppressed: dict[str, str] = {}
    if hashes:
        found = sql.lookup(
            conn, _suppressions, ("address_hash", "reason"), "address_hash", [*hashes.values()]
        )
        suppressed = {address_hash: reason for address_hash, reason in found}
    erased = SuppressionReason.ERASED.value
    n_new = 0
    for r in records:
        if r[2] not in existing:
            if suppressed and suppressed.get(hashes[r[2]]) == erased:
                out.rejected.append(RejectedRow(r[0], "address was erased at the person's request"))
            else:
                n_new += 1

    # Tags already held by the existing contacts the file gives tags for.
    with_tags = [existing[r[2]][0] for r in records if r[5] and r[2] in existing]
    held_tags: set[tuple[int, str]] = set()
    if with_tags:
        found = sql.lookup(conn, _tags, ("contact_id", "tag"), "contact_id", with_tags)
        held_tags = {(cid, tag) for cid, tag in found}

    now = utcnow()
    when = sql.when(now)
    source, policy = ctx.source, ctx.policy_version
    yes, no = sql.granted[True], sql.granted[False]
    next_id = iter(_allocate(conn, _contacts, n_new, ctx.postgres)).__next__

    new_contacts: list[list[Any]] = []
    updates: list[list[Any]] = []
    events: list[list[Any]] = []
    links: list[tuple[list[Any], int]] = []  # (row, index of its event id): events in order
    tag_rows: list[tuple[int, str]] = []
    conflicts: list[tuple[int, Purpose, int | None]] = []

    imported = 0
    for line, email, key, texts, consents, tags, attrs, attrs_text, _hash in records:
        old = existing.get(key)
        if old is None:
            reason = suppressed.get(hashes[key]) if suppressed else None
            if reason == erased:
                continue
            cid = next_id()
            states, grants = _NEW_STATES[consents]
            row = [cid, email, key, *texts, attrs_text, when, when]
            row += (reason, *states)
            if grants:
                for at, purpose in grants:
                    links.append((row, at))
                    events.append([None, cid, purpose, yes, when, source, "", policy])
            new_contacts.append(row)
            if tags:
                tag_rows += [(cid, t) for t in tags]
            imported += 1
            continue

        cid = old[0]
        changed = False
        row = []
        for value, current in zip(texts, old[2:8], strict=True):
            if value and value != current:
                row.append(value)
                changed = True
            else:
                row.append(current)
        merged = sql.load_json(old[8])
        if attrs:
            merged = dict(merged or {})
            for name, value in attrs.items():
                if merged.get(name) != value:
                    merged[name] = value
                    changed = True
        row += (merged, when)
        for i, (purpose, flag) in enumerate(zip(PURPOSES, consents, strict=True)):
            state, event_id = old[9 + i], old[12 + i]
            if flag is not None:
                try:
                    after = next_state(state, flag, source)
                except ConsentConflict:
                    conflicts.append((line, purpose, event_id))
                    after = None
                if after is not None:
                    state = after
                    links.append((row, len(row) + 1))
                    events.append(
                        [None, cid, purpose.value, yes if flag else no, when, source, "", policy]
                    )
                    changed = True
            row += (state, event_id)
        for tag in tags:
            if (cid, tag) not in held_tags:
                tag_rows.append((cid, tag))
                changed = True
        if changed:
            row[6] = json.dumps(row[6])
            row.append(cid)
            updates.append(row)
            out.updated += 1
        else:
            out.unchanged += 1

    out.imported = imported
    if conflicts:
        why = _withdrawal_reasons(conn, {eid for _l, _p, eid in conflicts if eid is not None})
        for line, purpose, eid in conflicts:
            detail = f" ({why[eid]})" if eid in why else ""
            out.conflicts.append(
                Conflict(
                    line,
                    purpose.value,
                    f"the person withdrew {purpose.value} consent themselves{detail}; "
                    "only their own new opt-in can grant it again",
                )
            )

    if ctx.dry_run:
        return out
    event_ids = _allocate(conn, _events, len(events), ctx.postgres)
    for event, eid in zip(events, event_ids, strict=True):
        event[0] = eid
    for (row, at), eid in zip(links, event_ids, strict=True):
        row[at] = eid
    if new_contacts:
        sql.many(conn, sql.insert_contact, new_contacts)
    if events:
        sql.many(conn, sql.insert_event, events)
    if tag_rows:
        sql.many(conn, sql.insert_tag, tag_rows)
    if updates:
        sql.many(conn, sql.update_contact, updates)
    return out


def _suppression_secret(conn: Connection) -> bytes:
    table = AppMeta.__table__
    key = conn.execute(select(table.c.value).where(table.c.key == "suppression_key")).scalar()
    conn.rollback()
    if key is None:
        raise ImportRefused(
            "the database is missing its suppression key: run `campaigns db upgrade`"
        )
    # As addresses.suppression_hash: HMAC-SHA256(key, addresses.key(address)).
    return key.encode()


_DEADLOCK = "40P01"


def _run_batch(conn: Connection, records: list[_Record], ctx: _Context) -> _Outcome:
    attempts = 3
    for attempt in range(attempts):
        try:
            with conn.begin() as tx:
                out = _write_batch(conn, records, ctx)
                if ctx.dry_run:
                    tx.rollback()
                return out
        except (IntegrityError, OperationalError) as exc:
            # Someone else added one of these addresses between our look-up and our
            # insert, or locked the same contacts in another order (PostgreSQL; SQLite's
            # write lock rules both out): look again.
            retry = isinstance(exc, IntegrityError) or (
                getattr(exc.orig, "sqlstate", None) == _DEADLOCK
            )
            if not retry or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


# SQLite, for the import's connection: a page cache of 32 MB (the default is 2 MB) and
# a WAL checkpoint every 64 MB rather than every 4 MB. Restored afterwards. (64 MB and
# 256 MB of cache wrote 1,000,000 rows no faster than 32 MB; a checkpoint every 256 MB
# was slower.)
_SQLITE_PRAGMAS = {"cache_size": -32_768, "wal_autocheckpoint": 16_384}


@contextmanager
def _tuned(conn: Connection) -> Iterator[None]:
    if conn.dialect.name != "sqlite":
        yield
        return
    saved = {name: conn.exec_driver_sql(f"PRAGMA {name}").scalar() for name in _SQLITE_PRAGMAS}
    for name, value in _SQLITE_PRAGMAS.items():
        conn.exec_driver_sql(f"PRAGMA {name} = {int(value)}")
    conn.rollback()
    try:
        yield
    finally:
        conn.rollback()
        for name, value in saved.items():
            conn.exec_driver_sql(f"PRAGMA {name} = {int(value)}")
        conn.rollback()


@contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    """The cyclic garbage collector off while batches come and go: every batch makes
    some 100,000 containers that live as long as the batch, so they reach the oldest
    generation and the collector walked them again and again (1,000,000 rows: 32.9 s
    with it, 26.4 s without). The records and rows hold no cycles, reference counting
    frees them; what little else has one is collected once the collector is back on."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def import_contacts(
    engine: Engine,
    path: Path,
    *,
    policy_version: str,
    dry_run: bool = False,
    source: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Import a contacts CSV (DESIGN.md §3); raises ImportRefused for a refused file.

    Rows are counted as imported (new contact), updated (an existing contact changed)
    or unchanged; rejected rows and conflicts are listed with their line numbers. With
    dry_run the same checks run and the same counts come back, but nothing is written.
    `progress(rows_done)` is called after each batch.
    """
    path = Path(path)
    source = source if source is not None else f"import:{path.name}"
    if len(source) > _MAX_SOURCE:
        raise ImportRefused(f"the event source is longer than {_MAX_SOURCE} characters")
    if not policy_version or len(policy_version) > _MAX_POLICY:
        raise ImportRefused(f"the policy version must be 1 to {_MAX_POLICY} characters")
    names = _inspect(path)
    report = ImportReport(dry_run=dry_run)
    with engine.connect() as conn:
        ctx = _Context(
            source=source,
            policy_version=policy_version,
            dry_run=dry_run,
            postgres=conn.dialect.name == "postgresql",
            secret=_suppression_secret(conn),
            sql=_Statements(conn.dialect),
        )
        with _tuned(conn), _no_cyclic_gc():
            _import_rows(conn, path, _RowChecker(names, ctx.secret), ctx, report, progress)
    report.rejected.sort(key=lambda r: r.line)
    report.conflicts.sort(key=lambda c: c.line)
    return report


# Files at least this large are read and checked in a second process while this one
# writes (the reading side is about a third of the work; on a 2-core machine the two
# overlap). Smaller files are not worth the new process's start-up (~0.5 s).
PARALLEL_MIN_BYTES = 8 << 20


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


class _NoReader(Exception):
    """The second process could not be started, or ended before sending anything."""


_READER = "from campaigns.csv_import import _reader_main; _reader_main()"


@contextmanager
def _batches_from_process(
    path: Path, names: list[str], secret: bytes, batch_rows: int
) -> Iterator[Iterator[_Batch]]:
    """The file's batches, read and checked by a child process (_reader_main).

    A plain child interpreter rather than multiprocessing: nothing of the caller's
    (threads, open connections, a __main__ that cannot be re-imported) is copied or
    re-run. The package's folder goes first on its import path.
    """
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    try:
        reader = subprocess.Popen(
            [sys.executable, "-c", _READER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
    except OSError as exc:
        raise _NoReader from exc
    assert reader.stdin is not None and reader.stdout is not None
    stdout = reader.stdout
    # Room in the pipe for a whole batch (Linux; 1 MB is the default limit), so that
    # the reader can hand it over and go on with the next one.
    with suppress(AttributeError, OSError):
        fcntl.fcntl(stdout.fileno(), fcntl.F_SETPIPE_SZ, 1 << 20)

    def batches() -> Iterator[_Batch]:
        received = False
        while True:
            try:
                kind, payload = pickle.load(stdout)
            except (EOFError, pickle.UnpicklingError):
                status = reader.wait()
                if not received:  # it could not even start (nothing is written yet)
                    raise _NoReader from None
                raise RuntimeError(
                    f"the CSV reading process ended unexpectedly (exit status {status})"
                ) from None
            received = True
            if kind == "batch":
                yield payload
            elif kind == "end":
                return
            else:
                raise payload

    try:
        try:
            with reader.stdin as stdin:
                pickle.dump((path, names, secret, batch_rows), stdin, pickle.HIGHEST_PROTOCOL)
        except BrokenPipeError as exc:
            raise _NoReader from exc
        yield batches()
    finally:
        stdout.close()
        if reader.poll() is None:
            reader.terminate()
        reader.wait()


def _import_rows(
    conn: Connection,
    path: Path,
    checker: _RowChecker,
    ctx: _Context,
    report: ImportReport,
    progress: Callable[[int], None] | None,
) -> None:
    try:
        parallel = path.stat().st_size >= PARALLEL_MIN_BYTES
    except OSError:
        parallel = False
    if parallel:
        try:
            reading = _batches_from_process(path, checker.names, checker.secret, BATCH_ROWS)
            with reading as batches:
                _write_batches(conn, batches, ctx, report, progress)
        except _NoReader:  # no second interpreter to be had: read here
            parallel = False
    if not parallel:
        _write_batches(conn, _read_batches(path, checker, BATCH_ROWS), ctx, report, progress)


def _write_batches(
    conn: Connection,
    batches: Iterator[_Batch],
    ctx: _Context,
    report: ImportReport,
    progress: Callable[[int], None] | None,
) -> None:
    done = reported = 0
    for batch, rejected, done in batches:
        report.rejected.extend(rejected)
        if batch:
            _merge(report, _run_batch(conn, batch, ctx))
            if progress is not None:
                progress(done)
                reported = done
    if progress is not None and (done != reported or not done):
        progress(done)


def _merge(report: ImportReport, out: _Outcome) -> None:
    report.imported += out.imported
    report.updated += out.updated
    report.unchanged += out.unchanged
    report.rejected.extend(out.rejected)
    report.conflicts.extend(out.conflicts)
