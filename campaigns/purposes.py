"""Purposes of consent, campaign kinds, and the one-to-one map between them (DESIGN.md §2)."""

from __future__ import annotations

from enum import StrEnum


class Purpose(StrEnum):
    PROMOTIONAL = "promotional"
    RESEARCH = "research"
    THIRD_PARTY = "third_party"


class Kind(StrEnum):
    PROMOTIONAL = "promotional"
    SURVEY = "survey"
    THIRD_PARTY_OFFER = "third_party_offer"

    @property
    def purpose(self) -> Purpose:
        return KIND_PURPOSE[self]


KIND_PURPOSE: dict[Kind, Purpose] = {
    Kind.PROMOTIONAL: Purpose.PROMOTIONAL,
    Kind.SURVEY: Purpose.RESEARCH,
    Kind.THIRD_PARTY_OFFER: Purpose.THIRD_PARTY,
}


class ConsentState(StrEnum):
    """The derived state of one (contact, purpose), cached on the contact row."""

    GRANTED = "granted"
    # Withdrawn by the person themselves: final for bulk paths such as imports.
    WITHDRAWN = "withdrawn"
    # Never granted, or withdrawn by a bulk path (an import saying "no").
    NONE = "none"


class SuppressionReason(StrEnum):
    UNSUBSCRIBED = "unsubscribed"
    HARD_BOUNCE = "hard_bounce"
    COMPLAINT = "complaint"
    ERASED = "erased"
    SOFT_BOUNCES = "soft_bounces"


def parse_purpose(text: str) -> Purpose:
    try:
        return Purpose(text.strip().lower())
    except ValueError:
        raise ValueError(
            f"unknown purpose {text!r} (expected one of: {', '.join(p.value for p in Purpose)})"
        ) from None


def parse_kind(text: str) -> Kind:
    try:
        return Kind(text.strip().lower())
    except ValueError:
        raise ValueError(
            f"unknown kind {text!r} (expected one of: {', '.join(k.value for k in Kind)})"
        ) from None
