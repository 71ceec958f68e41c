"""URL policy and SSRF guard: refused before any connection is made.

Host names are resolved through a patched ``getaddrinfo`` so that no packet ever leaves
for a private or public address; ``socket.connect`` is watched to prove nothing was sent.
"""

import socket

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
