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

import hashlib
import logging
import os
import secrets
import socket
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
from django.db.models import F, Q, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from . import __version__, gating, signals, signing, statements, transport
from . import headers as headers_policy
from .conf import app_settings
from .events import TEST_EVENT
from .models import Delivery, DeliveryAttempt, Endpoint

logger = logging.getLogger("webhooks_app.engine")
# One INFO line per recorded attempt (see log_attempts); its own name so that a site can
# route or silence it apart from the engine's warnings.
attempt_logger = logging.getLogger("webhooks_app.attempts")

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
                    now = timezone.now()  # (after any wait for SQLite's lock)
                    renewed = (
                        Delivery.objects.using(db)
                        # Only a lease still running: once it ran out (a heartbeat late
                        # past it), another worker may hold some of these rows; renewing
                        # the rest would let this chunk send rows it no longer owns.
                        .filter(id__in=ids, claim_token=token, next_attempt_at__gt=now)
                        .update(next_attempt_at=now + timedelta(seconds=lease))
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


def _of_first_endpoints(candidates: list, limit: int, max_endpoints: int | None) -> list:
    """The oldest ``limit`` candidates (id, size, endpoint id, ...) that belong to the
    first ``max_endpoints`` endpoints among them (all endpoints when None)."""
    chosen: set[int] = set()
    out = []
    for candidate in candidates:
        endpoint_id = candidate[2]
        if endpoint_id not in chosen:
            if max_endpoints is not None and len(chosen) >= max_endpoints:
                continue
            chosen.add(endpoint_id)
        out.append(candidate)
        if len(out) >= limit:
            break
    return out


def worker_tag() -> str:
    """``<pid hex>.<host hash>``: which worker process holds a claim (webhooks_status)."""
    host = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:4]
    return f"{os.getpid():x}.{host}"


def new_claim_token() -> str:
    """The worker's tag and 64 random bits (at most 32 characters, like the column)."""
    return f"{worker_tag()}.{secrets.token_hex(8)}"[-32:]


def claim(
    limit: int,
    *,
    exclude_endpoints: Iterable[int] = (),
    max_bytes: int | None = None,
    max_endpoints: int | None = None,
) -> tuple[str, list[Delivery]]:
    """Lease up to ``limit`` due deliveries to a new claim token; return token and rows.

    The rows' bodies add up to at most ``max_bytes`` (default ``CLAIM_MAX_BYTES``; the
    first row is always taken, so one event larger than the budget still goes out), so
    a worker's memory stays flat however large the events are. Each row carries its
    body size as ``claim_bytes``. The lease is renewed by this process's heartbeat until
    the rows are recorded or released.

    Endpoints with flow control (rate limit, ordered delivery, a breaker that is not
    closed) are admitted by ``_admit`` in the same transaction; a row that must wait for
    its rate-limit slot comes back with ``not_before`` set (a datetime), else None.

    ``max_endpoints`` (the dispatcher's free threads) takes only rows of that many
    endpoints: in a fan-out, rows of endpoints that no thread could take were claimed,
    loaded and handed straight back, again and again (claim was 30% of a fan-out's
    worker CPU).
    """
    if max_bytes is None:
        max_bytes = app_settings.CLAIM_MAX_BYTES
    now = timezone.now()
    token = new_claim_token()
    lease = app_settings.LEASE_SECONDS
    lease_until = now + timedelta(seconds=lease)
    valid_until = time.monotonic() + lease
    db = _db()
    conn = connections[db]
    exclude = list(exclude_endpoints)
    slots: dict[int, datetime] = {}
    # Enough candidates to fill ``limit`` from the first endpoints of a fan-out.
    window = limit if max_endpoints is None else min(4 * limit, max(limit, 1000))
    # (Test deliveries are sent by send_test() in the caller's thread, never by a worker.)
    due = statements.due_sql(conn, len(exclude))
    due_params = statements.due_params(conn, now, exclude, window, TEST_EVENT)
    leased = Delivery._meta.get_field("next_attempt_at").get_db_prep_value(lease_until, conn)
    rows: list[Delivery] = []
    if conn.vendor == "postgresql":
        # Concurrent claimers skip each other's rows instead of waiting; the lease's
        # UPDATE returns the rows with their events.
        with transaction.atomic(using=db), conn.cursor() as cursor:
            cursor.execute(due, due_params)
            candidates = _of_first_endpoints(cursor.fetchall(), limit, max_endpoints)
            candidates, sizes = _fit(candidates, max_bytes)
            ids, slots = _admit(db, candidates, now, lease_until, lock=True)
            if ids:
                # Only rows this transaction holds (candidates), so nothing waits here.
                cursor.execute(
                    statements.lease_sql(conn, len(ids)),
                    [leased, token, *statements.id_params(conn, ids)],
                )
                rows = statements.loaded_rows(conn, cursor.fetchall())
    else:
        # SQLite: a read first (cheap, never blocks under WAL), then one guarded UPDATE;
        # rows another worker leased in between no longer match and are skipped.
        with conn.cursor() as cursor:
            cursor.execute(due, due_params)
            candidates = cursor.fetchall()
        candidates, sizes = _fit(_of_first_endpoints(candidates, limit, max_endpoints), max_bytes)
        ids = []
        if candidates:
            with _writing(db), transaction.atomic(using=db), conn.cursor() as cursor:
                ids, slots = _admit(db, candidates, now, lease_until, lock=False)
                if ids:
                    pending, when = Delivery.Status.PENDING, due_params[0]
                    cursor.execute(
                        statements.lease_sql(conn, len(ids)),
                        [leased, token, *statements.id_params(conn, ids), pending, when],
                    )
    if not ids:
        return token, []
    try:
        if conn.vendor != "postgresql":
            with conn.cursor() as cursor:
                cursor.execute(
                    statements.leased_sql(conn, len(ids)),
                    [*statements.id_params(conn, ids), token],
                )
                rows = statements.loaded_rows(conn, cursor.fetchall())
        # In the order they were due (the lease overwrote their due times), ordered
        # endpoints' runs in emit order: each endpoint's chunk is sent in this order.
        position = {row_id: i for i, row_id in enumerate(ids)}
        rows.sort(key=lambda r: position[r.id])
        # One Endpoint object per endpoint, not one per row: building it (JSON and datetime
        # columns) for every row of a claim cost as much as the rows themselves.
        wanted = sorted({r.endpoint_id for r in rows})
        endpoints = {}
        if wanted:  # (none when another worker leased every row meanwhile, on SQLite)
            with conn.cursor() as cursor:
                cursor.execute(
                    statements.endpoints_sql(conn, len(wanted)),
                    statements.id_params(conn, wanted),
                )
                endpoints = statements.loaded_endpoints(conn, cursor.fetchall())
        rows = [r for r in rows if r.endpoint_id in endpoints]  # (an endpoint deleted meanwhile)
        for row in rows:
            row.endpoint = endpoints[row.endpoint_id]
    except Exception:
        release(token, ids)  # claimed but never handed to anyone
        raise
    for row in rows:
        row.claim_bytes = sizes.get(row.id, 0)
        row.not_before = slots.get(row.id)
    if rows:
        _leases.add(token, [r.id for r in rows], valid_until, db)
    return token, rows


# Flow control ----------------------------------------------------------------------------
def rate_window() -> float:
    """Seconds of rate-limit slots one claim may book ahead (the rows wait, claimed and
    their lease renewed, in the dispatcher's timer)."""
    return min(4.0, max(1.0, 2 * app_settings.POLL_INTERVAL))


def _fit(candidates: list[tuple], max_bytes: int | None) -> tuple[list[tuple], dict]:
    """The candidates (id, size, ...) that fit in ``max_bytes``, and their sizes."""
    ids, sizes = _take_by_bytes([(c[0], c[1]) for c in candidates], max_bytes)
    return candidates[: len(ids)], sizes


def _is_gated(candidate: tuple) -> bool:
    _id, _size, _endpoint_id, rate_limit, ordered, breaker_state = candidate
    return bool(rate_limit) or bool(ordered) or breaker_state != Endpoint.BreakerState.CLOSED


def _admit(
    db: str, candidates: list[tuple], now: datetime, lease_until: datetime, *, lock: bool
) -> tuple[list[int], dict[int, datetime]]:
    """Which candidate rows this claim may take, and the send slot of rate-limited ones.

    Rows of plain endpoints are all taken (no query). For each endpoint with flow control
    among the candidates, its row is locked (PostgreSQL: ``SKIP LOCKED``, so an endpoint
    another claimer is admitting is simply left for the next claim; SQLite: the claim's
    write lock serialises this already) and its state decides:

    - breaker open, cool-down over: half-open, one probe (the earliest due delivery);
    - ordered: the longest run of its pending deliveries, in id (emit) order, that are
      all due; none if the oldest is waiting for a retry or is in flight;
    - rate limit: as many rows as there are free slots in the next ``rate_window()``
      seconds (GCRA on ``next_slot_at``, shared by every worker and host).

    An endpoint that may take nothing more for now is paused (``paused_until``), so the
    next claims skip its rows in the query instead of reading them again.
    """
    plain: list[int] = []
    by_endpoint: dict[int, list[int]] = {}
    for c in candidates:
        if _is_gated(c):
            by_endpoint.setdefault(c[2], []).append(c[0])
        else:
            plain.append(c[0])
    if not by_endpoint:
        return plain, {}
    endpoints = Endpoint.objects.using(db).filter(id__in=list(by_endpoint))
    if lock:
        endpoints = endpoints.select_for_update(skip_locked=True, no_key=True)
    fields = ["id", "is_active", "rate_limit", "ordered", "breaker_state", "paused_until"]
    endpoints = endpoints.only(*fields, "next_slot_at")
    taken = list(plain)
    slots: dict[int, datetime] = {}
    for ep in endpoints:
        if not ep.is_active:
            taken += by_endpoint[ep.id]  # they fail quietly in deliver_chunk
            continue
        if ep.paused_until and ep.paused_until > now:
            continue  # paused by a claim that committed after our read (SQLite)
        changes: dict = {}
        rows = by_endpoint[ep.id]
        single = False
        if ep.breaker_state != Endpoint.BreakerState.CLOSED:
            # Open with its cool-down over (paused_until passed), or half-open whose probe
            # was handed back or whose worker died: send one probe.
            changes["breaker_state"] = Endpoint.BreakerState.HALF_OPEN
            single = True
        if ep.ordered:
            rows, head_due = _ordered_run(db, ep.id, now, set(rows))
            if not rows:
                if head_due is not None:
                    # The oldest waits for its retry or is in flight: nothing until then.
                    Endpoint.objects.using(db).filter(id=ep.id).update(paused_until=head_due)
                continue
        if single:
            rows = rows[:1]
        if ep.ordered and ep.rate_limit:
            # Paced rows go out one by one at their slots, not as one chunk that stops at
            # a failure: one at a time, or later ones would pass a failed earlier one.
            rows = rows[:1]
        if ep.rate_limit:
            interval = 1.0 / ep.rate_limit
            base = max(ep.next_slot_at or now, now)
            window_end = now + timedelta(seconds=rate_window())
            free = (window_end - base).total_seconds() / interval
            n = 0 if free <= 0 else int(-(-free // 1))  # slots base + i*interval < end
            rows = rows[:n]
            for i, row_id in enumerate(rows):
                # Every one, even a slot due now: they all go out on the paced threads.
                slots[row_id] = base + timedelta(seconds=i * interval)
            next_slot = base + timedelta(seconds=len(rows) * interval)
            changes["next_slot_at"] = next_slot
            booked_until = next_slot - timedelta(seconds=rate_window())
            if booked_until > now:
                changes["paused_until"] = booked_until
        if rows and (ep.ordered or single):
            # One chunk in flight at a time; deliver_chunk lifts the pause when it ends.
            # (An ordered chunk that outlasts it is still covered: its head is leased.
            # A probe is one attempt, which TIMEOUT bounds.)
            until = lease_until
            if single:
                until = max(until, now + timedelta(seconds=app_settings.TIMEOUT + 5))
            changes["paused_until"] = max(until, changes.get("paused_until") or now)
        if changes:
            Endpoint.objects.using(db).filter(id=ep.id).update(**changes)
        taken += rows
    return taken, slots


def _ordered_run(
    db: str, endpoint_id: int, now: datetime, candidates: set[int]
) -> tuple[list[int], datetime | None]:
    """The ids of ``endpoint_id``'s oldest pending deliveries, in id order, as long as each
    is due and among this claim's candidates (rows it holds); and, when the run stops at
    a delivery that is not due, that delivery's due time."""
    head = (
        Delivery.objects.using(db)
        # (A test send in progress has no due time and is not part of the order.)
        .filter(
            endpoint_id=endpoint_id,
            status=Delivery.Status.PENDING,
            next_attempt_at__isnull=False,
        )
        .order_by("id")
        .values_list("id", "next_attempt_at")[: app_settings.CHUNK_SIZE]
    )
    run: list[int] = []
    for row_id, due in head:
        if due > now:
            return run, due
        if row_id not in candidates:
            break
        run.append(row_id)
    return run, None


def unpause(endpoint: Endpoint) -> None:
    """A chunk of an ordered endpoint, or a probe, ended: the next claim may admit it
    (unless the probe re-opened the breaker, whose cool-down is the pause now)."""
    Endpoint.objects.using(_db()).filter(id=endpoint.id).exclude(
        breaker_state=Endpoint.BreakerState.OPEN
    ).update(paused_until=None)


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


def fail_abandoned_tests() -> int:
    """Fail test sends whose process died mid-send (pending, no due time, claimed by
    send_test, older than any send can take): no worker claims a test, so without this
    one would stay pending forever. Called by every dispatcher now and then."""
    cutoff = timezone.now() - timedelta(seconds=app_settings.TIMEOUT + 60)
    db = _db()
    with _writing(db):
        return (
            Delivery.objects.using(db)
            .filter(
                status=Delivery.Status.PENDING,
                next_attempt_at__isnull=True,
                event_type=TEST_EVENT,
                created_at__lt=cutoff,
            )
            .update(
                status=Delivery.Status.FAILED,
                claim_token="",
                last_error="The test send was interrupted (its process stopped); send it again.",
            )
        )


def release(token: str, ids: Iterable[int]) -> None:
    """Hand claimed deliveries back unattempted, due at once."""
    _update_claimed(token, ids, next_attempt_at=timezone.now())


def request_headers(
    delivery: Delivery, body: bytes, keys: list[str], custom: dict[str, str] | None = None
) -> dict[str, str]:
    """Every header of one request. ``custom``: the endpoint's decrypted custom headers
    (decrypted here when not given). Raises ValueError, naming the header but never its
    value, for a custom header that cannot be sent."""
    endpoint = delivery.endpoint
    headers = {"User-Agent": USER_AGENT, "X-Webhook-Event": delivery.event_type}
    if delivery.event.is_test:
        headers["webhook-test"] = "true"  # send_test(): receivers can skip side effects
    if delivery.send_method() == Endpoint.Method.POST:
        headers["Content-Type"] = delivery.content_type or "application/json"
    if custom is None:
        custom = endpoint.get_headers()
    for name, value in custom.items():
        problem = headers_policy.name_problem(name) or headers_policy.value_problem(name, value)
        if problem:
            raise ValueError(f"{problem} Edit the endpoint's custom headers.")
        headers[name] = value
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


def wire(delivery: Delivery) -> tuple[str, bytes]:
    """The method and the exact bytes ``delivery`` goes out with (and is signed over);
    the live preview shows them through this too."""
    method = delivery.send_method()  # the method its body was built for, not the endpoint's
    body = delivery.payload_bytes()
    if method == Endpoint.Method.GET:
        # Signed as it goes on the wire (older rows kept the URL's own query unescaped).
        body = transport.wire_query(body.decode("utf-8")).encode("ascii")
    return method, body


def attempt(
    delivery: Delivery, keys: list[str], custom_headers: dict[str, str] | None = None
) -> Outcome:
    """Send one delivery (no database access)."""
    method, body = wire(delivery)
    started_at = timezone.now()
    response = transport.send(
        method,
        delivery.endpoint.url,
        body=body,
        headers=request_headers(delivery, body, keys, custom_headers),
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
    # Every outcome sets the same columns in the same order: one statement writes them all.
    state = {
        "last_attempt_at": now,
        "last_status_code": r.status_code,
        "last_response_ms": r.duration_ms,
        "claim_token": "",
        "status": Delivery.Status.SUCCEEDED,
        "next_attempt_at": None,
        "last_error": "",
    }
    if r.ok:
        return state
    finished = o.started_at + timedelta(milliseconds=r.duration_ms)
    state["last_attempt_at"] = finished
    state["last_error"] = _storable(r.error) or f"HTTP {r.status_code}"
    delay = _next_delay(d.sequence_attempts + 1, r) if retry else None  # + this attempt
    if delay is None:
        state["status"] = Delivery.Status.FAILED
    else:
        state["status"] = Delivery.Status.PENDING
        state["next_attempt_at"] = finished + timedelta(seconds=delay)
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
    log_attempts(recorded)
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
    """Write the outcomes of rows ``token`` still owns: their new state and their attempts.

    Written in SQL rather than through the ORM: building the ``filter().update()`` of
    each group of rows and the ``bulk_create`` cost more Python than the whole HTTP
    exchange of a delivery (record() was 56% of the workers' CPU in a burst, 68% in a
    fan-out, and on SQLite all of it under the write lock). On PostgreSQL it is one
    statement (one round trip, no BEGIN or COMMIT of its own), elsewhere three.
    """
    conn = connections[db]
    names = tuple(states[0][1])
    if conn.vendor == "postgresql" and all(tuple(state) == names for _, state in states):
        owned = _write_outcomes_pg(conn, db, token, states, names)
    else:
        owned = _write_outcomes_in_steps(conn, db, token, states)
    recorded: list[Outcome] = []
    for outcome, _state in states:
        if outcome.delivery.id in owned:
            recorded.append(outcome)
        else:
            logger.warning("delivery %s: lease lost, outcome not recorded", outcome.delivery.id)
    _leases.forget(token, [o.delivery.id for o, _ in states])
    # Only once committed (a retried write must not count an attempt twice), and the
    # counters as the database has them now.
    for outcome, state in states:
        counters = owned.get(outcome.delivery.id)
        if counters is not None:
            d = outcome.delivery
            d.attempts, d.sequence_attempts = counters
            for name, value in state.items():
                setattr(d, name, value)
    return recorded


def _attempt_values(outcome: Outcome, conn) -> list:
    """The attempt's columns (``statements.ATTEMPT_COLUMNS``) as the database stores them."""
    r = outcome.response
    started = DeliveryAttempt._meta.get_field("started_at")
    return [
        started.get_db_prep_save(outcome.started_at, conn),
        r.duration_ms,
        r.status_code,
        _storable(r.excerpt),
        _storable(r.error),
        r.ok,
    ]


def _write_outcomes_pg(
    conn, db: str, token: str, states: list, names: tuple
) -> dict[int, tuple[int, int]]:
    """PostgreSQL: ``statements.record_sql``, one statement and one round trip (no
    BEGIN or COMMIT of its own), with one array per column: its text and its 15
    parameters are the same for every chunk, so psycopg parses it once (a VALUES list
    of 14 parameters per row was past its cache's 50 from the 4th row)."""
    sql = statements.record_sql(conn, names)
    fields = [Delivery._meta.get_field(n) for n in names]
    columns: list[list] = [[] for _ in range(1 + len(names) + len(statements.ATTEMPT_COLUMNS))]
    for o, state in states:
        row = [o.delivery.id]
        row += [f.get_db_prep_save(state[n], conn) for f, n in zip(fields, names, strict=True)]
        row += _attempt_values(o, conn)
        for column, value in zip(columns, row, strict=True):
            column.append(value)
    with conn.cursor() as cursor:
        if conn.in_atomic_block:  # a savepoint, so a failed write leaves the caller's intact
            with transaction.atomic(using=db):
                cursor.execute(sql, [*columns, token])
        else:
            cursor.execute(sql, [*columns, token])
        return {row[0]: (row[1], row[2]) for row in cursor.fetchall()}


def _write_outcomes_in_steps(
    conn, db: str, token: str, states: list
) -> dict[int, tuple[int, int]]:
    """One transaction of a few statements whatever the chunk's size: the rows ``token``
    still owns (locked) and their counters, their new state (one UPDATE executed for
    every row, prepared once), the attempts (one multi-row INSERT), and for a success
    the endpoint's run of failures ended (in this transaction: on SQLite a second one
    would take the write lock again)."""
    q = conn.ops.quote_name
    table = q(Delivery._meta.db_table)
    ids = [o.delivery.id for o, _ in states]
    by_columns: dict[tuple[str, ...], list] = {}
    for o, state in states:
        by_columns.setdefault(tuple(state), []).append((o, state))
    fields = {f.name: f for f in Delivery._meta.concrete_fields}
    with _writing(db), transaction.atomic(using=db), conn.cursor() as cursor:
        lock = " FOR UPDATE" if conn.features.has_select_for_update else ""
        cursor.execute(
            f"SELECT id, {q('attempts')}, {q('sequence_attempts')} FROM {table} "
            f"WHERE id IN ({', '.join(['%s'] * len(ids))}) AND claim_token = %s{lock}",
            [*ids, token],
        )
        owned = {row[0]: (row[1] + 1, row[2] + 1) for row in cursor.fetchall()}
        for names, items in by_columns.items():
            rows = [
                [fields[n].get_db_prep_save(state[n], conn) for n in names] + [o.delivery.id, token]
                for o, state in items
                if o.delivery.id in owned
            ]
            if rows:
                sets = ", ".join(f"{q(fields[n].column)} = %s" for n in names)
                cursor.executemany(
                    f"UPDATE {table} SET {q('attempts')} = {q('attempts')} + 1, "
                    f"{q('sequence_attempts')} = {q('sequence_attempts')} + 1, {sets} "
                    f"WHERE id = %s AND claim_token = %s",
                    rows,
                )
        values: list = []
        for outcome, _state in states:
            d = outcome.delivery
            if d.id in owned:
                values += [d.id, owned[d.id][0], *_attempt_values(outcome, conn)]
        if values:
            names = ("delivery_id", "number", *statements.ATTEMPT_COLUMNS)
            row = "(" + ", ".join(["%s"] * len(names)) + ")"
            cursor.execute(
                f"INSERT INTO {q(DeliveryAttempt._meta.db_table)} "
                f"({', '.join(q(c) for c in names)}) "
                f"VALUES {', '.join([row] * (len(values) // len(names)))}",
                values,
            )
        succeeded = sorted(
            {o.delivery.endpoint_id for o, _ in states if o.delivery.id in owned and o.response.ok}
        )
        if succeeded:
            cursor.execute(
                statements.reset_failures_sql(conn, len(succeeded)),
                statements.id_params(conn, succeeded),
            )
    return owned


def log_attempts(recorded: list[Outcome]) -> None:
    """One structured line per attempt: ids, attempt number, status, duration, outcome.

    Never the secret, the headers or the body (nor the URL, whose path or query may hold
    a token). The same fields are attached to the record (``extra``) for JSON formatters.
    """
    if not attempt_logger.isEnabledFor(logging.INFO):
        return
    for o in recorded:
        d, r = o.delivery, o.response
        if r.ok:
            outcome = "succeeded"
        elif d.status == Delivery.Status.PENDING:
            outcome = "retry"
        else:
            outcome = "failed"
        fields = {
            "endpoint_id": d.endpoint_id,
            "event_id": d.event.public_id,
            "delivery_id": d.id,
            "attempt": d.attempts,
            "status": r.status_code,
            "duration_ms": r.duration_ms,
            "outcome": outcome,
        }
        attempt_logger.info(
            "webhook attempt %s",
            " ".join(f"{k}={'-' if v is None else v}" for k, v in fields.items()),
            extra={"webhook": fields},
        )


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
            conn = connections[_db()]
            if conn.vendor == "postgresql":
                # Apart from the outcomes, which are committed already: an endpoint row
                # held by a site's transaction must not hold them up. (On SQLite
                # _write_outcomes did this in its transaction.)
                with conn.cursor() as cursor:
                    cursor.execute(
                        statements.reset_failures_sql(conn, 1),
                        statements.id_params(conn, [endpoint_id]),
                    )
            endpoint.consecutive_failures = 0
        _count_for_breaker(endpoint, outcomes)
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


def _count_for_breaker(endpoint: Endpoint, outcomes: list[Outcome]) -> None:
    """Circuit breaker bookkeeping for one endpoint's recorded attempts (in send order).

    A success closes the breaker; failures after the last success add to the run of
    failed attempts, which opens it at ``BREAKER_THRESHOLD``; a failure while half-open
    (the probe) re-opens it. Healthy endpoints cost no query here. Every change is one
    conditional UPDATE, so workers seeing the same incident agree on one transition.
    """
    threshold = app_settings.BREAKER_THRESHOLD
    if not threshold:
        return
    closed = Endpoint.BreakerState.CLOSED
    last_ok = max((i for i, o in enumerate(outcomes) if o.response.ok), default=-1)
    failed_after = len(outcomes) - last_ok - 1
    this = Endpoint.objects.filter(id=endpoint.id)
    if last_ok >= 0:
        if endpoint.breaker_failures or failed_after or endpoint.breaker_state != closed:
            this.update(breaker_failures=failed_after)
            if this.exclude(breaker_state=closed).update(
                breaker_state=closed, breaker_opened_at=None, paused_until=None
            ):
                logger.info("endpoint %s: circuit breaker closed", endpoint.id)
        endpoint.breaker_failures = failed_after
        endpoint.breaker_state = closed
    else:
        this.update(breaker_failures=F("breaker_failures") + failed_after)
    if not failed_after:
        return
    now = timezone.now()
    half_open = Endpoint.BreakerState.HALF_OPEN
    opened = this.filter(
        Q(breaker_state=half_open) | Q(breaker_state=closed, breaker_failures__gte=threshold)
    ).update(
        breaker_state=Endpoint.BreakerState.OPEN,
        breaker_opened_at=Coalesce(F("breaker_opened_at"), Value(now)),
        paused_until=now + timedelta(seconds=app_settings.BREAKER_COOLDOWN),
    )
    if not opened:
        return
    endpoint.breaker_state = Endpoint.BreakerState.OPEN
    logger.warning(
        "endpoint %s: circuit breaker open for %s s after failed attempts",
        endpoint.id,
        app_settings.BREAKER_COOLDOWN,
    )
    after = app_settings.BREAKER_DISABLE_AFTER
    if after:
        disable_endpoint(
            endpoint,
            f"Disabled after its circuit breaker stayed open for {after:g} seconds.",
            breaker_state=Endpoint.BreakerState.OPEN,
            breaker_opened_at__lte=now - timedelta(seconds=after),
        )


def disable_endpoint(endpoint: Endpoint, reason: str, **conditions) -> bool:
    """Deactivate ``endpoint`` once (if ``conditions`` hold in the database); True if this
    call did it and sent the signal. One atomic UPDATE: of several workers seeing the
    same incident, only one wins, so there is one "disabled" notice."""
    # paused_until cleared: its waiting deliveries are then claimed and failed quietly.
    won = Endpoint.objects.filter(id=endpoint.id, is_active=True, **conditions).update(
        is_active=False, disabled_reason=reason[:300], paused_until=None
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


def safe_attempt(d: Delivery, cache: dict[int, tuple] | None = None) -> Outcome:
    """``attempt()``, turning any error into a recorded, final failure with a clear
    message, so a claimed row is never left stranded (e.g. a secret that no longer
    decrypts, a header that cannot be sent). ``cache`` keeps each endpoint's decrypted
    keys and headers for the rest of a chunk."""
    started_at = timezone.now()
    cache = {} if cache is None else cache
    try:
        prepared = cache.get(d.endpoint_id)
        if prepared is None:
            prepared = cache[d.endpoint_id] = (
                d.endpoint.signing_secrets(),
                d.endpoint.get_headers(),
            )
        return attempt(d, *prepared)
    except Exception as exc:
        logger.exception("delivery %s could not be attempted", d.id)
        if isinstance(exc, ValueError) and not isinstance(exc, UnicodeError):
            message = f"not sent: {exc}"
        else:
            message = f"internal error: {type(exc).__name__}"
        r = transport.Response(None, 0, error=message, permanent=True)
        return Outcome(d, r, started_at)


_safe_attempt = safe_attempt


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
    keys_by_endpoint: dict[int, tuple] = {}
    remaining = list(deliveries)
    disabled: list[Delivery] = []
    gated: list[Delivery] = []
    stalled = False
    margin = app_settings.LEASE_SECONDS / 3
    recorded: list[Outcome] = []
    endpoint = deliveries[0].endpoint
    # An ordered endpoint's chunk, or a breaker's probe, is the only one in flight for
    # its endpoint (the claim paused it): lift the pause when done.
    exclusive = endpoint.ordered or endpoint.breaker_state == Endpoint.BreakerState.HALF_OPEN
    threshold = app_settings.BREAKER_THRESHOLD
    failed_in_a_row = 0
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
            failed_in_a_row = 0 if outcome.response.ok else failed_in_a_row + 1
            if failed_in_a_row and endpoint.ordered:
                break  # the later ones wait until this one succeeds or fails for good
            if threshold and failed_in_a_row >= threshold:
                break  # the breaker opens when this is recorded: the rest wait
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
                # (Rows already recorded or failed no longer carry the token.)
                done = {o.delivery.id for o in recorded}
                back = [d.id for d in deliveries if d.id not in done]
                try:
                    release(token, back)
                finally:
                    _leases.forget(token, [d.id for d in deliveries])
                    if exclusive:
                        unpause(endpoint)
                    logger.debug(
                        "endpoint %s: chunk of %d, %d sent, %d recorded",
                        endpoint.id,
                        len(deliveries),
                        len(outcomes),
                        len(recorded),
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
            paced = [d for d in chunk if d.not_before]
            chunk = [d for d in chunk if not d.not_before]
            if chunk:
                deliver_chunk(token, chunk)
            for d in paced:  # rate-limited: each at its slot (this thread may wait)
                time.sleep(max(0.0, (d.not_before - timezone.now()).total_seconds()))
                deliver_chunk(token, [d])
        done += len(rows)
    return done
