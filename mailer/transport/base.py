"""What every transport shares: replies, outcomes and errors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Stage = Literal["mail", "rcpt", "data"]


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply; the lines of a multi-line reply are joined with newlines."""

    code: int
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.text}"


@dataclass(frozen=True, slots=True)
class SendOutcome:
    """What became of one message handed to a transport.

    `stage` is the step that decided: a rejection at `rcpt` with `permanent` set is a
    hard bounce; `permanent` is False for 4xx replies (retry later).
    """

    accepted: bool
    code: int
    text: str
    stage: Stage
    permanent: bool

    @property
    def recipient_rejected(self) -> bool:
        return self.stage == "rcpt" and self.permanent

    def __str__(self) -> str:
        return f"{self.code} {self.text}"


class TransportError(Exception):
    """Base of everything the transports raise."""


class TransportConfigError(TransportError, ValueError):
    """CAMPAIGNS_SMTP_URL cannot be used; the message is one line for the user."""


class SmtpError(TransportError):
    """The server refused the session (greeting, EHLO, STARTTLS or AUTH) with `reply`."""

    def __init__(self, reply: Reply, context: str = "") -> None:
        self.reply = reply
        self.context = context
        super().__init__(f"{context}: {reply}" if context else str(reply))

    @property
    def code(self) -> int:
        return self.reply.code

    @property
    def text(self) -> str:
        return self.reply.text


class TransientError(SmtpError):
    """A 4xx refusal: try again later."""


class PermanentError(SmtpError):
    """A 5xx refusal: retrying the same way will not help."""


class ConnectionLost(TransportError):
    """The connection dropped or timed out in the middle of a send.

    `data_sent_completely` is True when the final "." had been written and no reply
    came: the server may have accepted the message, so it is *in doubt* and must not be
    sent again blindly. False means it certainly was not accepted (safe to retry).
    """

    def __init__(self, message: str, *, data_sent_completely: bool = False) -> None:
        super().__init__(message)
        self.data_sent_completely = data_sent_completely


def smtp_error(reply: Reply, context: str = "") -> SmtpError:
    """The right error class for a refusal (4xx transient, anything else permanent)."""
    cls = TransientError if 400 <= reply.code < 500 else PermanentError
    return cls(reply, context)
