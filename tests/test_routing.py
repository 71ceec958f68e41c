"""emit()'s per-process endpoint cache: reused while nothing changed, and every change,
from this process or another one, seen by the next emit() (on PostgreSQL: the next one
after its notification arrived, which takes well under 100 ms)."""

import os
import queue
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext, override_settings

from tests.cluster import ROOT, database_url
from webhooks_app import emit, routing
from webhooks_app.models import Delivery, Endpoint, RoutingStamp, Subscription

pytestmark = pytest.mark.django_db(transaction=True)


POSTGRES = connection.vendor == "postgresql"
postgres_only = pytest.mark.skipif(
    not POSTGRES, reason="LISTEN/NOTIFY is PostgreSQL's; elsewhere every emit reads the stamp"
)
LISTEN_OFF = override_settings(WEBHOOKS_APP={**settings.WEBHOOKS_APP, "ROUTING_LISTEN": False})


@pytest.fixture(autouse=True)
def stamp_row():
    # The transactional test database is flushed between tests (the migration's row too).
    routing.bump()
    routing.clear()
    if POSTGRES:
        listening()
    yield
    routing.clear()


def wait_for(predicate, timeout: float, what: str) -> float:
    """Poll ``predicate`` until true; the monotonic time it became true."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} within {timeout} s")
        time.sleep(0.0002)
    return time.monotonic()


def listening() -> None:
    """Start this process's listener (any emit does) and wait until it is live."""
    emit("user.deleted", {})  # no endpoint here subscribes to it
    wait_for(routing.listening, 5.0, "listening")


def generation():
    return routing._generation.get(connection.alias)


def settle() -> None:
    """On PostgreSQL, wait until this process's listener got the notifications of every
    change committed so far (they arrive in commit order, so: until one sent now arrives).
    This process's own changes come back too, and drop its cache once more."""
    if not POSTGRES:
        return
    token = os.urandom(8).hex()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_notify(%s, %s)", [routing.CHANNEL, token])
    listener = routing._listeners[connection.alias]
    wait_for(lambda: listener.last_payload == token, 2.0, "settled")


def script_env() -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": database_url(),
        "DJANGO_SETTINGS_MODULE": "project.settings",
    }


def other_process(code: str) -> None:
    """Run ``code`` in a separate Python process on the same (committed) test database;
    on PostgreSQL, return once this process's listener got the notification of its
    change (it travels asynchronously)."""
    before = generation()
    script = "import django\ndjango.setup()\n" + textwrap.dedent(code)
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=script_env(), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    if POSTGRES:
        wait_for(lambda: generation() != before, 2.0, "notified")


def routed(event) -> set[int]:
    if event.pk is None:  # unrouted
        return set()
    return set(Delivery.objects.filter(event=event).values_list("endpoint_id", flat=True))


def subscription_queries(queries) -> list[str]:
    table = Subscription._meta.db_table
    return [q["sql"] for q in queries if table in q["sql"]]


def stamp_queries(queries) -> list[str]:
    table = RoutingStamp._meta.db_table
    return [q["sql"] for q in queries if table in q["sql"]]


def test_a_repeated_emit_reads_no_subscription(make_endpoint):
    endpoint, _ = make_endpoint("http://127.0.0.1:9/a")
    settle()
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


@LISTEN_OFF
def test_without_the_stamp_row_nothing_is_cached(make_endpoint):
    endpoint, _ = make_endpoint("http://127.0.0.1:9/a")
    RoutingStamp.objects.all().delete()
    emit("user.created", {})
    with CaptureQueriesContext(connection) as queries:
        assert routed(emit("user.created", {})) == {endpoint.pk}
    assert subscription_queries(queries)


def test_a_flushed_database_leaves_no_stale_lookup(make_endpoint):
    # flush truncates the tables without RoutingWrites; its post_migrate bumps the stamp.
    make_endpoint("http://127.0.0.1:9/a")
    assert emit("user.created", {}).pk is not None
    call_command("flush", interactive=False, verbosity=0)
    assert emit("user.created", {}).pk is None


def listener_backends() -> list[int]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity "
            "WHERE application_name = %s AND datname = current_database()",
            [f"{routing.APPLICATION_NAME} {os.getpid()}"],
        )
        return [row[0] for row in cursor.fetchall()]


def change_behind_djangos_back(endpoint_id: int, active: bool) -> None:
    """What another process's bump() does, on a raw connection of its own."""
    import psycopg

    params = connection.get_connection_params()
    for name in ("cursor_factory", "context", "prepare_threshold"):
        params.pop(name, None)
    with psycopg.connect(**params, autocommit=True) as pg, pg.transaction():
        pg.execute(
            f"UPDATE {Endpoint._meta.db_table} SET is_active = %s WHERE id = %s",
            [active, endpoint_id],
        )
        pg.execute(
            f"WITH s AS (UPDATE {RoutingStamp._meta.db_table} SET stamp = %s WHERE id = 1 "
            "RETURNING stamp) SELECT pg_notify(%s, stamp) FROM s",
            [os.urandom(16).hex(), routing.CHANNEL],
        )


@postgres_only
def test_with_the_listener_live_emit_makes_no_routing_query(make_endpoint):
    endpoint, _ = make_endpoint("http://127.0.0.1:9/a")
    settle()
    emit("user.created", {})
    emit("user.updated", {})
    with CaptureQueriesContext(connection) as queries:
        assert routed(emit("user.created", {})) == {endpoint.pk}
        with transaction.atomic():
            event = emit("user.created", {})
        assert routed(event) == {endpoint.pk}
    assert stamp_queries(queries) == []
    assert subscription_queries(queries) == []
    with CaptureQueriesContext(connection) as queries:
        assert emit("user.updated", {}).pk is None
    assert queries.captured_queries == []
    with CaptureQueriesContext(connection) as bare, transaction.atomic():
        pass
    with CaptureQueriesContext(connection) as queries, transaction.atomic():
        assert emit("user.updated", {}).pk is None
    # Nothing but the caller's own transaction (Django logs its BEGIN and COMMIT).
    sql = [q["sql"] for q in queries.captured_queries]
    assert sql == [q["sql"] for q in bare.captured_queries], sql


@postgres_only
def test_a_change_committed_elsewhere_reaches_the_next_emit_within_100_ms(make_endpoint):
    endpoint, _ = make_endpoint("http://127.0.0.1:9/a")
    # Another process flips the endpoint on each line it reads and answers with the
    # monotonic time (system-wide) at which its commit returned.
    script = textwrap.dedent(
        f"""
        import sys, time
        import django
        django.setup()
        from webhooks_app.models import Endpoint
        for line in sys.stdin:
            Endpoint.objects.filter(pk={endpoint.pk}).update(is_active=line.strip() == "on")
            print(time.monotonic(), flush=True)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=script_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    commits: queue.Queue[str] = queue.Queue()
    threading.Thread(
        target=lambda: [commits.put(line) for line in proc.stdout], daemon=True
    ).start()
    latencies = []
    try:
        for i in range(20):
            active = i % 2 == 1
            assert routed(emit("user.created", {})) == ({endpoint.pk} if not active else set())
            before = generation()
            proc.stdin.write("on\n" if active else "off\n")
            proc.stdin.flush()
            seen = wait_for(lambda: generation() != before, 5.0, "notified")  # noqa: B023
            latencies.append(seen - float(commits.get(timeout=10)))
            with CaptureQueriesContext(connection) as queries:
                assert routed(emit("user.created", {})) == ({endpoint.pk} if active else set())
            assert stamp_queries(queries) == []
    finally:
        proc.stdin.close()
        proc.wait(10)
    print(
        f"commit -> listener saw it: max {max(latencies) * 1000:.2f} ms, "
        f"median {sorted(latencies)[10] * 1000:.2f} ms over 20 changes"
    )
    assert max(latencies) < 0.1, latencies


@postgres_only
def test_a_rolled_back_change_sends_nothing_and_the_cache_keeps_working(make_endpoint):
    endpoint, _ = make_endpoint("http://127.0.0.1:9/a")
    settle()
    assert routed(emit("user.created", {})) == {endpoint.pk}
    before = generation()
    with pytest.raises(RuntimeError), transaction.atomic():
        Endpoint.objects.filter(pk=endpoint.pk).update(is_active=False)
        assert emit("user.created", {}).pk is None  # its own change, before commit
        raise RuntimeError("rolled back")
    time.sleep(0.3)  # a notification takes well under a millisecond
    assert generation() == before
    with CaptureQueriesContext(connection) as queries:
        assert routed(emit("user.created", {})) == {endpoint.pk}
    assert stamp_queries(queries) == []
    assert subscription_queries(queries) == []


@postgres_only
def test_own_changes_are_seen_before_and_right_after_the_commit(make_endpoint):
    first, _ = make_endpoint("http://127.0.0.1:9/first")
    assert routed(emit("user.created", {})) == {first.pk}
    with transaction.atomic():
        second, _ = make_endpoint("http://127.0.0.1:9/second")
        assert routed(emit("user.created", {})) == {first.pk, second.pk}
        Endpoint.objects.filter(pk=first.pk).update(is_active=False)
        assert routed(emit("user.created", {})) == {second.pk}
        with pytest.raises(RuntimeError), transaction.atomic():
            Subscription.objects.filter(endpoint=second).update(enabled=False)
            assert emit("user.created", {}).pk is None
            raise RuntimeError("savepoint rolled back")
        assert routed(emit("user.created", {})) == {second.pk}
    # Before the notification comes back: the commit itself dropped this process's cache.
    assert routed(emit("user.created", {})) == {second.pk}


@postgres_only
def test_a_killed_listener_falls_back_to_the_stamp_and_comes_back(make_endpoint, caplog):
    endpoint, _ = make_endpoint("http://127.0.0.1:9/a")
    assert routed(emit("user.created", {})) == {endpoint.pk}
    [pid] = listener_backends()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s, 5000)", [pid])
    down = time.monotonic()
    wait_for(lambda: not routing.listening(), 1.0, "noticed")
    noticed = time.monotonic() - down
    # A change while nobody listens here: the stamp says so.
    change_behind_djangos_back(endpoint.pk, active=False)
    with CaptureQueriesContext(connection) as queries:
        assert emit("user.created", {}).pk is None
    assert stamp_queries(queries)
    back = wait_for(routing.listening, routing.RETRY_MIN + 5.0, "listening again") - down
    print(f"listener: outage noticed after {noticed * 1000:.1f} ms, back after {back:.2f} s")
    assert listener_backends() not in ([], [pid])
    emit("user.created", {})
    with CaptureQueriesContext(connection) as queries:
        assert emit("user.created", {}).pk is None
    assert queries.captured_queries == []
    warnings = [r for r in caplog.records if r.name == "webhooks_app.routing"]
    assert [r.levelname for r in warnings] == ["WARNING", "INFO"]


@postgres_only
@LISTEN_OFF
def test_with_routing_listen_off_every_emit_reads_the_stamp(make_endpoint):
    routing.stop()
    wait_for(lambda: listener_backends() == [], 2.0, "stopped")
    endpoint, _ = make_endpoint("http://127.0.0.1:9/a")
    emit("user.created", {})
    for event_type in ("user.created", "user.created", "user.updated"):
        with CaptureQueriesContext(connection) as queries:
            emit(event_type, {})
        assert len(stamp_queries(queries)) == 1
    assert subscription_queries(queries)  # user.updated: loaded once
    time.sleep(0.2)
    assert listener_backends() == []
    assert not routing.listening()


@postgres_only
def test_a_forked_child_listens_on_its_own_connection(make_endpoint):
    # django-q2's workers are forked from a process that may already listen.
    endpoint, _ = make_endpoint("http://127.0.0.1:9/a")
    parent = listener_backends()
    connection.close()  # the child must not share this process's connection
    child = os.fork()
    if child == 0:  # pragma: no cover (the child)
        ok = False
        try:
            ok = routed(emit("user.created", {})) == {endpoint.pk}
            wait_for(routing.listening, 5.0, "listening in the child")
            ok = ok and len(listener_backends()) == 1  # its own, named by its pid
            Endpoint.objects.filter(pk=endpoint.pk).update(is_active=False)
            ok = ok and emit("user.created", {}).pk is None
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    settle()
    assert emit("user.created", {}).pk is None  # the child's change, notified here
    assert listener_backends() == parent  # the child never closed the parent's socket
