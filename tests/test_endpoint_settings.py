"""Endpoint settings that can always be sent: headers, URLs, sizes (issue 9 §3)."""

import pytest
from django.conf import settings
from django.test import override_settings

from webhooks_app import emit, engine
from webhooks_app.models import Delivery

pytestmark = pytest.mark.django_db(transaction=True)


def webhooks(**changes):
    return override_settings(WEBHOOKS_APP={**settings.WEBHOOKS_APP, **changes})


# Claims are bounded by bytes -----------------------------------------------------------
def test_claim_is_bounded_by_bytes_as_well_as_rows(receiver, make_endpoint):
    make_endpoint(receiver.url())
    events = [emit("user.created", {"blob": "x" * 100_000, "n": i}) for i in range(20)]
    size = len(events[0].body.encode())
    with webhooks(CLAIM_MAX_BYTES=350_000):
        token, rows = engine.claim(200)
        assert len(rows) == 3  # 3 x ~100 kB fit in 350 kB, 4 do not
        assert sum(r.claim_bytes for r in rows) <= 350_000
        assert all(abs(r.claim_bytes - size) < 10 for r in rows)
        # One event larger than the whole budget still goes out, alone.
        _, big = engine.claim(200, max_bytes=10)
        assert len(big) == 1
    engine.release(token, [r.id for r in rows])
    assert Delivery.objects.exclude(claim_token="").count() == 1


def test_drain_sends_large_events_in_bounded_claims(receiver, make_endpoint, monkeypatch):
    make_endpoint(receiver.url())
    for i in range(12):
        emit("user.created", {"blob": "y" * 50_000, "n": i})
    seen = []
    real_claim = engine.claim

    def spy(*args, **kwargs):
        token, rows = real_claim(*args, **kwargs)
        seen.append(sum(r.claim_bytes for r in rows))
        return token, rows

    monkeypatch.setattr(engine, "claim", spy)
    with webhooks(CLAIM_MAX_BYTES=120_000):
        engine.drain()
    assert len(receiver.wait_for(12)) == 12
    assert max(seen) <= 120_000 and len(seen) >= 6
