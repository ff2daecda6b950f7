"""Contacts: search by address or name, filter by consent and country."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.timer import Timer
from textual.widgets import DataTable, Footer, Header, Input, Label, Select, Static

from campaigns.contacts import ContactRow
from campaigns.purposes import Purpose
from tui.screens.base import BaseScreen
from tui.screens.consent_change import ConsentChangeScreen
from tui.screens.contact_detail import ContactDetailScreen, erase_contact
from tui.widgets.contact_table import ContactTable

LIMIT = 200
DEBOUNCE_SECONDS = 0.25
CONSENT_FILTER = [
    ("any consent", "any"),
    ("promotions", Purpose.PROMOTIONAL.value),
    ("surveys", Purpose.RESEARCH.value),
    ("third-party", Purpose.THIRD_PARTY.value),
]


class ContactsScreen(BaseScreen):
    BINDINGS = [
        Binding("slash", "search", "Search", key_display="/"),
        Binding("g", "consent", "Consent change"),
        Binding("d", "erase", "Erase"),
        Binding("escape", "back", "Back"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self._timer: Timer | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="contact-filters"):
            yield Input(placeholder="search email or name", compact=True, id="search")
            yield Select(CONSENT_FILTER, value="any", allow_blank=False, compact=True, id="purpose")
            yield Label("Country", classes="inline-label")
            yield Input(placeholder="any", compact=True, max_length=100, id="country")
        yield ContactTable(id="contacts")
        yield Static("", id="contacts-status", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = "Contacts"
        self.query_one("#search", Input).focus()

    def on_screen_resume(self) -> None:
        # Also on first showing, and back from a contact that was changed or erased.
        self.search()

    @on(Input.Changed)
    @on(Select.Changed)
    def filters_changed(self) -> None:
        if self._timer is not None:
            self._timer.stop()
        self._timer = self.set_timer(DEBOUNCE_SECONDS, self.search)

    @on(Input.Submitted)
    def to_results(self) -> None:
        self.query_one(ContactTable).focus()

    def search(self) -> None:
        text = self.query_one("#search", Input).value
        country = self.query_one("#country", Input).value
        chosen = self.query_one("#purpose", Select).value
        purpose = Purpose(chosen) if isinstance(chosen, str) and chosen != "any" else None
        self.in_background(
            lambda: self.services.search_contacts(text, purpose, country, LIMIT + 1),
            self._show,
            what="search contacts",
            group="search",
            exclusive=True,
        )

    def _show(self, rows: list[ContactRow]) -> None:
        more = len(rows) > LIMIT
        self.query_one(ContactTable).show(rows[:LIMIT])
        status = self.query_one("#contacts-status", Static)
        if more:
            status.update(f"The first {LIMIT} matches; type more to narrow the search.")
        else:
            status.update(f"{len(rows)} {'match' if len(rows) == 1 else 'matches'}")

    def action_search(self) -> None:
        self.query_one("#search", Input).focus()

    def _selected(self) -> str | None:
        email = self.query_one(ContactTable).selected
        if email is None:
            self.notify("No contact is selected.", severity="warning")
        return email

    @on(DataTable.RowSelected, "#contacts")
    def open_contact(self) -> None:
        email = self._selected()
        if email is not None:
            self.app.push_screen(ContactDetailScreen(email))

    def action_consent(self) -> None:
        email = self._selected()
        if email is not None:
            self.app.push_screen(ConsentChangeScreen(email), lambda _: self.search())

    def action_erase(self) -> None:
        email = self._selected()
        if email is not None:
            erase_contact(self, email, then=self.search)

    def action_back(self) -> None:
        if not isinstance(self.focused, ContactTable) and self.query_one(ContactTable).row_count:
            self.query_one(ContactTable).focus()
        else:
            self.app.pop_screen()
