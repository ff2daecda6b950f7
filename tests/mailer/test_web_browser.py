"""The preference page in a real browser: Debian's chromium, headless, driven by Playwright.

The page is opened from `campaigns serve` on a phone-sized screen, a box is unticked and
the form submitted; the database must show exactly that change. Screenshots are kept in
test-artifacts/ at the repository's root. Skipped, saying why, without chromium or
Playwright (CI installs both: the `chromium` package and the `playwright` wheel, whose
driver is used with the system browser; `playwright install` is never run).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from campaigns.purposes import ConsentState, Purpose
from tests.conftest import Db
from tests.mailer.test_web_server import ledger, running_server, seed_person, state

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = os.environ.get("CAMPAIGNS_TEST_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="the browser test needs the `playwright` package"
)
if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
    pytest.skip(
        f"the browser test needs Debian's chromium at {CHROMIUM} (apt-get install chromium)",
        allow_module_level=True,
    )


def _screenshot(page: Any, name: str) -> None:
    # Written aside then renamed: two test workers may both be writing it.
    ARTIFACTS.mkdir(exist_ok=True)
    target = ARTIFACTS / name
    partial = target.with_name(f".{name}.{os.getpid()}.png")
    page.screenshot(path=str(partial), full_page=True)
    partial.replace(target)


@pytest.mark.slow
def test_untick_a_box_in_a_real_browser(db: Db, tmp_path: Path) -> None:
    cid, kid, token = seed_person(
        db, "browser@example.com", {Purpose.PROMOTIONAL, Purpose.RESEARCH}
    )
    before = ledger(db, cid)
    problems: list[str] = []
    with running_server(db, tmp_path) as server, sync_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),  # a fresh profile for every run
            executable_path=CHROMIUM,
            headless=True,
            args=ARGS,
            viewport={"width": 390, "height": 844},  # a phone
            java_script_enabled=False,  # the page must work without it
        )
        try:
            page = context.new_page()
            # The CSP must not block the page's own style; chromium reports it if it does.
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            response = page.goto(f"{server.base_url}/u/{token}")
            assert response is not None and response.status == 200
            assert page.locator("h1").inner_text() == "Your email preferences"
            # The inline style applied: buttons span the width of a phone (about 120 px
            # wide without it).
            button = page.get_by_role("button", name="Save my choices")
            box = button.bounding_box()
            assert box is not None and box["width"] > 250
            assert page.evaluate("document.documentElement.scrollWidth") <= 390
            research = page.locator('input[name="keep"][value="research"]')
            promotional = page.locator('input[name="keep"][value="promotional"]')
            third_party = page.locator('input[name="keep"][value="third_party"]')
            assert research.is_checked() and promotional.is_checked()
            assert not third_party.is_checked()
            assert ledger(db, cid) == before  # opening the page changed nothing
            _screenshot(page, "unsubscribe-page.png")

            research.uncheck()
            button.click()
            page.wait_for_load_state()
            assert page.locator("h1").inner_text() == "Your choices are saved"
            assert page.context.cookies() == []
            _screenshot(page, "unsubscribe-confirmation.png")
        finally:
            context.close()
    assert not [p for p in problems if "Content Security Policy" in p], problems
    assert ledger(db, cid) == [*before, ("research", False, "unsubscribe-page", kid)]
    assert state(db, cid) == (
        {
            Purpose.PROMOTIONAL: ConsentState.GRANTED,
            Purpose.RESEARCH: ConsentState.WITHDRAWN,
            Purpose.THIRD_PARTY: ConsentState.NONE,
        },
        None,
    )
