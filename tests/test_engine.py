"""The delivery engine in-process, against a real HTTP receiver on 127.0.0.1."""

import base64
import hashlib
import hmac
import json
import logging
import os
import socket
import time
from contextlib import contextmanager
from datetime import UTC, timedelta
from urllib.parse import parse_qsl

import pytest
import standardwebhooks
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.test import override_settings
from django.utils import timezone

from tests.receiver import Reply
from webhooks_app import emit, engine, services, signals, signing
from webhooks_app.models import Delivery, DeliveryAttempt, Endpoint, Event

pytestmark = pytest.mark.django_db(transaction=True)


def webhooks(**changes):
    return override_settings(WEBHOOKS_APP={**settings.WEBHOOKS_APP, **changes})


@contextmanager
def held_in_another_transaction(take):
    """``take()`` (row locks, writes) in a transaction of another thread, left open
    until the block ends: what a concurrent worker or a site's request holds."""
    import threading

    from django.db import connections

    holding, release = threading.Event(), threading.Event()

    def hold():
        try:
            with transaction.atomic():
                take()
                holding.set()
                release.wait(10)
        finally:
            connections.close_all()

    t = threading.Thread(target=hold)
    t.start()
    try:
        assert holding.wait(10)
        yield
    finally:
        release.set()
        t.join(10)


def drain_until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        engine.drain()
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached")


def test_signed_delivery_bytes_headers_and_signatures(receiver, make_endpoint):
    endpoint, secret = make_endpoint(
        receiver.url(), headers={"Authorization": "Bearer abc123"}, name="CRM"
    )
    event = emit("user.created", {"email": "mike@example.com", "name": "Mïke"})
    assert engine.drain() == 1
    (req,) = receiver.wait_for(1)
    assert req.method == "POST"
    assert req.body == event.body.encode("utf-8")
    body = json.loads(req.body)
    assert body == {
        "id": event.public_id,
        "event": "user.created",
        "timestamp": body["timestamp"],
        "version": "v1",
        "tenant": "",
        "data": {"email": "mike@example.com", "name": "Mïke"},
    }
    at = event.created_at.astimezone(UTC)
    assert body["timestamp"] == f"{at:%Y-%m-%dT%H:%M:%S}.{at.microsecond // 1000:03d}Z"
    assert req.header("Content-Type") == "application/json"
    assert req.header("User-Agent").startswith("webhooks_app/")
    assert req.header("X-Webhook-Event") == "user.created"
    assert req.header("Authorization") == "Bearer abc123"
    assert req.header("webhook-id") == event.public_id == req.header("X-Webhook-Id")
    # Independent checks: the standardwebhooks library, and a plain HMAC of the raw body.
    standardwebhooks.Webhook(secret).verify(req.body, req.headers)
    expected = hmac.new(secret.encode(), req.body, hashlib.sha256).hexdigest()
    assert req.header("X-Webhook-Signature") == f"sha256={expected}"
    delivery = Delivery.objects.get(event=event)
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("succeeded", 1, 200)
    attempt = delivery.attempt_log.get()
    assert (
        attempt.succeeded
        and attempt.status_code == 200
        and attempt.response_excerpt == '{"ok":true}'
    )
    assert endpoint.pk == delivery.endpoint_id


def test_rollback_writes_and_sends_nothing(receiver, make_endpoint):
    make_endpoint(receiver.url())
    with pytest.raises(RuntimeError), transaction.atomic():
        emit("user.created", {"email": "x@y.z"})
        raise RuntimeError("the caller's change failed")
    assert Event.objects.count() == 0 and Delivery.objects.count() == 0
    assert engine.drain() == 0
    time.sleep(0.2)
    assert receiver.received == []


def test_unknown_event_type_is_refused_and_nothing_written(make_endpoint):
    with pytest.raises(ValidationError, match="Unknown event type 'user.exploded'"):
        emit("user.exploded", {})
    with pytest.raises(ValidationError, match="not JSON"):
        emit("user.created", {"when": object()})
    assert Event.objects.count() == 0


def test_only_active_subscribed_endpoints_of_the_tenant_get_deliveries(receiver, make_endpoint):
    a, _ = make_endpoint(receiver.url("/a"), tenant="acme")
    make_endpoint(receiver.url("/b"), tenant="globex")
    make_endpoint(receiver.url("/c"), tenant="acme", is_active=False)
    make_endpoint(
        receiver.url("/d"), tenant="acme", events={"user.created": False, "user.deleted": True}
    )
    make_endpoint(receiver.url("/e"), tenant="acme", events=["payment.succeeded"])
    event = emit("user.created", {"id": 1}, tenant="acme")
    assert list(event.deliveries.values_list("endpoint_id", flat=True)) == [a.pk]
    assert emit("user.updated", {}, tenant="acme").pk is None  # unrouted: nothing written
    engine.drain()
    assert [r.path for r in receiver.wait_for(1)] == ["/a"]
    assert json.loads(receiver.received[0].body)["tenant"] == "acme"


def test_tenant_key_name_is_configurable(receiver, make_endpoint):
    make_endpoint(receiver.url(), tenant="ent_abc123")
    with webhooks(TENANT_KEY="enterpriseId"):
        emit("user.created", {}, tenant="ent_abc123")
        engine.drain()
    body = json.loads(receiver.wait_for(1)[0].body)
    assert body["enterpriseId"] == "ent_abc123" and "tenant" not in body


def test_retries_follow_the_schedule_then_succeed(receiver, make_endpoint):
    endpoint, secret = make_endpoint(receiver.url())
    receiver.script(Reply(500, b"boom"), Reply(502, b"bad gateway"))
    with webhooks(RETRY_SCHEDULE=[0, 0.3, 0.6]):
        event = emit("user.created", {"n": 1})
        engine.drain()
        d = Delivery.objects.get(event=event)
        assert (d.status, d.attempts, d.last_status_code) == ("pending", 1, 500)
        # Against the receiver's own clock, not the engine's timestamps: the second
        # attempt is due ~0.3 s after the first answer went out.
        gap = d.next_attempt_at.timestamp() - receiver.wait_for(1)[0].at
        assert 0.25 <= gap <= 0.5, gap
        drain_until(lambda: Delivery.objects.get(pk=d.pk).status == "succeeded")
    reqs = receiver.wait_for(3)
    assert len({r.body for r in reqs}) == 1  # identical bytes on every retry
    assert {r.header("webhook-id") for r in reqs} == {event.public_id}
    for r in reqs:
        standardwebhooks.Webhook(secret).verify(r.body, r.headers)
    assert reqs[1].at - reqs[0].at >= 0.3 and reqs[2].at - reqs[1].at >= 0.6
    attempts = list(DeliveryAttempt.objects.filter(delivery__event=event).order_by("number"))
    assert [(a.number, a.status_code, a.succeeded) for a in attempts] == [
        (1, 500, False),
        (2, 502, False),
        (3, 200, True),
    ]
    assert attempts[0].response_excerpt == "boom" and attempts[0].error == ""
    assert Delivery.objects.get(event=event).last_error == ""


def test_delivery_fails_after_last_attempt_and_signal_fires(receiver, make_endpoint):
    make_endpoint(receiver.url())
    receiver.default = Reply(500, b"down")
    failed = []
    signals.delivery_failed.connect(
        lambda sender, delivery, **kw: failed.append(delivery.pk),
        weak=False,
        dispatch_uid="t-failed",
    )
    try:
        with webhooks(RETRY_SCHEDULE=[0, 0.1]):
            event = emit("user.created", {})
            drain_until(lambda: Delivery.objects.get(event=event).status == "failed")
    finally:
        signals.delivery_failed.disconnect(dispatch_uid="t-failed")
    d = Delivery.objects.get(event=event)
    assert d.attempts == 2 and d.last_error == "HTTP 500" and d.next_attempt_at is None
    assert failed == [d.pk]
    assert len(receiver.received) == 2


def test_410_stops_retrying_and_disables_the_endpoint(receiver, make_endpoint):
    endpoint, _ = make_endpoint(receiver.url())
    receiver.script(Reply(410, b"gone"))
    event = emit("user.created", {})
    engine.drain()
    d = Delivery.objects.get(event=event)
    endpoint.refresh_from_db()
    assert d.status == "failed" and d.attempts == 1
    assert not endpoint.is_active and "410" in endpoint.disabled_reason
    assert emit("user.created", {}).pk is None


def test_retry_after_is_honoured_up_to_the_cap(receiver, make_endpoint):
    make_endpoint(receiver.url())
    receiver.script(
        Reply(429, headers={"Retry-After": "7"}), Reply(503, headers={"Retry-After": "9999"})
    )
    with webhooks(RETRY_SCHEDULE=[0, 1, 1], RETRY_AFTER_MAX=60):
        event = emit("user.created", {})
        engine.drain()
        d = Delivery.objects.get(event=event)
        assert 6.9 <= (d.next_attempt_at - d.last_attempt_at).total_seconds() <= 7.1
        Delivery.objects.filter(pk=d.pk).update(next_attempt_at=timezone.now())
        engine.drain()
        d.refresh_from_db()
        assert (d.next_attempt_at - d.last_attempt_at).total_seconds() == pytest.approx(60, abs=0.1)


def test_redirect_is_not_followed_and_counts_as_failure(receiver, make_endpoint):
    make_endpoint(receiver.url())
    receiver.script(Reply(302, headers={"Location": receiver.url("/elsewhere")}))
    with webhooks(RETRY_SCHEDULE=[0]):
        event = emit("user.created", {})
        engine.drain()
    d = Delivery.objects.get(event=event)
    assert d.status == "failed" and "redirect not followed" in d.last_error
    time.sleep(0.2)
    assert [r.path for r in receiver.received] == ["/hook"]


def test_timeout_is_a_failed_attempt(receiver, make_endpoint):
    make_endpoint(receiver.url())
    receiver.script(Reply(200, delay=2.0))
    with webhooks(RETRY_SCHEDULE=[0], TIMEOUT=0.5):
        event = emit("user.created", {})
        engine.drain()
    d = Delivery.objects.get(event=event)
    assert d.status == "failed" and "timed out" in d.last_error and d.last_status_code is None


def test_connection_refused_is_retryable(make_endpoint):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    make_endpoint(f"http://127.0.0.1:{port}/hook")
    event = emit("user.created", {})
    engine.drain()
    d = Delivery.objects.get(event=event)
    assert d.status == "pending" and "connection failed" in d.last_error
    assert d.attempt_log.get().error.startswith("connection failed")


def test_get_endpoint_receives_flattened_query_signed(receiver, make_endpoint):
    _, secret = make_endpoint(receiver.url(), method="GET", payload_extra={"source": "crm"})
    event = emit("user.created", {"email": "a@b.c", "profile": {"plan": "pro"}})
    engine.drain()
    (req,) = receiver.wait_for(1)
    assert req.method == "GET" and req.body == b""
    query = dict(parse_qsl(req.query))
    assert query["id"] == event.public_id and query["event"] == "user.created"
    assert query["data.email"] == "a@b.c" and query["data.profile.plan"] == "pro"
    assert query["source"] == "crm" and query["version"] == "v1"
    signing.verify(secret, req.query.encode(), req.headers)
    # Independent check of the signed content "{id}.{timestamp}.{query string}".
    key = base64.b64decode(secret[len("whsec_") :])
    signed = f"{event.public_id}.{req.header('webhook-timestamp')}.{req.query}".encode()
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert req.header("webhook-signature") == f"v1,{expected}"
    assert req.header("Content-Type") is None


def test_get_endpoint_with_its_own_query_signs_the_whole_query(receiver, make_endpoint):
    _, secret = make_endpoint(receiver.url("/hook?token=abc") + "#frag", method="GET")
    emit("user.created", {"email": "a@b.c"})
    engine.drain()
    (req,) = receiver.wait_for(1)
    assert req.path == "/hook" and req.query.startswith("token=abc&id=evt_")
    signing.verify(secret, req.query.encode(), req.headers)


def test_selected_fields_and_custom_values_shape_the_body(receiver, make_endpoint):
    _, secret = make_endpoint(
        receiver.url(), payload_fields=["email", "company.name"], payload_extra={"app_token": "t-1"}
    )
    emit(
        "user.created",
        {"email": "a@b.c", "password_hint": "no", "company": {"name": "Acme", "size": 5}},
    )
    engine.drain()
    (req,) = receiver.wait_for(1)
    body = json.loads(req.body)
    assert body["data"] == {"email": "a@b.c", "company": {"name": "Acme"}}
    assert body["app_token"] == "t-1"
    standardwebhooks.Webhook(secret).verify(req.body, req.headers)


def test_replay_sends_same_event_id_and_bytes(receiver, make_endpoint):
    make_endpoint(receiver.url())
    receiver.script(Reply(500))
    with webhooks(RETRY_SCHEDULE=[0]):
        event = emit("user.created", {"a": 1})
        engine.drain()
        d = Delivery.objects.get(event=event)
        assert d.status == "failed"
        with pytest.raises(ValidationError, match="still being attempted"):
            services.replay(_pending_copy(d))
        services.replay(d)
        assert d.status == "pending"
        engine.drain()
    d.refresh_from_db()
    assert d.status == "succeeded" and d.attempts == 2
    first, second = receiver.wait_for(2)
    assert first.body == second.body and first.header("webhook-id") == second.header("webhook-id")


def _pending_copy(d):
    d2 = Delivery.objects.get(pk=d.pk)
    d2.status = "pending"
    return d2


def test_rotation_without_grace_old_secret_stops_at_once(receiver, make_endpoint):
    endpoint, old = make_endpoint(receiver.url())
    new = services.rotate_secret(endpoint)
    assert new != old and new.startswith("whsec_")
    emit("user.created", {})
    engine.drain()
    (req,) = receiver.wait_for(1)
    standardwebhooks.Webhook(new).verify(req.body, req.headers)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(old).verify(req.body, req.headers)
    with pytest.raises(signing.WebhookVerificationError):
        signing.verify(old, req.body, req.headers)


def test_rotation_with_grace_signs_with_both_until_it_ends(receiver, make_endpoint):
    endpoint, old = make_endpoint(receiver.url())
    new = services.rotate_secret(endpoint, grace=timedelta(hours=1))
    emit("user.created", {})
    engine.drain()
    (req,) = receiver.wait_for(1)
    for secret in (old, new):
        standardwebhooks.Webhook(secret).verify(req.body, req.headers)
        signing.verify(secret, req.body, req.headers)
    # Once the grace period is over, only the new secret signs.
    Endpoint.objects.filter(pk=endpoint.pk).update(
        previous_secret_expires_at=timezone.now() - timedelta(seconds=1)
    )
    emit("user.created", {})
    engine.drain()
    req2 = receiver.wait_for(2)[1]
    signing.verify(new, req2.body, req2.headers)
    with pytest.raises(signing.WebhookVerificationError):
        signing.verify(old, req2.body, req2.headers)
    with pytest.raises(ValidationError):
        services.rotate_secret(endpoint, grace=timedelta(days=30))


def test_send_test_is_synchronous_and_recorded(receiver, make_endpoint):
    endpoint, secret = make_endpoint(receiver.url())
    result = services.send_test(endpoint)
    assert result.ok and result.status_code == 200 and result.response_excerpt == '{"ok":true}'
    (req,) = receiver.wait_for(1)
    body = json.loads(req.body)
    assert body["event"] == "webhook.test" and body["data"] == {"message": "This is a test webhook"}
    standardwebhooks.Webhook(secret).verify(req.body, req.headers)
    assert result.delivery.event_type == "webhook.test" and result.delivery.status == "succeeded"
    receiver.script(Reply(500, b"nope"))
    bad = services.send_test(endpoint)
    assert not bad.ok and bad.status_code == 500 and bad.response_excerpt == "nope"
    assert Delivery.objects.get(pk=bad.delivery.pk).status == "failed"  # tests are not retried
    assert engine.drain() == 0


def test_lease_guard_a_worker_that_lost_its_claim_records_nothing(receiver, make_endpoint):
    make_endpoint(receiver.url())
    emit("user.created", {})
    token, rows = engine.claim(10)
    assert len(rows) == 1
    # The lease runs out and another worker claims the row.
    Delivery.objects.filter(pk=rows[0].pk).update(next_attempt_at=timezone.now())
    token2, rows2 = engine.claim(10)
    assert [r.pk for r in rows2] == [rows[0].pk]
    engine.deliver_chunk(token, rows)  # the first worker finishes late
    d = Delivery.objects.get(pk=rows[0].pk)
    assert d.attempts == 0 and d.claim_token == token2 and not d.attempt_log.exists()
    engine.deliver_chunk(token2, rows2)
    assert Delivery.objects.get(pk=d.pk).status == "succeeded"


def test_record_writes_a_mixed_chunk_and_skips_the_rows_it_lost(make_endpoint, receiver):
    """A chunk with a success, a retried failure, a final failure (NUL and non-ASCII in
    its error) and a row another worker took meanwhile: each owned row gets its own new
    state and exactly one attempt numbered after its earlier ones; the lost row is left
    to its new owner, untouched."""
    endpoint, _ = make_endpoint(receiver.url())
    for _ in range(4):
        emit("user.created", {})
    token, rows = engine.claim(10)
    ok, retried, final, lost = sorted(rows, key=lambda d: d.pk)
    Endpoint.objects.filter(pk=endpoint.pk).update(consecutive_failures=3)
    Delivery.objects.filter(pk=final.pk).update(attempts=5, sequence_attempts=10)
    final.attempts, final.sequence_attempts = 5, 10  # past any retry schedule
    Delivery.objects.filter(pk=lost.pk).update(claim_token="someone-else")
    now = timezone.now()
    outcomes = [
        engine.Outcome(ok, engine.transport.Response(204, 12, excerpt="fine"), now),
        engine.Outcome(retried, engine.transport.Response(503, 30, excerpt="busy"), now),
        engine.Outcome(final, engine.transport.Response(None, 7, error="reset\x00 ü"), now),
        engine.Outcome(lost, engine.transport.Response(200, 5), now),
    ]
    recorded = engine.record(token, outcomes)
    assert [o.delivery.pk for o in recorded] == [ok.pk, retried.pk, final.pk]
    got = {d.pk: d for d in Delivery.objects.filter(pk__in=[d.pk for d in rows])}
    assert got[ok.pk].status == "succeeded" and got[ok.pk].last_status_code == 204
    assert got[ok.pk].next_attempt_at is None and got[ok.pk].claim_token == ""
    assert got[retried.pk].status == "pending" and got[retried.pk].next_attempt_at > now
    assert got[retried.pk].last_error == "HTTP 503" and got[retried.pk].last_response_ms == 30
    assert got[final.pk].status == "failed" and got[final.pk].last_error == "reset\\x00 ü"
    assert got[final.pk].attempts == 6 and got[final.pk].sequence_attempts == 11
    assert got[lost.pk].attempts == 0 and got[lost.pk].claim_token == "someone-else"
    attempts = {a.delivery_id: a for a in DeliveryAttempt.objects.all()}
    assert set(attempts) == {ok.pk, retried.pk, final.pk}
    assert [attempts[d.pk].number for d in (ok, retried, final)] == [1, 1, 6]
    assert attempts[ok.pk].succeeded and attempts[ok.pk].response_excerpt == "fine"
    assert attempts[retried.pk].status_code == 503 and not attempts[retried.pk].succeeded
    assert attempts[final.pk].error == "reset\\x00 ü" and attempts[final.pk].duration_ms == 7
    assert attempts[ok.pk].started_at == now
    # The success ended the run of failures; the final failure then started a new one.
    assert Endpoint.objects.get(pk=endpoint.pk).consecutive_failures == 1
    # The objects in memory follow what was written (and the lost one does not).
    assert ok.status == "succeeded" and final.attempts == 6 and lost.attempts == 0


def test_record_waits_for_a_worker_that_is_taking_the_row_and_then_leaves_it(
    make_endpoint, receiver
):
    """Another worker re-claims one of our rows in a transaction still open while we
    record: our write waits for it, sees the row is no longer ours, and records only the
    other row (PostgreSQL re-checks the claim after the lock; SQLite's write lock
    serialises the two)."""
    import threading

    from django.db import connections

    make_endpoint(receiver.url())
    emit("user.created", {})
    emit("user.created", {})
    token, rows = engine.claim(10)
    mine, taken = sorted(rows, key=lambda d: d.pk)
    now = timezone.now()
    outcomes = [
        engine.Outcome(d, engine.transport.Response(200, 3), now) for d in (mine, taken)
    ]
    result = []
    recorder = threading.Thread(
        target=lambda: (result.extend(engine.record(token, outcomes)), connections.close_all())
    )
    with held_in_another_transaction(
        lambda: Delivery.objects.filter(pk=taken.pk).update(claim_token="other-worker")
    ):
        recorder.start()
        recorder.join(0.5)
        assert recorder.is_alive()  # waiting for the other worker's lock
    recorder.join(10)
    assert [o.delivery.pk for o in result] == [mine.pk]
    assert Delivery.objects.get(pk=taken.pk).claim_token == "other-worker"
    assert Delivery.objects.get(pk=taken.pk).attempts == 0
    assert list(DeliveryAttempt.objects.values_list("delivery_id", flat=True)) == [mine.pk]


@pytest.mark.skipif(connection.vendor != "sqlite", reason="SQLite's planner")
def test_the_claim_walks_the_due_index_in_due_order_on_sqlite(make_endpoint, receiver):
    """Not the (status, last_attempt_at) index and a sort of every pending row, whose
    cost grows with the backlog (SQLite picked it when the status was a parameter)."""
    from webhooks_app import statements

    make_endpoint(receiver.url())
    emit("user.created", {})
    for excluded in ([], [1, 2]):
        sql = statements.due_sql(connection, len(excluded))
        params = statements.due_params(connection, timezone.now(), excluded, 10, "x")
        with connection.cursor() as cursor:
            cursor.execute("EXPLAIN QUERY PLAN " + sql, params)
            plan = " | ".join(row[-1] for row in cursor.fetchall())
        assert f"USING INDEX {statements.DUE_INDEX} (next_attempt_at<?)" in plan, plan
        assert "TEMP B-TREE" not in plan, plan


def test_record_numbers_attempts_by_the_database_not_a_stale_object(make_endpoint, receiver):
    """Counters come from the row (another worker recorded attempts since this object was
    loaded): the attempt is numbered after the database's count, on both databases, and
    the object takes the database's counters. A chunk of connection errors (every status
    NULL) is recorded too."""
    make_endpoint(receiver.url())
    emit("user.created", {})
    emit("user.created", {})
    token, rows = engine.claim(10)
    Delivery.objects.filter(pk__in=[d.pk for d in rows]).update(attempts=5, sequence_attempts=2)
    now = timezone.now()
    outcomes = [
        engine.Outcome(d, engine.transport.Response(None, 0, error="refused: nope"), now)
        for d in rows
    ]
    assert [o.delivery.pk for o in engine.record(token, outcomes)] == [d.pk for d in rows]
    assert sorted(DeliveryAttempt.objects.values_list("number", "status_code")) == [
        (6, None),
        (6, None),
    ]
    assert {(d.attempts, d.sequence_attempts) for d in rows} == {(6, 3)}
    assert {(d.attempts, d.sequence_attempts, d.last_status_code) for d in
            Delivery.objects.all()} == {(6, 3, None)}


@pytest.mark.skipif(
    connection.vendor == "sqlite", reason="SQLite: one write lock, which the site's holds"
)
def test_an_endpoint_row_held_by_a_site_transaction_does_not_hold_up_outcomes(
    make_endpoint, receiver
):
    """A site's transaction holds the endpoint row (an admin save, a test send under
    ATOMIC_REQUESTS) while a worker records a success for it: the outcome is committed
    at once; only the end of the endpoint's run of failures waits for the row."""
    import threading

    from django.db import connections

    endpoint, _ = make_endpoint(receiver.url())
    Endpoint.objects.filter(pk=endpoint.pk).update(consecutive_failures=2)
    emit("user.created", {})
    token, rows = engine.claim(10)
    outcome = engine.Outcome(rows[0], engine.transport.Response(200, 3), timezone.now())
    recorder = threading.Thread(
        target=lambda: (engine.record(token, [outcome]), connections.close_all())
    )
    with held_in_another_transaction(
        lambda: Endpoint.objects.select_for_update().get(pk=endpoint.pk)
    ):
        recorder.start()
        deadline = time.monotonic() + 5
        while Delivery.objects.get(pk=rows[0].pk).status != "succeeded":
            assert time.monotonic() < deadline, "the outcome waited for the endpoint row"
            time.sleep(0.05)
        assert DeliveryAttempt.objects.filter(delivery_id=rows[0].pk, succeeded=True).exists()
    recorder.join(10)
    assert Endpoint.objects.get(pk=endpoint.pk).consecutive_failures == 0


def test_an_unsupported_database_is_a_system_check_error(monkeypatch):
    from webhooks_app import checks

    assert checks.check_database() == []
    monkeypatch.setattr(connection, "vendor", "mysql")
    (problem,) = checks.check_database()
    assert problem.id == "webhooks_app.E022" and "mysql" in problem.msg


def test_claim_leaves_excluded_endpoints_and_sizes_rows_in_bytes(make_endpoint, receiver):
    """The dispatcher's saturated endpoints are excluded (one or several); each row
    carries the UTF-8 size of what it sends, the event's body or its own."""
    endpoints = [make_endpoint(receiver.url(f"/e{k}"))[0] for k in range(3)]
    event = emit("user.created", {"name": "Zoë ✓ 日本"})
    for excluded in ([endpoints[0].pk], [endpoints[0].pk, endpoints[1].pk]):
        token, rows = engine.claim(10, exclude_endpoints=excluded)
        assert {d.endpoint_id for d in rows} == {e.pk for e in endpoints} - set(excluded)
        engine.release(token, [d.pk for d in rows])
    Delivery.objects.filter(endpoint=endpoints[2]).update(body="ü" * 10)
    token, rows = engine.claim(10)
    sizes = {d.endpoint_id: d.claim_bytes for d in rows}
    assert sizes[endpoints[0].pk] == len(event.body.encode("utf-8")) > len(event.body)
    assert sizes[endpoints[2].pk] == 20
    assert all(d.event.body == event.body and d.event.public_id == event.public_id for d in rows)


def test_claim_never_hands_out_a_leased_row_twice(make_endpoint, receiver):
    make_endpoint(receiver.url())
    for _ in range(5):
        emit("user.created", {})
    _, first = engine.claim(3)
    _, second = engine.claim(10)
    assert len(first) == 3 and len(second) == 2
    assert not {d.pk for d in first} & {d.pk for d in second}


def test_claim_takes_rows_of_as_many_endpoints_as_it_has_threads(make_endpoint, receiver):
    """A fan-out claim takes rows only of endpoints a free thread can send to, oldest
    endpoint first; the others' rows are never claimed (not claimed and handed back)."""
    endpoints = [make_endpoint(receiver.url(f"/e{k}"))[0] for k in range(3)]
    for _ in range(4):
        emit("user.created", {})  # one delivery per endpoint, interleaved
    token, rows = engine.claim(10, max_endpoints=2)
    taken = {d.endpoint_id for d in rows}
    (left,) = {e.pk for e in endpoints} - taken
    assert len(rows) == 8 and len(taken) == 2
    assert not Delivery.objects.filter(endpoint_id=left, claim_token__gt="").exists()
    assert Delivery.objects.filter(claim_token=token).count() == 8
    # One Endpoint object per endpoint for all its rows.
    assert len({id(d.endpoint) for d in rows}) == 2
    # Without the bound every endpoint's rows come.
    _, rest = engine.claim(10)
    assert len(rest) == 4 and {d.endpoint_id for d in rest} == {left}


@pytest.mark.skipif(not settings.Q_CLUSTER.get("redis"), reason="Redis broker only")
def test_wake_ups_reuse_one_redis_broker(monkeypatch):
    """django-q2 builds a broker (a new Redis connection) per async_task(); wake-ups
    keep one per process."""
    import django_q.brokers

    from webhooks_app import tasks

    built = []
    real = django_q.brokers.get_broker

    def counting(*args, **kwargs):
        built.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(django_q.brokers, "get_broker", counting)
    monkeypatch.setattr("django_q.tasks.get_broker", counting)
    monkeypatch.setattr(tasks, "_brokers", {})
    monkeypatch.setattr(tasks, "WAKE_COALESCE_SECONDS", 0.0)
    monkeypatch.setattr(tasks, "_broker_down_until", 0.0)
    for _ in range(3):
        tasks.wake_workers()
    assert len(built) == 1
    broker = tasks._broker(settings.WEBHOOKS_APP.get("Q_CLUSTER"))
    assert broker.queue_size() >= 3  # the three wake-ups are queued
    broker.purge_queue()


@pytest.mark.skipif(not settings.Q_CLUSTER.get("redis"), reason="Redis broker only")
def test_redis_wake_ups_leave_the_committing_thread(receiver, make_endpoint, monkeypatch):
    """The commit only pokes a thread; async_task() runs there, and the wake-up is queued."""
    import threading

    import django_q.tasks

    from webhooks_app import tasks

    make_endpoint(receiver.url())
    callers = []
    real = django_q.tasks.async_task

    def recording(*args, **kwargs):
        result = real(*args, **kwargs)
        callers.append(threading.current_thread())
        return result

    monkeypatch.setattr(django_q.tasks, "async_task", recording)
    monkeypatch.setattr(tasks, "_last_wake", 0.0)
    monkeypatch.setattr(tasks, "_broker_down_until", 0.0)
    broker = tasks._broker(settings.WEBHOOKS_APP.get("Q_CLUSTER"))
    broker.purge_queue()
    with transaction.atomic():
        emit("user.created", {"n": 1})
        assert callers == []  # nothing before the commit
    deadline = time.monotonic() + 5
    while not callers and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(callers) == 1 and callers[0] is not threading.current_thread()
    assert callers[0].name == "webhooks_app wake"
    assert broker.queue_size() == 1
    broker.purge_queue()


def test_a_waker_thread_that_does_not_run_leaves_the_wake_up_to_the_caller(monkeypatch):
    """Its thread is alive but never gets to run (uWSGI without enable-threads): the next
    commit after STALL_SECONDS sends the wake-up itself."""
    import threading

    from webhooks_app import tasks

    callers = []
    monkeypatch.setattr(tasks, "wake_workers", lambda: callers.append(threading.current_thread()))
    waker = tasks._Waker()
    waker.STALL_SECONDS = 0.05
    waker.thread = threading.current_thread()  # "alive", and never runs the waker
    waker.poke()
    assert callers == [] and waker.pending()
    time.sleep(0.1)
    waker.poke()
    assert callers == [threading.current_thread()]
    waker.at_exit()  # the second poke, still unsent, goes at exit
    assert len(callers) == 2 and not waker.pending()


def test_a_forked_child_gets_its_own_waker_and_lock(monkeypatch):
    """A fork while a thread of the parent holds the wake-up lock (django-q2 forks its
    workers; gunicorn --preload forks the site): the child still sends wake-ups."""
    import signal
    import threading

    from webhooks_app import tasks

    monkeypatch.setattr(tasks, "WAKE_COALESCE_SECONDS", 0.0)
    monkeypatch.setattr(tasks, "_broker_down_until", 0.0)
    read_end, write_end = os.pipe()

    def to_pipe(*args, **kwargs):
        os.write(write_end, b"sent\n")

    monkeypatch.setattr("django_q.tasks.async_task", to_pipe)
    held, release = threading.Event(), threading.Event()

    def hold():
        with tasks._wake_lock:
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(5)
    pid = os.fork()
    if pid == 0:  # the child: no pytest, no database, only the waker
        code = 1
        try:
            tasks._waker.poke()
            deadline = time.monotonic() + 5
            while tasks._waker.pending() and time.monotonic() < deadline:
                time.sleep(0.01)
            code = 0 if not tasks._waker.pending() else 2
        finally:
            os._exit(code)
    release.set()
    holder.join()
    deadline = time.monotonic() + 10
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if done[0] == 0:  # hung on the inherited lock
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    os.close(write_end)
    sent = os.read(read_end, 1000).decode().split()
    os.close(read_end)
    assert done[0] == pid and os.waitstatus_to_exitcode(done[1]) == 0
    assert sent == ["sent"]


def test_broker_outage_does_not_fail_the_callers_save(receiver, make_endpoint, monkeypatch, caplog):
    from webhooks_app import tasks

    make_endpoint(receiver.url())

    calls = []

    def broker_down(*args, **kwargs):
        calls.append(1)
        raise ConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused.")

    monkeypatch.setattr("django_q.tasks.async_task", broker_down)
    monkeypatch.setattr("webhooks_app.tasks._last_wake", 0.0)
    monkeypatch.setattr("webhooks_app.tasks._broker_down_until", 0.0)
    monkeypatch.setattr("webhooks_app.tasks.WAKE_COALESCE_SECONDS", 0.0)
    with caplog.at_level(logging.WARNING, logger="webhooks_app"):
        with transaction.atomic():
            event = emit("user.created", {"saved": True})
        emit("user.created", {"saved": "again"})
        # With Redis the wake-up is sent by a thread after the commit (tasks._Waker).
        deadline = time.monotonic() + 5
        while tasks._waker.pending() and time.monotonic() < deadline:
            time.sleep(0.01)
    assert Event.objects.filter(pk=event.pk).exists()
    assert "could not enqueue" in caplog.text
    assert len(calls) == 1
    tasks.wake_workers()
    assert len(calls) == 1  # within the back-off nothing waits on the broker again
    engine.drain()  # what the workers' poll does once they run
    assert [json.loads(r.body)["data"]["saved"] for r in receiver.wait_for(2)] == [True, "again"]


def test_model_signal_binding_emits_without_code(receiver, make_endpoint):
    make_endpoint(receiver.url(), events=["user.created", "user.deleted"])
    user = get_user_model().objects.create_user("mike", "mike@example.com", "pw-not-sent")
    pk = user.pk
    user.delete()
    engine.drain()
    reqs = receiver.wait_for(2)
    bodies = sorted((json.loads(r.body) for r in reqs), key=lambda b: b["event"])
    assert bodies[0]["event"] == "user.created"
    assert bodies[0]["data"] == {"id": pk, "username": "mike", "email": "mike@example.com"}
    assert bodies[1]["event"] == "user.deleted" and bodies[1]["data"]["id"] == pk
    assert all(b"pw-not-sent" not in r.body and user.password.encode() not in r.body for r in reqs)


def test_webhook_event_signal_emits(receiver, make_endpoint):
    make_endpoint(receiver.url(), events=["payment.succeeded"], tenant="t1")
    signals.webhook_event.send(
        sender=None, event_type="payment.succeeded", data={"amount": 5}, tenant="t1"
    )
    engine.drain()
    assert json.loads(receiver.wait_for(1)[0].body)["data"] == {"amount": 5}


def test_secret_is_encrypted_at_rest_and_never_logged(receiver, make_endpoint, caplog):
    endpoint, secret = make_endpoint(receiver.url())
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT secret_encrypted FROM webhooks_app_endpoint WHERE id = %s", [endpoint.pk]
        )
        stored = cursor.fetchone()[0]
    assert secret not in stored and secret[6:] not in stored
    receiver.default = Reply(500, b"err")
    with caplog.at_level(logging.DEBUG), webhooks(RETRY_SCHEDULE=[0]):
        emit("user.created", {})
        engine.drain()
        services.send_test(endpoint)
    assert secret not in caplog.text and secret[6:] not in caplog.text
    assert secret not in repr(endpoint.__dict__)


def test_auto_disable_after_consecutive_failures(receiver, make_endpoint):
    endpoint, _ = make_endpoint(receiver.url())
    receiver.default = Reply(500)
    disabled = []
    signals.endpoint_disabled.connect(
        lambda sender, endpoint, reason, **kw: disabled.append(reason),
        weak=False,
        dispatch_uid="t-disabled",
    )
    try:
        with webhooks(RETRY_SCHEDULE=[0], AUTO_DISABLE_AFTER=3):
            for _ in range(4):
                emit("user.created", {})
            engine.drain()
    finally:
        signals.endpoint_disabled.disconnect(dispatch_uid="t-disabled")
    endpoint.refresh_from_db()
    assert not endpoint.is_active and "3 consecutive" in endpoint.disabled_reason
    assert len(disabled) == 1
    services.update_endpoint(endpoint, is_active=True)
    endpoint.refresh_from_db()
    assert (
        endpoint.is_active and endpoint.disabled_reason == "" and endpoint.consecutive_failures == 0
    )


def test_notify_email_gets_a_confirmation_and_failure_notices_without_the_secret(
    receiver, make_endpoint, mailoutbox
):
    endpoint, secret = make_endpoint(receiver.url(), name="CRM", notify_email="ops@example.com")
    assert [m.subject for m in mailoutbox] == ["Webhook created: CRM"]
    receiver.default = Reply(503, b"maintenance")
    with webhooks(RETRY_SCHEDULE=[0]):
        emit("user.created", {})
        engine.drain()
    failure = mailoutbox[1]
    assert failure.subject == "Webhook delivery failed: CRM" and failure.to == ["ops@example.com"]
    assert "Status code: 503" in failure.body and "CRM" in failure.body
    assert all(secret not in m.body and secret[6:] not in m.body for m in mailoutbox)


def test_update_does_not_write_back_a_secret_rotated_meanwhile(receiver, make_endpoint):
    endpoint, old = make_endpoint(receiver.url())
    stale = Endpoint.objects.get(pk=endpoint.pk)  # e.g. an admin form loaded before rotation
    new = services.rotate_secret(endpoint)
    services.update_endpoint(stale, name="renamed")
    fresh = Endpoint.objects.get(pk=endpoint.pk)
    assert fresh.name == "renamed" and fresh.get_secret() == new != old


def test_delete_endpoint_removes_its_history_only(receiver, make_endpoint):
    doomed, _ = make_endpoint(receiver.url("/a"))
    kept, _ = make_endpoint(receiver.url("/b"))
    emit("user.created", {})
    engine.drain()
    services.delete_endpoint(doomed)
    assert not Endpoint.objects.filter(pk=doomed.pk).exists()
    assert not Delivery.objects.filter(endpoint_id=doomed.pk).exists()
    assert not DeliveryAttempt.objects.filter(delivery__endpoint_id=doomed.pk).exists()
    assert Delivery.objects.get(endpoint=kept).attempt_log.count() == 1


def test_an_attempt_that_cannot_be_made_fails_instead_of_stranding(receiver, make_endpoint):
    endpoint, _ = make_endpoint(receiver.url())
    Endpoint.objects.filter(pk=endpoint.pk).update(secret_encrypted="not-a-fernet-token")
    event = emit("user.created", {})
    engine.drain()
    d = Delivery.objects.get(event=event)
    assert d.status == "failed" and d.claim_token == ""
    assert "could not be decrypted" in d.last_error and "not-a-fernet-token" not in d.last_error
    assert receiver.received == []


def test_deliveries_of_a_disabled_endpoint_fail_quietly(receiver, make_endpoint, mailoutbox):
    endpoint, _ = make_endpoint(receiver.url(), notify_email="ops@example.com")
    events = [emit("user.created", {"n": i}) for i in range(3)]
    services.update_endpoint(endpoint, is_active=False)
    mailoutbox.clear()
    engine.drain()
    rows = Delivery.objects.filter(event__in=events)
    assert {d.status for d in rows} == {"failed"}
    assert all("disabled" in d.last_error and d.attempts == 0 for d in rows)
    assert not DeliveryAttempt.objects.exists() and mailoutbox == []
    endpoint.refresh_from_db()
    assert endpoint.consecutive_failures == 0 and receiver.received == []


def test_each_retry_is_timed_from_the_end_of_its_own_attempt(receiver, make_endpoint):
    make_endpoint(receiver.url())
    receiver.default = Reply(500, delay=0.3)
    with webhooks(RETRY_SCHEDULE=[0, 5]):
        events = [emit("user.created", {"n": i}) for i in range(3)]
        engine.drain()
    attempts = {a.delivery.event_id: a for a in DeliveryAttempt.objects.select_related("delivery")}
    for event in events:
        a = attempts[event.pk]
        finished = a.started_at + timedelta(milliseconds=a.duration_ms)
        due = a.delivery.next_attempt_at
        assert abs((due - finished).total_seconds() - 5) < 0.05


def test_a_chunk_past_its_lease_is_handed_back_unsent(receiver, make_endpoint):
    make_endpoint(receiver.url())
    emit("user.created", {})
    token, rows = engine.claim(10)
    engine.deliver_chunk(token, rows, lease_deadline=time.monotonic() + 1)  # < TIMEOUT left
    d = Delivery.objects.get(pk=rows[0].pk)
    assert d.status == "pending" and d.claim_token == "" and d.attempts == 0
    assert receiver.received == []


def test_a_failing_signal_receiver_loses_nothing(receiver, make_endpoint):
    make_endpoint(receiver.url())

    def broken(sender, **kwargs):
        raise RuntimeError("site code bug")

    signals.delivery_succeeded.connect(broken, weak=False, dispatch_uid="t-broken")
    try:
        events = [emit("user.created", {"n": i}) for i in range(3)]
        engine.drain()
    finally:
        signals.delivery_succeeded.disconnect(dispatch_uid="t-broken")
    assert {d.status for d in Delivery.objects.filter(event__in=events)} == {"succeeded"}


@pytest.mark.django_db
def test_claims_endpoint_objects_equal_what_the_orm_builds(receiver):
    """statements.loaded_endpoints() (the claim's endpoint loader) builds, field for
    field, what ``in_bulk()`` builds: datetimes (aware, exact microseconds), JSON,
    non-ASCII text, NULLs and the rotated secret's expiry included."""
    from webhooks_app import statements

    plain, _ = services.create_endpoint(url=receiver.url("/plain"), events=["user.created"])
    busy, _ = services.create_endpoint(
        url=receiver.url("/busy"),
        events=["user.created"],
        tenant="tenant-ü",
        name="Zürich ☃ endpoint",
        headers={"X-Trace": "naïve value"},
        payload_fields=["id", "email"],
        payload_extra={"source": "€ shop", "nested": {"k": [1, 2.5, None]}},
        payload_filter={"data.id": {"$gt": 3}},
        rate_limit=7,
        ordered=True,
    )
    services.rotate_secret(busy)
    now = timezone.now().replace(microsecond=123456)
    Endpoint.objects.filter(pk=busy.pk).update(
        breaker_state=Endpoint.BreakerState.OPEN,
        breaker_failures=4,
        breaker_opened_at=now,
        paused_until=now + timedelta(seconds=30),
        next_slot_at=now + timedelta(milliseconds=1),
        notice_last_error="last error: \u00e9\u4e2d",
        consecutive_failures=2,
    )
    ids = [plain.pk, busy.pk]
    with connection.cursor() as cursor:
        cursor.execute(
            statements.endpoints_sql(connection, len(ids)),
            statements.id_params(connection, ids),
        )
        loaded = statements.loaded_endpoints(connection, cursor.fetchall())
    expected = Endpoint.objects.in_bulk(ids)
    assert sorted(loaded) == sorted(expected)
    for pk in ids:
        for f in Endpoint._meta.concrete_fields:
            got, want = getattr(loaded[pk], f.attname), getattr(expected[pk], f.attname)
            assert got == want and type(got) is type(want), (pk, f.attname, got, want)
        assert loaded[pk]._state.db == expected[pk]._state.db and not loaded[pk]._state.adding
    assert loaded[busy.pk].paused_until == now + timedelta(seconds=30)
    assert loaded[busy.pk].signing_secrets() == expected[busy.pk].signing_secrets()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("path", ["statement", "orm fallback"])
def test_emit_writes_the_rows_the_orm_would_write(make_endpoint, monkeypatch, path):
    """emit()'s hand-written outbox INSERT (a row template, no model object per delivery)
    stores, column for column, what new_delivery() + the ORM's save() store: for the
    standard envelope, custom fields, a GET endpoint and another format, with non-ASCII
    data, a datetime and a Decimal, and a tenant. The same for the ORM path it falls back
    to where INSERT ... RETURNING is missing (SQLite before 3.35)."""
    from decimal import Decimal

    from webhooks_app import events

    if path == "orm fallback":
        if connection.vendor != "sqlite":
            pytest.skip("PostgreSQL always has INSERT ... RETURNING")
        monkeypatch.setattr(connection.features, "can_return_columns_from_insert", False)

    kinds = [
        {},
        {"payload_fields": ["id", "name"], "payload_extra": {"src": "ü €"}},
        {"method": "GET"},
        {"payload_format": "cloudevents"},
    ]
    for i, options in enumerate(kinds):
        make_endpoint(f"http://127.0.0.1:9/k{i}", tenant="t-☃", **options)
    when = timezone.now().replace(microsecond=654321)
    data = {"id": 7, "name": "Zoë \u4e2d", "at": when, "amount": Decimal("12.50")}
    event = emit("user.created", data, tenant="t-☃")
    got = {d.endpoint_id: d for d in Delivery.objects.filter(event=event)}
    assert len(got) == len(kinds)
    env = json.loads(event.body)
    due = event.created_at + timedelta(seconds=engine.app_settings.RETRY_SCHEDULE[0])
    for endpoint in Endpoint.objects.filter(tenant="t-☃"):
        row = got[endpoint.pk]
        with transaction.atomic():
            Delivery.objects.filter(pk=row.pk).delete()  # (one per event and endpoint)
            expected = events.new_delivery(
                endpoint, event, env, event.data, next_attempt_at=due, created_at=event.created_at
            )
            expected.event_id = event.pk
            expected.save()
            expected.refresh_from_db()
            transaction.set_rollback(True)
        for f in Delivery._meta.concrete_fields:
            if f.attname in ("id", "updated_at"):
                continue
            assert getattr(row, f.attname) == getattr(expected, f.attname), (
                endpoint.method,
                endpoint.payload_format,
                f.attname,
            )
        assert row.created_at == event.created_at
        if path == "statement":
            assert row.updated_at == event.created_at  # written as of the emit
        else:
            assert row.updated_at >= event.created_at  # the ORM's auto_now: the insert's


@pytest.mark.django_db(transaction=True)
def test_emit_to_more_endpoints_than_one_insert_holds(make_endpoint):
    """A fan-out wider than one INSERT's bound variables (SQLite: 999, 55 rows) or the
    cached statement shapes (64): every endpoint gets exactly one pending delivery."""
    count = 70
    for i in range(count):
        make_endpoint(f"http://127.0.0.1:9/wide{i}", events=["user.updated"])
    event = emit("user.updated", {"id": 1, "note": "wide ü"})
    rows = list(Delivery.objects.filter(event=event).values_list("endpoint_id", "status"))
    assert len(rows) == count
    assert {e for e, _ in rows} == set(Endpoint.objects.values_list("id", flat=True))
    assert {s for _, s in rows} == {Delivery.Status.PENDING}
