"""The shared read side: keyset pages, the capped count, filters, stats, tenant scoping."""

from __future__ import annotations

import pytest

from webhooks_app import emit, queries
from webhooks_app.models import Delivery

pytestmark = pytest.mark.django_db


def test_history_pages_count_and_cap(make_endpoint, receiver):
    endpoint, _ = make_endpoint(receiver.url())
    for n in range(7):
        emit("user.created", {"n": n})
    ids = list(
        Delivery.objects.filter(endpoint=endpoint).order_by("-id").values_list("id", flat=True)
    )
    qs = queries.deliveries(endpoint=endpoint)
    first = queries.history_page(qs, page_size=3, count_cap=5)
    assert [d.id for d in first.rows] == ids[:3]
    assert first.first and first.newer is None and first.older == ids[2]
    assert (first.count, first.count_capped) == (5, True)  # 7 rows, counted up to 5
    second = queries.history_page(qs, before=first.older, page_size=3)
    assert [d.id for d in second.rows] == ids[3:6]
    assert second.newer == ids[3] and second.older == ids[5] and not second.first
    assert (second.count, second.count_capped) == (7, False)
    back = queries.history_page(qs, after=second.newer, page_size=3)
    assert [d.id for d in back.rows] == ids[:3] and back.newer is None
    # Cursors that are not ids give the newest page, never an error.
    for junk in ("abc", "-1", "١", str(2**70)):
        assert [d.id for d in queries.history_page(qs, before=junk, page_size=3).rows] == ids[:3]
    # A short history is counted from the page itself.
    whole = queries.history_page(qs)
    assert (whole.count, whole.count_capped, whole.older) == (7, False, None)


def test_filters_and_tenant_scope(make_endpoint, receiver):
    mine, _ = make_endpoint(receiver.url(), events=["user.created", "user.updated"], tenant="a")
    other, _ = make_endpoint(receiver.url("/b"), tenant="b", name="Other CRM")
    emit("user.created", {}, tenant="a")
    emit("user.updated", {}, tenant="a")
    emit("user.created", {}, tenant="b")
    Delivery.objects.filter(event_type="user.updated").update(status="failed")
    a = queries.deliveries(tenant="a")
    assert a.count() == 2 and queries.deliveries(tenant="b").count() == 1
    assert [d.event_type for d in queries.filter_deliveries(a, status="failed")] == ["user.updated"]
    assert queries.filter_deliveries(a, event_type="user.created").count() == 1
    assert queries.filter_deliveries(a, endpoint_id=other.pk).count() == 0
    assert list(queries.endpoints("a")) == [mine]
    found = queries.filter_endpoints(queries.endpoints(None), search="other crm")
    assert list(found) == [other]
    assert list(queries.filter_endpoints(queries.endpoints("a"), is_active=False)) == []
    listed = queries.with_list_columns(queries.endpoints("a"), last_delivery_at=True).get()
    assert listed.event_count == 2 and listed.last_delivery_status == "failed"
    assert listed.last_delivery_at is not None


def test_stats_per_tenant(make_endpoint, receiver):
    from django.utils import timezone

    make_endpoint(receiver.url(), tenant="a")
    off, _ = make_endpoint(receiver.url(), events=["user.deleted"], tenant="a", is_active=False)
    make_endpoint(receiver.url(), tenant="b")
    emit("user.created", {}, tenant="a")
    Delivery.objects.update(status="failed", last_attempt_at=timezone.now())
    assert queries.stats("a") == {
        "total": 2,
        "active": 1,
        "inactive": 1,
        "event_types": 2,
        "failed_24h": 1,
    }
    assert queries.stats()["total"] == 3
    assert queries.stats("nobody")["total"] == 0
