"""Contacts found by a search: address, name, country, consent per purpose, suppression."""

from __future__ import annotations

from rich.text import Text
from textual import events
from textual.widgets import DataTable

from campaigns.contacts import ContactRow

# granted / withdrawn by the person / never granted
MARK = {
    "granted": Text("yes", style="green"),
    "withdrawn": Text("no", style="red"),
    "none": Text("·", style="dim"),
}
# Narrow columns have fixed widths; address and name share what is left.
FIXED = (("Ctry", "country", 4), ("Promo", "promotional", 5), ("Surv.", "research", 5))
FIXED += (("3rd-p", "third_party", 5), ("Supp.", "suppressed", 5))


def consent_mark(state: str) -> Text:
    return MARK.get(state, Text(state))


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


class ContactTable(DataTable[Text | str]):
    """Rows keyed by email address."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)  # type: ignore[arg-type]
        self._rows: list[ContactRow] = []
        self._width = 0

    @property
    def selected(self) -> str | None:
        if not self.row_count:
            return None
        key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key
        return str(key.value) if key.value is not None else None

    def show(self, rows: list[ContactRow]) -> None:
        keep = self.selected
        self._rows = rows
        width = self.size.width or self.app.size.width
        self._width = width
        spare = max(30, width - sum(w for _, _, w in FIXED) - 2 * (len(FIXED) + 2) - 2)
        email_width = max(20, spare * 2 // 3)
        name_width = max(10, spare - email_width)
        self.clear(columns=True)
        self.add_column("Email", width=email_width, key="email")
        self.add_column("Name", width=name_width, key="name")
        for label, key, w in FIXED:
            self.add_column(label, width=w, key=key)
        for r in rows:
            self.add_row(
                # Texts: plain strings would be read as markup.
                Text(_cut(r.email, email_width)),
                Text(_cut(r.name, name_width)),
                Text(r.country),
                consent_mark(r.promotional),
                consent_mark(r.research),
                consent_mark(r.third_party),
                Text("yes", style="bold red") if r.suppressed else Text("·", style="dim"),
                key=r.email,
            )
        if keep is not None and keep in {r.email for r in rows}:
            self.move_cursor(row=self.get_row_index(keep), animate=False)

    def on_resize(self, event: events.Resize) -> None:
        if event.size.width != self._width:
            self.show(self._rows)
