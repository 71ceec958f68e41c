"""Hostile review of the portal, magic links and REST Hooks: each test is a found defect
(failing on the code before its fix) or an attack that must keep failing."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth import get_user_model
from django.test import override_settings
from django.urls import include, path, reverse
from rest_framework.test import APIClient

from webhooks_app import emit
from webhooks_app.models import Delivery, Endpoint
from webhooks_app.portal import magic_link

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
        url("edit", big),
        url("test", big),
        url("history", big),
        url("delivery", endpoint.pk, big),
        url("delivery", big, delivery.pk),
        url("rotate", big),
        url("delete", big),
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


# Magic links -----------------------------------------------------------------------------
def test_a_later_login_in_the_same_browser_does_not_inherit_a_magic_session(
    client, make_endpoint, receiver
):
    acme, _ = make_endpoint(receiver.url("/acme"), tenant="acme")
    client.post(magic_link("acme"))
    assert client.get(url("edit", acme.pk)).status_code == 200
    # Someone else logs in on this (shared) browser: login() keeps the session's data.
    bob = user("bob")
    client.force_login(bob)
    assert client.get(url("edit", acme.pk)).status_code == 404
    assert "/acme" not in client.get(url("list")).content.decode()


def test_a_logged_in_user_keeps_the_magic_session_he_opened(client, make_endpoint, receiver):
    acme, _ = make_endpoint(receiver.url("/acme"), tenant="acme")
    client.force_login(user("bob"))
    client.post(magic_link("acme"))
    assert client.get(url("edit", acme.pk)).status_code == 200
    client.post(url("leave"))
    assert client.get(url("edit", acme.pk)).status_code == 404


def plan_of_the_user(request, tenant):
    # A gate that judges the logged-in user's plan (bob has webhooks, acme has not).
    user = getattr(request, "user", None)
    return bool(user is not None and user.is_authenticated and user.username == "bob")


def tenant_plan(tenant):
    return tenant != "acme"


def test_a_magic_session_is_gated_by_its_tenant_not_by_a_logged_in_users_plan(
    client, make_endpoint, receiver
):
    acme, _ = make_endpoint(receiver.url("/acme"), tenant="acme")
    client.force_login(user("bob"))
    with webhooks_settings(
        FEATURE_GATE="tests.test_portal_review.plan_of_the_user",
        TENANT_GATE="tests.test_portal_review.tenant_plan",
    ):
        assert client.get(url("list")).status_code == 200  # bob's own tenant, his plan
        client.post(magic_link("acme"))
        for page in (url("list"), url("edit", acme.pk), url("verify")):
            refused = client.get(page)
            assert refused.status_code == 403, page
            assert "not available on your plan" in refused.content.decode()
        assert client.post(url("delete", acme.pk)).status_code == 403
    assert Endpoint.objects.filter(pk=acme.pk).exists()


def test_the_magic_landing_page_is_not_cached_and_sends_no_referrer_to_other_sites(client):
    landing = client.get(magic_link("acme"))
    assert landing.status_code == 200
    assert "no-store" in landing["Cache-Control"]
    assert landing["Referrer-Policy"] == "same-origin"


def test_next_cannot_leave_the_site_when_the_portal_is_mounted_at_the_root():
    with override_settings(ROOT_URLCONF="tests.test_portal_review"):
        assert reverse("webhooks_portal:list") == "/"
        for evil in ("/\t/evil.example/", "/\n/evil.example/", "/\r\n/evil.example", "/ /x"):
            with pytest.raises(ValueError):
                magic_link("acme", next=evil)
        assert magic_link("acme", next="/3/history/").startswith("/open/")


# Clickjacking ----------------------------------------------------------------------------
def test_portal_pages_refuse_framing_without_the_sites_middleware(client, make_endpoint, receiver):
    from django.conf import settings

    alice = user("alice")
    endpoint, _ = make_endpoint(receiver.url(), tenant=str(alice.pk))
    middleware = [m for m in settings.MIDDLEWARE if "XFrameOptions" not in m]
    with override_settings(MIDDLEWARE=middleware):
        landing = client.get(magic_link("acme"))
        assert landing["X-Frame-Options"] == "DENY"
        client.force_login(alice)
        for page in (url("list"), url("create"), url("edit", endpoint.pk), url("verify")):
            assert client.get(page)["X-Frame-Options"] == "DENY", page
        secret_page = client.post(url("rotate", endpoint.pk), {"grace": "0"})
        assert "wh-secret-value" in secret_page.content.decode()
        assert secret_page["X-Frame-Options"] == "DENY"
    with override_settings(MIDDLEWARE=middleware, X_FRAME_OPTIONS="SAMEORIGIN"):
        assert client.get(url("list"))["X-Frame-Options"] == "SAMEORIGIN"


# Awkward input ---------------------------------------------------------------------------
def form_data(receiver_url: str, **overrides) -> dict:
    return {
        "name": "CRM",
        "url": receiver_url,
        "events": ["user.created"],
        "events_toggles": "1",
        "events_enabled": ["user.created"],
        "is_active": "on",
        "method": "POST",
        **overrides,
    }


def test_json_nested_too_deep_for_the_parser_is_a_field_error(client, make_endpoint, receiver):
    alice = user("alice")
    client.force_login(alice)
    endpoint, _ = make_endpoint(receiver.url(), tenant=str(alice.pk))
    deep = "[" * 100_000 + "]" * 100_000  # json.loads raises RecursionError, not ValueError
    for field in (
        {"payload_filter": deep},
        {"payload_extra_key": "k", "payload_extra_value": deep},
    ):
        for page in (url("create"), url("edit", endpoint.pk)):
            response = client.post(page, form_data(receiver.url(), **field))
            assert response.status_code == 200, (page, field)
            assert response.context["form"].errors, (page, field)
    assert Endpoint.objects.count() == 1


def test_nul_in_payload_fields_is_a_field_error_not_a_database_error(client, receiver):
    # PostgreSQL's jsonb refuses \u0000: the create used to end in a DataError (a 500).
    client.force_login(user("alice"))
    response = client.post(url("create"), form_data(receiver.url(), payload_fields="a\x00b, c"))
    assert response.status_code == 200
    assert "payload_fields" in response.context["form"].errors
    assert not Endpoint.objects.exists()


# Every string translatable ---------------------------------------------------------------
def test_form_labels_and_units_go_through_the_translation_catalogue(
    client, make_endpoint, receiver, monkeypatch
):
    from django.utils import translation

    from webhooks_app import services

    alice = user("alice")
    client.force_login(alice)
    endpoint, _ = make_endpoint(
        receiver.url(), tenant=str(alice.pk), headers={"X-Team": "a"}, payload_extra={"k": 1}
    )
    test = services.send_test(endpoint)
    translation._trans.gettext  # noqa: B018 (Django binds the real function on first use)
    real = translation._trans.gettext
    monkeypatch.setattr(translation._trans, "gettext", lambda text: f"⟦{real(text)}⟧")
    edit = client.get(url("edit", endpoint.pk)).content.decode()
    assert "<th>⟦Header⟧</th>" in edit and "<th>⟦Key⟧</th>" in edit
    for page in (
        url("history", endpoint.pk),
        url("delivery", endpoint.pk, test.delivery.pk),
        url("test", endpoint.pk) + f"?result={test.delivery.pk}",
    ):
        html = client.get(page).content.decode()
        assert " ms⟧" in html and not re.search(r"\d ms<", html), page


# Secrets in error reports ----------------------------------------------------------------
def test_an_error_report_of_a_portal_page_holds_no_secret_or_header_value(
    client, receiver, monkeypatch
):
    import sys

    from django.core.signals import got_request_exception
    from django.views.debug import ExceptionReporter

    from webhooks_app.portal import views

    client.force_login(user("alice"))
    own_secret = "S3cr3t" * 7
    real_render = views._render

    def failing_render(request, template, context, status=200):
        if template == "secret.html":
            raise RuntimeError("the page broke after the secret was made")
        return real_render(request, template, context, status)

    monkeypatch.setattr(views, "_render", failing_render)
    reports = []

    def report(sender, request, **kwargs):
        reports.append(ExceptionReporter(request, *sys.exc_info()).get_traceback_text())

    got_request_exception.connect(report)
    client.raise_request_exception = False
    try:
        response = client.post(
            url("create"),
            form_data(
                receiver.url(),
                secret=own_secret,
                headers_key="Authorization",
                headers_value="Bearer hdr-credential-123",
            ),
        )
    finally:
        got_request_exception.disconnect(report)
    assert response.status_code == 500 and reports
    assert own_secret not in reports[0] and "hdr-credential-123" not in reports[0]
    assert Endpoint.objects.get().get_secret() == own_secret  # the report is about this


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_uses_of_one_link_open_one_session():
    import threading

    from django.db import connection

    from webhooks_app.portal import magic

    token = magic_link("acme").rstrip("/").rsplit("/", 1)[1]
    barrier = threading.Barrier(4)
    outcomes = []

    def use() -> None:
        try:
            barrier.wait()
            magic.redeem(token)
            outcomes.append("opened")
        except magic.InvalidLink:
            outcomes.append("refused")
        finally:
            connection.close()

    threads = [threading.Thread(target=use) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(outcomes) == ["opened", "refused", "refused", "refused"]


def test_the_endpoint_limit_counts_the_portal_tenant_not_the_default_one(
    client, make_endpoint, receiver
):
    alice = user("alice")
    client.force_login(alice)
    make_endpoint(receiver.url("/staff"))  # the site's own endpoint, tenant ""
    with webhooks_settings(MAX_ENDPOINTS_PER_TENANT=1):
        first = client.post(url("create"), form_data(receiver.url("/a")))
        assert first.status_code == 200 and "wh-secret-value" in first.content.decode()
        second = client.post(url("create"), form_data(receiver.url("/b")))
        assert "already has 1 webhook endpoints" in second.content.decode()
    assert Endpoint.objects.filter(tenant=str(alice.pk)).count() == 1


def test_awkward_values_in_every_form_field_are_field_errors(client, make_endpoint, receiver):
    # Run on PostgreSQL too: NUL and non-finite numbers are where jsonb and text differ.
    alice = user("alice")
    client.force_login(alice)
    endpoint, _ = make_endpoint(receiver.url(), tenant=str(alice.pk))
    cases = {
        "payload_extra": [
            {"payload_extra_key": "k", "payload_extra_value": "NaN"},
            {"payload_extra_key": "k", "payload_extra_value": "1e999"},
            {"payload_extra_key": "k\x00", "payload_extra_value": "1"},
            {"payload_extra_key": "k", "payload_extra_value": '"a\\u0000b"'},
        ],
        "headers": [
            {"headers_key": "X-A", "headers_value": "a\x00b"},
            {"headers_key": "X-Ä", "headers_value": "b"},
        ],
        "url": [{"url": receiver.url() + "\x00"}, {"url": "https://a.example/" + "a" * 100_000}],
        "description": [{"description": "x\x00y"}],
        "notify_email": [{"notify_email": "a\x00@b.com"}],
        "rate_limit": [{"rate_limit": "1e309"}, {"rate_limit": "9" * 30}],
        "payload_filter": [
            {"payload_filter": '{"data.x": NaN}'},
            {"payload_filter": '{"data.x": "\\u0000"}'},
        ],
        "events": [{"events": ["nope\x00"], "events_enabled": ["nope\x00"]}],
        "method": [{"method": "DELETE"}],
    }
    for field, overrides in cases.items():
        for override in overrides:
            for page in (url("create"), url("edit", endpoint.pk)):
                response = client.post(page, form_data(receiver.url(), **override))
                assert response.status_code == 200, (page, override)
                assert field in response.context["form"].errors, (page, override)
    for grace in ("nan", "\x00", "-1", "9" * 30):
        assert client.post(url("rotate", endpoint.pk), {"grace": grace}).status_code == 200
    assert Endpoint.objects.count() == 1


def test_rest_hooks_refuse_awkward_input_with_400_and_404(make_endpoint, receiver):
    alice, bob = user("alice"), user("bob")
    api = APIClient()
    api.force_authenticate(alice)
    theirs, _ = make_endpoint(receiver.url(), tenant=str(bob.pk), rest_hook=True)
    for body in (
        {"target_url": receiver.url() + "\x00", "event": "user.created"},
        {"target_url": receiver.url(), "event": "user.created\x00"},
        {"target_url": receiver.url(), "event": "webhook.test"},
        {"target_url": "ü" * 3000, "event": "user.created"},
        {"target_url": None, "event": "user.created"},
        {"target_url": 1, "event": ["user.created"]},
    ):
        assert api.post("/api/webhooks/hooks/", body, format="json").status_code == 400, body
    for bad in ("abc", "%00", "9" * 40, "-1", "1.0", "١", str(theirs.pk)):
        assert api.delete(f"/api/webhooks/hooks/{bad}/").status_code == 404, bad
    for name in ("%00", "ü" * 300, "user.created%00"):
        assert api.get(f"/api/webhooks/event-types/{name}/sample/").status_code == 404, name
    assert Endpoint.objects.filter(pk=theirs.pk).exists() and Endpoint.objects.count() == 1


def test_an_own_endpoint_id_with_a_foreign_delivery_id_is_a_404(client, make_endpoint, receiver):
    alice, bob = user("alice"), user("bob")
    client.force_login(alice)
    mine, _ = make_endpoint(receiver.url("/mine"), tenant=str(alice.pk))
    theirs, _ = make_endpoint(receiver.url("/theirs"), tenant=str(bob.pk))
    emit("user.created", {"n": 1}, tenant=str(bob.pk))
    delivery = Delivery.objects.get(endpoint=theirs)
    assert client.get(url("delivery", mine.pk, delivery.pk)).status_code == 404
    assert client.post(url("replay", mine.pk, delivery.pk)).status_code == 404
    assert (
        "wh-test-result"
        not in client.get(url("test", mine.pk), {"result": delivery.pk}).content.decode()
    )


def test_replay_leave_and_the_magic_link_need_the_csrf_token(make_endpoint, receiver):
    from django.test import Client

    from webhooks_app.models import MagicLinkUse

    strict = Client(enforce_csrf_checks=True)
    link = magic_link("acme")
    assert strict.post(link).status_code == 403 and not MagicLinkUse.objects.exists()
    alice = user("alice")
    strict.force_login(alice)
    endpoint, _ = make_endpoint(receiver.url(), tenant=str(alice.pk))
    emit("user.created", {"n": 1}, tenant=str(alice.pk))
    delivery = Delivery.objects.get()
    Delivery.objects.filter(pk=delivery.pk).update(status=Delivery.Status.FAILED)
    assert strict.post(url("replay", endpoint.pk, delivery.pk)).status_code == 403
    assert Delivery.objects.get().status == Delivery.Status.FAILED
    assert strict.post(url("leave")).status_code == 403
