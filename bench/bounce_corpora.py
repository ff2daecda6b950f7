"""How well `campaigns inbox process` reads real bounces others have labelled (issue 14).

Run by hand against corpora kept outside the project:

    .venv/bin/python bench/bounce_corpora.py [--sisimai DIR] [--flufl DIR] [--misses]

- Sisimai's set-of-emails (github.com/sisimai/set-of-emails, BSD-2): DIR/eml/*.eml and
  DIR/labels/*.jsonl, one line per message, `{"file": ..., "recipients": [{"status",
  "reply", "reason", "hard"}, ...]}` taken from Sisimai's own test tables.
- flufl.bounce's test messages (PyPI sdist, tests/data, Apache-2.0): DIR/*.txt with the
  expectations of its tests/test_detectors.py copied to DIR/_test_detectors.py.

It prints the figures issue 14 is judged on: dead-address recall, and how many
sender/content blocks and single temporary failures would lead to a suppression.
"""

from __future__ import annotations

import argparse
import ast
import email
import email.policy
import json
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mailer.bounces import Kind, Verdict, classify

# Sisimai's reasons in the three sets the issue names (the rest are not counted).
DEAD = {"userunknown", "hostunknown", "hasmoved", "notaccept"}
SENDER = {
    "blocked",
    "rejected",
    "spamdetected",
    "virusdetected",
    "policyviolation",
    "securityerror",
    "authfailure",
    "badreputation",
    "requireptr",
    "notcompliantrfc",
    "contenterror",
    "exceedlimit",
    "mesgtoobig",
    "emailtoolarge",
    "speeding",
    "ratelimited",
    "toomanyconn",
    "norelaying",
    "syntaxerror",
    "failedstarttls",
}
TEMPORARY = {"mailboxfull", "expired", "systemerror", "systemfull", "networkerror"}


def _suppressed(verdict: Verdict) -> int:
    """How many recipients this bounce would suppress at once."""
    if getattr(verdict, "failures", ()):
        return sum(f.kind is Kind.HARD_BOUNCE for f in getattr(verdict, "failures", ()))
    return int(verdict.kind is Kind.HARD_BOUNCE)


def sisimai(root: Path, show_misses: bool) -> None:
    tally: Counter[str] = Counter()
    misses: list[str] = []
    for labels in sorted((root / "labels").glob("*.jsonl")):
        for line in labels.read_text().splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            recipients = item.get("recipients")
            path = root / "eml" / item["file"]
            if not recipients or not path.exists():
                continue
            raw = path.read_bytes()
            verdict = classify(raw)
            hard = _suppressed(verdict)
            reasons = [r["reason"] for r in recipients]
            tally["messages"] += 1
            # Nobody not named: every address acted on is literally in the message.
            named = {a.lower() for f in getattr(verdict, "failures", ()) for a in f.addresses}
            tally["addresses acted on"] += len(named)
            readable = _decoded(raw)
            tally["addresses not in the message"] += sum(a not in readable for a in named)
            if all(r in ("delivered", "vacation", "feedback") for r in reasons):
                tally["not a bounce"] += 1
                tally["not a bounce suppressed"] += hard > 0
            dead = sum(r in DEAD for r in reasons)
            for name, group in (("dead", DEAD), ("sender", SENDER), ("temporary", TEMPORARY)):
                n = sum(r in group for r in reasons)
                if not n:
                    continue
                tally[f"{name} recipients"] += n
                if name == "dead":
                    found = min(n, hard)
                    tally["dead suppressed"] += found
                    if found < n:
                        misses.append(f"missed dead  {item['file']}: {reasons} -> {_says(verdict)}")
                else:
                    # Suppressions beyond the dead recipients of the same message.
                    wrong = min(n, max(0, hard - dead))
                    tally[f"{name} suppressed"] += wrong
                    if wrong:
                        misses.append(
                            f"suppressed {name} {item['file']}: {reasons} -> {_says(verdict)}"
                        )
    print(f"Sisimai set-of-emails: {tally['messages']} labelled messages")
    for name in ("dead", "sender", "temporary"):
        n, s = tally[f"{name} recipients"], tally[f"{name} suppressed"]
        rate = s / n if n else 0.0
        label = "recall" if name == "dead" else "suppressed"
        print(f"  {name:9} recipients {n:4}  suppressed {s:4}  {label} {rate:6.1%}")
    print(
        f"  addresses acted on {tally['addresses acted on']}, not in the message "
        f"{tally['addresses not in the message']}; delivered/vacation/feedback reports "
        f"{tally['not a bounce']}, suppressing {tally['not a bounce suppressed']}"
    )
    if show_misses:
        print("\n".join("  " + m for m in misses))


def _decoded(raw: bytes) -> str:
    """The message's headers and every part decoded (base64, quoted-printable), lower case."""
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    out = [raw.decode("utf-8", "replace")]
    for part in msg.walk():
        payload = part.get_payload(decode=True)
        if isinstance(payload, bytes):
            out.append(payload.decode("utf-8", "replace"))
    return "\n".join(out).lower()


def _says(verdict: Verdict) -> str:
    if getattr(verdict, "failures", ()):
        return ", ".join(
            f"{f.kind.value}/{f.cause.value}/{f.status}" for f in getattr(verdict, "failures", ())
        )
    return f"{verdict.kind.value} ({verdict.reason})"


def flufl(root: Path, show_misses: bool) -> None:
    source = (root / "_test_detectors.py").read_text()
    tree = ast.parse(source)
    table: list[tuple[str, list[bytes], bool]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "DETECTORS" for t in node.targets
        ):
            for _module, name, expected, temporary in ast.literal_eval(node.value):
                table.append((name, expected, temporary))
    tally: Counter[str] = Counter()
    misses: list[str] = []
    for name, expected, temporary in table:
        path = root / name
        if not path.exists():
            continue
        verdict = classify(path.read_bytes())
        want = {e.decode().lower() for e in expected}
        named = {a.lower() for f in getattr(verdict, "failures", ()) for a in f.addresses} or {
            a.lower() for a in verdict.recipients
        }
        # (getattr: the script also scores versions before Kind.BLOCKED existed)
        acted = verdict.kind in (Kind.HARD_BOUNCE, Kind.SOFT_BOUNCE, getattr(Kind, "BLOCKED", None))
        tally["messages"] += 1
        tally["expected addresses"] += len(want)
        tally["addresses found"] += len(want & named) if acted else 0
        tally["addresses not expected"] += len(named - want) if acted else 0
        if temporary:
            tally["temporary"] += 1
            tally["temporary suppressed"] += _suppressed(verdict) > 0
        if show_misses and (not acted or want - named or named - want):
            misses.append(f"{name}: want {sorted(want)} -> {sorted(named)} {_says(verdict)}")
    print("flufl.bounce test messages")
    print(
        f"  messages {tally['messages']}  addresses expected {tally['expected addresses']}"
        f"  found {tally['addresses found']}  not expected {tally['addresses not expected']}"
    )
    print(f"  temporary {tally['temporary']}  suppressed {tally['temporary suppressed']}")
    if show_misses:
        print("\n".join("  " + m for m in misses))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sisimai", type=Path, default=Path("/work/corpora/sisimai"))
    parser.add_argument("--flufl", type=Path, default=Path("/work/corpora/flufl"))
    parser.add_argument("--misses", action="store_true", help="list every miss")
    args = parser.parse_args()
    if args.sisimai.is_dir():
        sisimai(args.sisimai, args.misses)
    if args.flufl.is_dir():
        flufl(args.flufl, args.misses)


if __name__ == "__main__":
    main()
