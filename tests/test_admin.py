"""The webhooks admin through Django's test client: every URL, GET and POST, permissions."""

from __future__ import annotations

import re

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import override_settings
from django.urls import reverse

from tests.receiver import Reply
from webhooks_app import emit, engine, services, signing
from webhooks_app.models import Delivery, Endpoint

pytestmark = pytest.mark.django_db

SECRET_RE = r'id="wh-secret-value"[^>]*value="([^"]+)"'
FAIL_AT_ONCE = override_settings(WEBHOOKS_APP={**settings.WEBHOOKS_APP, "RETRY_SCHEDULE": [0]})


def url(name: str, *args) -> str:
    return reverse(f"admin:webhooks_app_endpoint_{name}", args=args)


def form_data(receiver_url: str, **overrides) -> dict:
    data = {
        "name": "CRM",
        "description": "",
        "url": receiver_url,
        "method": "POST",
        "is_active": "on",
        "events": ["user.created", "user.updated"],
        "events_toggles": "1",
        "events_enabled": ["user.created", "user.updated"],
        "headers_key": ["X-Team", ""],
        "headers_value": ["crm", ""],
        "payload_extra_key": ["source", "count"],
        "payload_extra_value": ["admin", "3"],
        "payload_fields": "email, id",
        "notify_email": "",
        "secret": "",
        "tenant": "",
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


def create_via_admin(client, receiver_url: str, **overrides) -> tuple[Endpoint, str]:
    response = client.post(url("add"), form_data(receiver_url, **overrides))
    assert response.status_code == 200, response.content[:2000]
    html = response.content.decode()
    match = re.search(SECRET_RE, html)
    assert match, html[:3000]
    return Endpoint.objects.latest("id"), match.group(1)


@pytest.fixture
def view_only_client(client):
    user = get_user_model().objects.create_user("viewer", password="pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_endpoint"))
    client.force_login(user)
    return client


@pytest.fixture
def failed_delivery(make_endpoint, receiver):
    endpoint, secret = make_endpoint(receiver.url("/hook"), events=["user.created", "user.updated"])
    receiver.script(Reply(500, b"boom"))
    with FAIL_AT_ONCE:
        emit("user.created", {"email": "a@b.c", "id": 1})
        engine.drain()
    delivery = Delivery.objects.get(endpoint=endpoint, event_type="user.created")
    assert delivery.status == Delivery.Status.FAILED
    return endpoint, delivery


# List -------------------------------------------------------------------------------------
def test_changelist_shows_stats_columns_and_quick_links(admin_client, make_endpoint, receiver):
    active, _ = make_endpoint(receiver.url(), events=["user.created", "payment.succeeded"])
    make_endpoint(receiver.url("/other"), name="Paused one", is_active=False)
    response = admin_client.get(url("changelist"))
    html = response.content.decode()
    assert response.status_code == 200
    assert 'class="wh-count"' in html
    for label in ("Total", "Active", "Inactive", "Event types subscribed", "Failed deliveries"):
        assert label in html
    assert response.context["wh_stats"] == {
        "total": 2,
        "active": 1,
        "inactive": 1,
        "event_types": 2,
        "failed_24h": 0,
    }
    assert "Paused one" in html and "Inactive" in html
    assert f'form="wh-test-{active.pk}"' in html
    assert url("test", active.pk) in html
    assert url("history", active.pk) in html
    assert url("change", active.pk) in html


def test_changelist_search_and_active_filter(admin_client, make_endpoint, receiver):
    make_endpoint(receiver.url("/alpha"), name="Alpha")
    make_endpoint(receiver.url("/beta"), name="Beta", is_active=False)
    names = lambda r: [e.name for e in r.context["cl"].result_list]  # noqa: E731
    assert names(admin_client.get(url("changelist"), {"q": "alpha"})) == ["Alpha"]
    assert names(admin_client.get(url("changelist"), {"q": "/beta"})) == ["Beta"]
    assert names(admin_client.get(url("changelist"), {"active": "1"})) == ["Alpha"]
    assert names(admin_client.get(url("changelist"), {"active": "0"})) == ["Beta"]
    assert sorted(names(admin_client.get(url("changelist")))) == ["Alpha", "Beta"]


def test_tenant_filter_only_when_tenants_are_used(admin_client, make_endpoint, receiver):
    make_endpoint(receiver.url("/a"), name="Single")
    assert "By tenant" not in admin_client.get(url("changelist")).content.decode()
    make_endpoint(receiver.url("/b"), name="Acme's", tenant="acme")
    response = admin_client.get(url("changelist"), {"tenant": "acme"})
    assert "By tenant" in response.content.decode()
    assert [e.name for e in response.context["cl"].result_list] == ["Acme's"]
    assert response.context["wh_stats"]["total"] == 1


# Create -----------------------------------------------------------------------------------
def test_add_form_groups_events_and_hides_the_test_event(admin_client):
    html = admin_client.get(url("add")).content.decode()
    assert "<legend>user</legend>" in html and "<legend>payment</legend>" in html
    assert 'value="user.created"' in html
    assert 'value="webhook.test"' not in html and 'value="webhook.*"' not in html
    assert 'value="user.*"' in html and 'value="*"' in html  # wildcards
    assert 'name="secret"' in html and 'name="headers_key"' in html


def test_create_shows_generated_secret_once(admin_client, receiver):
    endpoint, secret = create_via_admin(admin_client, receiver.url())
    assert secret.startswith("whsec_") and endpoint.get_secret() == secret
    assert endpoint.get_headers() == {"X-Team": "crm"}
    assert endpoint.payload_extra == {"source": "admin", "count": 3}
    assert endpoint.payload_fields == ["email", "id"]
    assert endpoint.event_types == ["user.created", "user.updated"]
    assert endpoint.is_active
    # Nowhere afterwards (a test delivery gives the delivery page something to show).
    test_delivery = services.send_test(endpoint).delivery
    pages = [
        url("delivery", endpoint.pk, test_delivery.pk),
        url("changelist"),
        url("change", endpoint.pk),
        url("test", endpoint.pk),
        url("history", endpoint.pk),
        url("rotate_secret", endpoint.pk),
        url("delete", endpoint.pk),
    ]
    for page in pages:
        response = admin_client.get(page)
        assert response.status_code == 200, page
        assert secret not in response.content.decode(), page


def test_secret_page_is_not_cached_and_says_so(admin_client, receiver):
    response = admin_client.post(url("add"), form_data(receiver.url()))
    assert "no-store" in response["Cache-Control"]
    assert "will not be shown again" in response.content.decode()
    assert 'class="button wh-copy"' in response.content.decode()


def test_create_with_own_secret_and_disabled_event(admin_client, receiver):
    own = "s" * 40
    endpoint, shown = create_via_admin(
        admin_client, receiver.url(), secret=own, events_enabled=["user.created"]
    )
    assert shown == own and endpoint.get_secret() == own
    toggles = {s.event_type: s.enabled for s in endpoint.subscriptions.all()}
    assert toggles == {"user.created": True, "user.updated": False}


def test_events_without_toggle_marker_are_enabled(admin_client, receiver):
    endpoint, _ = create_via_admin(
        admin_client, receiver.url(), events_toggles=None, events_enabled=None
    )
    assert {s.enabled for s in endpoint.subscriptions.all()} == {True}


@pytest.mark.parametrize(
    "overrides, field, message",
    [
        ({"url": "not a url"}, "url", "not allowed"),
        ({"url": ""}, "url", "required"),
        ({"secret": "short-secret"}, "secret", "at least 32 characters"),
        ({"events": ["user.created", "nope.never"]}, "events", "Unknown event type"),
        ({"events": ["webhook.test"]}, "events", "Unknown event type"),
        ({"events": []}, "events", "Select at least one event"),
        ({"headers_key": ["Content-Type"], "headers_value": ["x"]}, "headers", "cannot be"),
        ({"headers_key": ["A", "A"], "headers_value": ["1", "2"]}, "headers", "twice"),
        ({"payload_extra_key": ["", "x"], "payload_extra_value": ["v", "1"]}, "payload_extra", ""),
        ({"payload_extra_key": ["event"], "payload_extra_value": ["x"]}, "payload_extra", ""),
        ({"method": "PUT"}, "method", ""),
        ({"notify_email": "nope"}, "notify_email", ""),
    ],
)
def test_create_form_errors(admin_client, receiver, overrides, field, message):
    response = admin_client.post(url("add"), form_data(receiver.url(), **overrides))
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert field in errors, errors
    assert message in " ".join(errors[field])
    assert not Endpoint.objects.exists()
    assert "wh-secret-value" not in response.content.decode()


def test_http_refused_unless_allowed(admin_client):
    strict = {**settings.WEBHOOKS_APP, "ALLOW_HTTP": False}
    with override_settings(WEBHOOKS_APP=strict):
        response = admin_client.post(url("add"), form_data("http://127.0.0.1:9/hook"))
    errors = response.context["adminform"].form.errors
    assert "https" in " ".join(errors["url"])


def test_private_address_refused_with_reason(admin_client):
    strict = {**settings.WEBHOOKS_APP, "ALLOWED_NETWORKS": []}
    with override_settings(WEBHOOKS_APP=strict):
        response = admin_client.post(url("add"), form_data("https://10.1.2.3/hook"))
    message = " ".join(response.context["adminform"].form.errors["url"])
    assert "10.1.2.3" in message and "not allowed" in message


# Edit -------------------------------------------------------------------------------------
def test_change_form_edits_without_secret(admin_client, make_endpoint, receiver):
    endpoint, secret = make_endpoint(receiver.url(), events=["user.created"], name="Old")
    page = admin_client.get(url("change", endpoint.pk)).content.decode()
    assert secret not in page and 'name="secret"' not in page
    assert "Rotate secret" in page and url("rotate_secret", endpoint.pk) in page
    data = form_data(
        receiver.url("/new"),
        name="New",
        events=["user.deleted", "payment.succeeded"],
        events_enabled=["user.deleted"],
        is_active=None,
        secret="x" * 40,  # not a field on the change form: ignored
    )
    response = admin_client.post(url("change", endpoint.pk), data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    endpoint.refresh_from_db()
    assert endpoint.name == "New" and endpoint.url.endswith("/new")
    assert endpoint.is_active is False
    assert endpoint.get_secret() == secret
    toggles = {s.event_type: s.enabled for s in endpoint.subscriptions.all()}
    assert toggles == {"user.deleted": True, "payment.succeeded": False}
    # The edit form shows the stored key/value rows and the toggles.
    html = admin_client.get(url("change", endpoint.pk)).content.decode()
    assert 'value="X-Team"' in html and 'value="3"' in html


def test_change_form_errors_are_field_errors(admin_client, make_endpoint, receiver):
    endpoint, _ = make_endpoint(receiver.url())
    response = admin_client.post(url("change", endpoint.pk), form_data("ftp://x/", events=[]))
    form = response.context["adminform"].form
    assert {"url", "events"} <= set(form.errors)


# Test -------------------------------------------------------------------------------------
def test_test_button_sends_signed_request_and_shows_result(admin_client, make_endpoint, receiver):
    endpoint, secret = make_endpoint(receiver.url())
    assert "Send test webhook" in admin_client.get(url("test", endpoint.pk)).content.decode()
    response = admin_client.post(url("test", endpoint.pk))
    assert response.status_code == 302 and "result=" in response["Location"]
    page = admin_client.get(response["Location"])
    html = page.content.decode()
    assert 'class="wh-status-code">200<' in html
    assert " ms<" in html and "{&quot;ok&quot;:true}" in html
    (request,) = receiver.wait_for(1)
    signing.verify(secret, request.body, request.headers)
    assert b'"event":"webhook.test"' in request.body
    assert secret not in html


def test_test_failure_shows_code_and_error(admin_client, make_endpoint, receiver):
    endpoint, _ = make_endpoint(receiver.url())
    receiver.script(Reply(503, b"down for maintenance"))
    page = admin_client.get(admin_client.post(url("test", endpoint.pk))["Location"])
    html = page.content.decode()
    assert 'class="wh-status-code">503<' in html and "down for maintenance" in html
    assert "Failed" in html


def test_test_unreachable_shows_error(admin_client, make_endpoint):
    endpoint, _ = make_endpoint("http://127.0.0.1:9/closed")
    page = admin_client.get(admin_client.post(url("test", endpoint.pk))["Location"])
    assert 'class="wh-error"' in page.content.decode()


def test_test_result_of_another_endpoint_is_not_shown(admin_client, make_endpoint, receiver):
    one, _ = make_endpoint(receiver.url("/1"))
    two, _ = make_endpoint(receiver.url("/2"))
    location = admin_client.post(url("test", one.pk))["Location"]
    result_id = location.split("result=")[1]
    page = admin_client.get(url("test", two.pk), {"result": result_id})
    assert page.context["result"] is None


# Rotate -----------------------------------------------------------------------------------
def test_rotate_secret_confirmation_then_new_secret_once(admin_client, make_endpoint, receiver):
    endpoint, old = make_endpoint(receiver.url())
    page = admin_client.get(url("rotate_secret", endpoint.pk))
    assert "Grace period" in page.content.decode()
    response = admin_client.post(url("rotate_secret", endpoint.pk), {"grace": "0"})
    html = response.content.decode()
    new = re.search(SECRET_RE, html).group(1)
    assert new != old and new.startswith("whsec_")
    assert "will not be shown again" in html
    endpoint.refresh_from_db()
    assert endpoint.signing_secrets() == [new]
    for page in (url("change", endpoint.pk), url("changelist"), url("rotate_secret", endpoint.pk)):
        assert new not in admin_client.get(page).content.decode()


def test_rotate_with_grace_keeps_old_secret_valid(admin_client, make_endpoint, receiver):
    endpoint, old = make_endpoint(receiver.url())
    admin_client.post(url("rotate_secret", endpoint.pk), {"grace": "3600"})
    endpoint.refresh_from_db()
    assert len(endpoint.signing_secrets()) == 2 and endpoint.signing_secrets()[1] == old


def test_rotate_bad_grace_is_a_form_error(admin_client, make_endpoint, receiver):
    endpoint, old = make_endpoint(receiver.url())
    response = admin_client.post(url("rotate_secret", endpoint.pk), {"grace": "99"})
    assert response.status_code == 200 and "grace" in response.context["form"].errors
    endpoint.refresh_from_db()
    assert endpoint.get_secret() == old


# History, delivery, replay ----------------------------------------------------------------
def test_history_lists_filters_and_opens_a_delivery(admin_client, failed_delivery, receiver):
    endpoint, failed = failed_delivery
    with FAIL_AT_ONCE:
        emit("user.updated", {"email": "a@b.c", "id": 1})
        engine.drain()
    response = admin_client.get(url("history", endpoint.pk))
    html = response.content.decode()
    rows = [d for d, _ in response.context["rows"]]
    assert [d.event_type for d in rows] == ["user.updated", "user.created"]  # newest first
    assert "Success" in html and "Failed" in html and "500" in html
    by_status = admin_client.get(url("history", endpoint.pk), {"status": "failed"})
    assert [d.pk for d, _ in by_status.context["rows"]] == [failed.pk]
    by_type = admin_client.get(url("history", endpoint.pk), {"event_type": "user.updated"})
    assert [d.event_type for d, _ in by_type.context["rows"]] == ["user.updated"]
    none = admin_client.get(url("history", endpoint.pk), {"status": "pending"})
    assert "No deliveries match" in none.content.decode()

    detail = admin_client.get(url("delivery", endpoint.pk, failed.pk))
    html = detail.content.decode()
    assert 'id="wh-attempts"' in html and "boom" in html
    assert "&quot;email&quot;: &quot;a@b.c&quot;" in html  # the payload, pretty-printed
    assert url("replay", endpoint.pk, failed.pk) in html


def test_history_pages_by_keyset(admin_client, make_endpoint, receiver):
    endpoint, _ = make_endpoint(receiver.url())
    # 120 deliveries need 120 events (one delivery per event and endpoint).
    for n in range(120):
        emit("user.created", {"n": n})
    Delivery.objects.filter(endpoint=endpoint).update(status="succeeded")
    all_ids = list(
        Delivery.objects.filter(endpoint=endpoint).order_by("-id").values_list("id", flat=True)
    )
    first = admin_client.get(url("history", endpoint.pk))
    ids = [d.pk for d, _ in first.context["rows"]]
    assert ids == all_ids[:50]
    assert first.context["newer_url"] is None and first.context["older_url"]
    assert first.context["count"] == 120
    second = admin_client.get(url("history", endpoint.pk) + first.context["older_url"])
    assert [d.pk for d, _ in second.context["rows"]] == all_ids[50:100]
    third = admin_client.get(url("history", endpoint.pk) + second.context["older_url"])
    assert [d.pk for d, _ in third.context["rows"]] == all_ids[100:]
    assert third.context["older_url"] is None
    back = admin_client.get(url("history", endpoint.pk) + third.context["newer_url"])
    assert [d.pk for d, _ in back.context["rows"]] == all_ids[50:100]


def test_replay_failed_delivery_from_its_page(admin_client, failed_delivery, receiver):
    endpoint, failed = failed_delivery
    assert admin_client.get(url("replay", endpoint.pk, failed.pk)).status_code == 302
    failed.refresh_from_db()
    assert failed.status == Delivery.Status.FAILED  # GET changes nothing
    response = admin_client.post(url("replay", endpoint.pk, failed.pk))
    assert response.status_code == 302
    assert response["Location"] == url("delivery", endpoint.pk, failed.pk)
    failed.refresh_from_db()
    assert failed.status == Delivery.Status.PENDING
    engine.drain()
    failed.refresh_from_db()
    assert failed.status == Delivery.Status.SUCCEEDED and failed.attempts == 2
    page = admin_client.get(url("delivery", endpoint.pk, failed.pk)).content.decode()
    assert page.count("<tr><td>") == 2  # both attempts in the log


def test_replay_refused_is_a_message_not_an_error(admin_client, failed_delivery):
    endpoint, failed = failed_delivery
    services.update_endpoint(endpoint, is_active=False)
    response = admin_client.post(url("replay", endpoint.pk, failed.pk), follow=True)
    assert "enable it before replaying" in response.content.decode()


def test_bulk_replay_from_history(admin_client, failed_delivery, receiver):
    endpoint, failed = failed_delivery
    with FAIL_AT_ONCE:
        receiver.script(Reply(500))
        emit("user.created", {"id": 2})
        engine.drain()
    ids = list(Delivery.objects.filter(endpoint=endpoint).values_list("id", flat=True))
    assert len(ids) == 2
    response = admin_client.post(
        url("replay_selected", endpoint.pk),
        {"ids": [str(i) for i in ids], "return_query": "status=failed"},
    )
    assert response["Location"] == url("history", endpoint.pk) + "?status=failed"
    assert Delivery.objects.filter(pk__in=ids, status="pending").count() == 2
    engine.drain()
    assert Delivery.objects.filter(pk__in=ids, status="succeeded").count() == 2
    empty = admin_client.post(url("replay_selected", endpoint.pk), {}, follow=True)
    assert "Select deliveries to replay" in empty.content.decode()


def test_delivery_of_another_endpoint_is_404(admin_client, failed_delivery, make_endpoint):
    _, failed = failed_delivery
    other, _ = make_endpoint("http://127.0.0.1:9/x")
    assert admin_client.get(url("delivery", other.pk, failed.pk)).status_code == 404
    assert admin_client.post(url("replay", other.pk, failed.pk)).status_code == 404
    assert admin_client.get(url("history", 999999)).status_code == 404


# Delete -----------------------------------------------------------------------------------
def test_delete_confirmation_documents_history_removal(admin_client, failed_delivery):
    endpoint, failed = failed_delivery
    page = admin_client.get(url("delete", endpoint.pk)).content.decode()
    assert "delivery history" in page and "1 deliveries with their attempt logs" in page
    response = admin_client.post(url("delete", endpoint.pk), {"post": "yes"})
    assert response.status_code == 302
    assert not Endpoint.objects.exists() and not Delivery.objects.exists()


def test_bulk_delete_action(admin_client, make_endpoint, receiver):
    a, _ = make_endpoint(receiver.url("/a"))
    b, _ = make_endpoint(receiver.url("/b"))
    data = {"action": "delete_selected", "_selected_action": [a.pk, b.pk], "post": "yes"}
    response = admin_client.post(url("changelist"), data)
    assert response.status_code == 302 and not Endpoint.objects.exists()


# Permissions ------------------------------------------------------------------------------
def test_view_only_staff_sees_no_actions_and_gets_403(view_only_client, failed_delivery):
    client = view_only_client
    endpoint, failed = failed_delivery
    listing = client.get(url("changelist")).content.decode()
    assert "wh-test-" not in listing and url("test", endpoint.pk) not in listing
    assert url("history", endpoint.pk) in listing
    change = client.get(url("change", endpoint.pk)).content.decode()
    assert url("test", endpoint.pk) not in change
    assert url("rotate_secret", endpoint.pk) not in change
    history = client.get(url("history", endpoint.pk))
    assert history.status_code == 200
    assert "Replay selected" not in history.content.decode()
    detail = client.get(url("delivery", endpoint.pk, failed.pk))
    assert detail.status_code == 200 and 'name="replay"' not in detail.content.decode()
    for action in (
        url("test", endpoint.pk),
        url("rotate_secret", endpoint.pk),
        url("replay", endpoint.pk, failed.pk),
        url("replay_selected", endpoint.pk),
    ):
        assert client.get(action).status_code == 403, action
        assert client.post(action, {"grace": "0", "ids": [failed.pk]}).status_code == 403, action
    failed.refresh_from_db()
    assert failed.status == Delivery.Status.FAILED
    assert client.post(url("delete", endpoint.pk), {"post": "yes"}).status_code == 403
    assert Endpoint.objects.filter(pk=endpoint.pk).exists()


def test_staff_without_permissions_gets_403_everywhere(client, failed_delivery):
    endpoint, failed = failed_delivery
    user = get_user_model().objects.create_user("nobody", password="pw", is_staff=True)
    client.force_login(user)
    for page in (url("history", endpoint.pk), url("delivery", endpoint.pk, failed.pk)):
        assert client.get(page).status_code == 403


def test_anonymous_is_sent_to_login(client, failed_delivery):
    endpoint, _ = failed_delivery
    response = client.post(url("test", endpoint.pk))
    assert response.status_code == 302 and "/login/" in response["Location"]
