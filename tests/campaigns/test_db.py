"""Schema creation and migrations against real databases."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect, text
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, SQLModel

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


def _is_pg_tag_index(diff: tuple[object, ...]) -> bool:
    # On PostgreSQL the tag index is on lower(tag COLLATE "C"), an expression the model
    # cannot state for SQLite too; autogenerate reports it as remove + add.
    index = diff[1]
    return diff[0] in ("remove_index", "add_index") and (
        getattr(index, "name", None) == "ix_contact_tags_segment"
    )


def test_migrations_match_the_models(db_url: str) -> None:
    engine = make_engine(db_url)
    upgrade(engine)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": False})
        diffs = compare_metadata(ctx, SQLModel.metadata)
        if conn.dialect.name == "postgresql":
            diffs = [d for d in diffs if not _is_pg_tag_index(d)]
            indexdef = conn.execute(
                text(
                    "SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_contact_tags_segment'"
                    " AND schemaname = current_schema()"
                )
            ).scalar_one()
            assert "UNIQUE" in indexdef and 'lower(((tag)::text COLLATE "C"))' in indexdef
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


def _engine_at(db_url: str, revision: str) -> Engine:
    """An engine on a database migrated up to ``revision`` only."""
    from alembic import command
    from alembic.config import Config

    engine = make_engine(db_url)
    cfg = Config()
    cfg.set_main_option("script_location", str(dbmod.MIGRATIONS_DIR))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    return engine


def test_upgrade_from_the_first_release_keeps_everything(db_url: str) -> None:
    """A database made by schema 0001 (the first release) upgrades without loss."""
    engine = _engine_at(db_url, "0001")
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


def test_upgrade_to_segment_keys_fills_the_copies_and_merges_tags(db_url: str) -> None:
    """0002 → 0003: the tags get their contact's keys; "VIP" and "vip" become one tag."""
    from campaigns import segments
    from campaigns.segments import Segment

    engine = _engine_at(db_url, "0002")
    people = [
        # email, country, promotional, research, suppressed, tags
        ("a@x.de", "DE", "granted", "none", None, ["VIP", "vip", "news"]),
        ("b@x.de", "DE", "granted", "granted", "hard_bounce", ["vip"]),
        ("c@x.de", "AT", "withdrawn", "granted", None, ["Vip"]),
    ]
    with engine.begin() as conn:
        for i, (email, country, promo, research, suppressed, tags) in enumerate(people, 1):
            conn.execute(
                text(
                    "INSERT INTO contacts (id, email, email_key, name, address, postcode, town,"
                    " city, country, attributes, created_at, updated_at, promotional, research,"
                    " third_party, suppressed) VALUES (:id, :e, :e, '', '', '', '', '', :c,"
                    " '{}', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, :p, :r, 'none', :s)"
                ),
                {"id": i, "e": email, "c": country, "p": promo, "r": research, "s": suppressed},
            )
            for tag in tags:
                conn.execute(
                    text("INSERT INTO contact_tags (contact_id, tag) VALUES (:i, :t)"),
                    {"i": i, "t": tag},
                )
    assert upgrade(engine) == ("0002", SCHEMA_HEAD)
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT contact_id, tag, eligible, country FROM contact_tags"
                " ORDER BY contact_id, tag"
            )
        ).all()
    assert [tuple(r) for r in rows] == [
        (1, "VIP", 1, "DE"),  # the spelling that sorts first stays
        (1, "news", 1, "DE"),
        (2, "vip", 0, "DE"),  # suppressed: eligible for nothing
        (3, "Vip", 2, "AT"),
    ]
    with Session(engine) as s:
        assert segments.count(s, Segment(purpose="promotional", tags=("vip",))) == 1
        assert segments.count(s, Segment(purpose="research", tags=("VIP",))) == 1
        assert segments.count(s, Segment(tags=("vip",), countries=("de",))) == 1
    # The triggers work on the upgraded database.
    with engine.begin() as conn:
        conn.execute(text("UPDATE contacts SET country = 'CH', suppressed = NULL WHERE id = 2"))
    with Session(engine) as s:
        assert segments.count(s, Segment(purpose="research", tags=("vip",))) == 2
        assert segments.count(s, Segment(tags=("vip",), countries=("CH",))) == 1
    engine.dispose()


def test_upgrade_to_deferred_references_keeps_rows_ids_and_triggers(db_url: str) -> None:
    """0003 → 0004: events and tags are kept with their ids, erased ids stay unused,
    the segment-key triggers still work, and a row pointing at no contact still fails
    (at COMMIT), while deleting a contact still deletes its rows at once."""
    from campaigns import segments
    from campaigns.segments import Segment

    engine = _engine_at(db_url, "0003")
    with engine.begin() as conn:
        for i, (email, promo) in enumerate([("a@x.de", "granted"), ("b@x.de", "none")], 1):
            conn.execute(
                text(
                    "INSERT INTO contacts (id, email, email_key, name, address, postcode, town,"
                    " city, country, attributes, created_at, updated_at, promotional, research,"
                    " third_party) VALUES (:id, :e, :e, '', '', '', '', '', 'DE', '{}',"
                    " CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, :p, 'none', 'none')"
                ),
                {"id": i, "e": email, "p": promo},
            )
        for contact_id in (1, 1, 2):
            conn.execute(
                text(
                    "INSERT INTO consent_events (contact_id, purpose, granted, occurred_at,"
                    " source, note, policy_version) VALUES (:c, 'promotional', :g,"
                    " CURRENT_TIMESTAMP, 'test', '', 'v1')"
                ),
                {"c": contact_id, "g": True},
            )
        conn.execute(text("DELETE FROM consent_events WHERE id = 3"))  # its id is spent
        conn.execute(text("INSERT INTO contact_tags (contact_id, tag) VALUES (1, 'vip')"))
        conn.execute(text("INSERT INTO contact_tags (contact_id, tag) VALUES (2, 'vip')"))
    assert upgrade(engine) == ("0003", SCHEMA_HEAD)

    def events() -> list[tuple[object, ...]]:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT id, contact_id FROM consent_events ORDER BY id"))
            return [tuple(r) for r in rows]

    assert events() == [(1, 1), (2, 1)]
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO consent_events (contact_id, purpose, granted, occurred_at, source,"
                " note, policy_version) VALUES (2, 'research', true, CURRENT_TIMESTAMP, 't', '',"
                " 'v1')"
            )
        )
    assert events()[-1] == (4, 2)  # 3 is never given again
    with Session(engine) as s:
        assert segments.count(s, Segment(purpose="promotional", tags=("vip",))) == 1
    with engine.begin() as conn:  # the triggers: a consent change reaches the tags
        conn.execute(text("UPDATE contacts SET promotional = 'granted' WHERE id = 2"))
        conn.execute(text("INSERT INTO contact_tags (contact_id, tag) VALUES (2, 'news')"))
    with Session(engine) as s:
        assert segments.count(s, Segment(purpose="promotional", tags=("vip",))) == 2
        assert segments.count(s, Segment(purpose="promotional", tags=("news",))) == 1

    for table, values in [
        ("contact_tags (contact_id, tag)", "(99, 'vip')"),
        (
            "consent_events (contact_id, purpose, granted, occurred_at, source, note,"
            " policy_version)",
            "(99, 'research', true, CURRENT_TIMESTAMP, 't', '', 'v1')",
        ),
    ]:
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(text(f"INSERT INTO {table} VALUES {values}"))  # checked at COMMIT
    assert len(events()) == 3

    with engine.begin() as conn:
        conn.execute(text("DELETE FROM contacts WHERE id = 1"))
        # Within the same transaction, the contact's rows are already gone.
        left = conn.execute(
            text(
                "SELECT (SELECT count(*) FROM consent_events WHERE contact_id = 1)"
                " + (SELECT count(*) FROM contact_tags WHERE contact_id = 1)"
            )
        ).scalar()
        assert left == 0
    engine.dispose()


def test_upgrade_to_deferred_references_with_orphans_and_a_view(tmp_path) -> None:
    """SQLite rebuilds two tables for 0004: rows left by a contact deleted by hand with
    foreign keys off (the sqlite3 shell's default) go, and an operator's view survives."""
    import sqlite3

    path = tmp_path / "old.db"
    engine = _engine_at(f"sqlite:///{path}", "0003")
    with engine.begin() as conn:
        for i in (1, 2):
            conn.execute(
                text(
                    "INSERT INTO contacts (id, email, email_key, name, address, postcode, town,"
                    " city, country, attributes, created_at, updated_at, promotional, research,"
                    " third_party) VALUES (:id, :e, :e, '', '', '', '', '', 'DE', '{}',"
                    " CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, 'granted', 'none', 'none')"
                ),
                {"id": i, "e": f"{i}@x.de"},
            )
            conn.execute(
                text(
                    "INSERT INTO consent_events (contact_id, purpose, granted, occurred_at,"
                    " source, note, policy_version) VALUES (:c, 'promotional', 1,"
                    " CURRENT_TIMESTAMP, 'test', '', 'v1')"
                ),
                {"c": i},
            )
            conn.execute(
                text("INSERT INTO contact_tags (contact_id, tag) VALUES (:c, 'vip')"), {"c": i}
            )
        conn.execute(
            text(
                "CREATE VIEW tag_counts AS SELECT tag, count(*) AS n FROM contact_tags GROUP BY tag"
            )
        )
    engine.dispose()
    shell = sqlite3.connect(path)  # foreign keys off, as in the sqlite3 shell
    shell.execute("DELETE FROM contacts WHERE id = 2")
    shell.commit()
    shell.close()

    assert upgrade(engine) == ("0003", SCHEMA_HEAD)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT contact_id FROM consent_events")).scalars().all() == [1]
        assert conn.execute(text("SELECT tag, n FROM tag_counts")).all() == [("vip", 1)]
        assert conn.exec_driver_sql("PRAGMA foreign_key_check").all() == []
    engine.dispose()


def test_an_old_sqlite_is_refused_in_one_line(tmp_path, monkeypatch) -> None:
    import sqlite3

    import pytest

    from campaigns.db import DatabaseError

    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 30, 1))
    monkeypatch.setattr(sqlite3, "sqlite_version", "3.30.1")
    with pytest.raises(
        DatabaseError, match=r"^SQLite 3\.31 or newer is needed; this Python has 3\.30\.1$"
    ):
        make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    assert not (tmp_path / "x.db").exists()


def test_upgrade_to_return_reasons_keeps_the_events_and_reclassify_reads_them(
    db_url: str,
) -> None:
    """0004 → 0005: return events gain a reason, its group, a domain, the server's words
    and the detector, all "" for the rows from before; the lift ledger is new."""
    engine = _engine_at(db_url, "0004")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO return_events (message_hash, kind, address_hash, status,"
                " occurred_at, campaign_id, delivery_id) VALUES ('m', 'hard_bounce', 'h',"
                " '5.7.1', CURRENT_TIMESTAMP, 7, NULL)"
            )
        )
    assert upgrade(engine) == ("0004", SCHEMA_HEAD)
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT kind, status, reason, reason_group, domain, diagnostic, detector"
                " FROM return_events"
            )
        ).one()
        assert tuple(row) == ("hard_bounce", "5.7.1", "", "", "", "", "")
        assert conn.execute(text("SELECT count(*) FROM suppression_changes")).scalar() == 0
    engine.dispose()
