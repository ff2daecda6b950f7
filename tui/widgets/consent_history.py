"""A contact's consent ledger: every event, oldest first, notes wrapped to fit."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from rich.text import Text
from textual import events
from textual.widgets import DataTable

PURPOSE_LABEL = {"promotional": "promotional", "research": "research", "third_party": "third-party"}
# Every column but the note has a fixed width; the note takes the rest and wraps.
FIXED = (("When", 16), ("Consent", 13), ("Source", 14), ("Policy", 7))


class ConsentHistory(DataTable[Text | str]):
    """When, + granted / − withdrawn purpose, source, policy version and note."""

    def __init__(self, when: Callable[[datetime | None], str], **kwargs: object) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)  # type: ignore[arg-type]
        self._when = when
        self._events: list[dict[str, Any]] = []
        self._width = 0

    def show(self, events: list[dict[str, Any]]) -> None:
        self._events = events
        width = self.size.width or self.app.size.width
        self._width = width
        note_width = max(12, width - sum(w for _, w in FIXED) - 2 * (len(FIXED) + 1) - 4)
        self.clear(columns=True)
        for label, w in FIXED:
            self.add_column(label, width=w, key=label.lower())
        self.add_column("Note", width=note_width, key="note")
        for e in events:
            purpose = PURPOSE_LABEL.get(e["purpose"], e["purpose"])
            change = (
                Text(f"+ {purpose}", style="green")
                if e["granted"]
                else Text(f"− {purpose}", style="red")
            )
            self.add_row(
                self._when(datetime.fromisoformat(e["when"])),
                change,
                # Texts: plain strings would be read as markup.
                Text(e["source"], overflow="fold"),
                Text(e["policy_version"]),
                Text(e["note"] or ""),
                key=str(e["id"]),
                height=None,  # as tall as its wrapped note
            )
        if self.row_count:
            # The newest event is what the operator came to check.
            self.move_cursor(row=self.row_count - 1, animate=False)

    def on_resize(self, event: events.Resize) -> None:
        if self._events and event.size.width != self._width:
            self.show(self._events)
