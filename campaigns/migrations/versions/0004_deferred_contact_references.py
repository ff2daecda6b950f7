"""consent events and tags check their contact at commit

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27

The references from ``consent_events`` and ``contact_tags`` to ``contacts`` become
DEFERRABLE INITIALLY DEFERRED: a row that points at no contact still makes its
transaction fail, at COMMIT instead of at the statement. Deleting a contact still
deletes its events and tags at once (a referential action is never deferred).

Why: on SQLite an immediate foreign key makes every statement that writes several rows
keep a statement journal (a copy of each page it touches, to undo that statement alone).
The importer writes consent events and tags many rows to a statement inside a larger
transaction that it rolls back whole on any error, so that copy was pure cost: about 7 GB
written for 1,000,000 contacts, a fifth of the import's time.

SQLite cannot alter a constraint: both tables are rebuilt (same columns, rows, ids,
indexes, triggers and views). Rows of a contact deleted while foreign keys were off (by
hand in the sqlite3 shell, where they are off by default) go, as deleting the contact
would have taken them: the new table would refuse them at COMMIT and the upgrade could
not go through. PostgreSQL alters the constraints in place (it never held such rows).
"""

from __future__ import annotations

import re

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_TABLES = ("consent_events", "contact_tags")
_IMMEDIATE = "REFERENCES contacts (id) ON DELETE CASCADE"
_DEFERRED = f"{_IMMEDIATE} DEFERRABLE INITIALLY DEFERRED"


def _pg_set(deferred: bool) -> None:
    bind = op.get_bind()
    mode = "DEFERRABLE INITIALLY DEFERRED" if deferred else "NOT DEFERRABLE"
    for table in _TABLES:
        for fk in sa.inspect(bind).get_foreign_keys(table):
            if fk["referred_table"] == "contacts":
                op.execute(f'ALTER TABLE {table} ALTER CONSTRAINT "{fk["name"]}" {mode}')


def _sqlite_rebuild(old: str, new: str) -> None:
    """Rebuild each table with ``old`` replaced by ``new`` in its definition.

    The documented way (sqlite.org/lang_altertable.html, "other kinds of table schema
    changes"): a copy under a new name, then drop and rename. Triggers and views go
    first and come back last: renaming checks every one of them, and the trigger on
    ``contacts`` (or an operator's view) names a table that is missing for a moment.
    AUTOINCREMENT's high-water mark (ids are never reused) is carried over.
    """
    bind = op.get_bind()

    def scalar(sql: str, **params: object) -> object:
        return bind.execute(sa.text(sql), params).scalar()

    dependents = bind.execute(
        sa.text(
            "SELECT type, name, sql FROM sqlite_master WHERE type IN ('trigger', 'view')"
            " ORDER BY rowid"
        )
    ).all()
    for kind, name, _sql in reversed(dependents):
        op.execute(f'DROP {kind.upper()} "{name}"')
    for table in _TABLES:
        definition = str(
            scalar("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = :t", t=table)
        )
        if old not in definition:
            raise RuntimeError(f"unexpected definition of {table}: {definition}")
        indexes = list(
            bind.execute(
                sa.text(
                    "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = :t"
                    " AND sql IS NOT NULL"
                ),
                {"t": table},
            ).scalars()
        )
        seq = scalar("SELECT seq FROM sqlite_sequence WHERE name = :t", t=table)
        temporary = f"{table}__0004"
        # (SQLite quotes the name of a table it has renamed.)
        head = re.match(rf'CREATE TABLE\s+"?{table}"?\s*\(', definition)
        if head is None:
            raise RuntimeError(f"unexpected definition of {table}: {definition}")
        op.execute(f"CREATE TABLE {temporary} (" + definition[head.end() :].replace(old, new))
        op.execute(f"DELETE FROM {table} WHERE contact_id NOT IN (SELECT id FROM contacts)")
        op.execute(f"INSERT INTO {temporary} SELECT * FROM {table}")
        op.execute(f"DROP TABLE {table}")
        op.execute(f"ALTER TABLE {temporary} RENAME TO {table}")
        for index in indexes:
            op.execute(index)
        if seq is not None:
            op.execute(
                sa.text("UPDATE sqlite_sequence SET seq = max(seq, :s) WHERE name = :t").bindparams(
                    s=seq, t=table
                )
            )
    for _kind, _name, sql in dependents:
        op.execute(sql)


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _pg_set(deferred=True)
    else:
        _sqlite_rebuild(_IMMEDIATE, _DEFERRED)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _pg_set(deferred=False)
    else:
        _sqlite_rebuild(_DEFERRED, _IMMEDIATE)
