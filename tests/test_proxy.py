"""WEBHOOKS_APP["PROXY"]: every delivery through one proxy, the SSRF check still first."""

from __future__ import annotations

import datetime as dt
import json
import socket
import ssl
import time

import pytest
import standardwebhooks
from django.conf import settings
from django.test import override_settings

from tests.proxy import VIA, RecordingProxy
from tests.receiver import Receiver
from webhooks_app import emit, engine
from webhooks_app.models import Delivery

pytestmark = pytest.mark.django_db(transaction=True)


def webhooks(**changes):
    return override_settings(WEBHOOKS_APP={**settings.WEBHOOKS_APP, **changes})


@pytest.fixture
def proxy():
    p = RecordingProxy()
    yield p
    p.close()


def test_deliveries_leave_through_the_proxy_to_the_checked_address(receiver, proxy, make_endpoint):
    # "localhost" in the URL: the proxy is asked for the address we checked, not the name.
    url = f"http://localhost:{receiver.port}/hook?x=1"
    _, secret = make_endpoint(url, headers={"Authorization": "Bearer abc"})
    with webhooks(PROXY=proxy.url):
        event = emit("user.created", {"n": 1})
        engine.drain()
    (req,) = receiver.wait_for(1)
    assert req.header("Via") == VIA  # it really came through the proxy
    assert req.body == event.body.encode()
    assert req.header("Host") == f"localhost:{receiver.port}"
    standardwebhooks.Webhook(secret).verify(req.body, req.headers)
    (fwd,) = proxy.forwarded
    assert fwd.method == "POST" and fwd.target == f"http://127.0.0.1:{receiver.port}/hook?x=1"
    assert fwd.body == event.body.encode() and fwd.headers["Authorization"] == "Bearer abc"
    assert Delivery.objects.get().status == "succeeded"


def test_without_the_setting_nothing_goes_to_the_proxy(receiver, proxy, make_endpoint):
    make_endpoint(receiver.url())
    emit("user.created", {})
    engine.drain()
    assert receiver.wait_for(1)[0].header("Via") is None
    assert proxy.connections == 0


def test_ssrf_refusal_happens_before_the_proxy_is_contacted(proxy, make_endpoint, monkeypatch):
    real = socket.getaddrinfo
    answers = {"hooks.example.com": "93.184.216.34"}  # public at registration time

    def fake(host, port, *args, **kwargs):
        if host in answers:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (answers[host], port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    with webhooks(ALLOW_HTTP=True):
        make_endpoint("http://hooks.example.com/hook")
    answers["hooks.example.com"] = "10.0.0.7"  # then DNS points it inside
    with webhooks(PROXY=proxy.url, RETRY_SCHEDULE=[0]):
        emit("user.created", {})
        engine.drain()
    d = Delivery.objects.get()
    assert d.status == "failed" and "refused" in d.last_error and "10.0.0.7" in d.last_error
    time.sleep(0.2)
    assert proxy.connections == 0 and proxy.forwarded == []


def test_proxy_credentials_never_appear_in_errors(make_endpoint, receiver):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens: the proxy is down
    make_endpoint(receiver.url())
    with webhooks(PROXY=f"http://egress:hunter2-pass@127.0.0.1:{port}", RETRY_SCHEDULE=[0]):
        emit("user.created", {})
        engine.drain()
    d = Delivery.objects.get()
    assert d.status == "failed" and d.last_error.startswith("connection failed")
    assert "hunter2" not in d.last_error and "hunter2" not in d.attempt_log.get().error
    assert receiver.received == []


def test_a_bad_proxy_setting_names_the_setting():
    from django.core.exceptions import ImproperlyConfigured

    from webhooks_app.conf import app_settings

    with webhooks(PROXY="socks5://127.0.0.1:1080"):
        with pytest.raises(ImproperlyConfigured, match=r"WEBHOOKS_APP\['PROXY'\]"):
            _ = app_settings.PROXY


def _self_signed(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def test_https_goes_through_a_connect_tunnel_with_tls_to_the_host_name(
    proxy, make_endpoint, monkeypatch, tmp_path
):
    cert_file, key_file = _self_signed(tmp_path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_file, key_file)
    tls = Receiver()
    tls.server.socket = ctx.wrap_socket(tls.server.socket, server_side=True)
    # Trust the test certificate (for this test only); the host name is still checked.
    monkeypatch.setattr("requests.adapters.DEFAULT_CA_BUNDLE_PATH", str(cert_file))
    try:
        _, secret = make_endpoint(f"https://localhost:{tls.port}/hook")
        with webhooks(PROXY=proxy.url):
            event = emit("user.created", {"tls": True})
            engine.drain()
        (req,) = tls.wait_for(1)
        assert req.body == event.body.encode()
        standardwebhooks.Webhook(secret).verify(req.body, req.headers)
        (fwd,) = proxy.forwarded
        # The tunnel goes to the checked address; the proxy never sees the bytes.
        assert fwd.method == "CONNECT" and fwd.target == f"127.0.0.1:{tls.port}"
        assert json.loads(req.body)["data"] == {"tls": True}
        assert Delivery.objects.get().status == "succeeded"
        # The certificate names localhost only: by address, TLS must refuse it.
        Delivery.objects.all().delete()
        make_endpoint(f"https://127.0.0.1:{tls.port}/by-ip", events=["user.deleted"])
        with webhooks(PROXY=proxy.url, RETRY_SCHEDULE=[0]):
            emit("user.deleted", {})
            engine.drain()
        d = Delivery.objects.get()
        assert d.status == "failed" and "certificate" in d.last_error.lower(), d.last_error
        assert [f.method for f in proxy.forwarded] == ["CONNECT", "CONNECT"]
        assert len(tls.received) == 1
    finally:
        tls.close()
