"""The shape of DESIGN.md §5: arrows point one way, and cron's commands start lean."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _modules(package: str) -> list[str]:
    return [
        ".".join(p.relative_to(ROOT).with_suffix("").parts)
        for p in sorted((ROOT / package).rglob("*.py"))
        if "migrations" not in p.parts and p.name != "__init__.py"
    ]


def _loaded_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys; print('\\n'.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return set(out.stdout.split())


def test_core_imports_neither_mailer_nor_ui() -> None:
    imports = "\n".join(f"import {m}" for m in ["campaigns", *_modules("campaigns")])
    loaded = _loaded_after(imports)
    leaked = {m for m in loaded if m.split(".")[0] in {"mailer", "tui", "textual"}}
    assert not leaked, f"campaigns/ pulled in {sorted(leaked)}"


def test_nothing_outside_tui_imports_textual() -> None:
    offenders = []
    for package in ("campaigns", "mailer"):
        for path in (ROOT / package).rglob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                if any(n.split(".")[0] in {"textual", "tui"} for n in names):
                    offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, f"these import the UI: {offenders}"


def test_command_line_does_not_load_textual_for_cron() -> None:
    loaded = _loaded_after("import tui.cli; tui.cli.build_parser()")
    assert "textual" not in loaded
