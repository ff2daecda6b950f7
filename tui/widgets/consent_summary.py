"""How many contacts may get each kind of mail: the dashboard's top panel."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from campaigns.reports import ConsentOverview

COLUMNS = (
    ("contacts", "contacts", "bold"),
    ("promotional", "promotions", "bold green"),
    ("research", "surveys", "bold green"),
    ("third_party", "third-party", "bold green"),
    ("suppressed", "suppressed", "bold red"),
)


class ConsentSummary(Static):
    """Numbers over labels; the border title says what they count."""

    DEFAULT_CSS = """
    ConsentSummary {
        height: auto;
        border: round $primary 60%;
        border-title-color: $text-muted;
        padding: 0 1;
    }
    """

    overview: ConsentOverview | None = None

    def on_mount(self) -> None:
        self.border_title = "Contacts · who may get what"
        self.update(Text("loading…", style="dim"))

    def show(self, overview: ConsentOverview) -> None:
        self.overview = overview
        grid = Table.grid(expand=True)
        for _ in COLUMNS:
            grid.add_column(justify="center", ratio=1)
        grid.add_row(*(Text(f"{getattr(overview, f):,}", style=s) for f, _, s in COLUMNS))
        grid.add_row(*(Text(label, style="dim") for _, label, _ in COLUMNS))
        self.update(grid)
