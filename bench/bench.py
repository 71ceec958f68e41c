"""webhooks_app benchmark suite (run it through ``bench/run``, which installs what it needs).

Starts everything on 127.0.0.1 -- nginx answering 200 at once, a socket that never
answers, the database and broker of the chosen mode, a ``qcluster`` with N workers and,
for the peer, a Celery worker of the PyPI package django-webhook -- then runs each
scenario ``--runs`` times and prints medians, each as a ratio to references measured in
the same run. The receiver's access log (``$msec $status $uri``) is the clock for every
delivery: one line per request, written when the response has been sent.
"""

from __future__ import annotations

import argparse
import atexit
import datetime as dt
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
PEER_SITE = BENCH / "peers" / "django_webhook_site"
PEER_VENV = Path(os.environ.get("BENCH_PEER_VENV", ROOT / "var" / "peer-venv"))
PY = sys.executable
REDIS_DB_OURS, REDIS_DB_PEER = 5, 6
PG_DB, PG_DB_PEER = "webhooks_bench", "webhooks_bench_peer"
RETRY_SCHEDULE = [0.0, 1.0, 2.0, 4.0]
DEAD_TIMEOUT = 5.0
ALL_SCENARIOS = ["burst", "fanout", "request", "latency", "retry", "dead", "large_history"]

# ---------------------------------------------------------------------------------------
# Processes: every child runs in its own session and is ended by its process group.
# ---------------------------------------------------------------------------------------
_children: list[subprocess.Popen] = []


def spawn(cmd, *, log: Path, env=None, cwd=ROOT) -> subprocess.Popen:
    fh = open(log, "ab")  # noqa: SIM115 - closed with the process
    p = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
    )
    p._bench_log = fh  # type: ignore[attr-defined]
    _children.append(p)
    return p


def stop(p: subprocess.Popen | None, sig=signal.SIGTERM, wait: float = 20) -> None:
    if p is None:
        return
    if p.poll() is None:
        try:
            # The main process only: django-q2 and Celery stop their children in order
            # (a SIGTERM to the whole group left django-q2's main process hanging).
            os.kill(p.pid, sig)
            p.wait(wait)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(5)
        except ProcessLookupError:
            pass
    # Leftovers of the group (e.g. django-q2 workers still finishing): kill them too.
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    p._bench_log.close()  # type: ignore[attr-defined]
    if p in _children:
        _children.remove(p)


def _cleanup() -> None:
    for p in list(_children):
        try:
            stop(p, wait=5)
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


atexit.register(_cleanup)
for _sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(_sig, lambda *_: sys.exit(130))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_text(path: Path, text: str, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:3]} exited early:\n{path.read_text()[-3000:]}")
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{proc.args[:3]} not ready after {timeout}s:\n{path.read_text()[-3000:]}")


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(values)
    if not s:
        return float("nan")
    return s[min(len(s) - 1, max(0, int(round(q / 100 * len(s) + 0.5)) - 1))]


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


# ---------------------------------------------------------------------------------------
# The receiver: nginx, and the access log as the clock.
# ---------------------------------------------------------------------------------------
NGINX_CONF = """
worker_processes 1;
daemon off;
master_process on;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    log_format bench '$msec $status $request_uri';
    client_body_temp_path {tmp}/nginx-body;
    proxy_temp_path {tmp}/nginx-proxy;
    fastcgi_temp_path {tmp}/nginx-fastcgi;
    uwsgi_temp_path {tmp}/nginx-uwsgi;
    scgi_temp_path {tmp}/nginx-scgi;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        access_log {tmp}/access.log bench;
        location /wrk {{ access_log off; return 200; }}
        location /fail/ {{ return 500; }}
        location / {{ return 200; }}
    }}
}}
"""


class Receiver:
    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.conf = tmp / "nginx.conf"
        self.conf.write_text(NGINX_CONF.format(tmp=tmp, port=self.port))
        self.log_path = tmp / "access.log"
        self.log_path.touch()
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.proc = spawn(
            [nginx, "-p", str(tmp), "-e", str(tmp / "nginx-error.log"), "-c", str(self.conf)],
            log=tmp / "nginx.out",
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                break
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError((tmp / "nginx-error.log").read_text()) from None
                time.sleep(0.05)
        self._pos = 0
        self._partial = b""
        self.lines: list[tuple[float, int, str]] = []

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def poll(self) -> None:
        with open(self.log_path, "rb") as f:
            f.seek(self._pos)
            data = f.read()
        self._pos += len(data)
        data = self._partial + data
        *complete, self._partial = data.split(b"\n")
        for raw in complete:
            parts = raw.decode(errors="replace").split(" ", 2)
            if len(parts) == 3:
                self.lines.append((float(parts[0]), int(parts[1]), parts[2]))

    def matching(self, prefix: str, status: int | None = 200) -> list[tuple[float, int, str]]:
        self.poll()
        return [
            line
            for line in self.lines
            if line[2].startswith(prefix) and (status is None or line[1] == status)
        ]

    def wait_count(self, prefix: str, n: int, timeout: float, stall: float = 30) -> list:
        """Wait until ``n`` 200s under ``prefix`` (or nothing new for ``stall`` seconds)."""
        deadline = time.monotonic() + timeout
        last_n, last_change = -1, time.monotonic()
        while True:
            got = self.matching(prefix)
            if len(got) >= n:
                return got
            now = time.monotonic()
            if len(got) != last_n:
                last_n, last_change = len(got), now
            if now > deadline or now - last_change > stall:
                return got
            time.sleep(0.02)

    def forget(self) -> None:
        self.poll()
        self.lines.clear()

    def wrk(self, seconds: int = 3) -> float | None:
        wrk = shutil.which("wrk")
        if not wrk:
            return None
        out = subprocess.run(
            [wrk, "-t2", "-c16", f"-d{seconds}s", self.url("/wrk")],
            capture_output=True,
            text=True,
            timeout=seconds + 30,
        ).stdout
        m = re.search(r"Requests/sec:\s*([\d.]+)", out)
        return float(m.group(1)) if m else None


class DeadEndpoint:
    """Accepts TCP connections and never answers (held until the bench ends)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1024)
        self.sock.settimeout(0.5)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.held.append(conn)
            if len(self.held) > 5000:  # bounded: the oldest are closed
                self.held.pop(0).close()

    def close(self) -> None:
        self._stop.set()
        for c in self.held:
            c.close()
        self.sock.close()


# ---------------------------------------------------------------------------------------
# Database and broker of the mode.
# ---------------------------------------------------------------------------------------
def redis_url(db: int) -> str:
    return f"redis://127.0.0.1:6379/{db}"


def ensure_redis(tmp: Path) -> None:
    import redis

    try:
        redis.Redis.from_url(redis_url(0), socket_timeout=2).ping()
    except Exception:  # noqa: BLE001
        exe = shutil.which("redis-server")
        if not exe:
            raise SystemExit("redis-server is needed (apt-get install redis-server)") from None
        p = spawn(
            [exe, "--bind", "127.0.0.1", "--port", "6379", "--save", "", "--appendonly", "no"],
            log=tmp / "redis.log",
        )
        wait_for_text(tmp / "redis.log", "Ready to accept connections", p)


def flush_redis(db: int) -> None:
    import redis

    redis.Redis.from_url(redis_url(db)).flushdb()


def ensure_postgres() -> None:
    ok = subprocess.run(["pg_isready", "-h", "127.0.0.1", "-q"]).returncode == 0
    if not ok:
        versions = os.listdir("/etc/postgresql")
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", versions[0], "main", "start"],
            check=True,
        )
        atexit.register(
            subprocess.run,
            ["pg_ctlcluster", "--skip-systemctl-redirect", versions[0], "main", "stop"],
        )
        for _ in range(100):
            if subprocess.run(["pg_isready", "-h", "127.0.0.1", "-q"]).returncode == 0:
                break
            time.sleep(0.1)


def recreate_pg(name: str) -> None:
    base = ["-h", "127.0.0.1", "-U", "postgres"]
    subprocess.run(["dropdb", *base, "--if-exists", "--force", name], check=True)
    subprocess.run(["createdb", *base, name], check=True)


# ---------------------------------------------------------------------------------------
# Our cluster.
# ---------------------------------------------------------------------------------------
def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all cores, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]
    return float(sum(values) - idle), float(sum(values))


def proc_status(pid: int) -> dict[str, str]:
    try:
        with open(f"/proc/{pid}/status") as f:
            return dict(line.split(":", 1) for line in f if ":" in line)
    except OSError:
        return {}


class Cluster:
    def __init__(self, env: dict[str, str], tmp: Path, workers: int) -> None:
        self.log = tmp / f"qcluster-{time.monotonic_ns()}.log"
        self.proc = spawn([PY, "manage.py", "qcluster"], log=self.log, env=env)
        wait_for_text(self.log, "running.", self.proc, timeout=60)
        self.workers = workers

    def worker_peaks_mb(self) -> list[float]:
        """VmHWM (peak RSS) of each worker: the processes running a dispatcher's threads."""
        peaks = []
        for pid in descendants(self.proc.pid):
            st = proc_status(pid)
            if int(st.get("Threads", "1").strip() or 1) >= 4 and "VmHWM" in st:
                peaks.append(int(st["VmHWM"].split()[0]) / 1024)
        return sorted(peaks, reverse=True)

    def cpu_seconds(self) -> float:
        """utime + stime of the whole cluster (main, sentinel, workers, pusher, monitor)."""
        total = 0
        for pid in [self.proc.pid, *descendants(self.proc.pid)]:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
            except (OSError, IndexError, ValueError):
                continue
        return total / os.sysconf("SC_CLK_TCK")

    def worker_pids(self) -> list[int]:
        return [
            p
            for p in descendants(self.proc.pid)
            if int(proc_status(p).get("Threads", "1").strip() or 1) >= 4
        ]

    def stop(self) -> None:
        stop(self.proc, wait=DEAD_TIMEOUT + 15)


# ---------------------------------------------------------------------------------------
# The bench.
# ---------------------------------------------------------------------------------------
class Bench:
    def __init__(self, args, tmp: Path) -> None:
        self.args = args
        self.tmp = tmp
        self.mode = args.mode
        self.receiver = Receiver(tmp)
        self.dead = DeadEndpoint()
        self.run_no = 0
        self.tag = ""
        ensure_redis(tmp)
        if self.mode == "postgres":
            ensure_postgres()
            recreate_pg(PG_DB)
            recreate_pg(PG_DB_PEER)
            db_url = f"postgres://postgres@127.0.0.1:5432/{PG_DB}"
            self.peer_db = f"postgres:{PG_DB_PEER}"
        else:
            db_url = f"sqlite:///{tmp / 'bench.sqlite3'}"
            self.peer_db = f"sqlite:{tmp / 'peer.sqlite3'}"
        self.env = {
            **os.environ,
            "DATABASE_URL": db_url,
            "Q_WORKERS": str(args.workers),
            "Q_CLUSTER_NAME": "webhooks_bench",
            "WEBHOOKS_RETRY_SCHEDULE": ",".join(f"{s:g}" for s in RETRY_SCHEDULE),
            "WEBHOOKS_TIMEOUT": f"{DEAD_TIMEOUT:g}",
            "WEBHOOKS_LOG_LEVEL": "WARNING",
            "WEBHOOKS_VAR_DIR": str(tmp / "var"),
            "PYTHONUNBUFFERED": "1",
            "DJANGO_SETTINGS_MODULE": "project.settings",
            # Production-like: DEBUG=True makes Django keep every query in memory.
            "DEBUG": "false",
        }
        self.env.pop("REDIS_URL", None)
        if self.mode == "postgres":
            self.env["REDIS_URL"] = redis_url(REDIS_DB_OURS)
            flush_redis(REDIS_DB_OURS)
        for key in ("WEBHOOKS_POLL_INTERVAL", "WEBHOOKS_SENDER_THREADS", "WEBHOOKS_LEASE_SECONDS"):
            if os.environ.get(key):
                self.env[key] = os.environ[key]
        subprocess.run(
            [PY, "manage.py", "migrate", "--noinput"],
            cwd=ROOT,
            env=self.env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        os.environ.clear()
        os.environ.update(self.env)
        sys.path.insert(0, str(ROOT))
        import django

        django.setup()
        import logging

        logging.getLogger("django-q").setLevel(logging.WARNING)
        self.peer_env = {
            **{k: v for k, v in self.env.items() if not k.startswith(("DJANGO", "WEBHOOKS"))},
            "PEER_DATABASE": self.peer_db,
            "PEER_REDIS_URL": redis_url(REDIS_DB_PEER),
            "DJANGO_SETTINGS_MODULE": "peersite.settings",
        }
        self.peer_ok = (PEER_VENV / "bin" / "celery").exists()
        if self.peer_ok:
            r = subprocess.run(
                [PEER_VENV / "bin" / "python", "manage.py", "migrate", "--noinput"],
                cwd=PEER_SITE,
                env=self.peer_env,
                capture_output=True,
                text=True,
            )
            if r.returncode:
                print("peer migrate failed; peer skipped:\n", r.stderr[-2000:], file=sys.stderr)
                self.peer_ok = False

    # helpers ----------------------------------------------------------------------------
    def reset(self) -> None:
        from django.db import connection
        from django_q.brokers import get_broker

        from webhooks_app.models import Delivery, DeliveryAttempt, Endpoint, Event, Subscription

        with connection.cursor() as c:
            for model in (DeliveryAttempt, Delivery, Event, Subscription, Endpoint):
                c.execute(f"DELETE FROM {model._meta.db_table}")
        get_broker().purge_queue()
        if self.mode == "postgres":
            flush_redis(REDIS_DB_OURS)

    def endpoints(self, urls: list[str], events=("user.created",)) -> list:
        from webhooks_app import services

        return [
            services.create_endpoint(url=u, events=list(events), name=f"bench {i}")[0]
            for i, u in enumerate(urls)
        ]

    def start_cluster(self) -> Cluster:
        return Cluster(self.env, self.tmp, self.args.workers)

    @staticmethod
    def emit_one(i: int, event_type: str = "user.created") -> tuple[float, float, float]:
        """One emit in a view-like transaction: (begin, emit() call, commit+wake) seconds.

        On SQLite (IMMEDIATE) ``begin`` is where a view waits for the write lock; it is
        the view's transaction, not emit(), so it is reported apart, as commit+wake is.
        """
        from django.db import transaction

        from webhooks_app import emit

        t0 = time.perf_counter()
        with transaction.atomic():
            t1 = time.perf_counter()
            emit(
                event_type,
                {"id": i, "username": f"user{i}", "email": f"user{i}@example.com"},
            )
            t2 = time.perf_counter()
        return t1 - t0, t2 - t1, time.perf_counter() - t2

    @staticmethod
    def emit_batch(start: int, n: int) -> float:
        """``n`` emits in one transaction (a batch job, or a burst from many requests)."""
        from django.db import transaction

        from webhooks_app import emit

        t0 = time.perf_counter()
        with transaction.atomic():
            for i in range(start, start + n):
                emit(
                    "user.created",
                    {"id": i, "username": f"user{i}", "email": f"user{i}@example.com"},
                )
        return time.perf_counter() - t0

    def profile(self, cluster: Cluster, name: str, seconds: int) -> None:
        """With --profile: py-spy records each worker (collapsed stacks) during the scenario."""
        spy = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
        if not self.args.profile or not os.path.exists(spy):
            return

        def attach() -> None:
            deadline = time.monotonic() + 15
            pids: list[int] = []
            while not pids and time.monotonic() < deadline:
                time.sleep(0.2)  # sender threads start with the first chunk
                pids = cluster.worker_pids()
            for pid in pids:
                out = RESULTS / f"profile-{self.mode}-{name}-{pid}.txt"
                spawn(
                    [spy, "record", "-f", "raw", "-o", str(out), "--pid", str(pid)]
                    + ["-d", str(seconds), "-r", "50", "--nonblocking"],
                    log=RESULTS / "py-spy.log",
                )

        threading.Thread(target=attach, daemon=True).start()

    # references ---------------------------------------------------------------------------
    def ceiling(self) -> dict:
        """Bare requests loops, one process, same signed body, same receiver."""
        import requests

        from webhooks_app import events, signing

        secret = signing.generate_secret()
        now = dt.datetime.now(dt.UTC)
        data = {"id": 1, "username": "user1", "email": "user1@example.com"}
        body = events.dumps(events.envelope("evt_ceiling", "user.created", now, "", data)).encode()
        headers = {"Content-Type": "application/json", "User-Agent": "bench"}
        headers.update(signing.sign_headers([secret], msg_id="evt_ceiling", body=body))
        out = {}
        for name, n, use_session in (
            ("session", self.args.ceiling_requests, True),
            ("no_session", self.args.ceiling_requests // 3, False),
        ):
            url = self.receiver.url(f"/{self.tag}/ceil-{name}")
            s = requests.Session() if use_session else None
            done, t0 = 0, time.perf_counter()
            while done < n and time.perf_counter() - t0 < 10:
                r = (s or requests).post(url, data=body, headers=headers, timeout=5)
                r.raise_for_status()
                done += 1
            out[name] = done / (time.perf_counter() - t0)
        return out

    def peer(self, events: int, n_endpoints: int, name: str) -> dict | None:
        """django-webhook: same deliveries, same receiver, celery -c <workers>, Redis."""
        if not self.peer_ok or self.args.no_peer:
            return None
        flush_redis(REDIS_DB_PEER)
        log = self.tmp / f"celery-{name}-{self.run_no}.log"
        worker = spawn(
            [
                PEER_VENV / "bin" / "celery",
                "-A",
                "peersite",
                "worker",
                "-c",
                str(self.args.workers),
                "-P",
                "prefork",
                "-l",
                "info",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-n",
                f"bench-{os.getpid()}@127.0.0.1",
            ],
            log=log,
            env=self.peer_env,
            cwd=PEER_SITE,
        )
        try:
            wait_for_text(log, "ready.", worker, timeout=60)
            prefix = f"/{self.tag}/peer-{name}/"
            urls = [self.receiver.url(f"{prefix}e{k}") for k in range(n_endpoints)]
            drv = self._peer_drive(events, urls, self.args.batch)
            if drv is None:
                return None
            info = drv
            total = events * n_endpoints
            got = self.receiver.wait_count(prefix, total, timeout=self.args.drain_timeout)
            end = max(line[0] for line in got) if got else time.time()
            out = {
                "deliveries": len(got),
                "expected": total,
                "rate": len(got) / (end - info["t_first"]),
            }
            if name == "burst" and "request" in self.args.scenarios:
                # The request path: one create per transaction, as a view does.
                url = self.receiver.url(f"/{self.tag}/peer-request/e0")
                req = self._peer_drive(self.args.request_emits, [url], 1, spacing=0.002)
                if req:
                    out["request_emit_median_ms"] = req["emit_median_ms"]
                    out["request_emit_p99_ms"] = req["emit_p99_ms"]
            return out
        finally:
            stop(worker, wait=15)

    def _peer_drive(self, events: int, urls: list[str], batch: int, spacing: float = 0.0):
        drv = subprocess.run(
            [PEER_VENV / "bin" / "python", "drive.py", "--events", str(events)]
            + ["--urls", ",".join(urls), "--batch", str(batch), "--spacing", str(spacing)],
            cwd=PEER_SITE,
            env=self.peer_env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if drv.returncode:
            print("peer driver failed:\n", drv.stderr[-2000:], file=sys.stderr)
            return None
        return json.loads(drv.stdout.strip().splitlines()[-1])

    # scenarios -----------------------------------------------------------------------------
    def throughput(self, name: str, events: int, healthy: int, dead: int = 0) -> dict:
        """Emit ``events`` events to ``healthy`` (+``dead``) endpoints; time to the last 2xx."""
        self.reset()
        prefix = f"/{self.tag}/{name}/"
        urls = [self.receiver.url(f"{prefix}e{k}") for k in range(healthy)]
        urls += [f"http://127.0.0.1:{self.dead.port}/dead{k}" for k in range(dead)]
        self.endpoints(urls)
        cluster = self.start_cluster()
        try:
            time.sleep(0.5)
            self.profile(cluster, name, 20)
            emit_s = []
            batch = self.args.batch
            machine0, cpu0 = machine_busy(), cluster.cpu_seconds()
            t_first = time.time()
            for start in range(0, events, batch):
                emit_s.append(self.emit_batch(start, min(batch, events - start)))
            t_emitted = time.time()
            total = events * healthy
            got = self.receiver.wait_count(prefix, total, timeout=self.args.drain_timeout)
            end = max(line[0] for line in got) if got else time.time()
            peaks = cluster.worker_peaks_mb()
            cluster_cpu = cluster.cpu_seconds() - cpu0
            machine1 = machine_busy()
        finally:
            cluster.stop()
        return {
            "deliveries": len(got),
            "expected": total,
            "rate": len(got) / (end - t_first),
            "emit_phase_s": t_emitted - t_first,
            "emit_rate": events / (t_emitted - t_first),
            "drain_after_emit_s": max(0.0, end - t_emitted),
            "emit_batch_median_ms": statistics.median(emit_s) * 1000,
            "worker_peak_rss_mb": peaks,
            # CPU: the cluster's per delivery, and how busy both cores were meanwhile.
            "cluster_cpu_ms_per_delivery": 1000 * cluster_cpu / max(1, len(got)),
            "machine_busy_fraction": (machine1[0] - machine0[0])
            / max(1e-9, machine1[1] - machine0[1]),
        }

    def request_path(self) -> dict:
        """emit() in a view's transaction, 1 and 10 endpoints: first with no cluster
        running (the site's own cost; key "<n>_idle"), then while the cluster delivers
        every event 2 ms after it is emitted, on the same 2 cores (key "<n>")."""
        self.reset()
        prefix = f"/{self.tag}/request/"
        self.endpoints([self.receiver.url(f"{prefix}one")], events=["user.created"])
        self.endpoints(
            [self.receiver.url(f"{prefix}ten{k}") for k in range(10)], events=["user.updated"]
        )
        kinds = (("1", "user.created"), ("10", "user.updated"))

        def measure(event_type: str, spacing: float) -> dict:
            for i in range(20):  # warm-up
                self.emit_one(i, event_type)
            begin_s, emit_s, commit_s = [], [], []
            for i in range(self.args.request_emits):
                b, e, c = self.emit_one(i, event_type)
                begin_s.append(b * 1000)
                emit_s.append(e * 1000)
                commit_s.append(c * 1000)
                if spacing:
                    time.sleep(spacing)
            return {
                "begin_median_ms": statistics.median(begin_s),
                "begin_p99_ms": pct(begin_s, 99),
                "emit_median_ms": statistics.median(emit_s),
                "emit_p99_ms": pct(emit_s, 99),
                "commit_wake_median_ms": statistics.median(commit_s),
                "commit_wake_p99_ms": pct(commit_s, 99),
            }

        # Idle: back to back, as in a busy web process. (Sleeping between emits lets this
        # VM's vCPU go idle, and the next emit then runs cold: about 2x slower measured.)
        out = {f"{label}_idle": measure(event_type, 0) for label, event_type in kinds}
        self.reset()
        self.endpoints([self.receiver.url(f"{prefix}one")], events=["user.created"])
        self.endpoints(
            [self.receiver.url(f"{prefix}ten{k}") for k in range(10)], events=["user.updated"]
        )
        cluster = self.start_cluster()
        try:
            time.sleep(0.5)
            for label, event_type in kinds:
                out[label] = measure(event_type, 0.002)  # the cluster keeps up
        finally:
            cluster.stop()
        return out

    def latency(self) -> dict:
        """Sequential emits on an idle system: emit start -> receiver's log line."""
        self.reset()
        prefix = f"/{self.tag}/latency/e0"
        self.endpoints([self.receiver.url(prefix)])
        cluster = self.start_cluster()
        lat = []
        try:
            time.sleep(1.0)
            for i in range(self.args.latency_emits):
                t0 = time.time()
                self.emit_one(i)
                got = self.receiver.wait_count(prefix, i + 1, timeout=10, stall=10)
                if len(got) > i:
                    lat.append((got[i][0] - t0) * 1000)
                time.sleep(random.uniform(0.1, 0.25))
        finally:
            cluster.stop()
        return {
            "samples": len(lat),
            "p50_ms": pct(lat, 50),
            "p99_ms": pct(lat, 99),
            "max_ms": max(lat) if lat else None,
        }

    def retry(self) -> dict:
        """An endpoint answering 500: actual start of each retry vs end of previous + delay."""
        from webhooks_app.models import Delivery, DeliveryAttempt

        self.reset()
        self.endpoints([self.receiver.url(f"/fail/{self.tag}/retry")])
        cluster = self.start_cluster()
        try:
            time.sleep(0.5)
            for i in range(self.args.retry_events):
                self.emit_one(i)
                time.sleep(0.05)
            deadline = time.monotonic() + sum(RETRY_SCHEDULE) + 30
            while time.monotonic() < deadline:
                if not Delivery.objects.exclude(status=Delivery.Status.FAILED).exists():
                    break
                time.sleep(0.2)
        finally:
            cluster.stop()
        errors = []
        by_delivery: dict[int, list] = {}
        for a in DeliveryAttempt.objects.order_by("delivery_id", "number"):
            by_delivery.setdefault(a.delivery_id, []).append(a)
        for attempts in by_delivery.values():
            for k in range(1, len(attempts)):
                prev, cur = attempts[k - 1], attempts[k]
                scheduled = prev.started_at + dt.timedelta(
                    milliseconds=prev.duration_ms, seconds=RETRY_SCHEDULE[k]
                )
                errors.append((cur.started_at - scheduled).total_seconds())
        absolute = [abs(e) for e in errors]
        return {
            "retries": len(errors),
            "expected_retries": self.args.retry_events * (len(RETRY_SCHEDULE) - 1),
            "median_error_s": pct(errors, 50) if errors else None,
            "p99_abs_error_s": pct(absolute, 99) if errors else None,
            "max_abs_error_s": max(absolute) if errors else None,
        }

    def large_history(self) -> dict | None:
        script = BENCH / "large_history.py"
        if not script.exists():
            return None
        r = subprocess.run(
            [PY, str(script)],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=3600,
        )
        result: dict = {"returncode": r.returncode, "output": r.stdout[-4000:]}
        for line in reversed(r.stdout.strip().splitlines()):
            try:
                result["json"] = json.loads(line)
                break
            except ValueError:
                continue
        if r.returncode:
            result["stderr"] = r.stderr[-2000:]
        return result

    # one round ---------------------------------------------------------------------------
    def round(self) -> dict:
        self.run_no += 1
        self.tag = f"r{self.run_no}-{int(time.time())}"
        a, sc = self.args, self.args.scenarios
        res: dict = {}
        timings: dict[str, float] = {}

        def step(key: str, fn, *args) -> None:
            t0 = time.monotonic()
            res[key] = fn(*args)
            timings[key] = round(time.monotonic() - t0, 1)
            brief = {
                k: (round(v, 3) if isinstance(v, float) else v)
                for k, v in (res[key] or {}).items()
                if not isinstance(v, dict | list)
            } or res[key]
            print(f"  run {self.run_no}: {key} ({timings[key]} s) {brief}", flush=True)

        step("ceiling", self.ceiling)
        if "burst" in sc:
            step("burst", self.throughput, "burst", a.events, 1)
            if not a.quick or "peer" in a.quick_extra:
                step("peer_burst", self.peer, a.events, 1, "burst")
        if "fanout" in sc or "dead" in sc:
            step("fanout", self.throughput, "fanout", a.fanout_events, a.endpoints)
        if "fanout" in sc and not a.quick:
            step("peer_fanout", self.peer, a.fanout_events, a.endpoints, "fanout")
        if "dead" in sc:
            step("dead", self.throughput, "dead", a.fanout_events, a.endpoints - 1, 1)
        if "request" in sc:
            step("request", self.request_path)
        if "latency" in sc:
            step("latency", self.latency)
        if "retry" in sc:
            step("retry", self.retry)
        res["timings_s"] = timings
        return res


# ---------------------------------------------------------------------------------------
# Report.
# ---------------------------------------------------------------------------------------
def g(d, *keys):
    for k in keys:
        if d is None:
            return None
        d = d.get(k) if isinstance(d, dict) else None
    return d


def summarize(mode: str, workers: int, runs: list[dict], wrk: float | None) -> list[dict]:
    """Rows of the table: medians over runs, ratios computed per run then medianed."""
    rows: list[dict] = []

    def per_run(fn):
        vals = []
        for r in runs:
            try:
                v = fn(r)
            except (TypeError, ZeroDivisionError, KeyError):
                v = None
            if v is not None:
                vals.append(v)
        return median(vals)

    def add(scenario, figure, value, unit, ref=None, ref_name="", ratio=None, target="", ok=None):
        rows.append(
            {
                "scenario": scenario,
                "figure": figure,
                "value": value,
                "unit": unit,
                "reference": ref,
                "reference_name": ref_name,
                "ratio": ratio,
                "target": target,
                "met": ok,
            }
        )

    sess = per_run(lambda r: r["ceiling"]["session"])
    add(
        "receiver",
        "nginx ceiling (wrk -t2 -c16, 3 s)",
        wrk,
        "req/s",
        sess,
        "Session loop",
        wrk / sess if wrk and sess else None,
        "receiver never the bottleneck",
        bool(wrk and sess and wrk > 3 * sess) if wrk else None,
    )
    add("ceiling", "bare requests.Session loop, 1 process", sess, "req/s")
    add(
        "ceiling",
        "requests.post loop without Session",
        per_run(lambda r: r["ceiling"]["no_session"]),
        "req/s",
        sess,
        "Session loop",
        per_run(lambda r: r["ceiling"]["no_session"] / r["ceiling"]["session"]),
    )
    for key, label in (("burst", "burst"), ("fanout", "fan-out")):
        if not any(key in r for r in runs):
            continue
        rate = per_run(lambda r, k=key: r[k]["rate"])
        complete = all(g(r, key, "deliveries") == g(r, key, "expected") for r in runs)
        cap = per_run(lambda r, k=key: r[k]["rate"] / (workers * r["ceiling"]["session"]))
        target_cap = "≥ 0.50 (PostgreSQL+Redis)" if mode == "postgres" else "(target on postgres)"
        add(
            label,
            f"deliveries/s end to end{'' if complete else ' (INCOMPLETE)'}",
            rate,
            "/s",
            per_run(lambda r: workers * r["ceiling"]["session"]),
            f"{workers} × Session loop",
            cap,
            target_cap,
            (cap >= 0.5) if (cap is not None and mode == "postgres") else None,
        )
        peer_rate = per_run(lambda r, k=key: r[f"peer_{k}"]["rate"])
        if peer_rate:
            ratio = per_run(lambda r, k=key: r[k]["rate"] / r[f"peer_{k}"]["rate"])
            add(
                label,
                f"vs django-webhook (celery -c {workers}, Redis)",
                rate,
                "/s",
                peer_rate,
                "django-webhook",
                ratio,
                "≥ 2.0",
                ratio is not None and ratio >= 2.0,
            )
        add(
            label,
            "emit phase rate (one emitter)",
            per_run(lambda r, k=key: r[k]["emit_rate"]),
            "/s",
        )
        add(
            label,
            "drain after last emit",
            per_run(lambda r, k=key: r[k]["drain_after_emit_s"]),
            "s",
        )
        add(
            label,
            "cluster CPU per delivery (all qcluster processes)",
            per_run(lambda r, k=key: r[k]["cluster_cpu_ms_per_delivery"]),
            "ms",
            per_run(lambda r: 1000 / r["ceiling"]["session"]),
            "wall ms per Session request",
            per_run(
                lambda r, k=key: (
                    r[k]["cluster_cpu_ms_per_delivery"] * r["ceiling"]["session"] / 1000
                )
            ),
        )
        add(
            label,
            "both cores busy during the run (machine)",
            per_run(lambda r, k=key: 100 * r[k]["machine_busy_fraction"]),
            "%",
        )
    if any("burst" in r for r in runs):
        rss = per_run(lambda r: max(r["burst"]["worker_peak_rss_mb"]))
        add(
            "memory",
            "peak RSS per worker during burst (VmHWM, max)",
            rss,
            "MB",
            120,
            "target",
            rss / 120 if rss else None,
            "≤ 120 MB",
            rss is not None and rss <= 120,
        )
    if any("request" in r for r in runs):
        peer_emit = per_run(lambda r: r["peer_burst"]["request_emit_median_ms"])
        for n, limit in (("1", 1.0), ("10", 3.0)):
            idle = per_run(lambda r, n=n: r["request"].get(f"{n}_idle", {}).get("emit_median_ms"))
            tgt = f"≤ {limit:g} ms (SQLite)" if mode == "sqlite" else "(report)"
            add(
                "request path",
                f"emit() median, {n} endpoint(s), no cluster, back to back",
                idle,
                "ms",
                per_run(lambda r, n=n: r["request"].get(f"{n}_idle", {}).get("emit_p99_ms")),
                "p99",
                None,
                tgt,
                (idle <= limit) if mode == "sqlite" and idle is not None else None,
            )
            med = per_run(lambda r, n=n: r["request"][n]["emit_median_ms"])
            add(
                "request path",
                f"emit() median, {n} endpoint(s), cluster delivering meanwhile",
                med,
                "ms",
                peer_emit,
                "django-webhook save+delay",
                med / peer_emit if med and peer_emit else None,
                "(report)",
                None,
            )
            add(
                "request path",
                f"emit() p99, {n} endpoint(s)",
                per_run(lambda r, n=n: r["request"][n]["emit_p99_ms"]),
                "ms",
                per_run(lambda r: r["peer_burst"]["request_emit_p99_ms"]),
                "django-webhook p99",
            )
            add(
                "request path",
                f"view's BEGIN (SQLite: write lock) median / p99, {n} endpoint(s)",
                per_run(lambda r, n=n: r["request"][n]["begin_median_ms"]),
                "ms",
                per_run(lambda r, n=n: r["request"][n]["begin_p99_ms"]),
                "p99",
            )
            add(
                "request path",
                f"commit + wake median / p99, {n} endpoint(s)",
                per_run(lambda r, n=n: r["request"][n]["commit_wake_median_ms"]),
                "ms",
                per_run(lambda r, n=n: r["request"][n]["commit_wake_p99_ms"]),
                "p99",
            )
    if any("latency" in r for r in runs):
        p50 = per_run(lambda r: r["latency"]["p50_ms"])
        limit = 100 if mode == "postgres" else 500
        per_req = per_run(lambda r: 1000 / r["ceiling"]["session"])
        add(
            "latency",
            "emit → receiver p50",
            p50,
            "ms",
            per_req,
            "one Session request",
            p50 / per_req if p50 and per_req else None,
            f"≤ {limit} ms",
            p50 is not None and p50 <= limit,
        )
        add("latency", "emit → receiver p99", per_run(lambda r: r["latency"]["p99_ms"]), "ms")
    if any("retry" in r for r in runs):
        err = per_run(lambda r: r["retry"]["p99_abs_error_s"])
        add(
            "retry",
            "p99 |actual − scheduled| (schedule 0,1,2,4 s)",
            err,
            "s",
            1.0,
            "target",
            err,
            "≤ 1 s",
            err is not None and err <= 1.0,
        )
        add("retry", "median signed error", per_run(lambda r: r["retry"]["median_error_s"]), "s")
    if any("dead" in r for r in runs):
        ratio = per_run(lambda r: r["dead"]["rate"] / r["fanout"]["rate"])
        add(
            "dead endpoint",
            "healthy deliveries/s, 9 healthy + 1 silent",
            per_run(lambda r: r["dead"]["rate"]),
            "/s",
            per_run(lambda r: r["fanout"]["rate"]),
            "10 healthy",
            ratio,
            "≥ 0.80",
            ratio is not None and ratio >= 0.8,
        )
    return rows


def fmt(v, unit=""):
    if v is None:
        return "–"
    if isinstance(v, float):
        if abs(v) >= 100:
            return f"{v:,.0f}"
        return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def print_table(mode: str, rows: list[dict], n_runs: int) -> None:
    print(f"\n== webhooks_app bench: mode={mode}, medians of {n_runs} run(s) ==")
    head = ("scenario", "figure", "value", "reference", "ratio", "target", "met")
    table = [head]
    for r in rows:
        ref = f"{fmt(r['reference'])} {r['reference_name']}".strip() if r["reference"] else ""
        met = {True: "yes", False: "NO", None: ""}[r["met"]]
        table.append(
            (
                r["scenario"],
                r["figure"],
                f"{fmt(r['value'])} {r['unit']}",
                ref,
                fmt(r["ratio"]) if r["ratio"] is not None else "",
                r["target"],
                met,
            )
        )
    widths = [max(len(str(row[i])) for row in table) for i in range(len(head))]
    for k, row in enumerate(table):
        print(" | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))
        if k == 0:
            print("-+-".join("-" * w for w in widths))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mode", choices=["sqlite", "postgres", "both"], default="sqlite")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--events", type=int, default=5000, help="burst: events × 1 endpoint")
    p.add_argument("--fanout-events", type=int, default=1000)
    p.add_argument("--endpoints", type=int, default=10, help="fan-out and dead-endpoint width")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument(
        "--scenarios",
        default=",".join(ALL_SCENARIOS),
        help=f"comma list of {','.join(ALL_SCENARIOS)}",
    )
    p.add_argument("--skip-large-history", action="store_true")
    p.add_argument("--quick", action="store_true", help="small sizes, one run (~1 minute)")
    p.add_argument("--profile", action="store_true", help="py-spy each worker in throughput runs")
    p.add_argument(
        "--batch",
        type=int,
        default=100,
        help="burst/fan-out: events per emitting transaction (1 = one transaction each)",
    )
    p.add_argument("--no-peer", action="store_true", help="skip django-webhook runs")
    p.add_argument("--drain-timeout", type=float, default=300)
    a = p.parse_args()
    a.scenarios = [s.strip() for s in a.scenarios.split(",") if s.strip()]
    unknown = set(a.scenarios) - set(ALL_SCENARIOS)
    if unknown:
        p.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    a.request_emits, a.latency_emits, a.retry_events, a.ceiling_requests = 500, 50, 20, 3000
    a.quick_extra = ["peer"]
    if a.quick:
        a.runs, a.events, a.fanout_events = 1, 500, 100
        a.request_emits, a.latency_emits, a.retry_events, a.ceiling_requests = 200, 15, 5, 1000
        a.drain_timeout = min(a.drain_timeout, 60)
        a.scenarios = [x for x in a.scenarios if x != "dead"]
        a.skip_large_history = True
    if a.mode == "both":
        for mode in ("sqlite", "postgres"):
            argv = [x for x in sys.argv[1:] if x not in ("both",)]
            if "--mode" in argv:
                argv.remove("--mode")
            argv = [x for x in argv if not x.startswith("--mode=")]
            subprocess.run([PY, __file__, "--mode", mode, *argv], check=False)
        return

    RESULTS.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="webhooks-bench-"))
    try:
        bench = Bench(a, tmp)
        wrk = bench.receiver.wrk(3)
        print(
            f"receiver: nginx on 127.0.0.1:{bench.receiver.port}, wrk {fmt(wrk)} req/s", flush=True
        )
        runs = []
        for i in range(a.runs):
            print(f"run {i + 1}/{a.runs} ({a.mode}, {a.workers} workers)", flush=True)
            runs.append(bench.round())
        large = None
        if "large_history" in a.scenarios and not a.skip_large_history:
            large = bench.large_history()
        rows = summarize(a.mode, a.workers, runs, wrk)
        print_table(a.mode, rows, len(runs))
        if large is not None:
            print("\nlarge history (bench/large_history.py):\n" + large.get("output", ""))
        elapsed = time.monotonic() - started
        print(f"\nbench took {elapsed:.0f} s")
        out = RESULTS / f"{a.mode}-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}.json"
        out.write_text(
            json.dumps(
                {
                    "mode": a.mode,
                    "config": {k: v for k, v in vars(a).items()},
                    "wrk_req_s": wrk,
                    "runs": runs,
                    "table": rows,
                    "large_history": large,
                    "elapsed_s": elapsed,
                    "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
                },
                indent=1,
                default=str,
            )
        )
        print(f"wrote {out.relative_to(ROOT)}")
    finally:
        _cleanup()
        bench_dead = locals().get("bench")
        if bench_dead is not None:
            bench_dead.dead.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
