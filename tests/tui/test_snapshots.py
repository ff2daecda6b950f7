"""Snapshots of the main screens at 80×24 and 120×40, from fixed data.

Fixed data (tests/tui/conftest.py `build_fixed_data`): fixed times and ids, times shown in
UTC, a frozen clock, no refresh timer. Regenerate after a deliberate change with
`pytest tests/tui/test_snapshots.py --snapshot-update` and look at the SVGs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot

from tests.tui.conftest import settle, snapshot_env
from tui.screens.audience import AudienceScreen
from tui.screens.compose import ComposeScreen
from tui.screens.contact_detail import ContactDetailScreen
from tui.screens.report import ReportScreen

SIZES = [pytest.param((80, 24), id="80x24"), pytest.param((120, 40), id="120x40")]


async def _ready(pilot: Pilot[Any]) -> None:
    await settle(pilot)
    # A blinking cursor would be on or off depending on timing: keep it on.
    for widget in pilot.app.screen.query("Input, TextArea"):
        widget.cursor_blink = False  # type: ignore[attr-defined]
    await pilot.pause()


def _opening(screen_factory: Any, pause: float = 0.0) -> Any:
    async def run_before(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        await pilot.app.push_screen(screen_factory())
        if pause:
            await pilot.pause(pause)  # the audience count waits for typing to stop
        await _ready(pilot)

    return run_before


@pytest.mark.parametrize("size", SIZES)
def test_dashboard(snap_compare: Any, tmp_path: Path, size: tuple[int, int]) -> None:
    app = snapshot_env(tmp_path).app()
    assert snap_compare(app, terminal_size=size, run_before=_ready)


@pytest.mark.parametrize("size", SIZES)
def test_compose_survey(snap_compare: Any, tmp_path: Path, size: tuple[int, int]) -> None:
    app = snapshot_env(tmp_path).app()
    run_before = _opening(lambda: ComposeScreen("Customer survey"))
    assert snap_compare(app, terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES)
def test_audience(snap_compare: Any, tmp_path: Path, size: tuple[int, int]) -> None:
    app = snapshot_env(tmp_path).app()
    run_before = _opening(lambda: AudienceScreen("Spring sale"), pause=0.4)
    assert snap_compare(app, terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES)
def test_contact_detail(snap_compare: Any, tmp_path: Path, size: tuple[int, int]) -> None:
    app = snapshot_env(tmp_path).app()
    run_before = _opening(lambda: ContactDetailScreen("anna.meyer@example.de"))
    assert snap_compare(app, terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES)
def test_report(snap_compare: Any, tmp_path: Path, size: tuple[int, int]) -> None:
    app = snapshot_env(tmp_path).app()
    run_before = _opening(lambda: ReportScreen("Winter sale"))
    assert snap_compare(app, terminal_size=size, run_before=run_before)
