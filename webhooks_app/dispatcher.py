"""The per-worker dispatcher: a poller thread and a pool of sender threads.

django-q2 has no delayed tasks and its scheduler ticks every ~30 s, so retries cannot
ride on the queue. Instead each ``qcluster`` worker process runs one Dispatcher (started
from django-q2's ``post_spawn`` signal). It claims due deliveries whenever it is woken by
a ``webhooks_app.tasks.dispatch`` task (sent on commit of every emit) and at least every
``POLL_INTERVAL`` seconds, which is what makes retries due in 2 s happen on time and
recovers deliveries whose worker died or whose wake-up task a broker dropped. Waiting for
a retry occupies nothing: a waiting delivery is only a row with a due time.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from django.db import close_old_connections, connections
from django.utils import timezone

from . import engine, notices, timers
from .conf import app_settings

logger = logging.getLogger("webhooks_app.dispatcher")

# How often each dispatcher looks for failure digests that are due (one query).
NOTICE_FLUSH_SECONDS = 5.0

_current: Dispatcher | None = None
_current_lock = threading.Lock()


class Dispatcher:
    def __init__(self) -> None:
        self.threads = app_settings.SENDER_THREADS
        self.per_endpoint = app_settings.ENDPOINT_CONCURRENCY
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="webhooks-sender")
        # Rate-limited deliveries, one per slot, go out on threads of their own: behind
        # busy bulk chunks they would miss their slots and then leave in bunches.
        self._paced_pool = ThreadPoolExecutor(
            max(4, self.threads // 2), thread_name_prefix="webhooks-paced"
        )
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._in_flight = 0
        self._per_endpoint: Counter[int] = Counter()
        # Body bytes of the deliveries this worker holds: claims stop at CLAIM_MAX_BYTES,
        # so memory stays flat however large the events are.
        self._bytes = 0
        # Endpoints whose last chunk got no answer (timeout, refused): one thread each
        # until they answer again, so a dead endpoint cannot hold half the pool waiting
        # out its timeouts while healthy endpoints' deliveries queue.
        self._stalled: set[int] = set()
        # Claimed rate-limited deliveries waiting for their send slot: a heap of
        # (monotonic due time, seq, token, endpoint id, delivery). Waiting holds no sender
        # thread (the heartbeat keeps their lease); a claim books at most
        # engine.rate_window() seconds ahead.
        self._timers: list[tuple] = []
        self._timer_seq = 0
        self._timer_cond = threading.Condition(self._lock)
        self._next_notice_flush = 0.0
        self._thread = threading.Thread(target=self._run, name="webhooks-dispatcher", daemon=True)
        # Its own thread: a claim that waits for the database must not delay the slots.
        self._pacer = threading.Thread(target=self._pace, name="webhooks-pacer", daemon=True)

    # Control --------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()
        self._pacer.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float | None = None) -> None:
        """Stop claiming; chunks not yet started are handed back; wait for the rest."""
        self._stop.set()
        self._wake.set()
        with self._timer_cond:
            self._timer_cond.notify_all()
        self._thread.join(timeout)
        self._pacer.join(timeout)
        self._pool.shutdown(wait=True, cancel_futures=False)
        self._paced_pool.shutdown(wait=True, cancel_futures=False)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # Loop -----------------------------------------------------------------------------
    def _run(self) -> None:
        next_timers = 0.0
        while not self._stop.is_set():
            # Inactivity timers (touch()) at most once per poll interval, not on every
            # wake-up: their deadlines need seconds, not milliseconds.
            if time.monotonic() >= next_timers:
                next_timers = time.monotonic() + app_settings.POLL_INTERVAL
                try:
                    timers.fire_due()
                except Exception:
                    logger.exception("firing inactivity timers failed; retrying next poll")
                    close_old_connections()
            try:
                self.pump()
                self._flush_notices()
            except Exception:
                logger.exception("dispatcher loop failed; retrying after the poll interval")
                close_old_connections()
            self._wake.wait(app_settings.POLL_INTERVAL)
            self._wake.clear()
        try:
            self._release_timers()  # booked by a claim that ended after the pacer stopped
        finally:
            connections.close_all()

    def _pace(self) -> None:
        """The pacer thread: hand each rate-limited delivery out when its slot comes."""
        while True:
            with self._timer_cond:
                while not self._stop.is_set():
                    wait = self._timers[0][0] - time.monotonic() if self._timers else None
                    if wait is not None and wait <= 0:
                        break
                    self._timer_cond.wait(wait)
                if self._stop.is_set():
                    break
                now = time.monotonic()
                due = []
                while self._timers and self._timers[0][0] <= now:
                    due.append(heapq.heappop(self._timers))
            try:
                self._fire(due)
            except Exception:
                logger.exception("handing out rate-limited deliveries failed")
                close_old_connections()
        try:
            self._release_timers()
        finally:
            connections.close_all()

    def _fire(self, due: list[tuple]) -> None:
        """Send rate-limited deliveries whose slot has come.

        They have threads of their own, so busy unlimited endpoints never make them miss
        their slots; when their own endpoint has all its chunks in flight (a slow
        receiver), the delivery goes back to the table, for any worker, later.
        """
        busy = []
        for _when, _seq, token, endpoint_id, delivery in due:
            with self._lock:
                free = self._per_endpoint[endpoint_id] < self._limit(endpoint_id)
            if free:
                self._submit(token, endpoint_id, [delivery], paced=True)
            else:
                busy.append((token, delivery.id))
        for token, delivery_id in busy:
            engine.release(token, [delivery_id])

    def _release_timers(self) -> None:
        with self._lock:
            timers, self._timers = self._timers, []
        for _when, _seq, token, _endpoint_id, delivery in timers:
            engine.release(token, [delivery.id])

    def _add_timer(self, token: str, endpoint_id: int, delivery) -> None:
        delay = (delivery.not_before - timezone.now()).total_seconds()
        with self._timer_cond:
            self._timer_seq += 1
            heapq.heappush(
                self._timers,
                (time.monotonic() + delay, self._timer_seq, token, endpoint_id, delivery),
            )
            self._timer_cond.notify()

    def _flush_notices(self) -> None:
        """Now and then, mail the failure digests whose interval has ended."""
        now = time.monotonic()
        if now < self._next_notice_flush:
            return
        self._next_notice_flush = now + NOTICE_FLUSH_SECONDS
        notices.send_due_digests()
        engine.fail_abandoned_tests()  # (same cadence: one cheap UPDATE)

    def pump(self) -> None:
        """Claim and hand out due deliveries while there are free sender threads."""
        while not self._stop.is_set():
            with self._lock:
                free = self.threads - self._in_flight
                saturated = [e for e, n in self._per_endpoint.items() if n >= self._limit(e)]
                budget = app_settings.CLAIM_MAX_BYTES - self._bytes
                idle = self._in_flight == 0
            if free <= 0 or (budget <= 0 and not idle):
                return  # a finishing chunk wakes us
            limit = free * app_settings.CHUNK_SIZE
            token, rows = engine.claim(
                limit, exclude_endpoints=saturated, max_bytes=max(budget, 0), max_endpoints=free
            )
            if not rows:
                return
            unsent = self._hand_out(token, rows)
            engine.release(token, unsent)
            if len(rows) < limit or unsent:
                return

    def _hand_out(self, token: str, rows: list) -> list[int]:
        """Split claimed rows into chunks for free threads; return the ids handed back."""
        submitted: set[int] = set()
        try:
            by_endpoint: dict[int, list] = {}
            for row in rows:
                by_endpoint.setdefault(row.endpoint_id, []).append(row)
            unsent: list[int] = []
            for endpoint_id, items in by_endpoint.items():
                for d in items:
                    if d.not_before:  # rate-limited: sent at its slot
                        self._add_timer(token, endpoint_id, d)
                        submitted.add(d.id)
                items = [d for d in items if not d.not_before]
                if not items:
                    continue
                with self._lock:
                    slots = min(
                        self._limit(endpoint_id) - self._per_endpoint[endpoint_id],
                        self.threads - self._in_flight,
                    )
                if slots <= 0:
                    # Never queue work behind busy threads: hand it back for any worker.
                    unsent.extend(d.id for d in items)
                    continue
                n_chunks = min(slots, -(-len(items) // app_settings.CHUNK_SIZE))
                if items[0].endpoint.ordered:
                    n_chunks = 1  # one at a time, in order
                for i in range(n_chunks):
                    chunk = items[i::n_chunks]
                    self._submit(token, endpoint_id, chunk)
                    submitted.update(d.id for d in chunk)
            return unsent
        except Exception:
            # Whatever went wrong, no claimed row may wait for its lease to run out.
            engine.release(token, [d.id for d in rows if d.id not in submitted])
            raise

    def _limit(self, endpoint_id: int) -> int:
        """Chunks of ``endpoint_id`` allowed in flight (call with ``self._lock`` held)."""
        return 1 if endpoint_id in self._stalled else self.per_endpoint

    def _submit(self, token: str, endpoint_id: int, chunk: list, *, paced: bool = False) -> None:
        size = sum(getattr(d, "claim_bytes", 0) for d in chunk)
        with self._lock:
            if not paced:
                self._in_flight += 1
            self._per_endpoint[endpoint_id] += 1
            self._bytes += size
        # The chunk keeps the claim's order: due time, or emit order for ordered endpoints.
        pool = self._paced_pool if paced else self._pool
        try:
            pool.submit(self._send, token, endpoint_id, chunk, size, paced)
        except RuntimeError:  # the pool is shutting down: hand the rows back
            self._done(endpoint_id, size, paced)
            engine.release(token, [d.id for d in chunk])

    def _send(
        self, token: str, endpoint_id: int, chunk: list, size: int = 0, paced: bool = False
    ) -> None:
        try:
            stalled = engine.deliver_chunk(token, chunk, stopping=self._stop.is_set)
            with self._lock:
                if stalled:
                    self._stalled.add(endpoint_id)
                else:
                    self._stalled.discard(endpoint_id)
        except Exception:
            logger.exception("sending a chunk of %d deliveries failed", len(chunk))
            close_old_connections()
        finally:
            self._done(endpoint_id, size, paced)

    def _done(self, endpoint_id: int, size: int = 0, paced: bool = False) -> None:
        with self._lock:
            if not paced:
                self._in_flight -= 1
            self._bytes -= size
            self._per_endpoint[endpoint_id] -= 1
            if self._per_endpoint[endpoint_id] <= 0:
                del self._per_endpoint[endpoint_id]
        self._wake.set()


def current() -> Dispatcher | None:
    """The dispatcher running in this process, if any."""
    return _current


def start() -> Dispatcher:
    """Start this process's dispatcher (idempotent)."""
    global _current
    with _current_lock:
        if _current is None:
            _current = Dispatcher()
            _current.start()
            try:
                from multiprocessing import util

                # Runs when a django-q2 worker exits normally (stop, recycle): hand back
                # unstarted work and let in-flight requests finish.
                util.Finalize(None, stop, exitpriority=10)
            except Exception:  # pragma: no cover - not in a multiprocessing child
                pass
        return _current


def stop() -> None:
    global _current
    with _current_lock:
        d, _current = _current, None
    if d is not None:
        d.stop(timeout=app_settings.TIMEOUT + 5)


def on_worker_spawn(sender=None, proc_name: str = "", **kwargs) -> None:
    """django-q2 ``post_spawn`` receiver: each worker process gets a dispatcher."""
    start()
