"""CAMPAIGNS_INBOX_URL: the return mailbox, where bounces, complaints and mailto
unsubscribes arrive (DESIGN.md §3, issue 6).

    maildir:///var/mail/campaigns            a local Maildir (stdlib layout and flags)
    imaps://user:pass@host[:993]/INBOX       IMAP over implicit TLS
    imap://user:pass@host[:143]/INBOX        IMAP with STARTTLS (required)
    imap://user:pass@127.0.0.1:1143/?tls=none   plain, for loopback test servers only

Query keys for IMAP: `tls=starttls|none` (imap:// only) and `timeout=SECONDS` (default 60).
Certificates are always verified with `ssl.create_default_context()`, which honours
SSL_CERT_FILE. Nothing is ever deleted: a handled message is marked (moved to the Maildir
subfolder `.Processed`, or IMAP `\\Seen $CampaignsDone`), one left for a human is flagged
(moved to `.Kept` with flag F, or IMAP `\\Flagged $CampaignsUnknown`, left unread), and
neither is returned again.

`open_mailbox` only parses the URL; the folder is opened (or the server reached) on
`with`. Errors are one line and never repeat the URL, so the password cannot leak.
"""

from __future__ import annotations

import contextlib
import imaplib
import os
import re
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol
from urllib.parse import unquote

from mailer.url_parts import (
    credentials,
    host_name,
    port_number,
    split_url,
    timeout_seconds,
)

Scheme = Literal["maildir", "imap", "imaps"]
Tls = Literal["none", "starttls", "implicit"]

DEFAULT_TIMEOUT = 60.0
DONE = "$CampaignsDone"
UNKNOWN = "$CampaignsUnknown"
_USAGE = "use maildir:///path, imaps://user:pass@host/INBOX or imap://…?tls=starttls"
# Maildir++ subfolders (".Name" beside new/ cur/ tmp/) that marked messages move to.
PROCESSED_FOLDER, KEPT_FOLDER = "Processed", "Kept"


class InboxUrlError(ValueError):
    """CAMPAIGNS_INBOX_URL cannot be used; the message is one line for the user."""


class MailboxError(Exception):
    """The mailbox cannot be opened or read (I/O, network, TLS, login); one line."""


class Mailbox(Protocol):
    """The return mailbox, used as a context manager."""

    def __enter__(self) -> Mailbox: ...
    def __exit__(self, *exc: object) -> None: ...
    def unprocessed(self) -> Iterator[tuple[str, bytes]]:
        """(key, raw message) for every message not yet marked."""
        ...

    def mark_processed(self, key: str) -> None:
        """Handled: a later run will not return it again."""
        ...

    def mark_unknown(self, key: str) -> None:
        """Kept for a human (flagged, unread); not returned again."""
        ...


@dataclass(frozen=True)
class InboxUrl:
    scheme: Scheme
    path: str = ""
    host: str = ""
    port: int = 0
    username: str = ""
    # Kept out of repr() so a logged InboxUrl never shows it.
    password: str = field(default="", repr=False)
    mailbox: str = "INBOX"
    tls: Tls = "implicit"
    timeout: float = DEFAULT_TIMEOUT

    def redacted(self) -> str:
        """The URL for logs and screens, password masked."""
        if self.scheme == "maildir":
            return f"maildir://{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        query = "?tls=none" if self.tls == "none" else ""
        return f"{self.scheme}://{self.username}:***@{host}:{self.port}/{self.mailbox}{query}"


def open_mailbox(url: str, *, max_bytes: int = 10_000_000) -> Mailbox:
    """The mailbox CAMPAIGNS_INBOX_URL names; InboxUrlError if the URL is unusable.

    Messages longer than `max_bytes` are returned cut to their first `max_bytes`: a
    bounce is recognised from its headers and first parts.
    """
    if max_bytes < 1:
        raise ValueError("max_bytes must be positive")
    parsed = parse_inbox_url(url)
    if parsed.scheme == "maildir":
        return MaildirMailbox(Path(parsed.path), max_bytes=max_bytes)
    return ImapMailbox(parsed, max_bytes=max_bytes)


# --- the URL ---------------------------------------------------------------------------


def _fail(problem: str) -> InboxUrlError:
    return InboxUrlError(f"CAMPAIGNS_INBOX_URL: {problem}")


def parse_inbox_url(url: str) -> InboxUrl:
    """Parse CAMPAIGNS_INBOX_URL; anything unusable raises InboxUrlError."""
    try:
        return _parse(url)
    except InboxUrlError:
        raise
    except (ValueError, UnicodeError) as exc:
        # urlsplit and the decoders have their own ValueErrors; keep the contract.
        raise _fail(f"cannot be parsed ({type(exc).__name__})") from None


def _parse(url: str) -> InboxUrl:
    scheme, parts, query = split_url(url, _fail, ("maildir", "imap", "imaps"), _USAGE)
    if scheme == "maildir":
        if query:
            raise _fail(f"maildir takes no query options, got {sorted(query)}")
        if parts.netloc:
            raise _fail("maildir needs an absolute path: maildir:///var/mail/campaigns")
        path = unquote(parts.path, errors="strict")
        if not path.strip("/"):
            raise _fail("maildir needs a directory, e.g. maildir:///var/mail/campaigns")
        return InboxUrl(scheme="maildir", path=path)

    host = host_name(parts.hostname or "", _fail, "imaps://user:pass@mail.example.com/INBOX")
    port = port_number(parts, _fail, 993 if scheme == "imaps" else 143)
    username, password = _credentials(parts.username, parts.password)
    mailbox = unquote(parts.path.lstrip("/"), errors="strict") or "INBOX"
    if not mailbox.isascii():
        raise _fail("the mailbox name must be ASCII (e.g. INBOX or Bounces)")
    tls = _tls(scheme, query.pop("tls", None))
    timeout = timeout_seconds(query.pop("timeout", None), _fail, DEFAULT_TIMEOUT)
    if query:
        raise _fail(f"unknown query option(s) {sorted(query)} (known: tls, timeout)")
    return InboxUrl(
        scheme=scheme,  # type: ignore[arg-type]
        host=host,
        port=port,
        username=username,
        password=password,
        mailbox=mailbox,
        tls=tls,
        timeout=timeout,
    )


def _credentials(user: str | None, password: str | None) -> tuple[str, str]:
    if not user or password is None:
        raise _fail("IMAP needs a user name and password (imaps://user:pass@host/INBOX)")
    return credentials(user, password, _fail)


def _tls(scheme: str, value: str | None) -> Tls:
    if scheme == "imaps":
        if value not in (None, "implicit"):
            raise _fail("imaps:// always uses TLS; use imap://…?tls=none for a test server")
        return "implicit"
    value = (value or "starttls").lower()
    if value not in ("starttls", "none"):
        raise _fail(f"tls for imap:// must be starttls or none, not {value!r}")
    return value  # type: ignore[return-value]


# --- Maildir -----------------------------------------------------------------------------


class MaildirMailbox:
    """A Maildir as `mailbox.Maildir` lays it out: key = file name before ":2,".

    Every message in the folder itself (new/ and cur/, whatever its flags: a person
    may have read it) is unprocessed. Marking moves it, with one atomic rename, into a
    Maildir++ subfolder that mail clients show beside the inbox: `.Processed` (flag S)
    or `.Kept` (flag F, for a human). Nothing is rewritten or deleted, and a file that
    vanished meanwhile (another run) is skipped.
    """

    def __init__(self, path: Path, *, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._where: dict[str, Path] = {}

    def __enter__(self) -> MaildirMailbox:
        missing = [d for d in ("new", "cur", "tmp") if not (self.path / d).is_dir()]
        if missing:
            what = "does not exist" if not self.path.exists() else f"has no {missing[0]}/"
            raise MailboxError(f"return mailbox {self.path} {what} (not a Maildir)")
        return self

    def __exit__(self, *exc: object) -> None:
        self._where.clear()

    def _scan(self) -> list[tuple[str, Path]]:
        """(key, path) of every message in the folder itself, oldest name first."""
        out = []
        for sub in ("new", "cur"):
            try:
                names = os.listdir(self.path / sub)
            except OSError as exc:
                raise MailboxError(f"cannot read {self.path / sub}: {exc.strerror}") from None
            out += [
                (name.partition(":")[0], self.path / sub / name)
                for name in names
                if not name.startswith(".")
            ]
        out.sort(key=lambda item: item[0])
        return out

    def unprocessed(self) -> Iterator[tuple[str, bytes]]:
        for key, path in self._scan():
            raw = self._read(path)
            if raw is None:
                # Moved since the listing: by a human (new/ -> cur/, still ours) or by
                # another run (into a subfolder, so gone from here): look once more.
                path = self._find(key)
                raw = self._read(path) if path is not None else None
                if path is None or raw is None:
                    continue
            self._where[key] = path
            yield key, raw

    def _read(self, path: Path) -> bytes | None:
        try:
            with path.open("rb") as f:
                return f.read(self.max_bytes)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise MailboxError(f"cannot read {path}: {exc.strerror}") from None

    def mark_processed(self, key: str) -> None:
        self._move(key, PROCESSED_FOLDER, "S")

    def mark_unknown(self, key: str) -> None:
        # Flagged but not seen, so it stands out, unread, to whoever looks.
        self._move(key, KEPT_FOLDER, "F")

    def _folder(self, name: str) -> Path:
        folder = self.path / f".{name}"
        try:
            for sub in ("new", "cur", "tmp"):
                (folder / sub).mkdir(parents=True, exist_ok=True)
            (folder / "maildirfolder").touch()  # Maildir++: "this is a subfolder"
        except OSError as exc:
            raise MailboxError(f"cannot create {folder}: {exc.strerror}") from None
        return folder

    def _move(self, key: str, folder_name: str, flag: str) -> None:
        if not key or "/" in key or ":" in key or key.startswith("."):
            raise MailboxError(f"not a message key of this Maildir: {key!r}")
        folder = self._folder(folder_name)
        for _attempt in range(3):
            path = self._where.get(key) or self._find(key)
            if path is None:
                return  # vanished: another run has marked it
            flags = (set(_flags(path.name)) - {"S", "F"}) | {flag}
            target = folder / "cur" / f"{key}:2,{''.join(sorted(flags))}"
            try:
                os.rename(path, target)
            except FileNotFoundError:
                self._where.pop(key, None)  # moved meanwhile: look again
                continue
            except OSError as exc:
                raise MailboxError(f"cannot move {path}: {exc.strerror}") from None
            self._where.pop(key, None)
            return

    def _find(self, key: str) -> Path | None:
        for found, path in self._scan():
            if found == key:
                return path
        return None


def _flags(name: str) -> str:
    """The flags of a Maildir file name ("key:2,FS"); experimental "1," info has none."""
    _, sep, info = name.partition(":")
    return info[2:] if sep and info.startswith("2,") else ""


# --- IMAP --------------------------------------------------------------------------------


class ImapMailbox:
    """One IMAP folder over a verified TLS connection; keys are UIDs."""

    def __init__(self, url: InboxUrl, *, max_bytes: int) -> None:
        self.url = url
        self.max_bytes = max_bytes
        self._conn: imaplib.IMAP4 | None = None

    def __enter__(self) -> ImapMailbox:
        self._connect()
        return self

    def __exit__(self, *exc: object) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.logout()
        except (imaplib.IMAP4.error, OSError):
            _close(conn)  # leaving anyway; the marks are already stored

    def _error(self, problem: str) -> MailboxError:
        text = " ".join(problem.split())  # one line, whatever the server said
        if self.url.password:
            text = text.replace(self.url.password, "***")
        where = f"{self.url.host}:{self.url.port}"
        return MailboxError(f"return mailbox {where}: {text}")

    def _connect(self) -> None:
        url = self.url
        context = ssl.create_default_context()
        conn: imaplib.IMAP4 | None = None
        try:
            if url.tls == "implicit":
                conn = imaplib.IMAP4_SSL(
                    url.host, url.port, ssl_context=context, timeout=url.timeout
                )
            else:
                conn = imaplib.IMAP4(url.host, url.port, timeout=url.timeout)
                if url.tls == "starttls":
                    if "STARTTLS" not in conn.capabilities:
                        raise self._error(
                            "the server does not offer STARTTLS; refusing to log in without "
                            "TLS (use imaps://, or ?tls=none for a loopback test server only)"
                        )
                    conn.starttls(ssl_context=context)
            self._login(conn)
            typ, data = conn.select(_quote(url.mailbox))
            if typ != "OK":
                raise self._error(f"cannot open mailbox {url.mailbox!r}: {_text(data)}")
            # Our marks are keywords: a server that cannot keep them would hand every
            # message back on every run, so say so at once (RFC 3501 PERMANENTFLAGS).
            _, permanent = conn.response("PERMANENTFLAGS")
            allowed = b" ".join(p for p in permanent if isinstance(p, bytes))
            if allowed and b"\\*" not in allowed:
                raise self._error(
                    f"mailbox {url.mailbox!r} does not keep keywords such as {DONE}; "
                    "use a Maildir or a server that does (Dovecot does)"
                )
        except MailboxError:
            _close(conn)
            raise
        except ssl.SSLCertVerificationError as exc:
            _close(conn)
            reason = exc.verify_message or exc.reason or "failed"
            raise self._error(
                f"TLS certificate not trusted ({reason}); for a private CA set SSL_CERT_FILE"
            ) from None
        except ssl.SSLError as exc:
            _close(conn)
            raise self._error(f"TLS failed ({exc.reason or exc})") from None
        except TimeoutError:
            _close(conn)
            raise self._error(f"no answer within {url.timeout:g} s") from None
        except OSError as exc:
            _close(conn)
            raise self._error(f"cannot connect ({exc.strerror or exc})") from None
        except (imaplib.IMAP4.error, UnicodeError) as exc:
            _close(conn)
            raise self._error(f"IMAP error ({_reason(exc)})") from None
        self._conn = conn

    def _login(self, conn: imaplib.IMAP4) -> None:
        url = self.url
        try:
            if (url.username + url.password).isascii():
                # imaplib quotes the password itself, not the user name.
                conn.login(_quote(url.username), url.password)
            else:
                # LOGIN is ASCII-only in imaplib; SASL PLAIN carries UTF-8 (RFC 4616).
                plain = f"\0{url.username}\0{url.password}".encode()
                conn.authenticate("PLAIN", lambda _challenge: plain)
        except imaplib.IMAP4.abort:
            raise
        except imaplib.IMAP4.error as exc:
            raise self._error(f"login refused for {url.username!r} ({_reason(exc)})") from None

    def _call(self, *args: str) -> list[object]:
        """One UID command; any trouble becomes a MailboxError."""
        if self._conn is None:
            raise MailboxError("the return mailbox is not open (use it in a with block)")
        try:
            typ, data = self._conn.uid(*args)
        except TimeoutError:
            raise self._error(f"no answer within {self.url.timeout:g} s") from None
        except (imaplib.IMAP4.error, OSError) as exc:
            raise self._error(f"UID {args[0]} failed ({_reason(exc)})") from None
        if typ != "OK":
            raise self._error(f"UID {args[0]} refused: {_text(data)}")
        return list(data)

    def unprocessed(self) -> Iterator[tuple[str, bytes]]:
        found = self._call("SEARCH", "UNKEYWORD", DONE, "UNKEYWORD", UNKNOWN)
        uids = [u.decode() for item in found if isinstance(item, bytes) for u in item.split()]
        for start in range(0, len(uids), 200):
            chunk = uids[start : start + 200]
            sizes = _sizes(self._call("FETCH", ",".join(chunk), "(RFC822.SIZE)"))
            for uid in chunk:
                if uid not in sizes:
                    continue  # expunged since the search
                # PEEK: reading must not set \Seen; a huge one is cut, headers first.
                section = "BODY.PEEK[]"
                if sizes[uid] > self.max_bytes:
                    section = f"BODY.PEEK[]<0.{self.max_bytes}>"
                raw = _body(self._call("FETCH", uid, f"({section})"), uid)
                if raw is not None:
                    yield uid, raw[: self.max_bytes]

    def mark_processed(self, key: str) -> None:
        self._call("STORE", _uid(key), "+FLAGS", f"(\\Seen {DONE})")

    def mark_unknown(self, key: str) -> None:
        self._call("STORE", _uid(key), "+FLAGS", f"(\\Flagged {UNKNOWN})")


def _uid(key: str) -> str:
    if not (key.isascii() and key.isdigit()):
        raise MailboxError(f"not a message key of this IMAP mailbox: {key!r}")
    return key


def _quote(text: str) -> str:
    """An IMAP quoted string (imaplib sends arguments as they are)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _text(data: object) -> str:
    items = data if isinstance(data, list) else [data]
    out = []
    for item in items:
        if isinstance(item, bytes):
            out.append(item.decode("utf-8", "replace"))
        elif item is not None:
            out.append(str(item))
    return " ".join(out) or "no reason given"


def _reason(exc: BaseException) -> str:
    """What an exception says; imaplib passes the server's bytes along as they came."""
    if exc.args and isinstance(exc.args[0], bytes):
        return _text(exc.args[0])
    return str(exc) or type(exc).__name__


_FETCH_UID = re.compile(rb"\bUID (\d+)")
_FETCH_SIZE = re.compile(rb"\bRFC822\.SIZE (\d+)")


def _sizes(data: list[object]) -> dict[str, int]:
    out = {}
    for item in data:
        line = item[0] if isinstance(item, tuple) else item
        if not isinstance(line, bytes):
            continue
        uid, size = _FETCH_UID.search(line), _FETCH_SIZE.search(line)
        if uid and size:
            out[uid.group(1).decode()] = int(size.group(1))
    return out


def _body(data: list[object], uid: str) -> bytes | None:
    """The literal of the FETCH response for `uid`; None if it is gone."""
    unnamed = []
    for item in data:
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], bytes):
            head, literal = item
            if b"BODY[" not in head:
                continue
            match = _FETCH_UID.search(head)
            if match is None:
                unnamed.append(bytes(literal))  # some servers send UID after the literal
            elif match.group(1).decode() == uid:
                return bytes(literal)
    return unnamed[0] if len(unnamed) == 1 else None


def _close(conn: imaplib.IMAP4 | None) -> None:
    if conn is not None:
        with contextlib.suppress(OSError, ValueError):
            conn.shutdown()
