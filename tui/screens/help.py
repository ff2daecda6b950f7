"""Every key of every screen."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import Footer, Header, Static

from tui.screens.base import BaseScreen

KEYS: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    (
        "Everywhere",
        (
            ("?", "this help"),
            ("ctrl+p", "command palette: every action, on every campaign"),
            ("escape", "back"),
            ("q", "quit (asks first while a send is running)"),
            ("tab, shift+tab", "next, previous field"),
        ),
    ),
    (
        "Dashboard",
        (
            ("↑ ↓", "choose a campaign"),
            ("enter", "its report: counts, failure reasons, unsubscribes"),
            ("n", "new campaign"),
            ("e", "edit it (drafts and scheduled campaigns)"),
            ("a", "its audience: who it goes to"),
            ("p", "preview it as a chosen contact gets it"),
            ("t", "test send to addresses you type"),
            ("s", "send now (asks first, saying to how many people)"),
            ("w", "schedule: a date and time in your local time"),
            ("x", "cancel it"),
            ("c", "contacts"),
            ("i", "import contacts from a CSV file"),
            ("r", "refresh now (it also refreshes by itself)"),
        ),
    ),
    (
        "Report",
        (("e a p t s w x", "as on the dashboard, for this campaign"), ("r", "refresh now")),
    ),
    (
        "Compose",
        (
            ("ctrl+s", "check and save: the template must render"),
            ("escape", "back (asks first if something changed)"),
        ),
    ),
    (
        "Audience",
        (
            ("", "countries, cities, tags: comma-separated; attributes: name=value, …"),
            ("", "the eligible count follows as you type"),
            ("ctrl+s", "save"),
        ),
    ),
    (
        "Preview",
        (
            ("o", "open the HTML part in your browser"),
            ("c", "render it for another contact"),
            ("t", "test send"),
            ("e", "edit the campaign"),
        ),
    ),
    (
        "Sending",
        (
            ("enter", "the report"),
            ("p", "pause: messages in flight finish, Send now goes on later"),
            ("x", "cancel the campaign (what was sent stays sent)"),
            ("escape", "back: the send keeps going"),
        ),
    ),
    (
        "Contacts",
        (
            ("/", "search by email or name"),
            ("enter", "details and the consent history"),
            ("g", "record a consent change that came by letter, phone or email"),
            ("d", "erase the contact (asks first)"),
        ),
    ),
    (
        "Import",
        (
            ("enter", "check the file: a dry run that writes nothing"),
            ("ctrl+r", "check it again"),
            ("ctrl+s", "import it, after a check (asks first)"),
        ),
    ),
)


def keys_table() -> Group:
    parts: list[Table | Text] = []
    for title, keys in KEYS:
        parts.append(Text(title, style="bold underline"))
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold cyan", min_width=14, no_wrap=True)
        table.add_column()
        for key, what in keys:
            table.add_row(key, what)
        parts.append(table)
        parts.append(Text(""))
    return Group(*parts)


class HelpScreen(BaseScreen):
    BINDINGS = [Binding("escape,q,question_mark", "app.pop_screen", "Back")]

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll(id="help"):
            yield Static(keys_table())
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = "Keys"
        self.query_one("#help").focus()
