"""Test send: the campaign to addresses typed in, subject marked [TEST], never counted."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, Input, Label, Static

from campaigns import addresses
from tui.screens.base import BaseModal
from tui.services import TestSendResult


def parse_addresses(text: str) -> list[str]:
    """Addresses separated by commas, semicolons or spaces; ValueError for a bad one."""
    found = [a for a in text.replace(";", " ").replace(",", " ").split() if a]
    if not found:
        raise ValueError("type at least one address")
    normal = [addresses.normalise(a) for a in found]
    bad = [a for a in normal if not addresses.is_valid(a)]
    if bad:
        raise ValueError(f"not an email address: {bad[0]}")
    return normal


class SendTestScreen(BaseModal[bool]):
    BINDINGS = [Binding("escape", "dismiss(False)", "Back")]

    def __init__(self, campaign: str) -> None:
        super().__init__()
        self.campaign = campaign

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(f"Test send: {self.campaign}", classes="dialog-title", markup=False)
            yield Static(
                "A copy goes to each address, its subject starting with [TEST]. "
                "Nothing is counted or recorded.",
                markup=False,
            )
            yield Input(placeholder="you@example.com, colleague@example.com", id="test-to")
            yield Static("", id="test-result", classes="error", markup=False)
            with Horizontal(classes="buttons"):
                yield Button("Send test (enter)", id="send", variant="primary", compact=True)
                yield Button("Back (esc)", id="back", compact=True)

    def on_mount(self) -> None:
        self.query_one("#test-to", Input).focus()

    @on(Input.Submitted, "#test-to")
    @on(Button.Pressed, "#send")
    def send(self) -> None:
        result = self.query_one("#test-result", Static)
        try:
            to = parse_addresses(self.query_one("#test-to", Input).value)
        except ValueError as exc:
            result.update(str(exc))
            return
        result.update("Sending…")
        name = self.campaign
        self.in_background(
            lambda: self.services.test_send(self.services.campaign(name), to),
            self._sent,
            what="send the test",
            group="test",
            exclusive=True,
            failed=lambda text: result.update(text),
        )

    @on(Button.Pressed, "#back")
    def back(self) -> None:
        self.dismiss(False)

    def _sent(self, results: list[TestSendResult]) -> None:
        refused = [r for r in results if not r.accepted]
        if refused:
            self.query_one("#test-result", Static).update(
                "; ".join(f"{r.address}: {r.reply}" for r in refused)
            )
            return
        self.notify(", ".join(r.address for r in results), title=f"Test of {self.campaign!r} sent")
        self.dismiss(True)
