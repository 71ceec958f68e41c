"""Flow control end to end: real ``qcluster`` subprocesses (2 workers each), a real
receiver, the configured database and broker (SQLite + ORM, or PostgreSQL + Redis)."""

import json
import re
import time

import pytest
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from tests.receiver import Receiver, Reply
from webhooks_app import emit, services
from webhooks_app.models import Delivery, DeliveryAttempt, Endpoint

pytestmark = [pytest.mark.cluster, pytest.mark.django_db(transaction=True)]

postgres_and_redis = pytest.mark.skipif(
    connection.vendor != "postgresql" or not settings.REDIS_URL,
    reason="two hosts share PostgreSQL and Redis (CI's second pass)",
)


def wait_for(predicate, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} not reached")


def emit_many(n, batch=100, **data):
    for start in range(0, n, batch):
        with transaction.atomic():
            for i in range(start, min(n, start + batch)):
                emit("user.created", {"n": i, **data})


def numbers(received):
    return [json.loads(r.body)["data"]["n"] for r in received]


def paths(receiver, prefix):
    return [r for r in list(receiver.received) if r.path.startswith(prefix)]


def max_in_window(times, seconds=1.0):
    times = sorted(times)
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] < t - seconds:
            j += 1
        best = max(best, i - j + 1)
    return best


def test_nine_unlimited_endpoints_beside_one_capped_at_5_per_second(
    receiver, make_endpoint, start_cluster
):
    """The note's figure: the cap holds across two workers and the others are not slowed.

    First all ten endpoints are unlimited (the reference), then the same run with one
    capped at 5/s. Prints the figures (``pytest -s``)."""
    for i in range(9):
        make_endpoint(receiver.url(f"/free{i}"))
    capped, _ = make_endpoint(receiver.url("/capped"))
    start_cluster(workers=2)
    n = 150

    def unlimited_rate(expected):
        started = time.time()
        emit_many(n)
        wait_for(lambda: len(paths(receiver, "/free")) >= expected, 90, "unlimited deliveries")
        last = max(r.at for r in paths(receiver, "/free"))
        return expected / (last - started)

    emit_many(20)  # warm up: connections, imports, the first claims
    wait_for(lambda: len(receiver.received) >= 200, 30, "warm-up deliveries")
    receiver.received.clear()
    reference = unlimited_rate(9 * n)
    wait_for(lambda: len(paths(receiver, "/capped")) >= n, 30, "reference capped deliveries")
    receiver.received.clear()

    services.update_endpoint(capped, rate_limit=5)
    since = timezone.now()
    started = time.time()
    beside = unlimited_rate(9 * n)
    capped_sent_meanwhile = len(paths(receiver, "/capped"))
    # Watch the capped endpoint for 8 s of its stream.
    wait_for(lambda: time.time() - started >= 8.0, 20)
    times = sorted(r.at for r in paths(receiver, "/capped"))
    rate = (len(times) - 1) / (times[-1] - times[0])
    worst = max_in_window(times)
    sends = DeliveryAttempt.objects.filter(delivery__endpoint=capped, started_at__gte=since)
    worst_sent = max_in_window([a.started_at.timestamp() for a in sends])
    print(
        f"\n9 unlimited endpoints: {reference:.0f} deliveries/s with a 10th unlimited, "
        f"{beside:.0f} deliveries/s beside one capped at 5/s; the capped one: "
        f"{rate:.2f}/s over {times[-1] - times[0]:.1f} s ({len(times)} received), at most "
        f"{worst_sent} sent and {worst} received in any 1 s ({connection.vendor}, 2 workers)"
    )
    # Perfect pacing puts 6 in a closed 1 s window; the rest is a loaded machine's jitter.
    assert 4.0 <= rate <= 5.5, rate
    assert worst_sent <= 7 and worst <= 8, (worst_sent, worst)
    assert capped_sent_meanwhile <= 5 * (time.time() - started) + 6
    assert beside >= 0.6 * reference, (beside, reference)  # not held up by the capped one
    capped_rows = Delivery.objects.filter(endpoint=capped)
    assert not capped_rows.filter(status="failed").exists()
    assert all(r.attempts <= 1 for r in capped_rows)  # waiting is not failing


def test_breaker_opens_waits_probes_then_closes_through_the_cluster(
    receiver, make_endpoint, start_cluster
):
    endpoint, _ = make_endpoint(receiver.url())
    receiver.default = Reply(500)
    start_cluster(
        env={
            "WEBHOOKS_BREAKER_THRESHOLD": "3",
            "WEBHOOKS_BREAKER_COOLDOWN": "3",
            "WEBHOOKS_RETRY_SCHEDULE": "0,0.5,0.5,0.5,0.5,0.5",
        }
    )
    emit_many(10)
    wait_for(lambda: Endpoint.objects.get(pk=endpoint.pk).breaker_state == "open", 10)
    time.sleep(0.5)  # a chunk still in flight on the other worker ends
    tried = len(receiver.received)
    time.sleep(1.5)  # retries come due meanwhile, but the breaker is open
    assert len(receiver.received) == tried <= 2 * 3, tried  # each worker's chunk stops at 3
    assert Delivery.objects.filter(endpoint=endpoint, status="pending").count() == 10

    receiver.default = Reply(200)
    receiver.script(Reply(200, b"probe", delay=0.5))  # slow: nothing may go beside it
    receiver.wait_for(tried + 10, timeout=15)
    after = receiver.received[tried:]
    probe = DeliveryAttempt.objects.get(response_excerpt="probe").delivery
    # Answered first although the slowest: nothing was sent until it had succeeded.
    assert after[0].header("webhook-id") == probe.event.public_id
    assert len({r.header("webhook-id") for r in after}) == 10
    wait_for(lambda: Endpoint.objects.get(pk=endpoint.pk).breaker_state == "closed", 5)
    wait_for(
        lambda: Delivery.objects.filter(endpoint=endpoint, status="succeeded").count() == 10,
        5,
    )


def test_ordered_endpoint_in_emit_order_across_workers(receiver, make_endpoint, start_cluster):
    make_endpoint(receiver.url("/ordered"), ordered=True)
    parallel_rx = Receiver()
    try:
        make_endpoint(parallel_rx.url("/parallel"))
        receiver.default = Reply(200, delay=0.01)
        receiver.script(Reply(500))
        start_cluster(env={"WEBHOOKS_RETRY_SCHEDULE": "0,1.5"}, workers=2)
        started = time.time()
        emit_many(30, batch=5)
        parallel = parallel_rx.wait_for(30, timeout=15)
        receiver.wait_for(31, timeout=20)
    finally:
        parallel_rx.close()
    ordered = receiver.received
    assert numbers(ordered) == [0, *range(30)]
    # The failing first one held the rest for its 1.5 s retry; the other endpoint not.
    assert ordered[1].at - ordered[0].at >= 1.5
    assert max(r.at for r in parallel) - started < ordered[1].at - started
    assert sorted(numbers(parallel)) == list(range(30))


def test_failure_notices_one_email_then_one_digest(
    receiver, make_endpoint, start_cluster, tmp_path
):
    make_endpoint(receiver.url(), name="CRM", notify_email="ops@example.com")
    receiver.default = Reply(503, b"maintenance")
    start_cluster(
        env={
            "WEBHOOKS_RETRY_SCHEDULE": "0",
            "WEBHOOKS_NOTIFY_INTERVAL": "2",
            "WEBHOOKS_BREAKER_THRESHOLD": "0",
            "EMAIL_BACKEND": "django.core.mail.backends.filebased.EmailBackend",
            "EMAIL_FILE_PATH": str(tmp_path),
        }
    )
    emit_many(8)
    receiver.wait_for(8)

    def mails():
        return [p.read_text() for p in sorted(tmp_path.iterdir())]

    def counted(mail):
        if "Subject: Webhook delivery failed: CRM\n" in mail:
            return 1
        digest = re.search(r"Subject: Webhook deliveries failed: CRM \((\d+)\)", mail)
        # A file the worker is still writing has no subject yet: it counts once complete.
        return int(digest[1]) if digest else 0

    wait_for(lambda: len(mails()) >= 1, 10, "first notice")
    wait_for(lambda: sum(map(counted, mails())) >= 8, 15, "digest")
    time.sleep(1.0)
    # Two workers record at once, so the first email may already sum up two or three.
    first, digest = mails()
    assert "Status code: 503" in first and "Status code: 503" in digest
    assert counted(first) + counted(digest) == 8 and counted(digest) > 1
    assert f"{counted(digest)} deliveries" in digest


@postgres_and_redis
def test_two_hosts_share_the_work_without_duplicates(receiver, make_endpoint, start_cluster):
    """Two separate qcluster processes (two hosts) on one PostgreSQL and one Redis."""
    make_endpoint(receiver.url())
    env = {"WEBHOOKS_LOG_LEVEL": "DEBUG"}
    hosts = [start_cluster(env=env, workers=2), start_cluster(env=env, workers=2)]
    emit_many(2000)
    received = receiver.wait_for(2000, timeout=60)
    time.sleep(1.0)  # a duplicate would arrive by now
    ids = [r.header("webhook-id") for r in receiver.received]
    assert len(ids) == 2000 == len(set(ids))
    assert set(ids) == set(Delivery.objects.values_list("event__public_id", flat=True))
    assert set(Delivery.objects.values_list("status", "attempts")) == {("succeeded", 1)}
    sent = [
        sum(int(m) for m in re.findall(r"chunk of \d+, (\d+) sent", host.log())) for host in hosts
    ]
    print(f"\n2,000 deliveries by two hosts: {sent[0]} and {sent[1]}")
    assert all(s > 0 for s in sent) and sum(sent) == 2000, sent
    assert len(received) == 2000
