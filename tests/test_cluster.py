"""End to end: a real ``qcluster`` subprocess, a real receiver, the configured database and
broker (SQLite + ORM broker, or PostgreSQL + Redis in CI's second pass)."""

import hashlib
import hmac
import json
import time
from datetime import timedelta

import pytest
import standardwebhooks
from django.db import transaction

from tests.receiver import Reply
from webhooks_app import emit, services, signing
from webhooks_app.models import Delivery, DeliveryAttempt

pytestmark = [pytest.mark.cluster, pytest.mark.django_db(transaction=True)]


def wait_status(delivery_id, status, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        d = Delivery.objects.get(pk=delivery_id)
        if d.status == status:
            return d
        time.sleep(0.1)
    raise AssertionError(f"delivery {delivery_id} is {d.status}, expected {status}")


def test_signed_delivery_through_a_real_cluster(receiver, make_endpoint, start_cluster):
    _, secret = make_endpoint(receiver.url())
    start_cluster()
    event = emit("user.created", {"email": "a@b.c"})
    (req,) = receiver.wait_for(1)
    assert req.body == event.body.encode()
    standardwebhooks.Webhook(secret).verify(req.body, req.headers)
    expected = hmac.new(secret.encode(), req.body, hashlib.sha256).hexdigest()
    assert req.header("X-Webhook-Signature") == f"sha256={expected}"
    d = wait_status(event.deliveries.get().pk, "succeeded")
    assert d.attempts == 1 and d.last_status_code == 200


def test_rollback_sends_nothing(receiver, make_endpoint, start_cluster):
    make_endpoint(receiver.url())
    start_cluster()
    with pytest.raises(RuntimeError), transaction.atomic():
        emit("user.created", {"rolled": "back"})
        raise RuntimeError
    committed = emit("user.created", {"committed": True})
    (req,) = receiver.wait_for(1)
    time.sleep(1.0)  # give a wrongly sent first event time to show up
    assert [json.loads(r.body)["data"] for r in receiver.received] == [{"committed": True}]
    assert committed.deliveries.count() == 1


def test_retries_on_time_then_success(receiver, make_endpoint, start_cluster):
    _, secret = make_endpoint(receiver.url())
    receiver.script(Reply(500, b"first"), Reply(503, b"second"))
    start_cluster(env={"WEBHOOKS_RETRY_SCHEDULE": "0,1,2"})
    event = emit("user.created", {"n": 1})
    reqs = receiver.wait_for(3, timeout=20)
    gaps = [reqs[1].at - reqs[0].at, reqs[2].at - reqs[1].at]
    assert abs(gaps[0] - 1) <= 1.0 and abs(gaps[1] - 2) <= 1.0, gaps
    assert gaps[0] >= 1.0 and gaps[1] >= 2.0, gaps  # never early
    assert len({r.body for r in reqs}) == 1
    for r in reqs:
        standardwebhooks.Webhook(secret).verify(r.body, r.headers)
    d = wait_status(event.deliveries.get().pk, "succeeded")
    attempts = DeliveryAttempt.objects.filter(delivery=d).order_by("number")
    assert [(a.number, a.status_code, a.response_excerpt) for a in attempts] == [
        (1, 500, "first"),
        (2, 503, "second"),
        (3, 200, '{"ok":true}'),
    ]


def test_failed_delivery_replayed_through_the_cluster(receiver, make_endpoint, start_cluster):
    make_endpoint(receiver.url())
    receiver.script(Reply(500))
    start_cluster(env={"WEBHOOKS_RETRY_SCHEDULE": "0"})
    event = emit("user.created", {})
    d = wait_status(event.deliveries.get().pk, "failed")
    services.replay(d)
    first, second = receiver.wait_for(2)
    assert second.body == first.body
    assert second.header("webhook-id") == first.header("webhook-id") == event.public_id
    assert wait_status(d.pk, "succeeded").attempts == 2


def test_rotation_through_the_cluster(receiver, make_endpoint, start_cluster):
    endpoint, old = make_endpoint(receiver.url())
    start_cluster()
    new = services.rotate_secret(endpoint)
    emit("user.created", {})
    (req,) = receiver.wait_for(1)
    signing.verify(new, req.body, req.headers)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(old).verify(req.body, req.headers)
    newer = services.rotate_secret(endpoint, grace=timedelta(minutes=5))
    emit("user.created", {})
    req2 = receiver.wait_for(2)[1]
    standardwebhooks.Webhook(new).verify(req2.body, req2.headers)
    standardwebhooks.Webhook(newer).verify(req2.body, req2.headers)


def test_sigkilled_worker_mid_delivery_still_delivers(receiver, make_endpoint, start_cluster):
    make_endpoint(receiver.url())
    receiver.script(Reply(200, delay=20))  # the first request hangs
    env = {"WEBHOOKS_TIMEOUT": "3", "WEBHOOKS_LEASE_SECONDS": "4"}
    cluster = start_cluster(env=env)
    event = emit("user.created", {"survives": "SIGKILL"})
    receiver.wait_started(1)
    cluster.kill()  # the worker dies mid-request; nothing is recorded
    d = Delivery.objects.get(event=event)
    assert d.status == "pending" and d.attempts == 0 and d.claim_token
    start_cluster(env=env)
    reqs = receiver.wait_for(1, timeout=20)  # the resent one (the hung one never answered)
    assert reqs[0].header("webhook-id") == event.public_id
    assert json.loads(reqs[0].body)["data"] == {"survives": "SIGKILL"}
    d = wait_status(d.pk, "succeeded")
    assert d.attempts == 1


def test_lost_wake_up_task_is_recovered_by_the_poll(receiver, make_endpoint, start_cluster):
    make_endpoint(receiver.url())
    event = emit("user.created", {"wake": "lost"})
    # start_cluster purges the broker's queue first: the wake-up task is gone, as when
    # the Redis broker drops a task or a worker dies holding it.
    start_cluster()
    (req,) = receiver.wait_for(1)
    assert req.header("webhook-id") == event.public_id


def test_get_endpoint_and_custom_headers_through_the_cluster(
    receiver, make_endpoint, start_cluster
):
    _, get_secret = make_endpoint(receiver.url("/get"), method="GET")
    _, post_secret = make_endpoint(
        receiver.url("/post"), headers={"Authorization": "Bearer t0k3n", "X-Tenant": "acme"}
    )
    start_cluster()
    emit("user.created", {"email": "a@b.c"})
    reqs = {r.path: r for r in receiver.wait_for(2)}
    get, post = reqs["/get"], reqs["/post"]
    assert get.method == "GET" and "data.email=a%40b.c" in get.query
    signing.verify(get_secret, get.query.encode(), get.headers)
    assert post.header("Authorization") == "Bearer t0k3n" and post.header("X-Tenant") == "acme"
    signing.verify(post_secret, post.body, post.headers)
    assert get.header("Authorization") is None


def test_graceful_stop_hands_back_unstarted_work(receiver, make_endpoint, start_cluster):
    make_endpoint(receiver.url())
    receiver.default = Reply(200, delay=1.0)
    cluster = start_cluster()
    events = [emit("user.created", {"n": i}) for i in range(12)]
    receiver.wait_started(1)
    started = time.monotonic()
    cluster.stop()  # SIGTERM, as a process manager would send on deploy
    assert time.monotonic() - started < 15
    rows = list(Delivery.objects.filter(event__in=events))
    assert all(d.claim_token == "" for d in rows), [(d.pk, d.status) for d in rows]
    pending = [d for d in rows if d.status == "pending"]
    assert pending and all(d.attempts == 0 for d in pending)  # handed back, not lost
    sent = len(receiver.wait_for(len(rows) - len(pending), timeout=5))
    assert sent == len(rows) - len(pending)  # nothing half-recorded
    start_cluster()
    receiver.default = Reply(200)
    receiver.wait_for(len(rows), timeout=20)
    assert {wait_status(d.pk, "succeeded").attempts for d in rows} == {1}
