"""The report of a send that held a receiving domain back (issue 14): it says so, and
"Release held" (l) lets the held messages go with the next send."""

from __future__ import annotations

from collections import Counter

import pytest
from sqlmodel import select

from campaigns.db import session_scope
from campaigns.models import Campaign, Delivery
from campaigns.purposes import Purpose
from tests.tui.conftest import Env, add_campaign, add_contact, notifications, settle, wait_until
from tui.screens.report import ReportScreen

pytestmark = pytest.mark.anyio


def _statuses(env: Env) -> Counter[str]:
    with session_scope(env.engine) as s:
        return Counter(s.exec(select(Delivery.status)).all())


async def test_held_messages_show_in_the_report_and_are_released_from_it(env: Env) -> None:
    ids = [
        add_contact(env.engine, f"p{i}@blocked.example", f"P {i}", Purpose.PROMOTIONAL)
        for i in range(3)
    ]
    campaign_id = add_campaign(env.engine, "Spring")
    with session_scope(env.engine) as s:
        c = s.get(Campaign, campaign_id)
        assert c is not None
        c.status = "sending"
        s.add(c)
        for i, contact_id in enumerate(ids):
            status = "failed" if i == 0 else "held"
            s.add(Delivery(campaign_id=campaign_id, contact_id=contact_id, status=status))
    app = env.app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await app.push_screen(ReportScreen("Spring"))
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, ReportScreen) and screen.report is not None
        assert screen.report.counts.held == 2
        assert "2 held back" in str(screen.query_one("#report-counts").render())
        assert screen.check_action("campaign", ("release_held",)) is True
        await pilot.press("l")
        await wait_until(pilot, lambda: _statuses(env)["held"] == 0, what="the release")
        assert _statuses(env) == Counter({"failed": 1, "pending": 2})
        await settle(pilot)
        assert any("2 held messages" in n for n in notifications(pilot))
        await pilot.press("r")  # refresh: nothing held any more, the action leaves
        await settle(pilot)
        assert screen.check_action("campaign", ("release_held",)) is False
