"""End-to-end send benchmark (issue 3): our engine against Postfix's C client.

    .venv/bin/python bench/send.py [--contacts 100000] [--small 10000] [--naive 300]

Needs Debian's `postfix` package for /usr/sbin/smtp-sink and smtp-source (the mail
system itself is not started). For each audience size it seeds a fresh SQLite file in
one child process, then sends the campaign in another (snapshot, per-recipient consent
re-check, build, SMTP, marking) into `smtp-sink`, and records that child's wall time,
CPU time and peak memory. In the same run `smtp-source -s 8 -d` pushes the same number
of messages of the same size into the same sink. It also times the naive way (render,
premailer and EmailMessage per recipient, smtplib, one connection) on a few hundred.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import smtplib
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from smtp_client import run_smtp_source, smtp_sink  # noqa: E402

from campaigns.config import Settings  # noqa: E402

BODY = (
    "Hello {{ name }},\n\nOur **winter sale** starts today: up to 30% off coats and boots "
    "until Sunday. " * 12 + "\n\n[See the offers](https://shop.example.com/sale)\n"
)


# Our SMTP connections: the configured default unless --connections says otherwise.
CONNECTIONS = Settings().smtp_connections


def settings_for(folder: Path, port: int, connections: int | None = None) -> Settings:
    return Settings(
        data_dir=folder,
        database_url=f"sqlite:///{folder / 'bench.db'}",
        smtp_url=f"smtp://127.0.0.1:{port}",
        secret_key="bench-key",
        smtp_connections=connections or CONNECTIONS,
        send_rate=0,
    )


def seed(folder: str, contacts: int) -> None:
    """Contacts with promotional consent (and its ledger events), one draft campaign."""
    from sqlalchemy import insert, select, update

    from campaigns import campaign
    from campaigns.db import make_engine, session_scope, upgrade
    from campaigns.models import ConsentEvent, Contact, utcnow
    from campaigns.purposes import Kind

    engine = make_engine(f"sqlite:///{Path(folder) / 'bench.db'}")
    upgrade(engine)
    now = utcnow()
    C, E = Contact.__table__, ConsentEvent.__table__  # type: ignore[attr-defined]
    step = 10_000
    with engine.begin() as conn:
        for start in range(0, contacts, step):
            rows = [
                {
                    "email": f"person{i}@example.org",
                    "email_key": f"person{i}@example.org",
                    "name": f"Person {i}",
                    "address": "",
                    "postcode": "",
                    "town": "",
                    "city": "Berlin",
                    "country": "DE",
                    "attributes": {},
                    "created_at": now,
                    "updated_at": now,
                    "promotional": "granted",
                    "research": "none",
                    "third_party": "none",
                }
                for i in range(start, min(start + step, contacts))
            ]
            conn.execute(insert(C), rows)
        ids = conn.execute(select(C.c.id)).scalars().all()
        conn.execute(
            insert(E),
            [
                {
                    "contact_id": i,
                    "purpose": "promotional",
                    "granted": True,
                    "occurred_at": now,
                    "source": "import:bench.csv",
                    "note": "",
                    "policy_version": "1",
                }
                for i in ids
            ],
        )
        conn.execute(update(C).values(promotional_event_id=C.c.id))
    with session_scope(engine) as s:
        campaign.create(s, kind=Kind.PROMOTIONAL, name="bench", subject="Sale", body=BODY)


def send(folder: str, port: int, connections: int, out: mp.Queue) -> None:  # type: ignore[type-arg]
    from campaigns import deliveries
    from campaigns.db import make_engine
    from mailer.engine import SendEngine

    s = settings_for(Path(folder), port, connections)
    engine = make_engine(s.effective_database_url)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    c0, t0 = time.process_time(), time.perf_counter()
    deliveries.start(engine, 1)
    report = SendEngine(s, engine, worker="bench").run_campaign(1)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    out.put(
        {
            "sent": report.sent,
            "seconds": seconds,
            "cpu": cpu,
            "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            "start_kb": rss0,
        }
    )


def message_size(folder: str, port: int) -> int:
    from sqlmodel import Session

    from campaigns.db import make_engine
    from campaigns.models import Campaign
    from mailer.engine import SendEngine
    from mailer.message import Recipient

    s = settings_for(Path(folder), port)
    engine = make_engine(s.effective_database_url)
    with Session(engine) as session:
        c = session.get(Campaign, 1)
    compiled = SendEngine(s, engine).compile(c)
    return len(compiled.build(Recipient(1, "person1@example.org", "Person 1", {})))


def run_size(contacts: int, port: int, connections: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as folder:
        p = mp.Process(target=seed, args=(folder, contacts))
        p.start()
        p.join()
        q: mp.Queue = mp.Queue()  # type: ignore[type-arg]
        p = mp.Process(target=send, args=(folder, port, connections, q))
        p.start()
        result = q.get()
        p.join()
        result["size"] = message_size(folder, port)
    assert result["sent"] == contacts, result
    return result


def naive(port: int, count: int) -> float:
    """Per recipient: Jinja2 render, premailer, EmailMessage, smtplib on one connection."""
    from email.message import EmailMessage

    import jinja2
    import premailer
    from markdown_it import MarkdownIt

    from mailer.render import EMAIL_TEMPLATES

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(EMAIL_TEMPLATES), autoescape=True)
    md = MarkdownIt()
    t0 = time.perf_counter()
    with smtplib.SMTP("127.0.0.1", port) as smtp:
        for i in range(count):
            name = f"Person {i}"
            body = jinja2.Template(BODY).render(name=name)
            html = md.render(body)
            page = (
                f"<html><head><style>p {{ color: #333; }}</style></head><body>{html}</body></html>"
            )
            inlined = premailer.Premailer(page, allow_network=False).transform()
            msg = EmailMessage()
            msg["From"] = "Shop <news@example.com>"
            msg["To"] = f"{name} <person{i}@example.org>"
            msg["Subject"] = "Sale"
            msg.set_content(body)
            msg.add_alternative(inlined, subtype="html")
            smtp.sendmail("news@example.com", [f"person{i}@example.org"], msg.as_bytes())
    del env
    return count / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--contacts", type=int, default=100_000)
    ap.add_argument("--small", type=int, default=10_000)
    ap.add_argument("--naive", type=int, default=300)
    ap.add_argument(
        "--connections",
        type=int,
        default=CONNECTIONS,
        help="our SMTP connections (default: %(default)s, the setting's default)",
    )
    args = ap.parse_args()
    with smtp_sink() as port:
        small = run_size(args.small, port, args.connections)
        large = run_size(args.contacts, port, args.connections)
        size = int(large["size"])
        ours = large["sent"] / large["seconds"]
        import smtp_client

        smtp_client.PAYLOAD = size  # the same size as our messages
        c_client = run_smtp_source(port, args.contacts)
        slow = naive(port, args.naive)
    print(f"message size                 {size} bytes")
    print(
        f"ours, {args.contacts:,} contacts end to end, {args.connections} connections: "
        f"{ours:,.0f} msg/s ({large['seconds']:.1f} s)"
    )
    print(f"smtp-source -s 8, same count/size: {c_client.rate:,.0f} msg/s")
    print(f"ratio ours / smtp-source     {ours / c_client.rate:.2f}  (target >= 0.7)")
    print(
        f"our CPU per message          {large['cpu'] / large['sent'] * 1e6:.0f} us (target <= 120)"
    )
    print(f"peak memory at {args.small:,}       {small['peak_kb'] / 1024:.0f} MB")
    print(
        f"peak memory at {args.contacts:,}      {large['peak_kb'] / 1024:.0f} MB  "
        f"(ratio {large['peak_kb'] / small['peak_kb']:.2f}, target <= 1.2)"
    )
    print(
        f"naive way ({args.naive} msgs)       {slow:,.0f} msg/s; we are "
        f"{ours / slow:.0f}x faster (target >= 40x)"
    )
    print(json.dumps({"ours": ours, "c": c_client.rate, "small": small, "large": large}))


if __name__ == "__main__":
    main()
