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
    """The schedule created after migrate, run by the cluster's scheduler (every ~30 s)."""
    from django_q.models import Schedule

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
    wait_for(lambda: not Event.objects.filter(pk=old.pk).exists(), 60, "scheduled prune")
    assert not DeliveryAttempt.objects.filter(delivery__event_id=old.pk).exists()
    assert Delivery.objects.filter(event=pending, status="pending").exists()
    assert Event.objects.filter(pk=pending.pk).exists()
    (schedule,) = Schedule.objects.filter(func="webhooks_app.tasks.prune")
    assert schedule.next_run > timezone.now()  # rescheduled an hour on
