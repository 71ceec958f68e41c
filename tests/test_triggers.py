"""Issue 10, triggers and subscriptions: wildcards, payload filters, the event catalogue
(schemas, deprecation), per-type test events and inactivity timers (touch), each checked
on the bytes a real receiver got."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest
import standardwebhooks
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.db import transaction
from django.test import override_settings
from django.utils import timezone

from webhooks_app import cancel_touch, emit, engine, events, matching, services, timers, touch
from webhooks_app.models import Delivery, Event, InactivityTimer

pytestmark = pytest.mark.django_db(transaction=True)

SCHEMA = {
    "type": "object",
    "required": ["amount", "currency"],
    "properties": {
        "amount": {"type": "integer", "minimum": 0},
        "currency": {"type": "string", "enum": ["usd", "eur"]},
        "items": {"type": "array", "items": {"type": "object", "required": ["sku"]}},
    },
}
CATALOGUE = {
    **settings.WEBHOOKS_APP["EVENT_TYPES"],
    "invoice.paid": {
        "description": "An invoice was paid.",
        "group": "Billing",
        "example": {"amount": 4200, "currency": "eur", "plan": "pro"},
        "schema": SCHEMA,
    },
    "user.legacy_signup": {"description": "Old signup event.", "deprecated": True},
}


def webhooks(**changes):
    return override_settings(WEBHOOKS_APP={**settings.WEBHOOKS_APP, **changes})


def sent(*args, **kwargs) -> int:
    """emit() and count the deliveries it wrote (an unrouted event is not even stored)."""
    event = emit(*args, **kwargs)
    return Delivery.objects.filter(event__public_id=event.public_id).count()


# Wildcards ---------------------------------------------------------------------------
def test_candidate_names_and_patterns():
    assert matching.candidate_names("a.b.c") == ["a.b.c", "a.b.*", "a.*", "*"]
    assert matching.candidate_names("plain") == ["plain", "*"]
    assert matching.pattern_matches("user.*", "user.profile.updated")
    assert not matching.pattern_matches("user.*", "username.changed")
    for bad in ["user*", "*.user", "us*er.*", "user..*", ".*", "a b.*", "**"]:
        with pytest.raises(ValidationError):
            matching.validate_pattern(bad)


def test_wildcards_receive_matching_types_including_ones_declared_later(receiver, make_endpoint):
    make_endpoint(receiver.url("/user"), events=["user.*"])
    make_endpoint(receiver.url("/all"), events=["*"])
    make_endpoint(receiver.url("/exact"), events=["payment.succeeded"])
    emit("user.created", {"id": 1})
    emit("payment.succeeded", {"amount": 1})
    with webhooks(EVENT_TYPES={**CATALOGUE, "user.profile.renamed": {}}):
        emit("user.profile.renamed", {"id": 1})  # declared after the subscriptions
    assert engine.drain() == 6
    by_path: dict[str, list[str]] = {}
    for r in receiver.wait_for(6):
        by_path.setdefault(r.path, []).append(json.loads(r.body)["event"])
    assert sorted(by_path["/user"]) == ["user.created", "user.profile.renamed"]
    assert sorted(by_path["/all"]) == ["payment.succeeded", "user.created", "user.profile.renamed"]
    assert by_path["/exact"] == ["payment.succeeded"]


def test_one_delivery_per_endpoint_and_the_most_specific_subscription_decides(
    receiver, make_endpoint
):
    endpoint, _ = make_endpoint(
        receiver.url(), events={"*": True, "user.*": True, "user.deleted": False}
    )
    assert sent("user.created", {}) == 1  # three rows matched, one delivery
    assert sent("user.deleted", {}) == 0  # paused by its exact toggle
    assert sent("payment.succeeded", {}) == 1
    services.update_endpoint(endpoint, events={"*": False, "user.*": True})
    assert sent("payment.succeeded", {}) == 0
    assert sent("user.deleted", {}) == 1


def test_wildcards_never_get_the_builtin_test_event(make_endpoint):
    make_endpoint("http://127.0.0.1:9/", events=["*", "webhook.*"])
    assert sent(events.TEST_EVENT, {}) == 0


@pytest.mark.parametrize("bad", ["user*", "*.user", "us*er", "webhook.test", "no.such"])
def test_bad_subscription_names_are_field_errors(bad):
    with pytest.raises(ValidationError) as exc:
        services.create_endpoint(url="http://127.0.0.1:9/", events=[bad])
    assert list(exc.value.error_dict) == ["events"]
    assert bad in " ".join(exc.value.messages)


# Payload filters ---------------------------------------------------------------------
PRO_100 = {"data.amount": {"$gte": 100}, "data.plan": {"$in": ["pro", "team"]}}


@pytest.mark.parametrize(
    ("flt", "data", "expected"),
    [
        (PRO_100, {"amount": 100, "plan": "pro"}, True),
        (PRO_100, {"amount": 99.5, "plan": "pro"}, False),
        (PRO_100, {"amount": 500, "plan": "free"}, False),
        (PRO_100, {"plan": "pro"}, False),
        (PRO_100, {"amount": "500", "plan": "pro"}, False),  # text is not a number
        ({"data.plan": "pro"}, {"plan": "pro"}, True),  # a bare value is $eq
        ({"data.plan": {"$neq": "pro"}}, {}, True),  # missing is "not equal"
        ({"data.plan": {"$nin": ["pro"]}}, {"plan": "free"}, True),
        ({"data.flag": True}, {"flag": 1}, False),  # true is not 1
        ({"data.n": 1}, {"n": 1.0}, True),
        ({"data.customer.email": {"$exists": True}}, {"customer": {"email": None}}, True),
        ({"data.customer.email": {"$exists": False}}, {"customer": {}}, True),
        ({"data.items.0.sku": "A"}, {"items": [{"sku": "A"}]}, True),
        ({"data.name": {"$gt": "m", "$lte": "z"}}, {"name": "mike"}, True),
        ({"data.meta": {"a": [1, 2]}}, {"meta": {"a": [1, 2]}}, True),
        ({"$or": [{"data.a": 1}, {"data.b": {"$lt": 0}}]}, {"b": -1}, True),
        ({"$or": [{"data.a": 1}, {"data.b": {"$lt": 0}}]}, {"b": 1}, False),
        ({"$and": [{"data.a": {"$gt": 0}}, {"data.a": {"$lt": 10}}]}, {"a": 5}, True),
        ({"event": "user.created", "tenant": ""}, {}, True),
        ({"event": {"$in": ["user.deleted"]}}, {}, False),
    ],
)
def test_filter_semantics(flt, data, expected):
    cleaned = matching.clean_filter(flt)
    assert matching.matches(cleaned, {"event": "user.created", "tenant": "", "data": data}) is (
        expected
    )


@pytest.mark.parametrize(
    ("flt", "named"),
    [
        ({"data.amount": {"$regex": "1"}}, "$regex"),
        ({"data.amount": {"$gte": [1]}}, "data.amount.$gte"),
        ({"data.amount": {"$gte": True}}, "data.amount.$gte"),
        ({"data.amount": {"$in": 5}}, "data.amount.$in"),
        ({"data.amount": {"$exists": "yes"}}, "data.amount.$exists"),
        ({"amount": 1}, "amount"),
        ({"data..amount": 1}, "data..amount"),
        ({"body.amount": 1}, "body.amount"),
        ({"$where": "1"}, "$where"),
        ({"$or": []}, "$or"),
        ({"$or": [{"data.a": 1}, {"data.b": {"$bad": 1}}]}, "$bad"),
        ({"$and": "x"}, "$and"),
        ({"data.a": {"$eq": 1, "plain": 2}}, "data.a"),
        ({"data.a": float("nan")}, "data.a"),
        ({"data.a": "n\x00l"}, "data.a"),
        ([1], "filter"),
    ],
)
def test_bad_filters_are_field_errors_naming_the_operator_or_path(flt, named):
    with pytest.raises(ValidationError) as exc:
        services.create_endpoint(
            url="http://127.0.0.1:9/", events=["payment.succeeded"], payload_filter=flt
        )
    assert list(exc.value.error_dict) == ["payload_filter"]
    assert named in " ".join(exc.value.messages)


def test_deeply_nested_and_huge_filters_are_refused():
    deep: dict = {"data.a": 1}
    for _ in range(20):
        deep = {"$or": [deep]}
    with pytest.raises(ValidationError, match="nested too deeply"):
        matching.clean_filter(deep)
    with pytest.raises(ValidationError, match="too large"):
        matching.clean_filter({"data.a": {"$in": ["x" * 100] * 200}})


def test_filter_decides_at_emit_time_and_non_matching_events_write_no_delivery(
    receiver, make_endpoint
):
    filtered, _ = make_endpoint(
        receiver.url("/big"), events=["payment.*"], payload_filter=PRO_100
    )
    make_endpoint(receiver.url("/all"), events=["payment.succeeded"])
    small = emit("payment.succeeded", {"amount": 5, "plan": "pro"})
    big = emit("payment.succeeded", {"amount": 150, "plan": "team", "note": "ünïcode"})
    assert [d.endpoint_id for d in small.deliveries.all()] != [filtered.pk]
    assert small.deliveries.filter(endpoint=filtered).count() == 0
    assert big.deliveries.filter(endpoint=filtered).count() == 1
    assert engine.drain() == 3
    reqs = receiver.wait_for(3)
    to_big = [r for r in reqs if r.path == "/big"]
    assert len(to_big) == 1 and to_big[0].body == big.body.encode()
    assert Event.objects.filter(pk=small.pk).exists()  # routed to /all


def test_filter_is_kept_changed_and_cleared(make_endpoint):
    endpoint, _ = make_endpoint("http://127.0.0.1:9/", payload_filter={"data.id": 1})
    endpoint.refresh_from_db()
    assert endpoint.payload_filter == {"data.id": 1}
    assert sent("user.created", {"id": 2}) == 0
    services.update_endpoint(endpoint, payload_filter={})
    assert sent("user.created", {"id": 2}) == 1


# Catalogue: schema, groups, deprecation ------------------------------------------------
@webhooks(EVENT_TYPES=CATALOGUE, VALIDATE_PAYLOADS=True)
def test_emit_validates_data_against_the_schema_naming_the_path(make_endpoint):
    make_endpoint("http://127.0.0.1:9/", events=["invoice.paid"])
    emit("invoice.paid", {"amount": 1, "currency": "usd"})
    cases = [
        ({"amount": -1, "currency": "usd"}, "data.amount"),
        ({"amount": 1, "currency": "gbp"}, "data.currency"),
        ({"amount": 1, "currency": "usd", "items": [{"sku": "a"}, {}]}, "data.items[1]"),
        ({"currency": "usd"}, "data"),
    ]
    for data, path in cases:
        before = (Event.objects.count(), Delivery.objects.count())
        with pytest.raises(ValidationError) as exc:
            emit("invoice.paid", data)
        assert f"at {path}:" in exc.value.messages[0], exc.value.messages
        assert (Event.objects.count(), Delivery.objects.count()) == before


def test_schema_validation_follows_debug_by_default():
    with webhooks(EVENT_TYPES=CATALOGUE), override_settings(DEBUG=False):
        emit("invoice.paid", {"amount": "not a number", "currency": "usd"})
    with webhooks(EVENT_TYPES=CATALOGUE), override_settings(DEBUG=True):
        with pytest.raises(ValidationError, match="data.amount"):
            emit("invoice.paid", {"amount": "not a number", "currency": "usd"})
    with webhooks(EVENT_TYPES=CATALOGUE, VALIDATE_PAYLOADS=False), override_settings(DEBUG=True):
        emit("invoice.paid", {"amount": "not a number", "currency": "usd"})


def test_register_event_type_checks_the_schema():
    with pytest.raises(ImproperlyConfigured, match="not a valid JSON Schema"):
        events.register_event_type("bad.schema", schema={"type": "no-such-type"})
    assert "bad.schema" not in events.event_types()


def test_catalogue_entries_have_group_schema_and_deprecation():
    with webhooks(EVENT_TYPES=CATALOGUE):
        types = events.event_types()
        assert types["invoice.paid"]["group"] == "Billing"
        assert types["invoice.paid"]["schema"] == SCHEMA
        assert types["user.created"]["group"] == "user"  # default: the name's prefix
        assert types["user.legacy_signup"]["deprecated"] is True
        offered = events.subscribable_event_types()
        assert "user.legacy_signup" not in offered and events.TEST_EVENT not in offered


def test_deprecated_types_are_delivered_but_not_offered_for_new_subscriptions(
    receiver, make_endpoint
):
    with webhooks(EVENT_TYPES={**CATALOGUE, "user.legacy_signup": {}}):
        old, _ = make_endpoint(receiver.url(), events=["user.legacy_signup"])
    with webhooks(EVENT_TYPES=CATALOGUE):
        with pytest.raises(ValidationError) as exc:
            services.create_endpoint(url=receiver.url(), events=["user.legacy_signup"])
        assert "deprecated" in exc.value.message_dict["events"][0]
        other, _ = make_endpoint(receiver.url(), events=["user.created"])
        with pytest.raises(ValidationError, match="deprecated"):
            services.update_endpoint(other, events=["user.created", "user.legacy_signup"])
        # The existing subscription keeps working and survives an edit.
        services.update_endpoint(old, events=["user.legacy_signup", "user.created"], name="x")
        event = emit("user.legacy_signup", {"id": 7})
        assert engine.drain() == 1
    (req,) = receiver.wait_for(1)
    assert req.body == event.body.encode()


# Test events per type ----------------------------------------------------------------
def test_send_test_per_type_sends_the_example_marked_as_a_test(receiver, make_endpoint):
    endpoint, secret = make_endpoint(receiver.url(), events=["payment.succeeded"])
    with webhooks(EVENT_TYPES=CATALOGUE, VALIDATE_PAYLOADS=True):
        result = services.send_test(endpoint, event_type="invoice.paid")
    assert result.ok
    (req,) = receiver.wait_for(1)
    standardwebhooks.Webhook(secret).verify(req.body, req.headers)
    assert req.header("webhook-test") == "true"
    assert req.header("X-Webhook-Event") == "invoice.paid"
    body = json.loads(req.body)
    assert body["event"] == "invoice.paid" and body["test"] is True
    assert body["data"] == {"amount": 4200, "currency": "eur", "plan": "pro"}
    assert result.delivery.event_type == "invoice.paid" and result.delivery.event.is_test
    assert result.delivery.next_attempt_at is None  # never claimable by a worker
    # The built-in webhook.test is still the default, and is marked too.
    services.send_test(endpoint)
    default = receiver.wait_for(2)[1]
    assert json.loads(default.body)["event"] == "webhook.test"
    assert default.header("webhook-test") == "true" and json.loads(default.body)["test"] is True


def test_emitted_events_are_not_marked_as_tests(receiver, make_endpoint):
    make_endpoint(receiver.url())
    emit("user.created", {})
    engine.drain()
    (req,) = receiver.wait_for(1)
    assert req.header("webhook-test") is None and "test" not in json.loads(req.body)


def test_send_test_refuses_unknown_types_and_invalid_data(receiver, make_endpoint):
    endpoint, _ = make_endpoint(receiver.url())
    with pytest.raises(ValidationError) as exc:
        services.send_test(endpoint, event_type="no.such")
    assert list(exc.value.error_dict) == ["event_type"]
    with webhooks(EVENT_TYPES=CATALOGUE, VALIDATE_PAYLOADS=True):
        with pytest.raises(ValidationError) as exc:
            services.send_test(endpoint, {"amount": -5}, event_type="invoice.paid")
    assert list(exc.value.error_dict) == ["data"]
    assert not receiver.received and not Delivery.objects.exists()


def test_replayed_test_delivery_is_still_marked(receiver, make_endpoint):
    endpoint, _ = make_endpoint(receiver.url())
    result = services.send_test(endpoint, event_type="user.created")
    services.replay(result.delivery)
    engine.drain()
    first, second = receiver.wait_for(2)
    assert first.body == second.body and second.header("webhook-test") == "true"


# Inactivity timers (touch) -------------------------------------------------------------
def _expire(key: str) -> None:
    InactivityTimer.objects.filter(key=key).update(due_at=timezone.now() - timedelta(seconds=1))


def test_touch_pushes_the_deadline_back_and_replaces_the_data(receiver, make_endpoint):
    make_endpoint(receiver.url(), events=["conversation.ended"])
    first = touch("conv:1", "conversation.ended", {"messages": 1}, idle=timedelta(seconds=60))
    time.sleep(0.01)
    touch("conv:1", "conversation.ended", {"messages": 2}, idle=timedelta(seconds=60))
    (timer,) = InactivityTimer.objects.all()
    assert timer.data == {"messages": 2} and timer.due_at > first.due_at
    assert timer.created_at == first.created_at  # the cycle's start is kept
    assert timers.fire_due() == 0  # not idle yet
    _expire("conv:1")
    assert timers.fire_due() == 1
    assert timers.fire_due() == 0  # once
    assert not InactivityTimer.objects.exists()
    engine.drain()
    (req,) = receiver.wait_for(1)
    body = json.loads(req.body)
    assert body["event"] == "conversation.ended" and body["data"] == {"messages": 2}
    # A later touch starts a new cycle.
    touch("conv:1", "conversation.ended", {"messages": 3}, idle=5)
    _expire("conv:1")
    assert timers.fire_due() == 1


def test_touch_is_transactional_and_cancel_drops_it(make_endpoint):
    make_endpoint("http://127.0.0.1:9/", events=["conversation.ended"])
    with pytest.raises(RuntimeError), transaction.atomic():
        touch("conv:rolled", "conversation.ended", {})
        raise RuntimeError
    assert not InactivityTimer.objects.exists()
    touch("conv:2", "conversation.ended", {}, idle=1, tenant="acme")
    assert InactivityTimer.objects.get().tenant == "acme"
    assert cancel_touch("conv:2") is True and cancel_touch("conv:2") is False
    _expire("conv:2")
    assert timers.fire_due() == 0 and not Event.objects.exists()


def test_touch_fires_for_the_timers_tenant(make_endpoint):
    endpoint, _ = make_endpoint("http://127.0.0.1:9/", events=["conversation.ended"], tenant="t1")
    touch("conv:t", "conversation.ended", {"x": 1}, tenant="t1", idle=1)
    _expire("conv:t")
    timers.fire_due()
    (event,) = Event.objects.all()
    assert event.tenant == "t1" and event.deliveries.get().endpoint == endpoint


@pytest.mark.parametrize(
    ("args", "kwargs", "field"),
    [
        (("", "conversation.ended"), {}, "key"),
        (("k" * 201, "conversation.ended"), {}, "key"),
        (("a\x00b", "conversation.ended"), {}, "key"),
        (("k", "conversation.ended"), {"idle": timedelta(0)}, "idle"),
        (("k", "conversation.ended"), {"idle": float("nan")}, "idle"),
        (("k", "conversation.ended"), {"idle": "30"}, "idle"),
        (("k", "conversation.ended"), {"tenant": 5}, "tenant"),
        (("k", "webhook.test"), {}, "event_type"),
    ],
)
def test_touch_rejects_bad_input(args, kwargs, field):
    with pytest.raises(ValidationError) as exc:
        touch(*args, **kwargs)
    assert field in exc.value.message_dict
    assert not InactivityTimer.objects.exists()


def test_touch_rejects_unknown_types_and_non_json_data():
    with pytest.raises(ValidationError, match="Unknown event type"):
        touch("k", "no.such")
    with pytest.raises(ValidationError, match="JSON"):
        touch("k", "conversation.ended", {"x": object()})
    with pytest.raises(ValidationError, match="NUL"):
        touch("k", "conversation.ended", {"x": "a\x00b"})
    assert not InactivityTimer.objects.exists()


def test_a_timer_that_can_no_longer_fire_is_dropped_not_stuck(make_endpoint, caplog):
    make_endpoint("http://127.0.0.1:9/", events=["*"])
    with webhooks(EVENT_TYPES={**CATALOGUE, "gone.soon": {}}):
        touch("k1", "gone.soon", {}, idle=1)
    touch("k2", "conversation.ended", {"ok": True}, idle=1)
    _expire("k1")
    _expire("k2")
    assert timers.fire_due() == 2
    assert not InactivityTimer.objects.exists()
    assert list(Event.objects.values_list("event_type", flat=True)) == ["conversation.ended"]
    assert "gone.soon" in caplog.text


def test_a_crash_while_firing_leaves_the_timer_due_and_emits_nothing(make_endpoint, monkeypatch):
    make_endpoint("http://127.0.0.1:9/", events=["conversation.ended"])
    touch("k", "conversation.ended", {"n": 1}, idle=1)
    _expire("k")
    from webhooks_app import tasks

    def crash(*args, **kwargs):  # after the Event and Delivery rows were written
        raise RuntimeError("worker died")

    with monkeypatch.context() as m:
        m.setattr(tasks, "wake_workers_on_commit", crash)
        with pytest.raises(RuntimeError):
            timers.fire_due()
    assert InactivityTimer.objects.count() == 1 and not Event.objects.exists()
    assert not Delivery.objects.exists()
    assert timers.fire_due() == 1
    assert Event.objects.get().deliveries.count() == 1 and not InactivityTimer.objects.exists()


# Through a real cluster ----------------------------------------------------------------
def _wait_quiet(receiver, count: int, seconds: float) -> None:
    """No request beyond ``count`` arrives within ``seconds``."""
    time.sleep(seconds)
    assert len(receiver.received) == count, [json.loads(r.body)["data"] for r in receiver.received]


@pytest.mark.cluster
def test_one_inactivity_event_per_idle_period_across_a_sigkilled_worker(
    receiver, make_endpoint, start_cluster
):
    import os
    import signal

    _, secret = make_endpoint(receiver.url(), events=["conversation.ended"])
    cluster = start_cluster()
    idle = timedelta(seconds=2)

    # Cycle 1: activity keeps pushing the deadline; one event, with the last data.
    touch("conv:42", "conversation.ended", {"messages": 1}, idle=idle)
    time.sleep(1.0)
    last = touch("conv:42", "conversation.ended", {"messages": 2}, idle=idle)
    (req,) = receiver.wait_for(1, timeout=10)
    late = req.at - last.due_at.timestamp()
    assert 0 <= late <= 3, late  # never early, within a few seconds of the deadline
    standardwebhooks.Webhook(secret).verify(req.body, req.headers)
    assert json.loads(req.body)["data"] == {"messages": 2}
    _wait_quiet(receiver, 1, 2.5)

    # Cycle 2: the whole cluster is SIGKILLed while the timer is pending and stays down
    # past the deadline; a new cluster emits it once.
    touch("conv:42", "conversation.ended", {"messages": 3}, idle=idle)
    cluster.kill()
    time.sleep(2.5)
    assert len(receiver.received) == 1
    cluster = start_cluster()
    reqs = receiver.wait_for(2, timeout=15)
    assert json.loads(reqs[1].body)["data"] == {"messages": 3}
    _wait_quiet(receiver, 2, 2.5)

    # Cycle 3: one worker is SIGKILLed mid-cycle; the guard respawns it, one event.
    touch("conv:42", "conversation.ended", {"messages": 4}, idle=idle)
    os.kill(cluster.worker_pids()[0], signal.SIGKILL)
    reqs = receiver.wait_for(3, timeout=15)
    assert json.loads(reqs[2].body)["data"] == {"messages": 4}
    _wait_quiet(receiver, 3, 2.5)
    ids = {r.header("webhook-id") for r in reqs}
    assert len(ids) == 3  # three cycles, three events
    assert Event.objects.filter(event_type="conversation.ended").count() == 3
    assert not InactivityTimer.objects.exists()


def test_system_checks_refuse_star_names_and_bad_schemas():
    from webhooks_app.checks import check_settings

    with webhooks(EVENT_TYPES={"user.*": {}, "x.y": {"schema": {"type": 5}}}):
        ids = [p.id for p in check_settings()]
    assert "webhooks_app.E006" in ids and "webhooks_app.E021" in ids
    with webhooks(EVENT_TYPES=CATALOGUE):
        found = [p.id for p in check_settings()]
    assert "webhooks_app.E006" not in found and "webhooks_app.E021" not in found


# Admin ---------------------------------------------------------------------------------
def _admin_url(name: str, *args) -> str:
    from django.urls import reverse

    return reverse(f"admin:webhooks_app_endpoint_{name}", args=args)


def _admin_form(receiver_url: str, **overrides) -> dict:
    data = {
        "name": "Filtered",
        "description": "",
        "url": receiver_url,
        "method": "POST",
        "is_active": "on",
        "events": ["user.*", "payment.succeeded"],
        "events_toggles": "1",
        "events_enabled": ["user.*", "payment.succeeded"],
        "payload_filter": json.dumps(PRO_100),
        "payload_fields": "",
        "notify_email": "",
        "secret": "",
        "tenant": "",
    }
    data.update(overrides)
    return data


def test_admin_creates_wildcard_and_filter_subscriptions_end_to_end(admin_client, receiver):
    page = admin_client.get(_admin_url("add")).content.decode()
    assert 'name="payload_filter"' in page and "$gte" in page  # the help text
    assert 'value="user.*"' in page and 'value="*"' in page
    response = admin_client.post(_admin_url("add"), _admin_form(receiver.url()))
    assert response.status_code == 200 and b"wh-secret-value" in response.content
    from webhooks_app.models import Endpoint

    endpoint = Endpoint.objects.get()
    assert endpoint.payload_filter == PRO_100
    assert sorted(endpoint.event_types) == ["payment.succeeded", "user.*"]
    emit("user.created", {"amount": 100, "plan": "pro"})
    emit("user.created", {"amount": 100, "plan": "free"})
    emit("payment.succeeded", {"amount": 101, "plan": "team"})
    engine.drain()
    reqs = receiver.wait_for(2)
    time.sleep(0.2)
    assert [json.loads(r.body)["data"]["plan"] for r in receiver.received] == ["pro", "team"]
    assert len(reqs) == 2
    change = admin_client.get(_admin_url("change", endpoint.pk)).content.decode()
    assert "&quot;$gte&quot;: 100" in change or "&quot;$gte&quot;:100" in change


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"payload_filter": '{"data.amount": {"$regex": "1"}}'}, "payload_filter", "$regex"),
        ({"payload_filter": '{"amount": 1}'}, "payload_filter", "Unknown path amount"),
        ({"payload_filter": "{not json"}, "payload_filter", "JSON"),
        ({"events": ["us*er.*"], "events_enabled": ["us*er.*"]}, "events", "wildcard"),
    ],
)
def test_admin_filter_and_wildcard_errors_are_field_errors(
    admin_client, receiver, overrides, field, message
):
    from webhooks_app.models import Endpoint

    response = admin_client.post(_admin_url("add"), _admin_form(receiver.url(), **overrides))
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert field in errors and message in " ".join(errors[field]), errors
    assert not Endpoint.objects.exists()


def test_admin_hides_deprecated_types_except_where_subscribed(admin_client, make_endpoint):
    with webhooks(EVENT_TYPES={**CATALOGUE, "user.legacy_signup": {}}):
        endpoint, _ = make_endpoint("http://127.0.0.1:9/", events=["user.legacy_signup"])
    with webhooks(EVENT_TYPES=CATALOGUE):
        add = admin_client.get(_admin_url("add")).content.decode()
        assert 'value="user.legacy_signup"' not in add
        assert "<legend>Billing</legend>" in add and 'value="invoice.paid"' in add
        change = admin_client.get(_admin_url("change", endpoint.pk)).content.decode()
        assert 'value="user.legacy_signup" checked' in change and "deprecated" in change
        form = _admin_form(
            "http://127.0.0.1:9/",
            events=["user.legacy_signup", "user.created"],
            events_enabled=["user.legacy_signup", "user.created"],
            payload_filter="",
        )
        response = admin_client.post(_admin_url("change", endpoint.pk), form)
        assert response.status_code == 302, response.context["adminform"].form.errors
        assert sorted(endpoint.event_types) == ["user.created", "user.legacy_signup"]


def test_admin_test_page_sends_the_chosen_types_example(admin_client, make_endpoint, receiver):
    endpoint, secret = make_endpoint(receiver.url())
    with webhooks(EVENT_TYPES=CATALOGUE):
        page = admin_client.get(_admin_url("test", endpoint.pk)).content.decode()
        assert '<option value="webhook.test" selected>' in page
        assert '<option value="invoice.paid">' in page
        assert "user.legacy_signup" not in page  # deprecated, not subscribed
        choose = {"event_type": "invoice.paid"}
        response = admin_client.post(_admin_url("test", endpoint.pk), choose)
        assert response.status_code == 302
        result = admin_client.get(response["Location"])
    html = result.content.decode()
    assert 'class="wh-status-code">200<' in html
    assert '<option value="invoice.paid" selected>' in html and "4200" in html
    (req,) = receiver.wait_for(1)
    standardwebhooks.Webhook(secret).verify(req.body, req.headers)
    assert req.header("webhook-test") == "true"
    body = json.loads(req.body)
    assert (body["event"], body["test"], body["data"]["amount"]) == ("invoice.paid", True, 4200)
    bad = admin_client.post(_admin_url("test", endpoint.pk), {"event_type": "no.such"})
    assert bad.status_code == 302 and len(receiver.received) == 1


def test_admin_event_catalogue_page(admin_client, client):
    with webhooks(EVENT_TYPES=CATALOGUE):
        listing = admin_client.get(_admin_url("changelist")).content.decode()
        assert _admin_url("event_types") in listing
        page = admin_client.get(_admin_url("event_types"))
    html = page.content.decode()
    assert page.status_code == 200 and "<h2>Billing</h2>" in html
    assert 'id="type-invoice.paid"' in html and "&quot;currency&quot;: &quot;eur&quot;" in html
    assert "JSON Schema" in html and "&quot;minimum&quot;: 0" in html
    assert 'id="type-user.legacy_signup"' in html and "deprecated" in html
    assert 'id="type-webhook.test"' in html
    anonymous = client.get(_admin_url("event_types"))
    assert anonymous.status_code == 302 and "/login/" in anonymous["Location"]


def test_admin_event_catalogue_needs_a_webhooks_permission(client):
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Permission

    staff = get_user_model().objects.create_user("staff", password="pw", is_staff=True)
    client.force_login(staff)
    assert client.get(_admin_url("event_types")).status_code == 403
    staff.user_permissions.add(Permission.objects.get(codename="view_endpoint"))
    assert client.get(_admin_url("event_types")).status_code == 200


# API -----------------------------------------------------------------------------------
API = "/api/webhooks"


@pytest.fixture
def api(db):
    from django.contrib.auth import get_user_model
    from django.core.cache import cache
    from rest_framework.test import APIClient

    cache.clear()  # throttle history
    user = get_user_model().objects.create_user("alice", password="pw")
    c = APIClient()
    c.force_authenticate(user)
    c.tenant = str(user.pk)
    return c


def test_api_endpoint_with_wildcards_and_filter_end_to_end(api, receiver):
    r = api.post(
        f"{API}/endpoints/",
        {"url": receiver.url(), "events": ["user.*"], "payload_filter": PRO_100},
        format="json",
    )
    assert r.status_code == 201, r.content
    body = r.json()
    assert body["events"] == ["user.*"] and body["payload_filter"] == PRO_100
    emit("user.updated", {"amount": 99, "plan": "pro"}, tenant=api.tenant)
    emit("user.updated", {"amount": 200, "plan": "pro"}, tenant=api.tenant)
    engine.drain()
    (req,) = receiver.wait_for(1)
    assert json.loads(req.body)["data"] == {"amount": 200, "plan": "pro"}
    ep = body["id"]
    r = api.patch(f"{API}/endpoints/{ep}/", {"payload_filter": {"event": "x"}}, format="json")
    assert r.status_code == 200 and r.json()["payload_filter"] == {"event": "x"}
    r = api.put(f"{API}/endpoints/{ep}/", {"url": receiver.url(), "events": ["*"]}, format="json")
    assert r.status_code == 200 and r.json()["payload_filter"] == {}


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"payload_filter": {"data.a": {"$bad": 1}}}, "payload_filter", "$bad"),
        ({"payload_filter": {"data..a": 1}}, "payload_filter", "data..a"),
        ({"payload_filter": [1]}, "payload_filter", ""),
        ({"payload_filter": {"data.a": "n\x00l"}}, "payload_filter", ""),
        ({"events": ["user**"]}, "events", "wildcard"),
        ({"events": ["user.legacy_signup"]}, "events", "deprecated"),
    ],
)
def test_api_refuses_bad_filters_and_subscriptions_per_field(api, body, field, message):
    from webhooks_app.models import Endpoint

    with webhooks(EVENT_TYPES=CATALOGUE):
        r = api.post(
            f"{API}/endpoints/",
            {"url": "http://127.0.0.1:9/", "events": ["user.created"], **body},
            format="json",
        )
    assert r.status_code == 400, r.content
    assert field in r.json() and message in " ".join(r.json()[field]), r.json()
    assert not Endpoint.objects.exists()


def test_api_test_action_sends_a_types_example(api, receiver, make_endpoint):
    endpoint, secret = make_endpoint(receiver.url(), tenant=api.tenant)
    with webhooks(EVENT_TYPES=CATALOGUE):
        r = api.post(
            f"{API}/endpoints/{endpoint.pk}/test/", {"event_type": "invoice.paid"}, format="json"
        )
    assert r.status_code == 200 and r.json()["ok"] is True, r.content
    (req,) = receiver.wait_for(1)
    standardwebhooks.Webhook(secret).verify(req.body, req.headers)
    assert req.header("webhook-test") == "true" and req.header("webhook-id") == r.json()["event_id"]
    assert json.loads(req.body)["data"] == CATALOGUE["invoice.paid"]["example"]
    r = api.post(f"{API}/endpoints/{endpoint.pk}/test/", {"event_type": "no.such"}, format="json")
    assert r.status_code == 400 and "event_type" in r.json()
    r = api.post(f"{API}/endpoints/{endpoint.pk}/test/", {"event_type": 5}, format="json")
    assert r.status_code == 400 and "event_type" in r.json()
    assert len(receiver.received) == 1


def test_api_event_types_returns_the_catalogue(api):
    with webhooks(EVENT_TYPES=CATALOGUE):
        rows = {t["name"]: t for t in api.get(f"{API}/event-types/").json()}
    paid = rows["invoice.paid"]
    assert paid["schema"] == SCHEMA and paid["group"] == "Billing"
    assert paid["example"]["amount"] == 4200 and paid["subscribable"] is True
    legacy = rows["user.legacy_signup"]
    assert legacy["deprecated"] is True and legacy["subscribable"] is False
    assert rows["user.created"]["schema"] is None and rows["user.created"]["group"] == "user"


def test_admin_history_type_filter_lists_the_types_a_wildcard_covers(admin_client, make_endpoint):
    endpoint, _ = make_endpoint("http://127.0.0.1:9/", events=["user.*"])
    page = admin_client.get(_admin_url("history", endpoint.pk))
    labels = [c["label"] for c in page.context["type_choices"]][1:]
    assert labels == ["user.created", "user.deleted", "user.updated", "webhook.test"]
