"""Benchmark: import a large contacts CSV into a fresh SQLite file, then count a segment.

    .venv/bin/python bench/import_contacts.py [--rows 1000000] [--keep]

Generates a CSV (mixed consent, countries, cities, tags and a custom attribute) in a
temporary folder, imports it in a child process (so that the peak memory printed is
the import's own: ru_maxrss of that process), prints rows/s with the consent events
written, then times a three-filter segment count (promotional + country + tag) with
campaigns.segments (first, on a new connection, and remembered).
Targets: >= 50,000 rows/s, peak RSS < 300 MB, count <= 5 ms.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

COUNTRIES = ["DE", "de", "AT", "CH", "FR", "NL", "GB", "IT", "ES", "PL", "SE", "DK"]
CITIES = ["Berlin", "München", "Wien", "Zürich", "Paris", "Amsterdam", "London", "Rome"]
TAGS = ["vip", "newsletter", "b2b", "events", "wine", "coffee", "outdoor", "kids"]
CONSENT = ["yes", "no", "", "true", "0", "YES", "", "no"]
FIRST = ["Anna", "ben", "Chloe", "david", "Emre", "fatima", "Guenther", "hana", "Ivan", "jo"]
HEADER = [
    *("Email", "Name", "Address", "Postcode", "Town", "City", "Country"),
    *("consent_promotional", "consent_research", "consent_third_party", "tags", "loyalty_level"),
]


def generate(path: Path, rows: int, seed: int = 42) -> None:
    rnd = random.Random(seed)
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(HEADER)
        for i in range(rows):
            tags = ";".join(rnd.sample(TAGS, rnd.randint(0, 3)))
            w.writerow(
                [
                    # In no particular order, as real files are: the unique address
                    # index then takes its inserts all over the place.
                    f"{FIRST[i % len(FIRST)]}.{rnd.getrandbits(40):x}.{i}@Example{i % 97}.com",
                    f"Person {i}",
                    f"{rnd.randint(1, 200)} Long Street",
                    f"{rnd.randint(10000, 99999)}",
                    "",
                    rnd.choice(CITIES),
                    rnd.choice(COUNTRIES),
                    rnd.choice(CONSENT),
                    rnd.choice(CONSENT),
                    # Third-party: explicit opt-ins are rare.
                    "yes" if rnd.random() < 0.1 else rnd.choice(["", "no"]),
                    tags,
                    rnd.choice(["gold", "silver", "bronze", ""]),
                ]
            )


def child(csv_path: str, url: str, profile: str | None) -> None:
    """Runs in its own process: migrate, import, print figures as JSON."""
    from sqlalchemy import func, select

    from campaigns.csv_import import import_contacts
    from campaigns.db import make_engine, upgrade
    from campaigns.models import ConsentEvent

    engine = make_engine(url)
    upgrade(engine)
    before = resource.getrusage(resource.RUSAGE_SELF)
    cpu_before = before.ru_utime + before.ru_stime
    start = time.perf_counter()
    if profile:
        import cProfile

        with cProfile.Profile() as prof:
            report = import_contacts(engine, Path(csv_path), policy_version="bench-1")
        prof.dump_stats(profile)
    else:
        report = import_contacts(engine, Path(csv_path), policy_version="bench-1")
    seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    # The importer's own child (the process that reads and checks the CSV), if any.
    reader = resource.getrusage(resource.RUSAGE_CHILDREN)
    with engine.connect() as conn:
        events = conn.execute(select(func.count()).select_from(ConsentEvent)).scalar_one()
    print(
        json.dumps(
            {
                "seconds": seconds,
                "cpu_seconds": usage.ru_utime + usage.ru_stime - cpu_before,
                "imported": report.imported,
                "updated": report.updated,
                "unchanged": report.unchanged,
                "rejected": len(report.rejected),
                "events": events,
                "peak_rss_kb": usage.ru_maxrss,
                "reader_cpu_seconds": reader.ru_utime + reader.ru_stime,
                "reader_peak_rss_kb": reader.ru_maxrss,
            }
        )
    )


def segment_count(url: str) -> tuple[str, int, float, float, float]:
    """(how, count, first, uncached, cached): seconds of one three-filter count.

    first: the first count of a fresh process (connection set-up and SQL compilation
    included); uncached: best of four, each on a new connection, so that the
    per-connection count memory (segments.count) cannot answer, as after any write;
    cached: best of four repeats on one connection with nothing written in between.
    """
    from sqlmodel import Session

    from campaigns.db import make_engine
    from campaigns.segments import Segment, count

    segment = Segment(purpose="promotional", countries=("DE",), tags=("vip",))
    how = "campaigns.segments.count(Segment(promotional, DE, vip))"

    def once(session: Session) -> tuple[int, float]:
        start = time.perf_counter()
        n = count(session, segment)
        return n, time.perf_counter() - start

    engine = make_engine(url)
    try:
        with Session(engine) as session:
            n, first = once(session)
        uncached = []
        for _ in range(4):
            engine.dispose()
            with Session(engine) as session:
                uncached.append(once(session)[1])
        with Session(engine) as session:
            once(session)
            cached = [once(session)[1] for _ in range(4)]
    finally:
        engine.dispose()
    return how, n, first, min(uncached), min(cached)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--keep", action="store_true", help="keep the CSV and database")
    parser.add_argument("--profile", metavar="FILE", help="cProfile the import into FILE")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.profile)
        return
    tmp = Path(tempfile.mkdtemp(prefix="bench-import-"))
    csv_path, db_path = tmp / "contacts.csv", tmp / "bench.db"
    url = f"sqlite:///{db_path}"
    t0 = time.perf_counter()
    generate(csv_path, args.rows)
    size = csv_path.stat().st_size / 1e6
    print(f"generated {args.rows:,} rows ({size:.0f} MB) in {time.perf_counter() - t0:.1f}s")
    load = os.getloadavg()[0]
    cmd = [sys.executable, __file__, "--child", str(csv_path), url]
    if args.profile:
        cmd += ["--profile", args.profile]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.exit(f"import failed:\n{result.stderr}")
    fig = json.loads(result.stdout.strip().splitlines()[-1])
    rate = args.rows / fig["seconds"]
    print(
        f"import: {fig['seconds']:.1f}s, {rate:,.0f} rows/s "
        f"(imported {fig['imported']:,}, rejected {fig['rejected']:,}, "
        f"{fig['events']:,} consent events written)"
    )
    print(
        f"import CPU: {fig['cpu_seconds']:.1f}s, {args.rows / fig['cpu_seconds']:,.0f} rows per "
        f"CPU-second (load average {load:.2f} before, {os.getloadavg()[0]:.2f} after: "
        "other work on the machine slows the wall clock, not the CPU figure)"
    )
    peak_kb = fig["peak_rss_kb"] + fig["reader_peak_rss_kb"]
    if fig["reader_peak_rss_kb"]:
        print(
            f"import peak RSS: {peak_kb / 1024:.0f} MB (writing process "
            f"{fig['peak_rss_kb'] / 1024:.0f} MB + reading process "
            f"{fig['reader_peak_rss_kb'] / 1024:.0f} MB, each at its own peak), "
            f"reading process CPU {fig['reader_cpu_seconds']:.1f}s"
        )
    else:
        print(f"import peak RSS: {peak_kb / 1024:.0f} MB")
    how, n, first, uncached, cached = segment_count(url)
    print(
        f"segment count: {n:,} via {how}: {first * 1000:.1f} ms the first time in a fresh "
        f"process, {uncached * 1000:.2f} ms on a new connection (best of 4: what a count "
        f"costs after any write), {cached * 1000:.2f} ms remembered (best of 4)"
    )
    ok = rate >= 50_000 and peak_kb < 300 * 1024 and uncached <= 0.005
    print("targets (>= 50,000 rows/s, < 300 MB, count <= 5 ms):", "met" if ok else "MISSED")
    if args.keep:
        print(f"kept: {tmp}")
    else:
        for p in tmp.iterdir():
            p.unlink()
        tmp.rmdir()


if __name__ == "__main__":
    main()
