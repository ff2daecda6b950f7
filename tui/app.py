"""The Textual app, built by a factory that is handed its services (DESIGN.md §5)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine, func
from sqlmodel import Session, select
from textual.app import App, ComposeResult
from textual.widgets import DataTable, Footer, Header, Static

from campaigns import campaign
from campaigns.config import Settings
from campaigns.models import Contact
from campaigns.purposes import Purpose


@dataclass(frozen=True)
class Services:
    settings: Settings
    engine: Engine


class CampaignsApp(App[int]):
    TITLE = "campaigns"
    BINDINGS = [("q", "quit", "Quit"), ("r", "refresh", "Refresh")]

    def __init__(self, services: Services) -> None:
        super().__init__()
        self.services = services

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="consent-summary")
        yield DataTable(id="campaigns", cursor_type="row")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#campaigns", DataTable)
        table.add_columns("Name", "Kind", "Status", "Scheduled", "Sent", "Total")
        self.action_refresh()

    def action_refresh(self) -> None:
        with Session(self.services.engine) as s:
            rows = [campaign.summary(s, c) for c in campaign.all_campaigns(s)]
            eligible = {
                p: s.exec(
                    select(func.count())
                    .select_from(Contact)
                    .where(getattr(Contact, p.value) == "granted", Contact.suppressed.is_(None))  # type: ignore[union-attr]
                ).one()
                for p in Purpose
            }
            suppressed = s.exec(
                select(func.count()).select_from(Contact).where(Contact.suppressed.is_not(None))  # type: ignore[union-attr]
            ).one()
        self.query_one("#consent-summary", Static).update(
            f"May receive: promotions {eligible[Purpose.PROMOTIONAL]}, "
            f"surveys {eligible[Purpose.RESEARCH]}, "
            f"third-party offers {eligible[Purpose.THIRD_PARTY]}; suppressed {suppressed}"
        )
        table = self.query_one("#campaigns", DataTable)
        table.clear()
        for r in rows:
            table.add_row(
                r["name"],
                r["kind"],
                r["status"],
                r["scheduled_at"] or "",
                str(r["counts"]["sent"]),
                str(r["counts"]["total"]),
            )


def create_app(services: Services) -> CampaignsApp:
    return CampaignsApp(services)


def run_app(settings: Settings, *, engine: Engine) -> int:
    create_app(Services(settings=settings, engine=engine)).run()
    return 0
