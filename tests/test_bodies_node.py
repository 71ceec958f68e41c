"""End to end with real Node.js receivers: a real qcluster delivers a table of awkward
payloads to the reference product's Express snippet (verbatim: ``express.json()``, then an
HMAC of ``JSON.stringify(req.body)``) and to a receiver using the npm ``standardwebhooks``
package on the raw bytes; every delivery must verify in both."""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from decimal import Decimal
from pathlib import Path

import pytest
from django.test import override_settings
from django.utils.translation import gettext_lazy

from tests import nodejs
from tests.test_bodies import AWKWARD, _demo_settings
from webhooks_app import emit, signing
from webhooks_app.models import Delivery

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"


def test_the_express_snippet_is_the_reference_text_verbatim():
    """tests/node/axie_snippet.js is the reference page's "Example Endpoint", unchanged."""
    pages = sorted(REFERENCE.glob("001_*.txt")) or sorted(
        Path("/work/shared/reference").glob("001_*.txt")
    )
    if not pages:
        pytest.skip("the reference pages (../shared/reference) are not on this machine")
    snippet = (nodejs.NODE_DIR / "axie_snippet.js").read_text()
    assert snippet.startswith("const express = require('express');")
    assert snippet.rstrip().endswith("app.listen(3000);")
    assert snippet in pages[0].read_text()


def _payloads() -> list:
    django_values = {
        "when": dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC),
        "day": dt.date(2026, 1, 2),
        "amount": Decimal("10.00"),
        "id": uuid.UUID(int=7),
        "label": gettext_lazy("Hello"),
    }
    deep: dict = {"v": 1.5}
    for i in range(30):
        deep = {str(i): deep, "x": float(i)}
    return [
        *[p for p, _ in AWKWARD],
        django_values,
        deep,
        {"order": {"total": 10.0, "lines": [{"price": 9.99, "qty": 1.0}] * 50}},
        {"text": "é" * 20_000},  # ~40 kB of two-byte characters
        {"id": 2**63},  # sent as a string (LARGE_INTEGERS = "string")
    ]


@pytest.mark.cluster
@pytest.mark.django_db(transaction=True)
def test_awkward_payloads_verify_in_express_and_standardwebhooks(make_endpoint, start_cluster):
    secret = signing.generate_secret()
    axie = nodejs.axie_receiver(secret)
    standard = nodejs.standard_receiver(secret)
    try:
        extra = {"price": 10.0, "10": "ten", "2": "two", "since": dt.date(2026, 1, 1)}
        made = [
            make_endpoint(axie.url("/webhooks/axie"), secret=secret),
            make_endpoint(axie.url("/webhooks/axie"), secret=secret, payload_extra=extra),
            make_endpoint(standard.url("/plain"), secret=secret),
            make_endpoint(standard.url("/custom"), secret=secret, payload_extra=extra),
            make_endpoint(standard.url("/get?pipe=a|b&name=Zoë"), secret=secret, method="GET"),
            # Every payload format is written by the same serialiser. (express.json() only
            # parses application/json, so CloudEvents' own type goes to the raw receiver.)
            make_endpoint(axie.url("/webhooks/axie"), secret=secret, payload_format="flat"),
            make_endpoint(axie.url("/webhooks/axie"), secret=secret, payload_format="type"),
            make_endpoint(standard.url("/ce"), secret=secret, payload_format="cloudevents"),
        ]
        endpoints = [e for e, _ in made]
        start_cluster(env={"WEBHOOKS_RETRY_SCHEDULE": "0"})
        payloads = _payloads()
        with override_settings(WEBHOOKS_APP={**_demo_settings(), "LARGE_INTEGERS": "string"}):
            events = [emit("user.created", p) for p in payloads]
        total = len(events) * len(endpoints)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if not Delivery.objects.filter(status="pending").exists():
                break
            time.sleep(0.3)
        rows = list(Delivery.objects.select_related("event", "endpoint").order_by("id"))
        assert len(rows) == total
        bad = [
            (r.endpoint.url, r.last_status_code, r.last_error, r.event.body[:120])
            for r in rows
            if r.status != "succeeded"
        ]
        # What the receivers themselves said, not only their status codes.
        lines = nodejs.json_lines(standard)
        assert bad == [], (bad, [x for x in lines if not x["verified"]][:2])
        assert len(lines) == 4 * len(events)
        assert all(line["verified"] for line in lines), [x for x in lines if not x["verified"]]
        assert all(line["roundtrip"] for line in lines if line["method"] == "POST")
        gets = [line for line in lines if line["method"] == "GET"]
        assert len(gets) == len(events)
        assert all(line["query"].startswith("pipe=a%7Cb&name=Zo%C3%AB&id=evt_") for line in gets)
        crm = [s for s in axie.lines if s.startswith("CRM-ADD ")]
        # The snippet's switch reads "event" and "data": the "type" format names the event
        # "type" (no CRM call) and "flat" has no "data" (the call gets undefined); both
        # verified all the same (200 above).
        assert len(crm) == 3 * len(events)
        got = [json.loads(s.split(" ", 1)[1]) for s in crm if s != "CRM-ADD undefined"]
        assert {"id": "9223372036854775808"} in got
        assert {"amount": 10} in got
    finally:
        axie.close()
        standard.close()
