"""Run a real ``manage.py qcluster`` subprocess against the test database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from django.db import connection

ROOT = Path(__file__).resolve().parent.parent


def database_url() -> str:
    """DATABASE_URL of the test database this process uses (it must be committed to)."""
    s = connection.settings_dict
    if s["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{s['NAME']}"
    user = s.get("USER") or "postgres"
    password = f":{s['PASSWORD']}" if s.get("PASSWORD") else ""
    host = s.get("HOST") or "127.0.0.1"
    return f"postgres://{user}{password}@{host}:{s.get('PORT') or 5432}/{s['NAME']}"


class Cluster:
    def __init__(self, env: dict[str, str] | None = None, workers: int = 2) -> None:
        full_env = dict(os.environ)
        full_env.update(
            {
                "DATABASE_URL": database_url(),
                "Q_WORKERS": str(workers),
                "WEBHOOKS_POLL_INTERVAL": "0.2",
                "PYTHONUNBUFFERED": "1",
            }
        )
        full_env.update(env or {})
        self.log_path = ROOT / "var" / f"qcluster-{os.getpid()}-{time.monotonic_ns()}.log"
        self.log_path.parent.mkdir(exist_ok=True)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "manage.py", "qcluster"],
            cwd=ROOT,
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"qcluster exited early:\n{self.log()}")
            if b"running." in self.log_path.read_bytes():
                return
            time.sleep(0.1)
        raise RuntimeError(f"qcluster did not start:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def worker_pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def kill(self) -> None:
        """SIGKILL the whole cluster: no clean-up code runs anywhere."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        if not self._log.closed:
            self._log.close()

    def close(self) -> None:
        """SIGKILL the group and remove the log: the end of a test that is done with it."""
        self.kill()
        try:
            self.log_path.unlink()
        except OSError:
            pass

    def stop(self) -> None:
        """SIGTERM to the main process only, as a process manager would: django-q2 then
        stops its workers itself (a signal to the whole group can deadlock its stop)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
        self.close()  # whatever is left of the group
