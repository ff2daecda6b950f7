"""End to end through the UI against a real SQLite file and a real SMTP server (aiosmtpd):
compose → preview → test send arrives → send → progress reaches done → the report's counts
match what the server received."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from sqlmodel import select

from campaigns import campaign
from campaigns.db import session_scope
from campaigns.models import Campaign
from campaigns.purposes import Purpose
from mailer.engine import RunReport
from tests.tui.conftest import (
    Env,
    add_campaign,
    add_contact,
    notifications,
    settle,
    type_into,
    wait_until,
)
from tui.screens.compose import ComposeScreen
from tui.screens.confirm import ConfirmScreen
from tui.screens.dashboard import DashboardScreen
from tui.screens.preview import PreviewScreen
from tui.screens.progress import ProgressScreen
from tui.screens.report import ReportScreen
from tui.screens.schedule import ScheduleScreen
from tui.screens.send_test import SendTestScreen

pytestmark = pytest.mark.anyio


def _people(env: Env) -> None:
    P, R = Purpose.PROMOTIONAL, Purpose.RESEARCH
    add_contact(env.engine, "anna@example.com", "Anna Meyer", P, R)
    add_contact(env.engine, "ben@example.com", "Ben Okafor", P)
    add_contact(env.engine, "chloe@example.fr", "Chloé Silva", P, country="FR")
    add_contact(env.engine, "dmitri@example.nl", "Dmitri Novak", R, country="NL")


async def test_compose_preview_test_send_send_and_report(smtp_env: Env) -> None:
    _people(smtp_env)
    smtp = smtp_env.smtp
    assert smtp is not None
    app = smtp_env.app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("n")
        assert isinstance(app.screen, ComposeScreen)
        await type_into(pilot, "#name", "Spring sale")
        await type_into(pilot, "#subject", "Hi {{ first_name }}")
        # The body is long: pasted rather than typed.
        app.screen.query_one("#body").text = "Hello {{ name }},\n\nOur **spring sale** starts."  # type: ignore[attr-defined]
        await pilot.press("ctrl+s")
        await settle(pilot)
        # Saved, and opened on its report screen: the place its actions start from.
        assert isinstance(app.screen, ReportScreen), notifications(pilot)
        with session_scope(smtp_env.engine) as s:
            saved = campaign.get(s, "Spring sale")
            assert saved.kind == "promotional" and saved.status == "draft"
            assert "spring sale" in saved.body

        await pilot.press("p")
        await settle(pilot)
        preview = app.screen
        assert isinstance(preview, PreviewScreen) and preview.result is not None
        assert preview.result.problem == ""
        headers = dict(preview.result.headers)
        assert headers["Subject"] == "Hi Anna"
        assert headers["List-Unsubscribe"].startswith("<http")
        assert "Hello Anna Meyer," in preview.result.text
        assert "Our **spring sale** starts." in preview.result.text

        await pilot.press("t")
        assert isinstance(app.screen, SendTestScreen)
        await type_into(pilot, "#test-to", "me@example.com")
        await pilot.press("enter")
        await settle(pilot)
        await wait_until(pilot, lambda: len(smtp.messages()) == 1, what="the test message")
        test = smtp.messages()[0]
        assert test.rcpt_tos == ["me@example.com"]
        assert test.subject.startswith("[TEST]")
        assert isinstance(app.screen, PreviewScreen)  # the dialog closed on success

        await pilot.press("escape")
        assert isinstance(app.screen, ReportScreen)
        await pilot.press("s")
        await settle(pilot)
        confirm = app.screen
        assert isinstance(confirm, ConfirmScreen)
        assert (
            str(confirm.query_one("#question").render())
            == "Send 'Spring sale' to 3 people who agreed to promotional email?"
        )
        await pilot.press("y")
        progress = app.screen
        assert isinstance(progress, ProgressScreen)
        await wait_until(pilot, lambda: progress.done, what="the send to end")
        await settle(pilot)
        bar = progress.query_one("#progress-bar")
        assert bar.progress == bar.total == 3  # type: ignore[attr-defined]

        await pilot.press("enter")
        await settle(pilot)
        report = app.screen
        assert isinstance(report, ReportScreen) and report.report is not None
        campaign_mail = [m for m in smtp.messages() if not m.subject.startswith("[TEST]")]
        assert sorted(r for m in campaign_mail for r in m.rcpt_tos) == [
            "anna@example.com",
            "ben@example.com",
            "chloe@example.fr",
        ]
        counts = report.report.counts
        assert report.report.status == "sent"
        assert counts.sent == len(campaign_mail) == 3
        assert counts.failed == counts.skipped == counts.in_doubt == 0
        # The UI never raised: no error notification along the way.
        assert not [n for n in app._notifications if n.severity == "error"]


async def test_a_template_problem_blocks_saving_and_shows_in_the_preview(env: Env) -> None:
    add_contact(env.engine, "anna@example.com", "Anna", Purpose.PROMOTIONAL)
    add_campaign(env.engine, "Broken", body="Hello {{ contact.shoe_size }}")
    app = env.app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("p")
        await settle(pilot)
        preview = app.screen
        assert isinstance(preview, PreviewScreen) and preview.result is not None
        assert "shoe_size" in preview.result.problem
        assert "cannot be sent yet" in str(preview.query_one("#preview-text").border_title)

        # The editor refuses to save it as long as it does not render.
        await pilot.press("e")
        await settle(pilot)
        assert isinstance(app.screen, ComposeScreen)
        await type_into(pilot, "#subject", " again")
        await pilot.press("ctrl+s")
        await settle(pilot)
        assert isinstance(app.screen, ComposeScreen)
        assert "shoe_size" in str(app.screen.query_one("#compose-error").render())
        with session_scope(env.engine) as s:
            assert not campaign.get(s, "Broken").subject.endswith("again")


async def test_kind_fields_are_checked_before_saving(env: Env) -> None:
    app = env.app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("n")
        screen = app.screen
        assert isinstance(screen, ComposeScreen)
        assert not screen.query_one("#row-sponsor").display
        assert not screen.query_one("#row-survey_url").display
        screen.query_one("#kind").value = "survey"  # type: ignore[attr-defined]
        await pilot.pause()
        assert screen.query_one("#row-survey_url").display
        assert not screen.query_one("#row-sponsor").display
        await type_into(pilot, "#name", "Survey")
        await type_into(pilot, "#subject", "Tell us")
        await pilot.press("ctrl+s")
        await settle(pilot)
        assert isinstance(app.screen, ComposeScreen)
        assert "survey URL" in str(screen.query_one("#compose-error").render())
        screen.query_one("#survey_url").value = "https://survey.example.com/1"  # type: ignore[attr-defined]
        await pilot.press("ctrl+s")
        await settle(pilot)
        assert isinstance(app.screen, ReportScreen)
        with session_scope(env.engine) as s:
            assert campaign.get(s, "Survey").survey_url == "https://survey.example.com/1"


async def test_schedule_in_local_time_is_stored_in_utc_and_cancel(env: Env) -> None:
    add_contact(env.engine, "anna@example.com", "Anna", Purpose.PROMOTIONAL)
    add_campaign(env.engine, "Sale")
    app = env.app(tz=ZoneInfo("Europe/Berlin"))
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("w")
        dialog = app.screen
        assert isinstance(dialog, ScheduleScreen)
        dialog.query_one("#when").value = "2026-06-01 09"  # type: ignore[attr-defined]
        await pilot.press("end", ":", "0", "0")
        assert "2026-06-01 07:00 UTC" in str(dialog.query_one("#when-utc").render())
        await pilot.press("enter")
        await settle(pilot)
        assert isinstance(app.screen, DashboardScreen)
        with session_scope(env.engine) as s:
            sale = campaign.get(s, "Sale")
            assert sale.status == "scheduled"
            assert sale.scheduled_at == datetime(2026, 6, 1, 7, 0, tzinfo=UTC)

        await pilot.press("x")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        await settle(pilot)
        with session_scope(env.engine) as s:
            assert s.exec(select(Campaign.status)).one() == "cancelled"


async def test_sending_to_nobody_is_a_warning_not_a_send(env: Env) -> None:
    add_contact(env.engine, "dmitri@example.nl", "Dmitri", Purpose.RESEARCH)
    add_campaign(env.engine, "Sale")
    app = env.app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("s")
        await settle(pilot)
        assert isinstance(app.screen, DashboardScreen)
        assert any("Nobody" in n for n in notifications(pilot))
        with session_scope(env.engine) as s:
            assert campaign.get(s, "Sale").status == "draft"


async def test_progress_is_live_and_the_ui_stays_responsive(env: Env) -> None:
    """The send runs in a thread; its progress arrives as messages while keys still work."""
    add_contact(env.engine, "anna@example.com", "Anna", Purpose.PROMOTIONAL)
    add_campaign(env.engine, "Sale")
    steps = threading.Semaphore(0)

    def slow_send(name: str, progress: Callable[[RunReport], None] | None) -> RunReport:
        report = RunReport(campaign_id=1, name=name, total=3)
        for _ in range(3):
            assert steps.acquire(timeout=10)
            report.sent += 1
            if progress is not None:
                progress(replace(report))
        report.finished = True
        return report

    app = env.app(send_now=slow_send)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("s")
        await settle(pilot)
        await pilot.press("y")
        progress = app.screen
        assert isinstance(progress, ProgressScreen)
        bar = progress.query_one("#progress-bar")
        steps.release()
        await wait_until(pilot, lambda: bar.progress == 1, what="the first progress message")  # type: ignore[attr-defined]
        # Leaving the progress screen does not stop the send; quitting asks first.
        await pilot.press("escape")
        assert isinstance(app.screen, DashboardScreen)
        await pilot.press("q")
        confirm = app.screen
        assert isinstance(confirm, ConfirmScreen)
        assert "'Sale' is still being sent" in str(confirm.query_one("#question").render())
        await pilot.press("escape")
        await pilot.press("s")  # a running send: back to its progress, no second send
        # (not settle(): that would wait for the send, which waits for this test)
        await wait_until(pilot, lambda: isinstance(app.screen, ProgressScreen), what="progress")
        await pilot.pause()
        assert app.screen.query_one("#progress-bar").progress == 1  # type: ignore[attr-defined]
        steps.release()
        steps.release()
        await wait_until(pilot, lambda: not app.sends, what="the send to end")
        await settle(pilot)
        assert app.screen.done  # type: ignore[attr-defined]
        assert any("'Sale' is sent" in n for n in notifications(pilot))


async def test_pause_from_the_progress_screen_then_send_goes_on(smtp_env: Env) -> None:
    """A real send, slowed to 10 messages a second, paused with `p` and sent on later."""
    for i in range(40):
        add_contact(smtp_env.engine, f"p{i}@example.com", f"Person {i}", Purpose.PROMOTIONAL)
    add_campaign(smtp_env.engine, "Sale")
    smtp = smtp_env.smtp
    assert smtp is not None
    slow = replace(smtp_env, settings=replace(smtp_env.settings, send_rate=10))
    app = slow.app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("s")
        await settle(pilot)
        await pilot.press("y")
        await wait_until(pilot, lambda: len(smtp.messages()) >= 2, what="the first messages")
        assert isinstance(app.screen, ProgressScreen)
        await pilot.press("p")
        await wait_until(pilot, lambda: not app.sends, what="the send to stop", timeout=20)
        await settle(pilot)
        assert any("'Sale' is paused" in n for n in notifications(pilot))
        assert "Paused" in str(app.screen.query_one("#progress-status").render())
        stopped_at = len(smtp.messages())
        assert stopped_at < 40
        with session_scope(smtp_env.engine) as s:
            assert campaign.get(s, "Sale").status == "paused"
        await pilot.press("escape")
        await settle(pilot)
        await pilot.press("s")  # on a paused campaign: send the rest
        await settle(pilot)
        assert "is paused. Send the rest now?" in str(app.screen.query_one("#question").render())
        await pilot.press("y")
        await wait_until(pilot, lambda: not app.sends, what="the rest to be sent", timeout=30)
    got = sorted(r for m in smtp.messages() for r in m.rcpt_tos)
    assert got == sorted(f"p{i}@example.com" for i in range(40))
