"""`campaigns send-due` and `campaign send`: which campaigns to run, and recovery.

Safe to run twice at once: on SQLite the second run finds the send lock taken and
leaves; on PostgreSQL the runs share the work through SKIP LOCKED claims. Either way
the delivery snapshot (one row per person) means nobody gets a campaign twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Engine

from campaigns import campaign as campaigns_store
from campaigns import deliveries
from campaigns.config import Settings
from campaigns.db import session_scope
from campaigns.worker_lock import WorkerLock
from mailer.engine import ProgressCallback, RunReport, SendEngine


class SendBusy(Exception):
    """Another worker holds the SQLite send lock."""


@dataclass
class DueReport:
    busy: bool = False
    requeued: int = 0
    in_doubt: int = 0
    started: list[str] = field(default_factory=list)
    runs: list[RunReport] = field(default_factory=list)


def send_due(
    settings: Settings,
    db: Engine,
    *,
    progress: ProgressCallback | None = None,
    worker: str | None = None,
) -> DueReport:
    """Start every scheduled campaign whose time has come and run every sending one."""
    engine = SendEngine(settings, db, worker=worker, progress=progress)
    report = DueReport()
    with WorkerLock(db, engine.worker) as lock:
        if not lock.acquire():
            report.busy = True
            return report
        report.requeued, report.in_doubt = deliveries.recover(db, lock.dead_workers())
        due, _ = deliveries.due_campaign_ids(db)
        for campaign_id in due:
            if deliveries.start(db, campaign_id) is not None:
                report.started.append(str(campaign_id))
        _, running = deliveries.due_campaign_ids(db)
        for campaign_id in running:
            report.runs.append(engine.run_campaign(campaign_id))
    return report


def send_now(
    settings: Settings,
    db: Engine,
    name: str,
    *,
    progress: ProgressCallback | None = None,
    worker: str | None = None,
) -> RunReport:
    """Start a draft or scheduled campaign at once (or resume a sending or paused one)."""
    engine = SendEngine(settings, db, worker=worker, progress=progress)
    with session_scope(db) as s:
        campaign = campaigns_store.get(s, name)
        if campaign.status == campaigns_store.PAUSED:
            campaign = campaigns_store.resume(s, name)  # sending it again goes on from there
        if campaign.status not in {
            campaigns_store.DRAFT,
            campaigns_store.SCHEDULED,
            campaigns_store.SENDING,
        }:
            raise campaigns_store.CampaignError(
                f"campaign {campaign.name!r} is {campaign.status}; it cannot be sent"
            )
        campaign_id = campaign.id
        assert campaign_id is not None
    # Compile first: a template error stops here, before anyone is snapshotted.
    engine.compile(campaign)
    with WorkerLock(db, engine.worker) as lock:
        if not lock.acquire():
            raise SendBusy("another send is running on this database; try again when it ends")
        deliveries.recover(db, lock.dead_workers())
        deliveries.start(db, campaign_id)
        return engine.run_campaign(campaign_id)
