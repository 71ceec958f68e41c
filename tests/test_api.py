"""The REST API (webhooks_app.api): every resource, tenant isolation, the one-time secret,
input validation, the feature gate, throttling and cursor pagination."""

from __future__ import annotations

import base64
import json
from datetime import timedelta

import pytest
import standardwebhooks
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.test import override_settings
from django.utils import timezone
from rest_framework.test import APIClient

from tests.receiver import Reply
from webhooks_app import emit, engine, services, signing
from webhooks_app.models import Delivery, Endpoint, Subscription

API = "/api/webhooks"
SAFE_URL = "http://127.0.0.1:9/hook"  # allowed network in the test settings; never contacted


def webhooks_settings(**changes):
    return override_settings(WEBHOOKS_APP={**settings.WEBHOOKS_APP, **changes})


@pytest.fixture(autouse=True)
def _fresh_throttles():
    # Throttle history lives in the cache, which outlives each test's database rollback.
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def alice(db):
    return get_user_model().objects.create_user("alice", password="pw")


@pytest.fixture
def bob(db):
    return get_user_model().objects.create_user("bob", password="pw")


def tenant_of(user) -> str:
    # The default resolver: str(user.pk) unless the user has a webhooks_tenant.
    return str(user.pk)


@pytest.fixture
def client(alice):
    c = APIClient()
    c.force_authenticate(alice)
    return c


@pytest.fixture
def own(alice, make_endpoint):
    endpoint, secret = make_endpoint(SAFE_URL, tenant=tenant_of(alice), name="Mine")
    return endpoint


@pytest.fixture
def foreign(bob, make_endpoint):
    """Bob's endpoint with one failed delivery: what alice must never reach."""
    endpoint, _ = make_endpoint(SAFE_URL, tenant=tenant_of(bob), name="Bob's")
    emit("user.created", {"id": 1}, tenant=tenant_of(bob))
    Delivery.objects.filter(endpoint=endpoint).update(
        status=Delivery.Status.FAILED, attempts=1, last_attempt_at=timezone.now()
    )
    return endpoint


def snapshot() -> list:
    """Everything an API call could change, to assert that a refused call changed nothing."""
    return [
        list(Endpoint.objects.order_by("id").values()),
        list(Subscription.objects.order_by("id").values()),
        list(Delivery.objects.order_by("id").values()),
    ]


def create(client, **body):
    body.setdefault("url", SAFE_URL)
    body.setdefault("events", ["user.created"])
    return client.post(f"{API}/endpoints/", body, format="json")


# Endpoints ---------------------------------------------------------------------------------
def test_create_endpoint_returns_the_secret_once(client, alice):
    r = create(client, name="CRM", events={"user.created": True, "user.deleted": False})
    assert r.status_code == 201, r.content
    body = r.json()
    assert body["secret"].startswith("whsec_")
    assert body["name"] == "CRM"
    assert body["events"] == ["user.created"]
    endpoint = Endpoint.objects.get(pk=body["id"])
    assert endpoint.tenant == tenant_of(alice)
    assert endpoint.get_secret() == body["secret"]
    # The per-event toggle is stored as given.
    assert dict(endpoint.subscriptions.values_list("event_type", "enabled")) == {
        "user.created": True,
        "user.deleted": False,
    }


def test_create_with_own_secret_and_options(client):
    secret = "s" * 40
    r = create(
        client,
        secret=secret,
        method="GET",
        is_active=False,
        headers={"X-Api-Key": "k"},
        payload_extra={"source": "crm"},
        payload_fields=["id"],
        notify_email="ops@example.com",
        description="d",
    )
    assert r.status_code == 201, r.content
    body = r.json()
    assert body["secret"] == secret
    assert body["method"] == "GET" and body["is_active"] is False
    assert body["headers"] == {"X-Api-Key": "••••"}  # stored encrypted, shown masked
    assert Endpoint.objects.get(pk=body["id"]).get_headers() == {"X-Api-Key": "k"}
    assert body["payload_extra"] == {"source": "crm"} and body["payload_fields"] == ["id"]
    assert Endpoint.objects.get(pk=body["id"]).get_secret() == secret


def test_secret_never_appears_outside_create_and_rotate(client, own):
    r = create(client)
    secret, pk = r.json()["secret"], r.json()["id"]
    own_secret = own.get_secret()
    responses = [
        client.get(f"{API}/endpoints/"),
        client.get(f"{API}/endpoints/{pk}/"),
        client.patch(f"{API}/endpoints/{pk}/", {"name": "x"}, format="json"),
        client.put(
            f"{API}/endpoints/{pk}/", {"url": SAFE_URL, "events": ["user.created"]}, format="json"
        ),
        client.get(f"{API}/endpoints/{pk}/deliveries/"),
        client.get(f"{API}/deliveries/"),
        client.get(f"{API}/stats/"),
    ]
    for response in responses:
        assert response.status_code == 200, response.content
        text = response.content.decode()
        assert secret not in text and own_secret not in text
        assert "secret" not in json.dumps(response.json())


def test_list_retrieve_and_filters(client, own, make_endpoint, alice):
    other, _ = make_endpoint(
        "http://127.0.0.1:9/other", tenant=tenant_of(alice), name="Billing", is_active=False
    )
    r = client.get(f"{API}/endpoints/")
    assert r.status_code == 200
    assert [e["id"] for e in r.json()["results"]] == [other.pk, own.pk]
    assert client.get(f"{API}/endpoints/?is_active=false").json()["results"][0]["id"] == other.pk
    assert [e["id"] for e in client.get(f"{API}/endpoints/?is_active=true").json()["results"]] == [
        own.pk
    ]
    assert [e["id"] for e in client.get(f"{API}/endpoints/?search=bill").json()["results"]] == [
        other.pk
    ]
    assert [e["id"] for e in client.get(f"{API}/endpoints/?search=/other").json()["results"]] == [
        other.pk
    ]
    assert client.get(f"{API}/endpoints/?is_active=maybe").status_code == 400
    detail = client.get(f"{API}/endpoints/{own.pk}/").json()
    assert detail["name"] == "Mine" and detail["events"] == ["user.created"]
    assert set(detail) >= {"url", "method", "is_active", "disabled_reason", "created_at"}


def test_patch_changes_only_given_fields(client, own):
    r = client.patch(
        f"{API}/endpoints/{own.pk}/",
        {"description": "new", "events": ["user.created", "user.deleted"]},
        format="json",
    )
    assert r.status_code == 200, r.content
    assert r.json()["events"] == ["user.created", "user.deleted"]
    own.refresh_from_db()
    assert own.description == "new" and own.name == "Mine"


def test_put_replaces_the_endpoint(client, own):
    r = client.put(
        f"{API}/endpoints/{own.pk}/",
        {"url": "http://127.0.0.1:9/new", "events": ["user.deleted"]},
        format="json",
    )
    assert r.status_code == 200, r.content
    own.refresh_from_db()
    assert (
        own.url == "http://127.0.0.1:9/new"
        and own.name == ""
        and own.event_types == ["user.deleted"]
    )
    # PUT needs the whole endpoint.
    assert client.put(f"{API}/endpoints/{own.pk}/", {"name": "x"}, format="json").json().keys() >= {
        "url",
        "events",
    }


def test_delete_endpoint(client, own):
    assert client.delete(f"{API}/endpoints/{own.pk}/").status_code == 204
    assert not Endpoint.objects.filter(pk=own.pk).exists()
    assert client.get(f"{API}/endpoints/{own.pk}/").status_code == 404


def test_secret_cannot_be_edited(client, own):
    before = snapshot()
    r = client.patch(f"{API}/endpoints/{own.pk}/", {"secret": "x" * 40}, format="json")
    assert r.status_code == 400 and "rotate-secret" in r.json()["secret"][0]
    assert snapshot() == before


# Test, rotate, deliveries, replay ------------------------------------------------------------
def test_test_action_sends_a_verifiable_request(client, alice, receiver, make_endpoint):
    endpoint, secret = make_endpoint(receiver.url("/hook"), tenant=tenant_of(alice))
    r = client.post(f"{API}/endpoints/{endpoint.pk}/test/", format="json")
    assert r.status_code == 200, r.content
    result = r.json()
    assert result["ok"] is True and result["status_code"] == 200
    assert result["response_excerpt"] == '{"ok":true}' and result["error"] == ""
    (got,) = receiver.wait_for(1)
    assert got.header("X-Webhook-Event") == "webhook.test"
    signing.verify(secret, got.body, got.headers)
    assert standardwebhooks.Webhook(secret).verify(got.body, got.headers)["event"] == (
        "webhook.test"
    )
    assert json.loads(got.body)["id"] == result["event_id"]
    # Recorded in the history like any delivery.
    history = client.get(f"{API}/endpoints/{endpoint.pk}/deliveries/").json()["results"]
    assert [d["id"] for d in history] == [result["delivery"]]
    assert history[0]["status"] == "succeeded"


def test_test_action_reports_a_failing_receiver(client, alice, receiver, make_endpoint):
    endpoint, _ = make_endpoint(receiver.url("/hook"), tenant=tenant_of(alice))
    receiver.script(Reply(500, b"boom"))
    r = client.post(f"{API}/endpoints/{endpoint.pk}/test/", {"data": {"n": 1}}, format="json")
    assert r.status_code == 200
    assert r.json()["ok"] is False and r.json()["status_code"] == 500
    assert r.json()["response_excerpt"] == "boom"
    assert json.loads(receiver.wait_for(1)[0].body)["data"] == {"n": 1}


def test_rotate_secret_returns_the_new_secret_once(client, alice, receiver, make_endpoint):
    endpoint, old = make_endpoint(receiver.url("/hook"), tenant=tenant_of(alice))
    r = client.post(f"{API}/endpoints/{endpoint.pk}/rotate-secret/", {"grace": 3600}, format="json")
    assert r.status_code == 200, r.content
    new = r.json()["secret"]
    assert new != old and new.startswith("whsec_")
    assert r.json()["previous_secret_expires_at"] is not None
    endpoint.refresh_from_db()
    assert endpoint.signing_secrets() == [new, old]
    assert new not in client.get(f"{API}/endpoints/{endpoint.pk}/").content.decode()
    # During the grace period a receiver with either secret verifies.
    client.post(f"{API}/endpoints/{endpoint.pk}/test/", format="json")
    (got,) = receiver.wait_for(1)
    signing.verify(old, got.body, got.headers)
    signing.verify(new, got.body, got.headers)
    # Without grace the old secret stops at once.
    r = client.post(f"{API}/endpoints/{endpoint.pk}/rotate-secret/", format="json")
    assert r.status_code == 200 and r.json()["previous_secret_expires_at"] is None
    endpoint.refresh_from_db()
    assert endpoint.signing_secrets() == [r.json()["secret"]]


@pytest.mark.parametrize("grace", [-1, 7 * 24 * 3600 + 1, "60", 1.5, True, [1]])
def test_rotate_secret_rejects_bad_grace(client, own, grace):
    before = snapshot()
    r = client.post(f"{API}/endpoints/{own.pk}/rotate-secret/", {"grace": grace}, format="json")
    assert r.status_code == 400 and "grace" in r.json()
    assert snapshot() == before


def test_deliveries_list_detail_and_filters(client, alice, receiver, make_endpoint):
    tenant = tenant_of(alice)
    good, _ = make_endpoint(
        receiver.url("/ok"), events=["user.created", "user.deleted"], tenant=tenant
    )
    emit("user.created", {"id": 1}, tenant=tenant)
    engine.drain()
    receiver.script(Reply(410))
    emit("user.deleted", {"id": 1}, tenant=tenant)
    engine.drain()
    all_ = client.get(f"{API}/deliveries/").json()["results"]
    assert [d["event_type"] for d in all_] == ["user.deleted", "user.created"]
    assert [d["status"] for d in all_] == ["failed", "succeeded"]

    def ids(query: str, path: str = "/deliveries/") -> list[str]:
        r = client.get(f"{API}{path}?{query}")
        assert r.status_code == 200, r.content
        return [d["event_type"] for d in r.json()["results"]]

    assert ids("status=failed") == ["user.deleted"]
    assert ids("event_type=user.created") == ["user.created"]
    assert ids(f"endpoint={good.pk}") == ["user.deleted", "user.created"]
    assert ids("status=succeeded", f"/endpoints/{good.pk}/deliveries/") == ["user.created"]
    future = (timezone.now() + timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    past = (timezone.now() - timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    assert ids(f"created_after={future}") == []
    assert len(ids(f"created_after={past}&created_before={future}")) == 2
    assert ids(f"created_before={past}") == []
    for bad in ("status=lost", "created_after=yesterday", "endpoint=abc", "endpoint=0"):
        assert client.get(f"{API}/deliveries/?{bad}").status_code == 400, bad

    detail = client.get(f"{API}/deliveries/{all_[0]['id']}/").json()
    assert detail["status"] == "failed" and detail["last_status_code"] == 410
    assert [a["status_code"] for a in detail["attempt_log"]] == [410]
    assert json.loads(detail["payload"])["event"] == "user.deleted"
    assert detail["event_id"].startswith("evt_")


def test_replay_sends_the_same_event_again(client, alice, receiver, make_endpoint):
    tenant = tenant_of(alice)
    make_endpoint(receiver.url("/hook"), tenant=tenant)
    receiver.script(Reply(500))
    with webhooks_settings(RETRY_SCHEDULE=[0]):  # one attempt, then failed for good
        emit("user.created", {"id": 7}, tenant=tenant)
        engine.drain()
    delivery = Delivery.objects.get()
    assert delivery.status == Delivery.Status.FAILED
    r = client.post(f"{API}/deliveries/{delivery.pk}/replay/")
    assert r.status_code == 202, r.content
    assert r.json()["status"] == "pending"
    # A delivery in flight cannot be replayed again.
    assert client.post(f"{API}/deliveries/{delivery.pk}/replay/").status_code == 409
    engine.drain()
    first, second = receiver.wait_for(2)
    assert first.body == second.body and first.header("webhook-id") == second.header("webhook-id")
    detail = client.get(f"{API}/deliveries/{delivery.pk}/").json()
    assert detail["status"] == "succeeded" and len(detail["attempt_log"]) == 2


def test_replay_refuses_a_disabled_endpoint(client, alice, make_endpoint):
    tenant = tenant_of(alice)
    endpoint, _ = make_endpoint(SAFE_URL, tenant=tenant)
    emit("user.created", {}, tenant=tenant)
    Delivery.objects.update(status=Delivery.Status.FAILED)
    services.update_endpoint(endpoint, is_active=False)
    r = client.post(f"{API}/deliveries/{Delivery.objects.get().pk}/replay/")
    assert r.status_code == 409 and "disabled" in r.json()["detail"]


def test_event_types_and_stats(client, own, alice):
    types = {t["name"]: t for t in client.get(f"{API}/event-types/").json()}
    assert types["user.created"]["description"] == "A user signed up."
    assert types["user.created"]["example"]["username"] == "mike"
    assert types["user.created"]["subscribable"] is True
    assert types["webhook.test"]["subscribable"] is False
    emit("user.created", {}, tenant=tenant_of(alice))
    Delivery.objects.update(status=Delivery.Status.FAILED, last_attempt_at=timezone.now())
    stats = client.get(f"{API}/stats/").json()
    assert stats == {"total": 1, "active": 1, "inactive": 0, "event_types": 1, "failed_24h": 1}


# Pagination -------------------------------------------------------------------------------
def test_cursor_pagination_is_stable_under_inserts(client, alice, make_endpoint):
    tenant = tenant_of(alice)
    make_endpoint(SAFE_URL, tenant=tenant)
    for i in range(5):
        emit("user.created", {"i": i}, tenant=tenant)
    page1 = client.get(f"{API}/deliveries/?limit=2").json()
    assert [
        json.loads(Delivery.objects.get(pk=d["id"]).event.body)["data"]["i"]
        for d in page1["results"]
    ] == [4, 3]
    # New deliveries arrive between pages: the next page continues where the first ended.
    emit("user.created", {"i": 5}, tenant=tenant)
    emit("user.created", {"i": 6}, tenant=tenant)
    page2 = client.get(page1["next"]).json()
    page3 = client.get(page2["next"]).json()
    seen = [d["id"] for d in page1["results"] + page2["results"] + page3["results"]]
    assert len(seen) == len(set(seen)) == 5
    assert page3["next"] is None
    assert page1["previous"] is None and page2["previous"]
    # A newest-first list starts with the newest rows.
    assert len(client.get(f"{API}/deliveries/").json()["results"]) == 7


@pytest.mark.parametrize(
    "cursor", ["garbage", "cD1hYmM=", "cD0xJm89NQ==", "cD05OTk5OTk5OTk5OTk5OTk5OTk5OTk5"]
)
def test_bad_cursors_are_400(client, cursor):
    # cD1hYmM= is "p=abc"; cD0xJm89NQ== is "p=1&o=5"; the last an id beyond int64.
    r = client.get(f"{API}/deliveries/?cursor={cursor}")
    assert r.status_code == 400 and "cursor" in r.json()


# Validation: 400 per field, nothing stored ---------------------------------------------------
@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": "not a url"}, "url"),
        ({"url": "ftp://example.com/"}, "url"),
        ({"url": "http://10.0.0.1/hook"}, "url"),
        ({"url": "http://169.254.169.254/latest/meta-data"}, "url"),
        ({"secret": "too-short"}, "secret"),
        ({"events": ["no.such.event"]}, "events"),
        ({"events": ["webhook.test"]}, "events"),
        ({"events": []}, "events"),
        ({"events": "user.created"}, "events"),
        ({"events": {"user.created": "yes"}}, "events"),
        ({"name": 42}, "name"),
        ({"is_active": "yes"}, "is_active"),
        ({"is_active": 1}, "is_active"),
        ({"method": "DELETE"}, "method"),
        ({"headers": ["X-A"]}, "headers"),
        ({"headers": {"X-A": 1}}, "headers"),
        ({"headers": {"Content-Type": "text/plain"}}, "headers"),
        ({"payload_fields": "id"}, "payload_fields"),
        ({"payload_extra": {"id": 1}}, "payload_extra"),
        ({"payload_extra": {"a": ["ok", "n\x00l"]}}, "payload_extra"),
        ({"name": "n\x00l"}, "name"),
        ({"notify_email": "nope"}, "notify_email"),
        ({"url": None}, "url"),
        ({"colour": "blue"}, "colour"),
        ({"id": 5}, "id"),
        ({"disabled_reason": "x"}, "disabled_reason"),
    ],
)
def test_create_rejects_bad_input_per_field(client, body, field):
    before = snapshot()
    r = create(client, **body)
    assert r.status_code == 400, r.content
    errors = r.json()
    assert field in errors and errors[field], errors
    assert snapshot() == before


def test_http_refused_when_https_is_required(client):
    with webhooks_settings(ALLOW_HTTP=False):
        r = create(client, url="http://127.0.0.1:9/hook")
    assert r.status_code == 400
    assert "https" in r.json()["url"][0]
    assert not Endpoint.objects.exists()


def test_private_address_is_refused_without_sending(client, monkeypatch):
    from webhooks_app import transport

    def no_network(*args, **kwargs):
        raise AssertionError("validation must not send anything")

    monkeypatch.setattr(transport, "send", no_network)
    r = create(client, url="http://10.0.0.1/")
    assert r.status_code == 400 and "private" in r.json()["url"][0]
    assert not Endpoint.objects.exists()


def test_errors_for_several_fields_at_once(client):
    r = create(client, url="http://10.0.0.1/", events=["nope"], secret="short", extra=1)
    assert r.status_code == 400
    # Unknown fields are reported first, on their own, before anything is validated.
    assert set(r.json()) == {"extra"}
    r = create(client, url="http://10.0.0.1/", events=["nope"], secret="short")
    assert set(r.json()) == {"url", "events", "secret"}
    assert "at least 32" in r.json()["secret"][0]
    assert not Endpoint.objects.exists()


@pytest.mark.parametrize(
    "body",
    ["[1, 2]", '"text"', "7", "null", "true"],
)
def test_non_object_bodies_are_400(client, own, body):
    before = snapshot()
    for method, path in (
        ("post", "/endpoints/"),
        ("patch", f"/endpoints/{own.pk}/"),
        ("put", f"/endpoints/{own.pk}/"),
        ("post", f"/endpoints/{own.pk}/rotate-secret/"),
        ("post", f"/endpoints/{own.pk}/test/"),
    ):
        r = getattr(client, method)(f"{API}{path}", body, content_type="application/json")
        assert r.status_code == 400, (r.status_code, r.content)
    assert snapshot() == before


def test_malformed_json_and_form_bodies(client, own):
    r = client.post(f"{API}/endpoints/", "{nope", content_type="application/json")
    assert r.status_code == 400
    r = client.post(f"{API}/endpoints/", {"url": SAFE_URL, "events": "user.created"})
    assert r.status_code == 415  # JSON only: form encoding cannot carry strict types
    assert Endpoint.objects.count() == 1


def test_patch_rejects_bad_input_and_changes_nothing(client, own):
    before = snapshot()
    for body in (
        {"url": "http://10.0.0.1/"},
        {"events": ["nope"]},
        {"is_active": "false"},
        {"unknown": 1},
        {"created_at": "2020-01-01T00:00:00Z"},
        {"name": "ok", "events": []},
    ):
        r = client.patch(f"{API}/endpoints/{own.pk}/", body, format="json")
        assert r.status_code == 400, (body, r.content)
    assert snapshot() == before


def test_unknown_fields_on_actions(client, own):
    assert (
        client.post(f"{API}/endpoints/{own.pk}/test/", {"x": 1}, format="json").status_code == 400
    )
    r = client.post(f"{API}/endpoints/{own.pk}/rotate-secret/", {"secret": "x" * 40}, format="json")
    assert r.status_code == 400 and "secret" in r.json()


@pytest.mark.parametrize("pk", ["0", "-1", "abc", "99999999999999999999999", "1e3"])
def test_odd_ids_are_404(client, pk):
    assert client.get(f"{API}/endpoints/{pk}/").status_code == 404
    assert client.get(f"{API}/deliveries/{pk}/").status_code == 404


# Tenant isolation: one test per verb -----------------------------------------------------------
def foreign_delivery(foreign) -> Delivery:
    return Delivery.objects.get(endpoint=foreign)


def assert_not_found_and_unchanged(before, response):
    assert response.status_code == 404, response.content
    assert snapshot() == before
    # Not even the other tenant's data leaks into the error.
    assert "Bob" not in response.content.decode()


def test_isolation_get_endpoint(client, foreign):
    before = snapshot()
    assert_not_found_and_unchanged(before, client.get(f"{API}/endpoints/{foreign.pk}/"))


def test_isolation_list_endpoints_and_deliveries(client, foreign, own):
    assert [e["id"] for e in client.get(f"{API}/endpoints/").json()["results"]] == [own.pk]
    assert client.get(f"{API}/deliveries/").json()["results"] == []
    assert client.get(f"{API}/deliveries/?endpoint={foreign.pk}").json()["results"] == []
    assert client.get(f"{API}/stats/").json()["failed_24h"] == 0
    assert client.get(f"{API}/stats/").json()["total"] == 1


def test_isolation_patch_endpoint(client, foreign):
    before = snapshot()
    r = client.patch(f"{API}/endpoints/{foreign.pk}/", {"name": "pwned"}, format="json")
    assert_not_found_and_unchanged(before, r)


def test_isolation_put_endpoint(client, foreign):
    before = snapshot()
    body = {"url": SAFE_URL, "events": ["user.deleted"], "name": "pwned"}
    assert_not_found_and_unchanged(
        before, client.put(f"{API}/endpoints/{foreign.pk}/", body, format="json")
    )


def test_isolation_delete_endpoint(client, foreign):
    before = snapshot()
    assert_not_found_and_unchanged(before, client.delete(f"{API}/endpoints/{foreign.pk}/"))


def test_isolation_test_endpoint(client, bob, receiver, make_endpoint):
    endpoint, _ = make_endpoint(receiver.url("/hook"), tenant=tenant_of(bob))
    before = snapshot()
    assert_not_found_and_unchanged(
        before, client.post(f"{API}/endpoints/{endpoint.pk}/test/", format="json")
    )
    assert receiver.received == []


def test_isolation_rotate_secret(client, foreign):
    secret = foreign.get_secret()
    before = snapshot()
    assert_not_found_and_unchanged(
        before, client.post(f"{API}/endpoints/{foreign.pk}/rotate-secret/", format="json")
    )
    foreign.refresh_from_db()
    assert foreign.get_secret() == secret


def test_isolation_endpoint_deliveries(client, foreign):
    before = snapshot()
    assert_not_found_and_unchanged(before, client.get(f"{API}/endpoints/{foreign.pk}/deliveries/"))


def test_isolation_get_delivery(client, foreign):
    before = snapshot()
    delivery = foreign_delivery(foreign)
    assert_not_found_and_unchanged(before, client.get(f"{API}/deliveries/{delivery.pk}/"))


def test_isolation_replay_delivery(client, foreign):
    before = snapshot()
    delivery = foreign_delivery(foreign)
    assert_not_found_and_unchanged(before, client.post(f"{API}/deliveries/{delivery.pk}/replay/"))
    assert Delivery.objects.get(pk=delivery.pk).status == Delivery.Status.FAILED


def test_isolation_create_cannot_pick_a_tenant(client, alice, bob):
    r = create(client, tenant=tenant_of(bob))
    assert r.status_code == 400 and "tenant" in r.json()
    assert not Endpoint.objects.exists()
    r = create(client)
    assert Endpoint.objects.get(pk=r.json()["id"]).tenant == tenant_of(alice)


def test_a_users_webhooks_tenant_attribute_groups_users(alice, bob, make_endpoint):
    # Both users belong to the same organisation: they share its endpoints.
    endpoint, _ = make_endpoint(SAFE_URL, tenant="org_1")
    for user in (alice, bob):
        user.webhooks_tenant = "org_1"
        c = APIClient()
        c.force_authenticate(user)
        assert c.get(f"{API}/endpoints/{endpoint.pk}/").status_code == 200


def test_single_tenant_resolver_sees_the_default_tenant(client, make_endpoint):
    endpoint, _ = make_endpoint(SAFE_URL)  # tenant ""
    assert client.get(f"{API}/endpoints/{endpoint.pk}/").status_code == 404
    with webhooks_settings(TENANT_RESOLVER="webhooks_app.api.tenancy.single_tenant_resolver"):
        assert client.get(f"{API}/endpoints/{endpoint.pk}/").status_code == 200


# Authentication, feature gate, throttling -------------------------------------------------------
def test_anonymous_requests_are_refused(db, own):
    anonymous = APIClient()
    for r in (
        anonymous.get(f"{API}/endpoints/"),
        anonymous.get(f"{API}/stats/"),
        anonymous.post(
            f"{API}/endpoints/", {"url": SAFE_URL, "events": ["user.created"]}, format="json"
        ),
    ):
        # 403, not 401: DRF answers with the first authentication class (the demo's
        # SessionAuthentication), which sends no WWW-Authenticate challenge.
        assert r.status_code in (401, 403)
        assert "credentials were not provided" in r.json()["detail"]
    assert Endpoint.objects.count() == 1


def test_basic_auth_works(alice, own):
    c = APIClient()
    c.credentials(HTTP_AUTHORIZATION="Basic " + base64.b64encode(b"alice:pw").decode())
    assert c.get(f"{API}/endpoints/{own.pk}/").status_code == 200


def deny_all(request, tenant):
    return False


def allow_only_tenant_x(request, tenant):
    return tenant == "x"


def test_feature_gate_403_with_a_clear_message(client, own):
    with webhooks_settings(FEATURE_GATE="tests.test_api.deny_all"):
        before = snapshot()
        for r in (
            client.get(f"{API}/endpoints/"),
            client.get(f"{API}/endpoints/{own.pk}/"),
            create(client),
            client.post(f"{API}/endpoints/{own.pk}/test/", format="json"),
            client.get(f"{API}/event-types/"),
            client.get(f"{API}/stats/"),
        ):
            assert r.status_code == 403
            assert r.json()["detail"].startswith("Webhooks are not available on your plan")
        assert snapshot() == before
    with webhooks_settings(FEATURE_GATE="tests.test_api.allow_only_tenant_x"):
        assert client.get(f"{API}/endpoints/").status_code == 403
    assert client.get(f"{API}/endpoints/").status_code == 200


def no_tenant(request):
    return None


def test_a_user_without_tenant_gets_403(client):
    with webhooks_settings(TENANT_RESOLVER="tests.test_api.no_tenant"):
        r = client.get(f"{API}/endpoints/")
    assert r.status_code == 403 and "tenant" in r.json()["detail"]


def test_configured_permission_classes_narrow_access(client, alice):
    with webhooks_settings(API_PERMISSION_CLASSES=["rest_framework.permissions.IsAdminUser"]):
        assert client.get(f"{API}/endpoints/").status_code == 403
        alice.is_staff = True
        assert client.get(f"{API}/endpoints/").status_code == 200


def test_test_and_replay_are_throttled(client, alice, receiver, make_endpoint):
    tenant = tenant_of(alice)
    endpoint, _ = make_endpoint(receiver.url("/hook"), tenant=tenant)
    with webhooks_settings(API_THROTTLE_RATE="2/min"):
        codes = [
            client.post(f"{API}/endpoints/{endpoint.pk}/test/", format="json").status_code
            for _ in range(3)
        ]
        assert codes == [200, 200, 429]
        # The receiver saw only the two allowed tests.
        assert len(receiver.wait_for(2)) == 2
        # Other actions are not throttled, and replay has its own budget.
        assert client.get(f"{API}/endpoints/{endpoint.pk}/").status_code == 200
        delivery = Delivery.objects.filter(endpoint=endpoint).first()
        codes = [
            client.post(f"{API}/deliveries/{delivery.pk}/replay/").status_code for _ in range(3)
        ]
        assert codes[-1] == 429 and 429 not in codes[:2]
        assert "Retry-After" in client.post(f"{API}/endpoints/{endpoint.pk}/test/", format="json")
    # Another tenant has its own budget.
    with webhooks_settings(API_THROTTLE_RATE="2/min"):
        bob = get_user_model().objects.create_user("carol")
        other = APIClient()
        other.force_authenticate(bob)
        ep2, _ = make_endpoint(receiver.url("/hook"), tenant=tenant_of(bob))
        assert other.post(f"{API}/endpoints/{ep2.pk}/test/", format="json").status_code == 200


def test_test_action_reports_a_url_refused_at_send_time(client, own):
    # Created while http was allowed; the site has since required https.
    with webhooks_settings(ALLOW_HTTP=False):
        r = client.post(f"{API}/endpoints/{own.pk}/test/", format="json")
    assert r.status_code == 200, r.content
    assert r.json()["ok"] is False and "https" in r.json()["error"]


def test_configured_authentication_classes(alice, own):
    only_basic = ["rest_framework.authentication.BasicAuthentication"]
    with webhooks_settings(API_AUTHENTICATION_CLASSES=only_basic):
        r = APIClient().get(f"{API}/endpoints/")
        # Basic first: the 401 carries a challenge.
        assert r.status_code == 401 and r["WWW-Authenticate"].startswith("Basic")
        c = APIClient()
        c.credentials(HTTP_AUTHORIZATION="Basic " + base64.b64encode(b"alice:pw").decode())
        assert c.get(f"{API}/endpoints/{own.pk}/").status_code == 200


@pytest.mark.skipif(
    settings.DATABASES["default"]["ENGINE"] != "django.db.backends.sqlite3",
    reason="reads SQLite's query plan",
)
@pytest.mark.parametrize(
    "query",
    [
        "",
        "status=failed",
        "event_type=user.created",
        "created_after=2000-01-01T00:00:00Z",
        "endpoint={mine}",
    ],
)
def test_delivery_pages_use_an_index_not_a_sort(client, alice, bob, make_endpoint, query):
    """A page is one index range scan, however many rows the table holds."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from webhooks_app.models import Event

    mine, _ = make_endpoint(SAFE_URL, tenant=tenant_of(alice))
    theirs, _ = make_endpoint(SAFE_URL, tenant=tenant_of(bob))
    events = Event.objects.bulk_create(
        Event(event_type="user.created", body="{}", public_id=f"evt_bulk{i}") for i in range(2000)
    )
    Delivery.objects.bulk_create(
        Delivery(
            event=e,
            endpoint=ep,
            tenant=ep.tenant,
            event_type=e.event_type,
            status=Delivery.Status.FAILED if i % 5 == 0 else Delivery.Status.SUCCEEDED,
        )
        for i, e in enumerate(events)
        for ep in (mine, theirs)
    )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    query = query.format(mine=mine.pk)
    paths = [f"/deliveries/?limit=20&{query}"]
    if not query.startswith("endpoint="):  # the per-endpoint list has no endpoint filter
        paths.append(f"/endpoints/{mine.pk}/deliveries/?{query}")
    for path in paths:
        first = client.get(f"{API}{path}").json()
        with CaptureQueriesContext(connection) as queries:
            r = client.get(first["next"])
        assert r.status_code == 200 and r.json()["results"]
        (page_sql,) = [q["sql"] for q in queries if 'FROM "webhooks_app_delivery"' in q["sql"]]
        with connection.cursor() as cursor:
            cursor.execute("EXPLAIN QUERY PLAN " + page_sql)
            plan = " | ".join(str(row[-1]) for row in cursor.fetchall())
        assert "TEMP B-TREE" not in plan, plan
        assert "SEARCH webhooks_app_delivery USING INDEX webhooks_dlv_" in plan, plan


def test_lists_run_a_fixed_number_of_queries(
    client, alice, make_endpoint, django_assert_max_num_queries
):
    tenant = tenant_of(alice)
    for i in range(5):
        make_endpoint(f"http://127.0.0.1:9/{i}", tenant=tenant)
    for i in range(10):
        emit("user.created", {"i": i}, tenant=tenant)
    delivery = Delivery.objects.first()
    with django_assert_max_num_queries(2):  # endpoints + their subscriptions
        assert len(client.get(f"{API}/endpoints/").json()["results"]) == 5
    with django_assert_max_num_queries(1):
        assert len(client.get(f"{API}/deliveries/").json()["results"]) == 50
    with django_assert_max_num_queries(3):  # endpoint and its subscriptions, the page
        client.get(f"{API}/endpoints/{delivery.endpoint_id}/deliveries/")
    with django_assert_max_num_queries(2):  # delivery with event, attempts
        client.get(f"{API}/deliveries/{delivery.pk}/")


@pytest.mark.parametrize(
    "query",
    ["stauts=failed", "limit=0", "limit=201", "limit=abc", "limit=-1", "search=" + "x" * 201],
)
def test_bad_query_parameters_are_400(client, own, query):
    for path in ("/deliveries/", "/endpoints/", f"/endpoints/{own.pk}/deliveries/"):
        if query.startswith("search") and "deliveries" in path:
            continue
        r = client.get(f"{API}{path}?{query}")
        assert r.status_code == 400, (path, r.content)
        assert query.split("=")[0] in r.json()


def test_limit_within_range_is_honoured(client, alice, make_endpoint):
    make_endpoint(SAFE_URL, tenant=tenant_of(alice))
    for i in range(3):
        emit("user.created", {"i": i}, tenant=tenant_of(alice))
    assert len(client.get(f"{API}/deliveries/?limit=1").json()["results"]) == 1
    assert len(client.get(f"{API}/deliveries/?limit=200&format=json").json()["results"]) == 3


@pytest.mark.parametrize("depth", [33, 900, 100_000])
def test_deeply_nested_json_is_400(client, depth):
    nested = "[" * depth + "]" * depth
    body = (
        f'{{"url": "{SAFE_URL}", "events": ["user.created"], "payload_extra": {{"a": {nested}}}}}'
    )
    r = client.post(f"{API}/endpoints/", body, content_type="application/json")
    assert r.status_code == 400 and "nested deeper" in r.json()["detail"]
    assert not Endpoint.objects.exists()


def test_moderately_nested_json_is_fine(client):
    nested = {"a": {"b": {"c": [[1, 2], {"d": None}]}}}
    r = create(client, payload_extra={"x": nested})
    assert r.status_code == 201 and r.json()["payload_extra"] == {"x": nested}


def test_resolver_variants(alice, make_endpoint):
    from django.core.exceptions import ImproperlyConfigured

    from webhooks_app.api.tenancy import default_tenant_resolver, resolve_tenant

    class FakeRequest:
        def __init__(self, user):
            self.user = user

    assert default_tenant_resolver(FakeRequest(alice)) == str(alice.pk)
    alice.webhooks_tenant = lambda: "org_2"  # a method works as well as a value
    assert default_tenant_resolver(FakeRequest(alice)) == "org_2"
    from django.contrib.auth.models import AnonymousUser

    assert default_tenant_resolver(FakeRequest(AnonymousUser())) is None
    with webhooks_settings(TENANT_RESOLVER="tests.test_api.bad_resolver"):
        with pytest.raises(ImproperlyConfigured, match="TENANT_RESOLVER"):
            resolve_tenant(FakeRequest(alice))
    with webhooks_settings(TENANT_RESOLVER="tests.test_api.no_such_resolver"):
        with pytest.raises(ImproperlyConfigured, match="cannot be imported"):
            resolve_tenant(FakeRequest(alice))


def bad_resolver(request):
    return 42  # not text: refused loudly rather than used as a filter
