"""SQLite in WAL mode: checkpoints happen in a background thread, not in the commit of
whichever request crosses SQLite's threshold (webhooks_app/sqlite_checkpoints.py)."""

import struct
import threading
import time

import pytest
from django.db import connection, transaction
from django.test import override_settings

from webhooks_app import sqlite_checkpoints

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connection.vendor != "sqlite", reason="SQLite's WAL only"),
]


def fresh_connection() -> None:
    connection.close()
    connection.ensure_connection()


def pragma(name: str):
    with connection.cursor() as cursor:
        cursor.execute(f"PRAGMA {name}")
        return cursor.fetchone()[0]


def checkpoint_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "webhooks-sqlite-checkpoint"]


def wal_frames(path: str) -> tuple[int, int]:
    """(frames in the WAL, frames already copied into the database file), read from the
    wal-index (``-shm``) as https://sqlite.org/walformat.html lays it out: mxFrame at
    byte 16 of the header, nBackfill at byte 96 (native byte order)."""
    with open(f"{path}-shm", "rb") as shm:
        head = shm.read(100)
    return struct.unpack("=I", head[16:20])[0], struct.unpack("=I", head[96:100])[0]


def test_a_commit_leaves_the_checkpoint_to_the_background_thread():
    fresh_connection()
    assert pragma("journal_mode") == "wal"
    # SQLite's default is 1000 pages: the commit crossing it would copy the WAL itself.
    assert pragma("wal_autocheckpoint") == sqlite_checkpoints.FALLBACK_PAGES
    assert any(t.is_alive() for t in checkpoint_threads())
    path = connection.settings_dict["NAME"]
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE ckpt_probe (x BLOB)")
    try:
        # ~3,000 pages: over SQLite's default threshold, under ours.
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.executemany("INSERT INTO ckpt_probe VALUES (randomblob(3000))", [()] * 3000)
        written, copied = wal_frames(path)
        assert written >= 3000
        # No connection of this test checkpoints; the thread copies every frame.
        deadline = time.monotonic() + 10
        while copied < written and time.monotonic() < deadline:
            time.sleep(0.05)
            written, copied = wal_frames(path)
        assert copied == written >= 3000
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP TABLE ckpt_probe")


def test_the_setting_off_leaves_sqlites_own_checkpoints():
    with override_settings(WEBHOOKS_APP={"SQLITE_BACKGROUND_CHECKPOINTS": False}):
        fresh_connection()
        assert pragma("wal_autocheckpoint") == 1000
    fresh_connection()
    assert pragma("wal_autocheckpoint") == sqlite_checkpoints.FALLBACK_PAGES


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
