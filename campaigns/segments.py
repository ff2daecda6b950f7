"""Segments: who a campaign goes to (DESIGN.md §2, §4).

A segment is a purpose plus filters on country, city, tags, custom attributes and sign-up
date, always ANDed with eligibility: consent for the purpose is ``granted`` in the state
cached on the contact row, and the contact is not suppressed. With no purpose, a contact
is reachable when any one purpose is granted (used for counting only; sending needs one).

Everything is built from SQLAlchemy expressions with bound parameters, never from text a
user typed, and behaves the same on SQLite and PostgreSQL:

- countries: any of; compared without regard to case (the importer stores them upper-cased
  with ``str.upper``, and the filter values are upper-cased the same way), so ``de`` = ``DE``
  and the (purpose, country) indexes serve the comparison;
- cities: any of; tags: all of. Both compare without regard to the case of the letters
  A-Z (``vip`` = ``VIP``, ``berlin`` = ``Berlin``); other letters must match as written
  (``MÜNCHEN`` is not ``München``). That is the only case folding SQLite's ``lower()``
  does, and PostgreSQL is made to do exactly the same (``lower(x COLLATE "C")``) rather
  than follow its locale, so a segment counts alike on both;
- attributes: all of; the custom attribute's value must equal the given text exactly
  (case and all). Only string values match;
- sign-up date: ``signed_up_after <= created_at < signed_up_before``, aware datetimes.

The syntax check of the address (the third part of eligibility) is not done here: the
importer rejects bad addresses and the send engine re-checks each recipient just before
SMTP (``consent.permission_for``).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    ColumnElement,
    Engine,
    String,
    and_,
    case,
    exists,
    func,
    select,
    true,
)
from sqlalchemy.exc import CompileError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement
from sqlmodel import Session, col

from campaigns.db import CHANGES_AT_BEGIN
from campaigns.models import Contact, ContactTag
from campaigns.purposes import Purpose, eligible_values
from campaigns.tags import fold


class SegmentError(ValueError):
    """A segment or filter that cannot be used; the message is one line for the user."""


# ----------------------------------------------------------------- SQL helpers


class ascii_lower(FunctionElement[str]):
    """``lower()`` for the letters A-Z only, identically on every database."""

    type = String()
    name = "ascii_lower"
    inherit_cache = True


@compiles(ascii_lower)
def _ascii_lower_default(element: ascii_lower, compiler: SQLCompiler, **kw: Any) -> str:
    # SQLite's built-in lower() folds ASCII letters only.
    return f"lower({compiler.process(element.clauses, **kw)})"


@compiles(ascii_lower, "postgresql")
def _ascii_lower_pg(element: ascii_lower, compiler: SQLCompiler, **kw: Any) -> str:
    # PostgreSQL's lower() follows the collation's locale (Ä -> ä); under the "C"
    # collation it folds A-Z only, like SQLite. (translate() does the same but took
    # 12 times as long over 780,000 tags.)
    return f'lower({compiler.process(element.clauses, **kw)} COLLATE "C")'


class ascii_ci_equals(FunctionElement[bool]):
    """``ascii_lower(column) = folded``, where folded is already ``fold``-ed text.

    On SQLite it is ``column = folded COLLATE NOCASE``: the NOCASE collation folds the
    letters A-Z only, exactly as ``lower()`` does, but without a function call per
    value (a tag look-up per contact: 31 -> 26 ms for a three-filter count over a
    million contacts).
    """

    type = Boolean()
    name = "ascii_ci_equals"
    inherit_cache = True
    # A comparison: no "= 1" after it where booleans are integers (SQLite).
    _is_implicitly_boolean = True


@compiles(ascii_ci_equals)
def _ascii_ci_equals_default(element: ascii_ci_equals, compiler: SQLCompiler, **kw: Any) -> str:
    column, folded = element.clauses.clauses
    return compiler.process(ascii_lower(column) == folded, **kw)


@compiles(ascii_ci_equals, "sqlite")
def _ascii_ci_equals_sqlite(element: ascii_ci_equals, compiler: SQLCompiler, **kw: Any) -> str:
    column, folded = (compiler.process(c, **kw) for c in element.clauses.clauses)
    return f"({column} = {folded} COLLATE NOCASE)"


class json_text(FunctionElement[str]):
    """The string value under a top-level key of a JSON object column, else NULL.

    Not SQLAlchemy's ``column[key].as_string()``: on SQLite that becomes a JSON path
    (``$."key"``), and SQLite 3.40 compares path labels with the stored text unescaped,
    while the JSON column stores non-ASCII keys as ``\\uXXXX`` escapes, so a key such as
    ``Größe`` (or one holding a quote) never matched. ``json_each`` hands back decoded
    keys. On PostgreSQL a number or boolean would come back as text (``'5'``), on SQLite
    as a number; both now only match string values.
    """

    type = String()
    name = "json_text"
    inherit_cache = True


@compiles(json_text)
def _json_text_default(element: json_text, compiler: SQLCompiler, **kw: Any) -> str:
    raise CompileError(f"attribute filters are not written for {compiler.dialect.name}")


@compiles(json_text, "sqlite")
def _json_text_sqlite(element: json_text, compiler: SQLCompiler, **kw: Any) -> str:
    column, key = (compiler.process(c, **kw) for c in element.clauses.clauses)
    return (
        f"(SELECT _je.value FROM json_each({column}) AS _je"
        f" WHERE _je.key = {key} AND _je.type = 'text')"
    )


@compiles(json_text, "postgresql")
def _json_text_pg(element: json_text, compiler: SQLCompiler, **kw: Any) -> str:
    column, key = (compiler.process(c, **kw) for c in element.clauses.clauses)
    return f"(CASE WHEN json_typeof({column} -> {key}) = 'string' THEN {column} ->> {key} END)"


class rowid_order(FunctionElement[bool]):
    """A condition SQLite must test row by row, walking the table in id order.

    For the keyset pages of ``stream``: left to itself, SQLite answers
    ``promotional = 'granted' AND id > ? ORDER BY id LIMIT n`` from the
    (promotional, country) index, which is not in id order, so every page read and sorted
    all the granted rows again (quadratic: 36 pages of 1,000 took 20 s on 1,000,000
    contacts). The unary ``+`` (documented by SQLite for exactly this) keeps the terms
    out of index selection, so each page is a short walk of the primary key from the
    last id. Other databases get the condition as it is.
    """

    type = Boolean()
    name = "rowid_order"
    inherit_cache = True


@compiles(rowid_order)
def _rowid_order_default(element: rowid_order, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(element.clauses, **kw)


@compiles(rowid_order, "sqlite")
def _rowid_order_sqlite(element: rowid_order, compiler: SQLCompiler, **kw: Any) -> str:
    return f"+({compiler.process(element.clauses, **kw)})"


# --------------------------------------------------------------------- segment


# Control characters, lone surrogates (undecodable command-line bytes) and line breaks:
# PostgreSQL refuses NUL, the drivers refuse surrogates, and none belongs in a filter.
_FORBIDDEN = frozenset({"Cc", "Cs", "Zl", "Zp"})


def _clean(text: Any, what: str) -> str:
    """A filter value: a non-empty string without control characters, trimmed."""
    if not isinstance(text, str):
        raise SegmentError(f"{what} must be text, not {type(text).__name__}")
    text = text.strip()
    if not text:
        raise SegmentError(f"empty {what}")
    for ch in text:
        if unicodedata.category(ch) in _FORBIDDEN:
            raise SegmentError(f"{what} {text!r} contains a control or invalid character")
    return text


def _unique(values: Iterable[str], key: Any = None) -> tuple[str, ...]:
    seen: set[str] = set()
    out: list[str] = []
    for v in values:
        k = key(v) if key else v
        if k not in seen:
            seen.add(k)
            out.append(v)
    return tuple(out)


def _aware_utc(value: Any, what: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise SegmentError(f"{what} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise SegmentError(f"{what} must carry a time zone")
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise SegmentError(f"{what} is out of range: {value.isoformat()}") from None


def _texts(values: Any, what: str) -> list[str]:
    if not isinstance(values, list | tuple):
        raise SegmentError(f"{what} must be a list of text")
    return [_clean(v, what) for v in values]


@dataclass(frozen=True)
class Segment:
    """Who a campaign goes to. Values are checked and normalised on creation."""

    # None: reachable for at least one purpose (counting only).
    purpose: Purpose | None = None
    # Any of; upper-cased.
    countries: tuple[str, ...] = ()
    # Any of; A-Z case-insensitive.
    cities: tuple[str, ...] = ()
    # All of; A-Z case-insensitive.
    tags: tuple[str, ...] = ()
    # All of: custom attribute key == value, exactly.
    attributes: tuple[tuple[str, str], ...] = ()
    # created_at >= signed_up_after (UTC)
    signed_up_after: datetime | None = None
    # created_at < signed_up_before (UTC)
    signed_up_before: datetime | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if self.purpose is not None:
            try:
                set_(self, "purpose", Purpose(self.purpose))
            except ValueError:
                raise SegmentError(
                    f"unknown purpose {self.purpose!r} "
                    f"(expected one of: {', '.join(p.value for p in Purpose)})"
                ) from None
        countries = [c.upper() for c in _texts(self.countries, "country")]
        set_(self, "countries", _unique(countries))
        set_(self, "cities", _unique(_texts(self.cities, "city"), key=fold))
        set_(self, "tags", _unique(_texts(self.tags, "tag"), key=fold))
        attrs: dict[str, str] = {}
        pairs = self.attributes
        if not isinstance(pairs, list | tuple):
            raise SegmentError("attributes must be a list of (name, value) pairs")
        for pair in pairs:
            if not isinstance(pair, list | tuple) or len(pair) != 2:
                raise SegmentError("attributes must be a list of (name, value) pairs")
            name = _clean(pair[0], "attribute name")
            value = _clean(pair[1], f"value of attribute {name!r}")
            if attrs.get(name, value) != value:
                raise SegmentError(
                    f"attribute {name!r} cannot equal both {attrs[name]!r} and {value!r}"
                )
            attrs[name] = value
        set_(self, "attributes", tuple(attrs.items()))
        after = _aware_utc(self.signed_up_after, "signed_up_after")
        before = _aware_utc(self.signed_up_before, "signed_up_before")
        if after is not None and before is not None and after >= before:
            raise SegmentError(
                f"signed_up_after ({after.isoformat()}) must be earlier than "
                f"signed_up_before ({before.isoformat()})"
            )
        set_(self, "signed_up_after", after)
        set_(self, "signed_up_before", before)

    # --- storage (Campaign.segment) ---------------------------------------

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict; only the filters that are set (Segment() is {})."""
        data: dict[str, Any] = {}
        if self.purpose is not None:
            data["purpose"] = self.purpose.value
        for name in ("countries", "cities", "tags"):
            if getattr(self, name):
                data[name] = list(getattr(self, name))
        if self.attributes:
            data["attributes"] = dict(self.attributes)
        for name in ("signed_up_after", "signed_up_before"):
            value = getattr(self, name)
            if value is not None:
                data[name] = value.isoformat()
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Segment:
        """The segment stored by ``to_json``; SegmentError for anything else."""
        if not isinstance(data, Mapping):
            raise SegmentError("a stored segment must be a JSON object")
        unknown = set(data) - _JSON_KEYS
        if unknown:
            names = ", ".join(sorted(repr(k) for k in unknown))
            raise SegmentError(f"unknown segment field(s): {names}")
        attributes = data.get("attributes", {})
        if not isinstance(attributes, Mapping):
            raise SegmentError("attributes must be a JSON object of name: value")
        when: dict[str, datetime | None] = {}
        for name in ("signed_up_after", "signed_up_before"):
            value = data.get(name)
            if value is not None:
                if not isinstance(value, str):
                    raise SegmentError(f"{name} must be an ISO 8601 text")
                try:
                    value = datetime.fromisoformat(value)
                except ValueError:
                    raise SegmentError(f"{name}: not an ISO 8601 time: {value!r}") from None
            when[name] = value
        return cls(
            purpose=data.get("purpose"),
            countries=tuple(_texts(data.get("countries", ()), "country")),
            cities=tuple(_texts(data.get("cities", ()), "city")),
            tags=tuple(_texts(data.get("tags", ()), "tag")),
            attributes=tuple(attributes.items()),
            signed_up_after=when["signed_up_after"],
            signed_up_before=when["signed_up_before"],
        )

    # --- words ---------------------------------------------------------------

    def describe(self) -> str:
        """Plain words, e.g. "promotional consent, country DE or FR, tagged vip"."""
        parts = [f"{self.purpose.value} consent" if self.purpose else "consent for any purpose"]
        if self.countries:
            parts.append(f"country {' or '.join(self.countries)}")
        if self.cities:
            parts.append(f"city {' or '.join(self.cities)}")
        if self.tags:
            parts.append(f"tagged {' and '.join(self.tags)}")
        parts += [f"{name} = {value}" for name, value in self.attributes]
        if self.signed_up_after is not None:
            parts.append(f"signed up on or after {_words_time(self.signed_up_after)}")
        if self.signed_up_before is not None:
            parts.append(f"signed up before {_words_time(self.signed_up_before)}")
        return ", ".join(parts)


_JSON_KEYS = frozenset(
    {
        "purpose",
        "countries",
        "cities",
        "tags",
        "attributes",
        "signed_up_after",
        "signed_up_before",
    }
)


def _words_time(value: datetime) -> str:
    if value.second or value.microsecond:
        return value.isoformat(sep=" ").replace("+00:00", " UTC")
    return value.strftime("%Y-%m-%d %H:%M UTC")


# ---------------------------------------------------------------- CLI filters

_FILTER_HELP = (
    "country=DE,FR, city=Berlin, tag=vip, attr.NAME=VALUE, "
    "signed_up_after=2024-01-01, signed_up_before=2025-01-01T12:00+02:00"
)


def _parse_time(text: str, what: str) -> datetime:
    """ISO 8601 date or time; without an offset it is local time. Returns aware UTC."""
    raw = text.strip()
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise SegmentError(f"{what}: not an ISO 8601 date or time: {text!r}") from None
    try:
        if value.tzinfo is None:
            value = value.astimezone()  # local time, as everywhere on the command line
        return value.astimezone(UTC)
    except (OverflowError, ValueError, OSError):
        raise SegmentError(f"{what}: time out of range: {text!r}") from None


def parse_filters(filters: Sequence[str], purpose: Purpose | None = None) -> Segment:
    """Build a segment from the CLI's repeated ``--segment KEY=VALUE`` options.

    Keys: ``country`` and ``city`` (comma-separated, any of), ``tag`` (comma-separated,
    all of), ``attr.NAME`` (exact value, no splitting), ``signed_up_after`` and
    ``signed_up_before`` (ISO 8601; without an offset, local time). Repeating a key adds
    to it (for the dates: both bounds apply). Raises SegmentError, one line, otherwise.
    """
    countries: list[str] = []
    cities: list[str] = []
    tags: list[str] = []
    attributes: list[tuple[str, str]] = []
    after: datetime | None = None
    before: datetime | None = None
    lists = {"country": countries, "city": cities, "tag": tags}
    for item in filters:
        if not isinstance(item, str):
            raise SegmentError(f"a segment filter must be text, not {type(item).__name__}")
        key, eq, value = item.partition("=")
        key = key.strip()
        lkey = key.lower()
        if not eq:
            raise SegmentError(f"segment filter {item!r} is not KEY=VALUE (e.g. {_FILTER_HELP})")
        if lkey in lists:
            lists[lkey] += [_clean(v, lkey) for v in value.split(",")]
        elif lkey.startswith("attr."):
            name = _clean(key[len("attr.") :], "attribute name")
            attributes.append((name, _clean(value, f"value of attribute {name!r}")))
        elif lkey == "signed_up_after":
            t = _parse_time(value, lkey)
            after = t if after is None else max(after, t)
        elif lkey == "signed_up_before":
            t = _parse_time(value, lkey)
            before = t if before is None else min(before, t)
        else:
            raise SegmentError(f"unknown segment filter {key!r} (expected {_FILTER_HELP})")
    return Segment(
        purpose=purpose,
        countries=tuple(countries),
        cities=tuple(cities),
        tags=tuple(tags),
        attributes=tuple(attributes),
        signed_up_after=after,
        signed_up_before=before,
    )


# --------------------------------------------------------------------- queries


def _consent_clause(purpose: Purpose | None) -> ColumnElement[bool]:
    # Consent granted and not suppressed, in one indexed column (models.ELIGIBLE_SQL).
    return col(Contact.eligible).in_(eligible_values(purpose))


def _tag_clause(tag: str, contact_id: Any) -> ColumnElement[bool]:
    return exists().where(
        col(ContactTag.contact_id) == contact_id, ascii_ci_equals(ContactTag.tag, fold(tag))
    )


def _contact_clause(segment: Segment) -> ColumnElement[bool]:
    """The filters on the contact's own columns but country: cities, attributes, dates."""
    conds: list[ColumnElement[bool]] = []
    if segment.cities:
        conds.append(ascii_lower(Contact.city).in_(_unique(fold(c) for c in segment.cities)))
    for name, value in segment.attributes:
        conds.append(json_text(Contact.attributes, name) == value)
    if segment.signed_up_after is not None:
        conds.append(col(Contact.created_at) >= segment.signed_up_after)
    if segment.signed_up_before is not None:
        conds.append(col(Contact.created_at) < segment.signed_up_before)
    return and_(true(), *conds)


def _filter_clause(segment: Segment) -> ColumnElement[bool]:
    """Every filter but consent and suppression."""
    conds = [_contact_clause(segment)]
    if segment.countries:
        conds.append(col(Contact.country).in_(segment.countries))
    conds += [_tag_clause(tag, col(Contact.id)) for tag in segment.tags]
    return and_(*conds)


def where_clause(segment: Segment) -> ColumnElement[bool]:
    """The whole WHERE for a segment's audience, eligibility included."""
    return and_(_consent_clause(segment.purpose), _filter_clause(segment))


def _count_statement(segment: Segment) -> Any:
    """``SELECT count(*)`` of the segment's audience, shaped for the indexes.

    With a tag, the count starts from that tag's entries in the tag index, which carry
    copies of the contact's ``eligible`` and ``country`` (kept by triggers, migration
    0003): purpose + country + tag is a few ranges of one index and never reads a
    contact (a million contacts: ~30 ms through the contacts, ~1.5 ms this way). The
    index holds each tag once per contact, so nobody is counted twice. Other tags are
    looked up per entry; cities, attributes and dates need the contact row.
    """
    if not segment.tags:
        return select(func.count()).select_from(Contact).where(where_clause(segment))
    first, *others = segment.tags
    tag = ContactTag.__table__.alias("segment_tag")
    conds: list[ColumnElement[bool]] = [
        ascii_ci_equals(tag.c.tag, fold(first)),
        tag.c.eligible.in_(eligible_values(segment.purpose)),
    ]
    if segment.countries:
        conds.append(tag.c.country.in_(segment.countries))
    conds += [_tag_clause(other, tag.c.contact_id) for other in others]
    stmt = select(func.count()).select_from(tag)
    if segment.cities or segment.attributes or segment.signed_up_after or segment.signed_up_before:
        stmt = stmt.join(Contact, col(Contact.id) == tag.c.contact_id)
        conds.append(_contact_clause(segment))
    return stmt.where(*conds)


def count(session: Session, segment: Segment) -> int:
    """How many contacts the segment reaches now.

    On SQLite the answer is remembered per connection for as long as the database
    provably has not changed: ``PRAGMA data_version`` changes whenever another
    connection commits, and the connection's own ``total_changes`` whenever it writes
    (triggers and foreign-key cascades included). A transaction that has written
    anything itself neither uses nor fills the memory (it may yet roll back, which
    leaves both numbers as they are). So any write at all forgets every remembered
    count and a count is never stale; repeated counts on a database nobody is writing
    to (a list of campaigns, a segment being edited) cost a pragma instead of a query.
    PostgreSQL always runs the query.
    """
    stmt = _count_statement(segment)
    if session.autoflush:
        session.flush()  # what session.execute would do first: pending changes count
    conn = session.connection()
    changes = getattr(conn.connection.dbapi_connection, "total_changes", None)
    if (
        conn.dialect.name != "sqlite"
        or changes is None
        or conn.info.get(CHANGES_AT_BEGIN) != changes  # this transaction has written
    ):
        return int(session.execute(stmt).scalar_one())
    version = (conn.exec_driver_sql("PRAGMA data_version").scalar_one(), changes)
    cache = conn.info.get(_COUNTS)
    if cache is None or cache[0] != version:
        cache = conn.info[_COUNTS] = (version, {})
    counts: dict[Segment, int] = cache[1]
    n = counts.get(segment)
    if n is None:
        n = int(session.execute(stmt).scalar_one())
        # The query itself changes nothing, so the version still holds.
        if len(counts) >= _COUNTS_KEPT:
            counts.clear()
        counts[segment] = n
    return n


# Key of the remembered counts in a SQLite connection's info dict, and how many to keep.
_COUNTS = "campaigns.segments.counts"
_COUNTS_KEPT = 256


@dataclass(frozen=True)
class Breakdown:
    """Among the contacts matching the filters: who is in, and why the others are not."""

    eligible: int
    no_consent: int
    # Suppression takes precedence: a suppressed contact without consent counts here.
    suppressed: int

    @property
    def matching(self) -> int:
        return self.eligible + self.no_consent + self.suppressed


def breakdown(session: Session, segment: Segment) -> Breakdown:
    """One query: eligible / left out for lack of consent / left out as suppressed."""
    is_suppressed = col(Contact.suppressed).is_not(None)
    stmt = (
        select(
            func.count(),
            func.coalesce(func.sum(case((is_suppressed, 1), else_=0)), 0),
            func.coalesce(func.sum(case((_consent_clause(segment.purpose), 1), else_=0)), 0),
        )
        .select_from(Contact)
        .where(_filter_clause(segment))
    )
    total, suppressed, eligible = session.execute(stmt).one()
    total, suppressed, eligible = int(total), int(suppressed), int(eligible)
    return Breakdown(
        eligible=eligible, no_consent=total - suppressed - eligible, suppressed=suppressed
    )


@dataclass(frozen=True)
class Recipient:
    contact_id: int
    email: str
    # The ledger event that granted the purpose: the proof of consent.
    consent_event_id: int | None


def stream(engine: Engine, segment: Segment, batch_size: int = 1000) -> Iterator[list[Recipient]]:
    """The audience in batches, in contact id order, each batch read on its own.

    Keyset pagination on Contact.id: nothing is loaded whole and no connection or
    transaction stays open while the caller works on a batch. A contact who becomes
    ineligible between batches is not picked up after that; one who becomes eligible
    is picked up only if their id is still ahead.
    """
    if segment.purpose is None:
        raise SegmentError("a segment needs a purpose to send to")
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    event_id = col(getattr(Contact, f"{segment.purpose.value}_event_id"))
    contact_id = col(Contact.id)
    where = rowid_order(where_clause(segment))
    last: int | None = None
    while True:
        stmt = (
            select(contact_id, col(Contact.email), event_id)
            .where(where, contact_id > last if last is not None else true())
            .order_by(contact_id)
            .limit(batch_size)
        )
        with engine.connect() as conn:
            rows = conn.execute(stmt).all()
        if not rows:
            return
        last = rows[-1][0]
        yield [Recipient(contact_id=r[0], email=r[1], consent_event_id=r[2]) for r in rows]
        if len(rows) < batch_size:
            return
