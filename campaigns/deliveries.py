"""The deliveries table: audience snapshot, claims, progress marks and crash recovery
(DESIGN.md §4). All the send engine's SQL lives here.

A delivery moves pending → claimed → sending → sent (or failed, skipped, in_doubt).
`claimed` rows have not been handed to SMTP: after a crash they go back to pending.
`sending` rows may have been accepted by the server: after a crash they become
`in_doubt`, are reported, and are never re-sent. The engine keeps at most one
`sending` row per open connection, so a crash leaves at most that many in doubt.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import (
    Connection,
    Engine,
    and_,
    bindparam,
    exists,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.orm import aliased
from sqlmodel import Session

from campaigns import addresses, returns, suppression
from campaigns.bounce_reasons import GROUP, Group, Reason
from campaigns.campaign import SCHEDULED, SENDING, SENT
from campaigns.models import Campaign, Contact, Delivery, ReturnEvent, utcnow
from campaigns.purposes import ConsentState, Kind, SuppressionReason
from campaigns.segments import Segment, where_clause

PENDING, CLAIMED, SENDING_ROW, DELIVERED, FAILED, SKIPPED, IN_DOUBT, HELD = (
    "pending",
    "claimed",
    "sending",
    "sent",
    "failed",
    "skipped",
    "in_doubt",
    # Held back: its receiving domain kept blocking us during the send (issue 14). Not
    # claimed until the operator releases it; the campaign stays open meanwhile.
    "held",
)
OPEN_STATES = (PENDING, CLAIMED, SENDING_ROW, HELD)

D = Delivery.__table__  # type: ignore[attr-defined]
C = Contact.__table__  # type: ignore[attr-defined]
K = Campaign.__table__  # type: ignore[attr-defined]


def audience_segment(campaign: Campaign) -> Segment:
    """The campaign's stored filters with the purpose its kind maps to."""
    seg = Segment.from_json(campaign.segment or {})
    return Segment.from_json({**seg.to_json(), "purpose": Kind(campaign.kind).purpose.value})


def start(engine: Engine, campaign_id: int, now: datetime | None = None) -> int | None:
    """Move a due campaign to `sending` and snapshot its audience, in one transaction.

    Returns the number of deliveries created, or None if another worker started it
    first (or it is no longer scheduled). Safe to race: only one caller wins.
    """
    now = now or utcnow()
    with engine.begin() as conn:
        won = conn.execute(
            update(K)
            .where(K.c.id == campaign_id, K.c.status.in_([SCHEDULED, "draft"]))
            .values(status=SENDING, started_at=now, updated_at=now)
        ).rowcount
        if not won:
            return None
        row = conn.execute(select(K.c.kind, K.c.segment).where(K.c.id == campaign_id)).one()
        campaign = Campaign(id=campaign_id, name="", kind=row.kind, subject="", segment=row.segment)
        segment = audience_segment(campaign)
        event_col = C.c[f"{segment.purpose.value}_event_id"]  # type: ignore[union-attr]
        already = exists().where(D.c.campaign_id == campaign_id, D.c.contact_id == C.c.id)
        # INSERT … SELECT: the snapshot never passes through Python, so memory stays flat.
        source = (
            select(
                literal(campaign_id),
                C.c.id,
                literal(PENDING),
                event_col,
                literal(0),
                literal(""),
                literal(""),
                literal(""),
            )
            .select_from(C)
            .where(where_clause(segment), ~already)
            .order_by(C.c.id)
        )
        cols = [
            "campaign_id",
            "contact_id",
            "status",
            "consent_event_id",
            "attempts",
            "claimed_by",
            "error",
            "message_id",
        ]
        # SQLAlchemy counts an INSERT's rows only when asked (PostgreSQL gave -1).
        snapshot = insert(D).from_select(cols, source).execution_options(preserve_rowcount=True)
        return conn.execute(snapshot).rowcount


def due_campaign_ids(engine: Engine, now: datetime | None = None) -> tuple[list[int], list[int]]:
    """(scheduled campaigns whose time has come, campaigns already sending)."""
    now = now or utcnow()
    with engine.connect() as conn:
        due = conn.execute(
            select(K.c.id)
            .where(K.c.status == SCHEDULED, K.c.scheduled_at <= now)
            .order_by(K.c.scheduled_at, K.c.id)
        ).scalars()
        due_ids = list(due)
        running = list(conn.execute(select(K.c.id).where(K.c.status == SENDING)).scalars())
    return due_ids, running


class Claimed(NamedTuple):
    """A delivery handed to one worker, with what building the message needs."""

    delivery_id: int
    contact_id: int
    email: str
    name: str
    attributes: dict[str, str]
    consent_event_id: int | None
    attempts: int


@dataclass(frozen=True)
class ClaimResult:
    ready: list[Claimed]
    # Claimed but no longer eligible: marked skipped, never sent.
    skipped: int
    # False once the campaign is paused, cancelled or finished.
    active: bool
    # The campaign's status when it is no longer active (why the claim stopped).
    status: str = SENDING


def claim(
    engine: Engine, campaign_id: int, worker: str, limit: int, now: datetime | None = None
) -> ClaimResult:
    """Claim up to `limit` due pending deliveries and re-check each one's eligibility.

    Skipped rows (consent withdrawn, suppressed, erased) are marked so. Rows are
    claimed with FOR UPDATE SKIP LOCKED on PostgreSQL so several workers share a
    campaign; SQLite serialises writers with BEGIN IMMEDIATE.
    """
    now = now or utcnow()
    with engine.begin() as conn:
        purpose = conn.execute(
            select(K.c.kind).where(K.c.id == campaign_id, K.c.status == SENDING)
        ).scalar()
        if purpose is None:  # paused, cancelled or finished meanwhile
            status = conn.execute(select(K.c.status).where(K.c.id == campaign_id)).scalar()
            return ClaimResult([], 0, active=False, status=status or "deleted")
        state_col = C.c[Kind(purpose).purpose.value]
        event_col = C.c[f"{Kind(purpose).purpose.value}_event_id"]
        # Pick and claim in one statement (UPDATE … RETURNING: SQLite ≥ 3.35, PostgreSQL)
        # rather than a SELECT of the ids and an UPDATE listing them all again; the proof
        # of consent is the event that allowed the message when it went. Driver SQL like
        # the SELECT below: building and compiling it each claim cost ~2 µs a message.
        mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
        lock = "" if conn.dialect.name == "sqlite" else " FOR UPDATE SKIP LOCKED"
        at = _driver_time(conn, now)
        picked = _driver_rows(
            conn,
            (
                f"UPDATE {D.name} SET status = {mark}, claimed_by = {mark}, claimed_at = {mark},"
                f" consent_event_id = (SELECT c.{event_col.name} FROM {C.name} AS c"
                f" WHERE c.id = {D.name}.contact_id)"
                f" WHERE {D.name}.id IN (SELECT d.id FROM {D.name} AS d"
                f" WHERE d.campaign_id = {mark} AND d.status = {mark}"
                f" AND (d.next_attempt_at IS NULL OR d.next_attempt_at <= {mark})"
                f" ORDER BY d.id LIMIT {mark}{lock}) RETURNING {D.name}.id"
            ),
            (CLAIMED, worker, at, campaign_id, PENDING, at, limit),
        )
        ids = sorted(row[0] for row in picked)
        if not ids:
            return ClaimResult([], 0, active=True)
        # Driver SQL, rows as plain tuples: the built SELECT (expanding IN list, JSON and
        # row processing) cost ~3-4 µs a message (bench/send.py). `attributes` comes back
        # as JSON text on SQLite and decoded on PostgreSQL; _attributes takes both.
        rows = _driver_rows(
            conn,
            f"SELECT d.id, d.contact_id, d.attempts, c.email, c.name, c.attributes,"
            f" c.suppressed, c.{state_col.name}, c.{event_col.name}"
            f" FROM {D.name} AS d LEFT OUTER JOIN {C.name} AS c ON c.id = d.contact_id"
            f" WHERE d.id IN ({','.join([mark] * len(ids))}) ORDER BY d.id",
            ids,
        )
        ready: list[Claimed] = []
        skipped: list[dict[str, Any]] = []
        for delivery_id, contact_id, attempts, email, name, attrs, suppressed, st, ev in rows:
            reason = _ineligible(email, st, suppressed)
            if reason:
                skipped.append({"b_id": delivery_id, "b_error": reason})
                continue
            ready.append(
                Claimed(delivery_id, contact_id, email, name, _attributes(attrs), ev, attempts)
            )
        if skipped:
            conn.execute(
                update(D).where(_BY_ID).values(status=SKIPPED, error=bindparam("b_error")),
                skipped,
            )
    return ClaimResult(ready, len(skipped), active=True)


def _driver_rows(conn: Connection, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
    """Rows of driver SQL as plain tuples, on `conn`'s connection (so in its transaction)."""
    cur = conn.connection.cursor()
    try:
        cur.execute(sql, params)
        return list(cur.fetchall())
    finally:
        cur.close()


def _attributes(value: Any) -> dict[str, str]:
    if isinstance(value, str):  # JSON text (SQLite)
        return {} if value == "{}" else dict(json.loads(value) or {})
    return dict(value or {})


def _ineligible(email: str | None, state: str | None, suppressed: str | None) -> str:
    if email is None:
        return "contact erased"
    if suppressed:
        return f"suppressed ({suppressed})"
    if state != ConsentState.GRANTED:
        return "consent withdrawn"
    if not addresses.is_valid(email):
        return "invalid address"
    return ""


@dataclass
class Progress:
    """One group commit: what the connections did since the last one."""

    sending: list[int] = field(default_factory=list)
    sent: list[int] = field(default_factory=list)
    # (delivery id, error, next attempt time or None for a permanent failure)
    retry: list[tuple[int, str, datetime]] = field(default_factory=list)
    failed: list[tuple[int, str]] = field(default_factory=list)
    # Connection dropped after the whole message went out: maybe accepted.
    in_doubt: list[tuple[int, str]] = field(default_factory=list)
    # The server refused the recipient for good: failed, and the address suppressed.
    bounced: list[tuple[int, str, str]] = field(default_factory=list)
    # The server refused the message for good for a reason that is not the address (a
    # block, a full mailbox ...): failed, and counted as a return event of that reason.
    # (delivery id, address, error, campaigns.bounce_reasons.Reason value)
    refused: list[tuple[int, str, str, str]] = field(default_factory=list)
    # The reason (campaigns.bounce_reasons.Reason value) of each bounced delivery.
    reasons: dict[int, str] = field(default_factory=dict)
    # Never reached the server through no fault of its own (the server took no more
    # connections): pending again at once, no attempt counted.
    requeue: list[tuple[int, str]] = field(default_factory=list)
    # Receiving domains that keep blocking us: their pending deliveries are held back,
    # and so are these claimed ones (delivery id, domain).
    hold_domains: list[str] = field(default_factory=list)
    held: list[tuple[int, str]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(
            self.sending
            or self.sent
            or self.retry
            or self.failed
            or self.in_doubt
            or self.bounced
            or self.refused
            or self.requeue
            or self.hold_domains
            or self.held
        )

    def merge(self, other: Progress) -> None:
        self.sending += other.sending
        self.sent += other.sent
        self.retry += other.retry
        self.failed += other.failed
        self.in_doubt += other.in_doubt
        self.bounced += other.bounced
        self.refused += other.refused
        self.reasons.update(other.reasons)
        self.requeue += other.requeue
        self.hold_domains += other.hold_domains
        self.held += other.held


def commit_progress(
    bind: Engine | Connection,
    campaign_id: int,
    progress: Progress,
    now: datetime | None = None,
    soft_limit: tuple[int, int] = (3, 14),
) -> None:
    """Write one group of marks in a single transaction.

    `bind` may be a Connection the caller keeps for a whole run (the send engine's
    group committer does): checking one out of the pool and back in (with its reset
    rollback) for every commit cost about a fifth of its CPU (bench/send.py).
    """
    now = now or utcnow()
    if isinstance(bind, Connection) and bind.dialect.name == "sqlite" and _only_marks(progress):
        _commit_marks_sqlite(bind, progress, now)
        return
    by_id = _BY_ID
    with bind.begin() as txn:
        conn = txn if isinstance(bind, Engine) else bind
        # The hot path: one plain statement per kind of mark. Built SQL (expanding IN
        # lists, type processing) cost ~0.7 ms of CPU a commit; driver SQL a tenth of it.
        if progress.sent:
            _mark(conn, DELIVERED, progress.sent, sent_at=now)
        if progress.retry:
            conn.execute(
                update(D)
                .where(by_id)
                .values(
                    status=PENDING,
                    attempts=D.c.attempts + 1,
                    error=bindparam("b_error"),
                    next_attempt_at=bindparam("b_next"),
                    claimed_by="",
                ),
                [{"b_id": i, "b_error": e[:1000], "b_next": t} for i, e, t in progress.retry],
            )
        if progress.failed:
            conn.execute(
                update(D)
                .where(by_id)
                .values(status=FAILED, attempts=D.c.attempts + 1, error=bindparam("b_error")),
                [{"b_id": i, "b_error": e[:1000]} for i, e in progress.failed],
            )
        if progress.bounced:
            conn.execute(
                update(D)
                .where(by_id)
                .values(status=FAILED, attempts=D.c.attempts + 1, error=bindparam("b_error")),
                [{"b_id": i, "b_error": e[:1000]} for i, _addr, e in progress.bounced],
            )
            with Session(bind=conn) as session:
                for delivery_id, address, error in progress.bounced:
                    suppression.suppress(
                        session,
                        address,
                        SuppressionReason.HARD_BOUNCE,
                        source="bounce",
                        campaign_id=campaign_id,
                        delivery_id=delivery_id,
                    )
                    reason = progress.reasons.get(delivery_id, Reason.USER_UNKNOWN.value)
                    session.add(
                        refusal_event(
                            session, campaign_id, delivery_id, address, reason, now, error
                        )
                    )
                session.flush()
        if progress.refused:
            conn.execute(
                update(D)
                .where(by_id)
                .values(status=FAILED, attempts=D.c.attempts + 1, error=bindparam("b_error")),
                [{"b_id": i, "b_error": e[:1000]} for i, _addr, e, _r in progress.refused],
            )
            with Session(bind=conn) as session:
                for delivery_id, address, error, reason in progress.refused:
                    event = refusal_event(
                        session, campaign_id, delivery_id, address, reason, now, error
                    )
                    session.add(event)
                    session.flush()
                    # A full mailbox at the send counts toward the soft-bounce limit
                    # (soft_limit: how many within how many days) like one that came back.
                    limit, days = soft_limit
                    if event.kind == "soft_bounce" and (
                        returns.soft_bounces_within(session, event.address_hash, days, now) >= limit
                    ):
                        suppression.suppress(
                            session,
                            address,
                            SuppressionReason.SOFT_BOUNCES,
                            source="bounce",
                            campaign_id=campaign_id,
                            delivery_id=delivery_id,
                        )
                session.flush()
        if progress.requeue:
            conn.execute(
                update(D)
                .where(by_id)
                .values(
                    status=PENDING,
                    claimed_by="",
                    error=bindparam("b_error"),
                    # Due now, not NULL: next_retry_at must see it for this run to wait.
                    next_attempt_at=now,
                ),
                [{"b_id": i, "b_error": e[:1000]} for i, e in progress.requeue],
            )
        if progress.held:
            conn.execute(
                update(D)
                .where(by_id)
                .values(status=HELD, claimed_by="", error=bindparam("b_error")),
                [{"b_id": i, "b_error": _held_note(d)} for i, d in progress.held],
            )
        for domain in progress.hold_domains:
            conn.execute(
                update(D)
                .where(
                    D.c.campaign_id == campaign_id,
                    D.c.status == PENDING,
                    D.c.contact_id.in_(select(C.c.id).where(_at_domain(domain))),
                )
                .values(status=HELD, error=_held_note(domain))
            )
        if progress.in_doubt:
            conn.execute(
                update(D).where(by_id).values(status=IN_DOUBT, error=bindparam("b_error")),
                [{"b_id": i, "b_error": e[:1000]} for i, e in progress.in_doubt],
            )
        if progress.sending:
            _mark(conn, SENDING_ROW, progress.sending)


# Built once: making the expression anew cost ~14% of a commit (bench/send.py).
_BY_ID = D.c.id == bindparam("b_id")


def refusal_event(
    session: Session,
    campaign_id: int,
    delivery_id: int,
    address: str,
    reason: str,
    now: datetime,
    error: str = "",
) -> ReturnEvent:
    """A send-time refusal counted like a bounce of the same reason: a dead address as a
    hard bounce, a block by its receiving domain, a full mailbox toward the soft limit."""
    try:
        group = GROUP[Reason(reason)]
    except ValueError:
        group = Group.UNKNOWN
    kind = {Group.ADDRESS: "hard_bounce", Group.SENDER: "block"}.get(group, "soft_bounce")
    return ReturnEvent(
        # One per delivery: a refusal is final, so it can only happen once.
        message_hash=hashlib.sha256(f"smtp-refusal:{delivery_id}".encode()).hexdigest(),
        kind=kind,
        address_hash=suppression.hash_for(session, address),
        status="",
        occurred_at=now,
        campaign_id=campaign_id,
        delivery_id=delivery_id,
        reason=reason,
        reason_group=group.value,
        domain=address.rpartition("@")[2].lower()[:255] if kind == "block" else "",
        diagnostic=addresses.redact_cut(error, 300),
        detector="smtp",
    )


def _held_note(domain: str) -> str:
    return f"held back: {domain.lower()} kept blocking this send"


def _at_domain(domain: str) -> Any:
    # email_key is the address as compared (lower case); the domain has no LIKE
    # wildcards but "_" is escaped all the same.
    return C.c.email_key.endswith("@" + domain.lower(), autoescape=True)


def held_by_domain(engine: Engine, campaign_id: int) -> dict[str, int]:
    """How many deliveries of the campaign are held back, by receiving domain."""
    domain = func.substr(C.c.email_key, func.instr(C.c.email_key, "@") + 1)
    if engine.dialect.name == "postgresql":
        domain = func.split_part(C.c.email_key, "@", 2)
    with engine.connect() as conn:
        rows = conn.execute(
            select(domain, func.count())
            .select_from(D.join(C, D.c.contact_id == C.c.id))
            .where(D.c.campaign_id == campaign_id, D.c.status == HELD)
            .group_by(domain)
            .order_by(func.count().desc())
        )
        return {str(d): int(n) for d, n in rows}


def release_held(engine: Engine, campaign_id: int, domain: str = "") -> int:
    """Let held deliveries go on (all, or one domain's): pending again, due now."""
    where = [D.c.campaign_id == campaign_id, D.c.status == HELD]
    if domain:
        where.append(D.c.contact_id.in_(select(C.c.id).where(_at_domain(domain))))
    with engine.begin() as conn:
        return conn.execute(
            update(D).where(*where).values(status=PENDING, error="", next_attempt_at=None)
        ).rowcount


def _only_marks(progress: Progress) -> bool:
    return not (
        progress.hold_domains
        or progress.held
        or progress.retry
        or progress.failed
        or progress.refused
        or progress.bounced
        or progress.in_doubt
        or progress.requeue
    )


def _commit_marks_sqlite(conn: Connection, progress: Progress, now: datetime) -> None:
    """The send engine's hot path on SQLite: `sent` and `sending` marks in one transaction
    straight on the driver connection. SQLAlchemy's begin and commit (events, transaction
    objects, the reset bookkeeping) were ~40% of a commit's CPU; the SQL is the same."""
    raw = conn.connection.dbapi_connection
    assert raw is not None
    cur = raw.cursor()
    cur.execute("BEGIN IMMEDIATE")  # as campaigns.db begins every SQLite transaction
    try:
        if progress.sent:
            cur.execute(*_mark_sql("?", DELIVERED, progress.sent, _sqlite_time(now)))
        if progress.sending:
            cur.execute(*_mark_sql("?", SENDING_ROW, progress.sending))
        cur.execute("COMMIT")
    except BaseException:
        if raw.in_transaction:
            raw.rollback()
        raise
    finally:
        cur.close()


def _sqlite_time(when: datetime) -> str:
    # As the UTCDateTime column stores it on SQLite: naive UTC text.
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _mark_sql(
    mark: str, status: str, ids: list[int], sent_at: datetime | str | None = None
) -> tuple[str, tuple[Any, ...]]:
    """UPDATE deliveries SET status … WHERE id IN (…) as driver SQL and its parameters."""
    marks = ",".join([mark] * len(ids))
    if sent_at is None:
        return f"UPDATE deliveries SET status = {mark} WHERE id IN ({marks})", (status, *ids)
    return (
        f"UPDATE deliveries SET status = {mark}, sent_at = {mark} WHERE id IN ({marks})",
        (status, sent_at, *ids),
    )


def _mark(conn: Any, status: str, ids: list[int], sent_at: datetime | None = None) -> None:
    """UPDATE deliveries SET status … WHERE id IN (…), as driver SQL."""
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    when = None if sent_at is None else _driver_time(conn, sent_at)
    conn.exec_driver_sql(*_mark_sql(mark, status, ids, when))


def _driver_time(conn: Any, when: datetime) -> datetime | str:
    """A time as the UTCDateTime column stores it: naive UTC text on SQLite, aware UTC
    elsewhere (for driver SQL, which skips the column type)."""
    return _sqlite_time(when) if conn.dialect.name == "sqlite" else when.astimezone(UTC)


def hold_checkpoints(conn: Connection) -> int | None:
    """SQLite: let no commit on `conn` checkpoint the WAL itself (the send engine runs
    `checkpoint` in a thread instead). Returns the setting to give back, None elsewhere."""
    if conn.dialect.name != "sqlite":
        return None
    # On the driver connection: through SQLAlchemy a PRAGMA would begin a transaction.
    raw = conn.connection.dbapi_connection
    assert raw is not None
    before = int(raw.execute("PRAGMA wal_autocheckpoint").fetchone()[0])
    raw.execute("PRAGMA wal_autocheckpoint=0")
    return before


def restore_checkpoints(conn: Connection, before: int | None) -> None:
    raw = conn.connection.dbapi_connection
    if before is not None and raw is not None:
        raw.execute(f"PRAGMA wal_autocheckpoint={int(before)}")


def checkpoint(engine: Engine) -> None:
    """Copy the WAL back into the SQLite file without waiting for anyone (PASSIVE)."""
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute("PRAGMA wal_checkpoint(PASSIVE)")
        cur.fetchall()
        cur.close()
    finally:
        raw.close()


def release(engine: Engine, delivery_ids: Sequence[int]) -> None:
    """Give back claims that were never handed to SMTP (a clean stop)."""
    if not delivery_ids:
        return
    with engine.begin() as conn:
        conn.execute(
            update(D)
            .where(D.c.id.in_(list(delivery_ids)), D.c.status == CLAIMED)
            .values(status=PENDING, claimed_by="")
        )


def recover(engine: Engine, dead_workers: Iterable[str] | None = None) -> tuple[int, int]:
    """After a crash: claims go back to pending, messages in flight become in doubt.

    With `dead_workers` None every claim is recovered (SQLite, where the send lock
    proves no other worker runs); otherwise only those of the named workers.
    Returns (requeued, in doubt).
    """
    owner = [] if dead_workers is None else [D.c.claimed_by.in_(list(dead_workers))]
    with engine.begin() as conn:
        requeued = conn.execute(
            update(D).where(D.c.status == CLAIMED, *owner).values(status=PENDING, claimed_by="")
        ).rowcount
        doubt = conn.execute(
            update(D)
            .where(D.c.status == SENDING_ROW, *owner)
            .values(status=IN_DOUBT, error="worker stopped while the message was in flight")
        ).rowcount
    return requeued, doubt


def workers_with_claims(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                select(D.c.claimed_by).where(D.c.status.in_([CLAIMED, SENDING_ROW])).distinct()
            ).scalars()
        )


def next_retry_at(engine: Engine, campaign_id: int) -> datetime | None:
    """When the earliest waiting retry is due, if any pending row waits."""
    with engine.connect() as conn:
        return conn.execute(
            select(func.min(D.c.next_attempt_at)).where(
                D.c.campaign_id == campaign_id, D.c.status == PENDING
            )
        ).scalar()


def finish_if_done(engine: Engine, campaign_id: int, now: datetime | None = None) -> bool:
    """Mark the campaign sent once no delivery is open; True if it is (now) sent."""
    now = now or utcnow()
    d2 = aliased(Delivery)
    open_rows = exists().where(
        d2.campaign_id == campaign_id,  # type: ignore[arg-type]
        d2.status.in_(OPEN_STATES),  # type: ignore[attr-defined]
    )
    with engine.begin() as conn:
        conn.execute(
            update(K)
            .where(and_(K.c.id == campaign_id, K.c.status == SENDING, ~open_rows))
            .values(status=SENT, finished_at=now, updated_at=now)
        )
        return conn.execute(select(K.c.status).where(K.c.id == campaign_id)).scalar() == SENT


def backoff(attempts: int, base_seconds: float, now: datetime | None = None) -> datetime:
    """Exponential backoff: base, 2×base, 4×base … capped at an hour."""
    delay = min(base_seconds * (2 ** max(attempts, 0)), 3600.0)
    return (now or utcnow()) + timedelta(seconds=delay)
