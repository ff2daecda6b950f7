"""Sent / failed / skipped / in doubt / retrying, as one line of coloured numbers."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

FIELDS = (
    ("sent", "sent", "green"),
    ("failed", "failed", "red"),
    ("skipped", "skipped", "yellow"),
    ("in_doubt", "in doubt", "magenta"),
    ("retrying", "retrying", "cyan"),
)


class SendCounts(Static):
    DEFAULT_CSS = """
    SendCounts { height: auto; }
    """

    def show(self, values: dict[str, int]) -> None:
        line = Text()
        for key, label, style in FIELDS:
            if key not in values:
                continue
            if line:
                line.append("   ")
            line.append(f"{values[key]:,}", style=f"bold {style}")
            line.append(f" {label}")
        self.update(line)
