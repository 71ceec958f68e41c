"""Running it for months: unrouted events, retention, emit once, bulk recovery (issue 11)."""

import json

import pytest
from django.conf import settings
from django.core.management import call_command
from django.test import override_settings

from webhooks_app import emit, engine
from webhooks_app.models import Delivery, Event

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


def test_emit_command_reports_an_unrouted_event(capsys):
    call_command("webhooks_emit", "user.created", '{"a": 1}')
    assert "0 delivery(ies) queued" in capsys.readouterr().out
    assert not Event.objects.exists()
