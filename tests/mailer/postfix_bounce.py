"""A real bounce from a private Postfix instance (Debian's postfix package), for tests.

`postfix_bounce()` builds a throwaway Postfix instance whose main.cf, master.cf, queue and
log live under a test's `tmp_path` (its data_directory, which only holds master.lock, is a
private directory in /tmp: see `private_postfix`). The machine's own mail system is never
configured, changed or started: `/etc/postfix` has no main.cf here and is only read for
Debian's `postfix-files` list. As root, `postfix -c <dir>` and `sendmail -C <dir>` accept
a config directory that the default main.cf does not list in alternate_config_directories.

The message is submitted with `sendmail -C <dir>` to an unknown user at `localhost`;
local(8) cannot deliver it (`local_recipient_maps` is empty, so the queue accepts it and
local delivery fails with 5.1.1 "unknown user") and bounce(8) writes a DSN to the envelope
sender. The sender's domain is routed by `transport_maps` to an in-process aiosmtpd server
on a free loopback port, which is where the bounce is collected.

The instance has no smtpd at all (Postfix listens on no port), runs every service without
chroot, delivers nothing to real mailboxes (its mail spool is private, no .forward, no
commands or files), and sends any other destination to `default_transport = error:`.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

POSTFIX = "/usr/sbin/postfix"
SENDMAIL = "/usr/sbin/sendmail"
DAEMON_DIRECTORY = "/usr/lib/postfix/sbin"
SKIP_REASON = "Postfix not installed; .ci/run installs it"

# Only the services this path needs: submission (pickup, cleanup), the queue manager,
# address rewriting, local delivery, the bounce/defer/trace notices, the SMTP client that
# delivers the bounce, and postlogd for a private log file. No chroot anywhere: the
# instance's directories are not set up as a chroot jail.
MASTER_CF = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
smtp      unix  -       -       n       -       -       smtp
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def postfix_available() -> bool:
    """The Debian package's programs, and the user and group its postinst creates."""
    if not all(os.access(p, os.X_OK) for p in (POSTFIX, SENDMAIL)):
        return False
    try:
        pwd.getpwnam("postfix")
        grp.getgrnam("postdrop")
    except KeyError:
        return False
    return os.path.isdir(DAEMON_DIRECTORY)


def skip_unless_postfix() -> None:
    if not postfix_available():
        pytest.skip(SKIP_REASON)
    if os.geteuid() != 0:
        pytest.skip("a private Postfix instance needs root (its daemons run as 'postfix')")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Collector:
    """aiosmtpd handler: keeps every message and wakes the waiter."""

    def __init__(self) -> None:
        self.received: list[tuple[str, list[str], bytes]] = []
        self.arrived = threading.Event()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received.append(
            (envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content)
        )
        self.arrived.set()
        return "250 OK"


def _main_cf(base: Path, data: Path, port: int, return_domain: str) -> str:
    return f"""\
compatibility_level = 3.6
queue_directory = {base / "spool"}
data_directory = {data}
command_directory = /usr/sbin
daemon_directory = {DAEMON_DIRECTORY}
mail_owner = postfix
setgid_group = postdrop
syslog_name = postfix-test
maillog_file = {base / "maillog"}
maillog_file_prefixes = {base}
myhostname = mx.test.example
mydomain = test.example
myorigin = $myhostname
mydestination = localhost
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost =
alias_maps =
alias_database =
local_recipient_maps =
luser_relay =
mail_spool_directory = {base / "mail"}
home_mailbox =
mailbox_command =
mailbox_transport =
fallback_transport =
forward_path =
allow_mail_to_commands =
allow_mail_to_files =
recipient_delimiter =
biff = no
smtputf8_enable = no
smtp_tls_security_level = none
smtp_dns_support_level = disabled
transport_maps = inline:{{{return_domain}=smtp:[127.0.0.1]:{port}}}
default_transport = error:this test instance sends mail nowhere else
"""


def _run(args: list[str], what: str, base: Path) -> None:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{what} failed ({proc.returncode}): {proc.stderr or proc.stdout}"
            f"\n--- private Postfix maillog ---\n{maillog_tail(base)}"
        )


def _master_pid(base: Path) -> int | None:
    try:
        return int((base / "spool" / "pid" / "master.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def private_postfix(base: Path, *, port: int, return_domain: str) -> Iterator[Path]:
    """A running private Postfix instance under `base`; yields its config directory.

    Always stopped on exit (`postfix stop`, then SIGKILL to its own master if it lingers).
    """
    config = base / "etc"
    config.mkdir(parents=True)
    (base / "spool").mkdir()
    # data_directory (master.lock, caches) must be owned by mail_owner, and master opens
    # it by absolute path *as* mail_owner: it cannot sit below pytest's tmp_path, whose
    # parents are mode 0700. So it is a private directory directly in /tmp (sticky, 1777).
    data = Path(tempfile.mkdtemp(prefix="campaigns-postfix-data-"))
    owner = pwd.getpwnam("postfix")
    os.chown(data, owner.pw_uid, owner.pw_gid)
    (config / "main.cf").write_text(_main_cf(base, data, port, return_domain))
    (config / "master.cf").write_text(MASTER_CF)
    started = False
    try:
        # `check` creates the queue's subdirectories with the right owners and modes.
        _run([POSTFIX, "-c", str(config), "check"], "postfix check", base)
        _run([POSTFIX, "-c", str(config), "start"], "postfix start", base)
        started = True
        yield config
    finally:
        pid = _master_pid(base)
        if started:
            subprocess.run(
                [POSTFIX, "-c", str(config), "stop"],
                capture_output=True,
                timeout=30,
                check=False,
            )
        if pid is not None:
            deadline = time.monotonic() + 5
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        shutil.rmtree(data, ignore_errors=True)


def maillog_tail(base: Path, lines: int = 30) -> str:
    try:
        text = (base / "maillog").read_text(errors="replace")
    except OSError as exc:
        return f"(no maillog: {exc})"
    return "\n".join(text.splitlines()[-lines:])


def _log_failure(base: Path) -> str | None:
    """A logged line that means no bounce is coming (misconfiguration, delivery deferred)."""
    try:
        text = (base / "maillog").read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if any(m in line for m in (" fatal: ", " panic: ", "status=deferred")):
            return line
    return None


def postfix_bounce(
    tmp_path: Path,
    *,
    envelope_from: str,
    recipient_local: str,
    message: bytes,
    timeout: float = 30,
) -> bytes:
    """Start a private Postfix instance in tmp_path, submit `message` from envelope_from to
    an unknown local user (`<recipient_local>@localhost`), and return the raw bounce (DSN)
    Postfix sends back to envelope_from.

    Skips the test when Postfix is not installed or we are not root.
    """
    skip_unless_postfix()
    # local(8) looks users up in the system's passwd: a real user would get the mail
    # (into the private spool below, but still no bounce). Refuse one up front.
    try:
        pwd.getpwnam(recipient_local)
    except KeyError:
        pass
    else:
        raise ValueError(f"{recipient_local!r} is a user on this machine, not an unknown one")
    return_domain = envelope_from.rpartition("@")[2]
    if not return_domain:
        raise ValueError("envelope_from needs a domain, which is routed to the collector")
    base = tmp_path / "postfix"
    collector = _Collector()
    port = _free_port()
    controller = Controller(collector, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        with private_postfix(base, port=port, return_domain=return_domain) as config:
            proc = subprocess.run(
                [SENDMAIL, "-C", str(config), "-f", envelope_from, f"{recipient_local}@localhost"],
                input=message,
                capture_output=True,
                timeout=30,
                check=False,
            )
            if proc.returncode != 0:
                raise RuntimeError(
                    f"sendmail failed ({proc.returncode}): {proc.stderr.decode(errors='replace')}"
                    f"\n--- maillog ---\n{maillog_tail(base)}"
                )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                for mail_from, rcpts, raw in collector.received:
                    # The bounce has the null sender and goes to the original envelope sender.
                    if mail_from in ("", "<>") and envelope_from.lower() in (
                        r.lower() for r in rcpts
                    ):
                        return raw
                failure = _log_failure(base)
                if failure:
                    raise AssertionError(
                        f"private Postfix failed before any bounce arrived: {failure}"
                        f"\n--- private Postfix maillog ({base / 'maillog'}) ---"
                        f"\n{maillog_tail(base)}"
                    )
                collector.arrived.wait(0.1)
                collector.arrived.clear()
            got = [(f, r) for f, r, _ in collector.received]
            raise AssertionError(
                f"no bounce for {envelope_from} within {timeout}s (received: {got})"
                f"\n--- private Postfix maillog ({base / 'maillog'}) ---\n{maillog_tail(base)}"
            )
    finally:
        controller.stop()


__all__ = ["SKIP_REASON", "postfix_available", "postfix_bounce", "private_postfix"]
