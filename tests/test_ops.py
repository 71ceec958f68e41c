"""Running it for months: unrouted events, retention, emit once, bulk recovery (issue 11)."""

import json
import threading
import time
from datetime import timedelta

import pytest
import standardwebhooks
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.db import connection, transaction
from django.test import override_settings
from django.utils import timezone

from tests.receiver import Reply
from webhooks_app import emit, engine, services
from webhooks_app.models import (
    Delivery,
    DeliveryAttempt,
    Endpoint,
    Event,
    IdempotencyKey,
    Recovery,
)

pytestmark = pytest.mark.django_db(transaction=True)


def webhooks(**changes):
    return override_settings(WEBHOOKS_APP={**settings.WEBHOOKS_APP, **changes})


# Unrouted events ---------------------------------------------------------------------------
def test_unrouted_event_writes_nothing_and_returns_an_unsaved_event(receiver, make_endpoint):
    make_endpoint(receiver.url(), events=["user.deleted"])
    event = emit("user.created", {"id": 1}, tenant="")
    assert event.pk is None and event.public_id.startswith("evt_")
    assert json.loads(event.body)["data"] == {"id": 1}
    assert Event.objects.count() == 0 and Delivery.objects.count() == 0
    routed = emit("user.deleted", {"id": 1})
    assert routed.pk is not None and Event.objects.count() == 1
    engine.drain()
    (req,) = receiver.wait_for(1)
    assert json.loads(req.body)["id"] == routed.public_id


def test_keep_unrouted_events_keeps_them_for_the_event_log(make_endpoint):
    with webhooks(KEEP_UNROUTED_EVENTS=True):
        event = emit("user.created", {"id": 2})
    stored = Event.objects.get()
    assert stored.pk == event.pk and stored.body == event.body
    assert not Delivery.objects.exists()


def test_emit_command_reports_an_unrouted_event(capsys, make_endpoint):
    call_command("webhooks_emit", "user.created", '{"a": 1}')
    assert "0 delivery(ies) queued" in capsys.readouterr().out
    assert not Event.objects.exists()
    make_endpoint("http://127.0.0.1:9/hook")
    for _ in range(2):
        call_command("webhooks_emit", "user.created", "{}", "--idempotency-key", "cli-1")
    out = capsys.readouterr().out
    assert out.count("1 delivery(ies) queued") == 2  # the same event, reported twice
    assert Event.objects.count() == 1


# Emit once ---------------------------------------------------------------------------------
def test_same_key_returns_the_first_event_and_creates_nothing(receiver, make_endpoint):
    make_endpoint(receiver.url(), tenant="acme")
    make_endpoint(receiver.url("/globex"), tenant="globex")
    first = emit("user.created", {"n": 1}, tenant="acme", idempotency_key="order-42-paid")
    again = emit("user.created", {"n": 2}, tenant="acme", idempotency_key="order-42-paid")
    assert again.pk == first.pk and again.public_id == first.public_id
    assert json.loads(again.body)["data"] == {"n": 1}
    # Per tenant: another tenant's same key is its own event.
    other = emit("user.created", {"n": 3}, tenant="globex", idempotency_key="order-42-paid")
    assert other.pk != first.pk
    assert Event.objects.count() == 2 and Delivery.objects.count() == 2
    engine.drain()
    reqs = receiver.wait_for(2)
    time.sleep(0.3)
    assert sorted(json.loads(r.body)["data"]["n"] for r in receiver.received) == [1, 3]
    assert len(reqs) == 2


def test_key_expires_after_the_window(make_endpoint):
    make_endpoint("http://127.0.0.1:9/hook")
    first = emit("user.created", {}, idempotency_key="k")
    IdempotencyKey.objects.update(created_at=timezone.now() - timedelta(hours=25))
    second = emit("user.created", {}, idempotency_key="k")
    assert second.pk != first.pk
    assert emit("user.created", {}, idempotency_key="k").pk == second.pk
    with webhooks(IDEMPOTENCY_WINDOW=60):
        IdempotencyKey.objects.update(created_at=timezone.now() - timedelta(seconds=61))
        assert emit("user.created", {}, idempotency_key="k").pk not in (first.pk, second.pk)
    assert IdempotencyKey.objects.count() == 1


def test_unrouted_event_with_a_key_is_returned_again_without_an_event_row():
    first = emit("user.created", {"x": "ü"}, idempotency_key="unrouted-1")
    again = emit("user.created", {"x": "other"}, idempotency_key="unrouted-1")
    assert first.pk is None and again.pk is None
    assert again.public_id == first.public_id and again.body == first.body
    assert again.data == {"x": "ü"}
    assert not Event.objects.exists()


def test_duplicate_inside_the_callers_transaction_keeps_it_usable(make_endpoint):
    make_endpoint("http://127.0.0.1:9/hook")
    with transaction.atomic():
        first = emit("user.created", {}, idempotency_key="tx")
        assert emit("user.created", {}, idempotency_key="tx").pk == first.pk
        Group.objects.create(name="after-the-duplicate")  # the transaction still works
    assert Group.objects.filter(name="after-the-duplicate").exists()
    assert Event.objects.count() == 1


def test_rolled_back_first_call_frees_the_key(make_endpoint):
    make_endpoint("http://127.0.0.1:9/hook")
    with pytest.raises(RuntimeError), transaction.atomic():
        emit("user.created", {}, idempotency_key="rb")
        raise RuntimeError
    assert not IdempotencyKey.objects.exists()
    assert emit("user.created", {}, idempotency_key="rb").pk is not None


@pytest.mark.parametrize("bad", ["", "x" * 201, "nul\x00", 42])
def test_bad_keys_are_a_field_error(bad):
    with pytest.raises(ValidationError) as exc:
        emit("user.created", {}, idempotency_key=bad)
    assert "idempotency_key" in exc.value.message_dict
    assert not IdempotencyKey.objects.exists()


def test_concurrent_callers_with_one_key_create_one_event(make_endpoint):
    """Two threads, two connections: the first holds its transaction open after taking the
    key; the second must wait for it and then get the first event, not a second one."""
    make_endpoint("http://127.0.0.1:9/hook")
    took_key = threading.Event()
    results: dict[str, object] = {}
    errors: list[BaseException] = []

    def first():
        try:
            with transaction.atomic():
                results["first"] = emit("user.created", {"who": 1}, idempotency_key="race")
                took_key.set()
                time.sleep(0.5)  # the second caller runs meanwhile
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
            took_key.set()
        finally:
            connection.close()

    def second():
        try:
            took_key.wait(5)
            started = time.monotonic()
            with transaction.atomic():
                results["second"] = emit("user.created", {"who": 2}, idempotency_key="race")
            results["waited"] = time.monotonic() - started
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not errors, errors
    assert results["second"].pk == results["first"].pk
    assert results["waited"] >= 0.3  # it really waited for the first transaction
    assert Event.objects.count() == 1 and Delivery.objects.count() == 1
    assert json.loads(Event.objects.get().body)["data"] == {"who": 1}


# Retention -----------------------------------------------------------------------------------
def _history(receiver, make_endpoint):
    """Deliveries of every kind, aged: returns {name: delivery id} and old/new event ids."""
    ok_ep, _ = make_endpoint(receiver.url("/ok"), events=["user.created", "user.deleted"])
    receiver.script(Reply(500))
    with webhooks(RETRY_SCHEDULE=[0]):
        failed = emit("user.deleted", {"n": "failed"})
        engine.drain()
    old_ok = emit("user.created", {"n": "old ok"})
    new_ok = emit("user.created", {"n": "new ok"})
    engine.drain()
    mixed = emit("user.created", {"n": "mixed"})  # one old finished + one pending delivery
    engine.drain()
    second, _ = make_endpoint("http://127.0.0.1:9/never", events=["payment.succeeded"])
    Delivery.objects.create(
        event=mixed, endpoint=second, event_type="user.created", next_attempt_at=None
    )
    old_pending = emit("user.created", {"n": "old pending"})  # never drained: pending
    with webhooks(KEEP_UNROUTED_EVENTS=True):
        unrouted = emit("subscription.cancelled", {})
        unsent = Delivery.objects.create(  # failed without an attempt (endpoint disabled)
            event=emit("conversation.ended", {"n": "unsent"}),
            endpoint=second,
            event_type="conversation.ended",
            status="failed",
        )
    long_ago = timezone.now() - timedelta(days=40)
    old = [failed.pk, old_ok.pk, mixed.pk, old_pending.pk, unsent.event_id, unrouted.pk]
    Event.objects.filter(pk__in=old).update(created_at=long_ago)
    Delivery.objects.filter(event_id__in=old).update(created_at=long_ago)
    Delivery.objects.filter(event_id__in=old, last_attempt_at__isnull=False).update(
        last_attempt_at=long_ago
    )
    DeliveryAttempt.objects.filter(delivery__event_id__in=old).update(started_at=long_ago)
    assert Delivery.objects.filter(event=old_pending, status="pending").exists()
    return {
        "failed": failed.pk,
        "old_ok": old_ok.pk,
        "new_ok": new_ok.pk,
        "mixed": mixed.pk,
        "old_pending": old_pending.pk,
        "unsent": unsent.event_id,
        "unrouted": unrouted.pk,
    }


def test_prune_deletes_finished_old_rows_and_keeps_pending_and_recent(receiver, make_endpoint):
    ev = _history(receiver, make_endpoint)
    before = (Delivery.objects.count(), DeliveryAttempt.objects.count(), Event.objects.count())
    dry = services.prune(dry_run=True)
    assert (Delivery.objects.count(), DeliveryAttempt.objects.count(), Event.objects.count()) == (
        before
    )
    result = services.prune()
    assert (dry.deliveries, dry.attempts, dry.events) == (
        result.deliveries,
        result.attempts,
        result.events,
    )
    # failed, old ok, mixed's finished one, unsent; attempts of the first three.
    assert (result.deliveries, result.attempts) == (4, 3)
    assert set(Event.objects.values_list("pk", flat=True)) == {
        ev["new_ok"],
        ev["mixed"],  # still has a pending delivery
        ev["old_pending"],
    }
    assert Delivery.objects.filter(event_id=ev["mixed"]).get().status == "pending"
    assert Delivery.objects.filter(event_id=ev["old_pending"]).get().status == "pending"
    assert Delivery.objects.get(event_id=ev["new_ok"]).attempt_log.count() == 1
    assert result.events == 4  # failed, old ok, unsent, unrouted
    assert services.prune().deliveries == 0  # nothing left to do


def test_prune_in_batches_with_days_and_a_time_limit(receiver, make_endpoint):
    make_endpoint(receiver.url())
    for i in range(7):
        emit("user.created", {"i": i})
    engine.drain()
    Delivery.objects.update(last_attempt_at=timezone.now() - timedelta(days=3))
    Event.objects.update(created_at=timezone.now() - timedelta(days=3))
    assert services.prune().deliveries == 0  # 30 days by default
    with webhooks(PRUNE_BATCH_SIZE=2, PRUNE_PAUSE=0):
        assert services.prune(days=1, max_seconds=0).complete is False
        result = services.prune(days=1)
    assert (result.deliveries, result.attempts, result.events) == (7, 7, 7)
    with webhooks(RETENTION_DAYS=0):
        assert services.prune(days=None).deliveries == 0


def test_a_slow_sqlite_batch_is_cut_short_and_the_rest_comes_next(
    receiver, make_endpoint, monkeypatch
):
    """On SQLite a batch goes in slices and stops once the next would end past the
    target (here: at once, so one slice of 2 per transaction); nothing is skipped."""
    from webhooks_app import retention

    if connection.vendor != "sqlite":
        pytest.skip("PostgreSQL batches are not sliced")
    make_endpoint(receiver.url())
    for i in range(7):
        emit("user.created", {"i": i})
    engine.drain()
    long_ago = timezone.now() - timedelta(days=40)
    Delivery.objects.update(last_attempt_at=long_ago)
    Event.objects.update(created_at=long_ago)
    monkeypatch.setattr(retention, "CHUNK", 2)
    monkeypatch.setattr(retention, "SQLITE_TARGET_MS", 0.0)
    commits = []
    real_atomic = retention.transaction.atomic
    monkeypatch.setattr(
        retention.transaction,
        "atomic",
        lambda **kw: commits.append(1) or real_atomic(**kw),
    )
    with webhooks(PRUNE_PAUSE=0):
        result = retention.prune()
    assert (result.deliveries, result.attempts, result.events) == (7, 7, 7)
    assert len(commits) >= 4  # 2 + 2 + 2 + 1, not one transaction of 7
    assert not Delivery.objects.exists() and not Event.objects.exists()


def test_prune_command(receiver, make_endpoint, capsys):
    make_endpoint(receiver.url())
    emit("user.created", {})
    engine.drain()
    Delivery.objects.update(last_attempt_at=timezone.now() - timedelta(days=10))
    Event.objects.update(created_at=timezone.now() - timedelta(days=10))
    call_command("webhooks_prune", "--days", "5", "--dry-run")
    out = capsys.readouterr().out
    assert "would delete 1 deliveries, 1 attempts, 1 events" in out
    assert Delivery.objects.count() == 1
    call_command("webhooks_prune", "--days", "5")
    assert "deleted 1 deliveries, 1 attempts, 1 events" in capsys.readouterr().out
    assert not Delivery.objects.exists() and not DeliveryAttempt.objects.exists()
    with pytest.raises(CommandError):
        call_command("webhooks_prune", "--days", "0")


def test_prune_deletes_idempotency_keys_past_their_window(make_endpoint):
    emit("user.created", {}, idempotency_key="old")
    emit("user.created", {}, idempotency_key="new")
    IdempotencyKey.objects.filter(key="old").update(created_at=timezone.now() - timedelta(days=2))
    assert services.prune().idempotency_keys == 1
    assert list(IdempotencyKey.objects.values_list("key", flat=True)) == ["new"]
    endpoint, _ = make_endpoint("http://127.0.0.1:9/hook")
    services.recover(endpoint, since=timezone.now() - timedelta(hours=1))
    services.recover(endpoint, since=timezone.now() - timedelta(hours=1))
    Recovery.objects.filter(pk=Recovery.objects.first().pk).update(
        created_at=timezone.now() - timedelta(days=31)
    )
    services.prune()
    assert Recovery.objects.count() == 1


def test_the_prune_schedule_is_created_once_after_migrate():
    from django_q.models import Schedule

    from webhooks_app import retention

    # post_migrate ran when the test database was set up (and after each flush).
    assert Schedule.objects.filter(func="webhooks_app.tasks.prune").count() == 1
    assert retention.ensure_schedule() is False
    call_command("migrate", verbosity=0)
    (schedule,) = Schedule.objects.filter(func="webhooks_app.tasks.prune")
    assert schedule.schedule_type == Schedule.HOURLY and schedule.repeats == -1
    Schedule.objects.all().delete()
    assert retention.ensure_schedule() is True
    assert retention.ensure_schedule() is False


# Recover in bulk -----------------------------------------------------------------------------
def _failures(receiver, make_endpoint, n=3, tenant=""):
    """An endpoint with ``n`` failed deliveries (HTTP 500), plus a succeeded one."""
    endpoint, secret = make_endpoint(receiver.url(), tenant=tenant)
    receiver.script(*[Reply(500, b"down")] * n)
    with webhooks(RETRY_SCHEDULE=[0]):
        events = [emit("user.created", {"i": i}, tenant=tenant) for i in range(n)]
        engine.drain()
        emit("user.created", {"i": "ok"}, tenant=tenant)
        engine.drain()
    assert Delivery.objects.filter(endpoint=endpoint, status="failed").count() == n
    return endpoint, secret, events


def test_recover_replays_failed_deliveries_in_the_window_once(receiver, make_endpoint):
    endpoint, secret, events = _failures(receiver, make_endpoint)
    other, _ = make_endpoint(receiver.url("/other"), events=["user.deleted"])
    receiver.script(Reply(500))
    with webhooks(RETRY_SCHEDULE=[0]):
        emit("user.deleted", {})
        engine.drain()
    old = Delivery.objects.get(endpoint=endpoint, event=events[0])
    Delivery.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=3))
    received_before = len(receiver.received)
    since = timezone.now() - timedelta(days=1)
    result = services.recover(endpoint, since=since)
    assert result.queued == 2  # not the one created 3 days ago, not the other endpoint's
    assert services.recover(endpoint, since=since).queued == 0  # clicked twice
    assert Delivery.objects.get(pk=old.pk).status == "failed"
    assert Delivery.objects.filter(endpoint=other, status="failed").count() == 1
    engine.drain()
    got = receiver.wait_for(received_before + 2)[received_before:]
    assert sorted(json.loads(r.body)["data"]["i"] for r in got) == [1, 2]
    for r in got:  # same event id and bytes as the first attempt, freshly signed
        event = Event.objects.get(public_id=r.header("webhook-id"))
        assert r.body == event.body.encode()
        standardwebhooks.Webhook(secret).verify(r.body, r.headers)
    assert Delivery.objects.filter(endpoint=endpoint, status="succeeded").count() == 3
    until_result = services.recover(
        endpoint, since=timezone.now() - timedelta(days=4), until=timezone.now() - timedelta(days=2)
    )
    assert until_result.queued == 1
    assert Recovery.objects.filter(endpoint=endpoint).count() == 3


def test_recover_validates_and_refuses_a_disabled_endpoint(make_endpoint):
    endpoint, _ = make_endpoint("http://127.0.0.1:9/hook")
    now = timezone.now()
    for kwargs, field in [
        ({"since": "yesterday"}, "since"),
        ({"since": None}, "since"),
        ({"since": now + timedelta(hours=1)}, "since"),
        ({"since": now, "until": now - timedelta(hours=1)}, "until"),
        ({"since": "2026-01-01T00:00:00Z", "until": "\x00"}, "until"),
    ]:
        with pytest.raises(ValidationError) as exc:
            services.recover(endpoint, **kwargs)
        assert field in exc.value.message_dict, kwargs
    services.update_endpoint(endpoint, is_active=False)
    with pytest.raises(ValidationError, match="disabled"):
        services.recover(endpoint, since=now - timedelta(hours=1))
    assert not Recovery.objects.exists()


def test_recover_is_throttled_per_tenant(make_endpoint):
    a, _ = make_endpoint("http://127.0.0.1:9/a", tenant="acme")
    b, _ = make_endpoint("http://127.0.0.1:9/b", tenant="acme")
    c, _ = make_endpoint("http://127.0.0.1:9/c", tenant="globex")
    since = timezone.now() - timedelta(hours=1)
    with webhooks(RECOVER_RATE="2/hour"):
        services.recover(a, since=since)
        services.recover(b, since=since)
        with pytest.raises(services.RecoverThrottled) as exc:
            services.recover(a, since=since)
        assert 3500 < exc.value.wait <= 3600
        services.recover(c, since=since)  # another tenant has its own allowance
        Recovery.objects.update(created_at=timezone.now() - timedelta(hours=2))
        services.recover(a, since=since)
    with webhooks(RECOVER_RATE=None):
        for _ in range(5):
            services.recover(a, since=since)


def test_recover_command(receiver, make_endpoint, capsys):
    endpoint, _, _ = _failures(receiver, make_endpoint, n=2)
    call_command("webhooks_recover", str(endpoint.pk), "--since", "1h")
    assert "2 failed delivery(ies)" in capsys.readouterr().out
    call_command("webhooks_recover", str(endpoint.pk), "--since", "2020-01-01T00:00:00Z")
    assert "0 failed delivery(ies)" in capsys.readouterr().out
    with pytest.raises(CommandError, match="No endpoint"):
        call_command("webhooks_recover", "999999", "--since", "1h")
    with pytest.raises(CommandError, match="date and time"):
        call_command("webhooks_recover", str(endpoint.pk), "--since", "soon")


def test_recover_api(receiver, make_endpoint):
    from rest_framework.test import APIClient

    alice = get_user_model().objects.create_user("alice", password="pw")
    bob = get_user_model().objects.create_user("bob", password="pw")
    endpoint, _, _ = _failures(receiver, make_endpoint, n=2, tenant=str(alice.pk))
    client = APIClient()
    client.force_authenticate(alice)
    path = f"/api/webhooks/endpoints/{endpoint.pk}/recover/"
    since = (timezone.now() - timedelta(hours=1)).isoformat()
    r = client.post(path, {"since": since}, format="json")
    assert r.status_code == 202, r.content
    assert r.json()["queued"] == 2 and r.json()["until"] is None
    assert client.post(path, {"since": since}, format="json").json()["queued"] == 0
    r = client.post(path, {"since": "nope"}, format="json")
    assert r.status_code == 400 and "since" in r.json()
    r = client.post(path, {"since": since, "extra": 1}, format="json")
    assert r.status_code == 400
    r = client.post(path, {"since": since, "until": since}, format="json")
    assert r.status_code == 400 and "until" in r.json()
    other = APIClient()
    other.force_authenticate(bob)
    assert other.post(path, {"since": since}, format="json").status_code == 404
    with webhooks(RECOVER_RATE="1/hour"):
        r = client.post(path, {"since": since}, format="json")
        assert r.status_code == 429 and int(r["Retry-After"]) > 3000
    services.update_endpoint(endpoint, is_active=False)
    assert client.post(path, {"since": since}, format="json").status_code == 409


def test_recover_admin_page(receiver, make_endpoint, admin_client):
    from django.urls import reverse

    endpoint, _, _ = _failures(receiver, make_endpoint, n=2)
    url = reverse("admin:webhooks_app_endpoint_recover", args=[endpoint.pk])
    page = admin_client.get(url)
    assert page.status_code == 200
    html = page.content.decode()
    assert 'class="wh-failed-count">2<' in html and 'name="since"' in html
    change = admin_client.get(reverse("admin:webhooks_app_endpoint_change", args=[endpoint.pk]))
    assert url in change.content.decode()  # the "Recover failed" link on the endpoint page
    since = (timezone.localtime() - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
    r = admin_client.post(url, {"since": since, "until": ""})
    assert r.status_code == 302 and r["Location"].endswith("?status=pending")
    assert Delivery.objects.filter(endpoint=endpoint, status="pending").count() == 2
    r = admin_client.post(url, {"since": since, "until": ""}, follow=True)
    assert "0 failed deliveries queued" in r.content.decode()
    r = admin_client.post(url, {"since": since, "until": since})
    assert r.status_code == 200 and "The end must come after the start" in r.content.decode()


def test_recover_admin_page_needs_change_permission(make_endpoint, client):
    from django.contrib.auth.models import Permission
    from django.urls import reverse

    endpoint, _ = make_endpoint("http://127.0.0.1:9/hook")
    viewer = get_user_model().objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_endpoint"))
    client.force_login(viewer)
    url = reverse("admin:webhooks_app_endpoint_recover", args=[endpoint.pk])
    assert client.get(url).status_code == 403
    assert client.post(url, {"since": "2026-01-01T00:00"}).status_code == 403
    assert not Recovery.objects.exists()


# Metrics -------------------------------------------------------------------------------------
def test_metrics_view_token_and_empty_database(client):
    body = client.get("/metrics/").content.decode()
    assert (
        "webhooks_backlog 0.0" in body and 'webhooks_endpoints{breaker_state="closed"} 0.0' in body
    )
    with webhooks(METRICS_TOKEN="s3cret-token"):
        assert client.get("/metrics/").status_code == 401
        assert client.get("/metrics/", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
        ok = client.get("/metrics/", HTTP_AUTHORIZATION="Bearer s3cret-token")
        assert ok.status_code == 200 and b"webhooks_deliveries" in ok.content
    assert client.post("/metrics/").status_code == 405


def test_metrics_backlog_and_oldest_due(client, make_endpoint):
    make_endpoint("http://127.0.0.1:9/hook")
    for _ in range(3):
        emit("user.created", {})
    Delivery.objects.update(next_attempt_at=timezone.now() - timedelta(seconds=90))
    body = client.get("/metrics/").content.decode()
    assert "webhooks_backlog 3.0" in body
    age = float(body.split("\nwebhooks_oldest_due_age_seconds ")[1].split()[0])
    assert 89 < age < 120
    assert 'webhooks_deliveries{event_type="user.created",status="pending"} 3.0' in body


def test_metrics_endpoints_by_breaker_state(client, make_endpoint):
    a, _ = make_endpoint("http://127.0.0.1:9/a")
    make_endpoint("http://127.0.0.1:9/b")
    make_endpoint("http://127.0.0.1:9/c", is_active=False)
    Endpoint.objects.filter(pk=a.pk).update(breaker_state="open")
    body = client.get("/metrics/").content.decode()
    assert 'webhooks_endpoints{breaker_state="open"} 1.0' in body
    assert 'webhooks_endpoints{breaker_state="closed"} 1.0' in body
    assert 'webhooks_endpoints{breaker_state="half_open"} 0.0' in body
    assert "webhooks_endpoints_disabled 1.0" in body


@pytest.mark.parametrize(
    "changes, check_id",
    [
        ({"PROXY": "socks5://x:1"}, "webhooks_app.E030"),
        ({"RECOVER_RATE": "ten"}, "webhooks_app.E031"),
    ],
)
def test_bad_operations_settings_fail_the_system_check(changes, check_id):
    from webhooks_app.checks import check_operations

    assert check_operations() == []
    with webhooks(**changes):
        assert [e.id for e in check_operations()] == [check_id]


def test_two_concurrent_recoveries_pass_the_throttle_once(make_endpoint):
    endpoint, _ = make_endpoint("http://127.0.0.1:9/hook", tenant="acme")
    since = timezone.now() - timedelta(hours=1)
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def click():
        try:
            barrier.wait(5)
            services.recover(endpoint, since=since)
            outcomes.append("ok")
        except services.RecoverThrottled:
            outcomes.append("throttled")
        finally:
            connection.close()

    with webhooks(RECOVER_RATE="1/hour"):
        threads = [threading.Thread(target=click) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
    assert sorted(outcomes) == ["ok", "throttled"]
    assert Recovery.objects.count() == 1
