"""Progress of a send: a live bar and counts while the send runs in a worker thread.

The app owns the send (see CampaignsApp._send_job) and forwards the engine's progress
here, so leaving this screen never stops it. The engine reports after each group
commit, so the numbers are what the database holds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import Footer, Header, ProgressBar, Static

from tui.screens.base import BaseScreen
from tui.screens.report import ReportScreen
from tui.widgets.send_counts import SendCounts

if TYPE_CHECKING:
    from mailer.engine import RunReport


def report_values(report: RunReport) -> dict[str, int]:
    return {
        "sent": report.sent,
        "failed": report.failed,
        "skipped": report.skipped,
        "in_doubt": report.in_doubt,
        "retrying": report.retrying,
    }


class ProgressScreen(BaseScreen):
    BINDINGS = [
        Binding("enter", "report", "Report"),
        Binding("p", "pause_campaign", "Pause"),
        Binding("x", "cancel_campaign", "Cancel campaign"),
        Binding("escape", "app.pop_screen", "Back"),
    ]

    def __init__(self, campaign: str, count: int | None, latest: RunReport | None = None) -> None:
        super().__init__()
        self.campaign = campaign
        self.count = count
        self.done = False
        # Progress so far, when this screen re-opens on a send already running.
        self._latest = latest
        self._finished: tuple[RunReport | None, str] | None = None
        # Messages may arrive before the widgets exist; they are shown on mount.
        self._ready = False

    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical(id="progress-box"):
            yield Static(f"Sending {self.campaign!r}", id="progress-title", markup=False)
            yield ProgressBar(total=self.count or None, show_eta=False, id="progress-bar")
            yield SendCounts(id="progress-counts")
            yield Static(
                "The send runs in the background: go back (esc) and it keeps going.",
                id="progress-status",
                markup=False,
            )
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = f"Sending {self.campaign}"
        self._ready = True
        self.query_one(SendCounts).show(
            {"sent": 0, "failed": 0, "skipped": 0, "in_doubt": 0, "retrying": 0}
        )
        if self._latest is not None:
            self.show_progress(self._latest)
        if self._finished is not None:
            self.show_finished(*self._finished)

    def show_progress(self, report: RunReport) -> None:
        self._latest = report
        if not self._ready:
            return  # shown on mount
        bar = self.query_one(ProgressBar)
        done = report.sent + report.failed + report.skipped + report.in_doubt
        bar.update(total=max(report.total, done) or None, progress=done)
        self.query_one(SendCounts).show(report_values(report))

    def show_finished(self, report: RunReport | None, error: str) -> None:
        self.done = True
        self._finished = (report, error)
        if not self._ready:
            return  # shown on mount
        status = self.query_one("#progress-status", Static)
        if report is None:
            status.update(f"Not sent: {error}")
            status.add_class("error")
            return
        self.show_progress(report)
        if report.finished:
            # A resumed send counts only this run's messages: the campaign is whole now.
            bar = self.query_one(ProgressBar)
            bar.update(progress=bar.total or 0)
            self.query_one("#progress-title", Static).update(f"Sent {self.campaign!r}")
            status.update("Done. Press enter for the report.")
        else:
            if report.stopped == "campaign paused":
                status.update("Paused. Send now (s on the dashboard) goes on with the rest.")
            else:
                status.update(
                    f"Stopped before the end: {report.stopped or 'some deliveries are still open'}."
                    " `campaigns send-due` (cron) carries on with the rest."
                )

    def action_report(self) -> None:
        self.app.switch_screen(ReportScreen(self.campaign))

    def action_pause_campaign(self) -> None:
        self.app.pause_campaign(self.campaign)  # type: ignore[attr-defined]

    def action_cancel_campaign(self) -> None:
        self.app.cancel_campaign(self.campaign)  # type: ignore[attr-defined]
