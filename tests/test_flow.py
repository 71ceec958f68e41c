"""Flow control in-process: rate limits, the circuit breaker, ordered delivery, notice
digests; validated by services, shown by the API. (Through a real cluster:
test_flow_cluster.py.)"""

import json
import time
from datetime import timedelta

import pytest
from django.conf import settings
from django.core.exceptions import ValidationError
from django.test import override_settings
from django.utils import timezone

from tests.receiver import Receiver, Reply
from webhooks_app import emit, engine, notices, services
from webhooks_app.models import Delivery, Endpoint

pytestmark = pytest.mark.django_db(transaction=True)


def webhooks(**changes):
    return override_settings(WEBHOOKS_APP={**settings.WEBHOOKS_APP, **changes})


def numbers(received):
    return [json.loads(r.body)["data"]["n"] for r in received]


def drain_until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        engine.drain()
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached")


# Validation ------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [0, -1, 1.5, "5", True, 10_001, float("nan"), [], {}])
def test_rate_limit_is_validated_by_services(make_endpoint, receiver, value):
    with pytest.raises(ValidationError) as exc:
        make_endpoint(receiver.url(), rate_limit=value)
    assert list(exc.value.error_dict) == ["rate_limit"]
    assert not Endpoint.objects.exists()


def test_rate_limit_and_ordered_are_set_and_cleared(make_endpoint, receiver):
    endpoint, _ = make_endpoint(receiver.url(), rate_limit=5, ordered=True)
    endpoint.refresh_from_db()
    assert (endpoint.rate_limit, endpoint.ordered) == (5, True)
    services.update_endpoint(endpoint, rate_limit=None, ordered=False)
    endpoint.refresh_from_db()
    assert (endpoint.rate_limit, endpoint.ordered) == (None, False)
    with pytest.raises(ValidationError) as exc:
        services.update_endpoint(endpoint, ordered="yes")
    assert list(exc.value.error_dict) == ["ordered"]


# Rate limit ------------------------------------------------------------------------------
def test_claims_book_rate_limit_slots_shared_by_every_claimer(make_endpoint, receiver):
    """Two claims (as two workers would make) share one schedule of send slots."""
    capped, _ = make_endpoint(receiver.url("/capped"), rate_limit=5)
    free, _ = make_endpoint(receiver.url("/free"))
    for n in range(20):
        emit("user.created", {"n": n})
    with webhooks(POLL_INTERVAL=0.5):  # books one second ahead
        started = timezone.now()
        _, first = engine.claim(100)
        _, second = engine.claim(100)
    assert len([d for d in first if d.endpoint_id == free.pk]) == 20  # never held back
    mine = [d for d in first if d.endpoint_id == capped.pk]
    later = [d for d in second if d.endpoint_id == capped.pk]
    # One second of slots; the second claim only what came free since (~one slot)
    assert len(mine) == 5 and len(later) <= 3
    slots = [d.not_before for d in mine + later]
    gaps = [(b - a).total_seconds() for a, b in zip(slots, slots[1:], strict=False)]
    assert all(abs(g - 0.2) < 0.01 for g in gaps), gaps
    assert abs(slots[0] - started) < timedelta(seconds=0.5)  # the first is due at once
    capped.refresh_from_db()
    assert capped.paused_until > timezone.now()  # the next claims skip it in the query
    with webhooks(POLL_INTERVAL=0.5):
        assert [d for d in engine.claim(100)[1] if d.endpoint_id == capped.pk] == []


def test_rate_limited_endpoint_is_paced_in_process(make_endpoint, receiver):
    make_endpoint(receiver.url(), rate_limit=10)
    for n in range(15):
        emit("user.created", {"n": n})
    drain_until(lambda: len(receiver.received) >= 15, timeout=10)
    at = [r.at for r in receiver.received]
    assert at[-1] - at[0] >= 1.3  # 15 at 10/s: 1.4 s of gaps
    assert numbers(receiver.received) == list(range(15))


# Circuit breaker ---------------------------------------------------------------------------
@pytest.fixture
def healthy():
    """A second receiver, answering 200, for the endpoints beside the failing one."""
    r = Receiver()
    yield r
    r.close()


def test_breaker_opens_probes_then_closes_and_the_backlog_flows(
    make_endpoint, receiver, healthy
):
    endpoint, _ = make_endpoint(receiver.url())
    other, _ = make_endpoint(healthy.url("/other"))
    receiver.default = Reply(500)
    with webhooks(BREAKER_THRESHOLD=3, BREAKER_COOLDOWN=1.0, RETRY_SCHEDULE=[0, 0.2, 0.2, 0.2]):
        events = [emit("user.created", {"n": n}) for n in range(8)]
        engine.drain()
        assert len(receiver.received) == 3  # then it opened: the other deliveries wait
        endpoint.refresh_from_db()
        assert endpoint.breaker_state == "open" and endpoint.paused_until > timezone.now()
        time.sleep(0.5)
        engine.drain()  # retries are due, but the breaker is open
        assert len(receiver.received) == 3
        pending = Delivery.objects.filter(endpoint=endpoint, status="pending").count()
        assert pending == 8
        # A healthy endpoint beside it was never held up (its failures are its own).
        assert Delivery.objects.filter(endpoint=other).exclude(attempts=0).count() == 8

        receiver.default = Reply(200)
        receiver.received.clear()
        time.sleep(0.6)  # cool-down over
        due = {
            data["n"]: at
            for data, at in Delivery.objects.filter(endpoint=endpoint).values_list(
                "event__data", "next_attempt_at"
            )
        }
        token, rows = engine.claim(100)
        assert [d.endpoint_id for d in rows] == [endpoint.pk]  # one probe
        endpoint.refresh_from_db()
        assert endpoint.breaker_state == "half_open"
        assert engine.claim(100)[1] == []  # no second probe while it is in flight
        engine.deliver_chunk(token, rows)
        endpoint.refresh_from_db()
        assert endpoint.breaker_state == "closed" and endpoint.breaker_failures == 0
        drain_until(lambda: len(receiver.received) >= 8)
    sent = [due[n] for n in numbers(receiver.received)]
    assert sent == sorted(sent) and len(sent) == 8  # in order of due time
    assert all(d.status == "succeeded" for e in events for d in e.deliveries.all())


def test_failed_probe_reopens_and_a_long_open_breaker_disables(
    make_endpoint, receiver, mailoutbox
):
    endpoint, _ = make_endpoint(receiver.url(), notify_email="ops@example.com")
    receiver.default = Reply(503)
    settings_ = {
        "BREAKER_THRESHOLD": 2,
        "BREAKER_COOLDOWN": 0.3,
        "BREAKER_DISABLE_AFTER": 1.0,
        "RETRY_SCHEDULE": [0] + [0.1] * 20,
    }
    with webhooks(**settings_):
        for n in range(5):
            emit("user.created", {"n": n})
        engine.drain()
        assert len(receiver.received) == 2
        time.sleep(0.35)
        engine.drain()  # the probe fails: open again, one request only
        endpoint.refresh_from_db()
        assert len(receiver.received) == 3 and endpoint.breaker_state == "open"
        opened_at = endpoint.breaker_opened_at
        drain_until(lambda: not Endpoint.objects.get(pk=endpoint.pk).is_active, timeout=5)
    endpoint.refresh_from_db()
    assert endpoint.breaker_opened_at == opened_at  # one incident, however often re-opened
    assert "circuit breaker stayed open" in endpoint.disabled_reason
    # Probes only: about one request per cool-down, not one per delivery per retry.
    assert len(receiver.received) <= 3 + 1.0 / 0.3 + 1
    time.sleep(0.15)  # the last probe's own retry comes due
    with webhooks(**settings_):
        engine.drain()
    assert not Delivery.objects.filter(endpoint=endpoint, status="pending").exists()
    assert [m.subject for m in mailoutbox if "disabled" in m.subject] == [
        f"Webhook disabled: {endpoint}"
    ]
    services.update_endpoint(endpoint, is_active=True)
    endpoint.refresh_from_db()
    assert endpoint.breaker_state == "closed" and endpoint.paused_until is None


def test_threshold_zero_turns_the_breaker_off(make_endpoint, receiver):
    endpoint, _ = make_endpoint(receiver.url())
    receiver.default = Reply(500)
    with webhooks(BREAKER_THRESHOLD=0, RETRY_SCHEDULE=[0]):
        for n in range(12):
            emit("user.created", {"n": n})
        engine.drain()
    endpoint.refresh_from_db()
    assert len(receiver.received) == 12 and endpoint.breaker_state == "closed"


# Ordered delivery ---------------------------------------------------------------------------
def test_ordered_endpoint_holds_later_deliveries_behind_a_failing_one(
    make_endpoint, receiver, healthy
):
    make_endpoint(receiver.url("/ordered"), ordered=True)
    make_endpoint(healthy.url("/parallel"))
    receiver.script(Reply(500))
    with webhooks(RETRY_SCHEDULE=[0, 0.5, 0.5]):
        for n in range(6):
            emit("user.created", {"n": n})
        engine.drain()
        assert numbers(receiver.received) == [0]  # failed; 1..5 wait behind it
        assert sorted(numbers(healthy.received)) == list(range(6))  # others unaffected
        drain_until(lambda: len(receiver.received) >= 7)
    assert numbers(receiver.received) == [0, 0, 1, 2, 3, 4, 5]


def test_ordered_endpoint_moves_on_after_a_delivery_is_given_up(make_endpoint, receiver):
    make_endpoint(receiver.url(), ordered=True)
    receiver.script(Reply(500))
    with webhooks(RETRY_SCHEDULE=[0]):
        events = [emit("user.created", {"n": n}) for n in range(4)]
        drain_until(lambda: len(receiver.received) >= 4)
    assert numbers(receiver.received) == [0, 1, 2, 3]
    assert [e.deliveries.get().status for e in events] == ["failed"] + ["succeeded"] * 3


def test_ordered_claim_takes_one_run_at_a_time(make_endpoint, receiver):
    endpoint, _ = make_endpoint(receiver.url(), ordered=True)
    for n in range(3):
        emit("user.created", {"n": n})
    token, rows = engine.claim(100)
    assert [json.loads(d.payload_bytes())["data"]["n"] for d in rows] == [0, 1, 2]
    emit("user.created", {"n": 3})
    assert engine.claim(100)[1] == []  # a chunk is in flight
    engine.deliver_chunk(token, rows)
    endpoint.refresh_from_db()
    assert endpoint.paused_until is None
    engine.drain()
    assert numbers(receiver.received) == [0, 1, 2, 3]


# Notices ------------------------------------------------------------------------------------
def test_one_failure_email_per_interval_then_a_digest(make_endpoint, receiver, mailoutbox):
    endpoint, secret = make_endpoint(receiver.url(), name="CRM", notify_email="ops@example.com")
    mailoutbox.clear()
    receiver.default = Reply(502, b"bad gateway")
    with webhooks(RETRY_SCHEDULE=[0], NOTIFY_INTERVAL=1.0, BREAKER_THRESHOLD=0):
        for n in range(6):
            emit("user.created", {"n": n})
        engine.drain()
        assert [m.subject for m in mailoutbox] == ["Webhook delivery failed: CRM"]
        assert "Status code: 502" in mailoutbox[0].body
        assert notices.send_due_digests() == 0  # the interval has not ended
        time.sleep(1.05)
        assert notices.send_due_digests() == 1
        assert notices.send_due_digests() == 0  # sent once
    digest = mailoutbox[1]
    assert digest.subject == "Webhook deliveries failed: CRM (5)" and digest.to == [
        "ops@example.com"
    ]
    last = Delivery.objects.filter(endpoint=endpoint).order_by("-last_attempt_at").first()
    assert "5 deliveries" in digest.body and last.event.public_id in digest.body
    assert "Status code: 502" in digest.body and secret not in digest.body
    assert len(mailoutbox) == 2


# Front ends ---------------------------------------------------------------------------------
def test_api_fields_rate_limit_ordered_and_read_only_breaker_state(db, receiver):
    from django.contrib.auth import get_user_model
    from rest_framework.test import APIClient

    client = APIClient()
    client.force_authenticate(get_user_model().objects.create_user("alice", password="pw"))
    api = "/api/webhooks/endpoints/"
    body = {"url": receiver.url(), "events": ["user.created"], "rate_limit": 5, "ordered": True}
    created = client.post(api, body, format="json")
    assert created.status_code == 201, created.content
    data = created.json()
    assert (data["rate_limit"], data["ordered"], data["breaker_state"]) == (5, True, "closed")
    endpoint = Endpoint.objects.get(pk=data["id"])
    Endpoint.objects.filter(pk=endpoint.pk).update(breaker_state="open")
    assert client.get(f"{api}{endpoint.pk}/").json()["breaker_state"] == "open"
    for change, field in [
        ({"breaker_state": "closed"}, "breaker_state"),
        ({"rate_limit": 0}, "rate_limit"),
        ({"rate_limit": "5"}, "rate_limit"),
        ({"rate_limit": 2.5}, "rate_limit"),
        ({"ordered": "yes"}, "ordered"),
    ]:
        r = client.patch(f"{api}{endpoint.pk}/", change, format="json")
        assert r.status_code == 400 and list(r.json()) == [field], (change, r.content)
    r = client.patch(f"{api}{endpoint.pk}/", {"rate_limit": None}, format="json")
    assert r.status_code == 200 and r.json()["rate_limit"] is None
    endpoint.refresh_from_db()
    assert endpoint.rate_limit is None and endpoint.breaker_state == "open"


def test_admin_shows_breaker_state_and_edits_flow_fields(admin_client, make_endpoint, receiver):
    from django.urls import reverse

    endpoint, _ = make_endpoint(receiver.url(), name="CRM")
    Endpoint.objects.filter(pk=endpoint.pk).update(breaker_state="half_open")
    listing = admin_client.get(reverse("admin:webhooks_app_endpoint_changelist")).content
    assert b"circuit breaker" in listing.lower() and b"Half-open" in listing
    change_url = reverse("admin:webhooks_app_endpoint_change", args=[endpoint.pk])
    page = admin_client.get(change_url).content.decode()
    assert "Half-open" in page and 'name="rate_limit"' in page and 'name="ordered"' in page
    form = {
        "name": "CRM",
        "url": receiver.url(),
        "method": "POST",
        "is_active": "on",
        "events": ["user.created"],
        "events_toggles": "1",
        "events_enabled": ["user.created"],
        "rate_limit": "0",
        "ordered": "on",
    }
    response = admin_client.post(change_url, form)
    assert response.status_code == 200
    assert "rate_limit" in response.context["adminform"].form.errors
    response = admin_client.post(change_url, {**form, "rate_limit": "7"})
    assert response.status_code == 302
    endpoint.refresh_from_db()
    assert (endpoint.rate_limit, endpoint.ordered, endpoint.breaker_state) == (7, True, "half_open")


def test_a_stopping_dispatcher_hands_back_deliveries_waiting_for_their_slot(
    make_endpoint, receiver
):
    from webhooks_app import dispatcher

    endpoint, _ = make_endpoint(receiver.url(), rate_limit=2)
    for n in range(6):
        emit("user.created", {"n": n})
    with webhooks(POLL_INTERVAL=1.0):  # books two seconds ahead: 4 slots
        d = dispatcher.Dispatcher()
        d.start()
        try:
            wait = time.monotonic() + 5
            while time.monotonic() < wait and not d._timers:
                time.sleep(0.01)
            assert d._timers  # claimed, waiting for their slot in the pacer's heap
        finally:
            d.stop(timeout=10)
    rows = Delivery.objects.filter(endpoint=endpoint)
    assert all(r.claim_token == "" for r in rows)  # none left claimed
    sent = {r.status for r in rows if r.attempts}
    assert sent <= {"succeeded"} and len(receiver.received) == len([r for r in rows if r.attempts])
    assert {r.status for r in rows if not r.attempts} == {"pending"}  # handed back, unsent


def test_ordered_and_rate_limited_endpoint_holds_later_deliveries_behind_a_failing_one(
    make_endpoint, receiver
):
    """Paced rows go out one by one at their slots: an ordered endpoint's later rows must
    not leave while an earlier one failed and waits for its retry."""
    make_endpoint(receiver.url("/ordered"), ordered=True, rate_limit=20)
    receiver.script(Reply(500))
    with webhooks(RETRY_SCHEDULE=[0, 30]):
        for n in range(3):
            emit("user.created", {"n": n})
        engine.drain(max_seconds=3)
        time.sleep(0.3)
    assert numbers(receiver.received) == [0]  # 1 and 2 wait behind the failed 0
