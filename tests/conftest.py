"""Shared fixtures: a real HTTP receiver, a real qcluster, endpoints made through services."""

from __future__ import annotations

import pytest

from tests.cluster import Cluster
from tests.receiver import Receiver


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def start_cluster():
    """``start_cluster(env={...})`` runs a qcluster until the test ends."""
    started: list[Cluster] = []

    def start(env: dict[str, str] | None = None, workers: int = 2) -> Cluster:
        from django_q.brokers import get_broker

        get_broker().purge_queue()
        c = Cluster(env=env, workers=workers)
        started.append(c)
        return c

    yield start
    for c in started:
        # SIGKILL, not a graceful stop: the database is flushed next, and django-q2's stop
        # (pusher, poison pills, monitor) took 1-2 s per test. Tests of the graceful stop
        # call stop() themselves.
        c.close()


@pytest.fixture
def make_endpoint(db):
    """``make_endpoint(url, events=[...], **options) -> (endpoint, secret)``."""
    from webhooks_app import services

    def make(url: str, events=("user.created",), **options):
        events = events if isinstance(events, dict) else list(events)
        return services.create_endpoint(url=url, events=events, **options)

    return make


@pytest.fixture(scope="session", autouse=True)
def _fast_password_hashing():
    """Django's PBKDF2 takes about 0.4 s per password here, and most tests create users:
    minutes per run spent hashing "pw". MD5 makes the tests' users; the default hashers
    stay listed so a password hashed elsewhere (a subprocess, the demo) still checks."""
    from django.conf import settings
    from django.test.utils import override_settings

    fast = override_settings(
        PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"]
        + [h for h in settings.PASSWORD_HASHERS if not h.endswith("MD5PasswordHasher")]
    )
    fast.enable()
    yield
    fast.disable()


@pytest.fixture(scope="session", autouse=True)
def _flush_postgresql_by_delete():
    """Every transactional test ends with ``flush``. On PostgreSQL its one TRUNCATE of the
    24 tables took about 0.1 s (a new file per table and index); DELETE of the few rows a
    test leaves takes 2-8 ms. Django's foreign keys are DEFERRABLE INITIALLY DEFERRED,
    so the order of the DELETEs does not matter inside flush's one transaction."""
    from django.db.backends.postgresql.operations import DatabaseOperations

    truncate = DatabaseOperations.sql_flush

    def sql_flush(self, style, tables, *, reset_sequences=False, allow_cascade=False):
        if reset_sequences or allow_cascade:
            return truncate(
                self, style, tables, reset_sequences=reset_sequences, allow_cascade=allow_cascade
            )
        return [f"DELETE FROM {self.quote_name(table)};" for table in tables]

    DatabaseOperations.sql_flush = sql_flush
    yield
    DatabaseOperations.sql_flush = truncate


@pytest.fixture(scope="session", autouse=True)
def _no_stray_database_sessions(django_db_setup, django_db_blocker):
    """End connections left by server threads (the live server's request threads keep
    theirs) so the PostgreSQL test database can be dropped at the end of the run."""
    yield
    with django_db_blocker.unblock():
        from django.db import connection

        from webhooks_app import routing, sqlite_checkpoints

        routing.stop()  # its connection would come back
        sqlite_checkpoints.stop()  # it would look at a database being deleted
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
