"""The Textual app, built by a factory that is handed its services (DESIGN.md §5).

`create_app(services)` is what tests and snapshots use; `run_app(settings, engine=...)`
is what `campaigns` / `campaigns demo` call. The app owns the campaign actions (send,
schedule, cancel, …) so the dashboard, the report screen and the command palette share
them, and it owns running sends, so leaving the progress screen never stops one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from sqlalchemy import Engine
from textual.app import App
from textual.binding import Binding
from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.notifications import SeverityLevel
from textual.screen import Screen

from campaigns.campaign import DRAFT, PAUSED, SCHEDULED, SENDING
from campaigns.config import Settings
from tui.messages import SendFinished, SendProgress
from tui.screens.audience import AudienceScreen
from tui.screens.base import Background, in_daemon_thread
from tui.screens.compose import ComposeScreen
from tui.screens.confirm import ConfirmScreen
from tui.screens.contacts import ContactsScreen
from tui.screens.dashboard import DashboardScreen
from tui.screens.help import HelpScreen
from tui.screens.import_csv import ImportScreen
from tui.screens.preview import PreviewScreen
from tui.screens.progress import ProgressScreen
from tui.screens.report import ReportScreen
from tui.screens.schedule import ScheduleScreen
from tui.screens.send_test import SendTestScreen
from tui.services import SendQuestion, Services, error_text

if TYPE_CHECKING:
    from mailer.engine import RunReport


def transport_words(settings: Settings) -> str:
    """Where mail goes, for the header: never the URL's user name or password."""
    parts = urlsplit(settings.effective_smtp_url)
    if parts.scheme == "maildir":
        return "capture mode: nothing leaves this machine"
    host = parts.hostname or "?"
    return f"sending via {parts.scheme}://{host}:{parts.port}" if parts.port else host


class CampaignCommands(Provider):
    """The command palette: the main actions, and each action on each campaign."""

    GENERAL: tuple[tuple[str, str, str], ...] = (
        ("New campaign", "Compose a promotional, survey or third-party campaign", "new_campaign"),
        ("Contacts", "Search contacts, see consent history, record changes", "contacts"),
        ("Import contacts", "Check a CSV file, then import it", "import_contacts"),
        ("Dashboard", "Campaigns and who may get what", "dashboard"),
        ("Help: keys", "Every key of every screen", "help"),
    )
    PER_CAMPAIGN: tuple[tuple[str, str, str], ...] = (
        ("Report", "open_report", "Counts, failure reasons, unsubscribes"),
        ("Edit", "edit_campaign", "Change a draft's fields"),
        ("Audience", "edit_audience", "Choose who it goes to"),
        ("Preview", "preview", "The message as a chosen contact gets it"),
        ("Test send", "test_send", "Send a marked test copy to typed-in addresses"),
        ("Send now", "send", "Send to everyone eligible, after a confirmation"),
        ("Schedule", "schedule", "Send at a date and time"),
        ("Pause", "pause_campaign", "Stop a running send for now; Send now goes on"),
        ("Cancel", "cancel_campaign", "Stop it from being sent"),
    )

    async def startup(self) -> None:
        app = self.app
        assert isinstance(app, CampaignsApp)
        try:
            self._names = await asyncio.to_thread(app.services.campaign_names)
        except Exception:  # the palette still offers the general actions
            self._names = []

    def _commands(self) -> list[tuple[str, str, Callable[[], Any]]]:
        app = self.app
        assert isinstance(app, CampaignsApp)
        out: list[tuple[str, str, Callable[[], Any]]] = [
            (title, help_text, getattr(app, f"action_{action}"))
            for title, help_text, action in self.GENERAL
        ]
        for name, _status in self._names:
            for verb, method, help_text in self.PER_CAMPAIGN:
                out.append((f"{verb}: {name}", help_text, partial(getattr(app, method), name)))
        return out

    async def discover(self) -> Hits:
        for title, help_text, callback in self._commands()[: len(self.GENERAL)]:
            yield DiscoveryHit(title, callback, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, help_text, callback in self._commands():
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, matcher.highlight(title), callback, help=help_text)


class CampaignsApp(Background, App[int]):
    CSS_PATH = "app.tcss"
    TITLE = "Campaigns"
    COMMANDS = App.COMMANDS | {CampaignCommands}
    BINDINGS = [
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(self, services: Services) -> None:
        super().__init__()
        self._services = services
        # Sends running in this app: campaign name → latest progress (None before any).
        self.sends: dict[str, RunReport | None] = {}
        self.sub_title = transport_words(services.settings)

    @property
    def services(self) -> Services:
        return self._services

    def notify(
        self,
        message: str,
        *,
        title: str = "",
        severity: SeverityLevel = "information",
        timeout: float | None = None,
        markup: bool = True,
    ) -> None:
        # Messages quote names, subjects and SMTP replies: never read them as markup.
        super().notify(message, title=title, severity=severity, timeout=timeout, markup=False)

    def get_default_screen(self) -> Screen[Any]:
        return DashboardScreen()

    # --- general actions ----------------------------------------------------

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def action_new_campaign(self) -> None:
        self.push_screen(ComposeScreen(None))

    def action_contacts(self) -> None:
        self.push_screen(ContactsScreen())

    def action_import_contacts(self) -> None:
        self.push_screen(ImportScreen())

    def action_dashboard(self) -> None:
        # The dashboard is the bottom of the stack: close everything above it.
        while len(self.screen_stack) > 1:
            self.pop_screen()

    async def action_quit(self) -> None:
        running = list(self.sends)
        if not running:
            self.exit(0)
            return
        question = (
            f"{running[0]!r} is still being sent. Quit anyway? The send stops at once: "
            "what was not sent stays queued and `campaigns send-due` (or Send again) "
            "finishes it; a message in flight is marked in doubt, never sent twice."
        )
        self.push_screen(
            ConfirmScreen("A send is running", question, yes="Quit"),
            lambda yes: self.exit(0) if yes else None,
        )

    # --- campaign actions (dashboard, report screen and palette share them) ----

    def open_report(self, name: str) -> None:
        self.push_screen(ReportScreen(name))

    def edit_campaign(self, name: str) -> None:
        self.push_screen(ComposeScreen(name))

    def edit_audience(self, name: str) -> None:
        self.push_screen(AudienceScreen(name))

    def preview(self, name: str) -> None:
        self.push_screen(PreviewScreen(name))

    def test_send(self, name: str) -> None:
        self.push_screen(SendTestScreen(name))

    def schedule(self, name: str) -> None:
        self.push_screen(ScheduleScreen(name))

    def cancel_campaign(self, name: str) -> None:
        question = (
            f"Cancel {name!r}? It will not be sent (or sent further); "
            "messages already sent stay sent."
        )

        def answered(yes: bool | None) -> None:
            if yes:
                self.in_background(
                    lambda: self.services.cancel(name),
                    lambda c: self.notify(f"{c.name!r} is cancelled", title="Cancelled"),
                    what="cancel the campaign",
                )

        self.push_screen(ConfirmScreen("Cancel campaign", question, yes="Cancel it"), answered)

    def pause_campaign(self, name: str) -> None:
        # No question: a pause loses nothing and Send now goes on from there.
        self.in_background(
            lambda: self.services.pause(name),
            lambda c: self.notify(
                f"{c.name!r} is paused: messages in flight finish; Send now goes on",
                title="Paused",
            ),
            what="pause the campaign",
        )

    def release_held(self, name: str) -> None:
        # No question: releasing only makes the held messages wait for the next send.
        self.in_background(
            lambda: self.services.release(name),
            lambda n: self.notify(
                f"{n:,} held messages of {name!r} will go with the next send (Send now)",
                title="Released",
            ),
            what="release the held messages",
        )

    def send(self, name: str) -> None:
        if name in self.sends:
            self._show_progress(name, None)
            return
        self.in_background(
            lambda: self.services.send_question(name), self._ask_send, what="prepare the send"
        )

    def _ask_send(self, q: SendQuestion) -> None:
        if q.status not in {DRAFT, SCHEDULED, SENDING, PAUSED}:
            self.notify(
                f"{q.name!r} is {q.status}; it cannot be sent", title="Not sent", severity="error"
            )
            return
        if q.status == SENDING:
            question = f"{q.name!r} was interrupted while sending. Send the rest now?"
        elif q.status == PAUSED:
            question = f"{q.name!r} is paused. Send the rest now?"
        elif q.count == 0:
            self.notify(
                f"Nobody in the audience of {q.name!r} may get it now: check its audience.",
                title="Nobody to send to",
                severity="warning",
            )
            return
        else:
            question = q.text

        def answered(yes: bool | None) -> None:
            if yes:
                self._start_send(q.name, q.count)

        self.push_screen(ConfirmScreen("Send now", question, yes="Send"), answered)

    def _start_send(self, name: str, count: int) -> None:
        self.sends[name] = None
        self._show_progress(name, count)
        self.run_worker(self._send_job(name), name=f"send {name}", exit_on_error=False)

    def _show_progress(self, name: str, count: int | None) -> None:
        self.push_screen(ProgressScreen(name, count, self.sends.get(name)))

    async def _send_job(self, name: str) -> None:
        def progress(report: RunReport) -> None:  # called from the sending thread
            self.post_message(SendProgress(name, report))

        try:
            report = await in_daemon_thread(
                lambda: self.services.send_now(name, progress), name=f"send {name}"
            )
        except Exception as exc:
            self.post_message(SendFinished(name, None, error_text(exc)))
        else:
            self.post_message(SendFinished(name, report))

    def _progress_screens(self, name: str) -> list[ProgressScreen]:
        return [
            s for s in self.screen_stack if isinstance(s, ProgressScreen) and s.campaign == name
        ]

    def on_send_progress(self, message: SendProgress) -> None:
        if message.name in self.sends:
            self.sends[message.name] = message.report
        for screen in self._progress_screens(message.name):
            screen.show_progress(message.report)

    def on_send_finished(self, message: SendFinished) -> None:
        self.sends.pop(message.name, None)
        for screen in self._progress_screens(message.name):
            screen.show_finished(message.report, message.error)
        r = message.report
        if r is None:
            self.notify(message.error, title=f"{message.name!r} not sent", severity="error")
        elif r.finished:
            self.notify(
                f"{r.sent:,} sent, {r.failed:,} failed, {r.skipped:,} skipped, "
                f"{r.in_doubt:,} in doubt",
                title=f"{r.name!r} is sent",
            )
        else:
            self.notify(
                f"{r.sent:,} sent so far; {r.stopped or 'some deliveries are still open'}",
                title=f"{r.name!r} is not finished",
                severity="warning",
            )


def create_app(services: Services) -> CampaignsApp:
    """The app factory: tests and snapshots hand in their own services."""
    return CampaignsApp(services)


def run_app(settings: Settings, *, engine: Engine) -> int:
    result = create_app(Services.build(settings, engine)).run()
    return result or 0
