"""A private Dovecot IMAP server for tests: its own config, ports, TLS and Maildir.

    from tests.mailer.dovecot import dovecot  # noqa: F401  (the fixture)

    def test_x(dovecot: DovecotServer, monkeypatch) -> None:
        monkeypatch.setenv("SSL_CERT_FILE", str(dovecot.ca_file))
        uid = dovecot.deliver(b"Subject: hi\\r\\n\\r\\nbody\\r\\n")
        with open_mailbox(dovecot.imaps_url) as box: ...

Nothing of the system's Dovecot is used but the binary: the config, base_dir, state and
log live in a temporary directory; it listens on 127.0.0.1 only, with implicit TLS
(`imaps_url`) and STARTTLS (`imap_url`) on two free ports, a certificate for
localhost/127.0.0.1 signed by a throwaway CA (`ca_file`), and one user with a plain
password. Dovecot will not serve mail as root, so when the tests run as root the mail
belongs to `nobody` (and the login processes run as `dovenull`).
"""

from __future__ import annotations

import contextlib
import grp
import imaplib
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.mailer.conftest import free_port
from tests.mailer.smtp_server import make_tls_files

DOVECOT = Path("/usr/sbin/dovecot")
SKIP_REASON = "Dovecot not installed: apt-get install dovecot-imapd; .ci/run installs it"
USER = "bounces"
# Characters that must be percent-encoded in the URL (but no ':' — passwd-file's separator);
# the ü makes clients use AUTHENTICATE PLAIN, ASCII_USER's password takes plain LOGIN.
PASSWORD = "s3cr@t/pw%+ü"
ASCII_USER, ASCII_PASSWORD = "returns", "pl@in&pw"

_CONFIG = """\
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
listen = 127.0.0.1
protocols = imap
ssl = required
ssl_cert = <{cert}
ssl_key = <{key}
default_internal_user = {internal_user}
default_internal_group = {internal_group}
default_login_user = {login_user}
first_valid_uid = 1
auth_mechanisms = plain login
# No 2 s penalty after a wrong password: the tests try one on purpose.
auth_failure_delay = 0
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={root}/home
}}
mail_location = maildir:{root}/Maildir
service imap-login {{
  inet_listener imap {{
    port = {imap_port}
  }}
  inet_listener imaps {{
    port = {imaps_port}
    ssl = yes
  }}
}}
"""


@dataclass(frozen=True)
class DovecotServer:
    imaps_url: str  # imaps://user:pass@127.0.0.1:PORT/INBOX
    imap_url: str  # imap://user:pass@127.0.0.1:PORT/INBOX (STARTTLS)
    maildir: Path
    ca_file: Path
    host: str
    imaps_port: int
    imap_port: int
    user: str = USER
    password: str = PASSWORD
    log: Path | None = None

    def url(
        self, scheme: str = "imaps", *, user: str = USER, password: str = PASSWORD, tail: str = ""
    ) -> str:
        """A URL for this server; `tail` follows the host, e.g. "/Other?tls=none"."""
        port = self.imaps_port if scheme == "imaps" else self.imap_port
        creds = f"{quote(user, safe='')}:{quote(password, safe='')}"
        return f"{scheme}://{creds}@{self.host}:{port}{tail or '/INBOX'}"

    def connect(self) -> imaplib.IMAP4_SSL:
        """A separate, logged-in session on INBOX that trusts the test CA."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        conn = imaplib.IMAP4_SSL(self.host, self.imaps_port, ssl_context=context, timeout=10)
        conn.authenticate("PLAIN", lambda _: f"\0{self.user}\0{self.password}".encode())
        conn.select("INBOX")
        return conn

    def deliver(self, raw: bytes) -> int:
        """APPEND one message to INBOX (as an MTA would deliver it); returns its UID."""
        conn = self.connect()
        try:
            typ, data = conn.append("INBOX", None, None, raw)
            assert typ == "OK", data
            # [APPENDUID <validity> <uid>] (RFC 4315)
            return int(data[0].split(b"]")[0].split()[-1])
        finally:
            conn.logout()

    def flags(self) -> dict[int, set[str]]:
        """UID -> flags of every message in INBOX, read in a session of its own."""
        conn = self.connect()
        try:
            typ, data = conn.uid("FETCH", "1:*", "(FLAGS)")
            assert typ == "OK", data
            out = {}
            for line in data:
                if not isinstance(line, bytes):
                    continue
                text = line.decode()
                uid = int(text.split("UID ")[1].split()[0].rstrip(")"))
                inner = text.split("FLAGS (")[1].split(")")[0]
                out[uid] = set(inner.split()) - {"\\Recent"}
            return out
        finally:
            conn.logout()


def _accounts() -> dict[str, str | int]:
    """Who Dovecot runs as: root may run the master, never the mail or login processes."""
    if os.getuid() != 0:
        me = pwd.getpwuid(os.getuid()).pw_name
        group = grp.getgrgid(os.getgid()).gr_name
        return dict(
            internal_user=me,
            internal_group=group,
            login_user=me,
            uid=os.getuid(),
            gid=os.getgid(),
        )
    nobody = pwd.getpwnam("nobody")
    try:
        login = pwd.getpwnam("dovenull").pw_name
    except KeyError:
        login = "nobody"
    return dict(
        internal_user="root",
        internal_group="root",
        login_user=login,
        uid=nobody.pw_uid,
        gid=nobody.pw_gid,
    )


def _wait_for(proc: subprocess.Popen[bytes], ports: list[int], log: Path) -> None:
    deadline = time.monotonic() + 15
    pending = list(ports)
    while pending:
        if proc.poll() is not None or time.monotonic() > deadline:
            text = log.read_text(errors="replace") if log.exists() else ""
            out = proc.stdout.read().decode(errors="replace") if proc.poll() is not None else ""
            raise RuntimeError(f"Dovecot did not start:\n{out}\n{text}")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", pending[0])) == 0:
                pending.pop(0)
                continue
        time.sleep(0.05)


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)  # the group of the master we started, nothing else


@contextlib.contextmanager
def run_dovecot() -> Iterator[DovecotServer]:
    """Start a private Dovecot, yield it, and always stop it and remove its files."""
    # Not pytest's tmp_path: that sits under a 0700 directory the mail user cannot enter.
    root = Path(tempfile.mkdtemp(prefix="campaigns-dovecot-"))
    proc: subprocess.Popen[bytes] | None = None
    try:
        root.chmod(0o755)
        accounts = _accounts()
        tls = make_tls_files(root / "tls")
        for sub in ("Maildir", "home"):
            (root / sub).mkdir()
            os.chown(root / sub, int(accounts["uid"]), int(accounts["gid"]))
        users = f"{USER}:{{PLAIN}}{PASSWORD}::::::\n"
        users += f"{ASCII_USER}:{{PLAIN}}{ASCII_PASSWORD}::::::\n"  # same mail (static userdb)
        (root / "passwd").write_text(users, encoding="utf-8")
        (root / "passwd").chmod(0o600)
        imaps_port, imap_port = free_port(), free_port()
        while imap_port == imaps_port:
            imap_port = free_port()
        conf = root / "dovecot.conf"
        conf.write_text(
            _CONFIG.format(
                root=root,
                cert=tls.cert,
                key=tls.key,
                imaps_port=imaps_port,
                imap_port=imap_port,
                **accounts,
            ),
            encoding="utf-8",
        )
        log = root / "dovecot.log"
        proc = subprocess.Popen(
            [str(DOVECOT), "-F", "-c", str(conf)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group, to stop it whole
        )
        _wait_for(proc, [imaps_port, imap_port], log)
        creds = f"{quote(USER, safe='')}:{quote(PASSWORD, safe='')}"
        yield DovecotServer(
            imaps_url=f"imaps://{creds}@127.0.0.1:{imaps_port}/INBOX",
            imap_url=f"imap://{creds}@127.0.0.1:{imap_port}/INBOX",
            maildir=root / "Maildir",
            ca_file=tls.ca,
            host="127.0.0.1",
            imaps_port=imaps_port,
            imap_port=imap_port,
            log=log,
        )
    finally:
        if proc is not None:
            # The master and its children form the process group we created; TERM to
            # all at once stops it in milliseconds (the master alone lingers ~1 s).
            _signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def dovecot() -> Iterator[DovecotServer]:
    """A fresh Dovecot per test (it starts in well under a second)."""
    if not os.access(DOVECOT, os.X_OK):
        pytest.skip(SKIP_REASON)
    with run_dovecot() as server:
        yield server
