"""The return mailbox (mailer.mailbox): Maildir on disk and IMAP against a real Dovecot."""

from __future__ import annotations

import mailbox as stdlib_mailbox
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailer.mailbox import (
    DONE,
    UNKNOWN,
    InboxUrlError,
    MailboxError,
    open_mailbox,
    parse_inbox_url,
)
from tests.mailer.conftest import free_port
from tests.mailer.dovecot import (  # noqa: F401  (the fixture)
    ASCII_PASSWORD,
    ASCII_USER,
    PASSWORD,
    DovecotServer,
    dovecot,
)


def message(n: int, body: str = "") -> bytes:
    return (
        f"From: MAILER-DAEMON@example.net\r\nTo: bounces+t{n}@example.com\r\n"
        f"Subject: Undelivered Mail {n}\r\nMessage-ID: <m{n}@example.net>\r\n\r\n"
        f"{body or f'body {n}'}\r\n"
    ).encode()


# --- Maildir -----------------------------------------------------------------------------


@pytest.fixture
def maildir(tmp_path: Path) -> Path:
    path = tmp_path / "returns"
    stdlib_mailbox.Maildir(path, create=True)
    return path


def lf(raw: bytes) -> bytes:
    """What mailbox.Maildir stores: it writes local line endings."""
    return raw.replace(b"\r\n", b"\n")


def add(path: Path, raw: bytes, *, subdir: str = "new", flags: str = "") -> str:
    box = stdlib_mailbox.Maildir(path, create=False)
    msg = stdlib_mailbox.MaildirMessage(raw)
    msg.set_subdir(subdir)
    msg.set_flags(flags)
    return box.add(msg)


def files(path: Path) -> dict[str, str]:
    """key -> "folder/subdir:flags" of every file in the Maildir and its subfolders."""
    out = {}
    for folder in [path, *sorted(path.glob(".*"))]:
        for sub in ("new", "cur"):
            for f in (folder / sub).iterdir():
                key, _, info = f.name.partition(":")
                where = sub if folder == path else f"{folder.name}/{sub}"
                out[key] = f"{where}:{info[2:]}"
    return out


def test_maildir_returns_each_message_once_and_never_deletes(maildir: Path) -> None:
    fresh = add(maildir, message(1))
    read_unflagged = add(maildir, message(2), subdir="cur", flags="R")
    odd = add(maildir, message(3))
    seen = add(maildir, message(4), subdir="cur", flags="S")  # a person read it: still ours
    url = f"maildir://{maildir}"

    with open_mailbox(url) as box:
        got = dict(box.unprocessed())
        assert got == {
            fresh: lf(message(1)),
            read_unflagged: lf(message(2)),
            odd: lf(message(3)),
            seen: lf(message(4)),
        }
        box.mark_processed(fresh)
        box.mark_processed(read_unflagged)
        box.mark_processed(seen)
        box.mark_unknown(odd)

    with open_mailbox(url) as box:
        assert list(box.unprocessed()) == []
    state = files(maildir)
    assert len(state) == 4
    assert state[fresh] == ".Processed/cur:S"
    assert state[read_unflagged] == ".Processed/cur:RS"
    assert state[seen] == ".Processed/cur:S"
    assert state[odd] == ".Kept/cur:F"  # flagged, and not seen: it shows unread to a human
    # Subfolders a mail client shows, readable with the stdlib, content intact.
    root = stdlib_mailbox.Maildir(maildir, create=False)
    assert sorted(root.list_folders()) == ["Kept", "Processed"]
    assert root.get_folder("Kept").get_bytes(odd) == lf(message(3))


def test_maildir_skips_a_message_that_vanished(maildir: Path) -> None:
    first = add(maildir, message(1))
    second = add(maildir, message(2))
    third = add(maildir, message(3))
    with open_mailbox(f"maildir://{maildir}") as box:
        items = box.unprocessed()
        key, _ = next(items)
        assert key == min(first, second, third)
        # Another run takes one, and a human reads another (moves it to cur/ seen).
        others = sorted({first, second, third} - {key})
        next((maildir / "new").glob(f"{others[0]}*")).unlink()
        moved = next((maildir / "new").glob(f"{others[1]}*"))
        moved.rename(maildir / "cur" / f"{others[1]}:2,S")
        rest = dict(items)
        assert list(rest) == [others[1]]
        next((maildir / "cur").glob(f"{others[1]}*")).unlink()
        box.mark_processed(others[1])  # gone meanwhile: no error
        box.mark_unknown(others[0])
        box.mark_processed(key)
    assert files(maildir) == {key: ".Processed/cur:S"}


def test_maildir_cuts_a_huge_message(maildir: Path) -> None:
    add(maildir, message(1, "x" * 50_000))
    with open_mailbox(f"maildir://{maildir}", max_bytes=1000) as box:
        [(_, raw)] = list(box.unprocessed())
    assert len(raw) == 1000 and raw.startswith(b"From: MAILER-DAEMON")


def test_maildir_that_is_missing_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(MailboxError) as err, open_mailbox(f"maildir://{tmp_path}/nope"):
        pass
    assert "does not exist" in str(err.value) and "\n" not in str(err.value)
    (tmp_path / "half" / "new").mkdir(parents=True)
    with (
        pytest.raises(MailboxError, match="not a Maildir"),
        open_mailbox(f"maildir://{tmp_path}/half"),
    ):
        pass


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("", "is empty"),
        ("pop3://u:hunter2@host/", "unsupported scheme 'pop3'"),
        ("/var/mail/x", "needs a scheme"),
        ("maildir://", "needs a directory"),
        ("maildir://relative/path", "absolute path"),
        ("imaps://mail.example.com/INBOX", "user name and password"),
        ("imaps://u@mail.example.com/INBOX", "user name and password"),
        ("imaps://u:hunter2@:993/INBOX", "needs a host"),
        ("imaps://u:hunter2@host:99999/INBOX", "port"),
        ("imaps://u:hunter2@host/INBOX?tls=none", "always uses TLS"),
        ("imap://u:hunter2@host/INBOX?tls=maybe", "starttls or none"),
        ("imap://u:hunter2@host/INBOX?timeout=0", "timeout"),
        ("imap://u:hunter2@host/INBOX?debug=1", "unknown query"),
        ("imap://u:hunter2@bad_host!/INBOX", "host name"),
        ("imaps://u:hunter2@host/Boîte", "ASCII"),
        ("imaps://u:hunter2%ZZ@host/INBOX\x00", "control characters"),
    ],
)
def test_bad_urls_are_one_line_without_the_password(url: str, words: str) -> None:
    with pytest.raises(InboxUrlError) as err:
        open_mailbox(url)
    text = str(err.value)
    assert text.startswith("CAMPAIGNS_INBOX_URL: ") and words in text, text
    assert "\n" not in text and "hunter2" not in text


def test_url_details() -> None:
    url = parse_inbox_url("imaps://b%40x.org:p%2Fw%3A%C3%BC@Mail.Example.com/Bounces%20In")
    assert (url.username, url.password, url.host, url.port) == (
        "b@x.org",
        "p/w:ü",
        "mail.example.com",
        993,
    )
    assert url.mailbox == "Bounces In" and url.tls == "implicit" and url.timeout == 60
    assert "p/w" not in repr(url) and "p/w" not in url.redacted()
    plain = parse_inbox_url("imap://u:p@127.0.0.1")
    assert (plain.port, plain.tls, plain.mailbox) == (143, "starttls", "INBOX")
    assert parse_inbox_url("imap://u:p@h/?tls=none&timeout=5").timeout == 5
    assert parse_inbox_url("maildir:///var/mail/returns").path == "/var/mail/returns"


# --- IMAP, against a real Dovecot ----------------------------------------------------------


@pytest.fixture
def trusted(dovecot: DovecotServer, monkeypatch: pytest.MonkeyPatch) -> DovecotServer:  # noqa: F811
    """The server, with its CA trusted the normal way (SSL_CERT_FILE)."""
    monkeypatch.setenv("SSL_CERT_FILE", str(dovecot.ca_file))
    return dovecot


def test_imap_reads_marks_and_keeps_everything(trusted: DovecotServer) -> None:
    uids = [trusted.deliver(message(n)) for n in range(3)]
    keys = [str(u) for u in uids]

    for url in (trusted.imaps_url, trusted.imap_url):  # implicit TLS, then STARTTLS
        with open_mailbox(url) as box:
            assert list(box.unprocessed()) == [(k, message(n)) for n, k in enumerate(keys)]
    assert all(not f for f in trusted.flags().values())  # reading set no \Seen (PEEK)

    with open_mailbox(trusted.imap_url) as box:
        for key, _raw in box.unprocessed():
            if key == keys[1]:
                box.mark_unknown(key)
            else:
                box.mark_processed(key)
    for url in (trusted.imaps_url, trusted.imap_url):
        with open_mailbox(url) as box:
            assert list(box.unprocessed()) == []

    assert trusted.flags() == {
        uids[0]: {"\\Seen", DONE},
        uids[1]: {"\\Flagged", UNKNOWN},
        uids[2]: {"\\Seen", DONE},
    }


def test_imap_login_with_an_ascii_password_and_plain_loopback(trusted: DovecotServer) -> None:
    uid = trusted.deliver(message(1))
    # LOGIN (not SASL) and ?tls=none: Dovecot trusts loopback, the client was told to.
    url = trusted.url("imap", user=ASCII_USER, password=ASCII_PASSWORD, tail="/?tls=none")
    with open_mailbox(url) as box:
        assert [k for k, _ in box.unprocessed()] == [str(uid)]
        box.mark_processed(str(uid))
        box.mark_processed("99")  # not there (any more): nothing happens
    assert trusted.flags() == {uid: {"\\Seen", DONE}}


def test_imap_cuts_a_huge_message(trusted: DovecotServer) -> None:
    big = message(1, "y" * 200_000)
    small = message(2)
    trusted.deliver(big)
    trusted.deliver(small)
    with open_mailbox(trusted.imaps_url, max_bytes=len(small) + 10) as box:
        got = [raw for _, raw in box.unprocessed()]
    assert got == [big[: len(small) + 10], small]


@pytest.mark.parametrize("scheme", ["imaps", "imap"])
def test_imap_wrong_password_is_one_line_without_it(trusted: DovecotServer, scheme: str) -> None:
    secret = "Wr0ng-pass!"
    with pytest.raises(MailboxError) as err, open_mailbox(trusted.url(scheme, password=secret)):
        pass
    text = str(err.value)
    assert "login refused" in text and "\n" not in text
    assert secret not in text and PASSWORD not in text


def test_imap_verifies_the_certificate(
    dovecot: DovecotServer,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    for url in (dovecot.imaps_url, dovecot.imap_url):
        with pytest.raises(MailboxError, match="certificate not trusted") as err, open_mailbox(url):
            pass
        assert PASSWORD not in str(err.value) and "\n" not in str(err.value)


def test_imap_missing_mailbox(trusted: DovecotServer) -> None:
    with (
        pytest.raises(MailboxError, match="cannot open mailbox 'Nowhere'"),
        open_mailbox(trusted.url(tail="/Nowhere")),
    ):
        pass


def test_imap_unreachable_host_is_one_line() -> None:
    port = free_port()  # nothing listens there
    with (
        pytest.raises(MailboxError, match="cannot connect") as err,
        open_mailbox(f"imaps://u:hunter2@127.0.0.1:{port}/INBOX"),
    ):
        pass
    assert "hunter2" not in str(err.value)


def _fake_imap(replies: dict[bytes, bytes], heard: list[bytes]) -> Iterator[int]:
    """A one-connection IMAP server on loopback: each command gets `replies[COMMAND]`
    (untagged lines) and a tagged OK; records whatever the client sends."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5)

    def serve() -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(2)
            conn.sendall(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] ready\r\n")
            try:
                while data := conn.recv(4096):
                    heard.append(data)
                    tag, command = data.split()[:2]
                    reply = replies.get(command.upper(), b"* BYE\r\n")
                    conn.sendall(reply + tag + b" OK done\r\n")
            except OSError:
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    listener.close()
    thread.join(5)


_CAPABILITY = {b"CAPABILITY": b"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n"}


@pytest.fixture
def no_starttls_server() -> Iterator[tuple[int, list[bytes]]]:
    """An IMAP greeting without STARTTLS; records whatever the client sends."""
    heard: list[bytes] = []
    for port in _fake_imap(_CAPABILITY, heard):
        yield port, heard


def test_imap_without_starttls_refuses_to_log_in(
    no_starttls_server: tuple[int, list[bytes]],
) -> None:
    port, heard = no_starttls_server
    with (
        pytest.raises(MailboxError, match="does not offer STARTTLS"),
        open_mailbox(f"imap://u:hunter2@127.0.0.1:{port}/INBOX"),
    ):
        pass
    assert not any(b"hunter2" in h or b"LOGIN" in h for h in heard)


@pytest.fixture
def no_keywords_server() -> Iterator[int]:
    """A mailbox that keeps \\Seen and \\Flagged but no keywords (as some hosted
    servers do): our marks would not stick."""
    select = (
        b"* FLAGS (\\Seen \\Flagged)\r\n* 0 EXISTS\r\n"
        b"* OK [PERMANENTFLAGS (\\Seen \\Flagged)] limited\r\n"
    )
    replies = {**_CAPABILITY, b"LOGIN": b"", b"SELECT": select, b"LOGOUT": b"* BYE\r\n"}
    yield from _fake_imap(replies, [])


def test_imap_mailbox_without_keywords_is_refused_clearly(no_keywords_server: int) -> None:
    url = f"imap://u:hunter2@127.0.0.1:{no_keywords_server}/INBOX?tls=none"
    with pytest.raises(MailboxError, match="does not keep keywords") as err, open_mailbox(url):
        pass
    assert "\n" not in str(err.value) and "hunter2" not in str(err.value)
