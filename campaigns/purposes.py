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


# Bits of ``contacts.eligible`` (and its copy on each tag): a purpose's bit is set when
# its consent is granted and the address is not suppressed (models.ELIGIBLE_SQL).
ELIGIBLE_BIT: dict[Purpose, int] = {
    Purpose.PROMOTIONAL: 1,
    Purpose.RESEARCH: 2,
    Purpose.THIRD_PARTY: 4,
}


def eligible_values(purpose: Purpose | None) -> tuple[int, ...]:
    """The values of ``eligible`` that let a contact receive ``purpose`` (None: any).

    Listed rather than tested bitwise so that an index on ``eligible`` serves them.
    """
    bit = ELIGIBLE_BIT[purpose] if purpose is not None else sum(ELIGIBLE_BIT.values())
    return tuple(v for v in range(1, 2 * max(ELIGIBLE_BIT.values())) if v & bit)


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
