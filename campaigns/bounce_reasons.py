"""Why a message did not arrive: one list of reasons in groups (DESIGN.md §4, issue 14).

The reasons follow Sisimai's list in spirit (its names for the same things are in the
comments); the groups say what a reason may do to the person:

- *address*: the address does not exist (any more). A hard bounce: suppressed at once.
- *mailbox*: it exists but takes no mail now (full). Soft: several within a window suppress.
- *transient*: the way there failed for now (delayed, expired, errors). Soft, as above.
- *sender*: about us or our message, never about the person (blocked, reputation,
  SPF/DKIM/DMARC, spam or virus found, policy, rate limits, too big, relaying denied).
  Never suppresses; counted per campaign and per receiving domain.
- *complaint*, *auto_reply*, and *unknown* (kept for a person to read).

`mailer.reasons` reads a reason out of a status code and a diagnostic; this module only
names them and says what each group does, so the storage side never parses mail.
"""

from __future__ import annotations

from enum import StrEnum


class Group(StrEnum):
    ADDRESS = "address"
    MAILBOX = "mailbox"
    TRANSIENT = "transient"
    SENDER = "sender"
    COMPLAINT = "complaint"
    AUTO_REPLY = "auto_reply"
    UNKNOWN = "unknown"


class Reason(StrEnum):
    # address
    USER_UNKNOWN = "user_unknown"  # Sisimai: userunknown
    HOST_UNKNOWN = "host_unknown"  # hostunknown, notaccept (null MX, RFC 7505)
    HAS_MOVED = "has_moved"  # hasmoved
    DISABLED = "disabled"  # suspend (an account disabled or closed for good)
    # mailbox
    MAILBOX_FULL = "mailbox_full"  # mailboxfull
    # transient
    DELAYED = "delayed"  # a delay notice, or a 4xx without a better reason
    EXPIRED = "expired"  # expired: the MTA gave up after its retries
    SYSTEM_ERROR = "system_error"  # systemerror, systemfull, mailererror
    NETWORK_ERROR = "network_error"  # networkerror
    GREYLISTED = "greylisted"
    # sender or content
    BLOCKED = "blocked"  # blocked, rejected (our IP, host or address refused)
    BAD_REPUTATION = "bad_reputation"  # badreputation
    AUTH_FAILURE = "auth_failure"  # authfailure, requireptr (SPF, DKIM, DMARC, rDNS)
    SPAM_DETECTED = "spam_detected"  # spamdetected
    VIRUS_DETECTED = "virus_detected"  # virusdetected
    POLICY = "policy"  # policyviolation, securityerror, contenterror, filtered
    RATE_LIMITED = "rate_limited"  # speeding, toomanyconn
    TOO_BIG = "too_big"  # exceedlimit, mesgtoobig
    RELAYING_DENIED = "relaying_denied"  # norelaying
    # the rest
    COMPLAINT = "complaint"  # feedback (ARF)
    AUTO_REPLY = "auto_reply"  # vacation
    UNKNOWN = "unknown"  # undefined


GROUP: dict[Reason, Group] = {
    Reason.USER_UNKNOWN: Group.ADDRESS,
    Reason.HOST_UNKNOWN: Group.ADDRESS,
    Reason.HAS_MOVED: Group.ADDRESS,
    Reason.DISABLED: Group.ADDRESS,
    Reason.MAILBOX_FULL: Group.MAILBOX,
    Reason.DELAYED: Group.TRANSIENT,
    Reason.EXPIRED: Group.TRANSIENT,
    Reason.SYSTEM_ERROR: Group.TRANSIENT,
    Reason.NETWORK_ERROR: Group.TRANSIENT,
    Reason.GREYLISTED: Group.TRANSIENT,
    Reason.BLOCKED: Group.SENDER,
    Reason.BAD_REPUTATION: Group.SENDER,
    Reason.AUTH_FAILURE: Group.SENDER,
    Reason.SPAM_DETECTED: Group.SENDER,
    Reason.VIRUS_DETECTED: Group.SENDER,
    Reason.POLICY: Group.SENDER,
    Reason.RATE_LIMITED: Group.SENDER,
    Reason.TOO_BIG: Group.SENDER,
    Reason.RELAYING_DENIED: Group.SENDER,
    Reason.COMPLAINT: Group.COMPLAINT,
    Reason.AUTO_REPLY: Group.AUTO_REPLY,
    Reason.UNKNOWN: Group.UNKNOWN,
}


def group_of(reason: Reason) -> Group:
    return GROUP[reason]


def is_hard(reason: Reason) -> bool:
    """The address itself is dead: suppress at once."""
    return GROUP[reason] is Group.ADDRESS


def is_soft(reason: Reason) -> bool:
    """The person's mailbox or the way to it failed for now: counts toward the limit."""
    return GROUP[reason] in (Group.MAILBOX, Group.TRANSIENT)


def is_block(reason: Reason) -> bool:
    """About us or our message: never costs the person anything."""
    return GROUP[reason] is Group.SENDER
