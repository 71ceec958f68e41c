"""Retention: delete finished deliveries, their attempts and their events after RETENTION_DAYS.

Rows go in small batches, each its own short transaction, with a pause between batches:
on SQLite a batch holds the one write lock of the file, and every emit() in the site waits
for it (SQLite's busy handler retries after 1, 2, 5, 10, 15, 20, 25, 25, 25, 50 ms ...,
so a lock held 35 ms costs a waiter 53), so a batch must be over in a few milliseconds,
and the pause (25 ms by default) is long enough for every waiter's next retry to fall
inside it. On SQLite a batch goes in slices of ``CHUNK`` rows and stops once the next
slice would likely end past ``SQLITE_TARGET_MS`` (a batch whose pages are cold is cut
short), and its statements are SQL built once per pass, not an ORM compile per statement
(0.7 ms each, inside the lock). WAL checkpoints are left to this process's checkpoint
thread (``sqlite_checkpoints``); with it off, each batch ends with a PASSIVE one, which
blocks nobody. (A blocking checkpoint between batches was tried: it made the concurrent
emit()s slower, 2.6 -> 17.7 ms median.)
On PostgreSQL the deletes lock only old rows, which nobody writes.

Pending deliveries are never pruned, and neither is an event that still has one. Expired
idempotency keys and old records of bulk recoveries go too.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import connections, router, transaction
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

from .conf import app_settings
from .models import Delivery, DeliveryAttempt, Event, IdempotencyKey, Recovery

logger = logging.getLogger("webhooks_app.retention")

SQLITE_TARGET_MS = 20.0
MIN_BATCH = 25
CHUNK = 25  # SQLite: rows per slice of a batch (see prune())
SCHEDULE_NAME = "webhooks_app: prune old deliveries"
SCHEDULE_FUNC = "webhooks_app.tasks.prune"


@dataclass
class PruneResult:
    deliveries: int = 0
    attempts: int = 0
    events: int = 0
    idempotency_keys: int = 0
    cutoff: datetime | None = None
    dry_run: bool = False
    complete: bool = True  # False when max_seconds ran out first (the next run goes on)
    seconds: float = 0.0
    longest_batch_ms: float = 0.0  # the longest delete transaction (SQLite: write lock)

    def note_batch(self, started: float) -> float:
        ms = (time.perf_counter() - started) * 1000
        self.longest_batch_ms = max(self.longest_batch_ms, ms)
        return ms

    def __str__(self) -> str:
        verb = "would delete" if self.dry_run else "deleted"
        text = (
            f"{verb} {self.deliveries} deliveries, {self.attempts} attempts, "
            f"{self.events} events, {self.idempotency_keys} idempotency keys"
        )
        if self.cutoff:
            text += f" finished before {self.cutoff:%Y-%m-%d %H:%M:%S} UTC"
        if not self.complete:
            text += " (stopped at the time limit; the next run continues)"
        return text


FINISHED = (Delivery.Status.SUCCEEDED, Delivery.Status.FAILED)


def _finished_before(cutoff: datetime) -> list[Q]:
    """Deliveries that are done and whose last attempt (or creation, if none) is old.

    Two conditions, each served by the (status, last_attempt_at) index: an OR or a
    ``status != pending`` would make SQLite scan the whole table for every batch.
    """
    return [
        Q(status__in=FINISHED, last_attempt_at__lt=cutoff),
        Q(status__in=FINISHED, last_attempt_at__isnull=True, created_at__lt=cutoff),
    ]


def _prunable(cutoff: datetime) -> Q:
    a, b = _finished_before(cutoff)
    return a | b


def _old_events(cutoff: datetime):
    """Events older than ``cutoff`` with no delivery left that must be kept."""
    keep = Delivery.objects.filter(event=OuterRef("pk")).exclude(_prunable(cutoff))
    return Event.objects.filter(created_at__lt=cutoff).exclude(Exists(keep))


def prune(
    *,
    days: float | None = None,
    dry_run: bool = False,
    batch_size: int | None = None,
    pause: float | None = None,
    max_seconds: float | None = None,
) -> PruneResult:
    """Delete what ``RETENTION_DAYS`` (or ``days``) no longer keeps; see the module doc."""
    from .engine import _writing

    days = app_settings.RETENTION_DAYS if days is None else float(days)
    db = router.db_for_write(Delivery)
    batch = batch_size or app_settings.PRUNE_BATCH_SIZE
    if batch is None:
        batch = 100 if connections[db].vendor == "sqlite" else 1000
    pause = app_settings.PRUNE_PAUSE if pause is None else pause
    started = time.monotonic()
    now = timezone.now()
    result = PruneResult(dry_run=dry_run)
    key_cutoff = now - app_settings.IDEMPOTENCY_WINDOW
    old_keys = IdempotencyKey.objects.filter(created_at__lt=key_cutoff)
    if not days or days <= 0:
        if dry_run:
            result.idempotency_keys = old_keys.count()
        else:
            result.idempotency_keys = _delete_keys(key_cutoff, batch, pause)
        return result
    cutoff = result.cutoff = now - timedelta(days=days)
    deliveries = Delivery.objects.using(db)
    if dry_run:
        old = deliveries.filter(_prunable(cutoff))
        result.deliveries = sum(deliveries.filter(q).count() for q in _finished_before(cutoff))
        result.attempts = DeliveryAttempt.objects.using(db).filter(delivery__in=old).count()
        result.events = _old_events(cutoff).using(db).count()
        result.idempotency_keys = old_keys.count()
        result.seconds = time.monotonic() - started
        return result

    def out_of_time() -> bool:
        return max_seconds is not None and time.monotonic() - started > max_seconds

    locking = connections[db].features.has_select_for_update
    # On SQLite the batch shrinks while its transaction takes longer than SQLITE_TARGET_MS
    # (a loaded machine, big rows) and grows back to PRUNE_BATCH_SIZE when it is quick:
    # the write lock is then held about as long whatever the load.
    adaptive = connections[db].vendor == "sqlite"
    # It starts small: the first batches read cold pages and run slowest.
    size = min(batch, MIN_BATCH) if adaptive else batch
    for condition in _finished_before(cutoff):
        deleter = _Deleter(db, condition, cutoff, locking)
        last_id = 0
        while not out_of_time():
            # The read happens outside the write transaction (it never blocks under
            # WAL); the delete re-checks the condition, so a row replayed meanwhile stays.
            # In id order from where the last batch ended: each kept row is passed over
            # once, and PostgreSQL never rescans the dead rows of earlier batches.
            candidates = list(
                deliveries.filter(condition, id__gt=last_id)
                .order_by("id")
                .values_list("id", flat=True)[:size]
            )
            if not candidates:
                break
            t0 = time.perf_counter()
            with _writing(db), transaction.atomic(using=db):
                # On SQLite in slices, and no further slice once the next would likely
                # end past the target: a batch whose pages are cold (read from disk
                # inside the write lock) is cut short instead of holding the lock 60 ms.
                step = max(1, CHUNK) if adaptive else len(candidates)
                done = 0
                while done < len(candidates):
                    s0 = time.perf_counter()
                    chunk = candidates[done : done + step]
                    deleter.delete(chunk, result)
                    done += len(chunk)
                    now_ms = (time.perf_counter() - t0) * 1000
                    slice_ms = (time.perf_counter() - s0) * 1000
                    if adaptive and now_ms + slice_ms > SQLITE_TARGET_MS:
                        break
            last_id = candidates[done - 1]
            ms = result.note_batch(t0)
            if adaptive:
                if ms > SQLITE_TARGET_MS:
                    size = max(MIN_BATCH, size // 2)
                elif ms < SQLITE_TARGET_MS / 2:
                    size = min(batch, size * 2)
                if not app_settings.SQLITE_BACKGROUND_CHECKPOINTS:
                    _checkpoint(db)  # otherwise this process's checkpoint thread does it
            time.sleep(pause)
    # Events that never had a delivery (KEEP_UNROUTED_EVENTS) or lost them with their
    # endpoint: one pass in id order.
    last_id = 0
    while not out_of_time():
        candidates = list(
            _old_events(cutoff)
            .using(db)
            .filter(id__gt=last_id)
            .order_by("id")
            .values_list("id", flat=True)[:batch]
        )
        if not candidates:
            break
        last_id = candidates[-1]
        t0 = time.perf_counter()
        with _writing(db), transaction.atomic(using=db):
            doomed = _old_events(cutoff).using(db).filter(id__in=candidates)
            result.events += doomed._raw_delete(db)
        result.note_batch(t0)
        time.sleep(pause)
    if not out_of_time():
        result.idempotency_keys = _delete_keys(key_cutoff, batch, pause)
        # The record of bulk recoveries (a few rows a day; the throttle reads the last hour).
        Recovery.objects.using(db).filter(created_at__lt=cutoff)._raw_delete(db)
    result.complete = not out_of_time()
    result.seconds = time.monotonic() - started
    logger.info("retention: %s in %.1f s", result, result.seconds)
    return result


class _Deleter:
    """A chunk's deletes as SQL built once per pass, not one ORM compile per statement
    per chunk: Django's compile of these four querysets cost about 0.7 ms each, inside
    SQLite's write lock, on every chunk."""

    def __init__(self, db: str, condition: Q, cutoff: datetime, locking: bool) -> None:
        self.db = db
        conn = connections[db]
        q = conn.ops.quote_name
        d, a, e = (q(m._meta.db_table) for m in (Delivery, DeliveryAttempt, Event))
        # The condition as Django writes it (columns qualified by the delivery table).
        query = Delivery.objects.using(db).filter(condition).query
        where, self.where_params = query.where.as_sql(query.get_compiler(db), conn)
        # Each is (before, after) the IN list, joined around it (never str.format: the
        # compiled WHERE may hold braces).
        self.select = (
            f"SELECT {d}.{q('id')}, {d}.{q('event_id')} FROM {d} WHERE ({where}) "
            f"AND {d}.{q('id')} IN (",
            ")" + (" FOR UPDATE" if locking else ""),
        )
        self.attempts = (f"DELETE FROM {a} WHERE {q('delivery_id')} IN (", ")")
        self.deliveries = (f"DELETE FROM {d} WHERE {q('id')} IN (", ")")
        # Their events, if no other delivery is left.
        self.events = (
            f"DELETE FROM {e} WHERE {e}.{q('id')} IN (",
            f") AND {e}.{q('created_at')} < %s "
            f"AND NOT EXISTS (SELECT 1 FROM {d} WHERE {d}.{q('event_id')} = {e}.{q('id')})",
        )
        self.cutoff = conn.ops.adapt_datetimefield_value(cutoff)

    def delete(self, candidates: list[int], result: PruneResult) -> None:
        """Delete the ``candidates`` still matching the condition (a row replayed since
        it was read stays), their attempts, and their events (in the caller's
        transaction)."""
        with connections[self.db].cursor() as cursor:
            cursor.execute(_sql(self.select, candidates), [*self.where_params, *candidates])
            rows = cursor.fetchall()
            if not rows:
                return
            ids = [r[0] for r in rows]
            cursor.execute(_sql(self.attempts, ids), ids)
            result.attempts += cursor.rowcount
            cursor.execute(_sql(self.deliveries, ids), ids)
            result.deliveries += cursor.rowcount
            events = sorted({r[1] for r in rows})
            cursor.execute(_sql(self.events, events), [*events, self.cutoff])
            result.events += cursor.rowcount


def _sql(parts: tuple[str, str], values: list) -> str:
    return parts[0] + ", ".join(["%s"] * len(values)) + parts[1]


def _checkpoint(db: str) -> None:
    """SQLite: copy what this batch wrote from the WAL into the database file now.

    Otherwise the commit that finds the WAL over its auto-checkpoint size does it, and
    that is as often an emit() of the site as a batch of the prune: it then pays the copy
    and the fsync of the database file (hundreds of ms on a busy disk). PASSIVE takes no
    lock and waits for nobody (TRUNCATE or FULL would).
    """
    with connections[db].cursor() as cursor:
        cursor.execute("PRAGMA wal_checkpoint(PASSIVE)")


def _delete_keys(cutoff: datetime, batch: int, pause: float) -> int:
    from .engine import _writing

    db = router.db_for_write(IdempotencyKey)
    deleted = 0
    while True:
        ids = list(
            IdempotencyKey.objects.using(db)
            .filter(created_at__lt=cutoff)
            .order_by()
            .values_list("id", flat=True)[:batch]
        )
        if not ids:
            return deleted
        with _writing(db), transaction.atomic(using=db):
            deleted += (
                IdempotencyKey.objects.using(db)
                .filter(id__in=ids, created_at__lt=cutoff)
                ._raw_delete(db)
            )
        time.sleep(pause)


def ensure_schedule(using: str | None = None) -> bool:
    """Create the hourly django-q2 schedule that runs :func:`prune` unless it exists.

    Called after ``migrate`` (``post_migrate``), never from ``ready()``. Returns True if it
    created it. An existing schedule is left as the operator configured it.
    """
    try:
        from django_q.models import Schedule
    except ImportError:  # checks.E002 explains
        return False
    db = using or router.db_for_write(Schedule)
    if Schedule.objects.using(db).filter(func=SCHEDULE_FUNC).exists():
        return False
    Schedule.objects.using(db).create(
        name=SCHEDULE_NAME,
        func=SCHEDULE_FUNC,
        schedule_type=Schedule.HOURLY,
        repeats=-1,
        next_run=timezone.now() + timedelta(minutes=5),
        cluster=app_settings.Q_CLUSTER,
    )
    return True


def on_post_migrate(sender=None, using: str = "default", **kwargs) -> None:
    """``post_migrate`` receiver for this app: make sure the prune schedule exists."""
    try:
        ensure_schedule(using)
    except Exception:  # e.g. django_q's tables not migrated in this database
        logger.warning("could not create the webhooks_app prune schedule", exc_info=True)
