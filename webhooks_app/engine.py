"""The delivery engine: claim due deliveries, send them outside any transaction, record.

The Delivery table is the source of truth; the queue only wakes workers up. A worker
claims rows by setting a lease (``next_attempt_at`` moves to the lease's end and
``claim_token`` names the owner), commits, sends, then records the outcome only for rows
it still owns. Leases are short (``LEASE_SECONDS``) and a heartbeat thread renews them
while this process holds the rows, so a slow send is never handed to a second worker,
while a worker that dies stops renewing: its rows' leases run out within seconds and any
worker claims them again. At-least-once delivery on every broker.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import (
    DatabaseError,
    InterfaceError,
    OperationalError,
    connections,
    router,
    transaction,
)
from django.db.models import F, Func, IntegerField
from django.db.models.functions import Coalesce
from django.utils import timezone

from . import __version__, gating, signals, signing, transport
from .conf import app_settings
from .events import TEST_EVENT
from .models import Delivery, DeliveryAttempt, Endpoint

logger = logging.getLogger("webhooks_app.engine")

USER_AGENT = f"webhooks_app/{__version__}"


def _db() -> str:
    return router.db_for_write(Delivery)


_sqlite_writer = threading.Lock()


@contextmanager
def _writing(db: str):
    """On SQLite, let one thread of this process write at a time.

    SQLite has one write lock per file, and a connection that finds it taken sleeps in
    steps of up to 100 ms before trying again; with a worker's sender threads all
    recording at once, they slept more than they wrote, and so did every emit() in the
    site. Threads of one process now queue on a Python lock (woken at once) and only
    processes contend for SQLite's lock. Other databases lock rows, not the file.
    """
    if connections[db].vendor == "sqlite":
        with _sqlite_writer:
            yield
    else:
        yield


class _Leases:
    """The claims this process holds, renewed by one heartbeat thread while they last.

    A claim's lease is short so that a dead worker's rows come back within seconds; a
    live worker keeps its rows by renewing their lease (one UPDATE by primary key per
    claim, about every third of ``LEASE_SECONDS``) until it records or releases them.
    ``valid_until`` is what this process knows for sure: the claim or the last renewal
    that reached the database, plus the lease. A claim that the database says another
    worker took over (the renewal matched no row) is dropped, and its unstarted
    deliveries are not sent.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # token -> [ids still held, valid until (time.monotonic()), database alias]
        self._held: dict[str, list] = {}
        self._thread: threading.Thread | None = None

    def add(self, token: str, ids: Iterable[int], valid_until: float, db: str) -> None:
        with self._lock:
            self._held[token] = [set(ids), valid_until, db]
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="webhooks-heartbeat", daemon=True
                )
                self._thread.start()

    def forget(self, token: str, ids: Iterable[int]) -> None:
        with self._lock:
            entry = self._held.get(token)
            if entry is not None:
                entry[0].difference_update(ids)
                if not entry[0]:
                    del self._held[token]

    def valid_until(self, token: str) -> float:
        """``time.monotonic()`` until which this process surely owns ``token``'s rows."""
        with self._lock:
            entry = self._held.get(token)
            return entry[1] if entry is not None else 0.0

    def tokens(self) -> list[str]:
        with self._lock:
            return list(self._held)

    def renew(self, *, force: bool = False) -> None:
        """Extend every held lease that has used up a third of its time (or all)."""
        lease = app_settings.LEASE_SECONDS
        with self._lock:
            due = [
                (token, set(ids), db)
                for token, (ids, until, db) in self._held.items()
                if force or until - time.monotonic() < lease * 2 / 3
            ]
        for token, ids, db in due:
            started = time.monotonic()
            try:
                with _writing(db):
                    renewed = (
                        Delivery.objects.using(db)
                        .filter(id__in=ids, claim_token=token)
                        .update(next_attempt_at=timezone.now() + timedelta(seconds=lease))
                    )
            except DatabaseError:
                logger.warning("renewing a claim failed; retrying", exc_info=True)
                connections[db].close()
                continue
            with self._lock:
                entry = self._held.get(token)
                if entry is None:
                    continue
                if renewed:
                    entry[1] = started + lease
                else:  # every row was recorded meanwhile, or another worker took them
                    del self._held[token]

    def _run(self) -> None:
        while True:
            time.sleep(max(0.05, min(1.0, app_settings.LEASE_SECONDS / 6)))
            try:
                self.renew()
            except Exception:  # never let the heartbeat die
                logger.exception("lease heartbeat failed")


_leases = _Leases()


def lease_valid_until(token: str) -> float:
    """``time.monotonic()`` until which this process surely owns the rows of ``token``."""
    return _leases.valid_until(token)


class _OctetLength(Func):
    """Bytes of a text column (UTF-8), to bound a claim by size without loading bodies."""

    function = "OCTET_LENGTH"
    output_field = IntegerField()

    def as_sqlite(self, compiler, connection, **extra):
        return self.as_sql(
            compiler, connection, template="LENGTH(CAST(%(expressions)s AS BLOB))", **extra
        )


def _take_by_bytes(sized: list[tuple[int, int]], max_bytes: int | None) -> tuple[list, dict]:
    """The prefix of (id, size) pairs that fits in ``max_bytes`` (at least one row)."""
    ids: list[int] = []
    sizes: dict[int, int] = {}
    total = 0
    for pk, size in sized:
        size = size or 0
        if ids and max_bytes is not None and total + size > max_bytes:
            break
        ids.append(pk)
        sizes[pk] = size
        total += size
    return ids, sizes


def claim(
    limit: int,
    *,
    exclude_endpoints: Iterable[int] = (),
    max_bytes: int | None = None,
) -> tuple[str, list[Delivery]]:
    """Lease up to ``limit`` due deliveries to a new claim token; return token and rows.

    The rows' bodies add up to at most ``max_bytes`` (default ``CLAIM_MAX_BYTES``; the
    first row is always taken, so one event larger than the budget still goes out), so
    a worker's memory stays flat however large the events are. Each row carries its
    body size as ``claim_bytes``. The lease is renewed by this process's heartbeat until
    the rows are recorded or released.
    """
    if max_bytes is None:
        max_bytes = app_settings.CLAIM_MAX_BYTES
    now = timezone.now()
    token = secrets.token_hex(16)
    lease = app_settings.LEASE_SECONDS
    lease_until = now + timedelta(seconds=lease)
    valid_until = time.monotonic() + lease
    db = _db()
    due = Delivery.objects.using(db).filter(
        status=Delivery.Status.PENDING, next_attempt_at__lte=now
    )
    # Test deliveries are sent by send_test() in the caller's thread, never by a worker.
    due = due.exclude(event_type=TEST_EVENT)
    exclude = list(exclude_endpoints)
    if exclude:
        due = due.exclude(endpoint_id__in=exclude)
    due = due.order_by("next_attempt_at").annotate(
        size=Coalesce(_OctetLength("body"), _OctetLength("event__body"))
    )
    due = due.values_list("id", "size")
    if connections[db].features.has_select_for_update_skip_locked:
        # PostgreSQL: concurrent claimers skip each other's rows instead of waiting.
        with transaction.atomic(using=db):
            ids, sizes = _take_by_bytes(
                list(due.select_for_update(skip_locked=True, of=("self",))[:limit]), max_bytes
            )
            if ids:
                Delivery.objects.using(db).filter(id__in=ids).update(
                    next_attempt_at=lease_until, claim_token=token
                )
    else:
        # SQLite: a read first (cheap, never blocks under WAL), then one guarded UPDATE;
        # rows another worker leased in between no longer match and are skipped.
        ids, sizes = _take_by_bytes(list(due[:limit]), max_bytes)
        if ids:
            with _writing(db), transaction.atomic(using=db):
                Delivery.objects.using(db).filter(
                    id__in=ids, status=Delivery.Status.PENDING, next_attempt_at__lte=now
                ).update(next_attempt_at=lease_until, claim_token=token)
    if not ids:
        return token, []
    rows = list(
        Delivery.objects.using(db)
        .filter(id__in=ids, claim_token=token)
        .select_related("event", "endpoint")
        .defer("event__data")
        .order_by("next_attempt_at", "id")
    )
    for row in rows:
        row.claim_bytes = sizes.get(row.id, 0)
    if rows:
        _leases.add(token, [r.id for r in rows], valid_until, db)
    return token, rows


def _update_claimed(token: str, ids: Iterable[int], **values) -> None:
    """Update the rows among ``ids`` that ``token`` still owns, ending the claim."""
    ids = list(ids)
    if ids:
        db = _db()
        with _writing(db):
            Delivery.objects.using(db).filter(id__in=ids, claim_token=token).update(
                claim_token="", **values
            )
        _leases.forget(token, ids)


def release(token: str, ids: Iterable[int]) -> None:
    """Hand claimed deliveries back unattempted, due at once."""
    _update_claimed(token, ids, next_attempt_at=timezone.now())


def request_headers(delivery: Delivery, body: bytes, keys: list[str]) -> dict[str, str]:
    endpoint = delivery.endpoint
    headers = {"User-Agent": USER_AGENT, "X-Webhook-Event": delivery.event_type}
    if delivery.event.is_test:
        headers["webhook-test"] = "true"  # send_test(): receivers can skip side effects
    if delivery.send_method() == Endpoint.Method.POST:
        headers["Content-Type"] = "application/json"
    headers.update({str(k): str(v) for k, v in (endpoint.headers or {}).items()})
    headers.update(
        signing.sign_headers(
            keys,
            msg_id=delivery.event.public_id,
            body=body,
            schemes=app_settings.SIGNATURE_SCHEMES,
        )
    )
    return headers


@dataclass
class Outcome:
    delivery: Delivery
    response: transport.Response
    started_at: datetime


def attempt(delivery: Delivery, keys: list[str]) -> Outcome:
    """Send one delivery (no database access)."""
    method = delivery.send_method()  # the method its body was built for, not the endpoint's
    body = delivery.payload_bytes()
    if method == Endpoint.Method.GET:
        # Signed as it goes on the wire (older rows kept the URL's own query unescaped).
        body = transport.wire_query(body.decode("utf-8")).encode("ascii")
    started_at = timezone.now()
    response = transport.send(
        method,
        delivery.endpoint.url,
        body=body,
        headers=request_headers(delivery, body, keys),
    )
    return Outcome(delivery, response, started_at)


def _next_delay(attempts_made: int, response: transport.Response) -> float | None:
    """Seconds until the next attempt after ``attempts_made`` attempts of this sequence,
    or None when this failure is final."""
    if response.status_code == 410 or response.permanent:
        return None
    schedule = app_settings.RETRY_SCHEDULE
    position = attempts_made
    if position >= len(schedule):
        return None
    delay = schedule[position]
    if response.retry_after is not None:
        delay = max(delay, min(response.retry_after, app_settings.RETRY_AFTER_MAX))
    return delay


def _new_state(d: Delivery, o: Outcome, now, retry: bool) -> dict:
    """The columns a recorded attempt sets on ``d`` (besides the two attempt counters).

    Successes share ``now`` so that a chunk's successes are written by one UPDATE; a
    failure's retry is timed from the end of *its* attempt, not the end of the chunk.
    """
    r = o.response
    state = {
        "last_attempt_at": now,
        "last_status_code": r.status_code,
        "last_response_ms": r.duration_ms,
        "claim_token": "",
    }
    if r.ok:
        state.update(status=Delivery.Status.SUCCEEDED, next_attempt_at=None, last_error="")
        return state
    finished = o.started_at + timedelta(milliseconds=r.duration_ms)
    state["last_attempt_at"] = finished
    state["last_error"] = _storable(r.error) or f"HTTP {r.status_code}"
    delay = _next_delay(d.sequence_attempts + 1, r) if retry else None  # + this attempt
    if delay is None:
        state.update(status=Delivery.Status.FAILED, next_attempt_at=None)
    else:
        state.update(
            status=Delivery.Status.PENDING, next_attempt_at=finished + timedelta(seconds=delay)
        )
    return state


def record(token: str, outcomes: list[Outcome], *, retry: bool = True) -> list[Outcome]:
    """Write the attempts and the deliveries' new state, for rows ``token`` still owns.

    Returns the outcomes that were recorded (a worker whose lease ran out records nothing
    for that row: its new owner will).

    Everything is computed before the transaction starts, and rows that get the same
    values are written by one UPDATE: on SQLite the write lock is held only for a few
    statements (``bulk_update``'s CASE expressions cost milliseconds of Python under it,
    and every emit() in the site waited for them).
    """
    if not outcomes:
        return []
    db = _db()
    now = timezone.now()
    states = [(o, _new_state(o.delivery, o, now, retry)) for o in outcomes]
    try:
        recorded = _write_outcomes(db, token, states)
    except (OperationalError, InterfaceError):
        # A connection that died while we were sending (database restart, idle
        # timeout): reconnect once rather than lose outcomes of requests already sent.
        connections[db].close()
        recorded = _write_outcomes(db, token, states)
    except DatabaseError as exc:
        # Something in a response the database will not store: record the outcomes
        # without the response text rather than lose them and send everything again.
        logger.warning("recording outcomes failed (%s); recording them without excerpts", exc)
        for o in outcomes:
            o.response.excerpt = ""
            o.response.error = _storable(o.response.error).encode("ascii", "replace").decode()
        states = [(o, _new_state(o.delivery, o, now, retry)) for o in outcomes]
        recorded = _write_outcomes(db, token, states)
    try:
        _after_record(recorded)
    except Exception:  # the outcomes are committed; bookkeeping must not strand rows
        logger.exception("endpoint bookkeeping after recording failed")
    return recorded


def _storable(text: str) -> str:
    """Text any database stores: PostgreSQL refuses NUL in text columns, so a response
    or error that contains NUL bytes is kept with each NUL written as ``\\x00``."""
    return text.replace("\x00", "\\x00") if text else text


def _write_outcomes(db: str, token: str, states: list) -> list[Outcome]:
    groups: dict[tuple, list[int]] = {}
    for o, state in states:
        groups.setdefault(tuple(state.items()), []).append(o.delivery.id)
    with _writing(db), transaction.atomic(using=db):
        owned = set(
            Delivery.objects.using(db)
            .select_for_update()
            .filter(id__in=[o.delivery.id for o, _ in states], claim_token=token)
            .values_list("id", flat=True)
        )
        for items, ids in groups.items():
            ids = [i for i in ids if i in owned]
            if ids:
                Delivery.objects.using(db).filter(id__in=ids, claim_token=token).update(
                    attempts=F("attempts") + 1,
                    sequence_attempts=F("sequence_attempts") + 1,
                    **dict(items),
                )
        recorded: list[Outcome] = []
        attempts = []
        for outcome, _state in states:
            d, r = outcome.delivery, outcome.response
            if d.id not in owned:
                logger.warning("delivery %s: lease lost, outcome not recorded", d.id)
                continue
            attempts.append(
                DeliveryAttempt(
                    delivery_id=d.id,
                    number=d.attempts + 1,
                    started_at=outcome.started_at,
                    duration_ms=r.duration_ms,
                    status_code=r.status_code,
                    response_excerpt=_storable(r.excerpt),
                    error=_storable(r.error),
                    succeeded=r.ok,
                )
            )
            recorded.append(outcome)
        if attempts:
            DeliveryAttempt.objects.using(db).bulk_create(attempts)
    _leases.forget(token, [o.delivery.id for o, _ in states])
    # Only once committed: a retried write must not count an attempt twice.
    for outcome, state in states:
        if outcome.delivery.id in owned:
            d = outcome.delivery
            d.attempts += 1
            d.sequence_attempts += 1
            for name, value in state.items():
                setattr(d, name, value)
    return recorded


def _after_record(recorded: list[Outcome]) -> None:
    """Endpoint bookkeeping and signals, after the outcome is committed."""
    by_endpoint: dict[int, list[Outcome]] = {}
    for o in recorded:
        by_endpoint.setdefault(o.delivery.endpoint_id, []).append(o)
    for endpoint_id, outcomes in by_endpoint.items():
        endpoint = outcomes[0].delivery.endpoint
        finals = [o for o in outcomes if o.delivery.status == Delivery.Status.FAILED]
        if any(o.response.status_code == 410 for o in outcomes):
            disable_endpoint(endpoint, "The endpoint answered 410 Gone.")
        if any(o.response.ok for o in outcomes):
            # Whatever this (possibly stale) row says: another worker may have counted
            # failures since it was loaded, and a success ends the run in the database.
            Endpoint.objects.filter(id=endpoint_id, consecutive_failures__gt=0).update(
                consecutive_failures=0
            )
            endpoint.consecutive_failures = 0
        if finals:
            Endpoint.objects.filter(id=endpoint_id).update(
                consecutive_failures=F("consecutive_failures") + len(finals)
            )
            threshold = app_settings.AUTO_DISABLE_AFTER
            if threshold:
                disable_endpoint(
                    endpoint,
                    f"Disabled after {threshold} consecutive failed deliveries.",
                    consecutive_failures__gte=threshold,
                )
        for o in outcomes:
            if o.delivery.status == Delivery.Status.SUCCEEDED:
                signals.delivery_succeeded.send_robust(sender=Delivery, delivery=o.delivery)
            elif o.delivery.status == Delivery.Status.FAILED:
                signals.delivery_failed.send_robust(sender=Delivery, delivery=o.delivery)


def disable_endpoint(endpoint: Endpoint, reason: str, **conditions) -> bool:
    """Deactivate ``endpoint`` once (if ``conditions`` hold in the database); True if this
    call did it and sent the signal. One atomic UPDATE: of several workers seeing the
    same incident, only one wins, so there is one "disabled" notice."""
    won = Endpoint.objects.filter(id=endpoint.id, is_active=True, **conditions).update(
        is_active=False, disabled_reason=reason[:300]
    )
    if won:
        endpoint.is_active = False
        endpoint.disabled_reason = reason[:300]
        signals.endpoint_disabled.send_robust(sender=Endpoint, endpoint=endpoint, reason=reason)
    return bool(won)


def _stops_chunk(response: transport.Response) -> bool:
    """A dead endpoint (no answer) or a 410: do not try its other deliveries now."""
    no_answer = response.status_code is None and not response.permanent
    return no_answer or response.status_code == 410


def fail_unsent(token: str, ids: Iterable[int], reason: str) -> None:
    """Mark claimed deliveries failed without an attempt (e.g. the endpoint was switched
    off): no request, no attempt row, no signal; they can be replayed later."""
    _update_claimed(
        token, ids, status=Delivery.Status.FAILED, next_attempt_at=None, last_error=reason
    )


def _safe_attempt(d: Delivery, keys_by_endpoint: dict[int, list[str]]) -> Outcome:
    """``attempt()``, turning any unexpected error into a recorded, final failure, so a
    claimed row is never left stranded (e.g. a secret that no longer decrypts)."""
    started_at = timezone.now()
    try:
        keys = keys_by_endpoint.get(d.endpoint_id)
        if keys is None:
            keys = keys_by_endpoint[d.endpoint_id] = d.endpoint.signing_secrets()
        return attempt(d, keys)
    except Exception as exc:
        logger.exception("delivery %s could not be attempted", d.id)
        message = str(exc) if isinstance(exc, ValueError) else type(exc).__name__
        r = transport.Response(None, 0, error=f"internal error: {message}", permanent=True)
        return Outcome(d, r, started_at)


def deliver_chunk(
    token: str,
    deliveries: list[Delivery],
    *,
    stopping=lambda: False,
    lease_deadline: float | None = None,
) -> bool:
    """Send claimed deliveries of one endpoint in order, then record them.

    A delivery is only started while this process surely holds the claim (its lease was
    taken or renewed less than two thirds of ``LEASE_SECONDS`` ago, see ``_Leases``;
    ``lease_deadline``, a ``time.monotonic()`` value, caps it further); otherwise it is
    handed back, so a chunk whose claim was lost never races the worker that re-claimed
    it. If the endpoint does not answer (or answers 410), the rest of the chunk is handed
    back unattempted: a dead endpoint costs one sender thread, not all of them.
    Returns True when the chunk stopped that way (the dispatcher then gives the endpoint
    one thread until it answers again).

    Whatever fails on the way, every row of the chunk ends recorded, handed back or
    (if the database itself is gone) left to its lease, which is no longer renewed.
    """
    if not deliveries:
        return False
    outcomes: list[Outcome] = []
    keys_by_endpoint: dict[int, list[str]] = {}
    remaining = list(deliveries)
    disabled: list[Delivery] = []
    gated: list[Delivery] = []
    stalled = False
    margin = app_settings.LEASE_SECONDS / 3
    recorded: list[Outcome] = []
    try:
        disabled = [d for d in remaining if not d.endpoint.is_active]
        remaining = [d for d in remaining if d.endpoint.is_active]
        # A tenant that lost the feature (FEATURE_GATE / TENANT_GATE): recorded, not sent.
        if remaining and (app_settings.FEATURE_GATE or app_settings.TENANT_GATE):
            tenants = {d.endpoint.tenant for d in remaining}
            allowed = {t: gating.sending_allowed(t) for t in tenants}
            gated = [d for d in remaining if not allowed[d.endpoint.tenant]]
            remaining = [d for d in remaining if allowed[d.endpoint.tenant]]
        while remaining:
            held = lease_valid_until(token)
            if lease_deadline is not None:
                held = min(held, lease_deadline)
            if stopping() or time.monotonic() + margin > held:
                break
            d = remaining.pop(0)
            outcome = _safe_attempt(d, keys_by_endpoint)
            outcomes.append(outcome)
            if _stops_chunk(outcome.response):
                stalled = True
                break
    finally:
        try:
            recorded = record(token, outcomes)
        finally:
            try:
                fail_unsent(
                    token,
                    [d.id for d in disabled],
                    "The endpoint is disabled; replay this delivery after enabling it.",
                )
                fail_unsent(token, [d.id for d in gated], gating.FEATURE_UNAVAILABLE_AT_SEND)
            finally:
                # Handed back: never started, or attempted but not recorded (then sent
                # again: at least once). Rows another owner holds are not touched.
                done = {o.delivery.id for o in recorded} | {d.id for d in disabled + gated}
                back = [d.id for d in deliveries if d.id not in done]
                try:
                    release(token, back)
                finally:
                    _leases.forget(token, [d.id for d in deliveries])
    return stalled


def drain(max_seconds: float = 60.0) -> int:
    """Send everything that is due, in this thread; return the number of attempts.

    Used when no background dispatcher runs in this process (tests, ``sync`` clusters,
    the ``webhooks_send_due`` command).
    """
    done = 0
    deadline = time.monotonic() + max_seconds
    while time.monotonic() < deadline:
        token, rows = claim(app_settings.CHUNK_SIZE)
        if not rows:
            break
        by_endpoint: dict[int, list[Delivery]] = {}
        for row in rows:
            by_endpoint.setdefault(row.endpoint_id, []).append(row)
        for chunk in by_endpoint.values():
            deliver_chunk(token, chunk)
        done += len(rows)
    return done
