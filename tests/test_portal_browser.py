"""The customer portal in headless Chromium, as a non-staff user: create, copy the secret,
test, rotate, history, replay, delete; another tenant's user gets 404s; a magic link
opens the portal once. Screenshots go to test-output/screenshots/portal_*.png.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import override_settings

from tests.receiver import Reply
from tests.test_admin_browser import CHROMIUM, CHROMIUM_ARGS, SHOTS, refuses, verify_both
from webhooks_app import emit, engine
from webhooks_app.models import Delivery, Endpoint
from webhooks_app.portal import magic_link

os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def browser(live_server):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def new_page(browser, live_server, width: int = 1280):
    context = browser.new_context(
        base_url=live_server.url, viewport={"width": width, "height": 900}
    )
    context.grant_permissions(["clipboard-read", "clipboard-write"])
    page = context.new_page()
    page.set_default_timeout(15_000)
    return page


def shot(page, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"portal_{name}.png"), full_page=True)


def login(page, username: str, password: str) -> None:
    page.goto("/webhooks/")
    assert "/accounts/login/" in page.url  # anonymous visitors are sent to log in
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("#login-submit")


def test_portal_story(browser, live_server, receiver):
    users = get_user_model().objects
    alice = users.create_user("alice", "alice@example.com", "alice-pw")
    users.create_user("bob", "bob@example.com", "bob-pw")
    assert not alice.is_staff
    page = new_page(browser, live_server)
    try:
        story(page, browser, live_server, receiver, alice)
    except BaseException:
        shot(page, "99_failure")
        (SHOTS / "portal_99_failure.html").write_text(page.content())
        raise


def story(page, browser, live_server, receiver, alice) -> None:
    from playwright.sync_api import expect

    pages_html: list[str] = []

    # Log in as a customer (no staff flag) and land on the empty list ---------------------
    login(page, "alice", "alice-pw")
    expect(page.locator("h1")).to_contain_text("Webhooks")
    expect(page.locator("#wh-empty")).to_contain_text("No webhooks yet")
    expect(page.locator("#wh-stats")).to_contain_text("Total")
    expect(page.locator("#wh-stats")).to_contain_text("Events")
    shot(page, "01_list_empty")

    # Create --------------------------------------------------------------------------------
    page.click("#wh-create")
    expect(page.locator("h1")).to_have_text("Create webhook")
    page.fill("#id_name", "CRM sync")
    page.fill("#id_url", receiver.url("/hook"))
    page.check("input[name=events][value='user.created']")
    page.check("input[name=events][value='user.updated']")
    expect(page.locator("#wh-field-events")).to_contain_text("A user signed up.")
    shot(page, "02_create_form")
    page.click("#wh-save")

    # The secret, once, with Copy --------------------------------------------------------------
    expect(page.locator("#wh-secret")).to_contain_text("will not be shown again")
    secret = page.input_value("#wh-secret-value")
    assert secret.startswith("whsec_")
    page.click("#wh-secret button.wh-copy")
    expect(page.locator("#wh-secret button.wh-copy")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == secret
    expect(page.locator("#wh-verify")).to_contain_text("webhook-signature")
    shot(page, "03_secret_once")
    endpoint = Endpoint.objects.get()
    assert endpoint.tenant == str(alice.pk)

    page.click("#wh-continue")
    row = page.locator(f"#wh-endpoints tr[data-endpoint='{endpoint.pk}']")
    expect(row).to_contain_text(receiver.url("/hook"))
    expect(row).to_contain_text("Active")
    expect(page.locator("#wh-count")).to_have_text("1")
    pages_html.append(page.content())
    shot(page, "04_list")

    # Test from the list: code, time, excerpt; verified by standardwebhooks -----------------
    row.locator("button", has_text="Test").click()
    expect(page.locator("#wh-test-result .wh-status-code")).to_have_text("200")
    expect(page.locator("#wh-test-result .wh-duration")).to_contain_text("ms")
    expect(page.locator("#wh-test-result")).to_contain_text('{"ok":true}')
    pages_html.append(page.content())
    shot(page, "05_test_result")
    (first,) = receiver.wait_for(1)
    verify_both(secret, first)
    assert b'"event":"webhook.test"' in first.body

    # Rotate (no grace): the new secret once; the old one stops working ------------------
    page.click(".wh-subnav >> text=Rotate secret")
    expect(page.locator("h1")).to_have_text("Rotate secret")
    shot(page, "06_rotate")
    page.select_option("#id_grace", "0")
    page.click("#wh-rotate")
    expect(page.locator("#wh-secret")).to_contain_text("will not be shown again")
    new_secret = page.input_value("#wh-secret-value")
    assert new_secret.startswith("whsec_") and new_secret != secret
    shot(page, "07_rotated_secret")
    page.click(".wh-subnav >> text=Test")
    page.click("#wh-send-test")
    expect(page.locator("#wh-test-result .wh-status-code")).to_have_text("200")
    second = receiver.wait_for(2)[1]
    verify_both(new_secret, second)
    assert refuses(secret, second)

    # History with a failure, the delivery's attempt log, Replay ---------------------------
    receiver.script(Reply(500, b"receiver down"))
    with override_settings(WEBHOOKS_APP={**settings.WEBHOOKS_APP, "RETRY_SCHEDULE": [0]}):
        emit("user.created", {"email": "mike@example.com"}, tenant=str(alice.pk))
        engine.drain()
    failed = Delivery.objects.get(event_type="user.created")
    assert failed.status == "failed"
    page.click(".wh-subnav >> text=History")
    table = page.locator("#wh-history")
    expect(table.locator("tbody tr")).to_have_count(3)
    expect(table.locator("tbody tr").first).to_contain_text("Failed")
    expect(table.locator("tbody tr").first).to_contain_text("500")
    expect(page.locator("#wh-history-count")).to_have_text("3")
    pages_html.append(page.content())
    shot(page, "08_history")
    page.click(".wh-tabs >> text=Failed")
    expect(table.locator("tbody tr")).to_have_count(1)
    shot(page, "09_history_failed")
    page.click(f"tr[data-delivery='{failed.pk}'] a")
    expect(page.locator("#wh-attempts")).to_contain_text("receiver down")
    expect(page.locator("#wh-payload")).to_contain_text("mike@example.com")
    shot(page, "10_delivery")
    page.click("#wh-replay")
    expect(page.locator(".wh-messages")).to_contain_text("queued to be sent again")
    engine.drain()
    page.reload()
    expect(page.locator("#wh-attempts tbody tr")).to_have_count(2)
    expect(page.locator("#wh-delivery")).to_contain_text("Succeeded")
    pages_html.append(page.content())
    shot(page, "11_replayed")
    third = receiver.wait_for(3)[2]
    verify_both(new_secret, third)
    assert b"mike@example.com" in third.body

    # Another tenant's user: every URL of alice's webhook answers 404 -----------------------
    urls = [
        f"/webhooks/{endpoint.pk}/",
        f"/webhooks/{endpoint.pk}/test/",
        f"/webhooks/{endpoint.pk}/rotate-secret/",
        f"/webhooks/{endpoint.pk}/delete/",
        f"/webhooks/{endpoint.pk}/history/",
        f"/webhooks/{endpoint.pk}/history/{failed.pk}/",
    ]
    bob = new_page(browser, live_server)
    login(bob, "bob", "bob-pw")
    expect(bob.locator("#wh-empty")).to_be_visible()
    assert receiver.url("/hook") not in bob.content()
    for path in urls:
        response = bob.goto(path)
        assert response.status == 404, path
        assert receiver.url("/hook") not in bob.content()
    shot(bob, "12_other_tenant_404")
    replay_status = bob.evaluate(
        """async (path) => {
            const token = document.cookie.match(/csrftoken=([^;]+)/);
            const headers = {"X-CSRFToken": token ? token[1] : ""};
            const r = await fetch(path, {method: "POST", headers: headers});
            return r.status;
        }""",
        f"/webhooks/{endpoint.pk}/history/{failed.pk}/replay/",
    )
    assert replay_status == 404
    bob.context.close()

    # Delete ------------------------------------------------------------------------------
    page.click(".wh-subnav >> text=Delete")
    expect(page.locator("#wh-delete")).to_contain_text("3 deliveries")
    shot(page, "13_delete_confirm")
    page.click("#wh-confirm-delete")
    expect(page.locator(".wh-messages")).to_contain_text("deleted")
    expect(page.locator("#wh-empty")).to_be_visible()
    shot(page, "14_list_after_delete")
    assert not Endpoint.objects.exists()
    for html in pages_html:
        assert secret not in html and new_secret not in html

    # A narrow screen: the same list stays usable ------------------------------------------
    narrow = new_page(browser, live_server, width=390)
    login(narrow, "alice", "alice-pw")
    expect(narrow.locator("#wh-create")).to_be_visible()
    shot(narrow, "15_mobile")
    narrow.context.close()


def test_magic_link_opens_the_portal_once(browser, live_server, receiver):
    from playwright.sync_api import expect

    from webhooks_app import services

    services.create_endpoint(url=receiver.url("/acme"), events=["user.created"], tenant="acme")
    services.create_endpoint(url=receiver.url("/other"), events=["user.created"], tenant="other")
    link = magic_link("acme")
    page = new_page(browser, live_server)
    page.goto(link)
    expect(page.locator("h1")).to_have_text("Open the webhooks portal")
    shot(page, "20_magic_landing")
    page.click("#wh-open")
    expect(page.locator("#wh-endpoints")).to_contain_text(receiver.url("/acme"))
    assert receiver.url("/other") not in page.content()
    shot(page, "21_magic_portal")
    # The same link in another browser: refused, with a clear page.
    again = new_page(browser, live_server)
    again.goto(link)
    expect(again.locator("#wh-refused")).to_contain_text("already used")
    shot(again, "22_magic_reused")
    again.goto("/webhooks/")
    assert "/accounts/login/" in again.url
    again.context.close()
    page.context.close()
