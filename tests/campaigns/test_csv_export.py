"""Contacts CSV export, and export → import round trips, on real databases."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlmodel import select

from campaigns import addresses, csv_export
from campaigns.csv_export import export_contacts
from campaigns.csv_import import import_contacts
from campaigns.csv_reading import _looks_like_card_column
from campaigns.models import Contact, ContactTag
from campaigns.purposes import ConsentState, Purpose
from tests.campaigns.test_csv_import import assert_ledger_consistent
from tests.conftest import Db

POLICY = "2026-01"
STANDARD = (
    "email,name,address,postcode,town,city,country,"
    "consent_promotional,consent_research,consent_third_party,tags"
)


@dataclass
class Person:
    email: str
    name: str = ""
    address: str = ""
    postcode: str = ""
    town: str = ""
    city: str = ""
    country: str = ""
    states: tuple[str, str, str] = ("none", "none", "none")
    tags: tuple[str, ...] = ()
    attributes: dict[str, str] = field(default_factory=dict)


def insert(db: Db, people: list[Person]) -> None:
    with db.session() as s:
        for p in people:
            c = Contact(
                email=p.email,
                email_key=addresses.key(p.email),
                name=p.name,
                address=p.address,
                postcode=p.postcode,
                town=p.town,
                city=p.city,
                country=p.country,
                attributes=p.attributes,
                promotional=p.states[0],
                research=p.states[1],
                third_party=p.states[2],
            )
            s.add(c)
            s.flush()
            for tag in p.tags:
                s.add(ContactTag(contact_id=c.id, tag=tag))
        s.commit()


def read(path: Path) -> list[list[str]]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.reader(f))


def granted(db: Db) -> dict[str, tuple[bool, ...]]:
    with db.session() as s:
        return {
            c.email_key: tuple(getattr(c, p.value) == ConsentState.GRANTED for p in Purpose)
            for c in s.exec(select(Contact))
        }


def test_export_writes_the_importable_columns_and_attributes(db: Db, tmp_path: Path) -> None:
    insert(
        db,
        [
            Person(
                "Anna@example.com",
                name="Anna",
                city="Berlin",
                country="DE",
                states=("granted", "withdrawn", "none"),
                tags=("wine", "vip"),
                attributes={"level": "gold"},
            ),
            Person("bob@example.com", states=("none", "granted", "granted"), attributes={"z": "1"}),
        ],
    )
    path = tmp_path / "out.csv"

    assert export_contacts(db.engine, path) == 2

    rows = read(path)
    assert ",".join(rows[0]) == f"{STANDARD},level,z"
    assert rows[1] == [
        "Anna@example.com",
        "Anna",
        "",
        "",
        "",
        "Berlin",
        "DE",
        "yes",
        "no",
        "no",
        "vip;wine",
        "gold",
        "",
    ]
    assert rows[2][7:10] == ["no", "yes", "yes"] and rows[2][-1] == "1"
    assert not list(tmp_path.glob(".out.csv.*")), "temporary file left behind"


def test_formula_like_values_are_escaped_and_import_back_unchanged(db: Db, tmp_path: Path) -> None:
    values = ['=HYPERLINK("http://x")', "+49 30 1234", "-", "@SUM(1)", "'=already", "plain"]
    insert(db, [Person(f"p{i}@example.com", name=v) for i, v in enumerate(values)])
    path = tmp_path / "out.csv"
    export_contacts(db.engine, path)

    names = [row[1] for row in read(path)[1:]]
    assert names == [
        '\'=HYPERLINK("http://x")',
        "'+49 30 1234",
        "'-",
        "'@SUM(1)",
        "''=already",
        "plain",
    ]
    db.clean()
    report = import_contacts(db.engine, path, policy_version=POLICY)
    assert report.rejected == [] and report.imported == len(values)
    with db.session() as s:
        assert [c.name for c in s.exec(select(Contact).order_by(Contact.id))] == values


def test_export_pages_through_contacts_and_finds_every_attribute(
    db: Db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(csv_export, "PAGE_ROWS", 3)
    people = [Person(f"p{i:02}@example.com", tags=(f"t{i}",)) for i in range(10)]
    people[9].attributes = {"only_the_last": "yes"}
    insert(db, people)
    path = tmp_path / "out.csv"

    assert export_contacts(db.engine, path) == 10

    rows = read(path)
    assert rows[0][-1] == "only_the_last"
    assert [r[0] for r in rows[1:]] == [p.email for p in people]
    assert [r[10] for r in rows[1:]] == [f"t{i}" for i in range(10)]
    assert rows[-1][-1] == "yes" and rows[1][-1] == ""


def test_an_attribute_that_appears_during_the_export_gets_its_column(
    db: Db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    insert(db, [Person("ann@example.com", attributes={"level": "gold"})])
    # As if the contact gained the attribute after the keys were collected.
    monkeypatch.setattr(csv_export, "_attribute_keys", lambda engine: [])
    path = tmp_path / "out.csv"
    assert export_contacts(db.engine, path) == 1
    assert read(path) == [
        [*STANDARD.split(","), "level"],
        ["ann@example.com"]
        + [""] * 6
        + [
            "no",
            "no",
            "no",
            "",
            "gold",
        ],
    ]


def test_empty_database_exports_a_header(db: Db, tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    assert export_contacts(db.engine, path) == 0
    assert read(path) == [STANDARD.split(",")]


# ------------------------------------------------------------------- round trip

# Values as the importer stores them: trimmed, no control characters.
TEXT = st.one_of(
    st.text(
        st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters=";"), max_size=15
    ).map(str.strip),
    st.sampled_from(
        ["=1+1", "'=1", "''@x", "-", "+", "-5", "+49 30 1234", "-cmd", "@x", "a\nb", 'say "hi"']
    ),
).filter(lambda v: v == v.strip())
LOCAL = st.from_regex(r"[a-zA-Z0-9=+-][a-zA-Z0-9_=+-]{0,8}", fullmatch=True)
EMAIL = st.builds(
    lambda local, domain: f"{local}@{domain}", LOCAL, st.sampled_from(["example.com", "x.de"])
)
# Not a name the importer takes for a card-number column ("cc", "pan", ...): it
# refuses such a file whole, by design.
KEY = st.from_regex(r"[a-z_][a-z0-9_ ]{0,8}[a-z0-9_]", fullmatch=True).filter(
    lambda k: k not in STANDARD.split(",") and not _looks_like_card_column(k)
)
STATE = st.sampled_from(["granted", "none", "withdrawn"])


@st.composite
def persons(draw: st.DrawFn) -> list[Person]:
    emails = draw(st.lists(EMAIL, max_size=8, unique_by=lambda e: e.lower()))
    return [
        Person(
            email,
            name=draw(TEXT),
            address=draw(TEXT),
            postcode=draw(TEXT.map(lambda v: v[:50].strip())),
            town=draw(TEXT),
            city=draw(TEXT),
            country=draw(st.sampled_from(["", "DE", "AT", "GB"])),
            states=(draw(STATE), draw(STATE), draw(STATE)),
            tags=tuple(draw(st.lists(TEXT.filter(bool), max_size=3, unique=True))),
            attributes=draw(st.dictionaries(KEY, TEXT.filter(bool), max_size=3)),
        )
        for email in emails
    ]


@settings(
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    max_examples=25,
    deadline=None,
)
@given(people=persons())
def test_export_import_export_round_trips(db: Db, tmp_path: Path, people: list[Person]) -> None:
    db.clean()
    insert(db, people)
    before = granted(db)
    first, second = tmp_path / "first.csv", tmp_path / "second.csv"
    assert export_contacts(db.engine, first) == len(people)

    db.clean()  # a fresh database
    report = import_contacts(db.engine, first, policy_version=POLICY)
    assert report.rejected == [] and report.imported == len(people)
    export_contacts(db.engine, second)

    assert first.read_bytes() == second.read_bytes()
    # The file says granted or not; a personal withdrawal comes back as "not granted".
    assert granted(db) == before
    assert_ledger_consistent(db)
