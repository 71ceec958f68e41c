"""Live preview: what an endpoint would receive, in the admin and the API, built by the
code the engine sends with (so it cannot drift: compared with a real receiver's bytes)."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse
from rest_framework.test import APIClient

from webhooks_app import emit, engine, services
from webhooks_app import headers as headers_policy
from webhooks_app.models import Delivery, Event

pytestmark = pytest.mark.django_db(transaction=True)

SHAPES = [
    {"payload_format": "standard"},
    {"payload_format": "standard", "payload_fields": ["email"], "payload_extra": {"k": 1}},
    {"payload_format": "flat", "headers": {"Authorization": "Bearer abc"}},
    {"payload_format": "type"},
    {"payload_format": "cloudevents", "payload_extra": {"origin": "crm"}},
    {"payload_format": "type", "method": "GET"},
]
PER_ATTEMPT = {
    "webhook-signature",
    "x-webhook-signature",
    "webhook-timestamp",
    "x-webhook-timestamp",
}


@pytest.mark.parametrize("options", SHAPES, ids=lambda o: "-".join(map(str, o.values())))
def test_preview_equals_what_a_real_receiver_got(receiver, make_endpoint, options):
    endpoint, _ = make_endpoint(receiver.url("/hook?token=t"), **options)
    event = emit("user.created", {"email": "ü@example.com", "id": 7, "extra": [1, 2]})
    engine.drain()
    (req,) = receiver.wait_for(1)
    p = services.preview(endpoint, event=event)
    assert p.method == req.method
    sent = urlsplit(p.url)
    assert (sent.path, sent.query) == (req.path, req.query)
    assert p.body.encode("utf-8") == req.body
    for name, value in p.headers.items():
        if name.lower() in PER_ATTEMPT:
            continue
        if name in options.get("headers", {}):  # custom header values are shown masked
            assert headers_policy.mask(req.header(name)) == value == "Bearer ••••", name
            continue
        assert req.header(name) == value, name
    got = req.header("webhook-signature")
    assert p.headers["webhook-signature"] == "v1,••••••••" and got.startswith("v1,")
    assert p.headers["X-Webhook-Signature"] == "sha256=••••••••"
    assert Delivery.objects.count() == 1  # the preview saved nothing


def test_preview_of_an_example_on_an_inactive_endpoint(receiver, make_endpoint):
    endpoint, secret = make_endpoint(
        receiver.url(), is_active=False, payload_format="cloudevents", events=["user.created"]
    )
    p = services.preview(endpoint, "payment.succeeded")
    body = json.loads(p.body)
    assert body["type"] == "payment.succeeded" and body["specversion"] == "1.0"
    assert body["data"] == {"amount": 1999, "currency": "usd", "customer": "cus_123"}
    assert p.headers["Content-Type"] == "application/cloudevents+json"
    assert p.headers["webhook-id"] == body["id"]
    assert p.subscribed is False
    assert services.preview(endpoint).event_type == "user.created"  # its first type
    assert secret not in json.dumps(p.headers)
    assert Event.objects.count() == 0 and Delivery.objects.count() == 0
    assert receiver.received == []


def test_preview_rotation_shows_both_signatures_masked(receiver, make_endpoint):
    endpoint, _ = make_endpoint(receiver.url())
    services.rotate_secret(endpoint, grace=3600)
    p = services.preview(endpoint, "user.created")
    assert p.headers["webhook-signature"] == "v1,•••••••• v1,••••••••"


# API --------------------------------------------------------------------------------------
@pytest.fixture
def alice(db):
    return get_user_model().objects.create_user("alice", password="pw")


@pytest.fixture
def api(alice):
    c = APIClient()
    c.force_authenticate(alice)
    return c


def test_api_preview(api, alice, make_endpoint, receiver):
    endpoint, secret = make_endpoint(
        receiver.url(), tenant=str(alice.pk), payload_format="flat", is_active=False
    )
    r = api.get(f"/api/webhooks/endpoints/{endpoint.pk}/preview/?event_type=user.created")
    assert r.status_code == 200, r.content
    body = r.json()
    assert body["method"] == "POST" and body["url"] == receiver.url()
    assert json.loads(body["body"]) == {
        "id": 42,
        "username": "mike",
        "email": "mike@example.com",
        "event": "user.created",
    }
    assert body["headers"]["webhook-signature"] == "v1,••••••••"
    assert secret not in r.content.decode()
    r = api.get(f"/api/webhooks/endpoints/{endpoint.pk}/preview/?event_type=nope")
    assert r.status_code == 400 and "event_type" in r.json()
    r = api.get(f"/api/webhooks/endpoints/{endpoint.pk}/preview/?evnet_type=user.created")
    assert r.status_code == 400 and "evnet_type" in r.json()
    other, _ = make_endpoint(receiver.url(), tenant="someone-else")
    assert api.get(f"/api/webhooks/endpoints/{other.pk}/preview/").status_code == 404
    assert receiver.received == []


def test_api_payload_formats_and_endpoint_field(api, alice):
    r = api.get("/api/webhooks/payload-formats/")
    assert r.status_code == 200
    names = [f["name"] for f in r.json()]
    assert names[:4] == ["standard", "flat", "type", "cloudevents"]
    ce = r.json()[3]
    assert ce["content_type"] == "application/cloudevents+json" and ce["envelope"] is True
    r = api.post(
        "/api/webhooks/endpoints/",
        {"url": "http://127.0.0.1:9/h", "events": ["user.created"], "payload_format": "xml"},
        format="json",
    )
    assert r.status_code == 400 and "payload_format" in r.json()
    r = api.post(
        "/api/webhooks/endpoints/",
        {
            "url": "http://127.0.0.1:9/h",
            "events": ["user.created"],
            "payload_format": "type",
            "payload_fields": [f"f{i}" for i in range(11)],
        },
        format="json",
    )
    assert r.status_code == 400
    assert r.json() == {"payload_fields": ["At most 10 fields can be selected; 11 were given."]}
    r = api.post(
        "/api/webhooks/endpoints/",
        {"url": "http://127.0.0.1:9/h", "events": ["user.created"], "payload_format": "type"},
        format="json",
    )
    assert r.status_code == 201 and r.json()["payload_format"] == "type"
    pk = r.json()["id"]
    r = api.patch(f"/api/webhooks/endpoints/{pk}/", {"payload_extra": {"type": 1}}, format="json")
    assert r.status_code == 400 and "reserved by the type" in r.json()["payload_extra"][0]
    r = api.put(
        f"/api/webhooks/endpoints/{pk}/",
        {"url": "http://127.0.0.1:9/h", "events": ["user.created"]},
        format="json",
    )
    assert r.status_code == 200 and r.json()["payload_format"] == ""  # PUT: site default


# Admin ------------------------------------------------------------------------------------
def test_admin_preview_page(admin_client, make_endpoint, receiver):
    endpoint, secret = make_endpoint(
        receiver.url(), payload_format="type", is_active=False, events=["user.created"]
    )
    url = reverse("admin:webhooks_app_endpoint_preview", args=[endpoint.pk])
    change = admin_client.get(reverse("admin:webhooks_app_endpoint_change", args=[endpoint.pk]))
    assert url in change.content.decode()  # linked from the endpoint's tools
    r = admin_client.get(url + "?event_type=payment.succeeded")
    html = r.content.decode()
    assert r.status_code == 200
    assert '<option value="payment.succeeded" selected>' in html
    assert "payment.succeeded (not subscribed)" in html
    assert "This endpoint is inactive" in html
    body = r.context["preview"].body
    assert json.loads(body)["data"] == {"amount": 1999, "currency": "usd", "customer": "cus_123"}
    assert "&quot;type&quot;:&quot;payment.succeeded&quot;" in html
    assert "v1,••••••••" in html and secret not in html
    r = admin_client.get(url + "?event_type=nope")
    assert r.status_code == 200 and "Unknown event type" in r.content.decode()
    assert receiver.received == []


def test_admin_form_sets_the_payload_format_and_limits_fields(
    admin_client, make_endpoint, receiver
):
    endpoint, _ = make_endpoint(receiver.url(), events=["user.created"])
    change = reverse("admin:webhooks_app_endpoint_change", args=[endpoint.pk])
    html = admin_client.get(change).content.decode()
    assert '<option value="cloudevents">CloudEvents 1.0 (structured JSON)</option>' in html
    assert "Site default (standard)" in html
    data = {
        "name": "x",
        "description": "",
        "url": receiver.url(),
        "method": "POST",
        "is_active": "on",
        "events": ["user.created"],
        "events_toggles": "1",
        "events_enabled": ["user.created"],
        "notify_email": "",
        "payload_format": "cloudevents",
        "payload_fields": ", ".join(f"f{i}" for i in range(11)),
    }
    r = admin_client.post(change, data)
    assert r.status_code == 200
    assert "At most 10 fields can be selected; 11 were given." in r.content.decode()
    data["payload_fields"] = "email"
    data.update({"payload_extra_key": ["Bad"], "payload_extra_value": ["1"]})
    r = admin_client.post(change, data)
    assert "is not a CloudEvents attribute name" in r.content.decode()
    data.update({"payload_extra_key": ["origin"], "payload_extra_value": ["crm"]})
    r = admin_client.post(change, data)
    assert r.status_code == 302, r.content.decode()[:3000]
    endpoint.refresh_from_db()
    assert endpoint.payload_format == "cloudevents" and endpoint.payload_extra == {"origin": "crm"}
