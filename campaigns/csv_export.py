"""Exporting contacts to CSV (DESIGN.md §3 "Contacts CSV"), in the importer's own format.

The file has exactly the columns `campaigns.csv_import` understands, then one column per
custom attribute, so that export → import gives back the same contacts, consent (as far
as a file can say it: ``yes`` when granted, ``no`` otherwise), tags and attributes.

- Streams: contacts are read in pages by id (keyset pagination), each page in a short
  transaction of its own, so a large export neither holds the data in memory nor keeps
  other writers waiting. The attribute columns are found first (a first pass over the
  keys only); should a contact gain a new attribute while the export runs, the export
  starts again with the new column rather than leave the value out.
- The file is written beside the target and renamed into place when complete: a failed
  export never leaves half a file under the requested name. It is readable by its owner
  only (mode 0600), as it holds personal data.
- CSV injection: a value starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage
  return (or with quotes followed by one of those) gets one more leading ``'``, which
  the importer takes off again.
- Attribute keys that the importer would read as something else are left out: a key
  equal (ignoring case) to one of the standard columns or to an earlier key, or an empty
  one. The importer only ever stores keys that are none of these.
"""

from __future__ import annotations

import csv
import json
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, select, text

from campaigns.csv_import import CONSENT_COLUMNS, KNOWN_COLUMNS, PURPOSES, TEXT_COLUMNS
from campaigns.models import Contact, ContactTag
from campaigns.purposes import ConsentState

PAGE_ROWS = 2_000
COLUMNS = ("email", *TEXT_COLUMNS, *CONSENT_COLUMNS, "tags")
assert set(COLUMNS) == set(KNOWN_COLUMNS)

_contacts = Contact.__table__
_tags = ContactTag.__table__
_PAGE = select(
    _contacts.c.id,
    _contacts.c.email,
    *(_contacts.c[c] for c in TEXT_COLUMNS),
    *(_contacts.c[p.value] for p in PURPOSES),
    _contacts.c.attributes,
).order_by(_contacts.c.id)
# What a spreadsheet would run as a formula, behind any number of quotes (so that a
# value that really starts with a quote survives the importer's unquoting too).
_FORMULA = re.compile(r"'*[=+\-@\t\r]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_ATTEMPTS = 3


def _escape(value: str) -> str:
    return "'" + value if _FORMULA.match(value) else value


def export_contacts(engine: Engine, path: Path) -> int:
    """Write every contact to `path` as CSV (UTF-8); returns how many were written."""
    path = Path(path)
    keys = _attribute_keys(engine)
    for attempt in range(1, _ATTEMPTS + 1):
        count, more = _write(engine, path, keys, final=attempt == _ATTEMPTS)
        if not more:
            return count
        keys = _usable_keys(more, first=keys)
    raise AssertionError("unreachable")


def _usable_keys(keys: Iterable[str], first: Iterable[str] = ()) -> list[str]:
    """Attribute keys that the importer reads back as the same attribute (`first`
    keeps its place when a key of `keys` clashes with one of it), sorted."""
    first = list(first)
    taken = {c.casefold() for c in COLUMNS}
    usable = []
    for key in [*first, *sorted(set(keys) - set(first))]:
        folded = key.strip().casefold()
        if not folded or key != key.strip() or _CONTROL.search(key) or folded in taken:
            continue
        taken.add(folded)
        usable.append(key)
    return sorted(usable)


def _attribute_keys(engine: Engine) -> list[str]:
    """The union of the contacts' attribute keys, without loading the contacts."""
    with engine.connect() as conn:
        name = conn.dialect.name
        if name == "sqlite":
            rows = conn.execute(
                text("SELECT DISTINCT j.key FROM contacts, json_each(contacts.attributes) AS j")
            )
        elif name == "postgresql":
            rows = conn.execute(
                text(
                    "SELECT DISTINCT json_object_keys(attributes) FROM contacts "
                    "WHERE json_typeof(attributes) = 'object'"
                )
            )
        else:
            return _attribute_keys_by_paging(conn)
        keys = [k for (k,) in rows if isinstance(k, str)]
        conn.rollback()
    return _usable_keys(keys)


def _attribute_keys_by_paging(conn: Connection) -> list[str]:
    keys: set[str] = set()
    last = 0
    while True:
        page = conn.execute(
            select(_contacts.c.id, _contacts.c.attributes)
            .where(_contacts.c.id > last)
            .order_by(_contacts.c.id)
            .limit(PAGE_ROWS)
        ).all()
        conn.rollback()
        if not page:
            return _usable_keys(keys)
        for _id, attributes in page:
            keys.update(k for k in (attributes or {}) if isinstance(k, str))
        last = page[-1][0]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        value = json.dumps(value, ensure_ascii=False)
    return _escape(value)


def _write(engine: Engine, path: Path, keys: list[str], *, final: bool) -> tuple[int, set[str]]:
    """One export into a temporary file renamed over `path`. Returns (count, attribute
    keys met that would make new columns); unless `final`, with such keys the file is
    thrown away (the caller starts again with them)."""
    known = set(keys)
    unseen: set[str] = set()
    granted = ConsentState.GRANTED.value
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    count = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            out = csv.writer(f)
            out.writerow([_escape(c) for c in (*COLUMNS, *keys)])
            with engine.connect() as conn:
                last = 0
                while True:
                    page = conn.execute(_PAGE.where(_contacts.c.id > last).limit(PAGE_ROWS)).all()
                    if not page:
                        conn.rollback()
                        break
                    first, last = page[0][0], page[-1][0]
                    tags: dict[int, list[str]] = {}
                    for cid, tag in conn.execute(
                        select(_tags.c.contact_id, _tags.c.tag).where(
                            _tags.c.contact_id.between(first, last)
                        )
                    ):
                        tags.setdefault(cid, []).append(tag)
                    conn.rollback()
                    for row in page:
                        cid, email = row[0], row[1]
                        texts = row[2 : 2 + len(TEXT_COLUMNS)]
                        states = row[2 + len(TEXT_COLUMNS) : 2 + len(TEXT_COLUMNS) + len(PURPOSES)]
                        attributes = row[-1] or {}
                        unseen.update(k for k in attributes if k not in known)
                        out.writerow(
                            [
                                _cell(email),
                                *map(_cell, texts),
                                *("yes" if s == granted else "no" for s in states),
                                _cell(";".join(sorted(tags.get(cid, ())))),
                                *(_cell(attributes.get(k)) for k in keys),
                            ]
                        )
                    count += len(page)
        more = set(_usable_keys(unseen, first=keys)) - known
        if more and not final:
            os.unlink(tmp)
            return count, more
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return count, set()
