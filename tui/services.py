"""The services the Textual app is handed (DESIGN.md §5: an app factory handed its services).

`Services` holds the settings, the database engine, and the callables that reach the
outside world (sending, test-sending, rendering, importing, opening a browser, the
clock), so a test can hand in real ones pointed at an aiosmtpd server and a snapshot
test a frozen clock and time zone. `Services.build(settings, engine)` makes the real
ones; keyword arguments replace any of them.

Its methods are the only way screens reach data: each opens a session, calls functions
of campaigns/ and mailer/, and hands back plain values. There is no SQL here or in the
screens. Every method blocks, so screens call them from worker threads.
"""

from __future__ import annotations

import re
import sys
import tempfile
import webbrowser
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from email.message import EmailMessage
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from campaigns import campaign as campaigns_store
from campaigns import contacts, drafts, reports, suppression
from campaigns.config import Settings
from campaigns.consent import ConsentConflict
from campaigns.contacts import ContactRow
from campaigns.db import DatabaseError, session_scope
from campaigns.models import Campaign, utcnow
from campaigns.purposes import Kind, Purpose
from campaigns.reports import CampaignReport, CampaignRow, ConsentOverview
from campaigns.segments import Breakdown, Segment, SegmentError
from mailer.message import Recipient
from mailer.render import TemplateProblem
from mailer.transport.base import TransportError

if TYPE_CHECKING:
    from campaigns.csv_import import ImportReport
    from mailer.engine import RunReport

ProgressCallback = Callable[["RunReport"], None]
SendNow = Callable[[str, ProgressCallback | None], "RunReport"]
TestSend = Callable[[Campaign, Sequence[str]], "list[TestSendResult]"]
RenderPreview = Callable[[Campaign, Recipient], tuple[bytes, EmailMessage]]
CheckTemplate = Callable[[Campaign], None]
ImportContacts = Callable[[Path, bool, Callable[[int], None] | None], "ImportReport"]

# What the confirmation before a send says people agreed to, per purpose.
AGREED_TO = {
    Purpose.PROMOTIONAL: "agreed to promotional email",
    Purpose.RESEARCH: "agreed to be contacted for market research",
    Purpose.THIRD_PARTY: "asked for offers from third parties",
}
SAMPLE_RECIPIENT = Recipient(0, "someone@example.com", "Sample Person", {})


@dataclass(frozen=True)
class TestSendResult:
    address: str
    accepted: bool
    reply: str


@dataclass(frozen=True)
class Overview:
    """What the dashboard shows."""

    consent: ConsentOverview
    campaigns: list[CampaignRow]


@dataclass(frozen=True)
class DraftFields:
    """What the compose screen edits."""

    kind: Kind
    name: str
    subject: str
    body: str
    preheader: str = ""
    sender: str = ""
    template: str = ""
    sponsor: str = ""
    survey_url: str = ""


@dataclass(frozen=True)
class PreviewResult:
    """One rendered message, or the plain-words reason it cannot be rendered."""

    recipient: str
    # Why it is rendered for someone who is not in the audience, if so.
    stand_in: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    text: str = ""
    html: str = ""
    problem: str = ""


@dataclass(frozen=True)
class SendQuestion:
    """What the confirmation before a send states."""

    name: str
    status: str
    count: int
    purpose: Purpose

    @property
    def text(self) -> str:
        people = "person" if self.count == 1 else "people"
        return f"Send {self.name!r} to {self.count:,} {people} who {AGREED_TO[self.purpose]}?"


# ------------------------------------------------------------------ the real callables


def _real_send_now(settings: Settings, engine: Engine) -> SendNow:
    def send(name: str, progress: ProgressCallback | None) -> RunReport:
        from mailer.schedule import send_now  # the engine and its transports load on use

        return send_now(settings, engine, name, progress=progress)

    return send


def _real_test_send(settings: Settings, engine: Engine) -> TestSend:
    def send(campaign: Campaign, to: Sequence[str]) -> list[TestSendResult]:
        from mailer.engine import SendEngine

        outcomes = SendEngine(settings, engine).test_send(campaign, list(to))
        return [
            TestSendResult(address, o.accepted, f"{o.code} {o.text}".strip())
            for address, o in zip(to, outcomes, strict=True)
        ]

    return send


def _real_preview(settings: Settings) -> RenderPreview:
    def render(campaign: Campaign, recipient: Recipient) -> tuple[bytes, EmailMessage]:
        from mailer.render import preview
        from mailer.tokens import signer_from_settings

        return preview(campaign, settings, recipient, signer_from_settings(settings))

    return render


def _real_check(settings: Settings) -> CheckTemplate:
    def check(campaign: Campaign) -> None:
        from mailer.render import compile_campaign
        from mailer.tokens import signer_from_settings

        compile_campaign(campaign, settings, signer=signer_from_settings(settings))

    return check


def _real_import(settings: Settings, engine: Engine) -> ImportContacts:
    def run(path: Path, dry_run: bool, progress: Callable[[int], None] | None) -> ImportReport:
        from campaigns.csv_import import import_contacts

        return import_contacts(
            engine,
            path,
            policy_version=settings.policy_version,
            dry_run=dry_run,
            progress=progress,
        )

    return run


def open_gui_browser(url: str) -> bool:
    """`webbrowser.open`, but never a browser that would take over this terminal.

    Without a desktop, Python falls back to text browsers (lynx, w3m, www-browser) that
    run in the terminal the app is drawing on; then nothing is opened and the screen
    says where the file is instead.
    """
    try:
        browser = webbrowser.get()
    except webbrowser.Error:
        return False
    in_terminal = isinstance(browser, webbrowser.GenericBrowser) and not isinstance(
        browser, webbrowser.BackgroundBrowser
    )
    if in_terminal or getattr(browser, "background", True) is False:
        return False
    return bool(browser.open(url))


# ------------------------------------------------------------------ errors in words


def error_text(exc: BaseException) -> str:
    """One line for a notification: the user's own error plainly, anything else labelled."""
    from campaigns.csv_import import ImportRefused

    busy = getattr(sys.modules.get("mailer.schedule"), "SendBusy", None)
    plain: tuple[type[BaseException], ...] = (
        campaigns_store.CampaignError,
        campaigns_store.CampaignNotFound,
        contacts.ContactNotFound,
        SegmentError,
        ConsentConflict,
        ImportRefused,
        DatabaseError,
        ValueError,
    )
    if busy is not None:
        plain += (busy,)
    if isinstance(exc, TemplateProblem):
        return f"template problem: {exc}"
    if isinstance(exc, TransportError):  # a test send that could not reach the server
        return f"test send failed: {exc}"
    if isinstance(exc, plain):
        text = str(exc.args[0]) if exc.args else str(exc)
        # The store's messages name command-line options; here there are fields instead.
        return re.sub(r" \(--[a-z-]+\)", "", text)
    if isinstance(exc, OperationalError):
        return f"database: {str(exc.orig).splitlines()[0]}"
    if isinstance(exc, SQLAlchemyError):
        return f"database: {str(exc).splitlines()[0]}"
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror or exc}"
    first = str(exc).splitlines()[0] if str(exc) else ""
    return f"internal error: {type(exc).__name__}: {first}"


# ------------------------------------------------------------------ the services


@dataclass(frozen=True)
class Services:
    settings: Settings
    engine: Engine
    send_now: SendNow
    test_send: TestSend
    render_preview: RenderPreview
    check_template: CheckTemplate
    import_contacts: ImportContacts
    # Opens a file:// URL; False when no browser could (the screen then shows the path).
    open_browser: Callable[[str], bool] = open_gui_browser
    # Where times are shown (None: the machine's local zone); stored times are UTC.
    tz: tzinfo | None = None
    now: Callable[[], datetime] = utcnow
    # How often the dashboard re-reads (a send started by cron shows up); 0: never.
    refresh_seconds: float = 5.0
    # Where previews' HTML files go (None: the system's temporary folder).
    preview_dir: Path | None = None

    @classmethod
    def build(cls, settings: Settings, engine: Engine, **overrides: Any) -> Services:
        """The real services for these settings; keyword arguments replace any field."""
        real: dict[str, Any] = {
            "send_now": _real_send_now(settings, engine),
            "test_send": _real_test_send(settings, engine),
            "render_preview": _real_preview(settings),
            "check_template": _real_check(settings),
            "import_contacts": _real_import(settings, engine),
        }
        return cls(settings=settings, engine=engine, **{**real, **overrides})

    # --- time ---------------------------------------------------------------

    def local(self, when: datetime) -> datetime:
        return when.astimezone(self.tz) if self.tz is not None else when.astimezone()

    def local_time(self, when: datetime | None, empty: str = "") -> str:
        """A stored (UTC) time as the marketer reads it: local, to the minute."""
        return self.local(when).strftime("%Y-%m-%d %H:%M") if when else empty

    def local_short(self, when: datetime | None) -> str:
        """The same, for narrow columns: day, month and time."""
        return self.local(when).strftime("%d %b %H:%M") if when else ""

    def zone_name(self) -> str:
        now = self.local(self.now())
        name, offset = now.tzname() or "local time", now.strftime("%z")
        if name in {"UTC", "GMT"} and offset == "+0000":
            return "UTC"
        return f"{name} (UTC{offset[:3]}:{offset[3:]})"

    def parse_local(self, text: str) -> datetime:
        """'2026-03-01 09:00' in the shown zone (or with an explicit offset) → aware UTC."""
        raw = text.strip().replace("T", " ")
        if not raw:
            raise ValueError("enter a date and time, e.g. 2026-03-01 09:00")
        try:
            when = datetime.fromisoformat(raw)
            if when.tzinfo is None:
                when = when.replace(tzinfo=self.tz) if self.tz is not None else when.astimezone()
            return when.astimezone(UTC)
        except (ValueError, OverflowError, OSError):
            raise ValueError(
                f"not a date and time: {text.strip()!r} (e.g. 2026-03-01 09:00)"
            ) from None

    # --- dashboard and campaigns -----------------------------------------------

    def overview(self) -> Overview:
        with session_scope(self.engine) as s:
            return Overview(reports.consent_overview(s), reports.campaign_rows(s))

    def campaign_names(self) -> list[tuple[str, str]]:
        """(name, status) of every campaign, for the command palette."""
        with session_scope(self.engine) as s:
            return [(c.name, c.status) for c in campaigns_store.all_campaigns(s)]

    def campaign(self, name: str) -> Campaign:
        with session_scope(self.engine) as s:
            return campaigns_store.get(s, name)

    def report(self, name: str) -> CampaignReport:
        with session_scope(self.engine) as s:
            return reports.campaign_report(s, name)

    def save_campaign(self, original: str | None, fields: DraftFields) -> Campaign:
        """Create (original None) or change a draft; it must also render, or nothing is saved."""
        values = {
            "kind": fields.kind,
            "subject": fields.subject,
            "body": fields.body,
            "template": fields.template,
            "sponsor": fields.sponsor,
            "survey_url": fields.survey_url,
            "preheader": fields.preheader,
            "sender": fields.sender,
        }
        with session_scope(self.engine) as s:
            if original is None:
                saved = campaigns_store.create(s, name=fields.name, **values)
            else:
                saved = drafts.update_draft(s, original, new_name=fields.name, **values)
            # A TemplateProblem here rolls the session back: nothing broken is stored.
            self.check_template(saved)
            return saved

    def audience(self, kind: Kind, segment: Segment) -> Breakdown:
        with session_scope(self.engine) as s:
            return drafts.audience(s, kind, segment)

    def save_segment(self, name: str, segment: Segment) -> Campaign:
        with session_scope(self.engine) as s:
            return drafts.set_segment(s, name, segment)

    def schedule(self, name: str, when: datetime) -> Campaign:
        if when <= self.now():
            raise ValueError("that time has passed; to send now, use Send")
        with session_scope(self.engine) as s:
            return campaigns_store.schedule(s, name, when)

    def cancel(self, name: str) -> Campaign:
        with session_scope(self.engine) as s:
            return campaigns_store.cancel(s, name)

    def pause(self, name: str) -> Campaign:
        with session_scope(self.engine) as s:
            return campaigns_store.pause(s, name)

    def release(self, name: str) -> int:
        """Send what was held back because its domain kept blocking us (issue 14)."""
        return campaigns_store.release_held(self.engine, name)

    def send_question(self, name: str) -> SendQuestion:
        with session_scope(self.engine) as s:
            c = campaigns_store.get(s, name)
            return SendQuestion(
                name=c.name,
                status=c.status,
                count=drafts.audience_count(s, c),
                purpose=Kind(c.kind).purpose,
            )

    # --- preview -------------------------------------------------------------

    def preview(self, name: str, email: str = "") -> PreviewResult:
        with session_scope(self.engine) as s:
            c = campaigns_store.get(s, name)
            contact = drafts.preview_contact(s, c, email)
            recipient = Recipient.from_contact(contact) if contact is not None else None
        stand_in = ""
        if recipient is None and email.strip():
            recipient = Recipient(0, email.strip(), "", {})
            stand_in = "not a contact: rendered for the address as typed"
        elif recipient is None:
            recipient = SAMPLE_RECIPIENT
            stand_in = "nobody in the audience yet: a sample person stands in"
        try:
            _raw, msg = self.render_preview(c, recipient)
        except TemplateProblem as exc:
            return PreviewResult(recipient.email, stand_in, problem=str(exc))
        skip = {"content-type", "mime-version", "content-transfer-encoding"}
        headers = [(k, str(v)) for k, v in msg.items() if k.lower() not in skip]
        text = msg.get_body(preferencelist=("plain",))
        html = msg.get_body(preferencelist=("html",))
        return PreviewResult(
            recipient=recipient.email,
            stand_in=stand_in,
            headers=headers,
            text=text.get_content() if text is not None else "",  # type: ignore[attr-defined]
            html=html.get_content() if html is not None else "",  # type: ignore[attr-defined]
        )

    def open_html(self, html: str, name: str) -> tuple[Path, bool]:
        """Write a preview's HTML part to a file and open it; (the file, whether it opened)."""
        folder = self.preview_dir or Path(tempfile.gettempdir())
        folder.mkdir(parents=True, exist_ok=True)
        slug = "".join(ch if ch.isalnum() else "-" for ch in name.lower()).strip("-")
        with tempfile.NamedTemporaryFile(
            "w",
            encoding="utf-8",
            suffix=".html",
            prefix=f"preview-{slug or 'campaign'}-",
            dir=folder,
            delete=False,
        ) as handle:
            handle.write(html)
        path = Path(handle.name)
        return path, bool(self.open_browser(path.as_uri()))

    # --- contacts ------------------------------------------------------------

    def search_contacts(
        self, text: str, purpose: Purpose | None, country: str, limit: int = 200
    ) -> list[ContactRow]:
        with session_scope(self.engine) as s:
            return contacts.search(s, text, purpose=purpose, country=country, limit=limit)

    def profile(self, email: str) -> dict[str, Any]:
        with session_scope(self.engine) as s:
            return contacts.profile(s, email)

    def record_consent(self, email: str, purpose: Purpose, granted: bool, note: str) -> bool:
        """An operator's change (letter, phone, email); False when it changes nothing."""
        with session_scope(self.engine) as s:
            event = contacts.record_operator_change(
                s,
                email,
                purpose,
                granted=granted,
                operator=self.settings.effective_operator,
                note=note,
                policy_version=self.settings.policy_version,
            )
            return event is not None

    def erase(self, email: str) -> bool:
        with session_scope(self.engine) as s:
            return suppression.forget(s, email)
