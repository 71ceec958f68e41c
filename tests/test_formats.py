"""Payload formats per endpoint, end to end: emit -> the bytes a real receiver got.

Each format's body is checked against what the receiver got, its signature verified by
the standardwebhooks library, and the CloudEvents body parsed by the CloudEvents SDK.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from urllib.parse import parse_qsl

import pytest
import standardwebhooks
from cloudevents.core.bindings.http import HTTPMessage, from_http_event
from django.conf import settings
from django.core.exceptions import ValidationError
from django.test import override_settings

import webhooks_app
from webhooks_app import emit, engine, formats, services, signing
from webhooks_app.checks import check_settings
from webhooks_app.models import Delivery

pytestmark = pytest.mark.django_db(transaction=True)

DATA = {"studioId": "STUDIO73", "userEmail": "user@example.com", "giftedProducts": ["starter"]}


def webhooks(**changes):
    return override_settings(WEBHOOKS_APP={**settings.WEBHOOKS_APP, **changes})


def deliver(receiver, make_endpoint, data=DATA, event_type="user.created", **options):
    _, secret = make_endpoint(receiver.url(), events=[event_type], **options)
    event = emit(event_type, data, tenant=options.get("tenant"))
    assert engine.drain() == 1
    (req,) = receiver.wait_for(1)
    assert req.header("webhook-id") == event.public_id  # whatever the shape
    standardwebhooks.Webhook(secret).verify(req.body, req.headers)
    return event, req


def unix(event) -> int:
    return int(event.created_at.timestamp())


def test_standard_is_the_default_and_unchanged(receiver, make_endpoint):
    event, req = deliver(receiver, make_endpoint)
    assert req.body == event.body.encode()
    assert json.loads(req.body) == {
        "id": event.public_id,
        "event": "user.created",
        "timestamp": json.loads(event.body)["timestamp"],
        "version": "v1",
        "tenant": "",
        "data": DATA,
    }
    assert Delivery.objects.get().body is None  # the event's bytes, not a copy
    assert req.header("Content-Type") == "application/json"


def test_flat_puts_the_data_fields_beside_event(receiver, make_endpoint):
    event, req = deliver(receiver, make_endpoint, event_type="user.created", payload_format="flat")
    # Pickaxe's shape, byte for byte: the data's fields in order, then "event".
    assert req.body == (
        b'{"studioId":"STUDIO73","userEmail":"user@example.com",'
        b'"giftedProducts":["starter"],"event":"user.created"}'
    )
    assert req.header("Content-Type") == "application/json"


def test_flat_event_type_wins_over_a_data_field_named_event(receiver, make_endpoint):
    _, req = deliver(receiver, make_endpoint, data={"event": "x", "a": 1}, payload_format="flat")
    assert json.loads(req.body) == {"a": 1, "event": "user.created"}


def test_type_format_with_app_token_as_tenant_key(receiver, make_endpoint):
    with webhooks(TENANT_KEY="app_token"):
        event, req = deliver(receiver, make_endpoint, tenant="NX-bd46697c", payload_format="type")
    body = json.loads(req.body)
    assert list(body) == ["type", "timestamp", "app_token", "data"]
    assert body == {
        "type": "user.created",
        "timestamp": unix(event),
        "app_token": "NX-bd46697c",
        "data": DATA,
    }
    assert isinstance(body["timestamp"], int)


def test_cloudevents_structured_parsed_by_the_sdk(receiver, make_endpoint):
    with webhooks(CLOUDEVENTS_SOURCE="https://example.com/tenants/{tenant}"):
        event, req = deliver(receiver, make_endpoint, tenant="acme", payload_format="cloudevents")
    assert req.header("Content-Type") == "application/cloudevents+json"
    ce = from_http_event(HTTPMessage(headers=req.headers, body=req.body))
    assert ce.get_specversion() == "1.0"
    assert ce.get_id() == event.public_id
    assert ce.get_type() == "user.created"
    assert ce.get_source() == "https://example.com/tenants/acme"
    assert ce.get_datacontenttype() == "application/json"
    assert ce.get_time() == event.created_at.replace(
        microsecond=event.created_at.microsecond // 1000 * 1000
    ).astimezone(UTC)
    assert ce.get_data() == DATA
    assert Delivery.objects.get().content_type == "application/cloudevents+json"


def test_field_selection_and_custom_values_work_with_every_format(receiver, make_endpoint):
    data = {"user": {"name": "John", "email": "j@x.io", "phone": "1"}, "secret": "no"}
    shapes = {}
    for name in formats.BUILTIN:
        endpoint, secret = make_endpoint(
            receiver.url(f"/{name}"),
            payload_format=name,
            payload_fields=["user.name", "user.email"],
            payload_extra={"origin": "crm", "n": 3},
        )
    event = emit("user.created", data)
    engine.drain()
    for req in receiver.wait_for(4):
        shapes[req.path.strip("/")] = json.loads(req.body)
        assert req.header("webhook-id") == event.public_id
    selected = {"user": {"name": "John", "email": "j@x.io"}}
    assert shapes["standard"]["data"] == selected
    assert shapes["type"]["data"] == selected
    assert shapes["cloudevents"]["data"] == selected
    assert shapes["flat"] == {**selected, "event": "user.created", "origin": "crm", "n": 3}
    for name in ("standard", "type", "cloudevents"):
        assert shapes[name]["origin"] == "crm" and shapes[name]["n"] == 3
    # In CloudEvents the custom values are extension attributes the SDK reads back.
    (ce_req,) = [r for r in receiver.received if r.path == "/cloudevents"]
    ce = from_http_event(HTTPMessage(headers=ce_req.headers, body=ce_req.body))
    assert ce.get_extension("n") == 3
    assert "secret" not in json.dumps(shapes)


def test_get_flattening_works_with_every_format(receiver, make_endpoint):
    secrets = {}
    for name in formats.BUILTIN:
        _, secrets[name] = make_endpoint(
            receiver.url(f"/{name}"),
            method="GET",
            payload_format=name,
            payload_extra={"k": "v"},
        )
    event = emit("user.created", {"a": {"b": 1}, "c": "ü"})
    engine.drain()
    queries = {}
    for req in receiver.wait_for(4):
        name = req.path.strip("/")
        assert req.body == b"" and req.header("Content-Type") is None
        signing.verify(secrets[name], req.query.encode(), req.headers)
        queries[name] = dict(parse_qsl(req.query))
    assert queries["flat"] == {"a.b": "1", "c": "ü", "event": "user.created", "k": "v"}
    assert queries["type"]["type"] == "user.created" and queries["type"]["data.a.b"] == "1"
    assert queries["cloudevents"]["specversion"] == "1.0"
    assert queries["cloudevents"]["id"] == event.public_id
    assert queries["standard"]["data.c"] == "ü" and queries["standard"]["k"] == "v"


def test_site_default_applies_to_endpoints_without_a_format(receiver, make_endpoint):
    make_endpoint(receiver.url("/a"))
    make_endpoint(receiver.url("/b"), payload_format="standard")
    with webhooks(PAYLOAD_FORMAT="flat"):
        emit("user.created", {"x": 1})
    engine.drain()
    got = {r.path: json.loads(r.body) for r in receiver.wait_for(2)}
    assert got["/a"] == {"x": 1, "event": "user.created"}
    assert got["/b"]["data"] == {"x": 1}


def test_registered_format_and_test_flag(receiver, make_endpoint):
    def slack(e: formats.EventInfo):
        return {"text": f"{e.type} for {e.tenant}", "attachments": [e.data], "test": e.test}

    webhooks_app.register_payload_format(
        "slack", slack, label="Slack", content_type="application/json", reserved=["text"]
    )
    try:
        with pytest.raises(ValidationError) as exc:
            make_endpoint(receiver.url(), payload_format="slack", payload_extra={"text": "x"})
        assert "reserved by the slack payload format" in str(exc.value.message_dict)
        endpoint, secret = make_endpoint(receiver.url(), tenant="t1", payload_format="slack")
        emit("user.created", {"id": 1}, tenant="t1")
        engine.drain()
        (req,) = receiver.wait_for(1)
        assert req.body == b'{"text":"user.created for t1","attachments":[{"id":1}],"test":false}'
        standardwebhooks.Webhook(secret).verify(req.body, req.headers)
        # endpoint_body marks tests in envelope formats only
        env = {
            "id": "evt_1",
            "event": "user.created",
            "timestamp": "2024-01-01T00:00:00.000Z",
            "tenant": "t1",
            "version": "v1",
            "data": {},
        }
        from webhooks_app.events import endpoint_body

        endpoint.payload_format = "standard"
        assert json.loads(endpoint_body(endpoint, env, {}, test=True))["test"] is True
        endpoint.payload_format = "flat"
        assert "test" not in json.loads(endpoint_body(endpoint, env, {}, test=True))
        assert formats.has_envelope("standard") and not formats.has_envelope("flat")
        assert formats.has_envelope("cloudevents") and formats.has_envelope("type")
    finally:
        formats.unregister_payload_format("slack")


def test_unknown_format_is_refused_and_one_unregistered_later_falls_back(
    receiver, make_endpoint, caplog
):
    with pytest.raises(ValidationError) as exc:
        make_endpoint(receiver.url(), payload_format="xml")
    assert "Unknown payload format 'xml'" in exc.value.message_dict["payload_format"][0]
    formats.register_payload_format("gone", lambda e: {"x": 1})
    endpoint, _ = make_endpoint(receiver.url(), payload_format="gone")
    formats.unregister_payload_format("gone")
    event = emit("user.created", {"a": 1})
    engine.drain()
    (req,) = receiver.wait_for(1)
    assert json.loads(req.body)["id"] == event.public_id
    assert "unknown payload format 'gone'" in caplog.text


def test_custom_values_are_checked_against_the_format(make_endpoint, receiver):
    with pytest.raises(ValidationError) as exc:
        make_endpoint(receiver.url(), payload_format="type", payload_extra={"timestamp": 1})
    assert "reserved by the type payload format" in exc.value.message_dict["payload_extra"][0]
    # "event" is fine in the type format, but not in flat
    endpoint, _ = make_endpoint(receiver.url(), payload_format="type", payload_extra={"event": 1})
    with pytest.raises(ValidationError) as exc:
        services.update_endpoint(endpoint, payload_format="flat")
    assert "payload_extra" in exc.value.message_dict
    endpoint.refresh_from_db()
    assert endpoint.payload_format == "type"
    for bad in ({"Bad-Name": "x"}, {"nested": {"a": 1}}, {"f": 1.5}):
        with pytest.raises(ValidationError) as exc:
            services.update_endpoint(endpoint, payload_format="cloudevents", payload_extra=bad)
        assert "CloudEvents" in exc.value.message_dict["payload_extra"][0]


def test_field_selection_limit_from_settings(make_endpoint, receiver):
    fields = [f"f{i}" for i in range(11)]
    with pytest.raises(ValidationError) as exc:
        make_endpoint(receiver.url(), payload_fields=fields)
    assert exc.value.message_dict["payload_fields"] == [
        "At most 10 fields can be selected; 11 were given."
    ]
    endpoint, _ = make_endpoint(receiver.url(), payload_fields=fields[:10])
    with webhooks(MAX_PAYLOAD_FIELDS=20):
        services.update_endpoint(endpoint, payload_fields=fields)
    endpoint.refresh_from_db()
    assert len(endpoint.payload_fields) == 11


def test_body_of_every_format_is_fixed_at_emit(receiver, make_endpoint):
    """Switching the format after emit changes neither the bytes nor their Content-Type."""
    endpoint, _ = make_endpoint(receiver.url(), payload_format="cloudevents")
    emit("user.created", {"a": 1})
    services.update_endpoint(endpoint, payload_format="standard")
    engine.drain()
    (req,) = receiver.wait_for(1)
    assert json.loads(req.body)["specversion"] == "1.0"
    assert req.header("Content-Type") == "application/cloudevents+json"


def test_datetime_in_the_type_timestamp_is_unix_seconds():
    info = formats.EventInfo("evt_1", "a.b", datetime(2023, 3, 23, 13, 37, 5, 999000, UTC), "", {})
    assert formats.build("type", info)["timestamp"] == 1679578625


def test_unknown_site_default_is_a_system_check_error():
    with webhooks(PAYLOAD_FORMAT="xml"):
        errors = [e for e in check_settings() if e.id == "webhooks_app.E007"]
    assert len(errors) == 1 and "'xml'" in errors[0].msg
    assert "register_payload_format" in errors[0].hint
    assert not [e for e in check_settings() if e.id == "webhooks_app.E007"]


def test_test_events_are_flagged_in_envelope_formats_only(receiver, make_endpoint):
    """send_test(event_type=...) per format: "test": true beside the envelope's keys (not in
    flat, whose top level is the data); the header always; the SDK still parses it."""
    bodies = {}
    for name in formats.BUILTIN:
        endpoint, secret = make_endpoint(receiver.url(f"/{name}"), payload_format=name)
        result = services.send_test(endpoint, event_type="user.created")
        assert result.ok, result.error
        req = receiver.received[-1]
        assert req.path == f"/{name}" and req.header("webhook-test") == "true"
        standardwebhooks.Webhook(secret).verify(req.body, req.headers)
        bodies[name] = json.loads(req.body)
    example = {"id": 42, "username": "mike", "email": "mike@example.com"}
    assert bodies["standard"]["test"] is True and bodies["standard"]["data"] == example
    assert bodies["type"]["test"] is True and bodies["type"]["data"] == example
    assert bodies["cloudevents"]["test"] is True
    assert bodies["flat"] == {**example, "event": "user.created"}
    ce_req = [r for r in receiver.received if r.path == "/cloudevents"][0]
    ce = from_http_event(HTTPMessage(headers=ce_req.headers, body=ce_req.body))
    assert ce.get_extension("test") is True and ce.get_data() == example
