"""Our SMTP client against Postfix's C `smtp-source`, both into the same `smtp-sink`.

    .venv/bin/python bench/smtp_client.py [--messages 100000] [--connections 8]
        [--rounds 2] [--compare] [--uvloop]

Needs Debian's `postfix` package for /usr/sbin/smtp-sink and smtp-source (the mail
system itself is not started). Starts `smtp-sink` on a free loopback port, then, in
alternating rounds (the machine is shared, so alternating evens out noise):

- `smtp-source -s 8 -l 5000 -m N -d` (8 sessions, 5,000-byte payload, connections reused);
- our `SmtpConnection`: K asyncio tasks, one connection each, pushing N prebuilt ~5 KB
  messages, each with its own VERP sender and recipient (as the engine sends them).

Prints both rates, their ratio and our CPU µs per message (process time: user + system,
so the syscalls count). `--connections 1,2,4,8,16` tries several K. `--compare` also
times, with fewer messages, the ways we did not take: smtplib in K threads, a
straightforward asyncio-streams client (readline + wait_for per reply), aiosmtplib when
it is installed, and ours on uvloop when that is installed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import shutil
import smtplib
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mailer.transport import SmtpConnection, parse_smtp_url

SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
PAYLOAD = 5000


def build_message(payload: int = PAYLOAD) -> bytes:
    """A prebuilt message: headers like ours and a `payload`-byte text body, CRLF."""
    head = (
        b"From: Example Shop <marketing@example.com>\r\n"
        b"To: Someone <someone@example.org>\r\n"
        b"Subject: Spring sale\r\n"
        b"Date: Thu, 26 Nov 2026 18:00:00 +0000\r\n"
        b"Message-ID: <1234567890.abcdef@example.com>\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"\r\n"
    )
    line = b"Everything in the shop is up to 50% off this week. Come and see us.\r\n"
    body = (line * (payload // len(line) + 1))[:payload]
    body = body[: body.rfind(b"\r\n") + 2]
    return head + body


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def smtp_sink() -> Iterator[int]:
    if not os.path.exists(SINK) or not os.path.exists(SOURCE):
        sys.exit("needs smtp-sink and smtp-source: apt-get install postfix (do not start it)")
    port = free_port()
    cmd = [SINK]
    if os.geteuid() == 0:
        cmd += ["-u", "nobody"]  # smtp-sink refuses to run as root
    cmd += [f"127.0.0.1:{port}", "1000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                sys.exit(f"smtp-sink exited: {err}")
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait()


@dataclass
class Result:
    name: str
    messages: int
    seconds: float
    cpu: float  # seconds of our process (or of the child, for smtp-source)

    @property
    def rate(self) -> float:
        return self.messages / self.seconds

    @property
    def cpu_us(self) -> float:
        return self.cpu / self.messages * 1e6


def run_smtp_source(port: int, messages: int, sessions: int = 8) -> Result:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    cmd = [SOURCE, "-s", str(sessions), "-l", str(PAYLOAD), "-m", str(messages), "-d"]
    t0 = time.perf_counter()
    subprocess.run([*cmd, f"127.0.0.1:{port}"], check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Result(f"smtp-source -s {sessions}", messages, seconds, cpu)


# ---------------------------------------------------------------------- ours


async def _ours(port: int, messages: int, connections: int, data: bytes) -> None:
    url = parse_smtp_url(f"smtp://127.0.0.1:{port}")
    counter = iter(range(messages))

    async def worker() -> None:
        conn = SmtpConnection(url, local_hostname="bench.example.com")
        await conn.connect()
        for i in counter:
            outcome = await conn.send(f"bounces+{i}x@example.com", f"user{i}@example.org", data)
            if not outcome.accepted:
                raise RuntimeError(f"not accepted: {outcome}")
        await conn.close()

    await asyncio.gather(*(worker() for _ in range(connections)))


def timed(name: str, messages: int, fn: Callable[[], object]) -> Result:
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    return Result(name, messages, time.perf_counter() - t0, time.process_time() - c0)


def run_ours(port: int, messages: int, connections: int, data: bytes, loop: str) -> Result:
    def go() -> None:
        coro = _ours(port, messages, connections, data)
        if loop == "uvloop":
            import uvloop

            uvloop.run(coro)
        else:
            asyncio.run(coro)

    return timed(f"ours K={connections} {loop}", messages, go)


# ---------------------------------------------------------------------- the others


def run_smtplib(port: int, messages: int, connections: int, data: bytes) -> Result:
    """What issue 3 measured: plain smtplib, prebuilt messages, one thread per connection."""
    counter = iter(range(messages))
    lock = threading.Lock()

    def worker() -> None:
        with smtplib.SMTP("127.0.0.1", port, local_hostname="bench.example.com") as smtp:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    break
                smtp.sendmail(f"bounces+{i}x@example.com", [f"user{i}@example.org"], data)

    def go() -> None:
        threads = [threading.Thread(target=worker) for _ in range(connections)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    return timed(f"smtplib {connections} threads", messages, go)


async def _streams(port: int, messages: int, connections: int, data: bytes) -> None:
    """The straightforward asyncio client: StreamReader lines and wait_for per reply."""
    counter = iter(range(messages))

    async def reply(reader: asyncio.StreamReader) -> int:
        while True:
            line = await asyncio.wait_for(reader.readline(), 30)
            if line[3:4] != b"-":
                return int(line[:3])

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await reply(reader)
        writer.write(b"EHLO bench.example.com\r\n")
        await reply(reader)
        body = data.replace(b"\r\n.", b"\r\n..") + b".\r\n"
        for i in counter:
            writer.write(
                f"MAIL FROM:<bounces+{i}x@example.com>\r\nRCPT TO:<user{i}@example.org>\r\n"
                "DATA\r\n".encode()
            )
            codes = [await reply(reader) for _ in range(3)]
            if codes != [250, 250, 354]:
                raise RuntimeError(codes)
            writer.write(body)
            await writer.drain()
            if await reply(reader) != 250:
                raise RuntimeError("not accepted")
        writer.write(b"QUIT\r\n")
        await reply(reader)
        writer.close()

    await asyncio.gather(*(worker() for _ in range(connections)))


async def _aiosmtplib(port: int, messages: int, connections: int, data: bytes) -> None:
    import aiosmtplib

    counter = iter(range(messages))

    async def worker() -> None:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
        await smtp.connect()
        for i in counter:
            await smtp.sendmail(f"bounces+{i}x@example.com", [f"user{i}@example.org"], data)
        await smtp.quit()

    await asyncio.gather(*(worker() for _ in range(connections)))


def run_async(name: str, fn: Callable[..., Awaitable[None]], *args: object) -> Result:
    return timed(name, int(args[1]), lambda: asyncio.run(fn(*args)))  # type: ignore[arg-type]


# ---------------------------------------------------------------------- report


def show(result: Result, reference: float | None = None) -> None:
    ratio = f"  {result.rate / reference:5.2f}× C" if reference else ""
    print(
        f"  {result.name:<28} {result.messages:>7} msgs  {result.seconds:7.2f} s"
        f"  {result.rate:8.0f} msg/s  {result.cpu_us:6.1f} µs CPU/msg{ratio}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--connections", default="8", help="K, or a list: 1,2,4,8,16")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--compare", action="store_true", help="also time the alternatives")
    parser.add_argument("--compare-messages", type=int, default=20_000)
    parser.add_argument("--uvloop", action="store_true", help="run ours on uvloop too")
    args = parser.parse_args()
    ks = [int(k) for k in args.connections.split(",")]
    data = build_message()
    n = args.messages
    loops = ["asyncio", "uvloop"] if args.uvloop else ["asyncio"]
    print(f"message: {len(data)} bytes; smtp-source payload {PAYLOAD} bytes + its headers")

    with smtp_sink() as port:
        c_runs: list[Result] = []
        ours: dict[str, list[Result]] = {}
        for r in range(args.rounds):
            print(f"round {r + 1}:")
            c_runs.append(run_smtp_source(port, n))
            show(c_runs[-1])
            for k in ks:
                for loop in loops:
                    res = run_ours(port, n, k, data, loop)
                    ours.setdefault(res.name, []).append(res)
                    show(res, c_runs[-1].rate)

        c_rate = statistics.median(x.rate for x in c_runs)
        print(f"\nmedian over {args.rounds} round(s), {n} messages each:")
        print(f"  smtp-source -s 8             {c_rate:8.0f} msg/s")
        for name, results in ours.items():
            rate = statistics.median(x.rate for x in results)
            cpu = statistics.median(x.cpu_us for x in results)
            print(
                f"  {name:<28} {rate:8.0f} msg/s  ratio {rate / c_rate:4.2f}  {cpu:5.1f} µs CPU/msg"
            )

        if args.compare:
            m = args.compare_messages
            k = ks[-1] if len(ks) == 1 else 8
            print(f"\nalternatives, {m} messages, K={k} (ratio to an smtp-source run just before):")
            ref = run_smtp_source(port, m)
            show(ref)
            show(run_ours(port, m, k, data, "asyncio"), ref.rate)
            show(run_async(f"asyncio streams K={k}", _streams, port, m, k, data), ref.rate)
            show(run_smtplib(port, m, 4, data), ref.rate)
            show(run_smtplib(port, m, k, data), ref.rate)
            try:
                import aiosmtplib  # noqa: F401
            except ImportError:
                print("  aiosmtplib: not installed (issue 3 measured 0.28× C)")
            else:
                show(run_async(f"aiosmtplib K={k}", _aiosmtplib, port, m, k, data), ref.rate)
            try:
                import uvloop  # noqa: F401
            except ImportError:
                print("  uvloop: not installed")
            else:
                show(run_ours(port, m, k, data, "uvloop"), ref.rate)


if __name__ == "__main__":
    main()
