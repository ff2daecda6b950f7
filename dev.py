#!/usr/bin/env python3
"""Set up a virtual environment and run the app or the tests.

    python3 dev.py demo     # set up, then open the app on a demo database
    python3 dev.py test     # set up, then run the whole test suite
    python3 dev.py mutants  # the mutation check of the consent-critical modules (README)

Needs only Python 3.11+ (and git to get here). The environment lives in .venv
and is reinstalled only when pyproject.toml changes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".installed"


def ensure_venv() -> None:
    if sys.version_info < (3, 11):  # noqa: UP036  (dev.py may be run by an older python3)
        sys.exit("campaigns needs Python 3.11 or newer")
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted:
        return
    if not (BIN / "python").exists():
        print("creating .venv …", flush=True)
        venv.create(VENV, with_pip=True)
    print("installing campaigns and its test tools into .venv …", flush=True)
    subprocess.run(
        [str(BIN / "python"), "-m", "pip", "install", "--quiet", "-e", f"{ROOT}[test]"],
        check=True,
    )
    STAMP.write_text(wanted)


# mutmut's internals are used for the report, so its version is pinned.
MUTMUT = "mutmut==3.8.1"


def mutants(rest: list[str]) -> int:
    """`mutmut run` over the modules in pyproject.toml's [tool.mutmut], then the report.

    With no words it starts afresh; `python3 dev.py mutants report` prints the last run's
    report again; any other words are mutant names (globs) for mutmut to run again."""
    python = str(BIN / "python")
    check = subprocess.run([python, "-c", "import mutmut"], capture_output=True)
    if check.returncode != 0:
        print(f"installing {MUTMUT} into .venv …", flush=True)
        subprocess.run([python, "-m", "pip", "install", "--quiet", MUTMUT], check=True)
    if rest[:1] != ["report"]:
        if not rest:
            # mutmut keeps a verdict until the mutated function changes, even when tests
            # were added since: a full check starts afresh.
            shutil.rmtree(ROOT / "mutants", ignore_errors=True)
        jobs = str(os.cpu_count() or 2)
        env = {**os.environ, "HYPOTHESIS_PROFILE": "mutants"}  # tests/conftest.py
        mutmut = [str(BIN / "mutmut"), "run", "--max-children", jobs, *rest]
        code = subprocess.run(mutmut, cwd=ROOT, env=env)
        if code.returncode not in (0, 1):  # 1: some mutants survived
            return code.returncode
    return subprocess.run([python, "tools/mutation_report.py"], cwd=ROOT).returncode


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"demo", "test", "setup", "mutants"}:
        print(__doc__)
        return 2
    ensure_venv()
    what, rest = argv[0], argv[1:]
    if what == "setup":
        return 0
    if what == "mutants":
        return mutants(rest)
    if what == "demo":
        os.execv(str(BIN / "campaigns"), [str(BIN / "campaigns"), "demo", *rest])
    # Two workers: the suite is written to run in parallel on a 2-core machine.
    cmd = [str(BIN / "python"), "-m", "pytest", "-n", "2", *rest]
    return subprocess.run(cmd, cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
