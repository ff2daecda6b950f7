"""Transports (DESIGN.md §3, issue 3 item 4): SMTP and the maildir capture.

`parse_smtp_url` reads CAMPAIGNS_SMTP_URL; `SmtpConnection` is one reusable SMTP
session (plain, STARTTLS, implicit TLS, AUTH); `MaildirTransport` is the capture
transport, the default; `RateLimiter` spaces messages across all connections.
"""

from mailer.transport.base import (
    ConnectionLost,
    PermanentError,
    Reply,
    SendOutcome,
    SmtpError,
    Stage,
    TransientError,
    TransportConfigError,
    TransportError,
)
from mailer.transport.maildir import MaildirTransport
from mailer.transport.rate import RateLimiter
from mailer.transport.smtp import SmtpConnection
from mailer.transport.url import SmtpUrl, parse_smtp_url

__all__ = [
    "ConnectionLost",
    "MaildirTransport",
    "PermanentError",
    "RateLimiter",
    "Reply",
    "SendOutcome",
    "SmtpConnection",
    "SmtpError",
    "SmtpUrl",
    "Stage",
    "TransientError",
    "TransportConfigError",
    "TransportError",
    "parse_smtp_url",
]
