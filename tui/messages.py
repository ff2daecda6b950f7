"""Messages from worker threads to the UI.

Workers never touch widgets: they post one of these (`post_message` is thread-safe), and
the handler runs on the UI's thread. A message for a screen that has closed meanwhile is
dropped, which is what we want for a result nobody waits for any more. None bubbles:
each is handled by the node that started the work, and only there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from textual.message import Message

if TYPE_CHECKING:
    from campaigns.csv_import import ImportReport
    from mailer.engine import RunReport


class WorkDone(Message, bubble=False):
    """A background call finished; `then(result)` runs on the UI's thread."""

    def __init__(self, then: Callable[[Any], object], result: Any) -> None:
        super().__init__()
        self.then = then
        self.result = result


class WorkFailed(Message, bubble=False):
    """A background call failed; `error` is one line for the marketer."""

    def __init__(self, what: str, error: str, then: Callable[[str], object] | None) -> None:
        super().__init__()
        self.what = what
        self.error = error
        self.then = then


class SendProgress(Message, bubble=False):
    """The send engine's progress callback, from the sending thread."""

    def __init__(self, name: str, report: RunReport) -> None:
        super().__init__()
        self.name = name
        self.report = report


class SendFinished(Message, bubble=False):
    """A send ended: with its report, or with the reason it could not run."""

    def __init__(self, name: str, report: RunReport | None, error: str = "") -> None:
        super().__init__()
        self.name = name
        self.report = report
        self.error = error


class ImportProgress(Message, bubble=False):
    """Rows of the CSV file checked (and, unless a dry run, written) so far."""

    def __init__(self, rows: int) -> None:
        super().__init__()
        self.rows = rows


class ImportFinished(Message, bubble=False):
    """An import (or its dry run) ended: with its report, or the reason it was refused."""

    def __init__(self, dry_run: bool, report: ImportReport | None, error: str = "") -> None:
        super().__init__()
        self.dry_run = dry_run
        self.report = report
        self.error = error
