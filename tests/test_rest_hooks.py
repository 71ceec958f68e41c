"""REST Hooks (Zapier-style subscriptions) in the API, and plan gating in a real qcluster."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import standardwebhooks
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from tests.receiver import Reply
from tests.test_cluster import wait_status
from webhooks_app import emit, gating, services
from webhooks_app.models import Delivery, Endpoint

API = "/api/webhooks"


@pytest.fixture
def alice(db):
    return get_user_model().objects.create_user("alice", password="pw")


@pytest.fixture
def api(alice):
    c = APIClient()
    c.force_authenticate(alice)
    return c


@pytest.mark.django_db
def test_subscribe_validates_and_is_tenant_scoped(api, alice, receiver):
    bad = api.post(
        f"{API}/hooks/", {"target_url": "https://10.0.0.1/x", "event": "nope"}, format="json"
    )
    assert bad.status_code == 400 and set(bad.json()) == {"target_url", "event"}
    extra = api.post(
        f"{API}/hooks/",
        {"target_url": receiver.url(), "event": "user.created", "x": 1},
        format="json",
    )
    assert extra.status_code == 400 and "x" in extra.json()
    assert Endpoint.objects.count() == 0
    made = api.post(
        f"{API}/hooks/", {"target_url": receiver.url(), "event": "user.created"}, format="json"
    )
    assert made.status_code == 201
    body = made.json()
    endpoint = Endpoint.objects.get(pk=body["id"])
    assert endpoint.tenant == str(alice.pk) and endpoint.event_types == ["user.created"]
    assert body["secret"] == endpoint.get_secret() and body["event"] == "user.created"
    other = APIClient()
    other.force_authenticate(get_user_model().objects.create_user("bob", password="pw"))
    assert other.delete(f"{API}/hooks/{endpoint.pk}/").status_code == 404
    assert api.delete(f"{API}/hooks/{endpoint.pk}/").status_code == 204
    assert not Endpoint.objects.filter(pk=endpoint.pk).exists()
    assert api.delete(f"{API}/hooks/{endpoint.pk}/").status_code == 404


@pytest.mark.django_db
def test_sample_is_a_list_with_the_example_envelope(api, alice):
    response = api.get(f"{API}/event-types/user.created/sample/")
    assert response.status_code == 200
    (sample,) = response.json()
    assert sample["event"] == "user.created" and sample["tenant"] == str(alice.pk)
    assert sample["data"] == {"id": 42, "username": "mike", "email": "mike@example.com"}
    assert api.get(f"{API}/event-types/nope/sample/").status_code == 404
    assert api.get(f"{API}/event-types/webhook.test/sample/").status_code == 404
    assert APIClient().get(f"{API}/event-types/user.created/sample/").status_code in (401, 403)


@pytest.mark.django_db
def test_api_refuses_a_tenant_without_the_feature(api, receiver):
    from django.conf import settings
    from django.test import override_settings

    with override_settings(
        WEBHOOKS_APP={**settings.WEBHOOKS_APP, "FEATURE_GATE": "tests.test_portal.deny_all"}
    ):
        response = api.post(
            f"{API}/hooks/", {"target_url": receiver.url(), "event": "user.created"}, format="json"
        )
    assert response.status_code == 403
    assert response.json()["detail"] == str(gating.FEATURE_UNAVAILABLE)
    assert Endpoint.objects.count() == 0


@pytest.mark.cluster
@pytest.mark.django_db(transaction=True)
def test_rest_hooks_flow_through_a_real_cluster(api, alice, receiver, start_cluster):
    start_cluster()
    made = api.post(
        f"{API}/hooks/",
        {"target_url": receiver.url("/zap"), "event": "user.created"},
        format="json",
    ).json()
    event = emit("user.created", {"email": "a@b.c"}, tenant=str(alice.pk))
    emit("user.updated", {"email": "a@b.c"}, tenant=str(alice.pk))  # not subscribed
    (request,) = receiver.wait_for(1)
    assert request.path == "/zap" and request.body == event.body.encode()
    standardwebhooks.Webhook(made["secret"]).verify(request.body, request.headers)
    assert json.loads(request.body)["data"] == {"email": "a@b.c"}
    wait_status(Delivery.objects.get(endpoint_id=made["id"]).pk, "succeeded")
    # The platform answers 410 when the user turned the Zap off: that unsubscribes.
    receiver.script(Reply(410, b"gone"))
    gone = emit("user.created", {"n": 2}, tenant=str(alice.pk))
    wait_status(gone.deliveries.get().pk, "failed")
    endpoint = Endpoint.objects.get(pk=made["id"])
    assert not endpoint.is_active and "410" in endpoint.disabled_reason
    emit("user.created", {"n": 3}, tenant=str(alice.pk))
    time.sleep(1.0)
    assert len(receiver.received) == 2  # nothing after the 410
    assert api.delete(f"{API}/hooks/{made['id']}/").status_code == 204
    assert not Endpoint.objects.filter(pk=made["id"]).exists()


# Plan gating at send time in a real cluster ----------------------------------------------
PLAN_FILE_ENV = "WEBHOOKS_TEST_REFUSED_TENANTS"


def refused_tenants_gate(tenant: str) -> bool:
    """TENANT_GATE for the cluster test: tenants listed in a file have lost the feature."""
    path = os.environ.get(PLAN_FILE_ENV)
    refused = Path(path).read_text().split() if path and Path(path).exists() else []
    return tenant not in refused


def refused_tenants_feature_gate(request, tenant: str) -> bool:
    """FEATURE_GATE for the cluster test: the worker asks without a request."""
    if request is not None:
        return True  # a web request (not under test here)
    return refused_tenants_gate(tenant)


@pytest.mark.cluster
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "setting, gate",
    [
        ("WEBHOOKS_TENANT_GATE", "tests.test_rest_hooks.refused_tenants_gate"),
        ("WEBHOOKS_FEATURE_GATE", "tests.test_rest_hooks.refused_tenants_feature_gate"),
    ],
)
def test_a_tenant_that_loses_the_plan_stops_receiving_and_replays_later(
    make_endpoint, receiver, start_cluster, tmp_path, setting, gate
):
    plan = tmp_path / "refused.txt"
    plan.write_text("acme\n")
    endpoint, secret = make_endpoint(receiver.url("/acme"), tenant="acme")
    make_endpoint(receiver.url("/paid"), tenant="paid")
    start_cluster(env={setting: gate, PLAN_FILE_ENV: str(plan)})
    refused = emit("user.created", {"n": 1}, tenant="acme")
    emit("user.created", {"n": 1}, tenant="paid")
    (request,) = receiver.wait_for(1)
    assert request.path == "/paid"
    d = wait_status(refused.deliveries.get().pk, "failed")
    assert d.attempts == 0 and d.last_error == gating.FEATURE_UNAVAILABLE_AT_SEND
    assert d.claim_token == "" and not d.attempt_log.exists()
    # The plan comes back: a replay is delivered, signed, with the same event.
    plan.write_text("")
    services.replay(d)
    wait_status(d.pk, "succeeded")
    again = receiver.wait_for(2)[1]
    assert again.path == "/acme" and again.body == refused.body.encode()
    standardwebhooks.Webhook(secret).verify(again.body, again.headers)
