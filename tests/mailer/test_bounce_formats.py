"""The bounce reader against bounces in the formats real MTAs and providers send.

`bounce_corpus/formats/` holds one message per case, modelled on what Postfix, Exim,
Sendmail, qmail, Courier, OpenSMTPD, PowerMTA, amavisd-new, Exchange (2003, 2010, 2016,
Online), Gmail, Yahoo, Outlook.com, Domino, MDaemon, Amazon SES, Zoho, GMX, Orange and
au (KDDI) write, with example domains only. `expected.json` says, for each file, who
failed and how, decided from the message's own text by the rules of DESIGN.md §4 (not
by running the reader): dead addresses are hard bounces, a full mailbox or a transient
failure (delays, expiry after retries even with `Action: failed`) is soft, and anything
about us or our message (blocklists, reputation, DMARC, spam or virus found, policy,
rate limits, size, relaying) is blocked and never costs the person anything. Every
recipient of a report is judged on its own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from campaigns.bounce_reasons import GROUP
from mailer.bounces import Failure, Kind, classify

FORMATS = Path(__file__).parent / "bounce_corpus" / "formats"
EXPECTED: dict[str, dict[str, Any]] = json.loads((FORMATS / "expected.json").read_text())
KIND_OF_GROUP = {
    "address": "hard_bounce",
    "mailbox": "soft_bounce",
    "transient": "soft_bounce",
    "sender": "blocked",
}


def named(failure: Failure) -> set[str]:
    return {a.lower() for a in failure.addresses}


def describe(failure: Failure) -> str:
    group = GROUP[failure.cause].value
    return (
        f"{failure.kind.value}/{group}/{failure.cause.value} status={failure.status or '-'} "
        f"addresses={list(failure.addresses)}"
    )


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_recipient_is_judged_as_the_message_says(name: str) -> None:
    expected = EXPECTED[name]["failures"]
    verdict = classify((FORMATS / name).read_bytes())
    failures = verdict.failures
    seen = "\n  ".join(describe(f) for f in failures) or "(none)"
    context = f"{name}: verdict {verdict.kind.value} ({verdict.reason}); failures:\n  {seen}"
    problems: list[str] = []

    for want in expected:
        address = want["address"].lower()
        mine = [f for f in failures if address in named(f)]
        if not mine:
            problems.append(f"no failure names {address}")
            continue
        right = [
            f
            for f in mine
            if f.kind.value == want["kind"]
            and GROUP[f.cause].value == want["group"]
            and (not want["status"] or f.status == want["status"])
        ]
        if not right:
            problems.append(
                f"{address}: expected {want['kind']}/{want['group']} status={want['status'] or '-'}"
            )
        if want["kind"] != Kind.HARD_BOUNCE.value and any(f.kind is Kind.HARD_BOUNCE for f in mine):
            problems.append(f"{address}: a hard bounce, but the message says {want['kind']}")

    wanted = {w["address"].lower() for w in expected}
    for failure in failures:
        others = named(failure) - wanted
        if others:
            problems.append(f"a failure names {sorted(others)}, who did not fail")

    assert not problems, context + "\n" + "\n".join(problems)


def test_every_message_has_expectations_and_every_expectation_a_message() -> None:
    messages = {p.name for p in FORMATS.glob("*.eml")}
    assert messages == set(EXPECTED)


def test_the_expectations_follow_the_rules() -> None:
    for name, case in EXPECTED.items():
        assert case["format"], name
        assert case["failures"], name
        for want in case["failures"]:
            assert want["kind"] == KIND_OF_GROUP[want["group"]], (name, want)
            assert want["status"] == "" or want["status"][0] in "45", (name, want)


def test_the_corpus_covers_twenty_formats_and_every_group() -> None:
    formats = {case["format"] for case in EXPECTED.values()}
    groups = {want["group"] for case in EXPECTED.values() for want in case["failures"]}
    assert len(formats) >= 20, sorted(formats)
    assert groups >= set(KIND_OF_GROUP), sorted(groups)
