"""The event log: API ``events/`` and ``events/{id}/``, deliveries by event id, the admin
Events list with search by id; end to end from emit to what the receiver got."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import override_settings
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from tests.receiver import Receiver, Reply
from webhooks_app import emit, engine
from webhooks_app.models import Event

pytestmark = pytest.mark.django_db(transaction=True)
API = "/api/webhooks"


@pytest.fixture
def alice(db):
    return get_user_model().objects.create_user("alice", password="pw")


@pytest.fixture
def api(alice):
    c = APIClient()
    c.force_authenticate(alice)
    return c


@pytest.fixture
def failing():
    r = Receiver()
    r.default = Reply(500, b"down")
    yield r
    r.close()


@pytest.fixture
def log(alice, make_endpoint, receiver, failing):
    """Alice's tenant: two endpoints, three events (one failed at one endpoint); Bob's:
    one event."""
    tenant = str(alice.pk)
    a, _ = make_endpoint(
        receiver.url("/a"), tenant=tenant, name="CRM", events=["user.created", "payment.succeeded"]
    )
    make_endpoint(failing.url("/b"), tenant=tenant, name="Billing", events=["payment.succeeded"])
    make_endpoint(receiver.url("/c"), tenant="bob", events=["user.created"])
    first = emit("user.created", {"id": 1}, tenant=tenant)
    payment = emit("payment.succeeded", {"amount": 5}, tenant=tenant)
    last = emit("user.created", {"id": 2}, tenant=tenant)
    bobs = emit("user.created", {"id": 3}, tenant="bob")
    with override_settings(WEBHOOKS_APP={**settings.WEBHOOKS_APP, "RETRY_SCHEDULE": [0]}):
        engine.drain()
    receiver.wait_for(4)
    failing.wait_for(1)
    return {"first": first, "payment": payment, "last": last, "bobs": bobs, "a": a}


def test_api_lists_the_tenants_events_newest_first_with_filters_and_cursor(api, log):
    r = api.get(f"{API}/events/")
    assert r.status_code == 200, r.content
    ids = [e["id"] for e in r.json()["results"]]
    assert ids == [log["last"].public_id, log["payment"].public_id, log["first"].public_id]
    assert set(r.json()["results"][0]) == {"id", "event_type", "created_at"}
    r = api.get(f"{API}/events/?event_type=payment.succeeded")
    assert [e["id"] for e in r.json()["results"]] == [log["payment"].public_id]
    Event.objects.filter(pk=log["first"].pk).update(created_at=timezone.now() - timedelta(days=2))
    since = (timezone.now() - timedelta(days=1)).isoformat()
    r = api.get(f"{API}/events/", {"created_after": since})
    assert log["first"].public_id not in [e["id"] for e in r.json()["results"]]
    r = api.get(f"{API}/events/", {"created_before": since})
    assert [e["id"] for e in r.json()["results"]] == [log["first"].public_id]
    # Cursor pages of one.
    seen, url = [], f"{API}/events/?limit=1"
    while url:
        page = api.get(url).json()
        seen += [e["id"] for e in page["results"]]
        url = page["next"]
    assert seen == ids
    for bad in ("?evnet_type=x", "?created_after=yesterday", "?limit=0"):
        assert api.get(f"{API}/events/{bad}").status_code == 400


def test_api_event_detail_shows_what_became_of_each_delivery(api, log, receiver, failing):
    payment = log["payment"]
    r = api.get(f"{API}/events/{payment.public_id}/")
    assert r.status_code == 200, r.content
    body = r.json()
    assert body["id"] == payment.public_id and body["data"] == {"amount": 5}
    got = {d["endpoint_name"]: d for d in body["deliveries"]}
    assert got["CRM"]["status"] == "succeeded" and got["CRM"]["last_status_code"] == 200
    assert got["Billing"]["status"] == "failed" and got["Billing"]["last_status_code"] == 500
    assert all(d["event_id"] == payment.public_id for d in body["deliveries"])
    # ...and those are the requests the receivers got for it.
    sent = [
        r
        for r in receiver.received + failing.received
        if r.header("webhook-id") == payment.public_id
    ]
    assert sorted(r.path for r in sent) == ["/a", "/b"]


def test_api_event_of_another_tenant_or_malformed_is_404(api, log):
    assert api.get(f"{API}/events/{log['bobs'].public_id}/").status_code == 404
    for bad in ("evt_nope", "123", "evt_%00", "x" * 300, str(log["first"].pk)):
        assert api.get(f"{API}/events/{bad}/").status_code == 404, bad
    ids = [e["id"] for e in api.get(f"{API}/events/").json()["results"]]
    assert log["bobs"].public_id not in ids


def test_api_deliveries_filter_by_event(api, log):
    payment = log["payment"].public_id
    r = api.get(f"{API}/deliveries/?event={payment}")
    assert r.status_code == 200
    assert sorted(d["event_id"] for d in r.json()["results"]) == [payment, payment]
    r = api.get(f"{API}/endpoints/{log['a'].pk}/deliveries/?event={payment}")
    assert [d["event_id"] for d in r.json()["results"]] == [payment]
    assert api.get(f"{API}/deliveries/?event={log['bobs'].public_id}").json()["results"] == []
    r = api.get(f"{API}/deliveries/?event=not-an-id")
    assert r.status_code == 400 and "event" in r.json()


# Admin ------------------------------------------------------------------------------------
def test_admin_event_list_search_and_detail(admin_client, log):
    changelist = reverse("admin:webhooks_app_event_changelist")
    r = admin_client.get(changelist)
    html = r.content.decode()
    assert r.status_code == 200
    for key in ("first", "payment", "last", "bobs"):
        assert log[key].public_id in html  # staff see every tenant
    payment = log["payment"]
    r = admin_client.get(changelist, {"q": f"  {payment.public_id} "})
    assert list(r.context["cl"].result_list) == [payment]
    r = admin_client.get(changelist, {"q": payment.public_id[:-2]})
    assert list(r.context["cl"].result_list) == []  # exact ids only
    r = admin_client.get(changelist, {"event_type": "payment.succeeded"})
    assert list(r.context["cl"].result_list) == [payment]
    r = admin_client.get(changelist, {"tenant": "bob"})
    assert list(r.context["cl"].result_list) == [log["bobs"]]
    detail = reverse("admin:webhooks_app_event_change", args=[payment.pk])
    html = admin_client.get(detail).content.decode()
    assert "CRM" in html and "Billing" in html and "500" in html
    history = reverse("admin:webhooks_app_endpoint_history", args=[log["a"].pk])
    assert f"{history}?event={payment.public_id}" in html
    assert (
        reverse("admin:webhooks_app_event_add") not in admin_client.get(changelist).content.decode()
    )
    assert admin_client.get(reverse("admin:webhooks_app_event_add")).status_code == 403
    r = admin_client.post(
        reverse("admin:webhooks_app_event_delete", args=[payment.pk]), {"post": "yes"}
    )
    assert r.status_code == 403 and Event.objects.filter(pk=payment.pk).exists()


def test_admin_history_filters_by_event_id(admin_client, log):
    history = reverse("admin:webhooks_app_endpoint_history", args=[log["a"].pk])
    r = admin_client.get(history, {"event": log["payment"].public_id})
    rows = [d for d, _ in r.context["rows"]]
    assert [d.event.public_id for d in rows] == [log["payment"].public_id]
    html = r.content.decode()
    assert 'id="wh-event-filter"' in html and log["payment"].public_id in html
    r = admin_client.get(history)
    assert len(r.context["rows"]) == 3


def test_awkward_inputs_are_400_or_404_never_500(api, alice, make_endpoint, receiver):
    """On SQLite and PostgreSQL: NUL, non-ASCII, huge and wrongly typed values."""
    endpoint, _ = make_endpoint(receiver.url(), tenant=str(alice.pk))
    awkward = ["\x00", "evt_\x00", "évt_ü", "evt_" + "a" * 5000, "%", "' OR 1=1 --"]
    for value in awkward:
        for url, params in (
            (f"{API}/events/", {"event_type": value}),
            (f"{API}/events/", {"created_after": value}),
            (f"{API}/deliveries/", {"event": value}),
            (f"{API}/endpoints/{endpoint.pk}/deliveries/", {"event": value}),
            (f"{API}/endpoints/{endpoint.pk}/preview/", {"event_type": value}),
        ):
            r = api.get(url, params)
            assert r.status_code in (200, 400), (url, value, r.status_code)
            if r.status_code == 200 and "results" in r.json():
                assert r.json()["results"] == []
        assert api.get(f"{API}/events/{value}/").status_code == 404
    for value in (123, None, [], {"a": 1}, "\x00", "x" * 1000, "ünïcode"):
        r = api.patch(f"{API}/endpoints/{endpoint.pk}/", {"payload_format": value}, format="json")
        assert r.status_code == 400 and "payload_format" in r.json(), value
    endpoint.refresh_from_db()
    assert endpoint.payload_format == ""
