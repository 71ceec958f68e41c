"""URL policy and SSRF guard: refused before any connection is made.

Host names are resolved through a patched ``getaddrinfo`` so that no packet ever leaves
for a private or public address; ``socket.connect`` is watched to prove nothing was sent.
"""

import socket
import time

import pytest
from django.conf import settings
from django.core.exceptions import ValidationError
from django.test import override_settings

from webhooks_app import emit, engine, services, transport
from webhooks_app.models import Delivery, Endpoint

pytestmark = pytest.mark.django_db(transaction=True)

REAL_GETADDRINFO = socket.getaddrinfo


@pytest.fixture
def dns(monkeypatch):
    """``dns["name.test"] = ["10.0.0.5"]`` makes that name resolve there."""
    table: dict[str, list[str]] = {}

    def fake(host, port, *args, **kwargs):
        if host in table:
            answers = table[host]
            if answers and isinstance(answers[0], list):  # scripted: one answer per lookup
                answers = answers.pop(0) if len(answers) > 1 else answers[0]
            out = []
            for ip in answers:
                family = socket.AF_INET6 if ":" in ip else socket.AF_INET
                out.append((family, socket.SOCK_STREAM, 6, "", (ip, port or 0)))
            return out
        if host.endswith(".test"):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return REAL_GETADDRINFO(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    return table


@pytest.fixture
def connects(monkeypatch):
    """Every (host, port) a socket tried to connect to, other than the database and broker
    (PostgreSQL and Redis also live on 127.0.0.1 in CI)."""
    seen = []
    real = socket.socket.connect
    infrastructure = {5432, 6379}

    def watch(self, address):
        if isinstance(address, tuple) and address[1] not in infrastructure:
            seen.append(address[0])
        if not str(address[0]).startswith("127.") and address[0] != "::1":
            raise AssertionError(f"attempted a connection to {address[0]}")
        return real(self, address)

    monkeypatch.setattr(socket.socket, "connect", watch)
    return seen


def settings_with(**changes):
    return override_settings(WEBHOOKS_APP={**settings.WEBHOOKS_APP, **changes})


@pytest.mark.parametrize(
    "addresses",
    [
        ["10.0.0.5"],
        ["172.16.3.4"],
        ["192.168.1.1"],
        ["169.254.169.254"],
        ["100.64.0.1"],
        ["0.0.0.0"],
        ["93.184.216.34", "10.0.0.5"],
        ["fd00::1"],
        ["fe80::1"],
    ],
)
def test_private_resolution_is_refused_at_save_time(dns, connects, addresses):
    dns["internal.example.test"] = addresses
    with pytest.raises(ValidationError) as exc:
        services.create_endpoint(url="https://internal.example.test/hook", events=["user.created"])
    assert "private or reserved" in str(exc.value.message_dict["url"])
    assert Endpoint.objects.count() == 0
    assert connects == []


@pytest.mark.parametrize(
    "url",
    [
        "http://[2002:a9fe:a9fe::1]/",  # 6to4 wrapping 169.254.169.254
        "http://[::ffff:10.0.0.1]/",  # IPv4-mapped
        "http://[64:ff9b::a00:1]/",  # NAT64 of 10.0.0.1
        "http://169.254.169.254/latest/meta-data/",
        "http://[::]/",
        "http://[::7f00:1]/",  # IPv4-compatible 127.0.0.1
        "http://[::a9fe:a9fe]/",  # IPv4-compatible 169.254.169.254
        "http://[::ffff:0:a9fe:a9fe]/",  # SIIT
        "http://[fec0::1]/",  # site-local
        "http://[100::1]/",  # discard-only
        "http://[64:ff9b:1::a9fe:a9fe]/",  # local-use NAT64
    ],
)
def test_literal_addresses_in_refused_ranges(connects, url):
    with pytest.raises(ValidationError, match="private or reserved"):
        transport.validate_url(url)
    assert connects == []


def test_loopback_only_when_allowed(connects):
    transport.validate_url("http://127.0.0.1:9/hook")  # the tests' settings allow 127.0.0.0/8
    with settings_with(ALLOWED_NETWORKS=[]), pytest.raises(ValidationError, match="private"):
        transport.validate_url("http://127.0.0.1:9/hook")
    assert connects == []


def test_https_required_unless_allowed():
    with settings_with(ALLOW_HTTP=False), pytest.raises(ValidationError) as exc:
        services.create_endpoint(url="http://127.0.0.1:9/hook", events=["user.created"])
    assert "https" in " ".join(exc.value.message_dict["url"])
    for bad in [
        "ftp://127.0.0.1/x",
        "javascript:alert(1)",
        "https://",
        "http://user:pw@127.0.0.1/",
    ]:
        with pytest.raises(ValidationError):
            transport.validate_url(bad)


def test_dns_rebinding_is_refused_at_send_time_without_a_connection(dns, connects, receiver):
    dns["hooks.example.test"] = ["127.0.0.1"]
    endpoint, _ = services.create_endpoint(
        url=f"http://hooks.example.test:{receiver.port}/hook", events=["user.created"]
    )
    dns["hooks.example.test"] = ["10.0.0.5"]  # the name now points inside the network
    event = emit("user.created", {})
    engine.drain()
    d = Delivery.objects.get(event=event)
    assert d.status == "failed" and "refused" in d.last_error and d.next_attempt_at is None
    assert connects == [] and receiver.received == []


def test_connection_goes_to_the_checked_address_with_the_host_name(dns, connects, receiver):
    # Save-time check and send-time check see 127.0.0.1; any later lookup (a client that
    # resolved the name again to connect) would get 10.0.0.5 and trip the connect watch.
    dns["hooks.example.test"] = [["127.0.0.1"], ["127.0.0.1"], ["10.0.0.5"]]
    services.create_endpoint(
        url=f"http://hooks.example.test:{receiver.port}/hook", events=["user.created"]
    )
    emit("user.created", {})
    engine.drain()
    (req,) = receiver.wait_for(1)
    assert req.header("Host") == f"hooks.example.test:{receiver.port}"
    assert connects == ["127.0.0.1"]


def test_unresolvable_host_is_retryable_at_send_time(dns, connects, receiver):
    dns["flaky.example.test"] = ["127.0.0.1"]
    services.create_endpoint(
        url=f"http://flaky.example.test:{receiver.port}/hook", events=["user.created"]
    )
    del dns["flaky.example.test"]
    event = emit("user.created", {})
    engine.drain()
    d = Delivery.objects.get(event=event)
    assert d.status == "pending" and "could not resolve" in d.last_error


def test_an_attempt_is_bounded_by_timeout_even_against_a_trickling_server():
    """Each read gets a byte in time, but the whole answer would take 6 s."""
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]

    def trickle():
        conn, _ = server.accept()
        conn.recv(65536)
        try:
            for line in [b"HTTP/1.1 200 OK\r\n"] + [b"X-Slow: 1\r\n"] * 12 + [b"\r\n"]:
                conn.sendall(line)
                time.sleep(0.5)
        except OSError:
            pass
        finally:
            conn.close()

    threading.Thread(target=trickle, daemon=True).start()
    with settings_with(TIMEOUT=1.5):
        started = time.monotonic()
        r = transport.send("POST", f"http://127.0.0.1:{port}/hook", body=b"{}", headers={})
        took = time.monotonic() - started
    server.close()
    assert not r.ok and r.error == "timed out after 1.5 s"
    assert took < 2.5, took


def test_errors_do_not_repeat_the_url_path_or_query():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    r = transport.send("POST", f"http://127.0.0.1:{port}/hook?token=s3cr3t", body=b"{}", headers={})
    assert r.error.startswith("connection failed") and "s3cr3t" not in r.error
