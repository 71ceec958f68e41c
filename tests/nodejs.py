"""Real Node.js receivers for the tests: the reference product's Express snippet, verbatim,
and one verifying with the npm ``standardwebhooks`` package.

``ensure_node_modules()`` installs the npm packages of tests/node/package-lock.json into
tests/node/node_modules (ignored by git) the first time, so a fresh machine needs no
manual step.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

NODE_DIR = Path(__file__).resolve().parent / "node"
NODE = shutil.which("node") or "/usr/bin/node"
_install_lock = threading.Lock()


def ensure_node_modules() -> None:
    """``npm ci`` unless node_modules already matches package-lock.json."""
    if not Path(NODE).exists():
        raise RuntimeError("Node.js is needed for these tests: apt-get install nodejs npm")
    lock = NODE_DIR / "package-lock.json"
    stamp = NODE_DIR / "node_modules" / ".installed-lock.json"
    with _install_lock:
        if stamp.exists() and stamp.read_bytes() == lock.read_bytes():
            return
        npm = shutil.which("npm") or "/usr/bin/npm"
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=NODE_DIR,
            check=True,
            timeout=300,
        )
        stamp.write_bytes(lock.read_bytes())


def roundtrip(texts: list[str]) -> list[str]:
    """``JSON.stringify(JSON.parse(text))`` of each text, computed by Node."""
    out = subprocess.run(
        [NODE, str(NODE_DIR / "roundtrip.js")],
        input=json.dumps(texts).encode(),
        capture_output=True,
        check=True,
        timeout=60,
    )
    return json.loads(out.stdout)


class NodeServer:
    """A Node process that prints ``LISTENING <port>`` and then one line per event."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        ensure_node_modules()
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(
            [NODE, *args],
            cwd=NODE_DIR,
            env={**os.environ, "PORT": "0", **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        line = self.wait_line(lambda s: s.startswith("LISTENING "), timeout=20)
        self.port = int(line.split()[1])

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    def wait_line(self, match, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    if match(line):
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise AssertionError("node printed:\n" + "\n".join(self.lines))
                self._cond.wait(min(left, 0.5))

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def axie_receiver(secret: str) -> NodeServer:
    """The snippet of ../shared/reference/001_*.txt, unchanged, listening on a free port."""
    return NodeServer(["-r", "./preload.js", "axie_snippet.js"], {"WEBHOOK_SECRET": secret})


def standard_receiver(secret: str) -> NodeServer:
    """Verifies with ``standardwebhooks``; prints one JSON line per request.

    Node refuses request lines over 16 KiB (431) by default; the table's GET queries of
    a 40 kB payload need more (a note in README says so for GET endpoints).
    """
    return NodeServer(
        ["--max-http-header-size=1048576", "sw_receiver.js"], {"WEBHOOK_SECRET": secret}
    )


def json_lines(server: NodeServer) -> list[dict]:
    with server._cond:
        return [json.loads(s) for s in server.lines if s.startswith("{")]
