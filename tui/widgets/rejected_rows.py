"""An import's rejected rows and conflicts: line number and reason."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import DataTable

from campaigns.csv_import import ImportReport


class RejectedRows(DataTable[Text | str]):
    def __init__(self, **kwargs: object) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)  # type: ignore[arg-type]

    def on_mount(self) -> None:
        self.add_column("Line", key="line", width=6)
        self.add_column("What", key="what", width=9)
        self.add_column("Reason", key="reason")

    def show(self, report: ImportReport) -> None:
        self.clear()
        rows = [(r.line, Text("rejected", style="red"), r.reason) for r in report.rejected]
        rows += [
            (c.line, Text("conflict", style="yellow"), f"{c.purpose} left withdrawn: {c.reason}")
            for c in report.conflicts
        ]
        for line, what, reason in sorted(rows, key=lambda r: r[0]):
            # A Text: a plain string would be read as markup (reasons quote cell values).
            self.add_row(Text(str(line), justify="right"), what, Text(reason))
