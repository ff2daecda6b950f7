"""The mutation check's report (`python3 dev.py mutants`), run in .venv after `mutmut run`.

Prints every mutant left alive with the lines it changed, then the score of each module.
mutmut's own `results` lists names only; its diff function (pinned version, dev.py) is
used for the lines. Killed: a test failed, the tests timed out, or the type check caught it.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from mutmut.mutation.diff_apply import get_diff_for_mutant

KILLED = {1, 3, 36, 37, -24, 24, 152, 255}
NOT_RUN = {None, 2, 34}  # interrupted or skipped: left out of the score
NO_TESTS = {5, 33}


def main() -> None:
    counts: dict[str, Counter[str]] = {}
    alive: list[tuple[str, str, int]] = []
    for meta in sorted(Path("mutants").rglob("*.py.meta")):
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        source = str(meta.relative_to("mutants"))[: -len(".meta")]
        c = counts.setdefault(source, Counter())
        for name, code in codes.items():
            if code in NOT_RUN:
                continue
            c["total"] += 1
            if code in KILLED:
                c["killed"] += 1
            else:
                alive.append((source, name, code))
    lines: list[str] = []
    for source, name, code in alive:
        diff = get_diff_for_mutant(name, path=source).splitlines()[2:]
        changed = [d for d in diff if d[:1] in "+-" and d[1:].strip()]
        lines.append(f"{name} ({'no test ran it' if code in NO_TESTS else 'survived'})")
        lines += ["    " + d for d in changed]
    (Path("mutants") / "survivors.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), end="\n\n")
    total: Counter[str] = Counter()
    for source, c in counts.items():
        total.update(c)
        print(_score(source, c))
    print(_score("all", total))
    print("the survivors again: mutants/survivors.txt; one in full: .venv/bin/mutmut show NAME")


def _score(what: str, c: Counter[str]) -> str:
    percent = 100 * c["killed"] / max(c["total"], 1)
    return f"{what:32} {c['killed']:5} / {c['total']:5} killed  {percent:5.1f} %"


if __name__ == "__main__":
    main()
