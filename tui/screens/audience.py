"""Audience: the segment's filters, and the eligible count following as you type.

The count comes with who was left out and why (no consent for the kind's purpose, or
suppressed), counted in a worker a moment after the last key press, so typing never
waits for the database.
"""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.timer import Timer
from textual.widgets import Footer, Header, Input, Label, Static

from campaigns.drafts import stored_segment
from campaigns.models import Campaign
from campaigns.purposes import Kind
from campaigns.segments import Breakdown, Segment, SegmentError
from tui.screens.base import BaseScreen

FIELDS = (
    ("countries", "Countries", "any of, comma-separated, e.g. DE, FR"),
    ("cities", "Cities", "any of, e.g. Berlin, Lyon"),
    ("tags", "Tags", "all of, e.g. vip, events"),
    ("attributes", "Attributes", "all of, name=value, e.g. loyalty=gold"),
)
PURPOSE_WORDS = {
    "promotional": "promotional consent",
    "research": "consent to market research",
    "third_party": "an explicit opt-in to third-party offers",
}
DEBOUNCE_SECONDS = 0.3


def _items(text: str) -> tuple[str, ...]:
    # A trailing comma while typing is not an error: empty pieces are dropped.
    return tuple(p.strip() for p in text.split(",") if p.strip())


def segment_from_fields(countries: str, cities: str, tags: str, attributes: str) -> Segment:
    """The filters as typed; SegmentError (one line) for what cannot be used."""
    pairs = []
    for item in _items(attributes):
        name, eq, value = item.partition("=")
        if not eq:
            raise SegmentError(f"attribute filter {item!r} is not name=value")
        pairs.append((name.strip(), value.strip()))
    return Segment(
        countries=_items(countries),
        cities=_items(cities),
        tags=_items(tags),
        attributes=tuple(pairs),
    )


def fields_from_segment(segment: Segment) -> dict[str, str]:
    return {
        "countries": ", ".join(segment.countries),
        "cities": ", ".join(segment.cities),
        "tags": ", ".join(segment.tags),
        "attributes": ", ".join(f"{k}={v}" for k, v in segment.attributes),
    }


class AudienceScreen(BaseScreen):
    BINDINGS = [
        Binding("ctrl+s", "save", "Save"),
        Binding("escape", "app.pop_screen", "Back"),
    ]

    def __init__(self, campaign: str) -> None:
        super().__init__()
        self.campaign = campaign
        self.kind: Kind | None = None
        self._timer: Timer | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical(id="audience-form"):
            yield Static("", id="audience-campaign")
            for key, label, placeholder in FIELDS:
                with Horizontal(classes="field"):
                    yield Label(label, classes="field-label")
                    yield Input(placeholder=placeholder, compact=True, id=key)
            yield Static("", id="audience-count")
            yield Static("", id="audience-error", classes="error", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = f"Audience of {self.campaign}"
        self.query_one("#audience-count").border_title = "Who it reaches now"
        name = self.campaign
        self.in_background(
            lambda: self.services.campaign(name), self._load, what="load the campaign"
        )

    def _load(self, campaign: Campaign) -> None:
        self.kind = Kind(campaign.kind)
        purpose = self.kind.purpose.value
        self.query_one("#audience-campaign", Static).update(
            Text.assemble(
                (campaign.name, "bold"),
                f" ({campaign.kind}, {campaign.status}) goes only to people with "
                f"{PURPOSE_WORDS[purpose]} who are not suppressed, and who match:",
            )
        )
        try:
            values = fields_from_segment(stored_segment(campaign))
        except SegmentError as exc:
            self.query_one("#audience-error", Static).update(f"The stored segment: {exc}")
            values = {}
        with self.prevent(Input.Changed):
            for key, _label, _placeholder in FIELDS:
                self.query_one(f"#{key}", Input).value = values.get(key, "")
        self.query_one("#countries", Input).focus()
        self._count()

    def _segment(self) -> Segment:
        values = {key: self.query_one(f"#{key}", Input).value for key, _l, _p in FIELDS}
        return segment_from_fields(**values)

    @on(Input.Changed)
    def changed(self) -> None:
        if self._timer is not None:
            self._timer.stop()
        self._timer = self.set_timer(DEBOUNCE_SECONDS, self._count)

    @on(Input.Submitted)
    def next_field(self) -> None:
        self.focus_next()

    def _count(self) -> None:
        if self.kind is None:
            return
        error = self.query_one("#audience-error", Static)
        try:
            segment = self._segment()
        except SegmentError as exc:
            error.update(str(exc))
            return
        error.update("")
        kind = self.kind
        self.in_background(
            lambda: (segment, self.services.audience(kind, segment)),
            self._show,
            what="count the audience",
            group="count",
            exclusive=True,
        )

    def _show(self, result: tuple[Segment, Breakdown]) -> None:
        segment, b = result
        assert self.kind is not None
        purpose = self.kind.purpose.value
        words = Segment.from_json({**segment.to_json(), "purpose": purpose}).describe()
        self.query_one("#audience-count", Static).update(
            Text.assemble(
                (f"{b.eligible:,}", "bold green"),
                f" eligible, of {b.matching:,} matching the filters\nleft out: ",
                (f"{b.no_consent:,}", "bold"),
                f" without {PURPOSE_WORDS[purpose]}, ",
                (f"{b.suppressed:,}", "bold"),
                " suppressed\n",
                (words, "dim"),
            )
        )

    def action_save(self) -> None:
        try:
            segment = self._segment()
        except SegmentError as exc:
            self.notify(str(exc), title="Not saved", severity="error")
            return
        name = self.campaign
        self.in_background(
            lambda: self.services.save_segment(name, segment),
            self._saved,
            what="save the audience",
        )

    def _saved(self, campaign: Campaign) -> None:
        self.notify(f"The audience of {campaign.name!r} is saved", title="Saved")
        self.app.pop_screen()
