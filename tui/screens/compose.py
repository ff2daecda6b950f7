"""Compose: kind first, then the fields, the kind's own field, and a Markdown body.

Saving runs both checks before anything is stored: the campaign store's rules
(CampaignError: names, one-line headers, sponsor and survey URL per kind) and a full
render of the template (TemplateProblem). A new campaign then opens on its report
screen, where its audience, preview, test send and send are one key away.
"""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Footer, Header, Input, Label, Select, Static, TextArea

from campaigns.models import Campaign
from campaigns.purposes import Kind
from tui.screens.base import BaseScreen
from tui.screens.confirm import ConfirmScreen
from tui.screens.report import ReportScreen
from tui.services import DraftFields

KINDS = [
    ("promotional: events, services, offers", Kind.PROMOTIONAL),
    ("survey: market research", Kind.SURVEY),
    ("third-party offer: a partner's promotion", Kind.THIRD_PARTY_OFFER),
]
INPUTS = ("name", "subject", "preheader", "sender", "template", "sponsor", "survey_url")
LABELS = {
    "name": "Name",
    "subject": "Subject",
    "preheader": "Preheader",
    "sender": "Sender",
    "template": "Template",
    "sponsor": "Sponsor",
    "survey_url": "Survey URL",
}
STARTER_BODY = "Hello {{ first_name | default('there') }},\n\n"


class ComposeScreen(BaseScreen):
    BINDINGS = [
        Binding("ctrl+s", "save", "Save"),
        Binding("escape", "back", "Back"),
    ]

    def __init__(self, name: str | None) -> None:
        super().__init__()
        # None: a new campaign; otherwise the name of the draft being changed.
        self.original = name
        self._initial: DraftFields | None = None

    def compose(self) -> ComposeResult:
        settings = self.services.settings
        placeholders = {
            "name": "how you will find it again, e.g. Spring sale 2026",
            "subject": "the subject line; {{ first_name }} etc. work",
            "preheader": "optional: the line mail clients show after the subject",
            "sender": f"optional: default {settings.sender}",
            "template": "optional: a layout name; default: the kind's own",
            "sponsor": "the partner the offer is sent for (required)",
            "survey_url": "https://… (required)",
        }
        yield Header()
        with Vertical(id="compose-form"):
            with Horizontal(classes="field", id="row-kind"):
                yield Label("Kind", classes="field-label")
                yield Select(
                    KINDS, value=Kind.PROMOTIONAL, allow_blank=False, compact=True, id="kind"
                )
            for key in INPUTS:
                with Horizontal(classes="field", id=f"row-{key}"):
                    yield Label(LABELS[key], classes="field-label")
                    yield Input(placeholder=placeholders[key], compact=True, id=key)
            yield Label("Body (Markdown)", classes="section-label")
            yield TextArea(
                STARTER_BODY if self.original is None else "",
                soft_wrap=True,
                show_line_numbers=False,
                tab_behavior="focus",
                id="body",
            )
            yield Static("", id="compose-error", classes="error", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = "New campaign" if self.original is None else f"Edit {self.original}"
        self._show_kind_fields(Kind.PROMOTIONAL)
        if self.original is None:
            self._initial = self._fields()
            self.query_one("#kind", Select).focus()
        else:
            name = self.original
            self.in_background(
                lambda: self.services.campaign(name), self._load, what="load the campaign"
            )

    def _load(self, campaign: Campaign) -> None:
        if campaign.status not in {"draft", "scheduled"}:
            self.notify(
                f"{campaign.name!r} is {campaign.status}; only drafts and scheduled campaigns "
                "can be changed",
                severity="warning",
            )
            self.app.pop_screen()
            return
        self.query_one("#kind", Select).value = Kind(campaign.kind)
        for key in INPUTS:
            self.query_one(f"#{key}", Input).value = getattr(campaign, key) or ""
        self.query_one("#body", TextArea).text = campaign.body
        self._show_kind_fields(Kind(campaign.kind))
        self._initial = self._fields()
        self.query_one("#name", Input).focus()

    @on(Select.Changed, "#kind")
    def kind_changed(self, event: Select.Changed) -> None:
        if isinstance(event.value, str):
            self._show_kind_fields(Kind(event.value))

    def _show_kind_fields(self, kind: Kind) -> None:
        # Each kind's own field is shown (and saved) only for that kind.
        self.query_one("#row-sponsor").display = kind is Kind.THIRD_PARTY_OFFER
        self.query_one("#row-survey_url").display = kind is Kind.SURVEY

    def _fields(self) -> DraftFields:
        chosen = self.query_one("#kind", Select).value
        kind = Kind(chosen) if isinstance(chosen, str) else Kind.PROMOTIONAL
        value = {key: self.query_one(f"#{key}", Input).value for key in INPUTS}
        return DraftFields(
            kind=kind,
            name=value["name"],
            subject=value["subject"],
            body=self.query_one("#body", TextArea).text,
            preheader=value["preheader"],
            sender=value["sender"],
            template=value["template"],
            sponsor=value["sponsor"] if kind is Kind.THIRD_PARTY_OFFER else "",
            survey_url=value["survey_url"] if kind is Kind.SURVEY else "",
        )

    @on(Input.Submitted)
    def next_field(self) -> None:
        self.focus_next()

    def action_save(self) -> None:
        fields = self._fields()
        error = self.query_one("#compose-error", Static)
        error.update("Checking…")
        self.in_background(
            lambda: self.services.save_campaign(self.original, fields),
            self._saved,
            what="save the campaign",
            group="save",
            exclusive=True,
            failed=lambda text: error.update(text),
        )

    def _saved(self, campaign: Campaign) -> None:
        self.query_one("#compose-error", Static).update("")
        self.notify(f"{campaign.name!r} is saved as a {campaign.status}", title="Saved")
        if self.original is None:
            self.app.switch_screen(ReportScreen(campaign.name))
        else:
            self.app.pop_screen()

    def action_back(self) -> None:
        if self._initial is None or self._fields() == self._initial:
            self.app.pop_screen()
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.app.pop_screen()

        self.app.push_screen(
            ConfirmScreen("Unsaved changes", "Leave without saving your changes?", yes="Leave"),
            answered,
        )
