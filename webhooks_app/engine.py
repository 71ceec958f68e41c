"""The delivery engine: claim due deliveries, send them outside any transaction, record.

The Delivery table is the source of truth; the queue only wakes workers up. A worker
claims rows by setting a lease (``next_attempt_at`` moves to the lease's end and
``claim_token`` names the owner), commits, sends, then records the outcome only for rows
it still owns. A worker that dies leaves rows whose lease simply runs out, and any worker
claims them again: at-least-once delivery on every broker.
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

from django.db import InterfaceError, OperationalError, connections, router, transaction
from django.db.models import F
from django.utils import timezone

from . import __version__, signals, signing, transport
from .conf import app_settings
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


def claim(limit: int, *, exclude_endpoints: Iterable[int] = ()) -> tuple[str, list[Delivery]]:
    """Lease up to ``limit`` due deliveries to a new claim token; return token and rows."""
    now = timezone.now()
    token = secrets.token_hex(16)
    lease_until = now + timedelta(seconds=app_settings.LEASE_SECONDS)
    db = _db()
    due = Delivery.objects.using(db).filter(
        status=Delivery.Status.PENDING, next_attempt_at__lte=now
    )
    exclude = list(exclude_endpoints)
    if exclude:
        due = due.exclude(endpoint_id__in=exclude)
    due = due.order_by("next_attempt_at").values_list("id", flat=True)
    if connections[db].features.has_select_for_update_skip_locked:
        # PostgreSQL: concurrent claimers skip each other's rows instead of waiting.
        with transaction.atomic(using=db):
            ids = list(due.select_for_update(skip_locked=True)[:limit])
            if ids:
                Delivery.objects.using(db).filter(id__in=ids).update(
                    next_attempt_at=lease_until, claim_token=token
                )
    else:
        # SQLite: a read first (cheap, never blocks under WAL), then one guarded UPDATE;
        # rows another worker leased in between no longer match and are skipped.
        ids = list(due[:limit])
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


def release(token: str, ids: Iterable[int]) -> None:
    """Hand claimed deliveries back unattempted, due at once."""
    _update_claimed(token, ids, next_attempt_at=timezone.now())


def request_headers(delivery: Delivery, body: bytes, keys: list[str]) -> dict[str, str]:
    endpoint = delivery.endpoint
    headers = {"User-Agent": USER_AGENT, "X-Webhook-Event": delivery.event_type}
    if delivery.event.is_test:
        headers["webhook-test"] = "true"  # send_test(): receivers can skip side effects
    if endpoint.method == Endpoint.Method.POST:
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
    body = delivery.payload_bytes()
    started_at = timezone.now()
    response = transport.send(
        delivery.endpoint.method,
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
    state["last_error"] = r.error or f"HTTP {r.status_code}"
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
    _after_record(recorded)
    return recorded


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
                    response_excerpt=r.excerpt,
                    error=r.error,
                    succeeded=r.ok,
                )
            )
            recorded.append(outcome)
        if attempts:
            DeliveryAttempt.objects.using(db).bulk_create(attempts)
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
        if any(o.response.ok for o in outcomes) and endpoint.consecutive_failures:
            Endpoint.objects.filter(id=endpoint_id).update(consecutive_failures=0)
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

    A delivery is only started if its attempt can finish before the claim's lease
    (``lease_deadline``, a ``time.monotonic()`` value) runs out; otherwise it is handed
    back, so a chunk that waited in a queue never races the worker that re-claimed it.
    If the endpoint does not answer (or answers 410), the rest of the chunk is handed
    back unattempted: a dead endpoint costs one sender thread, not all of them.
    Returns True when the chunk stopped that way (the dispatcher then gives the endpoint
    one thread until it answers again).
    """
    if not deliveries:
        return False
    if lease_deadline is None:
        lease_deadline = time.monotonic() + app_settings.LEASE_SECONDS
    outcomes: list[Outcome] = []
    keys_by_endpoint: dict[int, list[str]] = {}
    remaining = list(deliveries)
    disabled = [d for d in remaining if not d.endpoint.is_active]
    remaining = [d for d in remaining if d.endpoint.is_active]
    stalled = False
    try:
        while remaining:
            if stopping() or time.monotonic() + app_settings.TIMEOUT + 1 > lease_deadline:
                break
            d = remaining.pop(0)
            outcome = _safe_attempt(d, keys_by_endpoint)
            outcomes.append(outcome)
            if _stops_chunk(outcome.response):
                stalled = True
                break
    finally:
        try:
            record(token, outcomes)
        finally:
            release(token, [d.id for d in remaining])
            fail_unsent(
                token,
                [d.id for d in disabled],
                "The endpoint is disabled; replay this delivery after enabling it.",
            )
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
