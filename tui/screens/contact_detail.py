"""One contact: everything held about them, with the full consent history.

From here an operator records a change that came by letter, phone or email, or erases
the contact after a confirmation saying what is kept: a keyed hash of the address on
the suppression list, so that no later import brings them back.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import Footer, Header, Static

from tui.screens.base import Background, BaseScreen
from tui.screens.confirm import ConfirmScreen
from tui.screens.consent_change import ConsentChangeScreen
from tui.widgets.consent_history import ConsentHistory

STATE_WORDS = {"granted": "granted", "withdrawn": "withdrawn", "none": "not given"}
STATE_STYLE = {"granted": "bold green", "withdrawn": "bold red", "none": "dim"}
PURPOSES = (("promotional", "promotions"), ("research", "surveys"), ("third_party", "third-party"))

ERASE_QUESTION = (
    "Erase {email}? Everything held about this person goes: name, address, tags, "
    "attributes and the consent history. Only a keyed hash of the address is kept, on "
    "the suppression list, so that no later import can bring them back into mailings. "
    "Past campaigns keep their counts, without the person. This cannot be undone."
)


def erase_contact(screen: Background, email: str, then: Callable[[], object]) -> None:
    """Ask, then erase; `then` runs after the erasure (the caller refreshes or leaves)."""
    app = screen.app  # type: ignore[attr-defined]

    def answered(yes: bool | None) -> None:
        if not yes:
            return

        def erased(existed: bool) -> None:
            app.notify(
                f"{email} is erased; only the suppression hash is kept"
                if existed
                else f"{email} was not held; the address is on the suppression list now",
                title="Erased",
            )
            then()

        screen.in_background(lambda: screen.services.erase(email), erased, what="erase")

    app.push_screen(
        ConfirmScreen("Erase contact", ERASE_QUESTION.format(email=email), yes="Erase"), answered
    )


class ContactDetailScreen(BaseScreen):
    BINDINGS = [
        Binding("g", "consent", "Consent change"),
        Binding("d", "erase", "Erase"),
        Binding("escape", "app.pop_screen", "Back"),
    ]

    def __init__(self, email: str) -> None:
        super().__init__()
        self.email = email

    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical(id="contact"):
            yield Static("Loading…", id="contact-about")
            yield ConsentHistory(self.services.local_time, id="history")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = self.email
        self.query_one(
            ConsentHistory
        ).border_title = "Consent history, oldest first (+ granted, − withdrawn)"
        self.query_one(ConsentHistory).focus()
        self.load()

    def load(self) -> None:
        email = self.email
        self.in_background(
            lambda: self.services.profile(email),
            self._show,
            what="load the contact",
            group="load",
            exclusive=True,
        )

    def _show(self, p: dict[str, Any]) -> None:
        about = self.query_one("#contact-about", Static)
        about.border_title = Text(p["email"])  # a Text: never read as markup
        t = Text()
        t.append(p["name"] or "(no name)", style="bold")
        place = ", ".join(x for x in (p["city"], p["country"]) if x)
        if place:
            t.append(f" · {place}")
        signed_up = self.services.local_time(datetime.fromisoformat(p["signed_up"]))
        t.append(f" · signed up {signed_up}\n", style="dim")
        postal = ", ".join(x for x in (p["address"], p["postcode"], p["town"]) if x)
        if postal:
            t.append(f"Address: {postal}\n")
        extras = list(p["tags"]) + [f"{k}={v}" for k, v in sorted(p["attributes"].items())]
        if extras:
            t.append(f"Tags and attributes: {', '.join(extras)}\n")
        t.append("Consent: ")
        for i, (key, label) in enumerate(PURPOSES):
            if i:
                t.append(" · ")
            t.append(f"{label} ")
            state = p["consent"][key]["state"]
            t.append(STATE_WORDS.get(state, state), style=STATE_STYLE.get(state, ""))
        t.append("\nSuppressed: ")
        if p["suppressed"]:
            t.append(p["suppressed"], style="bold red")
            t.append(" (nothing is sent, whatever the consent)")
        else:
            t.append("no")
        if p["messages"]:
            sent = [f"{m['campaign']} ({m['status']})" for m in p["messages"]]
            t.append(f"\nMessages: {', '.join(sent)}")
        about.update(t)
        self.query_one(ConsentHistory).show(p["consent_history"])

    def action_consent(self) -> None:
        self.app.push_screen(ConsentChangeScreen(self.email), lambda _: self.load())

    def action_erase(self) -> None:
        erase_contact(self, self.email, then=self.app.pop_screen)
