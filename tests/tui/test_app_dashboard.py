"""The dashboard, the audience editor, help, the palette, and errors as notifications."""

from __future__ import annotations

import pytest

from campaigns import campaign
from campaigns.db import session_scope
from campaigns.purposes import Kind, Purpose
from tests.tui.conftest import (
    Env,
    add_campaign,
    add_contact,
    notifications,
    settle,
    type_into,
    wait_until,
)
from tui.screens.audience import AudienceScreen
from tui.screens.dashboard import DashboardScreen
from tui.screens.help import HelpScreen
from tui.screens.report import ReportScreen
from tui.widgets.campaign_table import CampaignTable
from tui.widgets.consent_summary import ConsentSummary

pytestmark = pytest.mark.anyio


def _world(env: Env) -> None:
    P, R, T = Purpose.PROMOTIONAL, Purpose.RESEARCH, Purpose.THIRD_PARTY
    add_contact(env.engine, "anna@example.com", "Anna", P, R, tags=("vip",))
    add_contact(env.engine, "ben@example.com", "Ben", P, country="FR")
    add_contact(env.engine, "chloe@example.fr", "Chloé", P, T, country="FR", tags=("vip",))
    add_contact(env.engine, "dmitri@example.nl", "Dmitri", R, country="NL")
    add_campaign(env.engine, "Spring sale")
    add_campaign(env.engine, "Survey", Kind.SURVEY)


async def test_dashboard_shows_campaigns_and_consent_and_follows_changes(env: Env) -> None:
    _world(env)
    app = env.app(refresh_seconds=0.2)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        summary = app.screen.query_one(ConsentSummary)
        overview = app.services.overview()
        assert (overview.consent.contacts, overview.consent.promotional) == (4, 3)
        assert (overview.consent.research, overview.consent.third_party) == (2, 1)
        assert summary.overview == overview.consent
        table = app.screen.query_one(CampaignTable)
        assert table.row_count == 2 and table.selected == "Spring sale"
        # A campaign made elsewhere (another terminal, cron's send) shows up by itself.
        add_campaign(env.engine, "Made elsewhere")
        await wait_until(pilot, lambda: table.row_count == 3, what="the periodic refresh")

        await pilot.press("enter")
        await settle(pilot)
        assert isinstance(app.screen, ReportScreen) and app.screen.campaign == "Spring sale"
        await pilot.press("escape")
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert isinstance(app.screen, DashboardScreen)


async def test_audience_count_follows_typing_and_is_saved(env: Env) -> None:
    _world(env)
    app = env.app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("a")
        screen = app.screen
        assert isinstance(screen, AudienceScreen)
        await settle(pilot)
        count = screen.query_one("#audience-count")
        assert str(count.render()).startswith("3 eligible")
        await type_into(pilot, "#countries", "fr")
        await wait_until(
            pilot, lambda: str(count.render()).startswith("2 eligible"), what="the count"
        )
        await type_into(pilot, "#tags", "VIP")
        await wait_until(
            pilot, lambda: str(count.render()).startswith("1 eligible"), what="the count"
        )
        text = str(count.render())
        assert "1 eligible, of 1 matching" in text
        assert "country FR, tagged VIP" in text
        # A filter that cannot be used is said so, in words.
        await type_into(pilot, "#attributes", "x")
        await pilot.pause(0.4)
        assert "'x' is not name=value" in str(screen.query_one("#audience-error").render())
        await pilot.press("backspace")
        await pilot.press("ctrl+s")
        await settle(pilot)
        assert isinstance(app.screen, DashboardScreen)
    with session_scope(env.engine) as s:
        assert campaign.get(s, "Spring sale").segment == {"countries": ["FR"], "tags": ["VIP"]}


async def test_the_command_palette_offers_campaign_actions(env: Env) -> None:
    _world(env)
    app = env.app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("ctrl+p")
        await pilot.press(*"rep surv")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await settle(pilot)
        assert isinstance(app.screen, ReportScreen) and app.screen.campaign == "Survey"


async def test_errors_are_notifications_not_crashes(env: Env) -> None:
    _world(env)
    with session_scope(env.engine) as s:
        campaign.cancel(s, "Spring sale")
    app = env.app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        # Actions on a campaign that vanished meanwhile, or that cannot apply.
        app.open_report("No such campaign")
        await settle(pilot)
        app.send("Spring sale")
        await settle(pilot)
        app.schedule("Spring sale")
        await pilot.press("enter")
        await settle(pilot)
        said = "\n".join(notifications(pilot))
        assert "no campaign named 'No such campaign'" in said
        assert "cancelled; it cannot be sent" in said
        assert "cannot be scheduled" in said
        assert app.is_running


async def test_brackets_in_names_are_text_not_markup(env: Env) -> None:
    add_contact(env.engine, "anna@example.com", "Anna [test]", Purpose.PROMOTIONAL)
    add_campaign(env.engine, "Sale [50% off] [/b]")
    app = env.app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        table = app.screen.query_one(CampaignTable)
        assert str(table.get_row_at(0)[0]).startswith("Sale [50% off] [/")
        await pilot.press("enter")
        await settle(pilot)
        assert isinstance(app.screen, ReportScreen) and app.screen.report is not None
        await pilot.press("x")  # the question quotes the name
        await pilot.press("escape")
        await settle(pilot)
        assert app.is_running
