"""A campaign's report, and the place its actions start from.

Aggregate counts only (DESIGN.md §1): delivered, failed with grouped reasons, skipped
(consent withdrawn or suppressed before the message went), in doubt, and unsubscribes
that came from this campaign. Never who opened, clicked or refused what.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.widgets import Footer, Header, Label, Static

from campaigns.reports import CampaignReport
from tui.screens.base import BaseScreen, campaign_action_allowed
from tui.widgets.reason_table import ReasonTable

KIND_WORDS = {
    "promotional": "promotional",
    "survey": "survey",
    "third_party_offer": "third-party offer",
}


def _figures(pairs: list[tuple[int, str, str]]) -> Text:
    line = Text()
    for n, label, style in pairs:
        if line:
            line.append("   ")
        line.append(f"{n:,}", style=f"bold {style}")
        line.append(f" {label}")
    return line


class ReportScreen(BaseScreen):
    BINDINGS = [
        Binding("e", "campaign('edit_campaign')", "Edit"),
        Binding("a", "campaign('edit_audience')", "Audience"),
        Binding("p", "campaign('preview')", "Preview"),
        Binding("t", "campaign('test_send')", "Test", show=False),
        Binding("s", "campaign('send')", "Send"),
        Binding("w", "campaign('schedule')", "Schedule", show=False),
        Binding("x", "campaign('cancel_campaign')", "Cancel", show=False),
        Binding("l", "campaign('release_held')", "Release held"),
        Binding("r", "refresh", "Refresh", show=False),
        Binding("escape", "app.pop_screen", "Back"),
    ]

    def __init__(self, campaign: str) -> None:
        super().__init__()
        self.campaign = campaign
        self.report: CampaignReport | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll(id="report"):
            yield Static("Loading…", id="report-about")
            yield Static("", id="report-counts")
            with Vertical(id="report-reasons"):
                yield Label("Failed: why", classes="section-label")
                yield ReasonTable("none failed", id="report-failures")
                yield Label("Skipped: why", classes="section-label")
                yield ReasonTable("none skipped", id="report-skips")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = f"Report: {self.campaign}"
        self.query_one("#report-counts").border_title = "Deliveries"
        self.query_one("#report").focus()
        if self.services.refresh_seconds > 0:
            self.set_interval(self.services.refresh_seconds, self._refresh_if_sending)

    def on_screen_resume(self) -> None:
        # Also on first showing, and back from an edit, a send or a dialog.
        self.action_refresh()

    def _refresh_if_sending(self) -> None:
        if self.report is not None and self.report.status == "sending":
            self.action_refresh()

    def action_refresh(self) -> None:
        name = self.campaign
        self.in_background(
            lambda: self.services.report(name),
            self._show,
            what="load the report",
            group="report",
            exclusive=True,
        )

    def _show(self, r: CampaignReport) -> None:
        self.report = r
        self.campaign = r.name  # renamed in the editor meanwhile
        self.sub_title = f"Report: {r.name}"
        when = self.services.local_time
        about = self.query_one("#report-about", Static)
        about.border_title = Text(r.name)  # a Text: never read as markup
        lines = Text()
        lines.append(KIND_WORDS.get(r.kind, r.kind), style="bold")
        lines.append(f" · {r.status}", style="bold")
        lines.append(f" · subject: {r.subject}\n")
        if r.sponsor:
            lines.append(f"Sent on behalf of {r.sponsor}\n")
        if r.survey_url:
            lines.append(f"Survey: {r.survey_url}\n")
        lines.append(f"Audience: {r.segment}\n")
        times = [f"created {when(r.created_at)}"]
        if r.scheduled_at:
            times.append(f"scheduled for {when(r.scheduled_at)}")
        if r.started_at:
            sent = f"sent {when(r.started_at)}"
            end = when(r.finished_at)
            if end and end != sent[5:]:
                same_day = end[:10] == sent[5:15]
                sent += f"–{end[11:] if same_day else end}"
            times.append(sent)
        lines.append(" · ".join(times), style="dim")
        about.update(lines)
        self.refresh_bindings()

        c = r.counts
        counts = Text()
        started = bool(c.total or c.unsubscribes or c.suppressions or c.hard_bounces)
        self.query_one("#report-reasons").display = started
        if not started:
            if r.audience_now is not None:
                counts.append("Not sent yet: ")
                counts.append(f"{r.audience_now:,}", style="bold green")
                counts.append(" people may get it now.")
            else:
                counts.append(f"Nothing was sent: the campaign is {r.status}.")
            self.query_one("#report-counts", Static).update(counts)
            return
        counts.append(f"{c.total:,} in the audience when the send started\n")
        counts.append_text(
            _figures(
                [
                    (c.sent, "delivered", "green"),
                    (c.failed, "failed", "red"),
                    (c.skipped, "skipped", "yellow"),
                    (c.in_doubt, "in doubt", "magenta"),
                    (c.pending + c.claimed + c.sending, "still to go", "cyan"),
                ]
            )
        )
        counts.append("\n")
        counts.append_text(
            _figures([(c.unsubscribes, "unsubscribed from this campaign", "yellow")])
        )
        counts.append("\n")
        counts.append_text(
            _figures(
                [
                    (c.hard_bounces, "bounced", "red"),
                    (c.soft_bounces, "soft-bounced", "yellow"),
                    (c.complaints, "complained", "red"),
                    (c.suppressions, "suppressed", "red"),
                ]
            )
        )
        if c.blocks or c.held:
            counts.append("\n")
            counts.append_text(
                _figures(
                    [
                        (c.blocks, "refused because of us (nobody suppressed)", "yellow"),
                        (c.held, "held back", "magenta"),
                    ]
                )
            )
        if r.by_group:
            groups = ", ".join(f"{g.replace('_', ' ')} {n:,}" for g, n in r.by_group.items())
            counts.append(f"\nWhat came back, by reason: {groups}")
        if r.blocked_domains:
            top = ", ".join(f"{d} {n:,}" for d, n in r.blocked_domains[:5])
            counts.append(f"\nDomains blocking us: {top}")
            if c.held:
                counts.append(
                    "  (campaigns campaign release NAME sends the held ones)", style="dim"
                )
        self.query_one("#report-counts", Static).update(counts)
        self.query_one("#report-failures", ReasonTable).show(r.failures)
        self.query_one("#report-skips", ReasonTable).show(r.skips)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # Actions that do not apply to this campaign's status leave the footer.
        if action == "campaign" and parameters:
            if parameters[0] == "release_held":  # only while something is held back
                return self.report is not None and self.report.counts.held > 0
            status = self.report.status if self.report is not None else None
            return campaign_action_allowed(str(parameters[0]), status)
        return True

    def action_campaign(self, method: str) -> None:
        getattr(self.app, method)(self.campaign)
