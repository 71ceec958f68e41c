"""emit()'s endpoint lookups cached per process; invalidated by LISTEN/NOTIFY on
PostgreSQL, by a stamp in the database everywhere.

Every write to endpoints or subscriptions that can change what emit() routes (see
``models.RoutingWrites``) calls ``bump()`` in the writer's transaction: it replaces the one
``RoutingStamp`` row's random stamp and, on PostgreSQL, sends a notification on
``CHANNEL`` in the same statement (delivered when that transaction commits; a rollback
sends nothing).

On PostgreSQL each process runs a listener thread per database alias, on a connection of
its own, that drops the cached lookups on every notification and checks every second that
its connection is alive. While it is confirmed live and the caller's transaction has not
itself called ``bump()``, emit() reuses the cache with no query at all: a change committed
in another process is seen by emits that start after its notification reached this
process (normally well under a millisecond after the commit). A change in the caller's own
transaction is seen by its own emits (they read the stamp until it ends, and its commit
drops this process's cache). When the listener is not confirmed live (starting, after an
outage, or ``ROUTING_LISTEN`` off, e.g. behind PgBouncer in transaction pooling), under an
isolation level above READ COMMITTED, and on other databases, every emit reads the stamp
(one primary-key read) and reuses only what was cached under the same stamp (a
rolled-back stamp never comes back: stamps are random, not counters). A connection that
dies without an error (a silent network loss) is trusted for at most ``LIVE_FOR`` seconds
after its last check, so that is the most a change can go unseen then.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

from django.db import connections, router, transaction

from .conf import app_settings

logger = logging.getLogger("webhooks_app.routing")

STAMP_ID = 1
# Lookups kept per database (tenant × event type); all dropped when there are more.
MAX_CACHED = 4096
CHANNEL = "webhooks_app_routing"
# The listener's connection, findable in pg_stat_activity as "<APPLICATION_NAME> <pid>".
APPLICATION_NAME = "webhooks_app routing"
# Seconds between the listener's liveness checks, and how long one check vouches for it:
# a connection that died silently is trusted for at most LIVE_FOR.
CHECK_EVERY = 1.0
LIVE_FOR = 2.0
# Seconds before reconnecting after a failure, doubled per failure up to RETRY_MAX.
RETRY_MIN = 1.0
RETRY_MAX = 10.0

# The stamp path: (stamp, lookups) per database.
_cache: dict[str, tuple[str, dict]] = {}
# The listener path: (generation, lookups) per database; any new generation drops them.
_fresh: dict[str, tuple[int, dict]] = {}
_generation: dict[str, int] = {}
_generations = itertools.count(1)
_listeners: dict[str, Listener] = {}
_markers: dict[str, Callable[[], None]] = {}
_start_lock = threading.Lock()


def _db(using: str | None) -> str:
    from .models import RoutingStamp

    return using or router.db_for_write(RoutingStamp)


def _changed(db: str) -> None:
    """Drop the listener path's lookups for ``db`` (and any load running meanwhile)."""
    _generation[db] = next(_generations)


def _marker(db: str) -> Callable[[], None]:
    marker = _markers.get(db)
    if marker is None:
        marker = _markers.setdefault(db, functools.partial(_changed, db))
    return marker


def _bumped_here(conn, db: str) -> bool:
    """Whether the connection's open transaction called bump(): Django drops on_commit
    callbacks on rollback (also those of a rolled-back savepoint) and runs them on commit."""
    marker = _marker(db)
    return any(entry[1] is marker for entry in conn.run_on_commit)


def bump(using: str | None = None) -> None:
    """Give the stamp a new value and notify the listeners (call inside the transaction of
    the change)."""
    from .models import RoutingStamp

    db = _db(using)
    conn = connections[db]
    stamp = secrets.token_hex(16)
    postgres = conn.vendor == "postgresql"
    if postgres:
        q = conn.ops.quote_name
        with conn.cursor() as cursor:
            # One statement: the notification costs no round trip of its own.
            cursor.execute(
                f"WITH s AS (UPDATE {q(RoutingStamp._meta.db_table)} SET {q('stamp')} = %s "
                f"WHERE {q('id')} = %s RETURNING {q('stamp')}) "
                f"SELECT pg_notify(%s, {q('stamp')}) FROM s",
                [stamp, STAMP_ID, CHANNEL],
            )
            updated = cursor.fetchone() is not None
    else:
        updated = bool(RoutingStamp.objects.using(db).filter(pk=STAMP_ID).update(stamp=stamp))
    if not updated:
        # The row is made by the migration; a flushed database gets it back here.
        RoutingStamp.objects.using(db).bulk_create(
            [RoutingStamp(pk=STAMP_ID, stamp=stamp)], ignore_conflicts=True
        )
        if postgres:
            with conn.cursor() as cursor:
                cursor.execute("SELECT pg_notify(%s, %s)", [CHANNEL, stamp])
    if conn.in_atomic_block:
        # Until the transaction ends, its emits read the stamp (they see its own change);
        # its commit drops this process's lookups before the notification comes back.
        if not _bumped_here(conn, db):
            transaction.on_commit(_marker(db), using=db)
    else:
        # Autocommit: committed already. (Under manual transaction management its own
        # emits read the stamp, and the rest of the process waits for the notification.)
        _changed(db)


def current(using: str | None = None) -> str | None:
    """The stamp as this transaction sees it; None when there is no stamp row."""
    from .models import RoutingStamp

    conn = connections[_db(using)]
    q = conn.ops.quote_name
    if conn.vendor == "sqlite" and conn.connection is not None:
        # The driver's own cursor: Django's wrapper (parameter style, error wrapping)
        # cost more than this one-row read on every emit().
        sql = f"SELECT {q('stamp')} FROM {q(RoutingStamp._meta.db_table)} WHERE {q('id')} = ?"
        row = conn.connection.execute(sql, (STAMP_ID,)).fetchone()
        return row[0] if row else None
    with conn.cursor() as cursor:
        cursor.execute(
            f"SELECT {q('stamp')} FROM {q(RoutingStamp._meta.db_table)} WHERE {q('id')} = %s",
            [STAMP_ID],
        )
        row = cursor.fetchone()
    return row[0] if row else None


def cached(using: str | None, key: tuple, load: Callable[[], Any]) -> Any:
    """``load()``'s result for ``key``, reused while nothing changed routing.

    On PostgreSQL with the listener live, no query is made; otherwise the stamp is read
    before ``load()`` runs, so what is cached is never older than the stamp it is filed
    under. Without a stamp row the stamp path caches nothing.
    """
    db = _db(using)
    conn = connections[db]
    if (
        conn.vendor == "postgresql"
        and app_settings.ROUTING_LISTEN
        and _can_listen(conn)
        and _listener(db).live_until > time.monotonic()
        # Manual transaction management gets no on_commit marker: read the stamp.
        and (conn.in_atomic_block or conn.get_autocommit())
        and not _bumped_here(conn, db)
    ):
        return _cached_fresh(db, key, load)
    stamp = current(db)
    if stamp is None:
        return load()
    return _lookup(_cache, db, stamp, key, load)


def _cached_fresh(db: str, key: tuple, load: Callable[[], Any]) -> Any:
    generation = _generation.get(db, 0)
    # A notification that arrived during the load may be for a change it missed.
    return _lookup(
        _fresh, db, generation, key, load, keep=lambda: _generation.get(db, 0) == generation
    )


def _lookup(
    store: dict, db: str, version: Any, key: tuple, load: Callable[[], Any], keep=None
) -> Any:
    """``store[db]`` holds (version, lookups); another version drops the lookups."""
    entry = store.get(db)
    if entry is None or entry[0] != version:
        entry = store[db] = (version, {})
    found = entry[1].get(key)
    if found is None:
        found = load()
        if keep is None or keep():
            if len(entry[1]) >= MAX_CACHED:
                entry[1].clear()
            entry[1][key] = found
    return found


def _can_listen(conn) -> bool:
    """psycopg 3 (the listener's client) and READ COMMITTED: each statement sees what was
    committed before it started, so a load that starts after a notification sees its
    change; an older snapshot may not."""
    from django.db.backends.postgresql.psycopg_any import IsolationLevel, is_psycopg3

    level = conn.settings_dict["OPTIONS"].get("isolation_level")
    return is_psycopg3 and (level is None or IsolationLevel(level) == IsolationLevel.READ_COMMITTED)


def _listener(db: str) -> Listener:
    """This process's listener for ``db``, started on first use (again in a forked child)."""
    listener = _listeners.get(db)
    if listener is None or listener.pid != os.getpid():
        with _start_lock:
            listener = _listeners.get(db)
            if listener is None or listener.pid != os.getpid():
                listener = _listeners[db] = Listener(db)
                listener.start()
    return listener


def _reset_after_fork() -> None:
    global _start_lock
    _start_lock = threading.Lock()  # a parent thread may have held it at the fork


os.register_at_fork(after_in_child=_reset_after_fork)


class Listener(threading.Thread):
    """LISTENs on ``CHANNEL`` for one database alias and drops its cached lookups on every
    notification; emits trust it while ``live_until`` (monotonic seconds) is ahead."""

    def __init__(self, db: str) -> None:
        super().__init__(name=f"webhooks_app routing listener ({db})", daemon=True)
        self.db = db
        self.pid = os.getpid()
        self.live_until = 0.0
        # The payload (a stamp) of the last notification: they arrive in commit order.
        self.last_payload: str | None = None
        self.stopping = threading.Event()
        params = connections[db].get_connection_params()
        for name in ("cursor_factory", "context", "prepare_threshold"):
            params.pop(name, None)
        params.setdefault("connect_timeout", 5)
        # A network that drops packets must end the connection within seconds, not hours.
        params.update(
            autocommit=True,
            application_name=f"{APPLICATION_NAME} {self.pid}",
            keepalives=1,
            keepalives_idle=5,
            keepalives_interval=1,
            keepalives_count=3,
            tcp_user_timeout=5000,
        )
        self.params = params

    def notified(self, payload: str) -> None:
        # Also for this process's own commits: their on_commit marker dropped the lookups
        # already, but the notification may have overtaken it.
        _changed(self.db)
        self.last_payload = payload

    def run(self) -> None:
        import psycopg

        failing = False
        delay = RETRY_MIN
        while not self.stopping.is_set():
            try:
                with psycopg.connect(**self.params) as pg:
                    pg.execute(f"LISTEN {CHANNEL}")
                    _changed(self.db)  # changes before the LISTEN were not notified to us
                    self.live_until = time.monotonic() + LIVE_FOR
                    if failing:
                        logger.info("routing listener for %r is listening again", self.db)
                    failing, delay = False, RETRY_MIN
                    while not self.stopping.is_set():
                        for notify in pg.notifies(timeout=CHECK_EVERY):
                            self.notified(notify.payload)
                        pg.execute("SELECT 1")
                        for notify in pg.notifies(timeout=0):  # any that came with the answer
                            self.notified(notify.payload)
                        self.live_until = time.monotonic() + LIVE_FOR
            except Exception as exc:
                self.live_until = 0.0
                _changed(self.db)
                if not failing:
                    logger.warning(
                        "routing listener for %r is not listening (%s); emits read the "
                        "routing stamp until it is back",
                        self.db,
                        exc,
                    )
                failing = True
                self.stopping.wait(delay)
                delay = min(delay * 2, RETRY_MAX)
        self.live_until = 0.0


def listening(using: str | None = None) -> bool:
    """Whether emit() on this database currently skips the stamp (the listener is live)."""
    listener = _listeners.get(_db(using))
    return (
        listener is not None
        and listener.pid == os.getpid()
        and listener.live_until > time.monotonic()
    )


def stop() -> None:
    """Stop this process's listeners (tests, before their database is dropped); the next
    emit starts them again."""
    mine = [listener for listener in _listeners.values() if listener.pid == os.getpid()]
    for listener in mine:
        listener.stopping.set()
    for listener in mine:
        listener.join(CHECK_EVERY * 3)
    _listeners.clear()


def clear() -> None:
    """Forget every cached lookup of this process (tests)."""
    _cache.clear()
    _fresh.clear()


def on_post_migrate(sender=None, using: str = "default", **kwargs) -> None:
    """``post_migrate`` receiver: ``flush`` (which every transactional test ends with) and
    data migrations change routing rows without ``RoutingWrites``, so bump after them."""
    from .models import RoutingStamp

    if RoutingStamp._meta.db_table in connections[using].introspection.table_names():
        bump(using)
