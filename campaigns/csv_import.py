"""Importing contacts from CSV (DESIGN.md §3 "Contacts CSV", with the consent rules of §2).

Two passes over the file, both streaming:

1. *Inspection*, before anything is written: the header is checked, and the file is
   searched for payment card numbers (a column named like one, or any value of 13-19
   digits that passes the Luhn check). A file that fails is refused whole
   (``ImportRefused``, one line for the user).
2. *Import*, in batches of ``BATCH_ROWS`` rows: rows are checked one by one (a bad row
   is reported with its line number and never stops the good ones), then each batch is
   looked up and written with a handful of bulk statements (SQLite: a batch of mostly
   new people is written first and the addresses found stored are written again as
   existing contacts). PostgreSQL commits each batch; SQLite commits batches in groups
   (``GROUP_ROWS``, ``GROUP_SECONDS``). A row is written whole or not at all.

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

import fcntl
import gc
import json
import os
import pickle
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from itertools import chain, product
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, func, select
from sqlalchemy.exc import IntegrityError, OperationalError

from campaigns.consent import ConsentConflict, next_state

# Re-exported: the report, the refusal and the column names are this module's API.
from campaigns.csv_reading import CONSENT_COLUMNS as CONSENT_COLUMNS
from campaigns.csv_reading import KNOWN_COLUMNS as KNOWN_COLUMNS
from campaigns.csv_reading import MAX_FIELD as MAX_FIELD
from campaigns.csv_reading import MAX_ROW_CHARS as MAX_ROW_CHARS
from campaigns.csv_reading import (
    TEXT_COLUMNS,
    Conflict,
    ImportRefused,
    ImportReport,
    RejectedRow,
    _Batch,
    _inspect,
    _read_batches,
    _Record,
    _RowChecker,
)
from campaigns.csv_reading import _luhn as _luhn
from campaigns.csv_reading import is_card_number as is_card_number
from campaigns.models import AppMeta, ConsentEvent, Contact, ContactTag, Suppression, utcnow
from campaigns.purposes import ELIGIBLE_BIT, ConsentState, Purpose, SuppressionReason
from campaigns.tags import fold

BATCH_ROWS = 10_000
PURPOSES = (Purpose.PROMOTIONAL, Purpose.RESEARCH, Purpose.THIRD_PARTY)
_MAX_SOURCE = ConsentEvent.__table__.c.source.type.length
_MAX_POLICY = ConsentEvent.__table__.c.policy_version.type.length
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
# A tag carries copies of its contact's eligible and country (migration 0003). For a
# new contact the importer knows them; for an existing one it writes NULLs and the
# database fills them in (a trigger), as it does for any tag written without them.
# (Reading them back with INSERT … SELECT cost 2.5 times the plain insert.)
_TAG_INSERT = ("contact_id", "tag", "eligible", "country")
_COUNTRY = TEXT_COLUMNS.index("country")
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


def _new_states() -> dict[tuple[bool | None, ...], tuple[tuple[Any, ...], tuple[Any, ...], int]]:
    """For each (promotional, research, third_party) a file can say about a new
    contact: the state columns of its row, (index of the event id column, purpose)
    for each consent it grants, and its ``eligible`` unless suppressed (models.ELIGIBLE_SQL).
    Only an explicit yes grants; blank and no leave none."""
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
        eligible = sum(ELIGIBLE_BIT[Purpose(purpose)] for _at, purpose in grants)
        table[flags] = (tuple(states), tuple(grants), eligible)
    return table


_NEW_STATES = _new_states()


# Rows per multi-row INSERT: beyond ~100 the statements got no faster.
_ROWS_PER_INSERT = 200
# Bound parameters one statement may take where the driver cannot say: SQLite before
# 3.32 allowed 999.
_DEFAULT_MAX_PARAMETERS = 999


def _max_parameters(conn: Connection) -> int:
    if conn.dialect.name == "postgresql":
        return 65_535  # the protocol's limit
    getlimit = getattr(conn.connection.dbapi_connection, "getlimit", None)
    if conn.dialect.name == "sqlite" and getlimit is not None:
        return int(getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER))
    return _DEFAULT_MAX_PARAMETERS


class _Insert:
    """One table's multi-row INSERT: ``sql(n)`` has n rows of ``width`` values."""

    def __init__(
        self,
        head: str,
        width: int,
        marks: Callable[[int], list[str]],
        max_parameters: int,
        tail: str = "",
    ) -> None:
        self.head, self.width, self.marks, self.tail = head, width, marks, tail
        self.rows = max(1, min(_ROWS_PER_INSERT, max_parameters // width))
        self._sql: dict[int, str] = {}

    def sql(self, n: int) -> str:
        statement = self._sql.get(n)
        if statement is None:
            m = self.marks(n * self.width)
            w = self.width
            values = ", ".join(f"({', '.join(m[i : i + w])})" for i in range(0, len(m), w))
            statement = self._sql[n] = self.head + values + self.tail
        return statement


class _Statements:
    """The batch look-ups and bulk writes as driver-level SQL (executemany).

    Built once per import from the tables' own names and types. SQLAlchemy's per-row
    parameter handling in executemany (and compiling an expanding IN per batch) cost
    more than everything else the import does in Python; here, values that need a
    conversion (timestamps, booleans) go through the columns' own SQLAlchemy bind
    processors once per batch, and attributes are sent as JSON text.
    """

    def __init__(self, conn: Connection) -> None:
        dialect = conn.dialect
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

        max_params = _max_parameters(conn)

        # SQLite writes every batch inside a transaction that is rolled back whole on
        # any error (_write_batches), and OR ROLLBACK tells it so: without it (and with
        # the deferred references of migration 0004) each statement of many rows kept
        # a statement journal, a copy of every page it touched, in case that statement
        # alone had to be undone. 1,000,000 contacts: ~14 GB less written, writer CPU
        # 24 -> 20 s.
        verb = "INSERT OR ROLLBACK" if dialect.name == "sqlite" else "INSERT"

        def insert_sql(table: Any, columns: tuple[str, ...], tail: str = "") -> _Insert:
            names = ", ".join(q.quote(c) for c in columns)
            head = f"{verb} INTO {q.format_table(table)} ({names}) VALUES "
            return _Insert(head, len(columns), marks, max_params, tail)

        self.marks = marks
        self.quote = q.quote
        self.table = q.format_table
        self._lookups: dict[tuple[str, int], str] = {}
        self.insert_contact = insert_sql(_contacts, _CONTACT_INSERT)
        # For a batch written without looking its addresses up first (_write_batch):
        # a row whose address is taken is skipped and counted out.
        self.insert_new_contact = insert_sql(
            _contacts, _CONTACT_INSERT, f" ON CONFLICT ({q.quote('email_key')}) DO NOTHING"
        )
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

    @staticmethod
    def insert(conn: Connection, insert: _Insert, rows: list[Any]) -> int:
        """INSERT rows, many to a statement: the driver's per-statement cost is paid once
        for each ``insert.rows`` rows rather than for each row (SQLite: ~40 % less time
        for the consent events and tags of 1,000,000 contacts). Returns the rows written."""
        k = insert.rows
        whole = len(rows) - len(rows) % k
        flat = chain.from_iterable
        written = 0
        if whole:
            chunks = [tuple(flat(rows[i : i + k])) for i in range(0, whole, k)]
            written += conn.exec_driver_sql(insert.sql(k), chunks).rowcount
        if whole < len(rows):
            rest = tuple(flat(rows[whole:]))
            written += conn.exec_driver_sql(insert.sql(len(rows) - whole), rest).rowcount
        return written

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
    # SQLite: write the next batch without looking its addresses up first (see
    # _write_batch); kept while batches are mostly new contacts.
    optimistic: bool = True


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


def _write_batch(
    conn: Connection, records: list[_Record], ctx: _Context, optimistic: bool = False
) -> _Outcome:
    """Look the batch up and write it; the caller's transaction makes it all or nothing.

    ``optimistic`` (SQLite, which holds its write lock for the whole group): every
    address is taken for new and the contacts are inserted skipping any address already
    stored; the rows skipped are then written again the usual way, as existing contacts.
    Looking 1,000,000 new addresses up first cost ~1.8 s of the writer's ~19 s.
    """
    out = _Outcome()
    sql = ctx.sql
    optimistic = optimistic and not ctx.postgres and not ctx.dry_run
    # Hold the rows on PostgreSQL: a person unsubscribing meanwhile must not be
    # overwritten. (SQLite: BEGIN IMMEDIATE already keeps every other writer out.) No
    # ORDER BY: with one, PostgreSQL walks the whole primary key to avoid a sort.
    lock = " FOR UPDATE" if ctx.postgres and not ctx.dry_run else ""
    if ctx.postgres:
        # The look-ups below go by unique keys. Without fresh statistics (a table the
        # import itself is filling) PostgreSQL may scan the whole table instead, for
        # every batch: measured at 0.8 s per look-up with 100,000 contacts.
        conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
    existing: dict[str, Any] = {}
    if not optimistic:
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
    if optimistic and erased in suppressed.values():
        # Refused only if new: needs the look-up after all (rare).
        return _write_batch(conn, records, ctx)
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
        held_tags = {(cid, fold(tag)) for cid, tag in found}

    now = utcnow()
    when = sql.when(now)
    source, policy = ctx.source, ctx.policy_version
    yes, no = sql.granted[True], sql.granted[False]
    next_id = iter(_allocate(conn, _contacts, n_new, ctx.postgres)).__next__

    new_contacts: list[list[Any]] = []
    updates: list[list[Any]] = []
    events: list[list[Any]] = []
    links: list[tuple[list[Any], int]] = []  # (row, index of its event id): events in order
    tag_rows: list[tuple[int, str, int | None, str | None]] = []
    conflicts: list[tuple[int, Purpose, int | None]] = []

    imported = 0
    for line, email, key, texts, consents, tags, attrs, attrs_text, _hash in records:
        old = existing.get(key)
        if old is None:
            reason = suppressed.get(hashes[key]) if suppressed else None
            if reason == erased:
                continue
            cid = next_id()
            states, grants, eligible = _NEW_STATES[consents]
            row = [cid, email, key, *texts, attrs_text, when, when]
            row += (reason, *states)
            if grants:
                for at, purpose in grants:
                    links.append((row, at))
                    events.append([None, cid, purpose, yes, when, source, "", policy])
            new_contacts.append(row)
            if tags:
                keys = (0 if reason else eligible, texts[_COUNTRY])
                tag_rows += [(cid, t, *keys) for t in tags]
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
            if (cid, fold(tag)) not in held_tags:
                tag_rows.append((cid, tag, None, None))
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
    taken: list[_Record] = []
    if optimistic:
        written = sql.insert(conn, sql.insert_new_contact, new_contacts)
        if written < len(new_contacts):
            # Some addresses are stored already (every record made a row, in order).
            first, last = new_contacts[0][0], new_contacts[-1][0]
            low, high = sql.marks(2)
            stored = conn.exec_driver_sql(
                f"SELECT id FROM {sql.table(_contacts)} WHERE id BETWEEN {low} AND {high}",
                (first, last),
            )
            ours = {cid for (cid,) in stored}
            taken = [r for r, row in zip(records, new_contacts, strict=True) if row[0] not in ours]
            events = [e for e in events if e[1] in ours]
            tag_rows = [t for t in tag_rows if t[0] in ours]
            out.imported -= len(taken)
    elif new_contacts:
        sql.insert(conn, sql.insert_contact, new_contacts)
    if events:
        sql.insert(conn, sql.insert_event, events)
    if tag_rows:
        sql.insert(conn, sql.insert_tag, tag_rows)
    if updates:
        sql.many(conn, sql.update_contact, updates)
    if taken:
        _merge(out, _write_batch(conn, taken, ctx))
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
    if conn.in_transaction():
        # SQLite, in a transaction that groups batches (_write_batches): BEGIN IMMEDIATE
        # took the write lock, so nobody can add an address between look-up and insert.
        out = _write_batch(conn, records, ctx, optimistic=ctx.optimistic)
        # A file of mostly new people goes on being one; a re-import skips the attempt.
        ctx.optimistic = 2 * out.imported >= len(records)
        return out
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


# SQLite, for the import's connection: a page cache of 64 MB (the default is 2 MB) and
# a WAL checkpoint every 64 MB rather than every 4 MB. Restored afterwards. (1,000,000
# rows: 64 MB of cache took ~1 s less writer CPU than 32 MB, 128 MB no less than 64;
# checkpoints every 32 to 256 MB made no clear difference.)
_SQLITE_PRAGMAS = {"cache_size": -65_536, "wal_autocheckpoint": 16_384}


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
            sql=_Statements(conn),
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


class _NoReader(Exception):
    """The second process could not be started, or ended before sending anything."""


_READER = "from campaigns.csv_reading import _reader_main; _reader_main()"


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


# SQLite: batches written in one transaction, up to this many rows or this long. With
# addresses in random order, each commit rewrites most leaf pages of the address index
# into the WAL; committing every 40,000 rows instead of every 10,000 wrote 1,000,000
# contacts ~25 % faster in the writer. Memory does not grow (the batches are not kept;
# SQLite spills pages beyond its cache to the WAL), and the write lock is held for about
# a second at most, so an unsubscribe during an import waits no longer than that.
GROUP_ROWS = 40_000
GROUP_SECONDS = 1.0


def _write_batches(
    conn: Connection,
    batches: Iterator[_Batch],
    ctx: _Context,
    report: ImportReport,
    progress: Callable[[int], None] | None,
) -> None:
    grouped = conn.dialect.name == "sqlite" and not ctx.dry_run
    done = reported = 0
    group_rows, group_start = 0, 0.0
    try:
        for batch, rejected, done in batches:
            report.rejected.extend(rejected)
            if not batch:
                continue
            if grouped and not conn.in_transaction():
                conn.begin()
                group_rows, group_start = 0, time.monotonic()
            _merge(report, _run_batch(conn, batch, ctx))
            group_rows += len(batch)
            if conn.in_transaction() and (
                group_rows >= GROUP_ROWS or time.monotonic() - group_start >= GROUP_SECONDS
            ):
                conn.commit()
            if progress is not None:
                progress(done)
                reported = done
        if conn.in_transaction():
            conn.commit()
    finally:
        if conn.in_transaction():  # an error half-way: nothing of this group is kept
            conn.rollback()
    if progress is not None and (done != reported or not done):
        progress(done)


def _merge(report: ImportReport | _Outcome, out: _Outcome) -> None:
    report.imported += out.imported
    report.updated += out.updated
    report.unchanged += out.unchanged
    report.rejected.extend(out.rejected)
    report.conflicts.extend(out.conflicts)
