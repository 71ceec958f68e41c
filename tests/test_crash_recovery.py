"""Crash recovery in seconds: short leases that a live worker renews while it sends.

A SIGKILLed worker's claimed deliveries come back once its lease runs out (seconds, not
the length of a timeout), while a slow send by a live worker is never handed out twice.
"""

import re
import threading
import time
from datetime import timedelta

import pytest
from django.conf import settings
from django.test import override_settings
from django.utils import timezone

from tests.receiver import Reply
from webhooks_app import emit, engine
from webhooks_app.models import Delivery

pytestmark = pytest.mark.django_db(transaction=True)


def webhooks(**changes):
    return override_settings(WEBHOOKS_APP={**settings.WEBHOOKS_APP, **changes})


def test_a_slow_send_longer_than_the_lease_is_never_handed_out_twice(receiver, make_endpoint):
    make_endpoint(receiver.url())
    receiver.script(Reply(200, delay=5))  # 2.5 leases
    with webhooks(LEASE_SECONDS=2, TIMEOUT=10):
        event = emit("user.created", {"slow": True})
        sender = threading.Thread(target=engine.drain)
        sender.start()
        receiver.wait_started(1)
        stolen = []
        while sender.is_alive():  # another worker polling all the while
            stolen += engine.claim(10)[1]
            time.sleep(0.2)
        sender.join()
    assert stolen == []
    (req,) = receiver.wait_for(1)
    assert req.header("webhook-id") == event.public_id
    d = Delivery.objects.get(event=event)
    assert (d.status, d.attempts, d.claim_token) == ("succeeded", 1, "")


def test_a_claim_nobody_renews_comes_back_after_the_short_lease(receiver, make_endpoint):
    make_endpoint(receiver.url())
    with webhooks(LEASE_SECONDS=2, TIMEOUT=1):
        emit("user.created", {})
        token, rows = engine.claim(10)
        assert len(rows) == 1
        time.sleep(3)  # held and renewed: still ours
        assert engine.claim(10)[1] == []
        engine._leases.forget(token, [r.id for r in rows])  # the worker "dies"
        deadline = time.monotonic() + 3
        again = []
        while not again and time.monotonic() < deadline:
            again = engine.claim(10)[1]
            time.sleep(0.1)
    assert [r.id for r in again] == [rows[0].id]


def test_a_lost_claim_is_not_sent(receiver, make_endpoint):
    """The heartbeat finds another owner: the chunk's unstarted rows are not sent."""
    make_endpoint(receiver.url())
    with webhooks(LEASE_SECONDS=2):
        emit("user.created", {})
        token, rows = engine.claim(10)
        Delivery.objects.filter(pk=rows[0].pk).update(claim_token="someone-else")
        engine._leases.renew(force=True)
        assert engine.lease_valid_until(token) == 0
        engine.deliver_chunk(token, rows)
    assert receiver.received == []
    assert Delivery.objects.get(pk=rows[0].pk).claim_token == "someone-else"


def _worker_pids(cluster) -> list[int]:
    return [int(p) for p in re.findall(r"ready for work at (\d+)", cluster.log())]


@pytest.mark.cluster
def test_sigkilled_worker_mid_burst_is_recovered_within_15_s(
    receiver, make_endpoint, start_cluster
):
    """Default lease and timeout; one of two workers is SIGKILLed while it holds part of
    a burst (its claims carry its pid, see engine.worker_tag)."""
    import os
    import signal

    make_endpoint(receiver.url())
    receiver.default = Reply(200, delay=0.05)
    cluster = start_cluster(workers=2)
    deadline = time.monotonic() + 10
    while len(_worker_pids(cluster)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    victim = _worker_pids(cluster)[0]
    events = [emit("user.created", {"n": i}) for i in range(300)]
    held = Delivery.objects.filter(status="pending", claim_token__startswith=f"{victim:x}.")
    deadline = time.monotonic() + 30
    while held.count() < 20 and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(victim, signal.SIGKILL)
    killed_at = time.time()
    victims = set(held.values_list("event__public_id", flat=True))
    assert len(victims) >= 20, len(victims)  # the kill caught it holding work
    ids = {e.public_id for e in events}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if ids <= {r.header("webhook-id") for r in list(receiver.received)}:
            break
        time.sleep(0.1)
    missing = ids - {r.header("webhook-id") for r in receiver.received}
    assert not missing, f"{len(missing)} events never arrived"
    firsts: dict[str, float] = {}
    for r in sorted(receiver.received, key=lambda r: r.at):
        firsts.setdefault(r.header("webhook-id"), r.at)
    recovered_in = max(firsts.values()) - killed_at
    victims_in = max(firsts[i] for i in victims) - killed_at
    per_second: dict[int, int] = {}
    for at in firsts.values():
        if at >= killed_at:
            per_second[int(at - killed_at)] = per_second.get(int(at - killed_at), 0) + 1
    print("\nfirst arrivals per second after the kill:", dict(sorted(per_second.items())))
    duplicates = len(receiver.received) - len(ids)
    print(
        f"SIGKILL of a worker mid-burst ({connection_vendor()}): last event arrived "
        f"{recovered_in:.1f} s after the kill (the dead worker's last: {victims_in:.1f} s); "
        f"it held {len(victims)} rows; {duplicates} duplicates"
    )
    assert recovered_in <= 15, recovered_in
    rows = Delivery.objects.filter(event__in=events)
    deadline = time.monotonic() + 15
    while rows.exclude(status="succeeded").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not rows.exclude(status="succeeded").exists()


def connection_vendor() -> str:
    from django.db import connection

    return connection.vendor


@pytest.mark.cluster
def test_no_duplicates_when_nothing_crashes_even_with_sends_longer_than_the_lease(
    receiver, make_endpoint, start_cluster
):
    """A 4 s lease; one request takes 6 s while a burst goes through two workers."""
    make_endpoint(receiver.url())
    receiver.script(Reply(200, delay=6))
    start_cluster(workers=2, env={"WEBHOOKS_LEASE_SECONDS": "4"})
    slow = emit("user.created", {"slow": True})
    receiver.wait_started(1)
    events = [emit("user.created", {"n": i}) for i in range(150)]
    receiver.wait_for(151, timeout=60)
    # A wrongly re-sent slow delivery would go out once the lease lapsed (about 4 s in,
    # answered at once: the scripted delay is used up), before the slow send ends at 6 s;
    # 2 s more covers a late re-claim.
    time.sleep(2)
    ids = [r.header("webhook-id") for r in receiver.received]
    assert len(ids) == len(set(ids)) == 151
    assert slow.public_id in ids
    rows = Delivery.objects.filter(event__in=[slow, *events])
    assert {(d.status, d.attempts) for d in rows} == {("succeeded", 1)}


def test_a_lease_that_ran_out_is_not_renewed_after_another_worker_took_part_of_it(
    receiver, make_endpoint
):
    """The heartbeat stalled (database slow) past the lease; another worker claimed one
    of the rows. The late renewal still matched the other row, which extended the whole
    claim: the stolen row was then sent twice."""
    make_endpoint(receiver.url())
    with webhooks(LEASE_SECONDS=6):
        emit("user.created", {"n": 0})
        emit("user.created", {"n": 1})
        token, rows = engine.claim(10)
        assert len(rows) == 2
        # The lease ran out in the database (its heartbeat did not get through).
        Delivery.objects.filter(claim_token=token).update(
            next_attempt_at=timezone.now() - timedelta(seconds=1)
        )
        other, stolen = engine.claim(1)  # another worker
        assert len(stolen) == 1
        engine._leases.renew(force=True)  # the late heartbeat
        engine.deliver_chunk(token, rows)
        engine.deliver_chunk(other, stolen)
    receiver.wait_for(1)
    time.sleep(0.3)
    got = [r.header("webhook-id") for r in receiver.received]
    assert got.count(stolen[0].event.public_id) == 1, got
