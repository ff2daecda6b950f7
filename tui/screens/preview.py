"""Preview: the real message for a chosen contact, headers and text part; HTML in a browser.

A template problem shows here in plain words, before any send can hit it.
"""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Footer, Header, Input, Label, Static

from tui.screens.base import BaseScreen
from tui.services import PreviewResult

# The headers a marketer checks first, in this order; the rest follow.
FIRST = ("From", "To", "Subject", "Reply-To", "List-Unsubscribe", "List-Unsubscribe-Post")


class PreviewScreen(BaseScreen):
    BINDINGS = [
        Binding("o", "open_html", "Open HTML"),
        Binding("c", "choose_contact", "Contact"),
        Binding("t", "test_send", "Test send"),
        Binding("e", "edit", "Edit", show=False),
        Binding("escape", "back", "Back"),
    ]

    def __init__(self, campaign: str) -> None:
        super().__init__()
        self.campaign = campaign
        self.result: PreviewResult | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(classes="field", id="preview-for"):
            yield Label("Render for", classes="field-label")
            yield Input(
                placeholder="an email address (empty: the first person in the audience)",
                compact=True,
                id="preview-email",
            )
        with VerticalScroll(id="preview-body"):
            yield Static("Rendering…", id="preview-recipient")
            yield Static("", id="preview-headers")
            yield Static("", id="preview-text")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = f"Preview of {self.campaign}"
        self.query_one("#preview-headers").border_title = "Headers"
        self.query_one("#preview-text").border_title = "Text part"
        self.query_one("#preview-body").focus()
        self.render_for("")

    def render_for(self, email: str) -> None:
        name = self.campaign
        self.in_background(
            lambda: self.services.preview(name, email),
            self._show,
            what="render the preview",
            group="render",
            exclusive=True,
        )

    def _show(self, result: PreviewResult) -> None:
        self.result = result
        who = self.query_one("#preview-recipient", Static)
        headers = self.query_one("#preview-headers", Static)
        text = self.query_one("#preview-text", Static)
        line = Text.assemble("For ", (result.recipient, "bold"))
        if result.stand_in:
            line.append(f" ({result.stand_in})", style="dim")
        who.update(line)
        if result.problem:
            headers.display = False
            text.border_title = "This campaign cannot be sent yet"
            text.add_class("problem")
            text.update(
                Text.assemble(
                    (result.problem, "bold"),
                    "\n\nFix it in the editor (press e). Nothing can be sent until it renders.",
                )
            )
            return
        headers.display = True
        text.border_title = "Text part"
        text.remove_class("problem")
        order = {h.lower(): i for i, h in enumerate(FIRST)}
        ordered = sorted(result.headers, key=lambda kv: order.get(kv[0].lower(), len(FIRST)))
        lines = Text("\n").join(
            Text.assemble((f"{key}: ", "bold cyan"), value) for key, value in ordered
        )
        headers.update(lines or Text("(none)"))
        text.update(Text(result.text.rstrip()))

    @on(Input.Submitted, "#preview-email")
    def contact_chosen(self, event: Input.Submitted) -> None:
        self.render_for(event.value)
        self.query_one("#preview-body").focus()

    def action_choose_contact(self) -> None:
        self.query_one("#preview-email", Input).focus()

    def action_open_html(self) -> None:
        result = self.result
        if result is None or result.problem or not result.html:
            self.notify("There is no rendered message to open.", severity="warning")
            return
        name, html = self.campaign, result.html
        self.in_background(
            lambda: self.services.open_html(html, name), self._opened, what="open the HTML part"
        )

    def _opened(self, result: tuple[Path, bool]) -> None:
        path, opened = result
        if opened:
            self.notify(f"Opened in your browser: {path}", title="HTML part")
        else:
            self.notify(
                f"No desktop browser to open it with; the file is {path}",
                title="HTML part written",
                severity="warning",
                timeout=15,
            )

    def action_test_send(self) -> None:
        self.app.test_send(self.campaign)  # type: ignore[attr-defined]

    def action_edit(self) -> None:
        self.app.edit_campaign(self.campaign)  # type: ignore[attr-defined]

    def action_back(self) -> None:
        if self.query_one("#preview-email", Input).has_focus:
            self.query_one("#preview-body").focus()
        else:
            self.app.pop_screen()

    def on_screen_resume(self) -> None:
        # Back from the editor: show what the template renders now.
        if self.result is not None:
            self.render_for(self.query_one("#preview-email", Input).value)
