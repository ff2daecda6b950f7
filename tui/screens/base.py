"""What every screen (and the app) shares: blocking calls run off the UI's thread.

`in_background(work, then)` runs `work` in a worker thread and `then(result)` back on the
UI's thread; a failure becomes an error notification in plain words, never a traceback.
`in_daemon_thread(fn)` is for the long jobs (a send, an import): a daemon thread, so that
quitting the app never waits for them. Stopping a send that way is a crash the send
engine is built for: unsent messages stay queued, in-flight ones are marked in doubt.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from textual.screen import ModalScreen, Screen
from textual.worker import Worker, get_current_worker

from tui.messages import WorkDone, WorkFailed
from tui.services import Services, error_text

if TYPE_CHECKING:
    from textual.dom import DOMNode

T = TypeVar("T")
R = TypeVar("R")

# Which campaign actions make sense in which status; the others are hidden from the footer.
ACTION_STATUSES: dict[str, frozenset[str]] = {
    "edit_campaign": frozenset({"draft", "scheduled"}),
    "edit_audience": frozenset({"draft", "scheduled"}),
    "schedule": frozenset({"draft", "scheduled"}),
    "send": frozenset({"draft", "scheduled", "sending", "paused"}),
    "pause_campaign": frozenset({"sending"}),
    "cancel_campaign": frozenset({"draft", "scheduled", "sending", "paused"}),
}


def campaign_action_allowed(method: str, status: str | None) -> bool:
    """Whether a campaign action applies to a campaign in this status (None: unknown)."""
    allowed = ACTION_STATUSES.get(method)
    return status is None or allowed is None or status in allowed


def in_daemon_thread(fn: Callable[[], T], name: str = "campaigns-job") -> asyncio.Future[T]:
    """Run `fn` in a daemon thread; the future resolves on the running loop."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if future.done():
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    def target() -> None:
        try:
            outcome: tuple[bool, Any] = (True, fn())
        except BaseException as exc:
            outcome = (False, exc)
        # RuntimeError: the loop has closed, the app quit while this ran.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, *outcome)

    threading.Thread(target=target, name=name, daemon=True).start()
    return future


class Background:
    """Mixed into screens and the app: anything with `run_worker` and `post_message`."""

    @property
    def services(self) -> Services:
        node = cast("DOMNode", self)
        return cast(Services, node.app.services)  # type: ignore[attr-defined]

    def in_background(
        self,
        work: Callable[[], R],
        then: Callable[[R], object],
        *,
        what: str,
        group: str = "default",
        exclusive: bool = False,
        failed: Callable[[str], object] | None = None,
    ) -> Worker[None]:
        """Run `work` in a thread; `then(result)` or an error notification follows."""
        node = cast("DOMNode", self)

        def run() -> None:
            worker = get_current_worker()
            try:
                result = work()
            except Exception as exc:
                if not worker.is_cancelled:
                    node.post_message(WorkFailed(what, error_text(exc), failed))
                return
            # A superseded (exclusive) or abandoned worker must not overwrite newer data.
            if not worker.is_cancelled:
                node.post_message(WorkDone(then, result))

        return node.run_worker(
            run, name=what, group=group, exclusive=exclusive, thread=True, exit_on_error=False
        )

    def on_work_done(self, message: WorkDone) -> None:
        try:
            message.then(message.result)
        except Exception as exc:  # a bug in a screen must not take the app down
            cast("DOMNode", self).app.notify(
                error_text(exc), title="Something went wrong", severity="error", timeout=10
            )

    def on_work_failed(self, message: WorkFailed) -> None:
        cast("DOMNode", self).app.notify(
            message.error, title=f"Could not {message.what}", severity="error", timeout=10
        )
        if message.then is not None:
            message.then(message.error)


class BaseScreen(Background, Screen[None]):
    """A full screen of the app."""


class BaseModal(Background, ModalScreen[T]):
    """A dialog over the current screen; dismissed with its answer."""
