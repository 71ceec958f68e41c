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
        c.stop()


@pytest.fixture
def make_endpoint(db):
    """``make_endpoint(url, events=[...], **options) -> (endpoint, secret)``."""
    from webhooks_app import services

    def make(url: str, events=("user.created",), **options):
        events = events if isinstance(events, dict) else list(events)
        return services.create_endpoint(url=url, events=events, **options)

    return make


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
