"""The collector: one scrape, a handful of aggregate queries, no per-process state."""

from __future__ import annotations

from collections.abc import Iterator

from django.db.models import Count, Q, Sum
from django.utils import timezone
from prometheus_client.core import (
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .. import queries
from ..models import Delivery, DeliveryAttempt, Endpoint

# Upper bounds (seconds) of the attempt-duration buckets.
DURATION_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BREAKER_STATES = ("closed", "open", "half_open")
# The field the circuit breaker keeps its state in, when that feature is installed.
BREAKER_FIELDS = ("breaker_state", "circuit_state")


def breaker_field() -> str | None:
    names = {f.name for f in Endpoint._meta.concrete_fields}
    return next((n for n in BREAKER_FIELDS if n in names), None)


class WebhooksCollector(Collector):
    """Deliveries by status and event type, attempt durations, backlog, oldest due
    delivery, endpoints by breaker state, disabled endpoints."""

    def collect(self) -> Iterator[Metric]:
        now = timezone.now()
        deliveries = GaugeMetricFamily(
            "webhooks_deliveries",
            "Deliveries kept in the database, by status (outcome) and event type.",
            labels=["status", "event_type"],
        )
        rows = (
            Delivery.objects.order_by().values_list("status", "event_type").annotate(n=Count("id"))
        )
        for status, event_type, n in rows:
            deliveries.add_metric([status, event_type], n)
        yield deliveries

        backlog = queries.backlog(now)
        yield GaugeMetricFamily(
            "webhooks_backlog",
            "Pending deliveries that are due now (not counting those being sent).",
            value=backlog.due,
        )
        yield GaugeMetricFamily(
            "webhooks_in_flight",
            "Deliveries claimed by a worker right now.",
            value=backlog.in_flight,
        )
        oldest = (now - backlog.oldest_due).total_seconds() if backlog.oldest_due else 0.0
        yield GaugeMetricFamily(
            "webhooks_oldest_due_age_seconds",
            "How long the oldest due delivery has been waiting for a worker (0: none).",
            value=max(0.0, oldest),
        )

        yield self._durations()

        endpoints = GaugeMetricFamily(
            "webhooks_endpoints",
            "Active endpoints by circuit-breaker state (all closed without a breaker).",
            labels=["breaker_state"],
        )
        active = Endpoint.objects.filter(is_active=True).order_by()
        field = breaker_field()
        counts = dict.fromkeys(BREAKER_STATES, 0)
        if field:
            for state, n in active.values_list(field).annotate(n=Count("id")):
                counts[str(state or "closed")] = n
        else:
            counts["closed"] = active.count()
        for state, n in counts.items():
            endpoints.add_metric([state], n)
        yield endpoints
        yield GaugeMetricFamily(
            "webhooks_endpoints_disabled",
            "Endpoints switched off (by hand, by a 410 Gone, or by auto-disable).",
            value=Endpoint.objects.filter(is_active=False).count(),
        )

    def _durations(self) -> Metric:
        """A gauge histogram of the attempts kept in the database (retention prunes them,
        so the counts can go down: not a counter-based histogram)."""
        bounds = [int(b * 1000) for b in DURATION_BUCKETS]
        aggregates = {f"le{ms}": Count("id", filter=Q(duration_ms__lte=ms)) for ms in bounds}
        agg = DeliveryAttempt.objects.order_by().aggregate(
            total=Count("id"), sum_ms=Sum("duration_ms"), **aggregates
        )
        buckets = [(str(b), agg[f"le{ms}"]) for b, ms in zip(DURATION_BUCKETS, bounds, strict=True)]
        buckets.append(("+Inf", agg["total"]))
        return GaugeHistogramMetricFamily(
            "webhooks_attempt_duration_seconds",
            "Duration of the delivery attempts kept in the database.",
            buckets=buckets,
            gsum_value=(agg["sum_ms"] or 0) / 1000,
        )
