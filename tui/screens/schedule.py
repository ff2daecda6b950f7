"""Schedule: a date and time typed in local time, stored in UTC for `send-due`."""

from __future__ import annotations

from datetime import timedelta

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, Input, Label, Static

from campaigns.models import Campaign
from tui.screens.base import BaseModal


class ScheduleScreen(BaseModal[bool]):
    BINDINGS = [Binding("escape", "dismiss(False)", "Back")]

    def __init__(self, campaign: str) -> None:
        super().__init__()
        self.campaign = campaign

    def compose(self) -> ComposeResult:
        services = self.services
        # A sensible first suggestion: tomorrow at nine, local time.
        tomorrow = services.local(services.now()) + timedelta(days=1)
        suggestion = tomorrow.replace(hour=9, minute=0, second=0, microsecond=0)
        with Vertical(classes="dialog"):
            yield Label(f"Schedule: {self.campaign}", classes="dialog-title", markup=False)
            yield Static(
                f"Date and time in {services.zone_name()}; `campaigns send-due` (cron) "
                "sends it then.",
                markup=False,
            )
            yield Input(suggestion.strftime("%Y-%m-%d %H:%M"), id="when")
            yield Static("", id="when-utc", markup=False)
            with Horizontal(classes="buttons"):
                yield Button("Schedule (enter)", id="schedule", variant="primary", compact=True)
                yield Button("Back (esc)", id="back", compact=True)

    def on_mount(self) -> None:
        self.query_one("#when", Input).focus()
        self._explain(self.query_one("#when", Input).value)

    @on(Input.Changed, "#when")
    def changed(self, event: Input.Changed) -> None:
        self._explain(event.value)

    def _explain(self, text: str) -> None:
        note = self.query_one("#when-utc", Static)
        try:
            when = self.services.parse_local(text)
        except ValueError as exc:
            note.update(str(exc))
            return
        note.update(f"= {when:%Y-%m-%d %H:%M} UTC, as stored")

    @on(Input.Submitted, "#when")
    @on(Button.Pressed, "#schedule")
    def schedule(self) -> None:
        try:
            when = self.services.parse_local(self.query_one("#when", Input).value)
        except ValueError as exc:
            self.query_one("#when-utc", Static).update(str(exc))
            return
        name = self.campaign
        self.in_background(
            lambda: self.services.schedule(name, when), self._scheduled, what="schedule it"
        )

    @on(Button.Pressed, "#back")
    def back(self) -> None:
        self.dismiss(False)

    def _scheduled(self, campaign: Campaign) -> None:
        when = self.services.local_time(campaign.scheduled_at)
        self.notify(f"{campaign.name!r} goes out at {when}", title="Scheduled")
        self.dismiss(True)
