"""The capture transport: every message becomes a file in a Maildir, nothing leaves.

It is the default of a new install (DESIGN.md §3). Each file starts with the headers a
delivery agent adds, `Return-Path: <envelope sender>` and `Delivered-To: <recipient>`,
so the envelope is kept and the file still opens in any mail reader or `mailbox`.
Files are written to tmp/ and renamed into new/ (the Maildir protocol, so a reader
never sees half a message), with LF line endings as Maildir expects, mode 0600
(they hold personal data).
"""

from __future__ import annotations

import itertools
import os
import socket
import time
from pathlib import Path

from mailer.transport.base import SendOutcome, Stage

_counter = itertools.count()


class MaildirTransport:
    """Writes messages into `path`/new; same face as an SMTP connection too."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        for sub in ("tmp", "new", "cur"):
            (self.path / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        self._host = socket.gethostname().replace("/", "\\057").replace(":", "\\072")
        self.is_open = True

    def deliver(self, envelope_from: str, recipient: str, data: bytes) -> SendOutcome:
        """Store one message; returns an accepted outcome naming the file."""
        # Refused like the SMTP client refuses it: a line break would forge headers.
        checks: tuple[tuple[str, Stage], ...] = ((envelope_from, "mail"), (recipient, "rcpt"))
        for address, stage in checks:
            if "\r" in address or "\n" in address:
                return SendOutcome(False, 501, "5.1.3 invalid envelope address", stage, True)
        head = f"Return-Path: <{envelope_from}>\nDelivered-To: {recipient}\n"
        body = data.replace(b"\r\n", b"\n")
        if not body.endswith(b"\n"):
            body += b"\n"
        # Unique per the Maildir spec: time, pid and a counter, and the host name.
        now = time.time()
        name = f"{int(now)}.M{int(now % 1 * 1e6)}P{os.getpid()}Q{next(_counter)}.{self._host}"
        tmp = self.path / "tmp" / name
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(head.encode("utf-8"))
                f.write(body)
            # No fsync: a capture copy lost to a power cut costs nothing.
            os.rename(tmp, self.path / "new" / name)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return SendOutcome(True, 250, f"2.0.0 saved as {name}", "data", False)

    # The SmtpConnection face, so callers can treat both alike.

    async def connect(self) -> None:
        self.is_open = True

    async def send(
        self,
        envelope_from: str,
        recipient: str,
        data: bytes,
        *,
        then: tuple[str, str, bytes] | None = None,
    ) -> SendOutcome:
        return self.deliver(envelope_from, recipient, data)

    async def close(self) -> None:
        self.is_open = False
