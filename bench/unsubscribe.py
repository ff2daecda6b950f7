"""Benchmark: hold N one-click unsubscribe POSTs per second against `campaigns serve`.

    .venv/bin/python bench/unsubscribe.py [--rate 500] [--seconds 30] [--postgres URL]
                                          [--no-sqlite] [--connections 100]

Seeds a fresh database (a fresh SQLite file, or a fresh schema in the PostgreSQL database
given by --postgres) with rate x seconds contacts holding promotional consent and one
promotional campaign, through the `campaigns` command itself, and the deliveries a send
would have made (links are honoured only for real deliveries). Starts `campaigns serve` on
a free loopback port and, from this process, sends one RFC 8058 POST
(`List-Unsubscribe=One-Click`) per contact, each for a distinct token, on a fixed
schedule (request i at start + i/rate, open loop: a slow server does not slow the
schedule, and latency counts from the scheduled time, so queueing shows up in it).

Prints latency p50/p90/p99/max, errors (target 0), the achieved rate, and checks that
every successful POST's consent event is in the database afterwards (source `one-click`,
exactly one per contact that got a 200, none for any other).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, func, insert, text  # noqa: E402
from sqlmodel import Session, col, select  # noqa: E402

from campaigns.models import Campaign, ConsentEvent, Contact, Delivery  # noqa: E402
from mailer.tokens import TokenKind, TokenSigner  # noqa: E402

CAMPAIGNS = Path(sys.executable).with_name("campaigns")
KEY = "bench-unsubscribe-key"
BODY = b"List-Unsubscribe=One-Click"
CONNECTIONS = 100


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_cli(env: dict[str, str], cwd: Path, *args: str) -> None:
    # cwd: no campaigns.toml of the checkout may leak into the bench's settings.
    subprocess.run([str(CAMPAIGNS), *args], env=env, cwd=cwd, check=True, capture_output=True)


def seed(env: dict[str, str], workdir: Path, contacts: int) -> None:
    csv_path = workdir / "contacts.csv"
    with csv_path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["email", "name", "consent_promotional"])
        for i in range(contacts):
            w.writerow([f"person{i}@example.com", f"Person {i}", "yes"])
    body = workdir / "body.md"
    body.write_text("Our spring sale is on.\n", encoding="utf-8")
    run_cli(env, workdir, "db", "upgrade")
    run_cli(env, workdir, "contacts", "import", str(csv_path))
    run_cli(
        env,
        workdir,
        "campaign",
        "create",
        "--kind",
        "promotional",
        "--name",
        "Bench",
        "--subject",
        "Spring sale",
        "--body-file",
        str(body),
    )


@dataclass
class Results:
    latencies: list[float] = field(default_factory=list)
    ok_contacts: list[int] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1


class Connection:
    """One keep-alive HTTP/1.1 connection; just enough HTTP for these answers."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def post(self, request: bytes) -> int:
        self.writer.write(request)
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        if length:
            await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        self.writer.close()


async def load(
    port: int,
    tokens: list[tuple[int, str]],
    rate: float,
    results: Results,
    connections: int = CONNECTIONS,
) -> float:
    """Send one POST per token on the schedule; returns the elapsed seconds.

    At most `connections` are open at once (kept alive, like wrk's); a request whose turn
    comes while all are busy waits for one, and that wait counts in its latency.
    """
    idle: list[Connection] = []
    slots = asyncio.Semaphore(connections)
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.2

    async def one(index: int, contact_id: int, token: str) -> None:
        scheduled = start + index / rate
        request = (
            f"POST /u/{token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {len(BODY)}\r\n\r\n"
        ).encode("ascii") + BODY
        async with slots:
            await send(request, scheduled, contact_id)

    async def send(request: bytes, scheduled: float, contact_id: int) -> None:
        while True:
            conn = idle.pop() if idle else None
            fresh = conn is None
            try:
                if conn is None:
                    conn = await Connection.open(port)
                status = await conn.post(request)
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                if conn is not None:
                    conn.close()
                # A kept-alive connection that the server closed while it was idle: try
                # the next one, as HTTP clients do; a fresh connection failing is an error.
                if fresh:
                    results.error(type(exc).__name__)
                    return
                continue
            idle.append(conn)
            results.latencies.append(loop.time() - scheduled)
            if status == 200:
                results.ok_contacts.append(contact_id)
            else:
                results.error(f"HTTP {status}")
            return

    tasks = []
    for i, (contact_id, token) in enumerate(tokens):
        delay = start + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, contact_id, token)))
    await asyncio.gather(*tasks)
    elapsed = loop.time() - start
    for conn in idle:
        conn.close()
    return elapsed


def wait_healthy(port: int, server: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    request = f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with status {server.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(request.encode("ascii"))
                if s.recv(100).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit("the server did not become healthy")


def cpu_seconds(pid: int) -> float | None:
    """CPU time used so far by a process (Linux), to show the server's cost per request."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, round(p / 100 * (len(sorted_values) - 1)))
    return sorted_values[index]


def run(database_url: str, workdir: Path, rate: float, seconds: float, connections: int) -> bool:
    contacts = int(rate * seconds)
    env = {
        **os.environ,
        "CAMPAIGNS_DATABASE_URL": database_url,
        "CAMPAIGNS_SECRET_KEY": KEY,
        "CAMPAIGNS_DATA_DIR": str(workdir / "data"),
    }
    t0 = time.perf_counter()
    seed(env, workdir, contacts)
    engine = create_engine(database_url)
    with Session(engine) as session:
        campaign_id = session.exec(select(Campaign.id)).one()
        ids = list(session.exec(select(Contact.id).order_by(col(Contact.id))))
        # The deliveries a real send would have made: links are honoured only for those.
        session.execute(
            insert(Delivery),
            [{"campaign_id": campaign_id, "contact_id": cid, "status": "sent"} for cid in ids],
        )
        session.commit()
    signer = TokenSigner([KEY])
    tokens = [(cid, signer.sign(TokenKind.UNSUBSCRIBE, cid, campaign_id)) for cid in ids]
    print(f"seeded {len(ids)} contacts in {time.perf_counter() - t0:.1f} s")

    port = free_port()
    log_path = workdir / "server.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [str(CAMPAIGNS), "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_healthy(port, server)
            results = Results()
            cpu_before = cpu_seconds(server.pid)
            elapsed = asyncio.run(load(port, tokens, rate, results, connections))
            cpu_after = cpu_seconds(server.pid)
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()

    lat = sorted(results.latencies)
    ms = [1000 * percentile(lat, p) for p in (50, 90, 99, 100)]
    errors = sum(results.errors.values())
    print(
        f"{len(tokens)} POSTs scheduled at {rate:g}/s: {len(results.ok_contacts)} OK, "
        f"{errors} errors {results.errors or ''}"
    )
    print(f"achieved {len(results.latencies) / elapsed:.1f} responses/s over {elapsed:.1f} s")
    if cpu_before is not None and cpu_after is not None and results.latencies:
        per = (cpu_after - cpu_before) / len(results.latencies) * 1000
        print(f"server CPU: {per:.2f} ms per request; load average now {os.getloadavg()[0]:.2f}")
    print(
        f"latency from scheduled time: p50 {ms[0]:.1f} ms, p90 {ms[1]:.1f} ms, "
        f"p99 {ms[2]:.1f} ms, max {ms[3]:.1f} ms"
    )

    with Session(engine) as session:
        rows = session.exec(
            select(ConsentEvent.contact_id, func.count())
            .where(ConsentEvent.source == "one-click")
            .group_by(col(ConsentEvent.contact_id))
        ).all()
        withdrawn = session.exec(
            select(func.count()).select_from(Contact).where(Contact.promotional == "withdrawn")
        ).one()
    engine.dispose()
    events = {cid: n for cid, n in rows}
    ok = set(results.ok_contacts)
    consistent = set(events) == ok and all(n == 1 for n in events.values()) and withdrawn == len(ok)
    print(
        f"database: {sum(events.values())} one-click events for {len(ok)} successful POSTs, "
        f"{withdrawn} contacts withdrawn: {'consistent' if consistent else 'MISMATCH'}"
    )
    log_text = log_path.read_text(encoding="utf-8", errors="replace")
    if "Traceback" in log_text:
        print("the server logged errors:\n" + log_text[-3000:])
    return consistent and errors == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=500.0, help="POSTs per second")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long to hold it")
    parser.add_argument(
        "--postgres", metavar="URL", help="also run on PostgreSQL, in a fresh schema of URL"
    )
    parser.add_argument("--no-sqlite", action="store_true", help="skip the SQLite run")
    parser.add_argument(
        "--connections", type=int, default=CONNECTIONS, help="keep-alive connections at most"
    )
    args = parser.parse_args()
    good = True
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} before the run")
    with tempfile.TemporaryDirectory(prefix="bench-unsubscribe-") as tmp:
        if not args.no_sqlite:
            print("== SQLite")
            workdir = Path(tmp) / "sqlite"
            workdir.mkdir()
            url = f"sqlite:///{workdir / 'campaigns.db'}"
            good &= run(url, workdir, args.rate, args.seconds, args.connections)
        if args.postgres:
            print("== PostgreSQL")
            workdir = Path(tmp) / "postgres"
            workdir.mkdir()
            schema = f"bench_{uuid.uuid4().hex[:12]}"
            admin = create_engine(args.postgres)
            with admin.begin() as conn:
                conn.execute(text(f"CREATE SCHEMA {schema}"))
            sep = "&" if "?" in args.postgres else "?"
            try:
                good &= run(
                    f"{args.postgres}{sep}options=-csearch_path%3D{schema}",
                    workdir,
                    args.rate,
                    args.seconds,
                    args.connections,
                )
            finally:
                with admin.begin() as conn:
                    conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
                admin.dispose()
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
