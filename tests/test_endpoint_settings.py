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


# Custom headers --------------------------------------------------------------------------
UNSENDABLE_VALUES = [" leading", "trailing ", "€uro", "a\x00b", "a\rb", "a\nb", "a\x01b", "x\x7f"]
RESERVED_NAMES = [
    "Connection",
    "Keep-Alive",
    "TE",
    "Trailer",
    "Transfer-Encoding",
    "Upgrade",
    "Expect",
    "Content-Encoding",
    "Proxy-Authorization",
    "Host",
    "Content-Length",
]


def api_client():
    from django.contrib.auth import get_user_model
    from rest_framework.test import APIClient

    user = get_user_model().objects.create_user(f"u{get_user_model().objects.count()}")
    c = APIClient()
    c.force_authenticate(user)
    return c, str(user.pk)


def admin_add_form(url: str, header_name: str, header_value: str) -> dict:
    return {
        "name": "x",
        "description": "",
        "url": url,
        "method": "POST",
        "is_active": "on",
        "events": ["user.created"],
        "events_toggles": "1",
        "events_enabled": ["user.created"],
        "headers_key": [header_name],
        "headers_value": [header_value],
        "payload_extra_key": [],
        "payload_extra_value": [],
        "payload_fields": "",
        "notify_email": "",
        "secret": "",
        "tenant": "",
    }


@pytest.mark.parametrize("value", UNSENDABLE_VALUES)
def test_unsendable_header_values_are_a_field_error_on_every_path(value, receiver, admin_client):
    from django.core.exceptions import ValidationError
    from django.urls import reverse

    from webhooks_app import services
    from webhooks_app.models import Endpoint

    with pytest.raises(ValidationError) as exc:
        services.create_endpoint(
            url=receiver.url(), events=["user.created"], headers={"X-T": value}
        )
    assert list(exc.value.error_dict) == ["headers"]
    assert value.strip() not in " ".join(exc.value.messages) or not value.strip()
    client, _ = api_client()
    r = client.post(
        "/api/webhooks/endpoints/",
        {"url": receiver.url(), "events": ["user.created"], "headers": {"X-T": value}},
        format="json",
    )
    assert r.status_code == 400 and "headers" in r.json(), r.content
    r = admin_client.post(
        reverse("admin:webhooks_app_endpoint_add"), admin_add_form(receiver.url(), "X-T", value)
    )
    assert r.status_code == 200
    assert r.context["adminform"].form.errors.get("headers"), r.context["adminform"].form.errors
    endpoint, _ = services.create_endpoint(url=receiver.url(), events=["user.created"])
    with pytest.raises(ValidationError) as exc:
        services.update_endpoint(endpoint, headers={"X-T": value})
    assert list(exc.value.error_dict) == ["headers"]
    assert Endpoint.objects.count() == 1


@pytest.mark.parametrize("name", RESERVED_NAMES)
def test_hop_by_hop_and_framing_headers_are_reserved(name, receiver):
    from django.core.exceptions import ValidationError

    from webhooks_app import services

    with pytest.raises(ValidationError) as exc:
        services.create_endpoint(url=receiver.url(), events=["user.created"], headers={name: "x"})
    assert "cannot be set" in exc.value.message_dict["headers"][0]


def test_latin1_header_value_is_sent_as_latin1(receiver, make_endpoint):
    make_endpoint(receiver.url(), headers={"X-Name": "Müller"})
    emit("user.created", {})
    engine.drain()
    (req,) = receiver.wait_for(1)
    # http.server decodes header bytes as Latin-1: the byte 0xFC arrived.
    assert req.header("X-Name") == "Müller"


def test_header_values_are_encrypted_at_rest_and_shown_masked(
    receiver, make_endpoint, admin_client
):
    from django.db import connection
    from django.urls import reverse

    from webhooks_app.models import Endpoint

    token = "Bearer s3cr3t-t0ken-0001a2b"
    client, tenant = api_client()
    endpoint, _ = make_endpoint(
        receiver.url(), tenant=tenant, headers={"Authorization": token, "X-Short": "abc"}
    )
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT headers FROM {Endpoint._meta.db_table} WHERE id = %s", [endpoint.pk]
        )
        (raw,) = cursor.fetchone()
    assert "s3cr3t" not in str(raw) and "Authorization" in str(raw)
    shown = {"Authorization": "Bearer ••••1a2b", "X-Short": "••••"}
    assert client.get(f"/api/webhooks/endpoints/{endpoint.pk}/").json()["headers"] == shown
    listed = client.get("/api/webhooks/endpoints/").json()
    assert "s3cr3t" not in str(listed)
    html = admin_client.get(reverse("admin:webhooks_app_endpoint_change", args=[endpoint.pk]))
    assert "s3cr3t" not in html.content.decode() and "Bearer ••••1a2b" in html.content.decode()
    emit("user.created", {}, tenant=tenant)
    engine.drain()
    (req,) = receiver.wait_for(1)
    assert req.header("Authorization") == token  # sent in plain text, of course


def test_view_only_staff_see_header_values_masked(receiver, make_endpoint, client):
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Permission
    from django.urls import reverse

    endpoint, _ = make_endpoint(
        receiver.url(), headers={"Authorization": "Bearer s3cr3t-0000-1a2b"}
    )
    user = get_user_model().objects.create_user("viewer", password="pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_endpoint"))
    client.force_login(user)
    html = client.get(reverse("admin:webhooks_app_endpoint_change", args=[endpoint.pk])).content
    assert b"s3cr3t" not in html and "Bearer ••••1a2b".encode() in html
    assert b"gAAAA" not in html  # nor the ciphertext


def test_a_value_left_masked_is_kept_on_every_edit_path(receiver, make_endpoint, admin_client):
    from django.urls import reverse

    from webhooks_app import services

    token = "Bearer s3cr3t-t0ken-0001a2b"
    client, tenant = api_client()
    endpoint, _ = make_endpoint(receiver.url(), tenant=tenant, headers={"Authorization": token})
    detail = f"/api/webhooks/endpoints/{endpoint.pk}/"
    masked = client.get(detail).json()["headers"]
    r = client.patch(detail, {"headers": {**masked, "X-New": "1"}}, format="json")
    assert r.status_code == 200, r.content
    endpoint.refresh_from_db()
    assert endpoint.get_headers() == {"Authorization": token, "X-New": "1"}
    body = client.get(detail).json()
    put = {k: body[k] for k in ("url", "events", "headers", "name")}
    assert client.put(detail, put, format="json").status_code == 200
    endpoint.refresh_from_db()
    assert endpoint.get_headers() == {"Authorization": token, "X-New": "1"}
    # The admin form: the masked value comes back unchanged.
    form = admin_add_form(receiver.url(), "Authorization", "Bearer ••••1a2b")
    form.pop("secret"), form.pop("tenant")
    r = admin_client.post(reverse("admin:webhooks_app_endpoint_change", args=[endpoint.pk]), form)
    assert r.status_code == 302, r.context["adminform"].form.errors if r.context else r
    endpoint.refresh_from_db()
    assert endpoint.get_headers() == {"Authorization": token}
    # A new value replaces it; a masked value that matches nothing is refused.
    services.update_endpoint(endpoint, headers={"Authorization": "Bearer new"})
    assert endpoint.get_headers() == {"Authorization": "Bearer new"}
    r = client.patch(detail, {"headers": {"X-Other": "Bearer ••••1a2b"}}, format="json")
    assert r.status_code == 400 and "headers" in r.json()


def test_an_unsendable_stored_header_is_a_recorded_failure_never_a_500(
    receiver, make_endpoint, admin_client
):
    from webhooks_app import services
    from webhooks_app.models import Endpoint

    client, tenant = api_client()
    endpoint, _ = make_endpoint(receiver.url(), tenant=tenant)
    endpoint.set_headers({"X-Token": "€uro"})  # written before the rules, or by hand
    endpoint.save(update_fields=["headers"])
    r = client.post(f"/api/webhooks/endpoints/{endpoint.pk}/test/", {}, format="json")
    assert r.status_code == 200, r.content
    body = r.json()
    assert body["ok"] is False and "X-Token" in body["error"] and "€" not in body["error"]
    d = Delivery.objects.get(pk=body["delivery"])
    assert (d.status, d.claim_token) == ("failed", "") and "X-Token" in d.last_error
    event = emit("user.created", {}, tenant=tenant)
    engine.drain()
    d = Delivery.objects.get(event=event)
    assert (d.status, d.claim_token) == ("failed", "") and "Latin-1" in d.last_error
    assert receiver.received == []
    assert services.send_test(Endpoint.objects.get(pk=endpoint.pk)).ok is False
    # The admin's Test button: a page with the reason, not an error page.
    from django.urls import reverse

    test_url = reverse("admin:webhooks_app_endpoint_test", args=[endpoint.pk])
    response = admin_client.post(test_url)
    assert response.status_code == 302, response.status_code
    html = admin_client.get(response["Location"]).content.decode()
    assert "X-Token" in html and "Latin-1" in html
    assert endpoint.get_secret() not in html


# URLs ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:0/hook",
        "http://127.0.0.1:{port}/ho ok",
        "http://127.0.0.1:{port}/hook\t",
        "http://127.0.0.1:{port}/h\x00ook",
        "http://127.0.0.1:{port}/h\x1book",
        "http://127.0.0.1:{port}/h\u00a0ook",
        "http://127.0.0.1:{port}/h\x85ook",
    ],
)
def test_urls_with_port_0_whitespace_or_control_characters_are_refused(url, receiver):
    from django.core.exceptions import ValidationError

    from webhooks_app import services

    url = url.format(port=receiver.port)
    with pytest.raises(ValidationError) as exc:
        services.create_endpoint(url=url, events=["user.created"])
    assert list(exc.value.error_dict) == ["url"]
    client, _ = api_client()
    r = client.post(
        "/api/webhooks/endpoints/", {"url": url, "events": ["user.created"]}, format="json"
    )
    assert r.status_code == 400 and "url" in r.json()


def test_idn_host_names_go_out_as_punycode(receiver, make_endpoint, monkeypatch):
    import socket

    from webhooks_app import signing

    asked = []
    real = socket.getaddrinfo

    def resolver(host, port, *args, **kwargs):
        if host == "127.0.0.1":  # the pinned connection itself
            return real(host, port, *args, **kwargs)
        asked.append(host)
        if host == "xn--bcher-kva.example":
            return real("127.0.0.1", port, *args, **kwargs)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    _, secret = make_endpoint(f"http://Bücher.example:{receiver.port}/hook")
    event = emit("user.created", {"idn": True})
    engine.drain()
    d = Delivery.objects.get(event=event)
    assert d.status == "succeeded", d.last_error
    (req,) = receiver.wait_for(1)
    assert req.header("Host") == f"xn--bcher-kva.example:{receiver.port}"
    assert req.body == event.body.encode()
    signing.verify(secret, req.body, req.headers)
    assert set(asked) == {"xn--bcher-kva.example"}  # DNS never saw the Unicode form
    assert Delivery.objects.get(event=event).status == "succeeded"


# Sizes -------------------------------------------------------------------------------------
def test_custom_payload_values_are_capped_in_total_bytes(receiver, admin_client):
    from django.core.exceptions import ValidationError
    from django.urls import reverse

    from webhooks_app import services

    with webhooks(MAX_PAYLOAD_EXTRA_BYTES=1000):
        endpoint, _ = services.create_endpoint(
            url=receiver.url(), events=["user.created"], payload_extra={"a": "x" * 900}
        )
        big = {"a": "x" * 600, "b": "y" * 600}  # each fits, together they do not
        with pytest.raises(ValidationError) as exc:
            services.create_endpoint(url=receiver.url(), events=["user.created"], payload_extra=big)
        (message,) = exc.value.message_dict["payload_extra"]
        assert "at most 1000 bytes" in message
        with pytest.raises(ValidationError):
            services.update_endpoint(endpoint, payload_extra=big)
        client, _ = api_client()
        r = client.post(
            "/api/webhooks/endpoints/",
            {"url": receiver.url(), "events": ["user.created"], "payload_extra": big},
            format="json",
        )
        assert r.status_code == 400 and "at most 1000 bytes" in r.json()["payload_extra"][0]
        form = admin_add_form(receiver.url(), "X-A", "1")
        form.update(payload_extra_key=["a", "b"], payload_extra_value=["x" * 600, "y" * 600])
        r = admin_client.post(reverse("admin:webhooks_app_endpoint_add"), form)
        assert "at most 1000 bytes" in str(r.context["adminform"].form.errors["payload_extra"])
    # The default is a few KiB: the 2 MB of the report is refused out of the box.
    with pytest.raises(ValidationError):
        services.create_endpoint(
            url=receiver.url(), events=["user.created"], payload_extra={"a": "x" * 2_000_000}
        )


def test_endpoints_per_tenant_are_capped(receiver, admin_client):
    from django.core.exceptions import ValidationError
    from django.urls import reverse

    from webhooks_app import services
    from webhooks_app.models import Endpoint

    client, tenant = api_client()
    with webhooks(MAX_ENDPOINTS_PER_TENANT=3):
        for _ in range(3):
            services.create_endpoint(url=receiver.url(), events=["user.created"], tenant=tenant)
        with pytest.raises(ValidationError, match="already has 3 webhook endpoints"):
            services.create_endpoint(url=receiver.url(), events=["user.created"], tenant=tenant)
        r = client.post(
            "/api/webhooks/endpoints/",
            {"url": receiver.url(), "events": ["user.created"]},
            format="json",
        )
        assert r.status_code == 400, r.content
        assert "already has 3 webhook endpoints" in str(r.json())
        # Another tenant is not affected; nor is editing.
        services.create_endpoint(url=receiver.url(), events=["user.created"], tenant="other")
        services.update_endpoint(Endpoint.objects.filter(tenant=tenant).first(), name="n")
        for _ in range(3):
            services.create_endpoint(url=receiver.url(), events=["user.created"])
        r = admin_client.post(
            reverse("admin:webhooks_app_endpoint_add"), admin_add_form(receiver.url(), "X-A", "1")
        )
        assert r.status_code == 200
        assert "already has 3 webhook endpoints" in r.content.decode()
    assert Endpoint.objects.filter(tenant=tenant).count() == 3


def test_a_worker_holds_at_most_claim_max_bytes_of_large_events(receiver, make_endpoint):
    """The dispatcher's claims stop at CLAIM_MAX_BYTES across all its busy threads."""
    import time

    from tests.receiver import Reply
    from webhooks_app import dispatcher

    make_endpoint(receiver.url())
    receiver.default = Reply(200, delay=0.05)
    events = [emit("user.created", {"blob": "z" * 100_000, "n": i}) for i in range(30)]
    held = []
    with webhooks(CLAIM_MAX_BYTES=350_000, SENDER_THREADS=8, ENDPOINT_CONCURRENCY=8):
        d = dispatcher.Dispatcher()
        d.start()
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                held.append(Delivery.objects.exclude(claim_token="").count())
                if not Delivery.objects.exclude(status="succeeded").exists():
                    break
                time.sleep(0.01)
        finally:
            d.stop(timeout=30)
    assert len(receiver.wait_for(30)) == 30
    assert Delivery.objects.filter(event__in=events, status="succeeded").count() == 30
    assert 1 <= max(held) <= 3, max(held)  # 3 x ~100 kB fit in 350 kB; 30 would on main
