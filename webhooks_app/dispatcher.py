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

import logging
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from django.db import close_old_connections, connections

from . import engine, timers
from .conf import app_settings

logger = logging.getLogger("webhooks_app.dispatcher")

_current: Dispatcher | None = None
_current_lock = threading.Lock()


class Dispatcher:
    def __init__(self) -> None:
        self.threads = app_settings.SENDER_THREADS
        self.per_endpoint = app_settings.ENDPOINT_CONCURRENCY
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="webhooks-sender")
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._in_flight = 0
        self._per_endpoint: Counter[int] = Counter()
        # Endpoints whose last chunk got no answer (timeout, refused): one thread each
        # until they answer again, so a dead endpoint cannot hold half the pool waiting
        # out its timeouts while healthy endpoints' deliveries queue.
        self._stalled: set[int] = set()
        self._thread = threading.Thread(target=self._run, name="webhooks-dispatcher", daemon=True)

    # Control --------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float | None = None) -> None:
        """Stop claiming; chunks not yet started are handed back; wait for the rest."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)
        self._pool.shutdown(wait=True, cancel_futures=False)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # Loop -----------------------------------------------------------------------------
    def _run(self) -> None:
        next_timers = 0.0
        while not self._stop.is_set():
            try:
                # Inactivity timers (touch()) at most once per poll interval, not on every
                # wake-up: their deadlines need seconds, not milliseconds.
                if time.monotonic() >= next_timers:
                    next_timers = time.monotonic() + app_settings.POLL_INTERVAL
                    timers.fire_due()
                self.pump()
            except Exception:
                logger.exception("dispatcher loop failed; retrying after the poll interval")
                close_old_connections()
            self._wake.wait(app_settings.POLL_INTERVAL)
            self._wake.clear()
        connections.close_all()

    def pump(self) -> None:
        """Claim and hand out due deliveries while there are free sender threads."""
        while not self._stop.is_set():
            with self._lock:
                free = self.threads - self._in_flight
                saturated = [e for e, n in self._per_endpoint.items() if n >= self._limit(e)]
            if free <= 0:
                return  # a finishing chunk wakes us
            limit = free * app_settings.CHUNK_SIZE
            token, rows = engine.claim(limit, exclude_endpoints=saturated)
            if not rows:
                return
            lease_deadline = time.monotonic() + app_settings.LEASE_SECONDS
            by_endpoint: dict[int, list] = {}
            for row in rows:
                by_endpoint.setdefault(row.endpoint_id, []).append(row)
            unsent: list[int] = []
            for endpoint_id, items in by_endpoint.items():
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
                for i in range(n_chunks):
                    self._submit(token, endpoint_id, items[i::n_chunks], lease_deadline)
            engine.release(token, unsent)
            if len(rows) < limit or unsent:
                return

    def _limit(self, endpoint_id: int) -> int:
        """Chunks of ``endpoint_id`` allowed in flight (call with ``self._lock`` held)."""
        return 1 if endpoint_id in self._stalled else self.per_endpoint

    def _submit(self, token: str, endpoint_id: int, chunk: list, lease_deadline: float) -> None:
        with self._lock:
            self._in_flight += 1
            self._per_endpoint[endpoint_id] += 1
        chunk.sort(key=lambda d: d.id)
        try:
            self._pool.submit(self._send, token, endpoint_id, chunk, lease_deadline)
        except RuntimeError:  # the pool is shutting down: hand the rows back
            self._done(endpoint_id)
            engine.release(token, [d.id for d in chunk])

    def _send(self, token: str, endpoint_id: int, chunk: list, lease_deadline: float) -> None:
        try:
            stalled = engine.deliver_chunk(
                token, chunk, stopping=self._stop.is_set, lease_deadline=lease_deadline
            )
            with self._lock:
                if stalled:
                    self._stalled.add(endpoint_id)
                else:
                    self._stalled.discard(endpoint_id)
        except Exception:
            logger.exception("sending a chunk of %d deliveries failed", len(chunk))
            close_old_connections()
        finally:
            self._done(endpoint_id)

    def _done(self, endpoint_id: int) -> None:
        with self._lock:
            self._in_flight -= 1
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
