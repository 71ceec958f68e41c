"""django-q2 entry points and the on-commit wake-up; tasks never raise."""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time

from django.db import transaction

from . import dispatcher, engine
from .conf import app_settings

logger = logging.getLogger("webhooks_app.tasks")

# One wake-up per process per this many seconds is enough: a woken dispatcher drains
# everything that is due, and every worker polls anyway.
WAKE_COALESCE_SECONDS = 0.05
_last_wake = 0.0
_wake_lock = threading.Lock()


def dispatch() -> int:
    """Queue task: wake this worker's dispatcher, or send what is due here if none runs."""
    running = dispatcher.current()
    if running is not None:
        running.wake()
        return 0
    try:
        return engine.drain()
    except Exception:
        logger.exception("draining due deliveries failed; the workers' poll will retry")
        return 0


# After a failed enqueue, stop trying for a while: a broker that does not answer would
# otherwise cost every committing request a connect timeout. The workers' poll covers it.
BROKER_BACKOFF_SECONDS = 5.0
_broker_down_until = 0.0


_brokers: dict[tuple, object] = {}


def _broker(cluster: str | None):
    """This process's Redis broker, kept: django-q2 builds a broker, hence a new Redis
    connection, for every ``async_task()`` (a TCP connect on each wake-up; 2.6% of a
    busy emitter's time). Other brokers are left to django-q2 (None)."""
    from django_q.brokers import get_broker
    from django_q.brokers.redis_broker import Redis
    from django_q.conf import Conf

    if Conf.ORM or Conf.BROKER_CLASS or Conf.IRON_MQ or Conf.SQS or Conf.MONGO:
        return None
    key = (os.getpid(), cluster, str(Conf.REDIS))
    broker = _brokers.get(key)
    if broker is None:
        broker = get_broker(cluster)
        if not isinstance(broker, Redis):
            return None
        _brokers[key] = broker
    return broker


def wake_workers() -> None:
    """Enqueue a dispatch task; a broker outage is logged, never raised to the caller."""
    global _last_wake, _broker_down_until
    with _wake_lock:
        now = time.monotonic()
        if now - _last_wake < WAKE_COALESCE_SECONDS or now < _broker_down_until:
            return
        _last_wake = now
    try:
        from django_q.tasks import async_task

        options = {"save": False}
        if app_settings.Q_CLUSTER:
            options["cluster"] = app_settings.Q_CLUSTER
        broker = _broker(app_settings.Q_CLUSTER)
        if broker is not None:
            options["broker"] = broker
        async_task("webhooks_app.tasks.dispatch", q_options=options)
    except Exception as exc:
        # The rows are committed; the workers' poll sends them once the broker is back.
        _broker_down_until = time.monotonic() + BROKER_BACKOFF_SECONDS
        logger.warning("could not enqueue a webhook dispatch task (%s); workers will poll", exc)


class _Waker:
    """A thread per process that sends the Redis broker's wake-ups, so a committing
    request does not wait for one: async_task() (pickle, sign, RPUSH) took 0.19 ms median
    and 0.45 ms p99 here, paid by the one commit in each WAKE_COALESCE_SECONDS that
    sends it (the request path's p99). A poke only counts and sets an event.

    Only for Redis: the ORM broker's wake-up is an INSERT, and on SQLite a thread writing
    beside the request's next transaction would make that one wait for the write lock.

    Never worse than sending on the caller: a poke left unsent for STALL_SECONDS (the
    thread died, or never runs, as under uWSGI without ``enable-threads``) is sent by the
    next committing caller itself, and so is one still unsent at interpreter exit. A
    fork gets a new thread, lock and event in the child (``os.register_at_fork``).
    """

    STALL_SECONDS = 0.2

    def __init__(self) -> None:
        self.event = threading.Event()
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.poked = 0  # pokes so far, and the count the thread had seen when it sent
        self.sent = 0
        self.unsent_since = 0.0

    def poke(self) -> None:
        now = time.monotonic()
        if self.sent == self.poked:
            self.unsent_since = now
        elif now - self.unsent_since > self.STALL_SECONDS:
            self.sent = self.poked
            wake_workers()  # the thread is not getting to run: send it here
            self.unsent_since = now
        self.poked += 1
        thread = self.thread
        # (A fork leaves the child's copy of the parent's thread not alive.)
        if thread is None or not thread.is_alive():
            if not self._start():
                self.sent = self.poked
                wake_workers()
                return
        self.event.set()

    def pending(self) -> bool:
        return self.sent != self.poked

    def _start(self) -> bool:
        with self.lock:
            thread = self.thread
            if thread is not None and thread.is_alive():
                return True
            try:
                thread = threading.Thread(target=self._run, name="webhooks_app wake", daemon=True)
                thread.start()
            except RuntimeError:  # can't start new thread
                return False
            self.thread = thread
            return True

    def _run(self) -> None:
        while True:
            self.event.wait()
            self.event.clear()
            seen = self.poked
            try:
                wake_workers()  # logs a broker outage itself
            except Exception:
                logger.exception("sending a wake-up failed; the workers' poll covers it")
            self.sent = max(self.sent, seen)

    def at_exit(self) -> None:
        if self.pending():
            self.sent = self.poked
            wake_workers()

    def after_fork_in_child(self) -> None:
        global _wake_lock
        # Locks a thread of the parent held at the fork stay held in the child forever.
        _wake_lock = threading.Lock()
        self.lock = threading.Lock()
        self.event = threading.Event()
        self.thread = None
        self.poked = self.sent = 0


_waker = _Waker()
atexit.register(_waker.at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_waker.after_fork_in_child)


def _wake_after_commit() -> None:
    from django_q.conf import Conf

    # django-q2's sync mode runs the task inside async_task(): keep that on the caller.
    if not Conf.SYNC and _broker(app_settings.Q_CLUSTER) is not None:
        _waker.poke()
    else:
        wake_workers()


def wake_workers_on_commit(using: str | None = None) -> None:
    """Register one wake-up for when the current transaction commits."""
    conn = transaction.get_connection(using)
    if any(func is _wake_after_commit for _, func, _ in conn.run_on_commit):
        return
    transaction.on_commit(_wake_after_commit, using=using, robust=True)


def prune() -> str:
    """Scheduled task (created after migrate): apply RETENTION_DAYS, within the task timeout.

    Stops a little before django-q2's ``timeout`` would kill the worker; the next hourly
    run continues where this one stopped.
    """
    from django_q.conf import Conf

    from . import services

    budget = 0.8 * Conf.TIMEOUT if Conf.TIMEOUT else 300.0
    try:
        return str(services.prune(max_seconds=budget))
    except Exception:
        logger.exception("pruning old deliveries failed; the next run retries")
        return "failed"
