"""The dashboard's list of campaigns: kind, status, schedule, audience and progress."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.widgets import DataTable

from campaigns.reports import CampaignRow

STATUS_STYLE = {
    "draft": "dim",
    "scheduled": "cyan",
    "sending": "bold yellow",
    "paused": "yellow",
    "sent": "green",
    "cancelled": "dim strike",
}
KIND_LABEL = {"promotional": "promotion", "survey": "survey", "third_party_offer": "3rd-party"}
WIDE_KIND_LABEL = {"third_party_offer": "third-party"}
# Every column but the name has a fixed width; the name takes what is left, up to NAME_MAX.
FIXED = {"Kind": 9, "Status": 9, "When": 12, "Audience": 8, "Progress": 9}
# On wide terminals: full kind names and the counts behind the progress.
WIDE = {"Kind": 11, "Status": 9, "When": 12, "Audience": 8, "Sent": 7, "Failed": 7, "Progress": 9}
NAME_MAX = 40


def progress_text(row: CampaignRow) -> Text:
    if not row.total:
        return Text("—", style="dim")
    share = row.done / row.total
    bar_width = 4
    filled = round(share * bar_width)
    bar = Text("█" * filled, style="green") + Text("░" * (bar_width - filled), style="dim")
    return bar + Text(f" {share:>4.0%}")


def _number(n: int | None) -> Text:
    return Text(f"{n:,}", justify="right") if n is not None else Text("—", style="dim")


class CampaignTable(DataTable[Text | str]):
    """Rows keyed by campaign name; the cursor stays on its campaign across refreshes."""

    BINDINGS = [Binding("enter", "select_cursor", "Open", key_display="⏎")]

    def __init__(self, when: Callable[[datetime | None], str], **kwargs: object) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)  # type: ignore[arg-type]
        self._when = when
        self._rows: list[CampaignRow] = []
        self._width = 0

    @property
    def selected(self) -> str | None:
        """The name of the campaign under the cursor."""
        if not self.row_count:
            return None
        key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key
        return str(key.value) if key.value is not None else None

    @property
    def selected_status(self) -> str | None:
        name = self.selected
        return next((r.status for r in self._rows if r.name == name), None)

    def show(self, rows: list[CampaignRow]) -> None:
        keep = self.selected
        self._rows = rows
        width = self.size.width or self.app.size.width
        self._width = width
        spare = width - sum(WIDE.values()) - 2 * (len(WIDE) + 1) - 1
        wide = spare >= 24
        columns = WIDE if wide else FIXED
        name_width = max(12, width - sum(columns.values()) - 2 * (len(columns) + 1) - 1)
        name_width = min(name_width, NAME_MAX) if wide else name_width
        self.clear(columns=True)
        self.add_column("Name", width=name_width, key="name")
        for label, w in columns.items():
            self.add_column(label, width=w, key=label.lower())
        for r in rows:
            name = r.name if len(r.name) <= name_width else r.name[: name_width - 1] + "…"
            kind = (WIDE_KIND_LABEL.get(r.kind, r.kind) if wide else None) or KIND_LABEL.get(
                r.kind, r.kind
            )
            cells: list[Text | str] = [
                Text(name),  # a Text: table strings would be read as markup
                kind,
                Text(r.status, style=STATUS_STYLE.get(r.status, "")),
                self._when(r.when) or Text("—", style="dim"),
                _number(r.audience),
            ]
            if wide:
                cells += [_number(r.sent if r.total else None), _number(r.failed or None)]
            cells.append(progress_text(r))
            self.add_row(*cells, key=r.name)
        if keep is not None and keep in {r.name for r in rows}:
            self.move_cursor(row=self.get_row_index(keep), animate=False)

    def on_resize(self, event: events.Resize) -> None:
        # Give the name column the new width.
        if self._rows and event.size.width != self._width:
            self.show(self._rows)
