"""Issue 11 features end to end: a real qcluster subprocess and a real receiver."""

import json
import time

import pytest
import standardwebhooks

from webhooks_app import emit
from webhooks_app.models import Delivery, Event

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
