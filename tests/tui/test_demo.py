"""`campaigns demo`, what the README's first command opens: seeded once, then the UI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from campaigns.config import load_settings
from campaigns.db import make_engine
from tests.tui.conftest import settle
from tui.app import create_app
from tui.cli import demo_settings
from tui.services import Services
from tui.widgets.campaign_table import CampaignTable
from tui.widgets.consent_summary import ConsentSummary

pytestmark = pytest.mark.anyio

EXE = Path(sys.executable).with_name("campaigns")


def _campaigns(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CAMPAIGNS_")}
    return subprocess.run(
        [str(EXE), *args], capture_output=True, text=True, cwd=cwd, env={**clean, **env}
    )


async def test_demo_is_seeded_once_and_the_app_opens_on_it(tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    first = _campaigns("demo", "--no-ui", "--dir", str(folder), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "seeded a demo database" in first.stderr

    url = f"sqlite:///{folder / 'demo.db'}"

    def promotional() -> int:
        out = _campaigns(
            "contacts", "count", "--purpose", "promotional", "--json",
            cwd=tmp_path, CAMPAIGNS_DATABASE_URL=url,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        return int(json.loads(out.stdout)["count"])

    count = promotional()
    assert 0 < count < 300  # some of the 300 people, never all
    again = _campaigns("demo", "--no-ui", "--dir", str(folder), cwd=tmp_path)
    assert again.returncode == 0 and "seeded" not in again.stderr
    assert promotional() == count

    settings = demo_settings(load_settings(env={}), folder)
    assert settings.smtp_url.startswith("maildir://")  # nothing leaves the machine
    engine = make_engine(settings.effective_database_url)
    try:
        app = create_app(Services.build(settings, engine))
        async with app.run_test(size=(100, 30)) as pilot:
            await settle(pilot)
            table = app.screen.query_one(CampaignTable)
            assert table.row_count == 3  # one campaign of each kind
            summary = app.screen.query_one(ConsentSummary).overview
            assert summary is not None and summary.promotional == count
    finally:
        engine.dispose()
