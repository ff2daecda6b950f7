"""Who may send: one worker at a time on SQLite, many on PostgreSQL.

SQLite: an exclusive lock on a file beside the database, held for the whole run;
a second `send-due` sees it taken and leaves. PostgreSQL: each worker holds an
advisory lock named after itself on a connection of its own for as long as it
lives, so a crashed worker's lock vanishes with its connection and others can tell
that its claims are orphaned.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Engine, text

from campaigns.deliveries import workers_with_claims


def _key(worker: str) -> int:
    return int.from_bytes(
        hashlib.blake2b(worker.encode(), digest_size=8).digest(), "big", signed=True
    )


class WorkerLock:
    """Held while a worker sends; `acquire()` is False when it may not send now."""

    def __init__(self, engine: Engine, worker: str) -> None:
        self.engine = engine
        self.worker = worker
        self._file: IO[bytes] | None = None
        self._conn: Any = None

    @property
    def shared(self) -> bool:
        """True where several workers may share a campaign."""
        return self.engine.dialect.name == "postgresql"

    def acquire(self) -> bool:
        if self.shared:
            self._conn = self.engine.connect()
            self._conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _key(self.worker)})
            self._conn.commit()
            return True
        path = Path(str(self.engine.url.database) + ".send-lock")
        handle = path.open("ab")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n".encode())
        handle.flush()
        self._file = handle
        return True

    def dead_workers(self) -> list[str] | None:
        """Workers whose claims are orphaned; None means all of them (SQLite)."""
        if not self.shared:
            return None
        dead = []
        for worker in workers_with_claims(self.engine):
            if worker == self.worker:
                continue
            with self.engine.connect() as conn:
                got = conn.execute(
                    text("SELECT pg_try_advisory_lock(:k)"), {"k": _key(worker)}
                ).scalar()
                if got:
                    dead.append(worker)
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _key(worker)})
                conn.commit()
        return dead

    def release(self) -> None:
        if self._conn is not None:
            # The lock belongs to the database session, and closing a pooled connection
            # keeps the session: unlock it, or a long-lived process (the UI) would look
            # alive to every later worker and its orphaned claims would never be freed.
            try:
                self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _key(self.worker)})
                self._conn.commit()
            except Exception:
                self._conn.invalidate()  # a session that is closed holds no locks
            finally:
                self._conn.close()
                self._conn = None
        if self._file is not None:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def __enter__(self) -> WorkerLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
