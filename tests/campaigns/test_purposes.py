"""Purposes and campaign kinds: the one-to-one map of DESIGN.md §2, parsing, eligibility bits."""

from __future__ import annotations

import pytest

from campaigns.purposes import (
    ELIGIBLE_BIT,
    KIND_PURPOSE,
    ConsentState,
    Kind,
    Purpose,
    SuppressionReason,
    eligible_values,
    parse_kind,
    parse_purpose,
)


def test_purposes_and_kinds_are_spelled_as_the_design_says() -> None:
    # DESIGN.md §2: spelled so in code, CLI and files (and stored in the database).
    assert [p.value for p in Purpose] == ["promotional", "research", "third_party"]
    assert [k.value for k in Kind] == ["promotional", "survey", "third_party_offer"]


def test_each_kind_maps_to_exactly_one_purpose() -> None:
    # promotional → promotional, survey → research, third_party_offer → third_party.
    assert Kind.PROMOTIONAL.purpose is Purpose.PROMOTIONAL
    assert Kind.SURVEY.purpose is Purpose.RESEARCH
    assert Kind.THIRD_PARTY_OFFER.purpose is Purpose.THIRD_PARTY
    assert Kind("survey").purpose == "research"
    assert Kind("third_party_offer").purpose == "third_party"
    assert len(KIND_PURPOSE) == 3 and set(KIND_PURPOSE.values()) == set(Purpose)


def test_stored_state_and_reason_spellings() -> None:
    # These strings are in every existing database; changing one would lose data.
    assert [s.value for s in ConsentState] == ["granted", "withdrawn", "none"]
    assert [r.value for r in SuppressionReason] == [
        "unsubscribed",
        "hard_bounce",
        "complaint",
        "erased",
        "soft_bounces",
    ]


def test_eligible_bits_match_the_generated_column() -> None:
    # models.ELIGIBLE_SQL (and migration 0003) adds 1, 2 and 4 for the three grants.
    assert ELIGIBLE_BIT == {Purpose.PROMOTIONAL: 1, Purpose.RESEARCH: 2, Purpose.THIRD_PARTY: 4}


def test_eligible_values_are_every_combination_with_the_purposes_bit() -> None:
    assert eligible_values(Purpose.PROMOTIONAL) == (1, 3, 5, 7)
    assert eligible_values(Purpose.RESEARCH) == (2, 3, 6, 7)
    assert eligible_values(Purpose.THIRD_PARTY) == (4, 5, 6, 7)
    # Any purpose: at least one grant; 0 (nothing granted, or suppressed) never qualifies.
    assert eligible_values(None) == (1, 2, 3, 4, 5, 6, 7)


@pytest.mark.parametrize(
    ("text", "purpose"),
    [
        ("promotional", Purpose.PROMOTIONAL),
        (" Research ", Purpose.RESEARCH),
        ("THIRD_PARTY\n", Purpose.THIRD_PARTY),
    ],
)
def test_parse_purpose_ignores_case_and_spaces(text: str, purpose: Purpose) -> None:
    assert parse_purpose(text) is purpose


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("promotional", Kind.PROMOTIONAL),
        ("  Survey", Kind.SURVEY),
        ("THIRD_PARTY_OFFER ", Kind.THIRD_PARTY_OFFER),
    ],
)
def test_parse_kind_ignores_case_and_spaces(text: str, kind: Kind) -> None:
    assert parse_kind(text) is kind


def test_unknown_purpose_is_named_with_the_choices() -> None:
    with pytest.raises(ValueError) as info:
        parse_purpose("marketing")
    assert str(info.value) == (
        "unknown purpose 'marketing' (expected one of: promotional, research, third_party)"
    )
    # A kind is not a purpose: "survey" is spelled "research" as a purpose.
    with pytest.raises(ValueError, match="unknown purpose 'survey'"):
        parse_purpose("survey")


def test_unknown_kind_is_named_with_the_choices() -> None:
    with pytest.raises(ValueError) as info:
        parse_kind("newsletter ")
    assert str(info.value) == (
        "unknown kind 'newsletter ' (expected one of: promotional, survey, third_party_offer)"
    )
    with pytest.raises(ValueError, match="unknown kind 'research'"):
        parse_kind("research")
