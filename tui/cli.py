"""The `campaigns` command: the composition root (DESIGN.md §3 "Command line").

Textual is imported only when the full-screen app opens, so cron's commands start fast.
Exit status: 0 success, 1 failure, 2 bad usage or unusable input. Errors a user can
cause are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from campaigns.config import ConfigError, Settings, load_settings
from campaigns.db import DatabaseError

if TYPE_CHECKING:  # the mailer is imported only by the commands that use it
    from mailer.inbox import InboxReport

PROG = "campaigns"


class UsageError(Exception):
    """Bad usage or unusable input: exit status 2."""


class Failure(Exception):
    """The command could not do its job: exit status 1."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class App:
    """What every command needs: settings and, on first use, the database."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._engine: Any = None

    @property
    def engine(self) -> Any:
        if self._engine is None:
            from campaigns.db import ensure_schema, make_engine

            # The default database's folder is ours to make; a given URL's is not.
            given = bool(self.settings.database_url)
            self._engine = make_engine(self.settings.effective_database_url, not given)
            ensure_schema(self._engine)
        return self._engine

    def session(self) -> Any:
        from campaigns.db import session_scope

        return session_scope(self.engine)


def plural(n: int, word: str, many: str = "") -> str:
    return f"{n:,} {word if n == 1 else many or word + 's'}"


def out(data: Any, as_json: bool, text: Callable[[], str]) -> None:
    if as_json:
        print(json.dumps(data, indent=2, ensure_ascii=False, default=str))
    else:
        print(text())


def parse_time(text: str) -> datetime:
    """ISO 8601; a time without an offset is local time."""
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"not an ISO 8601 time: {text!r}") from None
    when = when.astimezone() if when.tzinfo is None else when
    try:
        # Stored in UTC and shown in local time: both must exist (year 9999 at -12:00
        # is year 10000 in UTC).
        when.astimezone(UTC).astimezone()
    except (OverflowError, OSError):
        raise UsageError(f"time out of range (years 1 to 9998): {text!r}") from None
    return when


def read_text_file(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None


# ---------------------------------------------------------------- contacts


def cmd_contacts_import(app: App, args: argparse.Namespace) -> int:
    from campaigns.csv_import import ImportRefused, import_contacts

    path = Path(args.file)
    if not path.is_file():
        raise UsageError(f"file not found: {path}")
    try:
        report = import_contacts(
            app.engine, path, policy_version=app.settings.policy_version, dry_run=args.dry_run
        )
    except ImportRefused as exc:
        raise UsageError(f"{path}: {exc}") from None
    data = {
        "dry_run": report.dry_run,
        "imported": report.imported,
        "updated": report.updated,
        "unchanged": report.unchanged,
        "rejected": len(report.rejected),
        "rejected_rows": [{"line": r.line, "reason": r.reason} for r in report.rejected],
        "conflicts": [
            {"line": c.line, "purpose": c.purpose, "reason": c.reason} for c in report.conflicts
        ],
    }

    def text() -> str:
        head = "dry run, nothing written: " if report.dry_run else ""
        lines = [
            f"{head}imported {report.imported}, updated {report.updated}, "
            f"unchanged {report.unchanged}, rejected {len(report.rejected)}"
        ]
        lines += [f"line {r.line}: rejected: {r.reason}" for r in report.rejected]
        lines += [
            f"line {c.line}: conflict: {c.purpose} left withdrawn: {c.reason}"
            for c in report.conflicts
        ]
        return "\n".join(lines)

    out(data, args.json, text)
    return 1 if report.rejected else 0


def cmd_contacts_export(app: App, args: argparse.Namespace) -> int:
    from campaigns.csv_export import export_contacts

    try:
        n = export_contacts(app.engine, Path(args.file))
    except OSError as exc:
        raise UsageError(f"cannot write {args.file}: {exc.strerror or exc}") from None
    out({"exported": n, "file": args.file}, args.json, lambda: f"exported {n} contacts")
    return 0


def _segment_from_args(args: argparse.Namespace) -> Any:
    from campaigns.purposes import parse_purpose
    from campaigns.segments import SegmentError, parse_filters

    filters = list(getattr(args, "segment", None) or [])
    filters += [f"country={c}" for c in args.country or []]
    filters += [f"city={c}" for c in getattr(args, "city", None) or []]
    filters += [f"tag={t}" for t in args.tag or []]
    filters += [f"attr.{a}" for a in getattr(args, "attr", None) or []]
    try:
        purpose = parse_purpose(args.purpose) if getattr(args, "purpose", None) else None
        return parse_filters(filters, purpose=purpose)
    except (SegmentError, ValueError) as exc:
        raise UsageError(str(exc)) from None


def cmd_contacts_count(app: App, args: argparse.Namespace) -> int:
    from campaigns import segments

    segment = _segment_from_args(args)
    with app.session() as s:
        n = segments.count(s, segment)
    out({"count": n}, args.json, lambda: str(n))
    return 0


def cmd_contacts_show(app: App, args: argparse.Namespace) -> int:
    from campaigns import contacts

    with app.session() as s:
        data = contacts.profile(s, args.email)

    def text() -> str:
        lines = [f"{k}: {data[k]}" for k in ("email", "name", "address", "postcode", "town")]
        lines += [f"{k}: {data[k]}" for k in ("city", "country", "signed_up", "updated")]
        lines.append(f"tags: {', '.join(data['tags'])}")
        lines += [f"attribute {k}: {v}" for k, v in sorted(data["attributes"].items())]
        for purpose, c in data["consent"].items():
            lines.append(f"consent {purpose}: {c['state']}")
        lines.append(f"suppressed: {data['suppressed'] or 'no'}")
        lines.append("consent history:")
        for e in data["consent_history"]:
            verb = "granted" if e["granted"] else "withdrawn"
            note = f" ({e['note']})" if e["note"] else ""
            lines.append(
                f"  {e['when']}  {e['purpose']} {verb}  via {e['source']}  "
                f"policy {e['policy_version']}{note}"
            )
        lines.append("messages:")
        lines += [f"  {m['campaign']} ({m['kind']}): {m['status']}" for m in data["messages"]]
        return "\n".join(lines)

    out(data, args.json, text)
    return 0


def cmd_contacts_consent(app: App, args: argparse.Namespace) -> int:
    from campaigns import contacts
    from campaigns.purposes import parse_purpose

    try:
        purpose = parse_purpose(args.purpose)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if not args.note.strip():
        raise UsageError("--note must say how the request came (e.g. 'letter of 3 May')")
    with app.session() as s:
        event = contacts.record_operator_change(
            s,
            args.email,
            purpose,
            granted=args.grant,
            operator=args.operator or app.settings.effective_operator,
            note=args.note,
            policy_version=app.settings.policy_version,
        )
    verb = "granted" if args.grant else "withdrawn"
    data = {"changed": event is not None, "purpose": purpose.value, "granted": args.grant}
    out(
        data,
        args.json,
        lambda: f"{purpose.value} consent {verb}" if event else f"no change: already {verb}",
    )
    return 0


def cmd_contacts_forget(app: App, args: argparse.Namespace) -> int:
    from campaigns import suppression

    with app.session() as s:
        existed = suppression.forget(s, args.email)
    msg = (
        "erased; only a keyed hash stays on the suppression list"
        if existed
        else "no such contact; the address is now on the suppression list as a keyed hash"
    )
    out({"erased": existed}, args.json, lambda: msg)
    return 0


# ---------------------------------------------------------------- campaigns


def cmd_campaign_create(app: App, args: argparse.Namespace) -> int:
    from campaigns import campaign
    from campaigns.purposes import parse_kind

    try:
        kind = parse_kind(args.kind)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    body = read_text_file(args.body_file)
    segment = _segment_from_args(args)
    if segment.purpose is not None:
        raise UsageError("a campaign's purpose comes from its kind; do not give one in --segment")
    try:
        with app.session() as s:
            c = campaign.create(
                s,
                kind=kind,
                name=args.name,
                subject=args.subject,
                body=body,
                template=args.template or "",
                sponsor=args.sponsor or "",
                survey_url=args.survey_url or "",
                preheader=args.preheader or "",
                segment=segment.to_json(),
            )
            data = campaign.summary(s, c)
    except campaign.CampaignError as exc:
        raise UsageError(str(exc)) from None
    out(data, args.json, lambda: f"created draft {data['name']!r} ({data['kind']})")
    return 0


def _campaign_line(d: dict[str, Any]) -> str:
    counts = d["counts"]
    when = f" at {d['scheduled_at']}" if d["scheduled_at"] else ""
    return (
        f"{d['name']}  {d['kind']}  {d['status']}{when}  "
        f"sent {counts['sent']}/{counts['total']}, failed {counts['failed']}"
    )


def cmd_campaign_list(app: App, args: argparse.Namespace) -> int:
    from campaigns import campaign

    with app.session() as s:
        data = [campaign.summary(s, c) for c in campaign.all_campaigns(s)]
    out(data, args.json, lambda: "\n".join(map(_campaign_line, data)) or "no campaigns")
    return 0


def cmd_campaign_show(app: App, args: argparse.Namespace) -> int:
    from campaigns import campaign

    with app.session() as s:
        data = campaign.summary(s, campaign.get(s, args.name))

    def text() -> str:
        lines = [f"{k}: {v}" for k, v in data.items() if k != "counts" and v not in (None, {}, [])]
        lines += [f"{k}: {v}" for k, v in data["counts"].items()]
        return "\n".join(lines)

    out(data, args.json, text)
    return 0


def _change_status(
    app: App, args: argparse.Namespace, change: str, said: Callable[[str], str]
) -> int:
    """cancel, pause, resume: one status change, its summary, one line of words."""
    from campaigns import campaign

    with app.session() as s:
        c = getattr(campaign, change)(s, args.name)
        data = campaign.summary(s, c)
    out(data, args.json, lambda: said(data["name"]))
    return 0


def cmd_campaign_cancel(app: App, args: argparse.Namespace) -> int:
    return _change_status(app, args, "cancel", lambda n: f"cancelled {n!r}")


def cmd_campaign_pause(app: App, args: argparse.Namespace) -> int:
    return _change_status(
        app,
        args,
        "pause",
        lambda n: (
            f"paused {n!r}: messages in flight finish, the rest waits "
            f"for `campaigns campaign resume {n}`"
        ),
    )


def cmd_campaign_resume(app: App, args: argparse.Namespace) -> int:
    return _change_status(
        app,
        args,
        "resume",
        lambda n: f"resumed {n!r}: the next send-due (or campaign send) goes on with it",
    )


def cmd_campaign_schedule(app: App, args: argparse.Namespace) -> int:
    from campaigns import campaign

    when = parse_time(args.at)
    with app.session() as s:
        c = campaign.schedule(s, args.name, when)
        data = campaign.summary(s, c)
    local = when.astimezone().isoformat(timespec="minutes")
    out(data, args.json, lambda: f"scheduled {data['name']!r} for {local}")
    return 0


def _preview_recipient(s: Any, campaign: Any, to: str | None) -> Any:
    """The contact to render for: --to, else the first of the audience, else a sample."""
    from sqlalchemy import select as sa_select

    from campaigns import contacts
    from campaigns.deliveries import audience_segment
    from campaigns.models import Contact
    from campaigns.segments import where_clause
    from mailer.message import Recipient

    if to:
        found = contacts.find(s, to)
        if found is None:
            return Recipient(0, to, "", {})
        return Recipient.from_contact(found)
    first = s.exec(
        sa_select(Contact).where(where_clause(audience_segment(campaign))).order_by(Contact.id)
    ).first()
    if first is not None:
        return Recipient.from_contact(first[0])
    return Recipient(0, "someone@example.com", "Sample Person", {})


def cmd_campaign_preview(app: App, args: argparse.Namespace) -> int:
    from campaigns import campaign
    from mailer.render import TemplateProblem, preview
    from mailer.tokens import signer_from_settings

    with app.session() as s:
        c = campaign.get(s, args.name)
        recipient = _preview_recipient(s, c, args.to)
    try:
        raw, msg = preview(c, app.settings, recipient, signer_from_settings(app.settings))
    except TemplateProblem as exc:
        raise Failure(f"template problem: {exc}") from None
    if args.out:
        try:
            Path(args.out).write_bytes(raw)
        except OSError as exc:
            raise UsageError(f"cannot write {args.out}: {exc.strerror or exc}") from None
    text_part = msg.get_body(preferencelist=("plain",))
    headers = {k: str(v) for k, v in msg.items()}
    data = {
        "to": recipient.email,
        "headers": headers,
        "text": text_part.get_content() if text_part else "",
        "out": args.out,
    }

    def text() -> str:
        lines = [f"{k}: {v}" for k, v in headers.items() if k != "Content-Type"]
        lines += ["", data["text"]]
        if args.out:
            lines.append(f"(written to {args.out})")
        return "\n".join(lines)

    out(data, args.json, text)
    return 0


def _progress_printer(enabled: bool) -> Any:
    if not enabled:
        return None

    def show(r: Any) -> None:
        print(
            f"\r{r.name}: sent {r.sent}, failed {r.failed}, skipped {r.skipped}, "
            f"in doubt {r.in_doubt} of {r.total}",
            end="",
            file=sys.stderr,
            flush=True,
        )

    return show


def _run_dict(r: Any) -> dict[str, Any]:
    return {
        "campaign": r.name,
        "total": r.total,
        "sent": r.sent,
        "failed": r.failed,
        "skipped": r.skipped,
        "in_doubt": r.in_doubt,
        "retrying": r.retrying,
        "finished": r.finished,
        "stopped": r.stopped or None,
        "held": r.held,
        "held_domains": list(r.held_domains),
    }


def _run_line(r: dict[str, Any]) -> str:
    state = "finished" if r["finished"] else f"not finished ({r['stopped'] or 'open deliveries'})"
    return (
        f"{r['campaign']}: sent {r['sent']}, failed {r['failed']}, skipped {r['skipped']}, "
        f"in doubt {r['in_doubt']}, retrying {r['retrying']}; {state}"
    )


def cmd_campaign_release(app: App, args: argparse.Namespace) -> int:
    from campaigns import addresses, campaign

    if args.domain is not None and not addresses.is_domain(args.domain):
        raise UsageError(f"not a domain name: {args.domain!r}")
    released = campaign.release_held(app.engine, args.name, args.domain or "")
    where = f" for {args.domain}" if args.domain else ""
    data = {"campaign": args.name, "released": released, "domain": args.domain or None}

    def text() -> str:
        if not released:
            return f"nothing of {args.name!r} is held back{where}"
        return (
            f"released {released} held deliveries{where} of {args.name!r}: the next "
            "send-due (or campaign send) sends them"
        )

    out(data, args.json, text)
    return 0


def cmd_campaign_send(app: App, args: argparse.Namespace) -> int:
    from campaigns import campaign
    from mailer.render import TemplateProblem
    from mailer.schedule import SendBusy, send_now

    try:
        if args.test_to:
            from mailer.engine import SendEngine
            from mailer.transport.base import TransportError

            bad = [a for a in args.test_to if not _valid_address(a)]
            if bad:
                raise UsageError(f"not an email address: {bad[0]!r}")
            with app.session() as s:
                c = campaign.get(s, args.name)
            try:
                outcomes = SendEngine(app.settings, app.engine).test_send(c, args.test_to)
            except TransportError as exc:  # no connection, or refused at the greeting
                raise Failure(f"test send failed: {exc}") from None
            data = [
                {"to": a, "accepted": o.accepted, "reply": f"{o.code} {o.text}"}
                for a, o in zip(args.test_to, outcomes, strict=True)
            ]
            out(
                data,
                args.json,
                lambda: "\n".join(
                    f"test sent to {d['to']}" if d["accepted"] else f"{d['to']}: {d['reply']}"
                    for d in data
                ),
            )
            return 0 if all(d["accepted"] for d in data) else 1
        show = _progress_printer(sys.stderr.isatty() and not args.json)
        report = send_now(app.settings, app.engine, args.name, progress=show)
        if show:
            print(file=sys.stderr)
    except TemplateProblem as exc:
        raise Failure(f"template problem: {exc}") from None
    except SendBusy as exc:
        raise Failure(str(exc)) from None
    data = _run_dict(report)
    out(data, args.json, lambda: _run_line(data))
    return 0 if report.finished else 1


def _valid_address(text: str) -> bool:
    from campaigns import addresses

    return addresses.is_valid(addresses.normalise(text))


def cmd_send_due(app: App, args: argparse.Namespace) -> int:
    from mailer.schedule import send_due

    report = send_due(app.settings, app.engine)
    data = {
        "busy": report.busy,
        "requeued": report.requeued,
        "in_doubt_recovered": report.in_doubt,
        "runs": [_run_dict(r) for r in report.runs],
    }

    def text() -> str:
        if report.busy:
            return "another send is running; nothing to do"
        lines = []
        if report.in_doubt:
            lines.append(
                f"{report.in_doubt} messages were in flight when a worker stopped; "
                "they are marked in doubt and will not be re-sent"
            )
        lines += [_run_line(r) for r in data["runs"]]
        return "\n".join(lines) or "nothing due"

    out(data, args.json, text)
    return 0


def _inbox_summary(report: InboxReport) -> str:
    from mailer.inbox import WORDS

    if not report.read:
        return "the return mailbox holds nothing new"
    done = [
        plural(report.applied[effect.value], words)
        for effect, words in WORDS.items()
        if report.applied[effect.value]
    ]
    lines = [f"read {plural(report.read, 'message')}: " + (", ".join(done) or "no effect")]
    if report.suppressed or report.withdrawn:
        lines.append(
            f"{plural(report.suppressed, 'address', 'addresses')} suppressed, "
            f"{plural(report.withdrawn, 'consent')} withdrawn"
        )
    if report.ignored:
        ignored = plural(report.ignored, "auto-reply or notice", "auto-replies or notices")
        lines.append(f"{ignored} ignored")
    if report.duplicates:
        lines.append(f"{plural(report.duplicates, 'message')} already processed")
    if report.reasons:
        reasons = ", ".join(f"{r.replace('_', ' ')} {n}" for r, n in sorted(report.reasons.items()))
        lines.append(f"reasons: {reasons}")
    if report.kept:
        lines.append(f"kept and flagged for a human: {len(report.kept)}")
        lines += [f"  {key}: {why}" for key, why in report.kept]
    return "\n".join(lines)


def cmd_inbox_process(app: App, args: argparse.Namespace) -> int:
    from mailer.inbox import InboxNotConfigured, InboxReport, process_inbox
    from mailer.mailbox import InboxUrlError, MailboxError

    report = InboxReport()
    try:
        process_inbox(app.settings, app.engine, report)
    except (InboxNotConfigured, InboxUrlError) as exc:
        raise UsageError(str(exc)) from exc
    except MailboxError as exc:
        # What was applied before the failure stays applied: say so before the error.
        if report.read:
            out(report.as_dict(), args.json, lambda: _inbox_summary(report))
        raise Failure(str(exc)) from exc
    out(report.as_dict(), args.json, lambda: _inbox_summary(report))
    # Like an import with rejected rows: something needs a person, so cron should say so.
    return 1 if report.kept else 0


def cmd_inbox_reclassify(app: App, args: argparse.Namespace) -> int:
    from mailer.reclassify import reclassify

    lifts = reclassify(app.engine, dry_run=args.dry_run)
    data = {
        "dry_run": args.dry_run,
        "lifted": len(lifts),
        "lifts": [
            {"campaign_id": x.campaign_id, "reason": x.reason.value, "why": x.why} for x in lifts
        ],
    }

    def text() -> str:
        verb = "would lift" if args.dry_run else "lifted"
        head = f"{verb} {plural(len(lifts), 'hard-bounce suppression')}"
        return "\n".join(
            [head + (":" if lifts else " (every one still reads as a dead address)")]
            + [f"  campaign {x.campaign_id}: {x.why}" for x in lifts]
        )

    out(data, args.json, text)
    return 0


def cmd_serve(app: App, args: argparse.Namespace) -> int:
    from mailer.web import run_server

    if not 0 < args.port < 65536:
        raise UsageError(f"port must be between 1 and 65535, got {args.port}")
    return run_server(app.settings, app.engine, host=args.host, port=args.port)


# ---------------------------------------------------------------- db, ui


def cmd_db_upgrade(app: App, args: argparse.Namespace) -> int:
    from campaigns.db import make_engine, upgrade

    engine = make_engine(app.settings.effective_database_url, not app.settings.database_url)
    before, after = upgrade(engine)
    msg = (
        f"created a new database at schema {after}"
        if before is None
        else f"already at schema {after}"
        if before == after
        else f"upgraded schema {before} → {after}"
    )
    out({"before": before, "after": after}, args.json, lambda: msg)
    return 0


def cmd_tui(app: App, args: argparse.Namespace) -> int:
    from tui.app import run_app

    return run_app(app.settings, engine=app.engine)


def demo_settings(settings: Settings, data_dir: Path) -> Settings:
    """The demo's settings: its own SQLite file, and messages captured in a folder."""
    from dataclasses import replace

    return replace(
        settings,
        data_dir=data_dir,
        database_url=f"sqlite:///{data_dir / 'demo.db'}",
        # The capture transport: nothing leaves the machine in the demo.
        smtp_url=f"maildir://{data_dir / 'outbox'}",
    )


def cmd_demo(app: App, args: argparse.Namespace) -> int:
    from campaigns.db import ensure_schema, make_engine
    from campaigns.demo import seed

    data_dir = Path(args.dir or "demo-data").resolve()
    settings = demo_settings(app.settings, data_dir)
    engine = make_engine(settings.effective_database_url)
    ensure_schema(engine)
    seeded = seed(engine, policy_version=settings.policy_version)
    if seeded:
        print(f"seeded a demo database at {data_dir / 'demo.db'}", file=sys.stderr)
    if args.no_ui:
        return 0
    from tui.app import run_app

    return run_app(settings, engine=engine)


# ---------------------------------------------------------------- parser


def build_parser() -> Parser:
    p = Parser(prog=PROG, description="A marketing email campaign manager that respects consent.")
    p.add_argument("--config", help="TOML configuration file (default: ./campaigns.toml)")
    sub = p.add_subparsers(dest="command", parser_class=Parser)

    def cmd(parent: Any, name: str, func: Callable[..., int], help: str) -> Parser:
        sp = parent.add_parser(name, help=help, description=help)
        sp.set_defaults(func=func)
        sp.add_argument("--json", action="store_true", help="print JSON")
        return sp

    cmd(sub, "tui", cmd_tui, "open the terminal UI")
    d = cmd(sub, "demo", cmd_demo, "seed a demo database and open the UI (nothing is sent out)")
    d.add_argument("--dir", help="where the demo database lives (default: ./demo-data)")
    d.add_argument("--no-ui", action="store_true", help="only seed the database")

    contacts = sub.add_parser("contacts", help="import, export, count and look after contacts")
    csub = contacts.add_subparsers(dest="subcommand", required=True, parser_class=Parser)
    c = cmd(csub, "import", cmd_contacts_import, "import contacts from a CSV file")
    c.add_argument("file")
    c.add_argument("--dry-run", action="store_true", help="check and count, write nothing")
    c = cmd(csub, "export", cmd_contacts_export, "export contacts with their current consent")
    c.add_argument("file")
    c = cmd(csub, "count", cmd_contacts_count, "count eligible contacts")
    c.add_argument("--purpose", help="promotional, research or third_party")
    c.add_argument("--country", action="append", help="country code (repeat for any of)")
    c.add_argument("--city", action="append", help="city (repeat for any of)")
    c.add_argument("--tag", action="append", help="tag (repeat for all of)")
    c.add_argument("--attr", action="append", metavar="KEY=VALUE", help="custom attribute")
    c.add_argument("--segment", action="append", metavar="FILTER", help="e.g. signed_up_after=…")
    c = cmd(csub, "show", cmd_contacts_show, "everything held about one person")
    c.add_argument("email")
    c = cmd(csub, "consent", cmd_contacts_consent, "record a consent change from a letter/call")
    c.add_argument("email")
    c.add_argument("--purpose", required=True)
    g = c.add_mutually_exclusive_group(required=True)
    g.add_argument("--grant", action="store_true")
    g.add_argument("--withdraw", action="store_true")
    c.add_argument("--note", required=True, help="how the request came, e.g. 'letter of 3 May'")
    c.add_argument("--operator", help="who records it (default: $USER)")
    c = cmd(csub, "forget", cmd_contacts_forget, "erase a contact, keeping only a suppression hash")
    c.add_argument("email")

    camp = sub.add_parser("campaign", help="create, list, show, schedule and cancel campaigns")
    ksub = camp.add_subparsers(dest="subcommand", required=True, parser_class=Parser)
    c = cmd(ksub, "create", cmd_campaign_create, "create a draft campaign")
    c.add_argument("--kind", required=True, help="promotional, survey or third_party_offer")
    c.add_argument("--name", required=True)
    c.add_argument("--subject", required=True)
    c.add_argument("--body-file", required=True, help="the body, in Markdown")
    c.add_argument("--template")
    c.add_argument("--sponsor", help="on whose behalf a third-party offer is sent")
    c.add_argument("--survey-url", help="the survey a survey campaign links to")
    c.add_argument("--preheader")
    c.add_argument(
        "--segment",
        action="append",
        metavar="FILTER",
        help="country=DE,FR  city=Berlin  tag=vip  attr.plan=gold  signed_up_after=2024-01-01",
    )
    c.set_defaults(country=None, tag=None)
    cmd(ksub, "list", cmd_campaign_list, "list campaigns with status and counts")
    c = cmd(ksub, "show", cmd_campaign_show, "show a campaign's status and counts")
    c.add_argument("name")
    c = cmd(ksub, "schedule", cmd_campaign_schedule, "schedule a campaign for send-due")
    c.add_argument("name")
    c.add_argument("--at", required=True, help="ISO 8601; without an offset it is local time")
    c = cmd(ksub, "preview", cmd_campaign_preview, "render one real message")
    c.add_argument("name")
    c.add_argument("--to", metavar="EMAIL", help="render for this contact")
    c.add_argument("--out", metavar="FILE.eml", help="write the whole message to a file")
    c = cmd(ksub, "send", cmd_campaign_send, "send now (or test-send with --test-to)")
    c.add_argument("name")
    c.add_argument(
        "--test-to",
        action="append",
        metavar="EMAIL",
        help="send a test copy to this address (repeatable); not counted, nothing recorded",
    )
    c = cmd(ksub, "cancel", cmd_campaign_cancel, "cancel a campaign")
    c.add_argument("name")
    c = cmd(ksub, "pause", cmd_campaign_pause, "pause a running send (resume goes on)")
    c.add_argument("name")
    c = cmd(ksub, "resume", cmd_campaign_resume, "let a paused send go on")
    c.add_argument("name")
    c = cmd(
        ksub,
        "release",
        cmd_campaign_release,
        "send the deliveries held back because their receiving domain kept blocking us",
    )
    c.add_argument("name")
    c.add_argument("--domain", help="only this receiving domain's")

    c = cmd(sub, "serve", cmd_serve, "serve the unsubscribe and preference pages")
    c.add_argument("--host", default="127.0.0.1")
    c.add_argument("--port", type=int, default=8080)
    cmd(sub, "send-due", cmd_send_due, "for cron: send scheduled campaigns that are due, resume")
    inbox = sub.add_parser("inbox", help="what came back: bounces, complaints, mailto unsubscribes")
    isub = inbox.add_subparsers(dest="subcommand", required=True, parser_class=Parser)
    cmd(
        isub,
        "process",
        cmd_inbox_process,
        "for cron: read the return mailbox (CAMPAIGNS_INBOX_URL) once and apply what came back",
    )
    c = cmd(
        isub,
        "reclassify",
        cmd_inbox_reclassify,
        "read past hard bounces again under today's reason rules; lift those that were "
        "about us (a block), not the address",
    )
    c.add_argument("--dry-run", action="store_true", help="only list what would be lifted")

    dbp = sub.add_parser("db", help="database maintenance")
    dsub = dbp.add_subparsers(dest="subcommand", required=True, parser_class=Parser)
    cmd(dsub, "upgrade", cmd_db_upgrade, "create or upgrade the database schema")
    return p


def _first_line(error: object) -> str:
    """Errors are one line: drivers (psycopg, say) add hints on further lines."""
    lines = str(error).strip().splitlines()
    return lines[0].strip() if lines else type(error).__name__


def _known_errors() -> tuple[type[BaseException], ...]:
    from campaigns.campaign import CampaignError, CampaignNotFound
    from campaigns.contacts import ContactNotFound

    return (CampaignError, CampaignNotFound, ContactNotFound, Failure, ValueError)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        args.func, args.json = cmd_tui, False
    try:
        settings = load_settings(args.config)
        return args.func(App(settings), args)
    except UsageError as exc:
        print(f"{PROG}: error: {_first_line(exc)}", file=sys.stderr)
        return 2
    except (ConfigError, DatabaseError) as exc:
        print(f"{PROG}: error: {_first_line(exc)}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if isinstance(exc, _known_errors()):
            msg = exc.args[0] if exc.args else str(exc)
            print(f"{PROG}: error: {_first_line(msg)}", file=sys.stderr)
            return 1
        if os.environ.get("CAMPAIGNS_DEBUG"):
            raise
        from sqlalchemy.exc import OperationalError

        if isinstance(exc, OperationalError):
            print(f"{PROG}: error: database: {str(exc.orig).splitlines()[0]}", file=sys.stderr)
            return 1
        first = str(exc).splitlines()[0] if str(exc) else ""
        print(
            f"{PROG}: internal error: {type(exc).__name__}: {first} "
            "(set CAMPAIGNS_DEBUG=1 for details)",
            file=sys.stderr,
        )
        return 1
