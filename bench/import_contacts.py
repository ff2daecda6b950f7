"""Benchmark: import a large contacts CSV into a fresh SQLite file, then count a segment.

    .venv/bin/python bench/import_contacts.py [--rows 1000000] [--keep]

Generates a CSV (mixed consent, countries, cities, tags and a custom attribute) in a
temporary folder, imports it in a child process (so that the peak memory printed is
the import's own: ru_maxrss of that process), prints rows/s with the consent events
written, then times a three-filter segment count (promotional + country + tag) with
campaigns.segments when it is there, or with the equivalent SQL when it is not.
Targets: >= 50,000 rows/s, peak RSS < 300 MB.
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
from typing import Any

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


def segment_count(url: str) -> tuple[str, int, list[float]]:

    from campaigns.db import make_engine

    engine = make_engine(url)
    try:
        from campaigns.segments import Segment, count
    except ImportError:
        Segment = count = None
    times = []
    for _ in range(5):
        how, n, seconds = _count_once(engine, Segment, count)
        times.append(seconds)
    return how, n, times


def _count_once(engine: Any, Segment: Any, count: Any) -> tuple[str, int, float]:
    from sqlalchemy import func, select
    from sqlmodel import Session

    from campaigns.models import Contact, ContactTag

    with Session(engine) as session:
        start = time.perf_counter()
        if Segment is not None and count is not None:
            how = "campaigns.segments.count(Segment(promotional, DE, vip))"
            n = count(session, Segment(purpose="promotional", countries=("DE",), tags=("vip",)))
        else:
            how = "SQL (campaigns/segments.py has no count yet)"
            stmt = (
                select(func.count())
                .select_from(Contact)
                .where(
                    Contact.promotional == "granted",
                    Contact.country == "DE",
                    Contact.suppressed.is_(None),  # type: ignore[union-attr]
                    select(ContactTag.contact_id)
                    .where(ContactTag.contact_id == Contact.id, ContactTag.tag == "vip")
                    .exists(),
                )
            )
            n = session.execute(stmt).scalar_one()
        return how, n, time.perf_counter() - start


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
    how, n, times = segment_count(url)
    print(
        f"segment count: {n:,} in {times[0] * 1000:.1f} ms the first time, "
        f"{min(times[1:]) * 1000:.1f} ms at best of the next {len(times) - 1} via {how}"
    )
    ok = rate >= 50_000 and peak_kb < 300 * 1024
    print("targets (>= 50,000 rows/s, < 300 MB):", "met" if ok else "MISSED")
    if args.keep:
        print(f"kept: {tmp}")
    else:
        for p in tmp.iterdir():
            p.unlink()
        tmp.rmdir()


if __name__ == "__main__":
    main()
