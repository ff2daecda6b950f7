"""Reading and checking a contacts CSV (DESIGN.md §3 "Contacts CSV"), without a database.

campaigns.csv_reading is the half of the import that needs no database: the checks that
refuse a whole file (header, payment card numbers), the checks of each row, and the
batches handed to the writer, here or from the second process (``_reader_main``). The
expected values are written out by hand; test_csv_import.py covers what is stored.
"""

from __future__ import annotations

import gc
import io
import itertools
import pickle
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from campaigns import csv_reading
from campaigns.csv_reading import (
    ImportRefused,
    RejectedRow,
    _inspect,
    _read_batches,
    _reader_main,
    _RowChecker,
    is_card_number,
)
from tests.campaigns.test_csv_import import write

SECRET = b"k"
# HMAC-SHA256 with key b"k" of b"ann@example.com" (worked out apart from the product).
ANN_HASH = "812b5e65283998e47b49528ef531aea6e0a9f94ed9005c6c1cdec12579d7d459"
CARD_WORDS_MESSAGE = (
    "looks like payment card numbers; payment data is never accepted: "
    "remove the column and import again"
)
CARD_VALUES_MESSAGE = "payment data is never accepted: remove the column and import again"
FORMULA_HINT = "looks like a spreadsheet formula (put a ' in front to import it as text)"


def refusal(tmp_path: Path, content: str | bytes) -> str:
    """The message a file with this content is refused with."""
    return refusal_of(write(tmp_path, content))


def refusal_of(path: Path) -> str:
    """The one-line message the file is refused with, before anything is written."""
    with pytest.raises(ImportRefused) as exc:
        _inspect(path)
    message = str(exc.value)
    assert "\n" not in message
    return message


def batches(path: Path, batch_rows: int = 1000) -> list[Any]:
    """The batches of a file that passed inspection."""
    names = _inspect(path)
    return list(_read_batches(path, _RowChecker(names, SECRET), batch_rows))


def read(tmp_path: Path, content: str | bytes) -> tuple[dict[str, Any], dict[int, str]]:
    """(records by normalised address, rejected rows' reasons by line)."""
    records: dict[str, Any] = {}
    rejected: dict[int, str] = {}
    for batch, rows_rejected, _done in batches(write(tmp_path, content)):
        for record in batch:
            records[record[1]] = record
        for r in rows_rejected:
            assert r.line not in rejected
            rejected[r.line] = r.reason
    return records, rejected


def fates(tmp_path: Path, columns: str, rows: list[str], part: int) -> list[Any]:
    """What becomes of each row under the header "email,<columns>", one file for all:
    the record's part (3 texts, 4 consents, 5 tags, 6 attributes), or the reason the
    row is rejected. Each row gets an address of its own."""
    lines = [f"p{i}@example.com,{row}\n" for i, row in enumerate(rows)]
    records, rejected = read(tmp_path, f"email,{columns}\n" + "".join(lines))
    by_line = {record[0]: record for record in records.values()}
    out, line = [], 2
    for text in lines:
        out.append(f"REJECTED {rejected[line]}" if line in rejected else by_line[line][part])
        line += len(io.StringIO(text, newline="").readlines())  # a value may hold newlines
    return out


def quoted(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


# ------------------------------------------------------------------- the header


def test_header_names_are_trimmed_case_folded_and_unescaped(tmp_path: Path) -> None:
    path = write(
        tmp_path, "\ufeff Email ,NAME,'=Total,''@Home,'Plain,Straße\nann@example.com,,,,,\n"
    )
    assert _inspect(path) == ["email", "name", "=total", "'@home", "'plain", "strasse"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "the file is empty: it needs a header row naming the columns"),
        (
            "\nann@example.com\n",
            "the first line is blank: it must be the header row naming the columns",
        ),
        (
            " , ,\nann@example.com\n",
            "the first line is blank: it must be the header row naming the columns",
        ),
        (
            "name,city\nAnn,Wien\n",
            "the header row has no 'email' column (the first line must name the columns)",
        ),
        ("Email,name,EMAIL\n", "column 'email' appears twice in the header row"),
        ("email,name, \n", "column 3 has no name in the header row"),
        ("email,,name\n", "column 2 has no name in the header row"),
        (b"email,N\xe4me\n", "the header row is not valid UTF-8 text: save the file as UTF-8 CSV"),
        ("email,ok,na\x07me\n", "column 3's name contains a control character"),
        ("email,\x7f\n", "column 2's name contains a control character"),
        ("email,=CMD()\n", "column 2's name '=CMD()' looks like a spreadsheet formula"),
        ("email, @x\n", "column 2's name '@x' looks like a spreadsheet formula"),
        ("+x,email\n", "column 1's name '+x' looks like a spreadsheet formula"),
        ("email,-x\n", "column 2's name '-x' looks like a spreadsheet formula"),
        (
            f"email,={'a' * 45}\n",
            f"column 2's name '={'a' * 38}…' looks like a spreadsheet formula",
        ),
        (
            "email," + "X" * 1_000_001 + "\n",
            "the header row cannot be read: "
            "row is longer than 1,000,000 characters (unbalanced quote?)",
        ),
        (
            'email,"' + "X" * 200_000 + '"\n',
            "the header row cannot be read: a field is longer than 10,000 characters",
        ),
        (
            "\ufeffemail\n".encode("utf-16-le"),
            "the file is UTF-16 text: save it as UTF-8 CSV",
        ),
        ("\ufeffemail\n".encode("utf-16-be"), "the file is UTF-16 text: save it as UTF-8 CSV"),
    ],
)
def test_a_bad_header_refuses_the_file(tmp_path: Path, content: str | bytes, message: str) -> None:
    assert refusal(tmp_path, content) == message


@pytest.mark.parametrize(
    "column",
    [
        "card",
        "Card #",
        "_card_",
        "CVV2",
        "PAN",
        "cc number",
        "ccn",
        "Kreditkarte",
        "card nr",
        "Visa Card",
        "card-expiry",
        "security card",
        "CreditCardNumber",
        "customer_credit_card",
        "paymentcard id",
        "Karten-Nummer",
        "kartennummer",
        "debit-card",
    ],
)
def test_a_column_named_like_card_numbers_refuses_the_file(tmp_path: Path, column: str) -> None:
    name = column.casefold().strip()
    assert refusal(tmp_path, f"email,{column}\nann@example.com,x\n") == (
        f"column {name!r} {CARD_WORDS_MESSAGE}"
    )


@pytest.mark.parametrize(
    "column",
    [
        "card type",
        "gift card",
        "scorecard",
        "discard",
        "cards",
        "pancake",
        "panel",
        "cc2",
        "numbers",
    ],
)
def test_columns_that_merely_mention_cards_are_fine(tmp_path: Path, column: str) -> None:
    path = write(tmp_path, f"email,{column}\nann@example.com,x\n")
    assert _inspect(path) == ["email", column]


def test_the_missing_email_column_is_named_before_card_columns(tmp_path: Path) -> None:
    assert "no 'email' column" in refusal(tmp_path, "name,cvv\nAnn,123\n")


# ------------------------------------------------------------------- card numbers in values


def luhn_ok(digits: str) -> bool:
    """ISO/IEC 7812-1's check, written here apart from the product's."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        n = int(ch) * (2 if i % 2 else 1)
        total += n // 10 + n % 10
    return total % 10 == 0


# Card numbers of every length the design calls a card (13-19 digits): processors'
# published test numbers, and one made up.
CARDS = [
    "4222222222222",  # Visa, 13 digits
    "36227206271667",  # Diners Club, 14
    "378282246310005",  # American Express, 15
    "5555555555554444",  # Mastercard, 16
    "6011000990139424",  # Discover
    "4000056655665556",  # Visa debit
    "6759649826438453",  # Maestro
    "6205500000000000004",  # UnionPay, 19
    "4111111111111111110",  # 19 digits passing Luhn
]


@pytest.mark.parametrize("card", CARDS)
def test_card_numbers_are_recognised_however_written(card: str) -> None:
    assert luhn_ok(card)
    spaced = " ".join(card[i : i + 4] for i in range(0, len(card), 4))
    dashed = spaced.replace(" ", "-")
    for written in (card, spaced, dashed, f"  {card} ", f"'{card}", f" ' {spaced}"):
        assert is_card_number(written), written
    # Every single digit changed breaks the check: none of those is a card number.
    for at in range(len(card)):
        for digit in "0123456789":
            if digit != card[at]:
                near = card[:at] + digit + card[at + 1 :]
                assert not is_card_number(near), near


@pytest.mark.parametrize(
    "value",
    [
        "411111111117",  # 12 digits, passing Luhn: too short
        "41111111111111111115",  # 20 digits, passing Luhn: too long
        "0411111111111116",  # passing Luhn, but no card starts with 0 (a phone number)
        "4111 1111 1111 111x",
        "4111_1111_1111_1111",
        "X4111111111111111",  # a reference code, whatever its digits
        "XX 4111 1111 1111 1111",
        "",
        "card",
    ],
)
def test_values_that_are_not_card_numbers(value: str) -> None:
    if value.isdigit():
        assert luhn_ok(value)
    assert not is_card_number(value)


def test_a_card_number_anywhere_refuses_the_file_naming_column_and_line(tmp_path: Path) -> None:
    message = refusal(
        tmp_path,
        "email,name,ref\nann@example.com,Ann,A-1\n\n"
        'bob@example.com,"Bob\nSmith",4222222222222\ncarl@example.com,Carl,x\n',
    )
    assert message == f"column 'ref' holds payment card numbers (line 4); {CARD_VALUES_MESSAGE}"
    message = refusal(tmp_path, "email,name\nann@example.com,Ann,4242-4242-4242-4242\n")
    assert message == (
        f"column 3 (beyond the header) holds payment card numbers (line 2); {CARD_VALUES_MESSAGE}"
    )
    message = refusal(tmp_path, "email,name,x\nann@example.com,Ann,4242424242424242\n")
    assert message.startswith("column 'x' holds payment card numbers (line 2)")


@pytest.mark.parametrize("card", ["4222222222222", "5555555555554444"])
@pytest.mark.parametrize("before", [1, 12])
def test_a_card_number_across_the_scans_1_mb_steps_is_found(
    tmp_path: Path, card: str, before: int
) -> None:
    """The raw scan reads 1 MB at a time: a number split by a step is found too."""
    header = "email,ref\n"
    rows = "".join(f"a{i:06}@example.com,fine\n" for i in range(40_000))  # 1,040,000 chars
    lead = "bob@example.com,"
    pad = (1 << 20) - before - len(header) - len(rows) - len(lead) - len("pad@example.com,\n")
    content = f"{header}{rows}pad@example.com,{'x' * pad}\n{lead}{card}\n"
    assert content.index(card) == (1 << 20) - before
    message = refusal(tmp_path, content)
    assert message.startswith("column 'ref' holds payment card numbers (line 40003)")


def test_numbers_that_are_no_card_numbers_let_the_file_through(tmp_path: Path) -> None:
    content = (
        "email,ref,phone,id,big\n"
        "ann@example.com,4111 1111 1111 1112,0411111111111116,411111111117,41111111111111111115\n"
        "bob@example.com,4111111111111111x,+49 30 1234567890123,1234567890123,\n"
    )
    records, rejected = read(tmp_path, content)
    assert rejected == {}
    assert records["ann@example.com"][6] == {
        "ref": "4111 1111 1111 1112",
        "phone": "0411111111111116",
        "id": "411111111117",
        "big": "41111111111111111115",
    }
    assert set(records) == {"ann@example.com", "bob@example.com"}


def test_unreadable_files_are_refused_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert refusal_of(tmp_path / "missing.csv") == (
        "cannot read the file: No such file or directory"
    )
    assert refusal_of(tmp_path) == "cannot read the file: Is a directory"
    path = write(tmp_path, "email\nann@example.com\n")

    # The disk failing while the file is searched for card numbers.
    def failing(_path: Path) -> bool:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(csv_reading, "_may_hold_card_numbers", failing)
    assert refusal_of(path) == "cannot read the file: Input/output error"

    def failing_without_a_reason(_path: Path) -> bool:
        raise OSError("the device went away")

    monkeypatch.setattr(csv_reading, "_may_hold_card_numbers", failing_without_a_reason)
    assert refusal_of(path) == "cannot read the file: the device went away"
    # The batches of a file gone since its inspection: refused the same way.
    with pytest.raises(ImportRefused, match=r"^cannot read the file: No such file or directory$"):
        list(_read_batches(tmp_path / "gone.csv", _RowChecker(["email"], SECRET), 10))


# ------------------------------------------------------------------- rows

HEADER = (
    "email,name,address,postcode,town,city,country,"
    "consent_promotional,consent_research,consent_third_party,tags"
)


def test_a_good_row_becomes_its_record(tmp_path: Path) -> None:
    records, rejected = read(
        tmp_path,
        f"{HEADER},Loyalty Level,note\r\n"
        " Ann@EXAMPLE.com ,  Ann Smith , Hauptstr. 1 ,10115,Mitte,Berlin, de ,"
        'YES,no,,vip; wine ;;VIP,gold,"café ""x"""\r\n',
    )
    assert rejected == {}
    assert records == {
        "Ann@example.com": (
            2,
            "Ann@example.com",
            "ann@example.com",
            ("Ann Smith", "Hauptstr. 1", "10115", "Mitte", "Berlin", "DE"),
            (True, False, None),
            ("vip", "wine"),
            {"loyalty level": "gold", "note": 'café "x"'},
            '{"loyalty level": "gold", "note": "caf\\u00e9 \\"x\\""}',
            ANN_HASH,
        )
    }


def test_a_row_with_only_an_address(tmp_path: Path) -> None:
    records, rejected = read(tmp_path, "email,level,tags\nann@example.com,,\n")
    assert rejected == {}
    assert records["ann@example.com"] == (
        2,
        "ann@example.com",
        "ann@example.com",
        ("", "", "", "", "", ""),
        (None, None, None),
        (),
        {},
        "{}",
        ANN_HASH,
    )


def test_bad_rows_are_rejected_with_their_starting_line_and_reason(tmp_path: Path) -> None:
    content = (
        "email,name,level\n"  # 1
        'ann@example.com,"Ann\nMulti\n\nLine",gold\n'  # 2-5
        "not-an-address,Bad,\n"  # 6
        "bob@example.com,Bob\n"  # 7
        "carl@example.com,Carl,,extra\n"  # 8
        "\n"  # 9: blank line, skipped
        ",,\n"  # 10: blank row, skipped
        " , \n"  # 11: blank row of the wrong width, skipped
        ",Nobody,\n"  # 12
        "ANN@Example.COM,Again,\n"  # 13
        "  bad@ ,x,\n"  # 14
        "dora@example.com,Dora,\n"  # 15
    )
    records, rejected = read(tmp_path, content)
    assert rejected == {
        6: "invalid email address 'not-an-address'",
        7: "expected 3 fields, found 2",
        8: "expected 3 fields, found 4",
        12: "no email address",
        13: "duplicate of an address earlier in the file",
        14: "invalid email address 'bad@'",
    }
    assert records["ann@example.com"][:4] == (
        2,
        "ann@example.com",
        "ann@example.com",
        ("Ann\nMulti\n\nLine", "", "", "", "", ""),
    )
    assert records["dora@example.com"][0] == 15
    assert set(records) == {"ann@example.com", "dora@example.com"}


def test_many_different_addresses_are_no_duplicates(tmp_path: Path) -> None:
    rows = "".join(f"p{i}@example.com\nP{i}@EXAMPLE.com\n" for i in range(500))
    records, rejected = read(tmp_path, "email\n" + rows)
    assert len(records) == 500
    assert sorted(rejected) == list(range(3, 1002, 2))
    assert set(rejected.values()) == {"duplicate of an address earlier in the file"}


VALUES = [
    # The exporter's escape: one leading quote more, removed again.
    ("'=SUM(A1)", "=SUM(A1)"),
    ("''@home", "'@home"),
    ("'+cmd", "+cmd"),
    ("'-x", "-x"),
    ("'\t=1", "\t=1"),
    # A quote before anything else stays.
    ("'plain", "'plain"),
    ("'", "'"),
    # Numbers and phone numbers.
    ("-", "-"),
    ("+", "+"),
    ("-12.5", "-12.5"),
    ("+49 (30) 1234-567", "+49 (30) 1234-567"),
    ("- 5", "- 5"),
    (" 42 ", "42"),
    ("a\tb", "a\tb"),
    ("line\nbreak", "line\nbreak"),
    ("x=1", "x=1"),
    # Formulas.
    ("=1", f"REJECTED note: '=1' {FORMULA_HINT}"),
    (" =1", f"REJECTED note: '=1' {FORMULA_HINT}"),
    ("@SUM(1)", f"REJECTED note: '@SUM(1)' {FORMULA_HINT}"),
    ("+x", f"REJECTED note: '+x' {FORMULA_HINT}"),
    ("-x", f"REJECTED note: '-x' {FORMULA_HINT}"),
    ("-2+3+cmd", f"REJECTED note: '-2+3+cmd' {FORMULA_HINT}"),
    ("+cmd|' /C calc'!A0", f"REJECTED note: \"+cmd|' /C calc'!A0\" {FORMULA_HINT}"),
    ("=" + "a" * 39, f"REJECTED note: '={'a' * 39}' {FORMULA_HINT}"),
    ("=" + "a" * 40, f"REJECTED note: '={'a' * 38}…' {FORMULA_HINT}"),
    ("\t=1", "REJECTED note: starts with a tab or carriage return (a formula trick)"),
    ("\rplain", "REJECTED note: starts with a tab or carriage return (a formula trick)"),
    # Characters no contact detail holds.
    ("Fay\x00", "REJECTED note: contains a control character (U+0000)"),
    ("bell\x07", "REJECTED note: contains a control character (U+0007)"),
    ("\x1bx", "REJECTED note: contains a control character (U+001B)"),
    ("del\x7f", "REJECTED note: contains a control character (U+007F)"),
    ("next\x85line", "REJECTED note: contains a control character (U+0085)"),
    ("\x9f", "REJECTED note: contains a control character (U+009F)"),
    ("v\x0b", "REJECTED note: contains a control character (U+000B)"),
    # Lengths.
    ("y" * 10_000, "y" * 10_000),
    ("y" * 10_001, "REJECTED note: longer than 10,000 characters"),
]


def test_a_value_is_stored_as_written_or_its_row_rejected(tmp_path: Path) -> None:
    got = fates(tmp_path, "note", [quoted(value) for value, _ in VALUES], 6)
    kept = [fate if isinstance(fate, str) else fate.get("note", "") for fate in got]
    assert list(zip([v for v, _ in VALUES], kept, strict=True)) == VALUES


def test_quotes_a_spreadsheet_would_not_write_cost_no_row(tmp_path: Path) -> None:
    """Hand-edited files: text after a closing quote, or a quote never closed at the
    end of the file, are read as csv reads them by default, not rejected."""
    records, rejected = read(
        tmp_path,
        'email,name,note\nann@example.com,"Ann" Smith,a "b" c\nbob@example.com,Bob,"never closed\n',
    )
    assert rejected == {}
    assert records["ann@example.com"][3][0] == "Ann Smith"
    assert records["ann@example.com"][6] == {"note": 'a "b" c'}
    assert records["bob@example.com"][6] == {"note": "never closed"}


def test_undecodable_bytes_reject_their_row_only(tmp_path: Path) -> None:
    records, rejected = read(
        tmp_path,
        b"email,name\r\nmax@example.com,M\xe4x\r\nned@example.com,Ned\r\n\xff@example.com,x\r\n",
    )
    assert rejected == {2: "name: not valid UTF-8 text", 4: "email: not valid UTF-8 text"}
    assert set(records) == {"ned@example.com"}


def test_a_formula_as_an_address_is_rejected_as_a_formula(tmp_path: Path) -> None:
    records, rejected = read(tmp_path, "email\n=x@example.com\n'=y@example.com\n")
    assert rejected == {2: f"email: '=x@example.com' {FORMULA_HINT}"}
    # "=" may start an address; the exporter's escape brings it in.
    assert set(records) == {"=y@example.com"}


def test_text_columns_hold_what_the_table_holds(tmp_path: Path) -> None:
    """As long as the contacts table's columns, and no longer (one row per case)."""
    limits = {"name": 500, "address": 1000, "postcode": 50, "town": 200, "city": 200}
    limits["country"] = 100
    rows, expected = [], []
    for at, (column, limit) in enumerate(limits.items()):

        def row(value: str, at: int = at) -> str:
            return "," * at + value + "," * (5 - at)

        def texts(value: str, at: int = at) -> tuple[str, ...]:
            return ("",) * at + (value,) + ("",) * (5 - at)

        rows += [row("Z" * limit), row("Z" * (limit + 1)), row("Z"), row("ZZ")]
        expected += [
            texts("Z" * limit),
            f"REJECTED {column}: longer than {limit} characters",
            texts("Z"),
            texts("ZZ"),
        ]
    assert fates(tmp_path, ",".join(limits), rows, 3) == expected


def test_the_country_is_upper_cased(tmp_path: Path) -> None:
    assert fates(tmp_path, "country", [" at ", "de", "Ch"], 3) == [
        ("", "", "", "", "", "AT"),
        ("", "", "", "", "", "DE"),
        ("", "", "", "", "", "CH"),
    ]


CONSENTS = "consent_promotional,consent_research,consent_third_party"


def test_consent_cells(tmp_path: Path) -> None:
    rows = {
        "yes,no,": (True, False, None),
        "YES,No,TRUE": (True, False, True),
        "True,FALSE,1": (True, False, True),
        "1,0, yes ": (True, False, True),
        ",,0": (None, None, False),
        "false,,": (False, None, None),
        ",,": (None, None, None),
        " ,,": (None, None, None),
        "maybe,,": "REJECTED consent_promotional: 'maybe' is not yes/no/true/false/1/0",
        "yes,y,2": "REJECTED consent_research: 'y' is not yes/no/true/false/1/0",
        ",,oui": "REJECTED consent_third_party: 'oui' is not yes/no/true/false/1/0",
        "no,none,": "REJECTED consent_research: 'none' is not yes/no/true/false/1/0",
    }
    assert fates(tmp_path, CONSENTS, list(rows), 4) == list(rows.values())


def test_missing_consent_columns_say_nothing(tmp_path: Path) -> None:
    records, _ = read(tmp_path, "consent_research,email\nno,ann@example.com\n")
    assert records["ann@example.com"][4] == (None, False, None)


def test_tags(tmp_path: Path) -> None:
    rows = {
        "vip": ("vip",),
        "vip; wine ;;VIP": ("vip", "wine"),
        "VIP;vip": ("VIP",),
        "Wine;wine;WINE;x": ("Wine", "x"),
        "a;b": ("a", "b"),
        ";": (),
        " ; ;": (),
        "": (),
        ";Ünï;ünï": ("Ünï", "ünï"),  # only A-Z fold
        "t" * 100: ("t" * 100,),
    }
    assert fates(tmp_path, "tags", list(rows), 5) == list(rows.values())


def test_a_tag_too_long_rejects_its_row_naming_it(tmp_path: Path) -> None:
    records, rejected = read(
        tmp_path,
        "email,tags\n"
        f"ann@example.com,a;{'b' * 100};{'c' * 101};{'d' * 102}\n"
        f"bob@example.com,{'e' * 101}\n",
    )
    assert rejected == {
        2: f"tags: '{'c' * 39}…' is longer than 100 characters",
        3: f"tags: '{'e' * 39}…' is longer than 100 characters",
    }
    assert records == {}


def test_attributes(tmp_path: Path) -> None:
    records, _ = read(
        tmp_path,
        "plan,email,shoe,Note\ngold,ann@example.com,,x\n,bob@example.com,42,\n,carl@example.com,,\n",
    )
    ann, bob, carl = (records[f"{p}@example.com"] for p in ("ann", "bob", "carl"))
    assert (ann[6], ann[7]) == ({"plan": "gold", "note": "x"}, '{"plan": "gold", "note": "x"}')
    assert (bob[6], bob[7]) == ({"shoe": "42"}, '{"shoe": "42"}')
    assert (carl[6], carl[7]) == ({}, "{}")


def test_rows_longer_than_a_million_characters(tmp_path: Path) -> None:
    """The cap counts every character of a row, over all its lines and newlines."""
    lead = "ann@example.com,"
    # 11 quoted fields of 8 lines each (each below csv's own field limit), the first
    # made long enough for the row's lines to add up to exactly 1,000,000 characters.
    fields = ['"' + ("Q" * 11_000 + "\n") * 7 + "Q" * 11_000 + '"' for _ in range(11)]
    short = 1_000_000 - len(lead + ",".join(fields) + "\n")
    fields[0] = fields[0][:-1] + "Q" * short + '"'
    row = lead + ",".join(fields) + "\n"
    assert len(row) == 1_000_000 and row.count("\n") == 78
    header = "email," + ",".join(f"c{i}" for i in range(11)) + "\n"
    records, rejected = read(tmp_path, header + row + "bob@example.com" + "," * 11 + "\n")
    # Read as a row (its fields are too long for a contact), not refused as too long.
    assert rejected == {2: "c0: longer than 10,000 characters"}
    assert set(records) == {"bob@example.com"}
    assert records["bob@example.com"][0] == 80

    longer = row.replace("Q", "QQ", 1)
    records, rejected = read(tmp_path, header + longer)
    assert rejected == {2: "row is longer than 1,000,000 characters (unbalanced quote?)"}
    assert records == {}


def test_a_huge_line_is_skipped_whole_and_reading_goes_on(tmp_path: Path) -> None:
    records, rejected = read(
        tmp_path,
        "email,name\n"
        "ann@example.com,Ann\n"  # 2
        f"bob@example.com,{'X' * 2_500_000}\r\n"  # 3: one physical line of 2.5 MB
        "carl@example.com,Carl\n"  # 4
        f"dora@example.com,{'X' * ((1 << 20) - 18)}\n"  # 5: exactly 1 MB with its newline
        "eve@example.com,Eve\n"  # 6
        f"fay@example.com,{'X' * ((1 << 20) - 10)}",  # 7: beyond 1 MB, no newline at the end
    )
    assert rejected == {
        3: "row is longer than 1,000,000 characters (unbalanced quote?)",
        5: "row is longer than 1,000,000 characters (unbalanced quote?)",
        7: "row is longer than 1,000,000 characters (unbalanced quote?)",
    }
    assert {r[1]: r[0] for r in records.values()} == {
        "ann@example.com": 2,
        "carl@example.com": 4,
        "eve@example.com": 6,
    }


# ------------------------------------------------------------------- batches


def test_batches_carry_their_rows_their_rejections_and_the_count_so_far(tmp_path: Path) -> None:
    """Every row read counts, good or rejected; blank rows do not."""
    path = write(
        tmp_path,
        "email\n"
        "a@example.com\n"  # 2
        "bad\n"  # 3
        "b@example.com\n"  # 4
        "\n"  # 5: skipped, not counted
        "c@example.com\n"  # 6
        "=d\n"  # 7
        f'"{"x" * 200_000}"\n'  # 8: cannot be read
        "e@example.com\n"  # 9
        "A@example.com\n",  # 10
    )
    got = [
        ([r[0] for r in batch], [(r.line, r.reason[:9]) for r in rejected], done)
        for batch, rejected, done in batches(path, batch_rows=2)
    ]
    assert got == [
        ([2, 4], [(3, "invalid e")], 3),
        ([6, 9], [(7, "email: '="), (8, "a field i")], 7),
        ([], [(10, "duplicate")], 8),
    ]


def test_the_last_batch_is_sent_even_when_empty(tmp_path: Path) -> None:
    path = write(tmp_path, "email\na@example.com\nb@example.com\n")
    got = [(len(b), r, done) for b, r, done in batches(path, batch_rows=2)]
    assert got == [(2, [], 2), (0, [], 2)]
    path = write(tmp_path, "email\n", "empty.csv")
    assert batches(path, batch_rows=2) == [([], [], 0)]
    path = write(tmp_path, "email\na@example.com\n", "one.csv")
    assert [(len(b), done) for b, _r, done in batches(path, batch_rows=1)] == [(1, 1), (0, 1)]


# ------------------------------------------------------------------- the second process


def run_reader(
    monkeypatch: pytest.MonkeyPatch, request: tuple[Any, ...], stdout: Any = None
) -> list[Any]:
    """_reader_main as the child process runs it, here: the request pickled on its
    stdin, and what it writes on its stdout read back, message by message."""
    stdin = io.TextIOWrapper(io.BytesIO(pickle.dumps(request)))
    out = stdout or io.TextIOWrapper(io.BytesIO())
    monkeypatch.setattr(sys, "stdin", stdin)
    monkeypatch.setattr(sys, "stdout", out)
    gc_was_enabled = gc.isenabled()
    try:
        _reader_main()
    finally:
        if gc_was_enabled:
            gc.enable()
    assert sys.stdout is sys.stderr  # nothing but the messages may reach the pipe
    if stdout is not None:
        return []
    data = io.BytesIO(out.buffer.getvalue())
    messages = []
    while data.tell() < len(data.getvalue()):
        messages.append(pickle.load(data))
    return messages


def test_the_reading_process_sends_batches_then_the_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "email,name\nann@example.com,Ann\nbad,x\nbob@example.com,Bob\n")
    messages = run_reader(monkeypatch, (path, ["email", "name"], SECRET, 1))
    assert [
        (kind, payload and ([r[1] for r in payload[0]], payload[1], payload[2]))
        for kind, payload in messages
    ] == [
        ("batch", (["ann@example.com"], [], 1)),
        ("batch", (["bob@example.com"], [RejectedRow(3, "invalid email address 'bad'")], 3)),
        ("batch", ([], [], 3)),
        ("end", None),
    ]
    assert messages[0][1][0][0][-1] == ANN_HASH


def test_the_reading_process_hands_its_error_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    messages = run_reader(monkeypatch, (tmp_path / "gone.csv", ["email"], SECRET, 10))
    assert len(messages) == 1
    kind, error = messages[0]
    assert kind == "error"
    assert isinstance(error, ImportRefused)
    assert str(error) == "cannot read the file: No such file or directory"


class Unpicklable(Exception):
    def __init__(self) -> None:
        super().__init__("cannot be pickled")
        self.callback = lambda: None


class PathThatFails:
    def __fspath__(self) -> str:
        raise Unpicklable


def test_an_error_that_cannot_be_pickled_is_handed_over_as_its_text(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    messages = run_reader(monkeypatch, (PathThatFails(), ["email"], SECRET, 10))
    assert len(messages) == 1
    kind, error = messages[0]
    assert kind == "error"
    assert type(error) is RuntimeError
    assert str(error) == "Unpicklable('cannot be pickled')"


class ClosedPipe(io.RawIOBase):
    """A pipe whose reader has gone: every write fails."""

    def writable(self) -> bool:
        return True

    def write(self, _data: Any) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_the_reading_process_ends_quietly_when_nobody_reads_any_more(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "email\nann@example.com\n")
    stdout = io.TextIOWrapper(io.BufferedWriter(ClosedPipe(), buffer_size=16))
    run_reader(monkeypatch, (path, ["email"], SECRET, 1), stdout=stdout)


# ------------------------------------------------------------------- any value

CELL = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["=1", "'=1", "''@x", "+49 30 1", "-x", "\t=1", " 5 ", "'", "-", "a;b"]),
    st.builds(
        lambda first, rest: first + rest,
        st.sampled_from(["=", "@", "+", "-", "'", "''", " ", "\t", "\r"]),
        st.text(max_size=6),
    ),
)
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# One checker for every example (each a new address): it takes a while to make.
CHECKER = _RowChecker(["email", "note", "other"], SECRET)
ADDRESSES = itertools.count()


@settings(max_examples=150)
@given(value=CELL)
def test_any_value_is_judged_alike_whatever_else_is_in_its_row(value: str) -> None:
    """A value's fate does not hang on its neighbours (rows with nothing unusual in them
    take a faster path through the checks), and what is kept holds no control character
    and opens in a spreadsheet as text unless it came with the exporter's escape."""
    outcomes = []
    for other in ("plain", " padded"):
        try:
            record = CHECKER.check(2, [f"p{next(ADDRESSES)}@example.com", value, other])
        except csv_reading._Reject as exc:
            outcomes.append(("rejected", str(exc)))
            continue
        assert record is not None
        outcomes.append(("kept", record[6].get("note", "")))
    assert outcomes[0] == outcomes[1]
    fate, note = outcomes[0]
    if fate == "rejected":
        assert note.startswith("note: ")
        return
    assert CONTROL.search(note) is None
    if note[:1] in ("=", "@", "\t", "\r") or (note[:1] in "+-" and note[1:2].isalpha()):
        assert value.strip() == "'" + note
    elif not value.strip().startswith("'"):
        assert note == value.strip()
