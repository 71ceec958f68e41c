"""The scrape view: the collector's output in Prometheus' text format."""

from __future__ import annotations

import hmac

from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from ..conf import app_settings
from .collector import WebhooksCollector


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    token = app_settings.METRICS_TOKEN
    if token:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return HttpResponse("Unauthorized\n", status=401, content_type="text/plain")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(WebhooksCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
