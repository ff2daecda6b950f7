"""The dashboard: every campaign with its progress, and who may get what."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Footer, Header, Static

from tui.screens.base import BaseScreen, campaign_action_allowed
from tui.services import Overview
from tui.widgets.campaign_table import CampaignTable
from tui.widgets.consent_summary import ConsentSummary


class DashboardScreen(BaseScreen):
    BINDINGS = [
        Binding("n", "app.new_campaign", "New"),
        Binding("enter", "open", "Open", key_display="⏎"),
        Binding("e", "campaign('edit_campaign')", "Edit", show=False),
        Binding("a", "campaign('edit_audience')", "Audience", show=False),
        Binding("p", "campaign('preview')", "Preview"),
        Binding("t", "campaign('test_send')", "Test send", show=False),
        Binding("s", "campaign('send')", "Send"),
        Binding("w", "campaign('schedule')", "Schedule", show=False),
        Binding("x", "campaign('cancel_campaign')", "Cancel", show=False),
        Binding("c", "app.contacts", "Contacts"),
        Binding("i", "app.import_contacts", "Import", show=False),
        Binding("r", "refresh", "Refresh", show=False),
    ]

    def compose(self) -> ComposeResult:
        yield Header()
        yield ConsentSummary(id="consent-summary")
        yield CampaignTable(self.services.local_short, id="campaigns")
        yield Static("", id="empty-hint")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(CampaignTable).border_title = "Campaigns"
        if self.services.refresh_seconds > 0:
            # Sends started by cron (or another terminal) show up without a key press.
            self.set_interval(self.services.refresh_seconds, self.action_refresh)

    def on_screen_resume(self) -> None:
        # Also on first showing: whatever changed elsewhere shows on coming back.
        self.action_refresh()

    def action_refresh(self) -> None:
        self.in_background(
            self.services.overview,
            self._show,
            what="load the dashboard",
            group="overview",
            exclusive=True,
        )

    def _show(self, overview: Overview) -> None:
        self.query_one(ConsentSummary).show(overview.consent)
        self.query_one(CampaignTable).show(overview.campaigns)
        hint = self.query_one("#empty-hint", Static)
        hint.display = not overview.campaigns
        hint.update("No campaigns yet: press n to compose one.")

    def action_open(self) -> None:
        self.action_campaign("open_report")

    @on(DataTable.RowSelected, "#campaigns")
    def row_selected(self) -> None:
        self.action_campaign("open_report")

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # Actions that do not apply to the selected campaign's status leave the footer.
        if action == "campaign" and parameters:
            table = self.query_one(CampaignTable)
            return campaign_action_allowed(str(parameters[0]), table.selected_status)
        return True

    @on(DataTable.RowHighlighted, "#campaigns")
    def row_highlighted(self) -> None:
        self.refresh_bindings()

    def action_campaign(self, method: str) -> None:
        name = self.query_one(CampaignTable).selected
        if name is None:
            self.notify("There is no campaign yet: press n to compose one.", severity="warning")
            return
        getattr(self.app, method)(name)
