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
