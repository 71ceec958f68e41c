"""Every payload format through a real ``qcluster``: emit -> the bytes a real receiver got,
verified by the standardwebhooks library, the CloudEvents SDK, and equal to the preview."""

from __future__ import annotations

import json
from urllib.parse import parse_qsl, urlsplit

import pytest
import standardwebhooks
from cloudevents.core.bindings.http import HTTPMessage, from_http_event

from webhooks_app import emit, services, signing

pytestmark = [pytest.mark.cluster, pytest.mark.django_db(transaction=True)]

DATA = {
    "studioId": "STUDIO73CVEX31DUTEC3J",
    "studioName": "Acme Portal",
    "userEmail": "user@example.com",
    "giftedProducts": ["starter-plan"],
}


def show(name: str, req) -> str:
    """The request as the receiver got it (printed with ``pytest -s``, for the record)."""
    lines = [f"--- {name}", f"{req.method} {req.path}{'?' + req.query if req.query else ''}"]
    lines += [f"{k}: {v}" for k, v in req.headers.items()]
    return "\n".join([*lines, "", req.body.decode()])


def test_each_format_through_a_real_cluster(receiver, make_endpoint, start_cluster):
    options = {
        "standard": {},
        "flat": {},
        "type": {"payload_fields": ["userEmail", "studioId"], "payload_extra": {"app": "x"}},
        "cloudevents": {"payload_extra": {"origin": "portal"}},
        "cloudevents-get": {"payload_format": "cloudevents", "method": "GET"},
    }
    endpoints = {}
    for name, opts in options.items():
        opts = {"payload_format": name, **opts}
        endpoints[name] = make_endpoint(receiver.url(f"/{name}"), tenant="acme", **opts)
    start_cluster()
    event = emit("user.created", DATA, tenant="acme")
    got = {r.path.strip("/"): r for r in receiver.wait_for(len(options), timeout=30)}
    for name, req in got.items():
        endpoint, secret = endpoints[name]
        print(show(name, req))
        assert req.header("webhook-id") == event.public_id
        signed = req.query.encode() if req.method == "GET" else req.body
        if req.method == "POST":  # the library parses what it verifies as JSON
            standardwebhooks.Webhook(secret).verify(signed, req.headers)
        signing.verify(secret, signed, req.headers)
        preview = services.preview(endpoint, event=event)
        assert preview.body.encode() == req.body
        assert urlsplit(preview.url).query == req.query
    assert got["standard"].body == event.body.encode()
    assert json.loads(got["standard"].body)["data"] == DATA
    assert json.loads(got["flat"].body) == {**DATA, "event": "user.created"}
    typed = json.loads(got["type"].body)
    assert list(typed) == ["type", "timestamp", "tenant", "data", "app"]
    assert typed["data"] == {"userEmail": "user@example.com", "studioId": "STUDIO73CVEX31DUTEC3J"}
    assert typed["timestamp"] == int(event.created_at.timestamp())
    ce_req = got["cloudevents"]
    assert ce_req.header("Content-Type") == "application/cloudevents+json"
    ce = from_http_event(HTTPMessage(headers=ce_req.headers, body=ce_req.body))
    assert (ce.get_id(), ce.get_type(), ce.get_source()) == (
        event.public_id,
        "user.created",
        "/webhooks_app",
    )
    assert ce.get_data() == DATA and ce.get_extension("origin") == "portal"
    query = dict(parse_qsl(got["cloudevents-get"].query))
    assert query["specversion"] == "1.0" and query["data.userEmail"] == "user@example.com"
