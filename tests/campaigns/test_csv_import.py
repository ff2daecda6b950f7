"""Contacts CSV import (DESIGN.md §3 "Contacts CSV", consent rules of §2), on real databases."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from campaigns import addresses, consent, csv_import, suppression
from campaigns.consent import next_state
from campaigns.csv_import import Conflict, ImportRefused, ImportReport, import_contacts
from campaigns.models import ConsentEvent, Contact, ContactTag
from campaigns.purposes import ConsentState, Purpose, SuppressionReason
from tests.conftest import Db

POLICY = "2026-01"
HEADER = (
    "email,name,address,postcode,town,city,country,"
    "consent_promotional,consent_research,consent_third_party,tags"
)


@pytest.fixture(autouse=True, params=["read-here", "read-in-a-second-process"])
def reading(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test twice: files read and checked in this process (what small files get),
    and in the second process that big files get (csv_import.PARALLEL_MIN_BYTES)."""
    if request.param == "read-in-a-second-process":
        monkeypatch.setattr(csv_import, "PARALLEL_MIN_BYTES", 0)
    return str(request.param)


def write(tmp_path: Path, content: str | bytes, name: str = "contacts.csv") -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8", newline="")
    else:
        path.write_bytes(content)
    return path


def run(db: Db, path: Path, **kw: Any) -> ImportReport:
    return import_contacts(db.engine, path, policy_version=POLICY, **kw)


def people(db: Db) -> dict[str, Contact]:
    with db.session() as s:
        return {c.email_key: c for c in s.exec(select(Contact))}


def events(db: Db) -> list[ConsentEvent]:
    with db.session() as s:
        return list(s.exec(select(ConsentEvent).order_by(col(ConsentEvent.id))))


def tags_of(db: Db, email: str) -> set[str]:
    with db.session() as s:
        stmt = (
            select(ContactTag.tag)
            .join(Contact, col(Contact.id) == ContactTag.contact_id)
            .where(Contact.email_key == addresses.key(email))
        )
        return set(s.exec(stmt))


def snapshot(db: Db) -> dict[str, list[tuple[Any, ...]]]:
    """Everything the importer may touch, for 'nothing changed' comparisons."""
    with db.engine.connect() as conn:
        return {
            table: [tuple(r) for r in conn.execute(text(f"SELECT * FROM {table} ORDER BY 1, 2"))]
            for table in ("contacts", "consent_events", "contact_tags", "suppressions")
        }


def assert_ledger_consistent(db: Db) -> None:
    """Every contact's cached state is what its ledger says, event ids included, and
    every stored address is valid and normalised."""
    by_contact: dict[int, list[ConsentEvent]] = {}
    for ev in events(db):
        by_contact.setdefault(ev.contact_id, []).append(ev)
    for c in people(db).values():
        assert addresses.is_valid(c.email), c.email
        assert c.email == addresses.normalise(c.email)
        assert c.email_key == addresses.key(c.email)
        for purpose in Purpose:
            state, last = ConsentState.NONE.value, None
            for ev in by_contact.get(c.id, []):
                if ev.purpose == purpose.value:
                    after = next_state(state, ev.granted, ev.source)
                    assert after is not None, "an event that changed nothing was written"
                    state, last = after, ev.id
            assert getattr(c, purpose.value) == state
            assert getattr(c, f"{purpose.value}_event_id") == last


# ------------------------------------------------------------------- good files


def test_good_file_is_imported_normalised_with_one_event_per_grant(db: Db, tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "\ufeffEmail , Name,Address,Postcode,Town,City,Country,Consent_Promotional,"
        "consent_research,consent_third_party,Tags,Loyalty Level\r\n"
        " Anna.Schmidt@Example.COM ,  Anna Schmidt , Hauptstr. 1 ,10115,,Berlin, de ,"
        "YES,no,,vip; wine ;;vip,gold\r\n"
        "bob@shop.example,Bob,,,,,at,true,1,yes,,\r\n"
        "carl@shop.example,Carl,,,,,,0,False,No,,\r\n",
    )
    report = run(db, path)

    assert (report.imported, report.updated, report.unchanged) == (3, 0, 0)
    assert report.rejected == [] and report.conflicts == [] and not report.dry_run
    stored = people(db)
    anna = stored["anna.schmidt@example.com"]
    # Kept as given but trimmed, domain lower-cased; compared case-folded.
    assert anna.email == "Anna.Schmidt@example.com"
    assert (anna.name, anna.address, anna.postcode, anna.city, anna.country) == (
        "Anna Schmidt",
        "Hauptstr. 1",
        "10115",
        "Berlin",
        "DE",
    )
    assert anna.attributes == {"loyalty level": "gold"}
    assert tags_of(db, "anna.schmidt@example.com") == {"vip", "wine"}
    # Blank third-party consent never grants; "no" writes no event for a new contact.
    assert (anna.promotional, anna.research, anna.third_party) == ("granted", "none", "none")
    bob = stored["bob@shop.example"]
    assert (bob.promotional, bob.research, bob.third_party) == ("granted",) * 3
    carl = stored["carl@shop.example"]
    assert (carl.promotional, carl.research, carl.third_party) == ("none",) * 3

    evs = events(db)
    assert len(evs) == 4
    assert {(e.contact_id, e.purpose) for e in evs} == {
        (anna.id, "promotional"),
        (bob.id, "promotional"),
        (bob.id, "research"),
        (bob.id, "third_party"),
    }
    for e in evs:
        assert e.granted and e.source == "import:contacts.csv" and e.policy_version == POLICY
        assert e.occurred_at.tzinfo is not None
    assert anna.promotional_event_id == next(e.id for e in evs if e.contact_id == anna.id)
    assert_ledger_consistent(db)


def test_source_can_be_given(db: Db, tmp_path: Path) -> None:
    path = write(tmp_path, "email,consent_research\nann@example.com,yes\n")
    run(db, path, source="import:crm-2026-05")
    assert [e.source for e in events(db)] == ["import:crm-2026-05"]


def test_existing_contact_blank_cells_change_nothing_and_tags_are_added(
    db: Db, tmp_path: Path
) -> None:
    run(
        db,
        write(
            tmp_path,
            f"{HEADER},level\nann@example.com,Ann,,,,Wien,at,yes,yes,yes,vip,gold\n",
            "first.csv",
        ),
    )
    before = people(db)["ann@example.com"]

    report = run(
        db,
        write(tmp_path, f"{HEADER},level,shoe\nANN@example.com,,,,,,,,,,wine,,42\n", "second.csv"),
    )

    assert (report.imported, report.updated, report.unchanged) == (0, 1, 0)
    after = people(db)["ann@example.com"]
    assert (after.name, after.city, after.country) == ("Ann", "Wien", "AT")
    assert after.attributes == {"level": "gold", "shoe": "42"}
    assert (after.promotional, after.research, after.third_party) == ("granted",) * 3
    assert after.promotional_event_id == before.promotional_event_id
    assert tags_of(db, "ann@example.com") == {"vip", "wine"}
    assert len(events(db)) == 3


def test_a_no_in_the_file_clears_a_grant_with_an_event(db: Db, tmp_path: Path) -> None:
    run(db, write(tmp_path, "email,consent_promotional\nann@example.com,yes\n", "a.csv"))
    report = run(db, write(tmp_path, "email,consent_promotional,name\nann@example.com,no,Ann\n"))
    assert report.updated == 1
    ann = people(db)["ann@example.com"]
    assert ann.promotional == ConsentState.NONE and ann.name == "Ann"
    withdrawal = events(db)[-1]
    assert (withdrawal.granted, withdrawal.source) == (False, "import:contacts.csv")
    assert ann.promotional_event_id == withdrawal.id
    assert_ledger_consistent(db)


# ------------------------------------------------------------------- bad rows


def test_bad_rows_are_reported_with_the_line_they_start_on(db: Db, tmp_path: Path) -> None:
    rows = [
        HEADER,  # 1
        'ann@example.com,"Ann\nMulti\nLine",,,,,,yes,,,',  # 2-4
        "not-an-address,Bad,,,,,,,,,",  # 5
        "bob@example.com,Bob,,,,,,maybe,,,",  # 6
        "carl@example.com,Carl,,,,,,,,",  # 7: too few fields
        "dora@example.com,Dora,,,,,,,,,,extra",  # 8: too many
        "ANN@EXAMPLE.com,Again,,,,,,,,,",  # 9: duplicate, other case
        'eve@example.com,=HYPERLINK("http://x"),,,,,,,,,',  # 10
        "fay@example.com,Fay\x00,,,,,,,,,",  # 11
        f"gus@example.com,{'x' * 10_001},,,,,,,,,",  # 12
        f'hal@example.com,"{"y" * 200_000}",,,,,,,,,',  # 13: beyond csv's own field limit
        "ida@example.com,,,,,,,yes,,,",  # 14
        "",  # 15: blank line, skipped
        ",,,,,,,,,,",  # 16: all blank, skipped
        ",Nobody,,,,,,,,,",  # 17
        f"jo@example.com,{'n' * 501},,,,,,,,,",  # 18: longer than the name column
        "kim@example.com,Kim,,,,,,,,,tag1;" + "t" * 101,  # 19
        "lou@example.com,Lou,,,,,,,,,",  # 20
    ]
    data = ("\r\n".join(rows) + "\r\n").encode()
    # Line 21: not UTF-8.
    data += b"max@example.com,M\xe4x,,,,,,,,,\r\nned@example.com,Ned,,,,,,,,,\r\n"
    report = run(db, write(tmp_path, data))

    reasons = {r.line: r.reason for r in report.rejected}
    assert sorted(reasons) == [5, 6, 7, 8, 9, 10, 11, 12, 13, 17, 18, 19, 21]
    assert "invalid email address" in reasons[5]
    assert "consent_promotional" in reasons[6] and "maybe" in reasons[6]
    assert reasons[7] == "expected 11 fields, found 10"
    assert reasons[8] == "expected 11 fields, found 12"
    assert reasons[9] == "duplicate of an address earlier in the file"
    assert "spreadsheet formula" in reasons[10] and reasons[10].startswith("name:")
    assert "control character" in reasons[11] and "U+0000" in reasons[11]
    assert "10,000 characters" in reasons[12]
    assert "10,000 characters" in reasons[13]
    assert reasons[17] == "no email address"
    assert "name: longer than 500" in reasons[18]
    assert "tags:" in reasons[19]
    assert "not valid UTF-8" in reasons[21]
    for reason in reasons.values():
        assert "\n" not in reason and len(reason) < 200
    # Every good row around them is in, whole.
    assert set(people(db)) == {
        "ann@example.com",
        "ida@example.com",
        "lou@example.com",
        "ned@example.com",
    }
    assert people(db)["ann@example.com"].name == "Ann\nMulti\nLine"
    assert report.imported == 4
    assert_ledger_consistent(db)


def test_a_runaway_quote_or_a_huge_line_costs_rows_not_the_import(db: Db, tmp_path: Path) -> None:
    swallowed = "".join(f"eve{i}@example.com,Eve\n" for i in range(8_000))  # > 131,072 chars
    content = (
        "email,name\n"
        "ann@example.com,Ann\n"  # 2
        f"bob@example.com,{'z' * 1_100_000}\n"  # 3: one huge physical line
        "carl@example.com,Carl\n"  # 4
        'dora@example.com,"Dora\n'  # 5: the quote never closes
        f"{swallowed}"
        "last@example.com,Last\n"
    )
    report = run(db, write(tmp_path, content))
    reasons = {r.line: r.reason for r in report.rejected}
    assert reasons[3] == "row is longer than 1,000,000 characters (unbalanced quote?)"
    assert reasons[5] == "a field is longer than 10,000 characters"
    stored = people(db)
    # Reading resumes after each: the rows before and the last one are in.
    assert {"ann@example.com", "carl@example.com", "last@example.com"} <= set(stored)
    assert "bob@example.com" not in stored and "dora@example.com" not in stored


def test_formula_escapes_numbers_and_phone_numbers(db: Db, tmp_path: Path) -> None:
    content = (
        "email,name,phone,note\n"
        "ann@example.com,'=SUM(A1),+49 30 1234-567,-\n"  # 2: the exporter's escape
        "bob@example.com,Bob,-12.5,''@home\n"  # 3
        "carl@example.com,@SUM(1),,\n"  # 4
        "dora@example.com,Dora,+cmd|' /C calc'!A0,\n"  # 5
        'eve@example.com,"\t=1",,\n'  # 6
        "fay@example.com,-2+3+cmd,,\n"  # 7
        "gus@example.com,'plain,,\n"  # 8: a quote before anything else stays
    )
    report = run(db, write(tmp_path, content))
    assert sorted(r.line for r in report.rejected) == [4, 5, 6, 7]
    stored = people(db)
    assert stored["ann@example.com"].name == "=SUM(A1)"
    assert stored["ann@example.com"].attributes == {"phone": "+49 30 1234-567", "note": "-"}
    assert stored["bob@example.com"].attributes == {"phone": "-12.5", "note": "'@home"}
    assert stored["gus@example.com"].name == "'plain"


def test_erased_address_is_refused_and_suppressed_one_is_marked(db: Db, tmp_path: Path) -> None:
    with db.session() as s:
        s.add(Contact(email="gone@example.com", email_key="gone@example.com"))
        s.commit()
        assert suppression.forget(s, "gone@example.com")
        suppression.suppress(s, "Bounce@Example.com", SuppressionReason.HARD_BOUNCE)
        s.commit()

    report = run(
        db,
        write(
            tmp_path,
            "email,consent_promotional\nGONE@example.com,yes\nbounce@example.com,yes\n",
        ),
    )

    assert [(r.line, r.reason) for r in report.rejected] == [
        (2, "address was erased at the person's request")
    ]
    stored = people(db)
    assert "gone@example.com" not in stored
    assert stored["bounce@example.com"].suppressed == SuppressionReason.HARD_BOUNCE
    with db.session() as s:
        may = consent.may_send(s, stored["bounce@example.com"].id, Purpose.PROMOTIONAL)
    assert not may.allowed
    assert report.imported == 1


def test_personal_withdrawal_is_a_conflict_and_the_rest_of_the_row_applies(
    db: Db, tmp_path: Path
) -> None:
    run(db, write(tmp_path, "email,consent_promotional\nann@example.com,yes\n", "a.csv"))
    with db.session() as s:
        ann = s.exec(select(Contact)).one()
        consent.record(
            s, ann, Purpose.PROMOTIONAL, granted=False, source="one-click", policy_version=POLICY
        )
        s.commit()
    n_events = len(events(db))

    report = run(
        db,
        write(
            tmp_path,
            "email,name,consent_promotional,consent_research\n"
            "bob@example.com,Bob,yes,\n"
            "ann@example.com,Ann,yes,yes\n",
        ),
    )

    assert report.conflicts == [
        Conflict(3, "promotional", report.conflicts[0].reason),
    ]
    assert "one-click" in report.conflicts[0].reason
    assert (report.imported, report.updated) == (1, 1)
    ann = people(db)["ann@example.com"]
    assert ann.promotional == ConsentState.WITHDRAWN
    assert (ann.research, ann.name) == (ConsentState.GRANTED, "Ann")
    assert len(events(db)) == n_events + 2  # bob's grant and ann's research
    assert_ledger_consistent(db)


# ------------------------------------------------------------------- refused files


def luhn_ok(digits: str) -> bool:
    """The Luhn check as ISO/IEC 7812-1 states it, written here apart from the product's:
    from the right, every second digit doubled, a two-digit product's digits added."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        n = int(ch) * (2 if i % 2 else 1)
        total += n // 10 + n % 10
    return total % 10 == 0


def luhn_complete(digits: str) -> str:
    """digits plus the check digit that makes the whole pass Luhn."""
    for last in "0123456789":
        if luhn_ok(digits + last):
            return digits + last
    raise AssertionError


# Test card numbers published by payment processors (Stripe's and PayPal's test-card
# lists): every brand, each with doubled digits above 4 so the Luhn doubling matters.
PUBLISHED_TEST_CARDS = [
    "5555555555554444",  # Mastercard
    "5105105105105100",  # Mastercard
    "2223003122003222",  # Mastercard 2-series
    "378282246310005",  # American Express
    "371449635398431",  # American Express
    "4012888888881881",  # Visa
    "4000056655665556",  # Visa debit
    "6011111111111117",  # Discover
    "6011000990139424",  # Discover
    "3056930009020004",  # Diners Club
    "36227206271667",  # Diners Club, 14 digits
    "3566002020360505",  # JCB
    "6200000000000005",  # UnionPay
]


def test_published_test_cards_pass_our_own_luhn() -> None:
    # The oracle above, checked against the processors' lists: each passes, and
    # changing its last digit makes it fail.
    for card in PUBLISHED_TEST_CARDS:
        assert luhn_ok(card), card
        assert not luhn_ok(card[:-1] + str((int(card[-1]) + 1) % 10)), card


@pytest.mark.parametrize("card", PUBLISHED_TEST_CARDS)
def test_every_brand_of_card_number_is_refused(db: Db, tmp_path: Path, card: str) -> None:
    spaced = " ".join(card[i : i + 4] for i in range(0, len(card), 4))
    path = write(tmp_path, f"email,order ref\nann@example.com,A-1\nbob@example.com,{spaced}\n")
    with pytest.raises(ImportRefused, match=r"column 'order ref' holds payment card numbers"):
        run(db, path)
    assert people(db) == {}
    assert csv_import.is_card_number(card) and csv_import.is_card_number(spaced)
    # One digit off is no card number: it is imported like any other value.
    near = card[:-1] + str((int(card[-1]) + 1) % 10)
    assert not csv_import.is_card_number(near)


CARD = "4111 1111 1111 1111"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "empty"),
        ("\n\nann@example.com\n", "blank"),
        ("name,city\nAnn,Wien\n", "no 'email' column"),
        ("ann@example.com,Ann\nbob@example.com,Bob\n", "no 'email' column"),
        ("email,Name,name\nann@example.com,a,b\n", "'name' appears twice"),
        ("email,,name\nann@example.com,a,b\n", "column 2 has no name"),
        ("email,Credit Card Number\nann@example.com,x\n", "'credit card number'"),
        ("email,cc\nann@example.com,x\n", "'cc'"),
        ("email,card_no\nann@example.com,x\n", "'card_no'"),
        (f"email,notes\nann@example.com,hello\nbob@example.com,{CARD}\n", "'notes'"),
        ("email,ref\nann@example.com,x\nbob@example.com,4242-4242-4242-4242\n", "line 3"),
        (f"email,name,x\nann@example.com,a,b\nbob@example.com,b,c,'{CARD}\n", "beyond"),
        ("email,=cmd()\nann@example.com,x\n", "formula"),
    ],
)
def test_refused_files_write_nothing(db: Db, tmp_path: Path, content: str, message: str) -> None:
    run(db, write(tmp_path, "email,consent_promotional\nold@example.com,yes\n", "old.csv"))
    before = snapshot(db)
    with pytest.raises(ImportRefused) as exc:
        run(db, write(tmp_path, content))
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)
    assert snapshot(db) == before


def test_card_column_by_value_names_the_column(db: Db, tmp_path: Path) -> None:
    rows = "".join(f"p{i}@example.com,fine\n" for i in range(3000))
    path = write(tmp_path, f"email,Customer Ref\n{rows}late@example.com,{CARD}\n")
    with pytest.raises(ImportRefused, match=r"column 'customer ref' holds payment card numbers"):
        run(db, path)
    assert people(db) == {}


def test_numbers_that_are_not_card_numbers_are_fine(db: Db, tmp_path: Path) -> None:
    not_luhn = "4111 1111 1111 1112"
    zero_lead = luhn_complete("0049301234567")  # a phone number written 0049...
    assert csv_import._luhn(zero_lead.replace(" ", ""))
    path = write(
        tmp_path,
        f"email,ref,phone,id\nann@example.com,{not_luhn},{zero_lead},123456789012\n",
    )
    assert run(db, path).imported == 1


def test_unreadable_files_are_refused(db: Db, tmp_path: Path) -> None:
    with pytest.raises(ImportRefused, match="cannot read"):
        run(db, tmp_path / "missing.csv")
    with pytest.raises(ImportRefused, match="cannot read"):
        run(db, tmp_path)
    utf16 = write(tmp_path, "email\nann@example.com\n".encode("utf-16"))
    with pytest.raises(ImportRefused, match="UTF-16"):
        run(db, utf16)
    assert people(db) == {}


def test_bad_policy_version_is_refused_before_reading(db: Db, tmp_path: Path) -> None:
    path = write(tmp_path, "email\nann@example.com\n")
    with pytest.raises(ImportRefused, match="policy version"):
        import_contacts(db.engine, path, policy_version="")
    assert people(db) == {}


# ------------------------------------------------------------------- idempotence, dry run


def mixed_file(tmp_path: Path) -> Path:
    rows = [
        f"{HEADER},level",
        "ann@example.com,Ann,,,,,de,yes,no,,vip;wine,gold",
        "Bob@Example.com,Bob,,,,,,no,yes,yes,,",
        "carl@example.com,,,,,,,,,,,",
        "dora@example.com,Dora,,,,,,yes,yes,,b2b,",  # personal withdrawal below
        "gone@example.com,Gone,,,,,,yes,,,,",  # erased below
        "bad,,,,,,,,,,,",
        "=x@example.com,,,,,,,,,,,",
    ]
    return write(tmp_path, "\n".join(rows) + "\n")


def test_reimport_changes_nothing(db: Db, tmp_path: Path) -> None:
    path = mixed_file(tmp_path)
    first = run(db, path)
    assert first.imported == 5
    before = snapshot(db)

    second = run(db, path)

    assert (second.imported, second.updated, second.unchanged) == (0, 0, 5)
    assert second.rejected == first.rejected
    assert snapshot(db) == before


def test_dry_run_counts_like_the_real_run_and_writes_nothing(db: Db, tmp_path: Path) -> None:
    seed = write(tmp_path, "email,consent_promotional\ndora@example.com,yes\n", "seed.csv")
    run(db, seed)
    with db.session() as s:
        dora = s.exec(select(Contact)).one()
        consent.record(
            s, dora, Purpose.PROMOTIONAL, granted=False, source="mailto", policy_version=POLICY
        )
        s.add(Contact(email="gone@example.com", email_key="gone@example.com"))
        s.commit()
        suppression.forget(s, "gone@example.com")
        s.commit()
    path = mixed_file(tmp_path)
    before = snapshot(db)

    dry = run(db, path, dry_run=True)

    assert snapshot(db) == before
    assert dry.dry_run
    real = run(db, path)
    assert not real.dry_run
    assert vars(dry) == {**vars(real), "dry_run": True}
    assert (real.imported, real.updated, real.unchanged) == (3, 1, 0)
    assert [r.line for r in real.rejected] == [6, 7, 8]
    assert [c.line for c in real.conflicts] == [5]


def test_small_batches_progress_and_duplicates_across_batches(
    db: Db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(csv_import, "BATCH_ROWS", 3)
    rows = [f"p{i}@example.com,{'yes' if i % 2 else ''}" for i in range(10)]
    rows.insert(8, "P1@example.com,yes")  # duplicate of a row two batches earlier
    seen: list[int] = []

    report = run(
        db,
        write(tmp_path, "email,consent_research\n" + "\n".join(rows) + "\n"),
        progress=seen.append,
    )

    assert report.imported == 10
    assert [(r.line, r.reason) for r in report.rejected] == [
        (10, "duplicate of an address earlier in the file")
    ]
    assert seen == sorted(seen) and seen[-1] == 11 and len(seen) >= 3
    assert len(events(db)) == 5
    assert_ledger_consistent(db)


def test_sqlite_commits_batches_in_groups_and_a_failure_keeps_earlier_groups(
    db: Db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if db.dialect != "sqlite":
        pytest.skip("PostgreSQL commits each batch (concurrent writers may need a retry)")
    monkeypatch.setattr(csv_import, "BATCH_ROWS", 3)
    monkeypatch.setattr(csv_import, "GROUP_ROWS", 7)
    rows = [f"p{i}@example.com,yes,vip" for i in range(20)]
    visible: list[int] = []

    def count_from_elsewhere(done: int) -> None:
        # A plain reader (deferred transaction): WAL lets it in at any time.
        other = sqlite3.connect(db.engine.url.database or "")
        try:
            visible.append(other.execute("SELECT count(*) FROM contacts").fetchone()[0])
        finally:
            other.close()
        if len(visible) == 5:
            raise OSError("disk full")  # stands for anything failing half-way

    with pytest.raises(OSError, match="disk full"):
        run(
            db,
            write(tmp_path, "email,consent_promotional,tags\n" + "\n".join(rows) + "\n"),
            progress=count_from_elsewhere,
        )
    # Batches of 3 rows, committed once a group holds 7 or more: after 9, after 18 ...
    assert visible == [0, 0, 9, 9, 9]
    # ... and the group the failure hit is rolled back whole.
    assert len(people(db)) == 9 and len(events(db)) == 9
    assert_ledger_consistent(db)


@contextmanager
def sqlite_trigger(db: Db, when: str, action: str) -> Iterator[None]:
    """A trigger doing ``action`` ``when`` (a SQLite trigger's event and condition),
    for as long as the block runs."""
    with db.engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE TRIGGER test_trigger {when} BEGIN {action}; END")
    try:
        yield
    finally:
        with db.engine.begin() as conn:
            conn.exec_driver_sql("DROP TRIGGER test_trigger")


def test_sqlite_a_statement_failing_halfway_rolls_its_group_back_whole(
    db: Db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The importer's multi-row INSERTs keep no statement journal (OR ROLLBACK): a
    failure in the middle of one undoes its whole group, never half a statement."""
    if db.dialect != "sqlite":
        pytest.skip("PostgreSQL commits each batch (concurrent writers may need a retry)")
    monkeypatch.setattr(csv_import, "BATCH_ROWS", 5)
    monkeypatch.setattr(csv_import, "GROUP_ROWS", 10)
    rows = [f"p{i}@example.com,yes,vip;news" for i in range(1, 31)]
    path = write(tmp_path, "email,consent_promotional,tags\n" + "\n".join(rows) + "\n")
    # The 13th contact's consent event fails inside the database, in the middle of the
    # second group's second batch and of its INSERT of five events.
    with (
        sqlite_trigger(
            db,
            "BEFORE INSERT ON consent_events WHEN NEW.contact_id = 13",
            "SELECT RAISE(ABORT, 'the disk is full')",
        ),
        pytest.raises(Exception, match="the disk is full"),
    ):
        run(db, path)
    assert sorted(people(db)) == sorted(f"p{i}@example.com" for i in range(1, 11))
    assert len(events(db)) == 10
    with db.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM contact_tags").scalar() == 20
    assert_ledger_consistent(db)

    report = run(db, path)  # the same file again: the rest comes in, nothing twice
    assert (report.imported, report.unchanged) == (20, 10)
    assert len(people(db)) == 30 and len(events(db)) == 30
    assert_ledger_consistent(db)


def test_sqlite_a_row_naming_no_contact_fails_the_import_as_itself(db: Db, tmp_path: Path) -> None:
    """Tags and events are checked against their contact at COMMIT (schema 0004): the
    import fails with that error, keeps nothing of the group, and the database is free
    for the next writer."""
    if db.dialect != "sqlite":
        pytest.skip("PostgreSQL commits each batch (concurrent writers may need a retry)")
    rows = [f"p{i}@example.com,yes" for i in range(1, 6)]
    path = write(tmp_path, "email,consent_promotional\n" + "\n".join(rows) + "\n")
    with (
        # Stands in for any bug writing such a row.
        sqlite_trigger(
            db,
            "AFTER INSERT ON contacts WHEN NEW.email_key = 'p3@example.com'",
            "INSERT INTO contact_tags (contact_id, tag) VALUES (-1, 'x')",
        ),
        pytest.raises(IntegrityError, match="FOREIGN KEY"),
    ):
        run(db, path)
    assert people(db) == {} and events(db) == []
    assert run(db, path).imported == 5
    assert_ledger_consistent(db)


def test_a_big_batch_of_new_and_known_people_mixed(db: Db, tmp_path: Path) -> None:
    """One batch of 1,000 rows, half of them people already stored (under other letter
    cases). SQLite writes it many rows to a statement without a look-up first."""
    header = "email,country,consent_promotional,consent_research,tags\n"
    known = [f"p{i}@example.com,DE,yes,,vip" for i in range(0, 1000, 2)]
    run(db, write(tmp_path, header + "\n".join(known) + "\n", "known.csv"))
    rows = [f"P{i}@Example.com,AT,,yes,news" for i in range(1000)]
    report = run(db, write(tmp_path, header + "\n".join(rows) + "\n", "mixed.csv"))
    assert (report.imported, report.updated, report.unchanged) == (500, 500, 0)
    assert len(people(db)) == 1000 and len(events(db)) == 500 + 1000
    assert_ledger_consistent(db)
    with db.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM contact_tags").scalar() == 1500
        stale = conn.exec_driver_sql(
            "SELECT count(*) FROM contact_tags t JOIN contacts c ON c.id = t.contact_id"
            " WHERE t.eligible IS NULL OR t.country IS NULL"
            " OR t.eligible <> c.eligible OR t.country <> c.country"
        ).scalar()
    assert stale == 0


# ------------------------------------------------------------------- hostile files

NAMES = ["email", "name", "country", "consent_promotional", "consent_third_party", "tags", "x"]
NASTY = [
    "=cmd|' /C calc'!A0",
    "@SUM(1+1)",
    "+cmd",
    "-2+3",
    "'=ok",
    "\t=1",
    "\r=1",
    '"',
    'a""b',
    "yes",
    "No",
    " 1 ",
    "vip;;x",
    "Ann@Example.COM",
    "ann@example.com",
    "bob@example.org",
    "=bob@example.org",
    "\x00",
    "ü\u2028é",
    "\ufeff",
    "x" * 10_001,
    "4111 1111 1111 1111",
]


@st.composite
def hostile_csv(draw: st.DrawFn) -> bytes:
    email = st.from_regex(r"[a-zA-Z0-9.]{1,8}@[a-z]{1,5}\.(com|de)", fullmatch=True)
    field = st.one_of(st.sampled_from(NASTY), st.text(max_size=12), email)
    kind = draw(st.sampled_from(["good"] * 6 + ["duplicate", "none", "random", "empty-name"]))
    if kind == "good":
        header = ["email", *draw(st.lists(st.sampled_from(NAMES[1:]), max_size=4, unique=True))]
    elif kind == "duplicate":
        header = ["email", "Email"]
    elif kind == "empty-name":
        header = ["email", ""]
    elif kind == "none":
        header = []
    else:
        header = draw(st.lists(field, min_size=1, max_size=5))
    # Mostly rows of the header's width that start with an address; some of any shape.
    shaped = st.builds(
        lambda first, rest: [first, *rest],
        st.one_of(email, email, field),
        st.lists(field, min_size=max(len(header) - 1, 0), max_size=max(len(header) - 1, 0)),
    )
    rows = draw(st.lists(st.one_of(shaped, shaped, st.lists(field, max_size=6)), max_size=8))
    newline = st.sampled_from(["\n", "\r\n", "\r"])

    def cell(value: str) -> str:
        if draw(st.booleans()):
            return '"' + value.replace('"', '""') + '"'
        return value

    lines = [",".join(cell(v) for v in row) + draw(newline) for row in [header, *rows] if row]
    data = "".join(lines).encode("utf-8", "surrogatepass")
    if draw(st.booleans()):
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.binary(max_size=6)) + data[at:]
    if draw(st.booleans()):
        data = b"\xef\xbb\xbf" + data
    return data


@settings(
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    max_examples=40,
    deadline=None,
)
@given(data=hostile_csv())
def test_hostile_files_are_refused_or_imported_whole(db: Db, tmp_path: Path, data: bytes) -> None:
    db.clean()
    path = write(tmp_path, data)
    try:
        report = run(db, path)
    except ImportRefused as exc:
        assert "\n" not in str(exc)
        assert people(db) == {} and events(db) == []
        return
    stored = people(db)
    assert report.imported == len(stored)
    assert report.updated == report.unchanged == 0
    for r in report.rejected:
        assert r.line >= 2 and r.reason
    with db.engine.connect() as conn:
        orphans = conn.execute(
            text(
                "SELECT count(*) FROM contact_tags "
                "WHERE contact_id NOT IN (SELECT id FROM contacts)"
            )
        ).scalar_one()
    assert orphans == 0
    assert_ledger_consistent(db)


# ------------------------------------------------------------------- the second process


def test_the_reading_process_hands_its_errors_over(tmp_path: Path) -> None:
    with (
        pytest.raises(ImportRefused, match="cannot read the file"),
        csv_import._batches_from_process(tmp_path / "gone.csv", ["email"], b"k", 10) as batches,
    ):
        list(batches)


def test_without_a_second_interpreter_the_file_is_read_here(
    db: Db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(csv_import, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(csv_import.sys, "executable", str(tmp_path / "no-such-python"))

    report = run(db, mixed_file(tmp_path))

    assert report.imported == 5
    assert [r.line for r in report.rejected] == [7, 8]
    assert_ledger_consistent(db)


def test_a_reading_process_that_dies_at_once_is_replaced_by_reading_here(
    db: Db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(csv_import, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(csv_import, "_READER", "import sys; sys.exit(3)")

    report = run(db, mixed_file(tmp_path))

    assert report.imported == 5
    assert_ledger_consistent(db)


def test_a_reading_process_that_dies_midway_fails_the_import(
    db: Db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(csv_import, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(
        csv_import,
        "_READER",
        "import pickle, sys; sys.stdin.buffer.read(); "
        "sys.stdout.buffer.write(pickle.dumps(('batch', ([], [], 0)))); sys.exit(3)",
    )

    with pytest.raises(RuntimeError, match=r"ended unexpectedly \(exit status 3\)"):
        run(db, mixed_file(tmp_path))
    assert people(db) == {}


def test_the_reading_side_knows_the_tables_limits_and_needs_no_database_library() -> None:
    import subprocess
    import sys

    from campaigns import csv_reading
    from campaigns.models import Contact, ContactTag

    assert {
        name: Contact.__table__.c[name].type.length for name in csv_reading.TEXT_COLUMNS
    } == csv_reading._MAX_LEN
    assert ContactTag.__table__.c.tag.type.length == csv_reading._MAX_TAG
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, campaigns.csv_reading; print(sorted(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "sqlalchemy" not in loaded and "sqlmodel" not in loaded


# ------------------------------------------------------------------- optimistic batches

POOL = [f"p{i}@example.com" for i in range(12)]
CONSENT_CELLS = ["", "yes", "no"]


@st.composite
def import_files(draw: st.DrawFn) -> list[str]:
    """A few files over a small pool of people: new ones, known ones, or both mixed."""
    files = []
    for _ in range(draw(st.integers(1, 4))):
        emails = draw(st.lists(st.sampled_from(POOL), min_size=1, max_size=9, unique=True))
        lines = ["email,country,consent_promotional,consent_research,tags"]
        for email in emails:
            cells = [
                draw(st.sampled_from(["", "DE", "AT"])),
                draw(st.sampled_from(CONSENT_CELLS)),
                draw(st.sampled_from(CONSENT_CELLS)),
                draw(st.sampled_from(["", "vip", "news;VIP", "a;b"])),
            ]
            lines.append(",".join([email, *cells]))
        files.append("\n".join(lines) + "\n")
    return files


def _state(engine: Any) -> dict[str, Any]:
    """What a user sees of the contacts, by address (ids may differ)."""
    with engine.connect() as conn:
        contacts = conn.exec_driver_sql(
            "SELECT id, email, country, promotional, research, third_party, suppressed"
            " FROM contacts"
        ).all()
        by_id = {r[0]: r[1] for r in contacts}
        events = conn.exec_driver_sql(
            "SELECT contact_id, purpose, granted, source FROM consent_events ORDER BY id"
        ).all()
        tags = conn.exec_driver_sql(
            "SELECT contact_id, tag, eligible, country FROM contact_tags"
        ).all()
    return {
        "contacts": sorted(tuple(r[1:]) for r in contacts),
        "events": sorted((by_id[c], *rest) for c, *rest in events),
        "tags": sorted((by_id[c], *rest) for c, *rest in tags),
    }


@settings(
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    max_examples=30,
    deadline=None,
)
@given(files=import_files(), batch_rows=st.integers(1, 5))
def test_batches_written_without_a_look_up_first_end_as_with_one(
    reading: str,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    files: list[str],
    batch_rows: int,
) -> None:
    """SQLite writes batches of new people without looking them up first, and the ones
    already stored the usual way: reports, contacts, ledgers and tags come out the same
    as when every batch is looked up first, whatever mix of new and known people."""
    if reading != "read-here":
        pytest.skip("about the writing side only")
    folder = tmp_path_factory.mktemp("optimistic")
    looked_up = csv_import._write_batch

    def always_looked_up(conn: Any, records: Any, ctx: Any, optimistic: bool = False) -> Any:
        return looked_up(conn, records, ctx)

    outcomes = []
    for name, write_batch in [("optimistic", looked_up), ("looked-up", always_looked_up)]:
        # (Undone after each run: hypothesis calls this test many times.)
        with monkeypatch.context() as patch:
            patch.setattr(csv_import, "BATCH_ROWS", batch_rows)
            patch.setattr(csv_import, "_write_batch", write_batch)
            outcomes.append(_import_all(folder, name, files))
    assert outcomes[0] == outcomes[1]


def _import_all(folder: Path, name: str, files: list[str]) -> tuple[list[Any], dict[str, Any]]:
    """Import the files in turn into a new database: the reports and the end state."""
    from campaigns.db import make_engine, upgrade

    engine = make_engine(f"sqlite:///{folder / name}.db")
    upgrade(engine)
    with Session(engine) as s:  # an erased and a suppressed address among them
        suppression.forget(s, POOL[0])
        suppression.suppress(s, POOL[1], SuppressionReason.COMPLAINT, source="test")
        s.commit()
    reports = []
    for i, content in enumerate(files):
        path = folder / f"{name}-{i}.csv"
        path.write_text(content, encoding="utf-8")
        report = import_contacts(engine, path, policy_version=POLICY, source="import:f")
        reports.append(
            (
                report.imported,
                report.updated,
                report.unchanged,
                [(r.line, r.reason) for r in report.rejected],
                [(c.line, c.purpose) for c in report.conflicts],
            )
        )
    state = _state(engine)
    engine.dispose()
    return reports, state
