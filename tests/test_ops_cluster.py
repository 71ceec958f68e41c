"""Issue 11 features end to end: a real qcluster subprocess and a real receiver."""

import json
import time
from datetime import timedelta

import pytest
import standardwebhooks
from django.utils import timezone

from webhooks_app import emit
from webhooks_app.models import Delivery, DeliveryAttempt, Event

pytestmark = [pytest.mark.cluster, pytest.mark.django_db(transaction=True)]


def wait_for(predicate, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what} not reached")


def test_emit_once_through_a_real_cluster(receiver, make_endpoint, start_cluster):
    _, secret = make_endpoint(receiver.url())
    start_cluster()
    first = emit("user.created", {"order": 42}, idempotency_key="order-42-paid")
    again = emit("user.created", {"order": 42}, idempotency_key="order-42-paid")
    unrouted = emit("user.deleted", {"order": 42})
    (req,) = receiver.wait_for(1)
    time.sleep(1.5)  # a second send would show up by now
    assert len(receiver.received) == 1
    assert again.pk == first.pk and unrouted.pk is None
    assert json.loads(req.body)["id"] == first.public_id
    standardwebhooks.Webhook(secret).verify(req.body, req.headers)
    assert Event.objects.count() == 1 and Delivery.objects.get().status == "succeeded"


def test_the_apps_own_schedule_prunes_in_a_real_cluster(receiver, make_endpoint, start_cluster):
    """The schedule created after migrate, queued by django-q2's own ``scheduler()`` and
    run by the cluster. The cluster's guard calls that same function only every 30 s,
    so the test calls it once itself rather than sleeping through the tick: what it
    proves is the schedule row and the task, not that the guard runs its scheduler."""
    from django_q.brokers import get_broker
    from django_q.models import Schedule
    from django_q.scheduler import scheduler

    make_endpoint(receiver.url())
    old = emit("user.created", {"old": True})
    pending = emit("user.created", {"pending": True})
    from webhooks_app import engine

    engine.drain()
    long_ago = timezone.now() - timedelta(days=31)
    Delivery.objects.filter(event=old).update(last_attempt_at=long_ago)
    Event.objects.filter(pk__in=[old.pk, pending.pk]).update(created_at=long_ago)
    Delivery.objects.filter(event=pending).update(status="pending", next_attempt_at=None)
    Schedule.objects.filter(func="webhooks_app.tasks.prune").update(
        next_run=timezone.now() - timedelta(seconds=1)
    )
    start_cluster()
    scheduler(broker=get_broker())
    wait_for(lambda: not Event.objects.filter(pk=old.pk).exists(), 30, "scheduled prune")
    assert not DeliveryAttempt.objects.filter(delivery__event_id=old.pk).exists()
    assert Delivery.objects.filter(event=pending, status="pending").exists()
    assert Event.objects.filter(pk=pending.pk).exists()
    (schedule,) = Schedule.objects.filter(func="webhooks_app.tasks.prune")
    assert schedule.next_run > timezone.now()  # rescheduled an hour on


def test_recover_through_a_real_cluster(receiver, make_endpoint, start_cluster):
    from tests.receiver import Reply
    from webhooks_app import services

    endpoint, secret = make_endpoint(receiver.url())
    receiver.script(*[Reply(503, b"outage")] * 3)
    start_cluster(env={"WEBHOOKS_RETRY_SCHEDULE": "0"})
    events = [emit("user.created", {"i": i}) for i in range(3)]
    wait_for(lambda: Delivery.objects.filter(status="failed").count() == 3, what="three failures")
    result = services.recover(endpoint, since=timezone.now() - timedelta(minutes=5))
    assert result.queued == 3
    assert services.recover(endpoint, since=timezone.now() - timedelta(minutes=5)).queued == 0
    reqs = receiver.wait_for(6)
    wait_for(lambda: Delivery.objects.filter(status="succeeded").count() == 3, what="recovered")
    time.sleep(0.5)
    assert len(receiver.received) == 6  # three failures, three recoveries, nothing twice
    recovered = reqs[3:]
    assert sorted(r.header("webhook-id") for r in recovered) == sorted(e.public_id for e in events)
    for r in recovered:
        assert (
            r.body == next(e for e in events if e.public_id == r.header("webhook-id")).body.encode()
        )
        standardwebhooks.Webhook(secret).verify(r.body, r.headers)


def _descendants(pid: int) -> list[int]:
    """Every process under ``pid`` (qcluster -> sentinel -> workers)."""
    import subprocess

    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    children = [int(p) for p in out.split()]
    return children + [d for c in children for d in _descendants(c)]


def _scrape(client, **headers) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    response = client.get("/metrics/", **headers)
    assert response.status_code == 200, response.content[:500]
    assert response["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def test_metrics_logs_and_status_after_real_deliveries_from_two_clusters(
    receiver, make_endpoint, start_cluster, client, capsys
):
    """Two qcluster processes share the work; the scrape's numbers match what the receiver
    got, and each attempt left one log line with ids and outcome, never a secret."""
    from django.core.management import call_command

    from tests.receiver import Receiver, Reply

    token = "tok-SHOULD-NOT-BE-LOGGED-7f3a"
    ok, ok_secret = make_endpoint(
        receiver.url("/ok"),
        events=["user.created", "payment.succeeded"],
        headers={"Authorization": f"Bearer {token}"},
    )
    failing, slow = Receiver(), Receiver()
    failing.default = Reply(500, b"nope")
    slow.default = Reply(200, delay=4.0)
    bad, bad_secret = make_endpoint(failing.url("/bad"), events=["user.created"])
    off, _ = make_endpoint(receiver.url("/off"), is_active=False)
    n = 20
    # Without the breaker (flow's feature, tested there): every failure is attempted twice.
    env = {"WEBHOOKS_RETRY_SCHEDULE": "0,0.2", "WEBHOOKS_BREAKER_THRESHOLD": "0"}
    marker = "BODY-MARKER-51c9"

    def finished() -> None:
        wait_for(lambda: not Delivery.objects.filter(status="pending").exists(), 30, "finished")
        time.sleep(0.5)  # log lines are written after the outcome is committed

    # Two clusters, one after the other, so that both surely did work (two running at
    # once split it as their wake-ups fall: one took all 65 attempts in a CI run). The
    # first one's process is gone when the scrape runs: a per-process count would miss it.
    first = start_cluster(env=env)
    for i in range(n):
        emit("user.created", {"i": i, "note": marker})
    receiver.wait_for(n, timeout=60)
    failing.wait_for(2 * n, timeout=60)
    finished()
    first_log = first.log()
    first.stop()
    second = start_cluster(env=env)
    for i in range(5):
        emit("payment.succeeded", {"i": i, "note": marker})
    expected_requests = n + 5 + 2 * n  # /bad: two attempts each
    receiver.wait_for(n + 5, timeout=60)
    finished()
    cluster_logs = [first_log, second.log()]
    got = receiver.received + failing.received
    assert len(got) == expected_requests

    samples = _scrape(client)

    def value(name, **labels):
        return samples.get((name, tuple(sorted(labels.items()))), 0)

    ok_user = sum(1 for r in got if r.path == "/ok" and b'"user.created"' in r.body)
    assert (
        value("webhooks_deliveries", status="succeeded", event_type="user.created")
        == (ok_user)
        == n
    )
    assert value("webhooks_deliveries", status="succeeded", event_type="payment.succeeded") == 5
    assert value("webhooks_deliveries", status="failed", event_type="user.created") == n
    assert value("webhooks_deliveries", status="pending", event_type="user.created") == 0
    assert value("webhooks_backlog") == 0 and value("webhooks_oldest_due_age_seconds") == 0
    # Every attempt the receiver saw is in the histogram, in the right buckets.
    assert value("webhooks_attempt_duration_seconds_gcount") == len(got)
    assert value("webhooks_attempt_duration_seconds_bucket", le="+Inf") == len(got)
    fast = DeliveryAttempt.objects.filter(duration_ms__lte=1000).count()
    assert value("webhooks_attempt_duration_seconds_bucket", le="1.0") == fast
    assert (
        value("webhooks_endpoints", breaker_state="closed")
        + value("webhooks_endpoints", breaker_state="open")
        + value("webhooks_endpoints", breaker_state="half_open")
        == 2
    )
    assert value("webhooks_endpoints_disabled") == 1

    # One structured line per attempt, from both clusters, without secrets.
    logs = "".join(cluster_logs)
    lines = [line for line in logs.splitlines() if "webhook attempt " in line]
    assert len(lines) == len(got), logs[-3000:]
    per_cluster = [sum("webhook attempt " in x for x in log.splitlines()) for log in cluster_logs]
    assert per_cluster == [3 * n, 5], per_cluster  # both clusters did work
    failed_line = next(x for x in lines if f"endpoint_id={bad.pk} " in x and "attempt=2 " in x)
    d = Delivery.objects.get(
        endpoint=bad, event__public_id=failed_line.split("event_id=")[1].split()[0]
    )
    assert f"delivery_id={d.pk} " in failed_line
    assert "status=500 " in failed_line and failed_line.endswith("outcome=failed")
    assert any(f"endpoint_id={bad.pk} " in x and "outcome=retry" in x for x in lines)
    assert any(
        f"endpoint_id={ok.pk} " in x and "status=200 " in x and "outcome=succeeded" in x
        for x in lines
    )
    assert "duration_ms=" in failed_line
    for secret in (token, ok_secret, bad_secret, marker, ok_secret.removeprefix("whsec_")):
        assert secret not in logs

    # webhooks_status while a worker is busy with a slow receiver.
    make_endpoint(slow.url("/slow"), events=["subscription.cancelled"])
    emit("subscription.cancelled", {})
    slow.wait_started(1)
    call_command("webhooks_status")
    out = capsys.readouterr().out
    assert "Backlog: 0 due now" in out
    assert f"#{bad.pk}" in out.split("Failing endpoints:")[1].split("Disabled")[0]
    assert f"#{off.pk}" in out.split("Disabled endpoints: 1")[1]
    assert "Workers sending now: 1" in out and "1 deliveries in flight" in out
    pid = int(out.split("Workers sending now: 1")[1].split("pid ")[1].split()[0])
    assert pid in _descendants(second.proc.pid)  # the one running now
    assert value("webhooks_in_flight") == 0 and _scrape(client)[("webhooks_in_flight", ())] == 1
    failing.close()
    slow.close()


def test_deliveries_through_a_proxy_from_a_real_cluster(receiver, make_endpoint, start_cluster):
    from tests.proxy import VIA, RecordingProxy

    proxy = RecordingProxy()
    try:
        _, secret = make_endpoint(f"http://localhost:{receiver.port}/hook")
        start_cluster(env={"WEBHOOKS_PROXY": proxy.url})
        events = [emit("user.created", {"i": i}) for i in range(3)]
        reqs = receiver.wait_for(3)
        assert all(r.header("Via") == VIA for r in reqs)
        assert sorted(r.body for r in reqs) == sorted(e.body.encode() for e in events)
        for r in reqs:
            standardwebhooks.Webhook(secret).verify(r.body, r.headers)
        assert len(proxy.forwarded) == 3
        assert {f.target for f in proxy.forwarded} == {f"http://127.0.0.1:{receiver.port}/hook"}
        wait_for(lambda: Delivery.objects.filter(status="succeeded").count() == 3)
    finally:
        proxy.close()
