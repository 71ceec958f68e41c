"""A tiny forward proxy on 127.0.0.1 for tests: records every request it forwards.

Plain http: absolute-form requests (``POST http://127.0.0.1:5000/hook``) are forwarded
with a ``Via`` header added; https: ``CONNECT host:port`` opens a tunnel whose bytes it
relays without reading them. Only loopback destinations are ever forwarded.
"""

from __future__ import annotations

import http.client
import select
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

VIA = "1.1 webhooks-test-proxy"


@dataclass
class Forwarded:
    method: str
    target: str  # the request line's target: an absolute URL, or host:port for CONNECT
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


class RecordingProxy:
    def __init__(self) -> None:
        self.forwarded: list[Forwarded] = []
        self.connections = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def setup(self):
                super().setup()
                with threading.Lock():
                    proxy.connections += 1

            def _forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                proxy.forwarded.append(Forwarded(self.command, self.path, dict(self.headers), body))
                parts = urlsplit(self.path)
                if parts.scheme != "http" or parts.hostname not in ("127.0.0.1", "::1"):
                    self.send_error(403, "this test proxy forwards to loopback only")
                    return
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if not k.lower().startswith("proxy-") and k.lower() != "connection"
                }
                headers["Via"] = VIA
                upstream = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
                path = parts.path + (f"?{parts.query}" if parts.query else "")
                upstream.request(self.command, path or "/", body=body, headers=headers)
                resp = upstream.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                upstream.close()

            do_GET = do_POST = _forward

            def do_CONNECT(self):
                proxy.forwarded.append(Forwarded("CONNECT", self.path, dict(self.headers)))
                host, _, port = self.path.rpartition(":")
                if host.strip("[]") not in ("127.0.0.1", "::1"):
                    self.send_error(403, "this test proxy tunnels to loopback only")
                    return
                upstream = socket.create_connection((host.strip("[]"), int(port)), timeout=10)
                self.send_response(200, "Connection established")
                self.end_headers()
                self.wfile.flush()
                sockets = [self.connection, upstream]
                try:
                    while True:
                        ready, _, _ = select.select(sockets, [], [], 10)
                        if not ready:
                            break
                        for s in ready:
                            data = s.recv(65536)
                            if not data:
                                return
                            (upstream if s is self.connection else self.connection).sendall(data)
                except OSError:
                    pass
                finally:
                    upstream.close()
                    self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
