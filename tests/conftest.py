"""Shared fixtures: real databases (SQLite files, and PostgreSQL when configured).

Set CAMPAIGNS_TEST_POSTGRES_URL (e.g. postgresql+psycopg://root@127.0.0.1:5432/test) to
run every database test against PostgreSQL too; each test gets a schema of its own.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings
from sqlalchemy import Engine, create_engine, text
from sqlmodel import Session

from campaigns.config import Settings
from campaigns.db import make_engine, upgrade

PG_URL = os.environ.get("CAMPAIGNS_TEST_POSTGRES_URL", "")

# The mutation check (`python3 dev.py mutants` sets HYPOTHESIS_PROFILE=mutants) runs the
# tests once per mutant: the same examples every time, so a verdict never depends on
# luck or on examples saved by an earlier mutant, and fewer of them.
MUTANTS_MAX_EXAMPLES = 25
hypothesis_settings.register_profile(
    "mutants",
    derandomize=True,
    database=None,
    max_examples=MUTANTS_MAX_EXAMPLES,
    deadline=None,
)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under the mutants profile, cap the tests that ask for more examples too: they
    would otherwise run their hundreds of examples once per mutant (the check took
    about half an hour with them, against the 20 minutes it is meant to take)."""
    if hypothesis_settings.get_current_profile_name() != "mutants":
        return
    for item in items:
        test = getattr(item, "obj", None)
        own = getattr(test, "_hypothesis_internal_use_settings", None)
        if own is not None and own.max_examples > MUTANTS_MAX_EXAMPLES:
            # hypothesis reads this attribute when the test runs, not when it is defined.
            test._hypothesis_internal_use_settings = hypothesis_settings(  # type: ignore[union-attr]
                own, max_examples=MUTANTS_MAX_EXAMPLES
            )


# Tables emptied between hypothesis examples, children first.
TABLES = (
    "suppression_changes",
    "return_events",
    "deliveries",
    "consent_events",
    "contact_tags",
    "suppressions",
    "contacts",
    "campaigns",
)


@dataclass
class Db:
    """A real, migrated database for one test."""

    engine: Engine
    url: str
    settings: Settings

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    def clean(self) -> None:
        """Empty every table but the metadata (for hypothesis examples)."""
        with self.engine.begin() as conn:
            for table in TABLES:
                conn.execute(text(f"DELETE FROM {table}"))

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name


def _pg_schema_url(schema: str) -> str:
    sep = "&" if "?" in PG_URL else "?"
    return f"{PG_URL}{sep}options=-csearch_path%3D{schema}"


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database URL: a fresh SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'campaigns.db'}"
        return
    if not PG_URL:
        pytest.skip("PostgreSQL tests need CAMPAIGNS_TEST_POSTGRES_URL (set by .ci/run)")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        yield _pg_schema_url(schema)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=db_url,
        secret_key="test-key-1",
        policy_version="2026-01",
        postal_address="Test Shop, 1 Test Street, Testville",
        operator="tester",
    )


@pytest.fixture
def db(settings: Settings) -> Iterator[Db]:
    engine = make_engine(settings.effective_database_url)
    upgrade(engine)
    yield Db(engine=engine, url=settings.effective_database_url, settings=settings)
    engine.dispose()
