"""Addresses: kept as given (trimmed, domain lower-cased), compared without case (DESIGN.md §2)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from campaigns.addresses import is_domain, is_valid, key, normalise, redact_cut, suppression_hash


@pytest.mark.parametrize(
    ("raw", "kept"),
    [
        ("  Ann.Lee@Example.COM \n", "Ann.Lee@example.com"),
        ("ann@example.org", "ann@example.org"),
        # A quoted local part may hold an "@": only what follows the last one is the domain.
        ('"Ann@Home"@Mail.Example.ORG', '"Ann@Home"@mail.example.org'),
        # Not an address at all: trimmed, otherwise as given (is_valid refuses it later).
        ("  No-At-Sign.Example  ", "No-At-Sign.Example"),
        ("", ""),
    ],
)
def test_normalise_trims_and_lowers_the_domain_only(raw: str, kept: str) -> None:
    assert normalise(raw) == kept


def test_key_folds_the_whole_address() -> None:
    assert key("  Ann.Lee@Example.COM ") == "ann.lee@example.com"
    assert key('"Ann@Home"@Mail.Example.ORG') == '"ann@home"@mail.example.org'
    assert key("ANN@EXAMPLE.ORG") == key("ann@example.org")


ascii_addresses = st.from_regex(
    r"[A-Za-z0-9._%+-]{1,20}@[A-Za-z0-9-]{1,20}\.[A-Za-z]{2,6}", fullmatch=True
)


@given(address=ascii_addresses, spaces=st.sampled_from(["", " ", "\t", " \r\n"]))
def test_any_casing_is_the_same_person(address: str, spaces: str) -> None:
    local, _, domain = address.rpartition("@")
    # Sending keeps the local part exactly; comparing ignores case everywhere.
    assert normalise(spaces + address + spaces) == f"{local}@{domain.lower()}"
    assert key(address.upper()) == key(address.lower()) == address.lower()
    assert key(spaces + address) == address.lower()


# 64 octets of local part (RFC 5321 §4.5.3.1.1) and 254 of address in all.
LOCAL_64 = "l" * 64
DOMAIN_189 = "a" * 63 + "." + "b" * 63 + "." + "c" * 61


@pytest.mark.parametrize(
    "address",
    [
        "ann@example.org",
        "Ann.Lee+news@Example.COM",
        "o'brien!#$%&*/=?^_`{|}~-@mail.example.co.uk",
        "a@b.c",
        "x@a-b.example",
        "x@" + "d" * 63 + ".example",  # the longest label
        LOCAL_64 + "@example.org",
        LOCAL_64 + "@" + DOMAIN_189,  # exactly 254
        "trailing.@example.org",  # allowed by the WHATWG pattern
    ],
)
def test_valid_addresses(address: str) -> None:
    assert is_valid(address)


@pytest.mark.parametrize(
    "address",
    [
        "",
        "ann",
        "ann@",
        "@example.org",
        "ann@localhost",  # a domain needs a dot
        "ann@@example.org",
        "ann@exa mple.org",
        "ann @example.org",
        "ann@-example.org",
        "ann@example-.org",
        "ann@example..org",
        "ann@.example.org",
        "ann@example.org.",
        "x@" + "d" * 64 + ".example",  # a label of 64
        "ann@example.org\n",
        "ann@example.org\r\nBcc: evil@example.net",
        "zoë@example.org",  # internationalised local parts are not accepted yet
        ".ann@example.org",
        "ann..lee@example.org",
        "l" + LOCAL_64 + "@example.org",  # 65 octets of local part
        LOCAL_64 + "@" + DOMAIN_189 + "c",  # 255 octets
    ],
)
def test_invalid_addresses(address: str) -> None:
    assert not is_valid(address)


def test_suppression_hash_is_keyed_and_ignores_case() -> None:
    # HMAC-SHA256(b"hash-secret", b"ann.lee@example.com"), worked out apart from the product.
    expected = "6ac5ef8c79763cc2f8006bbb3262fcab9b0e44f23cb79299a5ae14b4e33fe865"
    assert suppression_hash("ann.lee@example.com", "hash-secret") == expected
    assert suppression_hash("  Ann.Lee@Example.COM ", "hash-secret") == expected
    assert suppression_hash("ann.lee@example.com", "other-secret") != expected
    assert suppression_hash("ann.lee@example.net", "hash-secret") != expected


@pytest.mark.parametrize(
    "text",
    [
        '550 5.1.1 <"john smith"@example.com>... User unknown',
        "550 5.1.1 john%40example.com unknown",
        "550 5.1.1 <user@[192.0.2.7]> unknown",
        "550 5.1.1 " + "padding " * 36 + "john.smith@example.com is unknown",
    ],
)
def test_a_servers_words_are_stored_without_any_address(text: str) -> None:
    """Outside probe: quoted local parts, %40 and an address cut in half at the length
    limit all escaped the redaction of stored diagnostics."""
    stored = redact_cut(text, 300)
    assert len(stored) <= 300
    assert "john" not in stored and "user@" not in stored and "@" not in stored


@pytest.mark.parametrize(
    ("text", "stored"),
    [
        ("550 5.1.1 <ann@example.com>: User unknown", "550 5.1.1 <address>: User unknown"),
        ("550  user\r\n\tunknown  ", "550 user unknown"),  # one line, single spaces
        (
            "RCPT TO:<Ann@Example.COM> and bob@example.org refused",
            "RCPT TO:<address> and <address> refused",
        ),
        ("no address here", "no address here"),
    ],
)
def test_redaction_keeps_the_words_on_one_line_without_the_addresses(
    text: str, stored: str
) -> None:
    assert redact_cut(text, 300) == stored


@pytest.mark.parametrize(
    ("text", "limit", "stored"),
    [
        ("alpha beta gamma", 16, "alpha beta gamma"),  # exactly the limit: whole
        ("alpha beta gamma", 15, "alpha beta"),  # cut between words, never inside one
        ("alpha beta gamma", 10, "alpha beta"),
        ("alpha beta gamma", 9, "alpha"),
        ("alphabet soup", 5, ""),  # the first word alone is too long: nothing
        ("", 5, ""),
    ],
)
def test_redaction_cuts_at_the_limit_between_words(text: str, limit: int, stored: str) -> None:
    assert redact_cut(text, limit) == stored


@pytest.mark.parametrize(
    ("text", "stored"),
    [
        # Someone else cut it: its last word may be half an address, so it goes.
        ("550 no such user ann@exam", "550 no such user"),
        ("550 no such user <ann.lee", "550 no such user"),
        ("ann@exam", ""),  # one word only: nothing is left
        ("  ann@exam  ", ""),
    ],
)
def test_text_cut_short_elsewhere_loses_its_last_word(text: str, stored: str) -> None:
    assert redact_cut(text, 300, was_cut=True) == stored
    if " " in text.strip():
        # Not cut elsewhere: every word is kept (the address only masked).
        assert redact_cut(text, 300).startswith("550 no such user ")


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("example.com", True),
        ("mail.Example.ORG", True),
        ("a-b.example", True),
        ("x" * 63 + ".example", True),
        ("x" * 64 + ".example", False),  # a label is at most 63
        (".".join(["a" * 63] * 3 + ["b" * 61]), True),  # 253 in all: the most
        (".".join(["a" * 63] * 3 + ["b" * 62]), False),
        ("localhost", False),  # one label
        ("-a.example", False),
        ("a-.example", False),
        ("a_b.example", False),
        ("a b.example", False),
        ("b.example>, <mailto:x@evil.example", False),
        ("", False),
    ],
)
def test_is_domain_takes_host_names_of_two_labels_or_more(text: str, ok: bool) -> None:
    assert is_domain(text) is ok
