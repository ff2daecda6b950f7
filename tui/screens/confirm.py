"""A yes/no question before anything that cannot be undone (send, cancel, erase, quit)."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, Label, Static

from tui.screens.base import BaseModal


class ConfirmScreen(BaseModal[bool]):
    """Dismissed with True only by the yes button or its key; "Back" has the focus."""

    BINDINGS = [
        Binding("escape", "answer(False)", "Back"),
        Binding("y", "answer(True)", "Yes", show=False),
        Binding("n", "answer(False)", "No", show=False),
    ]

    def __init__(self, title: str, question: str, *, yes: str = "Yes", no: str = "Back") -> None:
        super().__init__()
        self._title = title
        self._question = question
        self._yes = yes
        self._no = no

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            # Questions quote names and addresses: never read them as markup.
            yield Label(self._title, classes="dialog-title", markup=False)
            yield Static(self._question, id="question", markup=False)
            with Horizontal(classes="buttons"):
                yield Button(f"{self._yes} (y)", id="yes", variant="error", compact=True)
                yield Button(f"{self._no} (esc)", id="no", compact=True)

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)

    @on(Button.Pressed)
    def pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")
