"""Import contacts: choose a CSV file, read the dry run's report, then confirm.

The dry run checks every row and writes nothing; its counts and rejected rows (line and
reason) show before anything is stored. The import itself runs in a worker thread with
a progress bar; a file with card numbers is refused whole, before anything is written.
"""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import DirectoryTree, Footer, Header, Input, Label, ProgressBar, Static

from campaigns.csv_import import ImportReport
from tui.messages import ImportFinished, ImportProgress
from tui.screens.base import BaseScreen, in_daemon_thread
from tui.screens.confirm import ConfirmScreen
from tui.services import error_text
from tui.widgets.csv_tree import CsvTree
from tui.widgets.rejected_rows import RejectedRows


def rows_in(report: ImportReport) -> int:
    return report.imported + report.updated + report.unchanged + len(report.rejected)


def summary(report: ImportReport) -> Text:
    head = "Dry run, nothing written: " if report.dry_run else "Imported: "
    t = Text(head, style="bold")
    parts = [
        (report.imported, "new", "green"),
        (report.updated, "updated", "cyan"),
        (report.unchanged, "unchanged", "dim"),
        (len(report.rejected), "rejected", "red"),
    ]
    if report.conflicts:
        parts.append((len(report.conflicts), "conflicts (left withdrawn)", "yellow"))
    for i, (n, label, style) in enumerate(parts):
        if i:
            t.append(", ")
        t.append(f"{n:,}", style=f"bold {style}")
        t.append(f" {label}")
    return t


class ImportScreen(BaseScreen):
    BINDINGS = [
        Binding("ctrl+r", "check", "Check"),
        Binding("ctrl+s", "run_import", "Import"),
        Binding("escape", "back", "Back"),
    ]

    def __init__(self, start: Path | None = None) -> None:
        super().__init__()
        self.start = start or Path.cwd()
        # The file the last dry run checked, and its report: an import needs both.
        self.checked: tuple[Path, ImportReport] | None = None
        self.busy = False

    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical(id="import-box"):
            with Horizontal(classes="field"):
                yield Label("CSV file", classes="field-label")
                yield Input(placeholder="path of a CSV file", compact=True, id="path")
            yield CsvTree(self.start, id="tree")
            yield Static(
                "Choose a file: its rows are checked first and nothing is written.",
                id="import-status",
                markup=False,
            )
            yield ProgressBar(show_eta=False, id="import-progress")
            yield RejectedRows(id="rejected")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = "Import contacts"
        self.query_one("#import-progress").display = False
        self.query_one("#rejected").display = False
        self.query_one("#path", Input).focus()

    def _path(self) -> Path | None:
        raw = self.query_one("#path", Input).value.strip()
        return Path(raw).expanduser() if raw else None

    @on(DirectoryTree.FileSelected, "#tree")
    def file_chosen(self, event: DirectoryTree.FileSelected) -> None:
        self.query_one("#path", Input).value = str(event.path)
        self.action_check()

    @on(Input.Submitted, "#path")
    def path_entered(self) -> None:
        self.action_check()

    @on(Input.Changed, "#path")
    def path_changed(self) -> None:
        self.checked = None  # a new file needs its own dry run

    def action_check(self) -> None:
        self._start(dry_run=True)

    def action_run_import(self) -> None:
        path = self._path()
        if self.checked is None or path is None or self.checked[0] != path:
            self.notify("Check the file first (ctrl+r): a dry run that writes nothing.")
            return
        report = self.checked[1]
        rejected = len(report.rejected)
        question = (
            f"Import {path.name}: {report.imported:,} new and {report.updated:,} updated "
            f"contacts?" + (f" The {rejected:,} rejected rows are left out." if rejected else "")
        )

        def answered(yes: bool | None) -> None:
            if yes:
                self._start(dry_run=False)

        self.app.push_screen(ConfirmScreen("Import contacts", question, yes="Import"), answered)

    def _start(self, *, dry_run: bool) -> None:
        path = self._path()
        status = self.query_one("#import-status", Static)
        if self.busy:
            self.notify("An import is running; wait for it to end.", severity="warning")
            return
        try:
            is_file = path is not None and path.is_file()
        except OSError:  # e.g. a folder on the way that may not be read
            is_file = False
        if path is None or not is_file:
            status.update(f"Not a file: {path}" if path else "Type a path or choose a file.")
            return
        self.busy = True
        status.update(("Checking " if dry_run else "Importing ") + f"{path}…")
        bar = self.query_one("#import-progress", ProgressBar)
        total = rows_in(self.checked[1]) if (self.checked and not dry_run) else None
        bar.update(total=total, progress=0)
        bar.display = True
        self.run_worker(self._job(path, dry_run), name="import", exit_on_error=False)

    async def _job(self, path: Path, dry_run: bool) -> None:
        def progress(rows: int) -> None:  # called from the import's thread
            self.post_message(ImportProgress(rows))

        run = self.services.import_contacts
        try:
            report = await in_daemon_thread(
                lambda: run(path, dry_run, progress), name="import contacts"
            )
        except Exception as exc:
            self.post_message(ImportFinished(dry_run, None, error_text(exc)))
        else:
            self.post_message(ImportFinished(dry_run, report))

    def on_import_progress(self, message: ImportProgress) -> None:
        bar = self.query_one("#import-progress", ProgressBar)
        bar.update(progress=message.rows)

    def on_import_finished(self, message: ImportFinished) -> None:
        self.busy = False
        self.query_one("#import-progress").display = False
        status = self.query_one("#import-status", Static)
        report = message.report
        if report is None:
            status.update(Text(f"Refused: {message.error}", style="bold red"))
            self.notify(message.error, title="Not imported", severity="error")
            self.checked = None
            return
        table = self.query_one("#rejected", RejectedRows)
        table.show(report)
        table.display = bool(report.rejected or report.conflicts)
        text = summary(report)
        path = self._path()
        if report.dry_run and path is not None:
            self.checked = (path, report)
            text.append("\nPress ctrl+s to import it.", style="dim")
        else:
            self.checked = None
            self.notify(
                f"{report.imported:,} new, {report.updated:,} updated, "
                f"{len(report.rejected):,} rejected",
                title="Imported",
            )
        status.update(text)

    def action_back(self) -> None:
        if self.busy:
            self.notify(
                "The import goes on in the background; its report is lost if you leave.",
                severity="warning",
            )
        self.app.pop_screen()
