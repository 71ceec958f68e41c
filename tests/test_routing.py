"""emit()'s per-process endpoint cache: reused while nothing changed, and every change,
from this process or another one, seen by the very next emit()."""

import os
import subprocess
import sys
import textwrap

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from tests.cluster import ROOT, database_url
from webhooks_app import emit, routing
from webhooks_app.models import Delivery, Endpoint, RoutingStamp, Subscription

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def stamp_row():
    # The transactional test database is flushed between tests (the migration's row too).
    routing.bump()
    routing.clear()
    yield
    routing.clear()


def other_process(code: str) -> None:
    """Run ``code`` in a separate Python process on the same (committed) test database."""
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "DJANGO_SETTINGS_MODULE": "project.settings",
    }
    script = "import django\ndjango.setup()\n" + textwrap.dedent(code)
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]


def routed(event) -> set[int]:
    return set(Delivery.objects.filter(event=event).values_list("endpoint_id", flat=True))


def subscription_queries(queries) -> list[str]:
    table = Subscription._meta.db_table
    return [q["sql"] for q in queries if table in q["sql"]]


def test_a_repeated_emit_reads_no_subscription(make_endpoint):
    endpoint, _ = make_endpoint("http://127.0.0.1:9/a")
    assert routed(emit("user.created", {})) == {endpoint.pk}
    with CaptureQueriesContext(connection) as queries:
        assert routed(emit("user.created", {})) == {endpoint.pk}
    assert subscription_queries(queries) == []


def test_changes_in_another_process_are_seen_by_the_next_emit(make_endpoint):
    first, _ = make_endpoint("http://127.0.0.1:9/first")
    assert routed(emit("user.created", {})) == {first.pk}  # cached here
    # Another process: switch the first endpoint off with a bulk update, add a second.
    other_process(
        f"""
        from webhooks_app import services
        from webhooks_app.models import Endpoint
        Endpoint.objects.filter(pk={first.pk}).update(is_active=False)
        services.create_endpoint(url="http://127.0.0.1:9/second", events=["user.created"])
        """
    )
    second = Endpoint.objects.get(url="http://127.0.0.1:9/second")
    assert routed(emit("user.created", {})) == {second.pk}
    # A subscription toggled off elsewhere, directly on the table's rows.
    other_process(
        f"""
        from webhooks_app.models import Subscription
        Subscription.objects.filter(endpoint_id={second.pk}).update(enabled=False)
        """
    )
    assert emit("user.created", {}).pk is None  # unrouted now
    # And an endpoint deleted elsewhere never gets another delivery.
    other_process(
        f"""
        from webhooks_app.models import Endpoint, Subscription
        Subscription.objects.filter(endpoint_id={second.pk}).update(enabled=True)
        Endpoint.objects.get(pk={second.pk}).delete()
        """
    )
    assert emit("user.created", {}).pk is None


def test_bookkeeping_columns_keep_the_cache(make_endpoint):
    endpoint, _ = make_endpoint("http://127.0.0.1:9/a")
    before = routing.current()
    Endpoint.objects.filter(pk=endpoint.pk).update(consecutive_failures=3, paused_until=None)
    assert routing.current() == before
    Endpoint.objects.filter(pk=endpoint.pk).update(payload_extra={"k": "v"})
    assert routing.current() != before


def test_a_change_rolled_back_leaves_no_stale_lookup(make_endpoint):
    endpoint, _ = make_endpoint("http://127.0.0.1:9/a")
    assert routed(emit("user.created", {})) == {endpoint.pk}
    with pytest.raises(RuntimeError), transaction.atomic():
        Endpoint.objects.filter(pk=endpoint.pk).update(is_active=False)
        assert emit("user.created", {}).pk is None  # its own change, seen in its transaction
        raise RuntimeError("rolled back")
    assert routed(emit("user.created", {})) == {endpoint.pk}


def test_without_the_stamp_row_nothing_is_cached(make_endpoint):
    endpoint, _ = make_endpoint("http://127.0.0.1:9/a")
    RoutingStamp.objects.all().delete()
    emit("user.created", {})
    with CaptureQueriesContext(connection) as queries:
        assert routed(emit("user.created", {})) == {endpoint.pk}
    assert subscription_queries(queries)
