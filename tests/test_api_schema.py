"""The API's contract: the committed OpenAPI document matches the code, and a bounded
property-based run (schemathesis, in-process WSGI) finds no 5xx and no response that
breaks the document."""

from __future__ import annotations

import base64
import difflib
import os

import pytest
import schemathesis
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from django.test import override_settings
from django.utils import timezone
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from webhooks_app import emit, services
from webhooks_app.api import schema as api_schema
from webhooks_app.models import Delivery, Endpoint

MOUNT = "/api/webhooks"
# Cases per operation: 20 keeps the whole run around 20 s; CI may raise it for a deeper run.
MAX_EXAMPLES = int(os.environ.get("WEBHOOKS_API_FUZZ_EXAMPLES", "20"))


def test_committed_schema_matches_the_code():
    generated = api_schema.render(api_schema.generate())
    committed = api_schema.SCHEMA_FILE.read_text(encoding="utf-8")
    if generated != committed:
        diff = "".join(
            difflib.unified_diff(
                committed.splitlines(keepends=True),
                generated.splitlines(keepends=True),
                "committed openapi.yaml",
                "generated from the code",
                n=2,
            )
        )
        pytest.fail(
            "webhooks_app/api/openapi.yaml is out of date. If the API change is intended, "
            f"regenerate it with:\n\n    {api_schema.REGENERATE}\n\nand commit it.\n\n{diff}",
            pytrace=False,
        )


def test_schema_is_served_with_its_mount_point(client):
    r = client.get(f"{MOUNT}/schema/?format=json")
    assert r.status_code == 200
    served = r.json()
    assert served["servers"] == [{"url": MOUNT}]
    generated = api_schema.generate()
    assert served["paths"] == generated["paths"]
    assert served["components"] == generated["components"]


# Property-based run against the committed document -------------------------------------------
schema = schemathesis.openapi.from_path(api_schema.SCHEMA_FILE)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    negative_data_rejection,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


# The other tenant's endpoint URL: it must never appear in any response.
OTHER_MARKER = "other-tenant-only"
# Ids that exist (both tenants'), filled in by the fixture.
KNOWN_IDS: dict[str, list[int]] = {}


@schema.hook("map_path_parameters")
def use_existing_ids(context, path_parameters):
    """Two generated ids in three become ids that exist, so that the run reaches real
    objects (and the other tenant's) rather than answering 404 to random numbers."""
    if not path_parameters:  # operations without path parameters
        return path_parameters
    value = path_parameters.get("id")
    kind = "deliveries" if context.operation.path.startswith("/deliveries") else "endpoints"
    known = KNOWN_IDS.get(kind)
    if known and isinstance(value, int) and not isinstance(value, bool) and value % 3:
        path_parameters["id"] = known[value % len(known)]
    return path_parameters


@pytest.fixture
def api_user(db, receiver):
    """A tenant with data to find: endpoints (one pointing at a live receiver) and
    deliveries in every state, plus a second tenant's data that must stay invisible."""
    from django.core.wsgi import get_wsgi_application

    # A fast hasher: Basic auth checks the password on every one of hundreds of requests.
    # No throttling to speak of: the run calls test and replay far more than 30 times.
    with override_settings(
        PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"],
        WEBHOOKS_APP={**settings.WEBHOOKS_APP, "API_THROTTLE_RATE": "10000/min"},
    ):
        user = get_user_model().objects.create_user("fuzz", password="fuzz-pw")
        tenant = str(user.pk)
        services.create_endpoint(
            url=receiver.url("/hook"), events=["user.created", "user.deleted"], tenant=tenant
        )
        services.create_endpoint(
            url="http://127.0.0.1:9/off", events=["user.created"], tenant=tenant, is_active=False
        )
        theirs, _ = services.create_endpoint(
            url=f"http://127.0.0.1:9/{OTHER_MARKER}", events=["user.deleted"], tenant="other"
        )
        for i in range(3):
            emit("user.created", {"id": i}, tenant=tenant)
            emit("user.deleted", {"id": i}, tenant="other")
        Delivery.objects.filter(pk__in=Delivery.objects.values("pk")[:2]).update(
            status=Delivery.Status.FAILED, attempts=1, last_attempt_at=timezone.now()
        )
        KNOWN_IDS["endpoints"] = [
            *Endpoint.objects.filter(tenant=tenant).values_list("pk", flat=True),
            theirs.pk,
        ]
        KNOWN_IDS["deliveries"] = list(Delivery.objects.values_list("pk", flat=True))
        token = base64.b64encode(b"fuzz:fuzz-pw").decode()
        cache.clear()
        # Like django.test.Client: a WSGI request must not close the test's connection
        # (its transaction holds the data above and is rolled back at the end).
        request_started.disconnect(close_old_connections)
        request_finished.disconnect(close_old_connections)
        try:
            yield {"app": get_wsgi_application(), "headers": {"Authorization": f"Basic {token}"}}
        finally:
            request_started.connect(close_old_connections)
            request_finished.connect(close_old_connections)
            cache.clear()


@schema.parametrize()
@hypothesis_settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,  # the same cases on every run: CI must not flake on a new seed
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_api_conforms_to_its_schema(case, api_user):
    response = case.call(
        base_url=f"http://localhost{MOUNT}", app=api_user["app"], headers=api_user["headers"]
    )
    case.validate_response(response, checks=CHECKS)
    assert OTHER_MARKER not in response.text, "another tenant's data leaked"
