"""emit()'s endpoint lookups cached per process, invalidated by a stamp in the database.

Every write to endpoints or subscriptions that can change what emit() routes (see
``models.RoutingWrites``) replaces the one ``RoutingStamp`` row's random stamp, in the
writer's transaction. emit() reads the stamp (one primary-key read) and reuses the
lookups it cached under the same stamp; any other stamp drops them. So a change
committed by any process, admin, API or worker, is seen by the next emit() in every
process, and a change inside the caller's own transaction is seen by its own emits
(a rolled-back stamp never comes back: stamps are random, not counters).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

from django.db import connections, router

STAMP_ID = 1
# Lookups kept per database (tenant × event type); all dropped when there are more.
MAX_CACHED = 4096

_cache: dict[str, tuple[str, dict]] = {}


def _db(using: str | None) -> str:
    from .models import RoutingStamp

    return using or router.db_for_write(RoutingStamp)


def bump(using: str | None = None) -> None:
    """Give the stamp a new value (call inside the transaction of the change)."""
    from .models import RoutingStamp

    db = _db(using)
    stamp = secrets.token_hex(16)
    if not RoutingStamp.objects.using(db).filter(pk=STAMP_ID).update(stamp=stamp):
        # The row is made by the migration; a flushed database gets it back here.
        RoutingStamp.objects.using(db).bulk_create(
            [RoutingStamp(pk=STAMP_ID, stamp=stamp)], ignore_conflicts=True
        )


def current(using: str | None = None) -> str | None:
    """The stamp as this transaction sees it; None when there is no stamp row."""
    from .models import RoutingStamp

    conn = connections[_db(using)]
    q = conn.ops.quote_name
    with conn.cursor() as cursor:
        cursor.execute(
            f"SELECT {q('stamp')} FROM {q(RoutingStamp._meta.db_table)} WHERE {q('id')} = %s",
            [STAMP_ID],
        )
        row = cursor.fetchone()
    return row[0] if row else None


def cached(using: str | None, key: tuple, load: Callable[[], Any]) -> Any:
    """``load()``'s result for ``key``, reused while the stamp stays the same.

    The stamp is read before ``load()`` runs, so what is cached is never older than the
    stamp it is filed under. Without a stamp row nothing is cached.
    """
    db = _db(using)
    stamp = current(db)
    if stamp is None:
        return load()
    entry = _cache.get(db)
    if entry is None or entry[0] != stamp:
        entry = (stamp, {})
        _cache[db] = entry
    found = entry[1].get(key)
    if found is None:
        found = load()
        if len(entry[1]) >= MAX_CACHED:
            entry[1].clear()
        entry[1][key] = found
    return found


def clear() -> None:
    """Forget every cached lookup of this process (tests)."""
    _cache.clear()
