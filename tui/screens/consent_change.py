"""Record a consent change that came by letter, phone or email, with a required note."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, Input, Label, RadioButton, RadioSet, Static

from campaigns.purposes import Purpose
from tui.screens.base import BaseModal

PURPOSE_CHOICES = [
    ("promotional email", Purpose.PROMOTIONAL),
    ("market research (surveys)", Purpose.RESEARCH),
    ("third-party offers", Purpose.THIRD_PARTY),
]


class ConsentChangeScreen(BaseModal[bool]):
    BINDINGS = [Binding("escape", "dismiss(False)", "Back")]

    def __init__(self, email: str) -> None:
        super().__init__()
        self.email = email

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(f"Consent change: {self.email}", classes="dialog-title", markup=False)
            with Horizontal(classes="field"):
                yield Label("Purpose", classes="field-label")
                # No default: the operator picks the purpose the request is about.
                with RadioSet(id="purpose", compact=True):
                    for label, purpose in PURPOSE_CHOICES:
                        yield RadioButton(label, id=f"purpose-{purpose.value}")
            with Horizontal(classes="field"):
                yield Label("Change", classes="field-label")
                with RadioSet(id="change", compact=True):
                    yield RadioButton("withdraw", value=True, id="withdraw")
                    yield RadioButton("grant", id="grant")
            with Horizontal(classes="field"):
                yield Label("Note", classes="field-label")
                yield Input(
                    placeholder="how it came, e.g. letter of 3 May", compact=True, id="note"
                )
            yield Static("", id="consent-error", classes="error", markup=False)
            with Horizontal(classes="buttons"):
                yield Button("Record", id="record", variant="primary", compact=True)
                yield Button("Back (esc)", id="back", compact=True)

    def on_mount(self) -> None:
        self.query_one("#purpose", RadioSet).focus()

    @on(Input.Submitted, "#note")
    @on(Button.Pressed, "#record")
    def record(self) -> None:
        error = self.query_one("#consent-error", Static)
        pressed = self.query_one("#purpose", RadioSet).pressed_button
        purpose = Purpose(pressed.id.removeprefix("purpose-")) if pressed and pressed.id else None
        note = self.query_one("#note", Input).value.strip()
        if purpose is None:
            error.update("Choose the purpose the person's request is about.")
            return
        if not note:
            error.update("A note is required: say how the request came (e.g. letter of 3 May).")
            return
        granted = self.query_one("#grant", RadioButton).value
        email = self.email
        self.in_background(
            lambda: self.services.record_consent(email, purpose, granted, note),
            lambda changed: self._recorded(changed, purpose, granted),
            what="record the change",
            failed=lambda text: error.update(text),
        )

    @on(Button.Pressed, "#back")
    def back(self) -> None:
        self.dismiss(False)

    def _recorded(self, changed: bool, purpose: Purpose, granted: bool) -> None:
        verb = "granted" if granted else "withdrawn"
        if changed:
            self.notify(f"{purpose.value} consent {verb} for {self.email}", title="Recorded")
        else:
            self.notify(f"No change: {purpose.value} consent is already {verb}", severity="warning")
        self.dismiss(changed)
