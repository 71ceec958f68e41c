"""SQLite in WAL mode: checkpoints happen in a background thread, not in the commit of
whichever request crosses SQLite's threshold (webhooks_app/sqlite_checkpoints.py)."""

import json
import multiprocessing
import os
import subprocess
import sys
import threading
import time

import pytest
from django.db import connection, connections, transaction
from django.test import override_settings

from webhooks_app import sqlite_checkpoints

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connection.vendor != "sqlite", reason="SQLite's WAL only"),
]

# Read in another process: closing a descriptor of the -shm here would drop the POSIX
# locks SQLite holds on it in this one (the very corruption the module avoids).
READ_WAL_INDEX = """
import json, struct, sys
with open(sys.argv[1] + "-shm", "rb") as shm:
    head = shm.read(100)
print(json.dumps([struct.unpack("=I", head[16:20])[0], struct.unpack("=I", head[96:100])[0]]))
"""


def fresh_connection() -> None:
    connection.close()
    connection.ensure_connection()


def pragma(name: str):
    with connection.cursor() as cursor:
        cursor.execute(f"PRAGMA {name}")
        return cursor.fetchone()[0]


def checkpoint_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == sqlite_checkpoints.THREAD_NAME]


def wal_frames(path: str) -> tuple[int, int]:
    """(frames in the WAL, frames already copied into the database file): mxFrame and
    nBackfill of the wal-index header (https://sqlite.org/walformat.html)."""
    out = subprocess.run(
        [sys.executable, "-c", READ_WAL_INDEX, path], capture_output=True, check=True
    )
    return tuple(json.loads(out.stdout))


@pytest.fixture
def probe_table():
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE ckpt_probe (x BLOB)")
    yield
    connections.close_all()
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE ckpt_probe")


def test_a_commit_leaves_the_checkpoint_to_the_background_thread(probe_table):
    fresh_connection()
    assert pragma("journal_mode") == "wal"
    # SQLite's default is 1000 pages: the commit crossing it would copy the WAL itself.
    assert pragma("wal_autocheckpoint") == sqlite_checkpoints.FALLBACK_PAGES
    assert any(t.is_alive() for t in checkpoint_threads())
    path = connection.settings_dict["NAME"]
    # ~3,000 pages: over SQLite's default threshold, under ours.
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.executemany("INSERT INTO ckpt_probe VALUES (randomblob(3000))", [()] * 3000)
    written, copied = wal_frames(path)
    assert written >= 3000
    # No connection of this test checkpoints; the thread copies every frame.
    deadline = time.monotonic() + 10
    while copied < written and time.monotonic() < deadline:
        time.sleep(0.1)
        written, copied = wal_frames(path)
    assert copied == written >= 3000


def test_the_setting_off_leaves_sqlites_own_checkpoints():
    with override_settings(WEBHOOKS_APP={"SQLITE_BACKGROUND_CHECKPOINTS": False}):
        fresh_connection()
        assert pragma("wal_autocheckpoint") == 1000
    fresh_connection()
    assert pragma("wal_autocheckpoint") == sqlite_checkpoints.FALLBACK_PAGES


def test_a_file_uri_name_is_checkpointed_as_the_file_it_opens(tmp_path):
    from django.db.backends.sqlite3.base import DatabaseWrapper

    path = tmp_path / "uri.sqlite3"
    settings = {**connection.settings_dict, "NAME": f"file:{path}?cache=private"}
    other = DatabaseWrapper(settings, alias="uri")
    try:
        other.ensure_connection()
        with other.cursor() as cursor:
            cursor.execute("PRAGMA wal_autocheckpoint")
            assert cursor.fetchone()[0] == sqlite_checkpoints.FALLBACK_PAGES
        assert (os.getpid(), str(path)) in sqlite_checkpoints._threads
    finally:
        other.close()
        sqlite_checkpoints.stop()
        fresh_connection()


def test_in_memory_databases_are_left_alone():
    from django.db.backends.sqlite3.base import DatabaseWrapper

    memory = DatabaseWrapper({**connection.settings_dict, "NAME": ":memory:"}, alias="mem")
    try:
        memory.ensure_connection()
        with memory.cursor() as cursor:
            cursor.execute("PRAGMA wal_autocheckpoint")
            assert cursor.fetchone()[0] == 1000
    finally:
        memory.close()


def test_a_fork_waits_for_an_open_checkpoint_connection(probe_table, monkeypatch):
    """No checkpoint connection is open across fork(): SQLite forbids carrying one into
    a child (its in-process lock records would say the child holds locks it does not)."""
    real = sqlite_checkpoints._database()
    inside = threading.Event()

    class Slow:  # the real module, with a connection that takes its time to open
        Error, OperationalError = real.Error, real.OperationalError

        @staticmethod
        def connect(*args, **kwargs):
            conn = real.connect(*args, **kwargs)
            inside.set()
            time.sleep(0.5)
            return conn

    sqlite_checkpoints.stop()  # this process's own thread must not take the lock meanwhile
    monkeypatch.setattr(sqlite_checkpoints, "_database", lambda: Slow)
    path = connection.settings_dict["NAME"]
    results = []
    worker = threading.Thread(target=lambda: results.append(sqlite_checkpoints.checkpoint(path)))
    worker.start()
    assert inside.wait(5)
    t = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child: its copy of the lock is free, and it starts threads anew
        ok = not sqlite_checkpoints._open.locked() and not sqlite_checkpoints._threads
        os._exit(0 if ok else 1)
    waited = time.monotonic() - t
    _, status = os.waitpid(pid, 0)
    worker.join(5)
    assert waited >= 0.3  # the fork came after checkpoint() had closed its connection
    assert os.waitstatus_to_exitcode(status) == 0
    assert results and results[0] is not None  # (busy, frames, copied)
    assert not sqlite_checkpoints._open.locked()


def _child_writes(rows: int) -> None:
    from django.db import connection as conn

    for _ in range(rows):
        with transaction.atomic(), conn.cursor() as cursor:
            cursor.execute("INSERT INTO ckpt_probe VALUES (randomblob(2000))")
    conn.close()


# Writes until the stop file exists. The short sleep between commits lets the forked
# children get the write lock: without it they lost every race (SQLite's busy handler
# sleeps while a tight loop re-takes the lock) and a loaded machine made one round of
# forks outlast a fixed run of the writer.
WRITER = """
import os, sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], timeout=20, isolation_level=None)
n = 0
while not os.path.exists(sys.argv[2]):
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO ckpt_probe VALUES (randomblob(2000))")
    conn.execute("COMMIT")
    n += 1
    time.sleep(0.001)
print(n)
"""


def test_forked_writers_and_busy_checkpoints_leave_the_file_sound(
    probe_table, monkeypatch, tmp_path
):
    """Forks while this process's thread checkpoints as often as it can (another process
    writes all along, so there is always something to copy); each child writes through
    its own connection and thread, as django-q2's workers do. The file passes SQLite's
    integrity check and holds every row."""
    for name, value in [("POLL", 0.002), ("START_INTERVAL", 0.0), ("MIN_INTERVAL", 0.0),
                        ("MAX_INTERVAL", 0.0)]:
        monkeypatch.setattr(sqlite_checkpoints, name, value)
    calls = []
    real_checkpoint = sqlite_checkpoints.checkpoint
    monkeypatch.setattr(
        sqlite_checkpoints, "checkpoint", lambda p: calls.append(1) or real_checkpoint(p)
    )
    sqlite_checkpoints.stop()
    fresh_connection()  # a thread at the patched pace
    path = connection.settings_dict["NAME"]
    stop_file = tmp_path / "stop"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, path, str(stop_file)], stdout=subprocess.PIPE, text=True
    )
    ctx = multiprocessing.get_context("fork")
    forks = 0
    deadline = time.monotonic() + 60
    try:
        # Rounds of forks, the writer writing throughout, until the forks fell among
        # many checkpoints.
        while forks < 6 or len(calls) < 50:
            assert time.monotonic() < deadline
            connections.close_all()  # as django-q2 does before it forks
            children = [ctx.Process(target=_child_writes, args=(50,)) for _ in range(2)]
            for child in children:
                child.start()
            for child in children:
                child.join(60)
                assert child.exitcode == 0
            forks += len(children)
            assert writer.poll() is None  # still writing
    finally:
        stop_file.touch()
    written = int(writer.communicate(timeout=30)[0])
    assert forks >= 6 and written > 0
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA integrity_check")
        assert cursor.fetchall() == [("ok",)]
        cursor.execute("SELECT count(*) FROM ckpt_probe")
        assert cursor.fetchone()[0] == written + forks * 50
    sqlite_checkpoints.stop()
