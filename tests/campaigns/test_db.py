"""Schema creation and migrations against real databases."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlmodel import SQLModel

from campaigns import db as dbmod
from campaigns.db import SCHEMA_HEAD, current_revision, ensure_schema, make_engine, upgrade


def test_schema_head_is_the_newest_migration() -> None:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(dbmod.MIGRATIONS_DIR))
    assert ScriptDirectory.from_config(cfg).get_current_head() == SCHEMA_HEAD


def test_fresh_database_is_created_and_stamped(db_url: str) -> None:
    engine = make_engine(db_url)
    assert current_revision(engine) is None
    ensure_schema(engine)
    assert current_revision(engine) == SCHEMA_HEAD
    with engine.connect() as conn:
        tables = set(inspect(conn).get_table_names())
        key = conn.execute(text("SELECT value FROM app_meta WHERE key='suppression_key'")).scalar()
    assert {"contacts", "consent_events", "suppressions", "campaigns", "deliveries"} <= tables
    assert key and len(key) == 64
    engine.dispose()


def test_migrations_match_the_models(db_url: str) -> None:
    engine = make_engine(db_url)
    upgrade(engine)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": False})
        diffs = compare_metadata(ctx, SQLModel.metadata)
    assert diffs == []
    engine.dispose()


def test_upgrade_twice_keeps_data_and_the_key(db_url: str) -> None:
    engine = make_engine(db_url)
    upgrade(engine)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO contacts (email, email_key, name, address, postcode, town, "
                "city, country, attributes, created_at, updated_at, promotional, "
                "research, third_party) VALUES ('a@b.de','a@b.de','','','','','','',"
                "'{}', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP,'none','none','none')"
            )
        )
        key = conn.execute(text("SELECT value FROM app_meta WHERE key='suppression_key'")).scalar()
    assert upgrade(engine) == (SCHEMA_HEAD, SCHEMA_HEAD)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM contacts")).scalar() == 1
        again = conn.execute(
            text("SELECT value FROM app_meta WHERE key='suppression_key'")
        ).scalar()
    assert again == key
    engine.dispose()


def test_sqlite_runs_in_wal_mode(tmp_path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    engine.dispose()


def test_upgrade_from_the_first_release_keeps_everything(db_url: str) -> None:
    """A database made by schema 0001 (the first release) upgrades without loss."""
    from alembic import command
    from alembic.config import Config

    engine = make_engine(db_url)
    cfg = Config()
    cfg.set_main_option("script_location", str(dbmod.MIGRATIONS_DIR))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO suppressions (address_hash, reason, source, created_at) "
                "VALUES ('h1', 'hard_bounce', 'bounce', CURRENT_TIMESTAMP)"
            )
        )
    assert current_revision(engine) == "0001"
    assert upgrade(engine) == ("0001", SCHEMA_HEAD)
    with engine.connect() as conn:
        row = conn.execute(text("SELECT reason, delivery_id FROM suppressions")).one()
        assert tuple(row) == ("hard_bounce", None)
        assert "return_events" in inspect(conn).get_table_names()
    engine.dispose()
