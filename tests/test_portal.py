"""The customer portal: tenant scoping, the feature gate and PORTAL_PERMISSION, every page
through services, the one-time secret, magic links."""

from __future__ import annotations

import re
from datetime import timedelta
from io import StringIO
from pathlib import Path

import pytest
import standardwebhooks
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import override_settings
from django.urls import reverse

from tests.receiver import Reply
from webhooks_app import emit, engine, signing
from webhooks_app.models import Delivery, Endpoint, MagicLinkUse
from webhooks_app.portal import magic_link

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_throttles():
    from django.core.cache import cache

    cache.clear()  # throttle history outlives each test's rollback
    yield
    cache.clear()


def url(name: str, *args) -> str:
    return reverse(f"webhooks_portal:{name}", args=args)


def webhooks_settings(**overrides):
    from django.conf import settings

    return override_settings(WEBHOOKS_APP={**settings.WEBHOOKS_APP, **overrides})


@pytest.fixture
def alice(client):
    user = get_user_model().objects.create_user("alice", "alice@example.com", "pw")
    client.force_login(user)
    return user


@pytest.fixture
def bob_client():
    from django.test import Client

    bob = get_user_model().objects.create_user("bob", "bob@example.com", "pw")
    c = Client()
    c.force_login(bob)
    return c


def create(client, receiver_url: str, **overrides):
    data = {
        "name": "CRM",
        "url": receiver_url,
        "events": ["user.created", "user.updated"],
        "events_toggles": "1",
        "events_enabled": ["user.created", "user.updated"],
        "is_active": "on",
        "method": "POST",
        **overrides,
    }
    return client.post(url("create"), data)


def secret_of(response) -> str:
    match = re.search(r'id="wh-secret-value"[^>]*value="([^"]+)"', response.content.decode())
    assert match, "no secret on the page"
    return match.group(1)


def deny_all(request, tenant):
    return False


def only_staff(request, tenant):
    return request.user.is_staff


def test_anonymous_goes_to_login(client):
    response = client.get(url("list"))
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_create_shows_secret_once_and_scopes_to_the_users_tenant(client, alice, receiver):
    empty = client.get(url("list"))
    assert empty.status_code == 200
    assert "No webhooks yet" in empty.content.decode()
    form = client.get(url("create")).content.decode()
    assert 'value="user.created"' in form and "A user signed up." in form
    assert "webhook.test" not in form  # only Test sends it
    assert 'name="payload_fields"' in form  # the admin's options are here too
    response = create(client, receiver.url(), tenant="someone-else")  # ignored
    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store, private"
    secret = secret_of(response)
    endpoint = Endpoint.objects.get()
    assert endpoint.tenant == str(alice.pk) and endpoint.get_secret() == secret
    assert endpoint.event_types == ["user.created", "user.updated"]
    html = response.content.decode()
    assert "webhook-signature" in html and "standardwebhooks" in html  # verify panel
    listed = client.get(url("list")).content.decode()
    assert secret not in listed and receiver.url() in listed
    assert secret not in client.get(url("edit", endpoint.pk)).content.decode()


def test_create_errors_are_field_errors(client, alice):
    response = create(client, "https://10.0.0.1/hook", events=[], secret="short")
    assert response.status_code == 200
    errors = response.context["form"].errors
    assert "events" in errors and "secret" in errors
    assert Endpoint.objects.count() == 0
    with webhooks_settings(ALLOW_HTTP=False):
        refused = create(client, "http://example.com/hook")
    assert "url" in refused.context["form"].errors


def test_own_secret_and_confirmation_email(
    client, alice, receiver, mailoutbox, django_capture_on_commit_callbacks
):
    own = "s" * 40
    with django_capture_on_commit_callbacks(execute=True):
        response = create(client, receiver.url(), secret=own, notify_email="ops@example.com")
    assert secret_of(response) == own
    assert len(mailoutbox) == 1 and own not in mailoutbox[0].body
    assert mailoutbox[0].to == ["ops@example.com"]


def test_list_cards_search_and_tabs(client, alice, make_endpoint, receiver):
    tenant = str(alice.pk)
    make_endpoint(receiver.url("/a"), tenant=tenant, name="Alpha")
    make_endpoint(receiver.url("/b"), events=["user.deleted"], tenant=tenant, is_active=False)
    make_endpoint(receiver.url("/other"), tenant="someone-else")
    response = client.get(url("list"))
    assert response.context["stats"] == {
        "total": 2,
        "active": 1,
        "inactive": 1,
        "event_types": 2,
        "failed_24h": 0,
    }
    html = response.content.decode()
    assert "/other" not in html and "/a" in html
    assert [e.url for e in client.get(url("list"), {"q": "alpha"}).context["page"]] == [
        receiver.url("/a")
    ]
    inactive = client.get(url("list"), {"status": "inactive"}).context["page"]
    assert [e.url for e in inactive] == [receiver.url("/b")]


def test_edit_test_rotate_history_replay_delete(client, alice, make_endpoint, receiver):
    endpoint, secret = make_endpoint(receiver.url(), tenant=str(alice.pk))
    saved = client.post(
        url("edit", endpoint.pk),
        {
            "url": receiver.url("/new"),
            "events": ["user.deleted"],
            "method": "POST",
            "is_active": "on",
            "name": "Renamed",
        },
    )
    assert saved.status_code == 302
    endpoint.refresh_from_db()
    assert endpoint.url == receiver.url("/new") and endpoint.event_types == ["user.deleted"]
    # Test: the result page shows code, time and excerpt; the request verifies.
    receiver.script(Reply(201, b'{"thanks":1}'))
    sent = client.post(url("test", endpoint.pk))
    assert sent.status_code == 302
    page = client.get(sent["Location"])
    html = page.content.decode()
    assert "201" in html and "thanks" in html and " ms" in html
    request = receiver.wait_for(1)[0]
    standardwebhooks.Webhook(secret).verify(request.body, request.headers)
    # Rotate with a grace period: the new secret once; both verify meanwhile.
    rotated = client.post(url("rotate", endpoint.pk), {"grace": "3600"})
    new = secret_of(rotated)
    assert new != secret and rotated["Cache-Control"] == "no-store, private"
    receiver.script(Reply(500))
    client.post(url("test", endpoint.pk))
    second = receiver.wait_for(2)[1]
    standardwebhooks.Webhook(new).verify(second.body, second.headers)
    standardwebhooks.Webhook(secret).verify(second.body, second.headers)
    # History: filters; the failed test replays through services.
    history = client.get(url("history", endpoint.pk))
    assert history.context["page"].count == 2
    failed = client.get(url("history", endpoint.pk), {"status": "failed"}).context["page"].rows
    assert len(failed) == 1
    detail = client.get(url("delivery", endpoint.pk, failed[0].pk)).content.decode()
    assert "webhook.test" in detail and "500" in detail and "This is a test webhook" in detail
    replay = client.post(url("replay", endpoint.pk, failed[0].pk))
    assert replay.status_code == 302
    # A replayed test is sent at once by the request, like Test (never by a worker).
    assert Delivery.objects.get(pk=failed[0].pk).status == "succeeded"
    assert len(receiver.wait_for(3)) == 3
    assert client.get(url("replay", endpoint.pk, failed[0].pk)).status_code == 405
    # Delete: a confirmation page, then the POST.
    confirm = client.get(url("delete", endpoint.pk))
    assert "2 deliveries" in confirm.content.decode()
    assert Endpoint.objects.filter(pk=endpoint.pk).exists()
    assert client.post(url("delete", endpoint.pk)).status_code == 302
    assert not Endpoint.objects.filter(pk=endpoint.pk).exists()


def test_another_tenants_ids_are_404_everywhere(client, alice, bob_client, make_endpoint, receiver):
    endpoint, _ = make_endpoint(receiver.url(), tenant=str(alice.pk))
    emit("user.created", {"n": 1}, tenant=str(alice.pk))
    delivery = Delivery.objects.get()
    pages = [
        url("edit", endpoint.pk),
        url("test", endpoint.pk),
        url("rotate", endpoint.pk),
        url("delete", endpoint.pk),
        url("history", endpoint.pk),
        url("delivery", endpoint.pk, delivery.pk),
    ]
    for page in pages:
        assert client.get(page).status_code == 200, page
        assert bob_client.get(page).status_code == 404, page
        assert bob_client.post(page, {"grace": "0"}).status_code == 404, page
    assert bob_client.post(url("replay", endpoint.pk, delivery.pk)).status_code == 404
    assert client.get(url("edit", 10**30)).status_code == 404
    assert Endpoint.objects.filter(pk=endpoint.pk).exists() and not receiver.received
    endpoint.refresh_from_db()
    assert endpoint.url == receiver.url()


def test_test_and_replay_share_the_apis_per_tenant_limit(client, alice, make_endpoint, receiver):
    from rest_framework.test import APIClient

    endpoint, _ = make_endpoint(receiver.url(), tenant=str(alice.pk))
    with webhooks_settings(API_THROTTLE_RATE="2/min"):
        assert client.post(url("test", endpoint.pk)).status_code == 302
        api = APIClient()
        api.force_authenticate(alice)
        assert api.post(f"/api/webhooks/endpoints/{endpoint.pk}/test/").status_code == 200
        refused = client.post(url("test", endpoint.pk))
        assert refused.status_code == 429 and "Too many requests" in refused.content.decode()
    assert len(receiver.wait_for(2)) == 2


def test_awkward_input_is_never_a_server_error(client, alice, make_endpoint, receiver):
    endpoint, _ = make_endpoint(receiver.url(), tenant=str(alice.pk), name="Zürich ✓")
    assert "Zürich ✓" in client.get(url("list"), {"q": "zürich"}).content.decode()
    for params in ({"q": "a\x00b"}, {"q": "x" * 5000}, {"status": "\x00"}, {"page": "-1"}):
        assert client.get(url("list"), params).status_code == 200, params
    for params in ({"before": "\x00"}, {"after": "9" * 40}, {"status": "nope"}):
        assert client.get(url("history", endpoint.pk), params).status_code == 200, params
    assert client.get(url("test", endpoint.pk), {"result": "1\x00"}).status_code == 200
    nul = create(client, receiver.url(), name="a\x00b", secret="s" * 31 + "\x00")
    assert nul.status_code == 200 and {"name", "secret"} <= set(nul.context["form"].errors)
    assert client.get(url("magic", "a\x00b")).status_code == 403
    assert Endpoint.objects.count() == 1


def test_csrf_is_required_on_every_post(alice, make_endpoint, receiver):
    from django.test import Client

    strict = Client(enforce_csrf_checks=True)
    strict.force_login(alice)
    endpoint, _ = make_endpoint(receiver.url(), tenant=str(alice.pk))
    for page in (
        url("create"),
        url("test", endpoint.pk),
        url("rotate", endpoint.pk),
        url("delete", endpoint.pk),
        url("edit", endpoint.pk),
    ):
        assert strict.post(page, {"grace": "0"}).status_code == 403, page
    assert Endpoint.objects.filter(pk=endpoint.pk).exists() and not receiver.received


def test_feature_gate_and_portal_permission_refuse_with_a_message(
    client, alice, make_endpoint, receiver
):
    endpoint, _ = make_endpoint(receiver.url(), tenant=str(alice.pk))
    with webhooks_settings(FEATURE_GATE="tests.test_portal.deny_all"):
        for page in (url("list"), url("create"), url("edit", endpoint.pk)):
            response = client.get(page)
            assert response.status_code == 403
            assert "not available on your plan" in response.content.decode()
        assert client.post(url("delete", endpoint.pk)).status_code == 403
    with webhooks_settings(PORTAL_PERMISSION="tests.test_portal.only_staff"):
        response = client.get(url("list"))
        assert response.status_code == 403
        assert "not allowed to manage" in response.content.decode()
    assert Endpoint.objects.filter(pk=endpoint.pk).exists()


# Magic links -----------------------------------------------------------------------------
def test_magic_link_opens_once_for_its_tenant_only(client, make_endpoint, receiver):
    mine, _ = make_endpoint(receiver.url("/mine"), tenant="acme")
    theirs, _ = make_endpoint(receiver.url("/theirs"), tenant="other")
    link = magic_link("acme")
    assert client.get(url("list")).status_code == 302  # no session yet
    landing = client.get(link)
    assert landing.status_code == 200 and "Open the webhooks portal" in landing.content.decode()
    assert not MagicLinkUse.objects.exists()  # a GET (link scanner) does not use it up
    opened = client.post(link)
    assert opened.status_code == 302 and opened["Location"] == url("list")
    html = client.get(url("list")).content.decode()
    assert "/mine" in html and "/theirs" not in html
    assert client.get(url("edit", mine.pk)).status_code == 200
    assert client.get(url("edit", theirs.pk)).status_code == 404
    # Once only, in any browser.
    from django.test import Client

    again = Client()
    for method in (again.get, again.post):
        refused = method(link)
        assert refused.status_code == 403 and "already used" in refused.content.decode()
    assert again.get(url("list")).status_code == 302
    # Leaving ends the session.
    client.post(url("leave"))
    assert client.get(url("list")).status_code == 302


def test_magic_link_expired_tampered_and_next(client, make_endpoint, receiver, monkeypatch):
    import time as time_module

    link = magic_link("acme", expires_in=timedelta(seconds=60))
    token = link.rstrip("/").rsplit("/", 1)[1]
    tampered = url("magic", token[:-2] + ("AA" if token[-2:] != "AA" else "BB"))
    response = client.post(tampered)
    assert response.status_code == 403 and "not valid" in response.content.decode()
    forged = url("magic", signing.generate_secret().replace("/", "_"))
    assert client.post(forged).status_code == 403
    real_time = time_module.time
    monkeypatch.setattr("webhooks_app.portal.magic.time.time", lambda: real_time() + 61)
    expired = client.post(link)
    assert expired.status_code == 403 and "expired" in expired.content.decode()
    assert client.get(url("list")).status_code == 302
    monkeypatch.undo()
    endpoint, _ = make_endpoint(receiver.url(), tenant="acme")
    deep = magic_link("acme", next=url("history", endpoint.pk), base_url="https://example.com/")
    assert deep.startswith("https://example.com/webhooks/open/")
    opened = client.post(deep.removeprefix("https://example.com"))
    assert opened["Location"] == url("history", endpoint.pk)
    with pytest.raises(ValueError):
        magic_link("acme", next="https://evil.example/")
    with pytest.raises(ValueError):
        magic_link("acme", expires_in=timedelta(days=30))


def test_magic_link_session_honours_the_feature_gate(client):
    client.post(magic_link("acme"))
    with webhooks_settings(FEATURE_GATE="tests.test_portal.deny_all"):
        response = client.get(url("list"))
    assert response.status_code == 403 and "plan" in response.content.decode()


def test_magic_link_command_prints_a_working_link(client):
    out = StringIO()
    call_command("webhooks_magic_link", "acme", "--expires-in", "600", stdout=out)
    link = out.getvalue().strip()
    assert link.startswith("/webhooks/open/")
    assert client.post(link).status_code == 302
    assert client.get(url("list")).status_code == 200


# Plan gating at send time ----------------------------------------------------------------
def plan_of_acme(tenant):
    from django.core.cache import cache

    return tenant != "acme" or cache.get("acme-plan", False)


def test_engine_fails_deliveries_of_a_gated_tenant_and_replays_them_later(make_endpoint, receiver):
    from django.core.cache import cache

    from webhooks_app import gating, services

    endpoint, secret = make_endpoint(receiver.url(), tenant="acme")
    other, _ = make_endpoint(receiver.url("/other"), tenant="ok")
    with webhooks_settings(TENANT_GATE="tests.test_portal.plan_of_acme"):
        emit("user.created", {"n": 1}, tenant="acme")
        emit("user.created", {"n": 2}, tenant="ok")
        engine.drain(10)
        gated = Delivery.objects.get(endpoint=endpoint)
        assert gated.status == "failed" and gated.attempts == 0
        assert gated.last_error == gating.FEATURE_UNAVAILABLE_AT_SEND
        assert [r.path for r in receiver.received] == ["/other"]
        cache.set("acme-plan", True)
        try:
            services.replay(gated)
            Delivery.objects.filter(pk=gated.pk).update(next_attempt_at=gated.created_at)
            engine.drain(10)
        finally:
            cache.delete("acme-plan")
    gated.refresh_from_db()
    assert gated.status == "succeeded"
    request = receiver.wait_for(2)[1]
    standardwebhooks.Webhook(secret).verify(request.body, request.headers)


def test_feature_gate_is_asked_with_no_request_at_send_time(make_endpoint, receiver):
    seen = []

    def gate(request, tenant):
        seen.append((request, tenant))
        return False

    make_endpoint(receiver.url(), tenant="acme")
    with webhooks_settings(FEATURE_GATE=gate):
        emit("user.created", {}, tenant="acme")
        engine.drain(10)
    assert seen == [(None, "acme")] and not receiver.received
    assert Delivery.objects.get().status == "failed"


def test_a_gate_that_raises_at_send_time_fails_the_delivery_not_the_worker(make_endpoint, receiver):
    def broken(tenant):
        raise RuntimeError("billing is down")

    make_endpoint(receiver.url(), tenant="acme")
    with webhooks_settings(TENANT_GATE=broken):
        emit("user.created", {}, tenant="acme")
        engine.drain(10)
    d = Delivery.objects.get()
    assert d.status == "failed" and d.claim_token == "" and not receiver.received


# The "Verify your webhooks" snippets work -------------------------------------------------
def snippet(html: str, element_id: str) -> str:
    import html as html_module

    match = re.search(rf'<textarea[^>]*id="{element_id}"[^>]*>(.*?)</textarea>', html, re.S)
    assert match, element_id
    return html_module.unescape(match.group(1))


def test_verify_snippets_accept_a_real_delivery_and_refuse_a_forged_one(
    client, alice, make_endpoint, receiver, tmp_path
):
    import json
    import shutil
    import subprocess

    from webhooks_app import services

    page = client.get(url("verify")).content.decode()
    for header in ("webhook-id", "webhook-timestamp", "webhook-signature", "X-Webhook-Signature"):
        assert header in page
    endpoint, secret = make_endpoint(receiver.url(), tenant=str(alice.pk))
    services.send_test(endpoint)
    (request,) = receiver.wait_for(1)
    headers = {k.lower(): v for k, v in request.headers.items()}
    # Python: the snippet as shown, with the secret filled in and a request stand-in.
    python = snippet(page, "wh-snippet-python-text")
    scope: dict = {"WEBHOOK_SECRET": secret, "HttpResponse": lambda status: status}
    exec(python, scope)  # noqa: S102 - the page's own snippet is what is under test

    class Request:
        body = request.body

    Request.headers = headers
    assert scope["handle"](Request) == 204
    Request.body = request.body.replace(b"test", b"tost")
    assert scope["handle"](Request) == 400
    # Node.js
    node = shutil.which("node") or "/usr/bin/node"
    if not Path(node).exists():
        pytest.skip("node is not installed")
    (tmp_path / "verify.js").write_text(snippet(page, "wh-snippet-node-text"))
    runner = tmp_path / "run.js"
    runner.write_text(
        "const { verifyWebhook } = require('./verify.js');\n"
        "const input = require('fs').readFileSync(0, 'utf8');\n"
        "const [body, headers, secret, other] = JSON.parse(input);\n"
        "const b = Buffer.from(body, 'base64');\n"
        "console.log(JSON.stringify([verifyWebhook(b, headers, secret),"
        " verifyWebhook(Buffer.concat([b, Buffer.from(' ')]), headers, secret),"
        " verifyWebhook(b, headers, other)]));\n"
    )
    import base64

    other = signing.generate_secret()
    payload = json.dumps([base64.b64encode(request.body).decode(), headers, secret, other])
    out = subprocess.run(
        [node, str(runner)], input=payload, capture_output=True, text=True, timeout=30, check=True
    )
    assert json.loads(out.stdout) == [True, False, False]


def test_portal_forms_offer_every_option_of_the_admin_forms():
    from webhooks_app.admin.forms import EndpointAddForm, EndpointChangeForm
    from webhooks_app.portal.forms import PortalCreateForm, PortalEditForm

    assert set(PortalEditForm().fields) == set(EndpointChangeForm().fields) - {"tenant"}
    assert set(PortalCreateForm().fields) == set(EndpointAddForm().fields) - {"tenant"}
    assert "secret" in PortalCreateForm().fields and "tenant" not in PortalCreateForm().fields


def test_a_misspelt_hook_is_a_system_check_error():
    from webhooks_app.checks import check_hooks

    assert check_hooks() == []
    with webhooks_settings(PORTAL_PERMISSION="tests.test_portal.nope", TENANT_GATE="os.sep"):
        problems = check_hooks()
    assert [p.id for p in problems] == ["webhooks_app.E020", "webhooks_app.E020"]
    assert "PORTAL_PERMISSION" in problems[1].msg and "not callable" in problems[0].msg


def test_own_secret_verifies_with_standardwebhooks_as_the_panel_says(make_endpoint, receiver):
    import base64

    from webhooks_app import services

    own = "my-own-secret-that-is-long-enough-1234"
    endpoint, _ = make_endpoint(receiver.url(), secret=own)
    services.send_test(endpoint)
    (request,) = receiver.wait_for(1)
    wh = standardwebhooks.Webhook("whsec_" + base64.b64encode(own.encode()).decode())
    assert wh.verify(request.body, request.headers)["event"] == "webhook.test"


def test_a_magic_session_ends_after_portal_session_seconds(client, monkeypatch):
    import time as time_module

    with webhooks_settings(PORTAL_SESSION_SECONDS=60):
        client.post(magic_link("acme"))
    assert client.get(url("list")).status_code == 200
    later = time_module.time() + 61
    monkeypatch.setattr("webhooks_app.portal.access.time.time", lambda: later)
    assert client.get(url("list")).status_code == 302
