"""SQLite in WAL mode: checkpoints in a background thread, not in a request's commit.

SQLite copies the WAL back into the database file (a checkpoint, with an fsync) in the
commit that finds the WAL over ``wal_autocheckpoint`` pages, 1000 by default: whichever
connection that is pays it. An emit() writes about 23 pages (the event, its deliveries,
their indexes, the wake-up), so a process emitting alone paid a 12 ms checkpoint every
~43 emits: p99 12.7 ms against 2.9 ms with the checkpoints elsewhere (2,000 emits).

With ``SQLITE_BACKGROUND_CHECKPOINTS`` (default on) each new SQLite connection in WAL
mode gets a high threshold (``FALLBACK_PAGES``: only if this thread stalls does a commit
checkpoint), and each process runs one daemon thread per database file that makes a
PASSIVE checkpoint, which takes no lock and waits for nobody, when the WAL has changed.
Its pace follows SQLite's own: the wait between checkpoints halves when the WAL had
grown past 1000 frames and doubles (up to ``MAX_INTERVAL``) when it held fewer than 250.
Durability is unchanged: a commit is durable in the WAL either way.

Two ways to corrupt a SQLite file are kept away (https://sqlite.org/howtocorrupt.html):
- this module never opens the database, its ``-wal`` or its ``-shm`` with anything but
  SQLite (closing any other descriptor of those files drops the POSIX locks SQLite holds
  on them in this process; only ``os.stat``, which opens nothing, looks at the WAL);
- its connections use the SQLite library Django uses (two copies of SQLite in one
  process would not see each other's locks), open the file SQLite reports for the
  connection (``PRAGMA database_list``: right for ``file:`` URIs and relative names),
  and never create it (``mode=rw``);
- no connection of this thread is open across a ``fork()`` (django-q2 forks its
  workers): the thread opens its connection for each checkpoint and closes it, under a
  lock that an ``os.register_at_fork`` hook takes before every fork. A connection held
  for good was tried first and ended a bench run in "database disk image is malformed".
"""

from __future__ import annotations

import logging
import os
import threading
import time
from urllib.parse import quote

from .conf import app_settings

logger = logging.getLogger("webhooks_app.sqlite")

FALLBACK_PAGES = 10_000
PAGES = 1000  # SQLite's default wal_autocheckpoint: the pace this thread aims at
POLL = 0.05  # how often the WAL file's mtime is looked at
MIN_INTERVAL = 0.1
MAX_INTERVAL = 2.0
START_INTERVAL = 0.25
THREAD_NAME = "webhooks-sqlite-checkpoint"

# (pid, file) -> (thread, its stop event); each thread has an event of its own.
_threads: dict[tuple[int, str], tuple[threading.Thread, threading.Event]] = {}
_lock = threading.Lock()
# Held while this process has a checkpoint connection open; every fork() waits for it.
_open = threading.Lock()


def _before_fork() -> None:
    _open.acquire()


def _after_fork_in_parent() -> None:
    _open.release()


def _after_fork_in_child() -> None:
    global _lock
    _open.release()
    _lock = threading.Lock()  # another thread may have held it at the fork
    # Threads do not survive a fork (nor may their events' inner locks, held by a thread
    # waiting on them at that moment): the child's next connection starts its own.
    _threads.clear()


os.register_at_fork(
    before=_before_fork,
    after_in_parent=_after_fork_in_parent,
    after_in_child=_after_fork_in_child,
)


def _database():
    """The SQLite module Django uses (two SQLite libraries in one process would not
    see each other's POSIX locks; howtocorrupt.html 2.3)."""
    from django.db.backends.sqlite3.base import Database

    return Database


def on_connection_created(sender=None, connection=None, **kwargs) -> None:
    """``connection_created`` receiver: set up SQLite WAL connections as described above."""
    if connection is None or connection.vendor != "sqlite":
        return
    if not app_settings.SQLITE_BACKGROUND_CHECKPOINTS:
        return
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA journal_mode")
        row = cursor.fetchone()
        if not row or str(row[0]).lower() != "wal":
            return  # in-memory databases, other journal modes: SQLite's own checkpoints
        # The file SQLite opened, whatever NAME said (a file: URI, a relative path).
        cursor.execute("PRAGMA database_list")
        path = next((r[2] for r in cursor.fetchall() if r[1] == "main"), "")
        if not path or not os.path.isabs(path) or not ensure_thread(path):
            return
        cursor.execute(f"PRAGMA wal_autocheckpoint={FALLBACK_PAGES}")


def ensure_thread(path: str) -> bool:
    """Start this process's checkpoint thread for ``path`` unless it runs; False if the
    file is not there (nothing to checkpoint)."""
    if not os.path.exists(path):
        return False
    key = (os.getpid(), path)
    with _lock:
        running = _threads.get(key)
        if running is not None:
            thread, stopping = running
            if thread.is_alive() and not stopping.is_set():
                return True
            # Stopped or stopping: a new one takes over (the old one, told to stop,
            # ends within POLL and leaves this entry alone).
        stopping = threading.Event()
        thread = threading.Thread(
            target=_run, args=(path, stopping), name=THREAD_NAME, daemon=True
        )
        _threads[key] = (thread, stopping)
        thread.start()
    return True


def stop(timeout: float = 5.0) -> None:
    """Stop this process's checkpoint threads (tests that delete their database call it)."""
    with _lock:
        running = list(_threads.values())
        for _, stopping in running:
            stopping.set()
    for thread, _ in running:
        thread.join(timeout)


def checkpoint(path: str) -> tuple[int, int, int] | None:
    """One PASSIVE checkpoint of ``path`` on a connection of its own, opened and closed
    here under the fork lock: (busy, frames in the WAL, frames copied), as SQLite's
    ``PRAGMA wal_checkpoint`` reports them; None if another checkpoint was running."""
    database = _database()
    with _open:
        # mode=rw: a database deleted meanwhile is not created again, empty.
        uri = f"file:{quote(path)}?mode=rw"
        conn = database.connect(
            uri, uri=True, timeout=0, isolation_level=None, check_same_thread=False
        )
        try:
            row = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except database.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                return None  # another process's thread is checkpointing this file now
            raise
        finally:
            conn.close()
    return (int(row[0]), int(row[1]), int(row[2])) if row else None


def _wal_state(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(f"{path}-wal")  # no descriptor opened: SQLite's locks stay
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def _run(path: str, stopping: threading.Event) -> None:
    database = _database()
    interval = START_INTERVAL
    last_at = time.monotonic()
    last_state = _wal_state(path)
    failing = False
    while not stopping.wait(POLL):
        if not os.path.exists(path):
            break  # the database is gone (a test database destroyed)
        state = _wal_state(path)
        if state is None or state == last_state or time.monotonic() - last_at < interval:
            continue
        try:
            result = checkpoint(path)
            failing = False
        except database.Error as exc:
            if not failing:  # once per outage, not every interval
                logger.warning("background WAL checkpoint of %s failed: %s", path, exc)
            failing = True
            last_at = time.monotonic()
            continue
        last_at = time.monotonic()
        last_state = _wal_state(path)
        if result is None:
            continue
        # Frames written since the WAL last started over: after a complete checkpoint
        # the next writer starts it over, so about what this wait let accumulate.
        _busy, frames, _copied = result
        if frames > PAGES:
            interval = max(MIN_INTERVAL, interval / 2)
        elif frames < PAGES // 4:
            interval = min(MAX_INTERVAL, interval * 2)
    with _lock:
        if _threads.get((os.getpid(), path), (None,))[0] is threading.current_thread():
            del _threads[(os.getpid(), path)]
