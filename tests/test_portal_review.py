"""Hostile review of the portal, magic links and REST Hooks: each test is a found defect
(failing on the code before its fix) or an attack that must keep failing."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.test import override_settings
from django.urls import include, path, reverse
from rest_framework.test import APIClient

from webhooks_app import emit
from webhooks_app.models import Delivery, Endpoint

pytestmark = pytest.mark.django_db

# Used as ROOT_URLCONF by the test that mounts the portal at the site's root.
urlpatterns = [path("", include("webhooks_app.portal.urls"))]


def url(name: str, *args) -> str:
    return reverse(f"webhooks_portal:{name}", args=args)


def webhooks_settings(**overrides):
    from django.conf import settings

    return override_settings(WEBHOOKS_APP={**settings.WEBHOOKS_APP, **overrides})


@pytest.fixture(autouse=True)
def _fresh_throttles():
    from django.core.cache import cache

    cache.clear()
    yield
    cache.clear()


def user(name: str):
    return get_user_model().objects.create_user(name, f"{name}@example.com", "pw")


def test_probe_every_url_with_huge_and_foreign_ids(client, make_endpoint, receiver):
    alice = user("alice")
    client.force_login(alice)
    endpoint, _ = make_endpoint(receiver.url(), tenant=str(alice.pk))
    emit("user.created", {"n": 1}, tenant=str(alice.pk))
    delivery = Delivery.objects.get()
    big = 10**30
    for page in (
        url("edit", big), url("test", big), url("history", big),
        url("delivery", endpoint.pk, big), url("delivery", big, delivery.pk),
        url("rotate", big), url("delete", big),
    ):
        assert client.get(page).status_code == 404, page
        assert client.post(page).status_code == 404, page
    assert client.post(url("replay", endpoint.pk, big)).status_code == 404
    assert client.post(url("replay", big, big)).status_code == 404


# REST Hooks ------------------------------------------------------------------------------
def test_hooks_delete_unsubscribes_only_rest_hooks_subscriptions(make_endpoint, receiver):
    alice = user("alice")
    api = APIClient()
    api.force_authenticate(alice)
    by_hand, _ = make_endpoint(receiver.url("/by-hand"), tenant=str(alice.pk))
    made = api.post(
        "/api/webhooks/hooks/",
        {"target_url": receiver.url("/zap"), "event": "user.created"},
        format="json",
    )
    assert made.status_code == 201
    hook = Endpoint.objects.get(pk=made.json()["id"])
    assert hook.rest_hook and not by_hand.rest_hook
    # An endpoint made in the admin, portal or endpoints/ is not a subscription: 404, kept.
    assert api.delete(f"/api/webhooks/hooks/{by_hand.pk}/").status_code == 404
    assert Endpoint.objects.filter(pk=by_hand.pk).exists()
    assert api.delete(f"/api/webhooks/hooks/{hook.pk}/").status_code == 204
    assert not Endpoint.objects.filter(pk=hook.pk).exists()
    # endpoints/ still manages both kinds.
    assert api.delete(f"/api/webhooks/endpoints/{by_hand.pk}/").status_code == 204
