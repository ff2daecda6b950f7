"""Grouped reasons with their counts: why messages failed or were skipped, aggregate only."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import DataTable


class ReasonTable(DataTable[Text | str]):
    def __init__(self, empty: str, **kwargs: object) -> None:
        super().__init__(cursor_type="row", show_cursor=False, **kwargs)  # type: ignore[arg-type]
        self._empty = empty

    def on_mount(self) -> None:
        self.add_column("Count", key="count", width=7)
        self.add_column("Reason", key="reason")

    def show(self, reasons: list[tuple[str, int]]) -> None:
        self.clear()
        if not reasons:
            self.add_row("", Text(self._empty, style="dim"))
        for reason, n in reasons:
            # A Text: a plain string would be read as markup (SMTP replies quote <…>, […]).
            self.add_row(Text(f"{n:,}", justify="right"), Text(reason))
        # Fit the height to the rows so several tables stack on one screen.
        self.styles.height = min(len(reasons) or 1, 8) + 1
