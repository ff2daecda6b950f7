"""Importing contacts in the UI: the dry run shows bad rows and writes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func
from sqlmodel import select

from campaigns import contacts
from campaigns.db import session_scope
from campaigns.models import Contact
from tests.tui.conftest import Env, settle, wait_until
from tui.screens.confirm import ConfirmScreen
from tui.screens.import_csv import ImportScreen
from tui.widgets.rejected_rows import RejectedRows

pytestmark = pytest.mark.anyio

CSV = (
    "email,name,country,consent_promotional,tags\n"
    "anna@example.com,Anna Meyer,DE,yes,vip\n"
    "not-an-address,Bad Row,DE,yes,\n"
    "ben@example.com,Ben Okafor,FR,maybe,\n"
    "chloe@example.fr,Chloé Silva,FR,no,\n"
)


def _count(env: Env) -> int:
    with session_scope(env.engine) as s:
        return int(s.exec(select(func.count()).select_from(Contact)).one())


def _cells(table: RejectedRows) -> list[tuple[str, str]]:
    return [
        (str(table.get_row_at(i)[0]), str(table.get_row_at(i)[2])) for i in range(table.row_count)
    ]


async def test_dry_run_shows_bad_rows_then_import_on_confirmation(env: Env, tmp_path: Path) -> None:
    path = tmp_path / "people.csv"
    path.write_text(CSV, encoding="utf-8")
    app = env.app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("i")
        screen = app.screen
        assert isinstance(screen, ImportScreen)
        screen.query_one("#path").value = str(path)  # type: ignore[attr-defined]
        await pilot.press("enter")
        await wait_until(pilot, lambda: screen.checked is not None, what="the dry run")
        status = str(screen.query_one("#import-status").render())
        assert "Dry run, nothing written" in status and "2 rejected" in status
        rejected = screen.query_one(RejectedRows)
        assert rejected.display
        lines = _cells(rejected)
        assert [line for line, _ in lines] == ["3", "4"]
        assert "not-an-address" in lines[0][1] and "maybe" in lines[1][1]
        assert _count(env) == 0  # a dry run writes nothing

        await pilot.press("ctrl+s")
        confirm = app.screen
        assert isinstance(confirm, ConfirmScreen)
        assert "2 new" in str(confirm.query_one("#question").render())
        await pilot.press("y")
        await wait_until(pilot, lambda: not screen.busy and screen.checked is None, what="import")
        await settle(pilot)
        assert "Imported: 2 new" in str(screen.query_one("#import-status").render())

    assert _count(env) == 2
    with session_scope(env.engine) as s:
        assert contacts.get(s, "anna@example.com").promotional == "granted"


async def test_a_file_with_card_numbers_is_refused_whole(env: Env, tmp_path: Path) -> None:
    path = tmp_path / "cards.csv"
    path.write_text("email,credit_card\nanna@example.com,4111 1111 1111 1111\n", encoding="utf-8")
    app = env.app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("i")
        screen = app.screen
        assert isinstance(screen, ImportScreen)
        screen.query_one("#path").value = str(path)  # type: ignore[attr-defined]
        await pilot.press("enter")
        await wait_until(pilot, lambda: not screen.busy, what="the check")
        await settle(pilot)
        status = str(screen.query_one("#import-status").render())
        assert status.startswith("Refused") and "credit_card" in status
        # Nothing to import after a refusal.
        await pilot.press("ctrl+s")
        assert app.screen is screen
    assert _count(env) == 0
