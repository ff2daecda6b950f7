"""One engine per process, made from CAMPAIGNS_DATABASE_URL; schema checks and migrations.

SQLite runs in WAL mode with foreign keys on and a busy timeout, so cron's `send-due`,
the web page and the UI can share one file. PostgreSQL is used as given.
"""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError
from sqlmodel import Session

from campaigns.models import AppMeta

# The newest migration in campaigns/migrations/versions; a test keeps them in step.
SCHEMA_HEAD = "0005"
MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Generated columns (schema 0003) need SQLite 3.31.
SQLITE_MIN = (3, 31, 0)


class DatabaseError(Exception):
    """The database cannot be used; the message is one line for the user."""


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA synchronous=NORMAL")
    # Erased people must not linger in freed pages of the file.
    cur.execute("PRAGMA secure_delete=ON")
    cur.close()


# Key in a SQLite connection's info: its total_changes when the current transaction
# began (segments.count remembers counts only while a transaction has written nothing).
CHANGES_AT_BEGIN = "campaigns.changes_at_begin"


def _sqlite_begin(conn: Any) -> None:
    raw = conn.connection.dbapi_connection
    if raw.in_transaction:
        # A COMMIT that failed (a row naming no contact, checked at COMMIT since schema
        # 0004) leaves SQLite's transaction, and its write lock, open while SQLAlchemy
        # takes it for ended: end it before beginning anew.
        raw.rollback()
    conn.exec_driver_sql("BEGIN IMMEDIATE")
    conn.info[CHANGES_AT_BEGIN] = raw.total_changes


def make_engine(url: str, create_folder: bool = True) -> Engine:
    """Build the engine. The SQLite file's folder is created when needed if
    `create_folder`; else a missing folder is an error (a mistyped URL given by the user
    must not quietly start an empty database somewhere new)."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise DatabaseError(f"bad database URL: {url!r}") from exc
    kwargs: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        if sqlite3.sqlite_version_info < SQLITE_MIN:
            raise DatabaseError(
                f"SQLite {'.'.join(map(str, SQLITE_MIN[:2]))} or newer is needed; "
                f"this Python has {sqlite3.sqlite_version}"
            )
        if parsed.database and parsed.database != ":memory:":
            folder = Path(parsed.database).expanduser().parent
            if create_folder:
                folder.mkdir(parents=True, exist_ok=True)
            elif not folder.is_dir():
                raise DatabaseError(f"the SQLite database's folder does not exist: {folder}")
        kwargs["connect_args"] = {"timeout": 30}
    else:
        kwargs["pool_pre_ping"] = True
    try:
        engine = create_engine(parsed, **kwargs)
    except (NoSuchModuleError, ImportError) as exc:
        raise DatabaseError(f"unsupported database URL: {parsed.drivername}") from exc
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
        # pysqlite's own transaction handling defers BEGIN; issue it ourselves so that
        # a transaction really is one (and writers take the lock up front).
        event.listen(engine, "connect", lambda c, _r: setattr(c, "isolation_level", None))
        event.listen(engine, "begin", _sqlite_begin)
    return engine


def current_revision(engine: Engine) -> str | None:
    """The schema revision stamped in the database, or None for an empty database."""
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table("alembic_version"):
                return None
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except OperationalError as exc:
        raise DatabaseError(f"cannot open the database: {exc.orig}") from exc


def upgrade(engine: Engine) -> tuple[str | None, str]:
    """Apply migrations up to the newest; returns (revision before, revision after)."""
    from alembic import command  # imported here: only `db upgrade` and first use pay for it
    from alembic.config import Config

    before = current_revision(engine)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    _ensure_meta(engine)
    return before, SCHEMA_HEAD


def ensure_schema(engine: Engine) -> None:
    """Create a fresh database; refuse an old one until `campaigns db upgrade` has run."""
    rev = current_revision(engine)
    if rev is None:
        with engine.connect() as conn:
            tables = inspect(conn).get_table_names()
        if tables:
            raise DatabaseError(
                "the database has tables but no schema version; is it a campaigns database?"
            )
        upgrade(engine)
    elif rev != SCHEMA_HEAD:
        raise DatabaseError(
            f"the database schema is at {rev}, this version needs {SCHEMA_HEAD}: "
            "run `campaigns db upgrade`"
        )


def _ensure_meta(engine: Engine) -> None:
    # The suppression hash key belongs to the data, not to a machine: it lives in the
    # database so that every worker and every restored copy hashes alike, and it is
    # never the token-signing key, so rotating those keys never un-suppresses anyone.
    with Session(engine) as session:
        if session.get(AppMeta, "suppression_key") is None:
            session.add(AppMeta(key="suppression_key", value=secrets.token_hex(32)))
            session.commit()


def meta_value(session: Session, key: str) -> str:
    row = session.get(AppMeta, key)
    if row is None:
        raise DatabaseError(f"database is missing {key}; run `campaigns db upgrade`")
    return row.value


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session whose work is committed on success and rolled back on error."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
