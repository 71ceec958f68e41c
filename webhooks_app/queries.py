"""The read side shared by the admin, the customer portal and the API.

History, filters, keyset paging and stats live here once, so the three front ends stay
thin: they parse input, check permission and tenant, and read through these functions.
Nothing here writes; every function takes plain values (already parsed by the caller)
and returns querysets, rows or counts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Count, Min, OuterRef, Q, QuerySet, Subquery
from django.utils import timezone

from .models import Delivery, Endpoint, Event, Subscription

HISTORY_PAGE_SIZE = 50
# History headers count at most this many rows: exact below, "10,000+" above, so a page
# load never counts a million rows.
HISTORY_COUNT_CAP = 10_000

# The columns a delivery list shows: never a body, so a page does not load 50 of them.
HISTORY_COLUMNS = (
    "id",
    "endpoint_id",
    "event_type",
    "status",
    "attempts",
    "created_at",
    "last_attempt_at",
    "last_status_code",
    "last_response_ms",
    "last_error",
    "event__public_id",
)


# Endpoints -------------------------------------------------------------------------------
def endpoints(tenant: str | None = None) -> QuerySet[Endpoint]:
    """Endpoints of ``tenant`` (``None``: every tenant, for staff)."""
    qs = Endpoint.objects.all()
    return qs if tenant is None else qs.filter(tenant=tenant)


def rest_hooks(tenant: str) -> QuerySet[Endpoint]:
    """The REST Hooks subscriptions of ``tenant`` (endpoints made through API hooks/)."""
    return endpoints(tenant).filter(rest_hook=True)


def with_list_columns(
    queryset: QuerySet[Endpoint], *, last_delivery_at: bool = False
) -> QuerySet[Endpoint]:
    """Annotate what an endpoint list shows: ``event_count`` (enabled subscriptions),
    ``last_delivery_status`` and, when asked, ``last_delivery_at``."""
    last = Delivery.objects.filter(endpoint=OuterRef("pk")).order_by("-id")
    queryset = queryset.annotate(
        event_count=Count("subscriptions", filter=Q(subscriptions__enabled=True), distinct=True),
        last_delivery_status=Subquery(last.values("status")[:1]),
    )
    if last_delivery_at:
        queryset = queryset.annotate(last_delivery_at=Subquery(last.values("created_at")[:1]))
    return queryset


def filter_endpoints(
    queryset: QuerySet[Endpoint], *, search: str | None = None, is_active: bool | None = None
) -> QuerySet[Endpoint]:
    """Case-insensitive ``search`` in name or URL; ``is_active`` True/False (None: both)."""
    if search:
        queryset = queryset.filter(Q(name__icontains=search) | Q(url__icontains=search))
    if is_active is not None:
        queryset = queryset.filter(is_active=is_active)
    return queryset


# Deliveries ------------------------------------------------------------------------------
def deliveries(
    *, tenant: str | None = None, endpoint: Endpoint | int | None = None
) -> QuerySet[Delivery]:
    """Deliveries of one endpoint or one tenant.

    Filtering a tenant's list on ``Delivery.tenant`` alone (the endpoint's tenant, copied
    at creation and never changed) keeps each page one range scan of (tenant, -id).
    """
    qs = Delivery.objects.all()
    if endpoint is not None:
        qs = qs.filter(endpoint=endpoint)
    if tenant is not None:
        qs = qs.filter(tenant=tenant)
    return qs


def list_columns(queryset: QuerySet[Delivery]) -> QuerySet[Delivery]:
    """A list shows the event's public id, never a body: don't load 50 of them."""
    return queryset.select_related("event").defer("body", "event__body", "event__data")


def filter_deliveries(
    queryset: QuerySet[Delivery],
    *,
    status: str | None = None,
    event_type: str | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    endpoint_id: int | None = None,
    event: str | None = None,
) -> QuerySet[Delivery]:
    """Narrow a delivery queryset; each argument left ``None`` (or empty) is no filter.

    ``event`` is an event's public id (``evt_...``): "what happened to event X".
    """
    return _narrow(
        queryset,
        event__public_id=event or None,
        status=status or None,
        event_type=event_type or None,
        created_at__gte=created_after,
        created_at__lt=created_before,
        endpoint_id=endpoint_id,
    )


def _narrow(queryset: QuerySet, **lookups: Any) -> QuerySet:
    """``queryset`` filtered by every lookup whose value is not ``None``."""
    given = {k: v for k, v in lookups.items() if v is not None}
    return queryset.filter(**given) if given else queryset


def delivery_detail(queryset: QuerySet[Delivery], pk: int) -> Delivery | None:
    """One delivery of ``queryset`` with its event and attempt log, or None."""
    return queryset.select_related("event").prefetch_related("attempt_log").filter(pk=pk).first()


def test_result(endpoint: Endpoint, delivery_id: Any) -> Delivery | None:
    """A test delivery of ``endpoint`` by id (for the Test page's result), or None.

    Any type can be sent as a test (``send_test(event_type=...)``): tests are the
    deliveries of events marked ``is_test``."""
    pk = _cursor(delivery_id)
    if pk is None:
        return None
    return delivery_detail(deliveries(endpoint=endpoint).filter(event__is_test=True), pk)


def payload_text(delivery: Delivery) -> str:
    """The payload as sent: indented JSON, or a GET endpoint's query string as is."""
    payload = delivery.payload_bytes().decode("utf-8", "replace")
    try:
        return json.dumps(json.loads(payload), indent=2, ensure_ascii=False)
    except ValueError:
        return payload


def capped_count(queryset: QuerySet, cap: int = HISTORY_COUNT_CAP) -> tuple[int, bool]:
    """(count up to ``cap``, whether there are more): never counts a million rows."""
    n = queryset.order_by()[: cap + 1].count()
    return min(n, cap), n > cap


@dataclass
class HistoryPage:
    """One keyset page, newest first, with the cursors to its neighbours."""

    rows: list[Delivery]
    count: int
    count_capped: bool
    newer: int | None = None  # ?after=<newer> shows the page before this one
    older: int | None = None  # ?before=<older> shows the page after this one
    first: bool = True  # this is the newest page (no cursor given)


def _cursor(value: Any) -> int | None:
    text = str(value or "")
    return int(text) if text.isascii() and text.isdigit() and int(text) < 2**63 else None


def history_page(
    queryset: QuerySet[Delivery],
    *,
    before: Any = None,
    after: Any = None,
    page_size: int = HISTORY_PAGE_SIZE,
    count_cap: int = HISTORY_COUNT_CAP,
) -> HistoryPage:
    """Deliveries newest first, keyset-paginated (``before=<id>`` / ``after=<id>``).

    Each page is one index range scan on (endpoint | tenant[, status | event_type], -id)
    of ``page_size + 1`` rows however deep, and the count stops at ``count_cap``. Cursors
    that are not ids are ignored (the newest page).
    """
    before_id, after_id = _cursor(before), _cursor(after)
    page_qs = queryset.select_related("event").only(*HISTORY_COLUMNS)
    if after_id is not None:
        rows = list(page_qs.filter(id__gt=after_id).order_by("id")[: page_size + 1])
        has_newer = len(rows) > page_size
        rows = rows[:page_size][::-1]
        has_older = bool(rows) and queryset.filter(id__lt=rows[-1].id).exists()
    else:
        if before_id is not None:
            page_qs = page_qs.filter(id__lt=before_id)
        rows = list(page_qs.order_by("-id")[: page_size + 1])
        has_older = len(rows) > page_size
        rows = rows[:page_size]
        has_newer = (
            before_id is not None and bool(rows) and queryset.filter(id__gt=rows[0].id).exists()
        )
    first = before_id is None and after_id is None
    if first and not has_older:
        count, capped = len(rows), False  # the whole history fits on this page: no count
    else:
        count, capped = capped_count(queryset, count_cap)
    return HistoryPage(
        rows=rows,
        count=count,
        count_capped=capped,
        newer=rows[0].id if has_newer and rows else None,
        older=rows[-1].id if has_older and rows else None,
        first=first,
    )


# Events (the event log) ------------------------------------------------------------------
# What an event list shows: never the body or the data (they may be large).
EVENT_LIST_COLUMNS = ("id", "public_id", "tenant", "event_type", "created_at")


def events(tenant: str | None = None) -> QuerySet[Event]:
    """Events of ``tenant`` (``None``: every tenant, for staff), newest first.

    Only events that were stored: one no endpoint wanted is written only with
    ``KEEP_UNROUTED_EVENTS``. Pages are range scans of (tenant[, event_type], -id).
    """
    qs = Event.objects.order_by("-id")
    return qs if tenant is None else qs.filter(tenant=tenant)


def filter_events(
    queryset: QuerySet[Event],
    *,
    event_type: str | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    public_id: str | None = None,
) -> QuerySet[Event]:
    """Narrow an event queryset; each argument left ``None`` (or empty) is no filter."""
    return _narrow(
        queryset,
        public_id=public_id or None,
        event_type=event_type or None,
        created_at__gte=created_after,
        created_at__lt=created_before,
    )


def event_list_columns(queryset: QuerySet[Event]) -> QuerySet[Event]:
    return queryset.only(*EVENT_LIST_COLUMNS)


def is_event_id(value: Any) -> bool:
    """Whether ``value`` looks like a public event id (cheap check before a query)."""
    text = str(value or "")
    rest = text[4:]
    return text.startswith("evt_") and 0 < len(rest) <= 36 and rest.isascii() and rest.isalnum()


def event_detail(queryset: QuerySet[Event], public_id: Any) -> Event | None:
    """One event by public id with ``event.delivery_rows``: the deliveries it produced
    (oldest first, with their endpoints' names), or None."""
    if not is_event_id(public_id):
        return None
    event = queryset.filter(public_id=public_id).first()
    if event is None:
        return None
    event.delivery_rows = list(
        list_columns(Delivery.objects.filter(event=event, tenant=event.tenant))
        .select_related("endpoint")
        .order_by("id")
    )
    return event


# Stats -----------------------------------------------------------------------------------
def stats(tenant: str | None = None) -> dict[str, int]:
    """Counts for dashboards: endpoints total/active/inactive, event types subscribed,
    deliveries failed in the last 24 hours. ``tenant=None`` counts every tenant."""
    endpoint_qs = endpoints(tenant)
    subs = Subscription.objects.filter(enabled=True)
    failed = deliveries(tenant=tenant).filter(
        status=Delivery.Status.FAILED, last_attempt_at__gte=timezone.now() - timedelta(days=1)
    )
    if tenant is not None:
        subs = subs.filter(endpoint__tenant=tenant)
    counts = endpoint_qs.aggregate(total=Count("id"), active=Count("id", filter=Q(is_active=True)))
    return {
        "total": counts["total"],
        "active": counts["active"],
        "inactive": counts["total"] - counts["active"],
        "event_types": subs.values("event_type").distinct().count(),
        "failed_24h": failed.count(),
    }


# Operations (metrics, webhooks_status) ------------------------------------------------------
@dataclass
class Backlog:
    due: int  # pending deliveries due now, not claimed by a worker
    oldest_due: datetime | None  # the due time of the one waiting longest
    in_flight: int  # claimed by a worker right now
    claims: int  # distinct claims (a worker's batch) in flight


def backlog(now: datetime | None = None) -> Backlog:
    """Due and in-flight deliveries; served by the partial index on pending rows."""
    now = now or timezone.now()
    pending = Delivery.objects.filter(status=Delivery.Status.PENDING).order_by()
    due = pending.filter(next_attempt_at__lte=now).aggregate(
        n=Count("id"), oldest=Min("next_attempt_at")
    )
    flight = (
        pending.filter(next_attempt_at__gt=now)
        .exclude(claim_token="")
        .aggregate(n=Count("id"), claims=Count("claim_token", distinct=True))
    )
    return Backlog(due["n"], due["oldest"], flight["n"], flight["claims"])


def failing_endpoints(limit: int = 50) -> list[Endpoint]:
    """Active endpoints whose last deliveries failed for good (most failures first)."""
    return list(
        Endpoint.objects.filter(is_active=True, consecutive_failures__gt=0).order_by(
            "-consecutive_failures", "id"
        )[:limit]
    )


def disabled_endpoints(limit: int = 50) -> list[Endpoint]:
    return list(Endpoint.objects.filter(is_active=False).order_by("-updated_at")[:limit])


def recent_activity(minutes: int = 5, now: datetime | None = None) -> dict[str, int]:
    """Deliveries whose last attempt falls in the last ``minutes``, by status."""
    since = (now or timezone.now()) - timedelta(minutes=minutes)
    rows = (
        Delivery.objects.filter(last_attempt_at__gte=since)
        .order_by()
        .values_list("status")
        .annotate(n=Count("id"))
    )
    return dict(rows)


def in_flight_by_worker(now: datetime | None = None) -> dict[str, int]:
    """Deliveries claimed right now, by worker (``pid.host`` from the claim token)."""
    now = now or timezone.now()
    rows = (
        Delivery.objects.filter(status=Delivery.Status.PENDING, next_attempt_at__gt=now)
        .exclude(claim_token="")
        .order_by()
        .values_list("claim_token")
        .annotate(n=Count("id"))
    )
    workers: dict[str, int] = {}
    for token, n in rows:
        tag = token.rsplit(".", 1)[0] if token.count(".") == 2 else "?"
        workers[tag] = workers.get(tag, 0) + n
    return workers
