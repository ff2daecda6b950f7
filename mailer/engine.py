"""The send engine (DESIGN.md §4): claim → build → send → mark, crash-safe.

One asyncio loop per run. A claimer task claims small batches (eligibility is checked
again in the claim, just before the message goes), builds each message from the
campaign compiled once, and queues it. One task per SMTP connection takes messages
from the queue. Before a message is handed to SMTP its row is marked `sending` in a
group commit that also records the connection's previous outcome, so each connection
has at most one message in doubt at any time. When another message waits, a connection
takes it before sending the current one, so that SMTP can announce it (MAIL, RCPT, DATA)
in the same write as the current body; its body, the only part that can make it a
delivery, still goes after its own `sending` commit. Progress is reported through a
callback.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypeVar

from sqlalchemy import Connection as DbConnection
from sqlalchemy import Engine
from sqlmodel import Session

from campaigns import deliveries
from campaigns.bounce_reasons import is_block, is_hard
from campaigns.config import Settings
from campaigns.deliveries import ClaimResult, Progress
from campaigns.models import Campaign, utcnow
from mailer.message import CompiledCampaign, Recipient
from mailer.reasons import reason_for
from mailer.render import compile_campaign
from mailer.tokens import signer_from_settings
from mailer.transport import (
    ConnectionLost,
    MaildirTransport,
    RateLimiter,
    SendOutcome,
    SmtpConnection,
    TransportError,
    parse_smtp_url,
)

if TYPE_CHECKING:
    from mailer.dkim import DkimSigner


@dataclass
class RunReport:
    """What one run did to one campaign (this worker's share), for the UI and the CLI."""

    campaign_id: int
    name: str
    total: int = 0
    sent: int = 0
    failed: int = 0
    skipped: int = 0
    in_doubt: int = 0
    retrying: int = 0
    finished: bool = False
    stopped: str = ""
    # Deliveries held back because their receiving domain kept blocking us, and those
    # domains, most held first (issue 14).
    held: int = 0
    held_domains: tuple[str, ...] = ()


log = logging.getLogger("campaigns.send")

ProgressCallback = Callable[[RunReport], None]
T = TypeVar("T")


class Connection(Protocol):
    is_open: bool

    async def connect(self) -> None: ...
    async def send(
        self,
        envelope_from: str,
        recipient: str,
        data: bytes,
        *,
        then: tuple[str, str, bytes] | None = None,
    ) -> SendOutcome: ...
    async def close(self) -> None: ...


class _Refused(Exception):
    """The server would not take another connection while others of this run are open."""


class _Item(NamedTuple):  # a tuple: a frozen dataclass cost ~1 µs more a message
    delivery_id: int
    email: str
    envelope_from: str
    data: bytes
    attempts: int


# Loop passes with no new marks after which the committer stops waiting for more.
_SPINS = 4
# SQLite: commits between two WAL checkpoints run in a thread. A commit dirties ~6 pages,
# so this keeps the WAL under SQLite's own 1,000-page mark.
_CHECKPOINT_EVERY = 100


class _GroupCommitter:
    """Collects marks from all connections and writes them in as few commits as it can."""

    def __init__(self, db: Engine, campaign_id: int, soft_limit: tuple[int, int] = (3, 14)) -> None:
        self.db = db
        self.campaign_id = campaign_id
        self.soft_limit = soft_limit  # soft bounces that suppress, within how many days
        self._batch = Progress()
        self._waiters: list[asyncio.Future[None]] = []
        self._wake = asyncio.Event()
        self._closing = False
        # How many connections may hand in marks: no need to wait once all have.
        self.expected = 1
        # One connection for the whole run, not one from the pool per commit.
        self._conn: DbConnection | None = None
        # On SQLite a commit that crosses the WAL's checkpoint mark copies the WAL into
        # the file (and fsyncs) before it returns, stalling every connection: here that
        # is done by a thread, where SQLite runs without the GIL (bench/README.md).
        self._autocheckpoint: int | None = None
        self._commits = 0
        self._checkpoint: asyncio.Future[None] | None = None
        # Set when run() has died: nobody would ever answer a later submit.
        self._failed: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def submit(self, progress: Progress) -> None:
        if not progress:
            return
        if self._failed is not None:
            raise self._failed
        if self._loop is None:  # kept: on Python 3.11 each lookup is a getpid() call
            self._loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = self._loop.create_future()
        self._batch.merge(progress)
        self._waiters.append(fut)
        self._wake.set()
        await fut

    async def run(self, on_commit: Callable[[Progress], None]) -> None:
        try:
            await self._run(on_commit)
        except BaseException as exc:
            # A connection waiting for its marks must hear of it, now and later, or it
            # would wait for ever (and the run with it).
            self._failed = exc
            waiters, self._waiters = self._waiters, []
            for w in waiters:
                if not w.done():
                    w.set_exception(exc)
            raise

    async def _run(self, on_commit: Callable[[Progress], None]) -> None:
        while True:
            await self._wake.wait()
            # Let every connection that is ready hand in its marks first: fewer, larger
            # commits (a commit costs far more than the rows in it). Wait while marks keep
            # arriving, until every connection has handed in or a few passes bring none:
            # ~8 messages a commit instead of ~4 (bench/README.md, send.py).
            n = len(self._waiters)
            idle = 0
            while idle < _SPINS and len(self._waiters) < self.expected:
                await asyncio.sleep(0)
                idle = idle + 1 if len(self._waiters) == n else 0
                n = len(self._waiters)
            self._wake.clear()
            batch, waiters = self._batch, self._waiters
            self._batch, self._waiters = Progress(), []
            if batch:
                try:
                    if self._conn is None:
                        self._conn = self.db.connect()
                        self._autocheckpoint = deliveries.hold_checkpoints(self._conn)
                    await _db_call(
                        deliveries.commit_progress,
                        self._conn,
                        self.campaign_id,
                        batch,
                        None,
                        self.soft_limit,
                    )
                    self._maybe_checkpoint()
                except BaseException as exc:
                    for w in waiters:
                        if not w.done():
                            w.set_exception(exc)
                    raise
            # The marks are in: answer their connections before anything else can fail
            # (a progress callback that raises would otherwise leave them waiting).
            for w in waiters:
                if not w.done():
                    w.set_result(None)
            if batch:
                on_commit(batch)
            if self._closing and not self._batch:
                if self._checkpoint is not None:
                    await self._checkpoint
                return

    def _maybe_checkpoint(self) -> None:
        if self._autocheckpoint is None:
            return
        self._commits += 1
        if self._commits < _CHECKPOINT_EVERY or not (
            self._checkpoint is None or self._checkpoint.done()
        ):
            return
        self._commits = 0
        self._checkpoint = asyncio.ensure_future(asyncio.to_thread(_checkpoint, self.db))

    def close(self) -> None:
        self._closing = True
        self._wake.set()

    def release(self) -> None:
        """Give the run's connection back to the pool (after `run` has returned)."""
        if self._conn is not None:
            try:
                deliveries.restore_checkpoints(self._conn, self._autocheckpoint)
            finally:
                self._conn.close()
            self._conn = None


def _checkpoint(db: Engine) -> None:
    # A failed checkpoint loses nothing (the WAL only grows until the next one, and other
    # connections still checkpoint): say so, but don't stop a send that is going well.
    try:
        deliveries.checkpoint(db)
    except Exception as exc:
        log.warning("WAL checkpoint failed: %s", exc)


def run_loop(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on uvloop when it is installed: its transports write and poll
    with less Python per message (bench/send.py: see bench/README.md)."""
    try:
        import uvloop
    except ImportError:  # not on every platform: the standard loop works the same
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


class SendEngine:
    def __init__(
        self,
        settings: Settings,
        db: Engine,
        *,
        worker: str | None = None,
        progress: ProgressCallback | None = None,
        claim_size: int = 200,
    ) -> None:
        self.settings = settings
        self.db = db
        self.worker = worker or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.progress = progress
        # Claims run at most about a second ahead of the wire, so the eligibility check
        # in the claim stays "just before sending" and paced workers don't hoard work.
        rate = settings.send_rate
        self.claim_size = max(1, min(claim_size, int(rate / 2))) if rate > 0 else claim_size
        self.url = parse_smtp_url(settings.effective_smtp_url)
        self.signer = signer_from_settings(settings)
        # This run's connections that have been opened (to tell a server that is down
        # from one that takes fewer connections than `smtp_connections`).
        self._opened: set[Connection] = set()
        self._connecting = 0
        self._refusals = 0
        # Per receiving domain in this run: messages tried, blocks, and those held back.
        self._tries: Counter[str] = Counter()
        self._blocks: Counter[str] = Counter()
        self._held: set[str] = set()

    # ------------------------------------------------------------------ helpers

    def _new_connection(self) -> Connection:
        if self.url.scheme == "maildir":
            return MaildirTransport(self.url.path)
        return SmtpConnection(self.url)

    @property
    def connections(self) -> int:
        # The capture transport writes files: one writer is plenty.
        return 1 if self.url.scheme == "maildir" else max(1, self.settings.smtp_connections)

    def compile(self, campaign: Campaign) -> CompiledCampaign:
        return compile_campaign(campaign, self.settings, signer=self.signer, dkim=self._dkim())

    def _dkim(self) -> DkimSigner | None:
        s = self.settings
        if not (s.dkim_key_path and s.dkim_selector and s.dkim_domain):
            return None
        from mailer.dkim import DkimSigner

        return DkimSigner(s.dkim_selector, s.dkim_domain, s.dkim_key_path)

    # ------------------------------------------------------------------ one campaign

    def run_campaign(self, campaign_id: int) -> RunReport:
        return run_loop(self._run(campaign_id))

    async def _run(self, campaign_id: int) -> RunReport:
        with Session(self.db) as s:
            campaign = s.get(Campaign, campaign_id)
            if campaign is None:
                raise LookupError(f"no campaign with id {campaign_id}")
            counts = deliveries_counts(s, campaign_id)
        report = RunReport(campaign_id=campaign_id, name=campaign.name, total=counts)
        compiled = self.compile(campaign)
        queue: asyncio.Queue[_Item | None] = asyncio.Queue(maxsize=self.claim_size)
        soft = (self.settings.soft_bounce_limit, self.settings.soft_bounce_days)
        committer = _GroupCommitter(self.db, campaign_id, soft)
        rate = RateLimiter(self.settings.send_rate)

        def on_commit(batch: Progress) -> None:
            report.sent += len(batch.sent)
            report.failed += len(batch.failed) + len(batch.bounced) + len(batch.refused)
            report.in_doubt += len(batch.in_doubt)
            report.retrying += len(batch.retry)
            self._notify(report)

        # Claims this run gives back at the end (released unless already marked).
        leftovers: list[int] = []
        self._opened, self._connecting, self._refusals = set(), 0, 0
        self._tries, self._blocks, self._held = Counter(), Counter(), set()
        committer.expected = self.connections
        commit_task = asyncio.create_task(committer.run(on_commit))
        senders = [
            asyncio.create_task(self._sender(queue, committer, rate, leftovers))
            for _ in range(self.connections)
        ]
        failed: list[BaseException] = []
        broken = asyncio.Event()

        def stop_on_failure(task: asyncio.Task[None]) -> None:
            # The committer or a connection died (the database went away, say): stop
            # claiming, or the claimer would wait for ever on a queue nobody empties.
            if not task.cancelled() and (exc := task.exception()) is not None:
                failed.append(exc)
                broken.set()
                # What is queued goes back, and a claimer waiting for room wakes.
                leftovers.extend(i.delivery_id for i in _drain(queue))

        for task in (commit_task, *senders):
            task.add_done_callback(stop_on_failure)
        try:
            await self._claimer(campaign_id, compiled, queue, report, broken, leftovers)
        finally:
            if not failed:
                finished = _all_done(senders)
                await _stop(queue, senders, broken, finished)
                # Wait for the connections unless the run breaks meanwhile: a failure
                # now empties the queue, stop signs included, and must stop them too.
                await _unless(finished.wait(), broken)
            if failed:
                # What is queued goes back; connections still sending are stopped (a
                # message already announced stays `sending`: in doubt, as after a crash).
                leftovers += [i.delivery_id for i in _drain(queue)]
                for task in senders:
                    task.cancel()
            results = await asyncio.gather(*senders, return_exceptions=True)
            committer.close()
            try:
                await commit_task
            except Exception:
                if not failed:
                    raise
            finally:
                try:
                    committer.release()
                except Exception:
                    if not failed:
                        raise
            leftovers += [i.delivery_id for i in _drain(queue)]
            try:
                await asyncio.to_thread(deliveries.release, self.db, leftovers)
            except Exception:
                if not failed:
                    raise
        if failed:
            raise failed[0]
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]
        report.finished = await asyncio.to_thread(deliveries.finish_if_done, self.db, campaign_id)
        if not report.finished:
            held = await asyncio.to_thread(deliveries.held_by_domain, self.db, campaign_id)
            report.held = sum(held.values())
            report.held_domains = tuple(held)
            if held and not report.stopped:
                report.stopped = "held back: " + ", ".join(f"{d} ({n})" for d, n in held.items())
        self._notify(report)
        return report

    async def _claimer(
        self,
        campaign_id: int,
        compiled: CompiledCampaign,
        queue: asyncio.Queue[_Item | None],
        report: RunReport,
        broken: asyncio.Event,
        unqueued: list[int],
    ) -> None:
        """Claim and queue until nothing is left, or the run breaks (`broken`): then it
        stops between claims, never inside one, and lists what it claimed but did not
        queue in `unqueued` (a claim cut off in its thread would be lost to this run)."""
        while not broken.is_set():
            got: ClaimResult = await _db_call(
                deliveries.claim, self.db, campaign_id, self.worker, self.claim_size
            )
            if got.skipped:
                report.skipped += got.skipped
                self._notify(report)
            if not got.active:
                if got.status in ("paused", "cancelled"):
                    report.stopped = f"campaign {got.status}"
                return
            for c in got.ready:
                if broken.is_set():
                    unqueued.append(c.delivery_id)
                    continue
                r = Recipient(c.contact_id, c.email, c.name, c.attributes)
                item = _Item(
                    c.delivery_id, c.email, compiled.envelope_from(r), compiled.build(r), c.attempts
                )
                if queue.full():
                    # A plain put: a broken run empties the queue, which wakes it (waiting
                    # with `_unless` cost two tasks a message).
                    await queue.put(item)
                else:
                    queue.put_nowait(item)
            if got.ready:
                continue
            # Nothing claimable: let the connections finish (and record retries), then
            # wait for a retry that is due soon, or stop and leave it to the next run.
            if not await _unless(queue.join(), broken):
                return
            when = await asyncio.to_thread(deliveries.next_retry_at, self.db, campaign_id)
            if when is None:
                return
            wait = (when - utcnow()).total_seconds()
            if wait > self.settings.retry_wait:
                report.stopped = f"retries wait until {when.isoformat()}"
                return
            await _unless(asyncio.sleep(max(wait, 0.0) + 0.01), broken)

    async def _sender(
        self,
        queue: asyncio.Queue[_Item | None],
        committer: _GroupCommitter,
        rate: RateLimiter,
        leftovers: list[int],
    ) -> None:
        conn: Connection | None = None
        previous = Progress()
        item: _Item | None = None
        # Announce the next message only when it follows within about a second: a paced
        # send would otherwise keep the server waiting in DATA, which some servers time
        # out.
        announce = rate.rate == 0 or rate.rate >= self.connections
        # Messages taken from the queue whose outcome is not committed yet: they count as
        # done (`task_done`) only once it is, so that a claimer waiting on `queue.join()`
        # for retries finds them recorded.
        owed = 0
        following = await queue.get()
        try:
            while True:
                item = following
                if item is None:
                    queue.task_done()
                    break
                # The previous outcome and this message's `sending` mark in one commit.
                previous.sending.append(item.delivery_id)
                await committer.submit(previous)
                previous = Progress()
                owed = _settle(queue, owed)
                await rate.wait()
                # Take the next message now when one waits: the SMTP connection announces
                # it (MAIL, RCPT, DATA) in the same write as this body. It cannot be
                # delivered before its body, which goes only after its `sending` commit.
                took = not queue.empty()
                following = queue.get_nowait() if took else None  # (None may be the stop)
                try:
                    conn = await self._send_one(
                        conn, item, previous, following if announce else None
                    )
                except _Refused:
                    await self._stand_down(queue, committer, previous, following, took, owed)
                    item = following = None  # handed back
                    return
                owed += 1
                if following is None:
                    # Nothing waiting: write the outcome now rather than with the next.
                    await committer.submit(previous)
                    previous = Progress()
                    owed = _settle(queue, owed)
                    if not took:
                        following = await queue.get()
            await committer.submit(previous)
            owed = _settle(queue, owed)
        except BaseException:
            # Stopped or broken: what this connection holds goes back to pending with
            # the run's leftovers. `release` touches only rows still `claimed`, so a
            # message whose `sending` mark went in stays in doubt, as after a crash.
            leftovers.extend(i.delivery_id for i in (item, following) if i is not None)
            raise
        finally:
            if conn is not None:
                await conn.close()

    async def _send_one(
        self, conn: Connection | None, item: _Item, out: Progress, then: _Item | None = None
    ) -> Connection | None:
        """Send one message and write its outcome into `out`; returns the connection.
        `then` is the message this connection sends next, if known."""
        domain = _domain(item.email)
        # Held back: not sent, unless it was already announced on this connection (the
        # block came in after it had gone out with the previous body): then it must go.
        if domain in self._held and not getattr(conn, "announced", False):
            out.held.append((item.delivery_id, domain))
            return conn
        self._tries[domain] += 1
        try:
            if conn is None or not conn.is_open:
                self._opened.discard(conn)  # type: ignore[arg-type]
                conn = self._new_connection()
                self._connecting += 1
                connecting = True
                try:
                    await conn.connect()
                except Exception as exc:
                    self._connecting -= 1
                    connecting = False
                    # At the start every connection opens at once: see how the others
                    # fare before telling a refusal from a server that is down.
                    while self._connecting > 0 and not any(c.is_open for c in self._opened):
                        await asyncio.sleep(0.02)
                    if any(c.is_open for c in self._opened):
                        # The server is up but takes no more connections from us (a
                        # per-client limit below smtp_connections): not this message's
                        # fault. It goes back, uncounted, and this connection stands down.
                        out.requeue.append((item.delivery_id, f"connection refused: {exc}"))
                        raise _Refused(str(exc)) from exc
                    raise
                finally:
                    if connecting:
                        self._connecting -= 1
                self._opened.add(conn)
            held = then is not None and _domain(then.email) in self._held
            after = None if then is None or held else (then.envelope_from, then.email, then.data)
            outcome = await conn.send(item.envelope_from, item.email, item.data, then=after)
        except _Refused:
            raise
        except ConnectionLost as exc:
            if exc.data_sent_completely:
                out.in_doubt.append((item.delivery_id, f"connection lost after sending: {exc}"))
            else:
                self._retry(item, f"connection lost: {exc}", out)
            return None
        except (OSError, TimeoutError, ConnectionError) as exc:
            self._retry(item, f"cannot connect: {exc}", out)
            await asyncio.sleep(0.2)  # don't spin on a server that is down
            return None
        except Exception as exc:  # a refused greeting, TLS or login: retry later
            self._retry(item, f"{type(exc).__name__}: {exc}", out)
            await asyncio.sleep(0.2)
            return None
        if outcome.accepted:
            out.sent.append(item.delivery_id)
        elif outcome.permanent:
            error = f"{outcome.code} {outcome.text}"
            cause = reason_for(text=error, reply=str(outcome.code))
            if outcome.stage == "rcpt" and is_hard(cause):
                # Only a refused recipient says the address is dead (DESIGN.md §4): a
                # 5xx at DATA refused the message, whatever its words.
                out.bounced.append((item.delivery_id, item.email, error))
                out.reasons[item.delivery_id] = cause.value
            else:
                out.refused.append((item.delivery_id, item.email, error, cause.value))
                if is_block(cause):
                    self._blocked(domain, out)
        else:
            error = f"{outcome.code} {outcome.text}"
            self._retry(item, error, out)
            # "421 4.7.0 [TSS04] ... deferred due to unexpected volume": a provider
            # throttling us counts toward holding its domain back too.
            if is_block(reason_for(text=error, reply=str(outcome.code))):
                self._blocked(domain, out)
        return conn if conn.is_open else None

    async def _stand_down(
        self,
        queue: asyncio.Queue[_Item | None],
        committer: _GroupCommitter,
        previous: Progress,
        following: _Item | None,
        took: bool,
        owed: int,
    ) -> None:
        """End a connection the server refused: its messages go back, the rest go on."""
        if took and following is not None:
            previous.requeue.append((following.delivery_id, "connection refused"))
        committer.expected = max(1, committer.expected - 1)
        # Committed first, counted done after: the claimer's `queue.join()` then finds
        # the requeued messages pending and claims them again in this run.
        await committer.submit(previous)
        _settle(queue, owed + 1 + took)  # +1: the message that could not go
        if took and following is None:
            await queue.put(None)  # a stop sign meant for a connection still going
        self._refusals += 1
        if self._refusals == 1:
            log.warning(
                "the SMTP server refused a connection while %d were open: sending on "
                "with fewer (smtp_connections is %d)",
                sum(c.is_open for c in self._opened),
                self.connections,
            )

    def _blocked(self, domain: str, out: Progress) -> None:
        """Count a block; past the threshold, hold back the rest of that domain."""
        self._blocks[domain] += 1
        blocks, tries = self._blocks[domain], self._tries[domain]
        s = self.settings
        if domain in self._held or blocks < s.block_hold_count:
            return
        if blocks < s.block_hold_share * tries:
            return
        self._held.add(domain)
        out.hold_domains.append(domain)
        log.warning(
            "%s refused %d of %d messages as blocks (not about the recipients): holding "
            "back the rest of that domain; `campaigns campaign release` sends them later",
            domain,
            blocks,
            tries,
        )

    def _retry(self, item: _Item, error: str, out: Progress) -> None:
        if item.attempts + 1 >= self.settings.max_attempts:
            out.failed.append(
                (item.delivery_id, f"gave up after {item.attempts + 1} tries: {error}")
            )
        else:
            when = deliveries.backoff(item.attempts, self.settings.retry_delay)
            out.retry.append((item.delivery_id, error, when))

    def _notify(self, report: RunReport) -> None:
        if self.progress is not None:
            self.progress(replace(report))

    # ------------------------------------------------------------------ test sends

    def test_send(self, campaign: Campaign, to: list[str]) -> list[SendOutcome]:
        """Send the campaign to typed-in addresses, marked as a test and never counted."""
        return run_loop(self._test_send(campaign, to))

    async def _test_send(self, campaign: Campaign, to: list[str]) -> list[SendOutcome]:
        test = campaign.model_copy(update={"subject": f"[TEST] {campaign.subject}"})
        compiled = self.compile(test)
        conn = self._new_connection()
        try:
            await conn.connect()
        except (OSError, TimeoutError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise TransportError(
                f"cannot connect to the SMTP server: {why or 'timed out'}"
            ) from None
        outcomes = []
        try:
            for address in to:
                r = Recipient(0, address, "Test Recipient", {})
                data = b"X-Campaigns-Test: yes\r\n" + compiled.build(r)
                outcomes.append(await conn.send(compiled.envelope_from(r), address, data))
        finally:
            await conn.close()
        return outcomes


async def _db_call(fn: Callable[..., T], db: Engine, *args: Any) -> T:
    """Run a database call. SQLite's local calls take tens of µs: made in the loop they
    cost less than the hop to a thread and back (and the GIL hand-offs that come with
    it). A networked database may take milliseconds, so it goes to a thread."""
    if db.dialect.name == "sqlite":
        return fn(db, *args)
    return await asyncio.to_thread(fn, db, *args)


async def _unless(step: Awaitable[Any], *stops: asyncio.Event) -> bool:
    """Await `step` unless one of `stops` is set first (the run breaks, say; then `step`
    is cancelled): True if done."""
    task = asyncio.ensure_future(step)
    halts = [asyncio.ensure_future(e.wait()) for e in stops]
    await asyncio.wait({task, *halts}, return_when=asyncio.FIRST_COMPLETED)
    for halt in halts:
        halt.cancel()
    if task.done():
        task.result()
        return True
    task.cancel()
    return False


async def _stop(
    queue: asyncio.Queue[_Item | None],
    senders: list[asyncio.Task[None]],
    broken: asyncio.Event,
    finished: asyncio.Event,
) -> None:
    """One stop sign per connection still going, unless the run breaks meanwhile (a dead
    connection takes nothing from a full queue). A connection that stood down takes none,
    so with a small queue (a paced send) signs for it could fill the queue for good;
    `finished` (all connections ended) stops the waiting then."""
    for _ in range(sum(not t.done() for t in senders)):
        if not await _unless(queue.put(None), broken, finished):
            return


def _all_done(tasks: list[asyncio.Task[None]]) -> asyncio.Event:
    """An event set once every task is done."""
    done = asyncio.Event()

    def check(_: object = None) -> None:
        if all(t.done() for t in tasks):
            done.set()

    for t in tasks:
        t.add_done_callback(check)
    check()
    return done


def _domain(email: str) -> str:
    return email.rpartition("@")[2].lower()


def _settle(queue: asyncio.Queue[_Item | None], n: int) -> int:
    """Count `n` messages done whose outcome is committed; returns 0 (none owed)."""
    for _ in range(n):
        queue.task_done()
    return 0


def _drain(queue: asyncio.Queue[_Item | None]) -> list[_Item]:
    items = []
    while not queue.empty():
        item = queue.get_nowait()
        if item is not None:
            items.append(item)
    return items


def deliveries_counts(session: Session, campaign_id: int) -> int:
    from campaigns.campaign import counts

    return counts(session, campaign_id).total
