"""A newcomer's first ten minutes: the API root answers, the demo receiver verifies every
endpoint pointing at it, and the admin's delivery history runs without JavaScript errors."""

from __future__ import annotations

import os

import pytest
from django.contrib.auth import get_user_model

from tests.test_admin_browser import CHROMIUM, CHROMIUM_ARGS
from webhooks_app import emit, engine, services

# Playwright's sync API runs an event loop in this thread (see test_admin_browser.py).
os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"


# /api/webhooks/ ------------------------------------------------------------------------------
def test_the_api_mount_point_answers_with_its_routes_and_schema(client):
    r = client.get("/api/webhooks/")
    assert r.status_code == 200 and r["Content-Type"] == "application/json"
    body = r.json()
    assert body["schema"] == "http://testserver/api/webhooks/schema/"
    assert body["routes"] == {
        "endpoints": "http://testserver/api/webhooks/endpoints/",
        "deliveries": "http://testserver/api/webhooks/deliveries/",
        "event-types": "http://testserver/api/webhooks/event-types/",
        "stats": "http://testserver/api/webhooks/stats/",
    }
    assert client.get(body["schema"].removeprefix("http://testserver")).status_code == 200


# The demo receiver ----------------------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_the_demo_receiver_verifies_every_endpoint_pointing_at_it(live_server):
    from project.receiver.models import Inbox, ReceivedWebhook

    # What demo_seed does: an inbox holding the seeded endpoint's secret.
    seeded, seeded_secret = services.create_endpoint(
        url=f"{live_server.url}/receiver/demo/", events=["user.created"], name="Demo receiver"
    )
    Inbox.objects.create(slug="demo", secret=seeded_secret)
    # A newcomer's endpoints: one at the seeded inbox, one at an inbox of its own, and a
    # GET one; each with its own generated secret.
    mine, _ = services.create_endpoint(
        url=f"{live_server.url}/receiver/demo/", events=["user.created"], name="Mine"
    )
    own, _ = services.create_endpoint(
        url=f"{live_server.url}/receiver/newbie/", events=["user.created"], name="Own inbox"
    )
    get, _ = services.create_endpoint(
        url=f"{live_server.url}/receiver/newbie/?via=get", events=["user.created"], method="GET"
    )
    for endpoint in (seeded, mine, own, get):
        result = services.send_test(endpoint)
        assert result.ok, result.error
    emit("user.created", {"email": "new@example.com"})
    engine.drain()
    received = list(ReceivedWebhook.objects.order_by("id"))
    assert len(received) == 8
    assert [(r.verified, r.verification_error) for r in received] == [(True, "")] * 8
    assert {r.inbox.slug for r in received} == {"demo", "newbie"}
    # And it is a real check: a forged signature is still refused.
    forged = {
        "webhook-id": "evt_x",
        "webhook-timestamp": str(int(__import__("time").time())),
        "webhook-signature": "v1,AAAA",
    }
    import requests

    r = requests.post(f"{live_server.url}/receiver/newbie/", data=b"{}", headers=forged)
    assert r.json() == {"received": True, "verified": False}
    assert ReceivedWebhook.objects.latest("id").verification_error == "no matching signature found"


# The admin's delivery history in Chromium -----------------------------------------------------
@pytest.fixture
def browser_page(live_server):
    from pathlib import Path

    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(base_url=live_server.url)
        page = context.new_page()
        page.set_default_timeout(15_000)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(f"{page.url}: pageerror: {exc}"))
        page.on(
            "console",
            # Chromium asks every site for /favicon.ico; the demo has none (not the app's).
            lambda msg: errors.append(f"{page.url}: console: {msg.text}")
            if msg.type == "error" and not msg.location.get("url", "").endswith("/favicon.ico")
            else None,
        )
        page.on(
            "response",
            lambda r: errors.append(f"{page.url}: HTTP {r.status} for {r.url}")
            if r.status >= 400
            else None,
        )
        page.js_errors = errors
        yield page
        context.close()
        browser.close()


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("who", ["superuser", "viewer"])
def test_delivery_history_pages_have_no_javascript_errors(browser_page, receiver, who):
    from django.contrib.auth.models import Permission

    page = browser_page
    User = get_user_model()
    if who == "superuser":
        User.objects.create_superuser("admin", "admin@example.com", "pw-admin-123")
    else:  # can view endpoints but not change them: no replay form on the page
        user = User.objects.create_user("viewer", password="pw-admin-123", is_staff=True)
        user.user_permissions.add(Permission.objects.get(codename="view_endpoint"))
    endpoint, _ = services.create_endpoint(url=receiver.url(), events=["user.created"])
    emit("user.created", {"n": 1})
    engine.drain()
    empty, _ = services.create_endpoint(url=receiver.url("/empty"), events=["user.updated"])
    page.goto("/admin/login/")
    page.fill("#id_username", who if who == "viewer" else "admin")
    page.fill("#id_password", "pw-admin-123")
    page.click("input[type=submit]")
    page.wait_for_selector("#site-name")
    visited = []
    for ep in (endpoint, empty):
        for path in ("history/", "history/?status=failed", ""):
            url = f"/admin/webhooks_app/endpoint/{ep.pk}/{path}"
            page.goto(url)
            page.wait_for_load_state("load")
            page.wait_for_timeout(200)
            visited.append(url)
    delivery = endpoint.deliveries.get()
    page.goto(f"/admin/webhooks_app/endpoint/{endpoint.pk}/deliveries/{delivery.pk}/")
    page.wait_for_load_state("load")
    page.goto("/admin/webhooks_app/endpoint/")
    page.wait_for_load_state("load")
    page.wait_for_timeout(200)
    assert page.js_errors == [], (visited, page.js_errors)
