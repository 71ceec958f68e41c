"""The one outbound HTTP call: URL policy, SSRF guard, pooled sessions, no redirects.

Every address a host name resolves to is checked before any connection is made, and the
connection goes to the checked address while TLS still verifies the host name (SNI and
certificate), so a DNS answer cannot change between the check and the connect.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
import threading
import time
from dataclasses import dataclass
from urllib.parse import quote, urlsplit, urlunsplit

import idna
import requests
import urllib3
from django.core.exceptions import ValidationError
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict
from requests.utils import check_header_validity

from .conf import app_settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Ranges that wrap an IPv4 address inside IPv6; the embedded address is checked too.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
# Refused outright, whatever Python's is_global says of them on a given version:
# IPv4-compatible (::/96), SIIT (::ffff:0:0:0/96), site-local, discard-only, local NAT64.
_ALWAYS_REFUSED = [
    ipaddress.ip_network(n)
    for n in ("::/96", "::ffff:0:0:0/96", "fec0::/10", "100::/64", "64:ff9b:1::/48")
]


# What may stand unescaped in a query on the wire (RFC 3986 query characters); urllib3
# percent-encodes anything else in the request line after we signed it.
_QUERY_SAFE = "-._~!$&'()*+,;=:@/?"
_PERCENT_ESCAPE = re.compile(r"(%[0-9A-Fa-f]{2})")


def wire_query(query: str) -> str:
    """``query`` exactly as it goes out in the request line.

    Spaces, ``|``, non-ASCII and other characters a query may not hold are
    percent-encoded (UTF-8), existing escapes are kept (hex in upper case) and a stray
    ``%`` becomes ``%25``. The result is left unchanged by requests and urllib3, so the
    bytes signed for a GET endpoint are the bytes the receiver reads.
    """
    parts = _PERCENT_ESCAPE.split(query)
    return "".join(
        part.upper() if i % 2 else quote(part, safe=_QUERY_SAFE) for i, part in enumerate(parts)
    )


class UnsafeURL(ValueError):
    """The URL is not allowed: bad scheme, or it resolves to a refused address."""


class ResolutionError(OSError):
    """The host name could not be resolved (retryable)."""


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    found = []
    if ip.ipv4_mapped:
        found.append(ip.ipv4_mapped)
    if ip.sixtofour:
        found.append(ip.sixtofour)
    if ip.teredo:
        found.extend(ip.teredo)
    if ip in _NAT64 or ip in _NAT64_LOCAL:
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return found


def _allowed_networks() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return _parse_networks(tuple(app_settings.ALLOWED_NETWORKS))


@functools.lru_cache(maxsize=16)
def _parse_networks(names: tuple[str, ...]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    # Keyed by the setting's value (read live), so a changed setting is parsed anew;
    # parsing it on every send was 3% of a worker's CPU.
    return [ipaddress.ip_network(n, strict=False) for n in names]


def address_refusal(ip: IPAddress) -> str | None:
    """Why ``ip`` may not be contacted, or None when it may."""
    allowed = _allowed_networks()
    if any(ip.version == net.version and ip in net for net in allowed):
        return None
    if any(ip.version == net.version and ip in net for net in _ALWAYS_REFUSED):
        return f"{ip} is a private or reserved address"
    candidates: list[IPAddress] = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        candidates += _embedded_ipv4(ip)
    for candidate in candidates:
        if any(candidate.version == net.version and candidate in net for net in allowed):
            continue
        if not candidate.is_global or candidate.is_multicast:
            return f"{ip} is a private or reserved address"
    return None


def resolve(host: str, port: int) -> list[IPAddress]:
    """All addresses ``host`` resolves to."""
    try:
        # An IP literal in canonical form is its own only address: no resolver call (one
        # getaddrinfo, and a GIL hand-off, per attempt). Other spellings ("0177.1",
        # "2130706433") are not canonical and go to getaddrinfo like host names.
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ResolutionError(f"could not resolve {host}: {exc}") from None
    seen: list[IPAddress] = []
    for info in infos:
        ip = ipaddress.ip_address(info[4][0].split("%", 1)[0])
        if ip not in seen:
            seen.append(ip)
    if not seen:
        raise ResolutionError(f"could not resolve {host}")
    return seen


_SPACE_OR_CONTROL = re.compile(r"[\s\x00-\x1f\x7f-\x9f]")


def ascii_host(host: str) -> str:
    """The host as DNS, TLS and the Host header need it: IDN names in punycode
    (``bücher.example`` -> ``xn--bcher-kva.example``); IP literals unchanged."""
    if host.isascii():
        return host
    try:
        return idna.encode(host, uts46=True).decode("ascii")
    except idna.IDNAError as exc:
        raise UnsafeURL(f"the host name is not a valid internationalised name ({exc})") from None


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    address: IPAddress


def check_url(url: str) -> Target:
    """Check scheme and every resolved address; return the address to connect to.

    Raises :class:`UnsafeURL` (permanent) or :class:`ResolutionError` (retryable).
    """
    if _SPACE_OR_CONTROL.search(url):
        raise UnsafeURL("the URL must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeURL(f"invalid URL: {exc}") from None
    if port == 0:
        raise UnsafeURL("port 0 cannot be connected to")
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UnsafeURL("the URL must start with https://")
    if scheme == "http" and not app_settings.ALLOW_HTTP:
        raise UnsafeURL("the URL must use https:// (plain http is not allowed)")
    host = parts.hostname
    if not host:
        raise UnsafeURL("the URL has no host")
    if parts.username or parts.password:
        raise UnsafeURL("credentials in the URL are not allowed; use a custom header")
    host = ascii_host(host)
    port = port or (443 if scheme == "https" else 80)
    addresses = resolve(host, port)
    for ip in addresses:
        reason = address_refusal(ip)
        if reason:
            raise UnsafeURL(f"{host} resolves to a refused address ({reason})")
    return Target(scheme, host, port, addresses[0])


def validate_url(url: str) -> None:
    """Django validator form of :func:`check_url`, for forms, serializers and services."""
    if not isinstance(url, str) or len(url) > 2000:
        raise ValidationError("Enter a valid URL of at most 2000 characters.", code="invalid")
    try:
        check_url(url)
    except UnsafeURL as exc:
        raise ValidationError(f"This URL is not allowed: {exc}.", code="unsafe_url") from None
    except ResolutionError as exc:
        raise ValidationError(f"This URL cannot be reached: {exc}.", code="unresolvable") from None


class _Watchdog:
    """Enforces each attempt's total deadline.

    Socket timeouts bound each read, not the attempt: a server that trickles one byte
    every few seconds would hold a sender thread (and outlive the claim's lease). One
    thread per process shuts down the socket of any request past its deadline; it
    checks at least every 0.25 s and is never woken per request, so it costs nothing on
    the fast path.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[int, list] = {}  # thread id -> [deadline, connection or None]
        self._thread: threading.Thread | None = None

    def watch(self, deadline: float) -> None:
        with self._lock:
            self._entries[threading.get_ident()] = [deadline, None]
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="webhooks-watchdog", daemon=True
                )
                self._thread.start()

    def connection(self, conn) -> None:
        entry = self._entries.get(threading.get_ident())
        if entry is not None:
            entry[1] = conn

    def unwatch(self) -> None:
        with self._lock:
            self._entries.pop(threading.get_ident(), None)

    def _run(self) -> None:
        while True:
            time.sleep(0.25)
            now = time.monotonic()
            with self._lock:
                expired = [e for e in self._entries.values() if e[0] <= now and e[1]]
            for _, conn in expired:
                sock = getattr(conn, "sock", None)
                if sock is not None:
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass


_watchdog = _Watchdog()


class _Watched:
    """Tells the watchdog which connection this thread's attempt is using."""

    def request(self, *args, **kwargs):
        _watchdog.connection(self)
        return super().request(*args, **kwargs)


class _WatchedConnection(_Watched, urllib3.connection.HTTPConnection):
    pass


class _WatchedHTTPSConnection(_Watched, urllib3.connection.HTTPSConnection):
    pass


class _HTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _WatchedConnection


class _HTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class PinnedAdapter(HTTPAdapter):
    """Connects to the pre-checked address carried on the request, TLS to the host name."""

    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}

    def get_connection_with_tls_context(self, request, verify, proxies=None, cert=None):
        target: Target | None = getattr(request, "webhooks_target", None)
        if target is None:
            raise UnsafeURL("request was not checked")
        host_params, pool_kwargs = self.build_connection_pool_key_attributes(request, verify, cert)
        host_params["host"] = str(target.address)
        if target.scheme == "https":
            pool_kwargs["server_hostname"] = target.host
            pool_kwargs["assert_hostname"] = target.host
        manager = self.poolmanager
        proxy = proxies.get(target.scheme) if proxies else None
        if proxy:
            # https: CONNECT to the checked address, then TLS to the host name through
            # the tunnel; http: the proxy's pool (request_url() names the address).
            manager = self.proxy_manager_for(proxy)
            manager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}
        return manager.connection_from_host(**host_params, pool_kwargs=pool_kwargs)

    def request_url(self, request, proxies):
        """Through a proxy, a plain-http request line names the checked address (the Host
        header keeps the name), so the proxy cannot resolve the name to another one."""
        url = super().request_url(request, proxies)
        target: Target | None = getattr(request, "webhooks_target", None)
        if target is not None and target.scheme == "http" and proxies and proxies.get("http"):
            host = str(target.address)
            host = f"[{host}]" if ":" in host else host
            url = urlunsplit(urlsplit(url)._replace(netloc=f"{host}:{target.port}"))
        return url


_local = threading.local()


def session() -> requests.Session:
    """One pooled session per thread: building a client per request costs ~25 ms."""
    s = getattr(_local, "session", None)
    if s is None:
        s = requests.Session()
        s.trust_env = False  # no proxies or netrc from the worker's environment
        adapter = PinnedAdapter(pool_connections=32, pool_maxsize=4, max_retries=0)
        s.mount("http://", adapter)
        s.mount("https://", adapter)
        _local.session = s
        _local.adapter = adapter
    return s


def _adapter() -> PinnedAdapter:
    """This thread's pooled adapter (the one mounted on its session)."""
    adapter = getattr(_local, "adapter", None)
    if adapter is None:
        session()
        adapter = _local.adapter
    return adapter


_TEMPLATES_PER_THREAD = 256


def _prepared(method: str, url: str, headers: dict[str, str], body: bytes):
    """A ``PreparedRequest`` as ``requests.Request(...).prepare()`` makes it, with the
    URL prepared once per URL and thread (IDNA, quoting: half of prepare()'s cost) and
    no cookie handling (there is no cookie jar to read). Headers are checked for CR/LF
    and bad names exactly as prepare() checks them."""
    templates = getattr(_local, "templates", None)
    if templates is None:
        templates = _local.templates = {}
    prepared_url = templates.get(url)
    if prepared_url is None:
        if len(templates) >= _TEMPLATES_PER_THREAD:
            templates.clear()
        prepared_url = templates[url] = requests.Request(method, url).prepare().url
    prepared = requests.PreparedRequest()
    prepared.method = method
    prepared.url = prepared_url
    prepared.headers = CaseInsensitiveDict()
    for header in headers.items():
        check_header_validity(header)
        prepared.headers[header[0]] = header[1]
    if method != "GET":
        prepared.body = body
        prepared.headers["Content-Length"] = str(len(body))
    return prepared


@dataclass
class Response:
    status_code: int | None
    duration_ms: int
    excerpt: str = ""
    error: str = ""
    retry_after: float | None = None
    permanent: bool = False  # refused URL, disabled endpoint: not retried

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300 and not self.error


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, when.timestamp() - time.time())


def request_url(method: str, url: str, body: bytes) -> str:
    """Where a request goes: for GET the body is the whole query string (the URL's own
    parameters included, exactly the bytes that were signed); a fragment is never sent."""
    if method == "GET":
        return urlunsplit(urlsplit(url)._replace(query=body.decode(), fragment=""))
    return requests.Request(method, url).prepare().url  # as _prepared() sends it


def send(method: str, url: str, *, body: bytes, headers: dict[str, str]) -> Response:
    """Send one request; never raises for network trouble, never follows redirects."""
    started = time.monotonic()

    def elapsed() -> int:
        return int((time.monotonic() - started) * 1000)

    try:
        target = check_url(url)
    except UnsafeURL as exc:
        return Response(None, elapsed(), error=f"refused: {exc}", permanent=True)
    except ResolutionError as exc:
        return Response(None, elapsed(), error=str(exc))
    host_header = target.host if ":" not in target.host else f"[{target.host}]"
    if urlsplit(url).port:
        host_header += f":{target.port}"
    prepared = _prepared(method, url, headers, body)
    if method == "GET":
        # The body is the whole query string, the URL's own parameters included: exactly
        # the bytes that were signed. A fragment is never sent.
        prepared.url = request_url(method, url, body)
    prepared.headers["Host"] = host_header
    prepared.webhooks_target = target  # read by PinnedAdapter
    cap = app_settings.RESPONSE_EXCERPT_BYTES
    timeout = app_settings.TIMEOUT
    timed_out = Response(None, 0, error=f"timed out after {timeout:g} s")
    _watchdog.watch(started + timeout)
    try:
        return _exchange(prepared, started, timeout, cap, elapsed, timed_out)
    finally:
        _watchdog.unwatch()


def _exchange(prepared, started: float, timeout: float, cap: int, elapsed, timed_out) -> Response:
    def late() -> bool:
        return time.monotonic() - started >= timeout

    try:
        # The adapter directly, not Session.send(): the adapter never follows redirects,
        # and what the session adds (cookie jar, hooks, the redirect generator) was 8% of
        # a worker's CPU for nothing we use. Proxies: none; certificates: verified.
        proxy = app_settings.PROXY
        resp = _adapter().send(
            prepared,
            stream=True,
            timeout=(app_settings.CONNECT_TIMEOUT, timeout),
            verify=True,
            cert=None,
            # Only WEBHOOKS_APP["PROXY"], never the environment's (trust_env is off).
            proxies={"http": proxy, "https": proxy} if proxy else {},
        )
    except requests.Timeout:
        timed_out.duration_ms = elapsed()
        return timed_out
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
        if late():  # the watchdog cut it off
            timed_out.duration_ms = elapsed()
            return timed_out
        connection = isinstance(exc, requests.ConnectionError)
        kind = "connection failed" if connection else "request failed"
        return Response(None, elapsed(), error=f"{kind}: {_short(exc)}")
    try:
        chunks: list[bytes] = []
        size = 0
        deadline = started + timeout
        for chunk in resp.iter_content(8192):
            if size < cap:
                chunks.append(chunk)
            size += len(chunk)
            if size > 1_048_576 or time.monotonic() > deadline:
                break  # do not read unbounded bodies; the connection is dropped below
        excerpt = b"".join(chunks)[:cap].decode("utf-8", "replace")
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
        resp.close()
        if late():
            timed_out.duration_ms = elapsed()
            return timed_out
        return Response(
            resp.status_code, elapsed(), error=f"reading response failed: {_short(exc)}"
        )
    finally:
        resp.close()
    result = Response(resp.status_code, elapsed(), excerpt=excerpt)
    if result.duration_ms > timeout * 1000:
        result.error = f"timed out after {timeout:g} s"
    elif 300 <= resp.status_code < 400:
        location = resp.headers.get("Location", "")
        result.error = f"redirect not followed ({resp.status_code} to {location[:200]})"
    if resp.status_code in (429, 503):
        result.retry_after = _retry_after(resp.headers.get("Retry-After"))
    return result


_URL_IN_ERROR = re.compile(r"(with )?url: \S+")


_CREDENTIALS_IN_URL = re.compile(r"//[^/@\s]+@")


def _short(exc: Exception) -> str:
    """The error without the request's path and query (they may carry tokens), nor the
    proxy's credentials."""
    text = _URL_IN_ERROR.sub("", str(exc)).strip()
    text = _CREDENTIALS_IN_URL.sub("//", text)
    return text if len(text) <= 300 else text[:297] + "..."
