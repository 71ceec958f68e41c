"""Nothing sticks, nothing leaks (issue 9 §4): every claimed row ends recorded or handed
back, whatever fails on the way; awkward outcomes are recorded; tests stay synchronous."""

from datetime import timedelta

import pytest
from django.conf import settings
from django.db import DatabaseError
from django.test import override_settings
from django.utils import timezone
from rest_framework.test import APIClient

from tests.receiver import Reply
from webhooks_app import dispatcher, emit, engine, services, signing, transport
from webhooks_app.models import Delivery, Endpoint

pytestmark = pytest.mark.django_db(transaction=True)


def webhooks(**changes):
    return override_settings(WEBHOOKS_APP={**settings.WEBHOOKS_APP, **changes})


def nothing_claimed() -> bool:
    return not Delivery.objects.exclude(claim_token="").exists()


def test_send_test_with_a_secret_that_no_longer_decrypts_is_a_recorded_failure(
    receiver, make_endpoint
):
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.create_user("alice")
    endpoint, _ = make_endpoint(receiver.url(), tenant=str(user.pk))
    Endpoint.objects.filter(pk=endpoint.pk).update(secret_encrypted="gAAAA-not-a-token")
    client = APIClient()
    client.force_authenticate(user)
    r = client.post(f"/api/webhooks/endpoints/{endpoint.pk}/test/", {}, format="json")
    assert r.status_code == 200, r.content
    body = r.json()
    assert body["ok"] is False and "could not be decrypted" in body["error"]
    assert "gAAAA-not-a-token" not in r.content.decode()
    d = Delivery.objects.get(pk=body["delivery"])
    assert (d.status, d.claim_token) == ("failed", "") and d.next_attempt_at is None
    assert d.attempt_log.count() == 1 and receiver.received == []


def test_a_test_delivery_is_never_replayed_by_a_worker(receiver, make_endpoint, monkeypatch):
    endpoint, secret = make_endpoint(receiver.url())
    receiver.script(Reply(500))
    result = services.send_test(endpoint)
    assert not result.ok
    claims = []
    real_claim = engine.claim
    monkeypatch.setattr(engine, "claim", lambda *a, **k: claims.append(1) or real_claim(*a, **k))
    # Replaying a test sends it now, in the caller's thread, like Test: no worker involved.
    d = services.replay(result.delivery)
    assert (d.status, d.attempts, d.claim_token, d.next_attempt_at) == ("succeeded", 2, "", None)
    first, second = receiver.wait_for(2)
    assert second.body == first.body and second.header("webhook-id") == first.header("webhook-id")
    signing.verify(secret, second.body, second.headers)
    assert claims == []
    # Even a test row made due by hand (or by an older version) is no worker's business.
    Delivery.objects.filter(pk=d.pk).update(status="pending", next_attempt_at=d.created_at)
    assert real_claim(10)[1] == [] and engine.drain() == 0
    assert len(receiver.received) == 2
    Delivery.objects.filter(pk=d.pk).update(status="failed")
    with webhooks(ENCRYPTION_KEYS=["x" * 43 + "="]):  # a key that decrypts nothing
        d = services.replay(Delivery.objects.get(pk=d.pk))
    assert (d.status, d.claim_token) == ("failed", "") and "decrypted" in d.last_error


def test_a_success_resets_the_failure_count_whatever_the_loaded_row_said(receiver, make_endpoint):
    endpoint, _ = make_endpoint(receiver.url())
    emit("user.created", {})
    token, rows = engine.claim(10)
    # Another worker counted failed deliveries after these rows were loaded.
    Endpoint.objects.filter(pk=endpoint.pk).update(consecutive_failures=3)
    assert rows[0].endpoint.consecutive_failures == 0
    engine.deliver_chunk(token, rows)
    assert Endpoint.objects.get(pk=endpoint.pk).consecutive_failures == 0
    # A chunk without a success leaves the run as it is (a retried failure adds nothing).
    Endpoint.objects.filter(pk=endpoint.pk).update(consecutive_failures=3)
    emit("user.created", {})
    token, rows = engine.claim(10)
    failed = engine.Outcome(rows[0], transport.Response(500, 3), timezone.now())
    assert engine.record(token, [failed]) and rows[0].status == "pending"
    assert Endpoint.objects.get(pk=endpoint.pk).consecutive_failures == 3


def test_nul_bytes_in_a_response_are_recorded(receiver, make_endpoint):
    """Run on PostgreSQL: text columns refuse NUL there."""
    make_endpoint(receiver.url())
    receiver.script(Reply(500, b"bad\x00byte"), Reply(200, b"ok\x00"))
    with webhooks(RETRY_SCHEDULE=[0, 0]):
        event = emit("user.created", {})
        engine.drain()
        engine.drain()
    assert len(receiver.received) == 2
    d = Delivery.objects.get(event=event)
    assert (d.status, d.attempts, d.claim_token) == ("succeeded", 2, "")
    excerpts = list(d.attempt_log.order_by("number").values_list("response_excerpt", flat=True))
    assert excerpts == ["bad\\x00byte", "ok\\x00"]


def test_nul_bytes_in_an_error_are_recorded(receiver, make_endpoint, monkeypatch):
    make_endpoint(receiver.url())
    real_send = transport.send

    def send(*args, **kwargs):
        r = real_send(*args, **kwargs)
        r.error = "connection failed: peer said \x00\x00"
        return r

    monkeypatch.setattr(transport, "send", send)
    with webhooks(RETRY_SCHEDULE=[0]):
        event = emit("user.created", {})
        engine.drain()
    d = Delivery.objects.get(event=event)
    assert (d.status, d.claim_token) == ("failed", "")
    assert d.last_error == "connection failed: peer said \\x00\\x00"
    assert d.attempt_log.get().error == d.last_error


def test_outcomes_the_database_refuses_are_recorded_without_their_text(
    receiver, make_endpoint, monkeypatch
):
    make_endpoint(receiver.url())
    real = engine._write_outcomes
    calls = []

    def picky(db, token, states):
        calls.append(1)
        if len(calls) == 1:
            raise DatabaseError("value too long / invalid byte sequence")
        return real(db, token, states)

    monkeypatch.setattr(engine, "_write_outcomes", picky)
    receiver.script(Reply(500, b"weird"))
    with webhooks(RETRY_SCHEDULE=[0, 5]):
        event = emit("user.created", {})
        engine.drain()
    d = Delivery.objects.get(event=event)
    assert (d.status, d.attempts, d.claim_token, d.last_status_code) == ("pending", 1, "", 500)
    assert d.attempt_log.get().response_excerpt == ""


STEPS = [
    ("signing_secrets", lambda mp: mp.setattr(Endpoint, "signing_secrets", boom)),
    ("get_headers", lambda mp: mp.setattr(Endpoint, "get_headers", boom)),
    ("payload_bytes", lambda mp: mp.setattr(Delivery, "payload_bytes", boom)),
    ("request_headers", lambda mp: mp.setattr(engine, "request_headers", boom)),
    ("transport.send", lambda mp: mp.setattr(transport, "send", boom)),
    ("_new_state", lambda mp: mp.setattr(engine, "_new_state", boom)),
    ("_write_outcomes", lambda mp: mp.setattr(engine, "_write_outcomes", boom_db)),
    ("record", lambda mp: mp.setattr(engine, "record", boom)),
    ("_after_record", lambda mp: mp.setattr(engine, "_after_record", boom)),
    ("signal receiver", lambda mp: mp.setattr(engine, "disable_endpoint", boom)),
]


def boom(*args, **kwargs):
    raise RuntimeError("injected failure")


def boom_db(*args, **kwargs):
    raise DatabaseError("injected failure")


@pytest.mark.parametrize("step", [name for name, _ in STEPS])
def test_no_failure_between_claim_and_record_leaves_a_row_claimed(
    step, receiver, make_endpoint, monkeypatch
):
    make_endpoint(receiver.url())
    events = [emit("user.created", {"n": i}) for i in range(3)]
    dict(STEPS)[step](monkeypatch)
    with webhooks(RETRY_SCHEDULE=[0, 60], AUTO_DISABLE_AFTER=1):
        receiver.default = Reply(500)
        try:
            engine.drain(max_seconds=2)
        except Exception:
            pass  # the caller may see it; the rows must not
    rows = list(Delivery.objects.filter(event__in=events))
    assert all(d.claim_token == "" for d in rows), [(d.pk, d.status, d.claim_token) for d in rows]
    assert all(d.status != "pending" or d.next_attempt_at is not None for d in rows)
    leases = getattr(engine, "_leases", None)  # (absent before leases were renewed)
    assert leases is None or not leases.tokens()  # nothing left for the heartbeat to renew


def test_a_chunk_a_disabled_endpoint_cannot_fail_is_handed_back(
    receiver, make_endpoint, monkeypatch
):
    endpoint, _ = make_endpoint(receiver.url())
    emit("user.created", {})
    Endpoint.objects.filter(pk=endpoint.pk).update(is_active=False)
    monkeypatch.setattr(engine, "fail_unsent", boom)
    token, rows = engine.claim(10)
    with pytest.raises(RuntimeError):
        engine.deliver_chunk(token, rows)
    assert nothing_claimed()


def test_dispatcher_hands_back_rows_it_could_not_hand_out(receiver, make_endpoint, monkeypatch):
    make_endpoint(receiver.url())
    other, _ = make_endpoint(receiver.url("/other"))
    for _ in range(3):
        emit("user.created", {})
    d = dispatcher.Dispatcher()  # not started: pump() runs in this thread
    submitted = []

    def submit(token, endpoint_id, chunk):
        if submitted:
            raise RuntimeError("injected failure")
        submitted.append([r.id for r in chunk])
        engine.release(token, [r.id for r in chunk])  # as if sent

    monkeypatch.setattr(d, "_submit", submit)
    with pytest.raises(RuntimeError):
        d.pump()
    d._pool.shutdown()
    assert submitted and nothing_claimed()


def test_endpoint_names_with_newlines_do_not_drop_notices(receiver, make_endpoint, mailoutbox):
    make_endpoint(receiver.url(), name="CRM\r\nBcc: evil@example.com", notify_email="o@example.com")
    receiver.script(Reply(500))
    with webhooks(RETRY_SCHEDULE=[0]):
        emit("user.created", {})
        engine.drain()
    subjects = [m.subject for m in mailoutbox]
    assert subjects == [
        "Webhook created: CRM Bcc: evil@example.com",
        "Webhook delivery failed: CRM Bcc: evil@example.com",
    ]
    assert all(m.to == ["o@example.com"] and not m.bcc for m in mailoutbox)


def test_a_test_send_whose_process_died_does_not_stay_pending_forever(make_endpoint, receiver):
    """send_test() leaves its row pending with no due time while it sends (no worker
    claims a test); a process killed mid-send left it so for good."""
    endpoint, _ = make_endpoint(receiver.url())
    died = services.send_test(endpoint).delivery
    fresh = services.send_test(endpoint).delivery
    for d, age in ((died, timedelta(hours=1)), (fresh, timedelta(0))):
        Delivery.objects.filter(pk=d.pk).update(  # as the killed send_test left it
            status="pending",
            next_attempt_at=None,
            claim_token="abc",
            created_at=timezone.now() - age,
        )
    d = dispatcher.Dispatcher()  # (not started: its loop's periodic step only)
    try:
        d._flush_notices()
    finally:
        d._pool.shutdown()
        d._paced_pool.shutdown()
    died.refresh_from_db()
    fresh.refresh_from_db()
    assert (died.status, died.claim_token) == ("failed", "")
    assert "interrupted" in died.last_error
    assert (fresh.status, fresh.claim_token) == ("pending", "abc")  # may still be sending
