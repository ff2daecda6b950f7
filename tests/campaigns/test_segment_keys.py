"""The copies that make segment counts fast stay true whatever writes (migration 0003).

``contacts.eligible`` is generated from the consent states and the suppression, and every
tag carries a copy of its contact's ``eligible`` and ``country``, kept by triggers. A
stale copy would silently count the wrong people, so random sequences of every kind of
write (imports, re-imports, ledger events, suppression, erasure, tags added by the ORM)
are checked after each step: the copies against the contact, and the counts of segments
with tags against plain Python over the same rows.
"""

from __future__ import annotations

import csv
import itertools
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from campaigns import consent, contacts, segments, suppression
from campaigns.consent import ConsentConflict
from campaigns.csv_import import import_contacts
from campaigns.models import Contact, ContactTag
from campaigns.purposes import Purpose, SuppressionReason
from campaigns.segments import Segment
from tests.conftest import Db

POLICY = "2026-01"
EMAILS = [f"p{i}@example.com" for i in range(5)]
COUNTRIES = ["DE", "at", ""]
TAGS = ["vip", "VIP", "news", "Ärger", "ärger"]
BITS = {Purpose.PROMOTIONAL: 1, Purpose.RESEARCH: 2, Purpose.THIRD_PARTY: 4}


def fold(text: str) -> str:
    """A-Z only, written here independently of campaigns.tags."""
    return "".join(chr(ord(c) + 32) if "A" <= c <= "Z" else c for c in text)


# ------------------------------------------------------------------ operations

rows = st.lists(
    st.tuples(
        st.sampled_from(EMAILS),
        st.sampled_from(COUNTRIES),
        st.tuples(*[st.sampled_from(["yes", "no", ""])] * 3),
        st.lists(st.sampled_from(TAGS), max_size=3),
    ),
    min_size=1,
    max_size=4,
    unique_by=lambda r: r[0],
)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("import"), rows),
        st.tuples(
            st.just("consent"),
            st.sampled_from(EMAILS),
            st.sampled_from(list(Purpose)),
            st.booleans(),
        ),
        st.tuples(st.just("suppress"), st.sampled_from(EMAILS)),
        st.tuples(st.just("forget"), st.sampled_from(EMAILS)),
        st.tuples(st.just("tag"), st.sampled_from(EMAILS), st.sampled_from(TAGS)),
        st.tuples(st.just("country"), st.sampled_from(EMAILS), st.sampled_from(COUNTRIES)),
    ),
    min_size=1,
    max_size=8,
)


def apply(db: Db, op: tuple[Any, ...], path: Path) -> None:
    kind = op[0]
    if kind == "import":
        with path.open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["email", "country", *(f"consent_{p.value}" for p in Purpose), "tags"])
            for email, country, flags, tags in op[1]:
                w.writerow([email, country, *flags, ";".join(tags)])
        import_contacts(db.engine, path, policy_version=POLICY)
        return
    with db.session() as s:
        contact = contacts.find(s, op[1])
        if kind == "suppress":
            suppression.suppress(s, op[1], SuppressionReason.HARD_BOUNCE, source="test")
        elif kind == "forget":
            suppression.forget(s, op[1])
        elif contact is None:
            return
        elif kind == "consent":
            source = "form:signup" if op[3] else "unsubscribe-page"
            try:
                consent.record(
                    s, contact, op[2], granted=op[3], source=source, policy_version=POLICY
                )
            except ConsentConflict:
                return
        elif kind == "country":
            contact.country = op[2].upper()
            s.add(contact)
        elif kind == "tag":
            held = {fold(t) for t in contacts.tags_of(s, contact.id or 0)}
            s.add(ContactTag(contact_id=contact.id or 0, tag=op[2]))
            if fold(op[2]) in held:
                # One tag per contact however it is cased: the index refuses the second.
                with pytest.raises(IntegrityError):
                    s.flush()
                s.rollback()
                return
        s.commit()


# ------------------------------------------------------------------ checks


def snapshot(db: Db) -> tuple[dict[int, dict[str, Any]], dict[int, set[str]]]:
    states = ", ".join(p.value for p in BITS)
    with db.engine.connect() as conn:
        found = conn.execute(
            text(f"SELECT id, eligible, country, suppressed, {states} FROM contacts")
        ).all()
        copies = conn.execute(
            text("SELECT contact_id, tag, eligible, country FROM contact_tags")
        ).all()
    people: dict[int, dict[str, Any]] = {}
    for cid, eligible, country, suppressed, *granted in found:
        want = sum(
            bit for bit, state in zip(BITS.values(), granted, strict=True) if state == "granted"
        )
        assert eligible == (0 if suppressed is not None else want), f"eligible of contact {cid}"
        people[cid] = {"eligible": eligible, "country": country}
    tags: dict[int, set[str]] = {}
    for cid, tag, eligible, country in copies:
        person = people[cid]
        assert (eligible, country) == (person["eligible"], person["country"]), (
            f"stale copy on tag {tag!r} of contact {cid}"
        )
        tags.setdefault(cid, set()).add(fold(tag))
    return people, tags


def check_counts(db: Db) -> None:
    people, tags = snapshot(db)
    purposes: list[Purpose | None] = [None, *Purpose]
    tag_sets = [("vip",), ("ÄRGER",), ("Vip", "news")]
    for purpose, countries, wanted in itertools.product(purposes, [(), ("DE",)], tag_sets):
        bits = BITS[purpose] if purpose else 7
        expected = sum(
            1
            for cid, p in people.items()
            if p["eligible"] & bits
            and (not countries or p["country"] in countries)
            and all(fold(t) in tags.get(cid, set()) for t in wanted)
        )
        segment = Segment(purpose=purpose, countries=countries, tags=wanted)
        with db.session() as s:
            assert segments.count(s, segment) == expected, segment.describe()


@settings(
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    deadline=None,
    max_examples=30,
)
@given(ops=operations)
def test_copies_and_counts_follow_every_write(db: Db, tmp_path: Path, ops: list[Any]) -> None:
    db.clean()
    for op in ops:
        apply(db, op, tmp_path / "contacts.csv")
        check_counts(db)


def test_one_tag_per_contact_however_cased(db: Db, tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text("email,consent_promotional,tags\na@example.com,yes,VIP;vip;News\n")
    import_contacts(db.engine, path, policy_version=POLICY)
    path.write_text("email,consent_promotional,tags\na@example.com,yes,vip;NEWS;wine\n")
    report = import_contacts(db.engine, path, policy_version=POLICY)
    assert report.updated == 1
    with db.session() as s:
        contact = contacts.get(s, "a@example.com")
        # The first spelling stays; only the new tag is added.
        assert contacts.tags_of(s, contact.id or 0) == ["News", "VIP", "wine"]
        assert segments.count(s, Segment(purpose=Purpose.PROMOTIONAL, tags=("Vip",))) == 1


@pytest.mark.parametrize("first", ["tag", "withdrawal"])
def test_a_tag_added_during_a_withdrawal_gets_the_new_keys(db: Db, first: str) -> None:
    """PostgreSQL runs writers at once: whichever commits first, the copy ends right."""
    if db.dialect != "postgresql":
        pytest.skip("SQLite has one writer at a time")
    with db.session() as s:
        c = Contact(email="a@x.de", email_key="a@x.de", country="DE", promotional="granted")
        s.add(c)
        s.commit()
        cid = c.id
    add_tag = text("INSERT INTO contact_tags (contact_id, tag) VALUES (:c, 'vip')")
    withdraw = text("UPDATE contacts SET promotional = 'withdrawn' WHERE id = :c")
    statements = [add_tag, withdraw] if first == "tag" else [withdraw, add_tag]
    with db.engine.connect() as one, db.engine.connect() as two:
        one.begin()
        one.execute(statements[0], {"c": cid})
        # The second writer waits for the first one's lock: run it in a thread.
        second = threading.Thread(
            target=lambda: (two.begin(), two.execute(statements[1], {"c": cid}), two.commit())
        )
        second.start()
        second.join(0.5)
        one.commit()
        second.join(10)
        assert not second.is_alive()
    people, tags = snapshot(db)  # asserts every copy equals its contact
    assert people[cid]["eligible"] == 0 and tags == {cid: {"vip"}}
