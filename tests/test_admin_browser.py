"""The whole admin story in headless Chromium: create, copy the secret, test, rotate, replay.

Screenshots of every page go to test-output/screenshots/.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import standardwebhooks
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import override_settings

from tests.receiver import Reply
from webhooks_app import emit, engine, signing
from webhooks_app.models import Delivery

# Playwright's sync API runs an event loop in this thread; Django's ORM refuses to run
# in a thread with a running loop unless told it is safe (it is: nothing awaits here).
os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SHOTS = Path(__file__).resolve().parent.parent / "test-output" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def page(live_server):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(
            base_url=live_server.url, viewport={"width": 1280, "height": 900}
        )
        context.grant_permissions(["clipboard-read", "clipboard-write"])
        page = context.new_page()
        page.set_default_timeout(15_000)
        yield page
        context.close()
        browser.close()


def shot(page, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def verify_both(secret: str, request) -> None:
    """Our verifier and the reference Standard Webhooks library must both accept it."""
    signing.verify(secret, request.body, request.headers)
    standardwebhooks.Webhook(secret).verify(request.body, request.headers)


def refuses(secret: str, request) -> bool:
    try:
        signing.verify(secret, request.body, request.headers)
    except signing.WebhookVerificationError:
        pass
    else:
        return False
    try:
        standardwebhooks.Webhook(secret).verify(request.body, request.headers)
    except standardwebhooks.WebhookVerificationError:
        return True
    return False


def test_admin_story(page, live_server, receiver):
    try:
        story(page, receiver)
    except BaseException:
        # Leave evidence of where the story stopped.
        shot(page, "99_failure")
        (SHOTS / "99_failure.html").write_text(page.content())
        raise


def story(page, receiver) -> None:
    from playwright.sync_api import expect

    get_user_model().objects.create_superuser("admin", "admin@example.com", "admin-pw")
    html_after_secrets: list[str] = []

    def visit_html() -> None:
        html_after_secrets.append(page.content())

    # Log in ------------------------------------------------------------------------------
    page.goto("/admin/")
    page.fill("#id_username", "admin")
    page.fill("#id_password", "admin-pw")
    shot(page, "01_login")
    page.click("input[type=submit]")
    expect(page.locator("#site-name")).to_be_visible()
    page.click("text=Webhook endpoints")
    expect(page.locator("h1")).to_contain_text("Webhooks")
    expect(page.locator(".wh-stats")).to_contain_text("Event types subscribed")
    shot(page, "02_list_empty")

    # Create ------------------------------------------------------------------------------
    page.click(".object-tools a.addlink")
    page.fill("#id_name", "CRM sync")
    page.fill("#id_url", receiver.url("/hook"))
    page.check("input[name=events][value='user.created']")
    page.check("input[name=events][value='user.updated']")
    page.fill("input[name=headers_key] >> nth=0", "X-Team")
    page.fill("input[name=headers_value] >> nth=0", "crm")
    page.click("#id_headers .wh-kv-add")
    assert page.locator("input[name=headers_key]").count() == 3
    shot(page, "03_add_form")
    page.click("input[name=_save]")

    # The one-time secret page --------------------------------------------------------------
    expect(page.locator("#wh-secret")).to_contain_text("will not be shown again")
    secret = page.input_value("#wh-secret-value")
    assert secret.startswith("whsec_")
    page.click("button.wh-copy")
    expect(page.locator("button.wh-copy")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == secret
    shot(page, "04_secret_once")

    page.click("text=I have copied the secret")
    expect(page.locator("#content > h2")).to_have_text("CRM sync")
    visit_html()
    shot(page, "05_change_form")

    # Test from the list ------------------------------------------------------------------
    page.click("text=Webhook endpoints >> nth=0")
    row = page.locator("#result_list tbody tr").first
    expect(row).to_contain_text("CRM sync")
    expect(row).to_contain_text("Active")
    visit_html()
    shot(page, "06_list")
    row.locator("button.wh-linkbutton", has_text="Test").click()
    expect(page.locator("#wh-test-result .wh-status-code")).to_have_text("200")
    expect(page.locator("#wh-test-result")).to_contain_text("ms")
    expect(page.locator("#wh-test-result")).to_contain_text('{"ok":true}')
    visit_html()
    shot(page, "07_test_result")
    (first,) = receiver.wait_for(1)
    verify_both(secret, first)
    assert first.header("X-Team") == "crm"
    assert b'"event":"webhook.test"' in first.body

    # Rotate ------------------------------------------------------------------------------
    page.click("text=Rotate secret")
    expect(page.locator("h1")).to_have_text("Rotate secret")
    visit_html()
    shot(page, "08_rotate_confirm")
    page.select_option("#id_grace", "0")
    page.click("input[value='Yes, rotate the secret']")
    expect(page.locator("#wh-secret")).to_contain_text("will not be shown again")
    new_secret = page.input_value("#wh-secret-value")
    assert new_secret.startswith("whsec_") and new_secret != secret
    shot(page, "09_rotated_secret_once")
    page.click("text=I have copied the secret")
    page.click("button.wh-tool:has-text('Test')")  # the change page's Test button
    expect(page.locator("#wh-test-result .wh-status-code")).to_have_text("200")
    visit_html()
    second = receiver.wait_for(2)[1]
    verify_both(new_secret, second)
    assert refuses(secret, second), "the old secret must stop working without a grace period"

    # History, a failure, and a replay ------------------------------------------------------
    receiver.script(Reply(500, b"receiver down"))
    fail_at_once = {**settings.WEBHOOKS_APP, "RETRY_SCHEDULE": [0]}
    with override_settings(WEBHOOKS_APP=fail_at_once):
        emit("user.created", {"email": "mike@example.com", "name": "Mike"})
        engine.drain()
    failed = Delivery.objects.get(event_type="user.created")
    assert failed.status == Delivery.Status.FAILED

    page.click("text=Delivery history")
    table = page.locator("#result_list")
    expect(table.locator("tbody tr")).to_have_count(3)
    expect(table.locator("tbody tr").first).to_contain_text("user.created")
    expect(table.locator("tbody tr").first).to_contain_text("Failed")
    expect(table.locator("tbody tr").first).to_contain_text("500")
    visit_html()
    shot(page, "10_history")
    page.click("#changelist-filter a:has-text('Failed')")
    expect(table.locator("tbody tr")).to_have_count(1)
    shot(page, "11_history_failed_filter")

    page.click(f"#result_list a:has-text('#{failed.pk}')")
    expect(page.locator("#wh-attempts")).to_contain_text("receiver down")
    expect(page.locator("#wh-payload")).to_contain_text("mike@example.com")
    visit_html()
    shot(page, "12_delivery_failed")

    # Replay from the history page (bulk action over the selected rows).
    page.click("text=Back to the delivery history")
    page.check(f"input[name=ids][value='{failed.pk}']")
    page.click("button[name=replay_selected]")
    expect(page.locator(".messagelist")).to_contain_text("1 deliveries queued")
    engine.drain()
    page.reload()
    expect(table.locator("tbody tr").first).to_contain_text("Success")
    visit_html()
    shot(page, "13_history_after_replay")
    third = receiver.wait_for(4)[3]
    verify_both(new_secret, third)
    assert b"mike@example.com" in third.body

    # The delivery's page now shows both attempts, and a Replay button there works too.
    page.click(f"#result_list a:has-text('#{failed.pk}')")
    expect(page.locator("#wh-attempts tbody tr")).to_have_count(2)
    page.click("input[name=replay]")
    expect(page.locator(".messagelist")).to_contain_text("queued to be sent again")
    engine.drain()
    page.reload()
    expect(page.locator("#wh-attempts tbody tr")).to_have_count(3)
    expect(page.locator("#wh-delivery-status")).to_contain_text("Success")
    visit_html()
    shot(page, "14_delivery_replayed")

    # Preview: what the endpoint would get for another type's example -----------------------
    page.click("#content-main .object-tools a:has-text('Preview')")
    page.select_option("#wh-preview-type", "payment.succeeded")
    page.click(".wh-preview-form input[type=submit]")
    expect(page.locator("#wh-preview-body")).to_contain_text('"event":"payment.succeeded"')
    expect(page.locator("#wh-preview-headers")).to_contain_text("v1,••••••••")
    visit_html()
    shot(page, "14b_preview")

    # Event log: find the event by id, see its delivery, jump to the filtered history ------
    page.goto("/admin/webhooks_app/event/")
    page.fill("#searchbar", failed.event.public_id)
    page.press("#searchbar", "Enter")
    expect(page.locator("#result_list tbody tr")).to_have_count(1)
    page.click(f"#result_list a:has-text('{failed.event.public_id}')")
    expect(page.locator(".wh-event-deliveries")).to_contain_text("Success")
    shot(page, "14c_event")
    page.click(".wh-event-deliveries a:has-text('CRM sync')")
    expect(page.locator("#result_list tbody tr")).to_have_count(1)
    expect(page.locator("#wh-event-filter input[name=event]")).to_have_value(
        failed.event.public_id
    )
    visit_html()
    shot(page, "14d_history_by_event")
    page.goto(f"/admin/webhooks_app/endpoint/{failed.endpoint_id}/change/")

    # Delete ------------------------------------------------------------------------------
    page.click("text=Webhook endpoints >> nth=0")
    page.click("#result_list a:has-text('CRM sync')")
    page.click(".submit-row a.deletelink")
    expect(page.locator("#content")).to_contain_text("whole delivery history")
    visit_html()
    shot(page, "15_delete_confirm")
    page.click("input[type=submit]")
    expect(page.locator(".messagelist")).to_contain_text("deleted successfully")
    expect(page.locator(".wh-stats")).to_contain_text("0")
    shot(page, "16_list_after_delete")

    # Neither secret ever appeared again after its one-time page.
    for html in html_after_secrets:
        assert secret not in html and new_secret not in html
