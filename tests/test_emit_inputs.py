"""Hostile inputs to emit(), touch() and the endpoint services: each is a ValidationError
naming the field, never a database error (NUL on PostgreSQL, a lone surrogate's failed
UTF-8 encode on every database, a 4300-digit integer's str()), and the caller's
transaction stays usable with nothing written."""

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.db import transaction

from webhooks_app import emit, services
from webhooks_app.models import Endpoint, Event, IdempotencyKey, InactivityTimer, Subscription
from webhooks_app.timers import touch

pytestmark = pytest.mark.django_db(transaction=True)


def refused(call, field: str | None = None) -> ValidationError:
    """``call()`` raises a ValidationError (on ``field``) inside a caller's transaction,
    which can still run a query afterwards; nothing is written."""
    with transaction.atomic():
        with pytest.raises(ValidationError) as info:
            call()
        Event.objects.count()  # the caller's transaction is not broken
    if field is not None:
        assert field in info.value.message_dict, info.value
    assert Event.objects.count() == 0
    assert IdempotencyKey.objects.count() == 0
    assert InactivityTimer.objects.count() == 0
    return info.value


def test_an_integer_too_long_for_str_is_refused_with_its_path(make_endpoint):
    make_endpoint("http://127.0.0.1:9/a")
    err = refused(lambda: emit("user.created", {"n": 10**5000}))
    assert "data.n" in err.messages[0]
    assert len(err.messages[0]) < 300  # not the 5000 digits


@pytest.mark.parametrize("tenant", ["a\x00b", "a\ud800", 5, "x" * 101])
def test_emit_refuses_a_tenant_the_database_cannot_hold(make_endpoint, tenant):
    make_endpoint("http://127.0.0.1:9/a")
    refused(lambda: emit("user.created", {}, tenant=tenant), "tenant")
    refused(lambda: emit("user.created", {}, tenant=tenant, idempotency_key="k"), "tenant")


def test_emit_refuses_an_idempotency_key_with_a_lone_surrogate(make_endpoint):
    make_endpoint("http://127.0.0.1:9/a")
    refused(lambda: emit("user.created", {}, idempotency_key="k\udc00"), "idempotency_key")


@pytest.mark.parametrize("tenant", ["a\x00b", "a\ud800"])
def test_touch_refuses_a_tenant_the_database_cannot_hold(tenant):
    refused(lambda: touch("k", "user.created", {}, tenant=tenant), "tenant")


def test_touch_refuses_a_key_with_a_lone_surrogate():
    refused(lambda: touch("k\ud800", "user.created", {}), "key")


def test_emit_and_touch_rolled_back_with_the_caller_leave_nothing(make_endpoint):
    make_endpoint("http://127.0.0.1:9/a")
    with pytest.raises(RuntimeError), transaction.atomic():
        emit("user.created", {}, idempotency_key="k1")
        touch("t1", "user.created", {})
        raise RuntimeError
    assert (Event.objects.count(), IdempotencyKey.objects.count()) == (0, 0)
    assert InactivityTimer.objects.count() == 0
    assert emit("user.created", {}, idempotency_key="k1").pk is not None  # key is free


ENDPOINT_FIELDS = {
    "name_nul": ("name", "a\x00"),
    "name_surrogate": ("name", "a\ud800"),
    "description_nul": ("description", "a\x00"),
    "fields_surrogate": ("payload_fields", ["a\ud800"]),
    "filter_value_surrogate": ("payload_filter", {"data.a": "\ud800"}),
    "filter_path_surrogate": ("payload_filter", {"data.\ud800": 1}),
    "filter_path_nul": ("payload_filter", {"data.a\x00": 1}),
    "events_nul": ("events", ["a\x00.*"]),
    "events_surrogate": ("events", ["a\ud800.*"]),
    "email_too_long": ("notify_email", "a" * 60 + "@" + ("b" * 60 + ".") * 4 + "com"),
}


@pytest.mark.parametrize("case", sorted(ENDPOINT_FIELDS))
def test_endpoint_fields_the_database_cannot_hold_are_field_errors(case):
    field, value = ENDPOINT_FIELDS[case]
    values = {"url": "http://127.0.0.1:9/a", "events": ["user.created"], field: value}
    refused(lambda: services.create_endpoint(**values), field)
    assert Endpoint.objects.count() == 0 and Subscription.objects.count() == 0

    endpoint, _ = services.create_endpoint(url="http://127.0.0.1:9/b", events=["user.created"])
    refused(lambda: services.update_endpoint(endpoint, **{field: value}), field)
    endpoint.refresh_from_db()
    assert endpoint.url == "http://127.0.0.1:9/b"
    assert list(endpoint.subscriptions.values_list("event_type", flat=True)) == ["user.created"]


@pytest.mark.parametrize("tenant", ["a\x00b", "a\ud800"])
def test_create_endpoint_refuses_a_tenant_the_database_cannot_hold(tenant):
    refused(
        lambda: services.create_endpoint(
            url="http://127.0.0.1:9/a", events=["user.created"], tenant=tenant
        ),
        "tenant",
    )
    assert Endpoint.objects.count() == 0


@pytest.mark.django_db
def test_an_event_type_that_is_not_text_is_a_validation_error():
    for bad in (["user.created"], {"a": 1}, None, 42, "user.created\x00"):
        with pytest.raises(ValidationError, match="Unknown event type"):
            emit(bad, {})


def _deep(levels: int) -> dict:
    value: dict = {}
    for _ in range(levels):
        value = {"a": value}
    return value


@pytest.mark.parametrize(
    "data",
    [{"a": "x\x00y"}, {"a": float("nan")}, {"a": "\ud800"}, {"a": 2**60}, _deep(40),
     {"a": "x" * (300 * 1024)}],
    ids=["nul", "nan", "surrogate", "large_int", "deep", "huge"],
)
def test_an_unrouted_emit_refuses_what_a_routed_one_refuses(make_endpoint, data):
    """The unrouted path returns early, but after the data has been checked."""
    make_endpoint("http://127.0.0.1:9/a")  # user.created only
    refused(lambda: emit("user.deleted", data), None)
    refused(lambda: emit("user.created", data), None)


def test_an_unrouted_emit_returns_the_body_a_routed_one_would_send(make_endpoint):
    make_endpoint("http://127.0.0.1:9/a")
    data = {
        "name": "Mïke ✓ 雪",
        "at": datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
        "amount": Decimal("1.50"),
        "text": "é" * 50_000,
    }
    unrouted = emit("user.deleted", data)
    routed = emit("user.created", data)
    assert unrouted.pk is None and routed.pk is not None
    assert Event.objects.count() == 1  # only the routed one is written
    one, two = json.loads(unrouted.body), json.loads(routed.body)
    assert one["data"] == two["data"] == {
        "name": "Mïke ✓ 雪",
        "at": "2026-01-02T03:04:05.678Z",
        "amount": "1.50",
        "text": "é" * 50_000,
    }
    assert one["event"] == "user.deleted" and one["id"].startswith("evt_")
    at = unrouted.created_at.astimezone(UTC)
    assert one["timestamp"] == f"{at:%Y-%m-%dT%H:%M:%S}.{at.microsecond // 1000:03d}Z"
    assert unrouted.data == Event.objects.get().data
