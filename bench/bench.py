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
import contextlib
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
# Names on the shared Redis and PostgreSQL; override them where other people's test runs
# use the defaults. Ours and the peer's never run at the same time, so one Redis db can
# serve both (each is flushed before use).
REDIS_DB_OURS = int(os.environ.get("BENCH_REDIS_DB", "5"))
REDIS_DB_PEER = int(os.environ.get("BENCH_REDIS_DB_PEER", "6"))
PG_DB = os.environ.get("BENCH_PG_DB", "webhooks_bench")
PG_DB_PEER = os.environ.get("BENCH_PG_DB_PEER", f"{PG_DB}_peer")
CLUSTER_NAME = os.environ.get("BENCH_CLUSTER_NAME", "webhooks_bench")
RETRY_SCHEDULE = [0.0, 1.0, 2.0, 4.0]
DEAD_TIMEOUT = 5.0
ALL_SCENARIOS = [
    "burst",
    "fanout",
    "memory",
    "request",
    "latency",
    "retry",
    "dead",
    "large_history",
]
LARGE_EVENT_BYTES = 256 * 1024

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


def _tail_share(totals: list[float], parts: list[float], q: float = 99) -> float | None:
    """Of the samples whose total is at or above its ``q``th percentile, the fraction of
    their summed time that ``parts`` (a phase of each sample) accounts for."""
    if not totals:
        return None
    cut = pct(totals, q)
    tail = [(t, p) for t, p in zip(totals, parts, strict=True) if t >= cut]
    whole = sum(t for t, _ in tail)
    return sum(p for _, p in tail) / whole if whole else None


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
        return sum(self.cpu_by_pid().values())

    def cpu_by_pid(self) -> dict[int, float]:
        out = {}
        for pid in [self.proc.pid, *descendants(self.proc.pid)]:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                out[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            except (OSError, IndexError, ValueError):
                continue
        return out

    def worker_pids(self) -> list[int]:
        return [
            p
            for p in descendants(self.proc.pid)
            if int(proc_status(p).get("Threads", "1").strip() or 1) >= 4
        ]

    def stop(self) -> None:
        stop(self.proc, wait=DEAD_TIMEOUT + 15)


# ---------------------------------------------------------------------------------------
# The request path's bare save: a model of the bench's own, no webhook bound to it.
# ---------------------------------------------------------------------------------------
_bench_customer = None


def bench_customer_model():
    """A Customer-like model (the peer site saves the same two columns), defined here so
    the demo project needs no bench-only table; created by ensure_bench_customer_table()."""
    global _bench_customer
    if _bench_customer is None:
        from django.db import models

        class BenchCustomer(models.Model):
            username = models.CharField(max_length=100)
            email = models.CharField(max_length=200)

            class Meta:
                app_label = "receiver"
                db_table = "bench_customer"

            def __str__(self) -> str:
                return self.username

        _bench_customer = BenchCustomer
    return _bench_customer


def ensure_bench_customer_table() -> None:
    from django.db import connection

    model = bench_customer_model()
    if model._meta.db_table not in connection.introspection.table_names():
        with connection.schema_editor() as editor:
            editor.create_model(model)


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
        self.profiles: dict[str, list[Path]] = {}  # scenario -> py-spy output files
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
            "Q_CLUSTER_NAME": CLUSTER_NAME,
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
        if self.mode == "postgres" or os.environ.get("BENCH_SQLITE_REDIS"):
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

        tables = [
            m._meta.db_table for m in (DeliveryAttempt, Delivery, Event, Subscription, Endpoint)
        ]
        if "bench_customer" in connection.introspection.table_names():
            tables.append("bench_customer")
        with connection.cursor() as c:
            for table in tables:
                c.execute(f"DELETE FROM {table}")
        get_broker().purge_queue()
        if self.mode == "postgres":
            flush_redis(REDIS_DB_OURS)

    def endpoints(self, urls: list[str], events=("user.created",)) -> list:
        from webhooks_app import services

        return [
            services.create_endpoint(url=u, events=list(events), name=f"bench {i}")[0]
            for i, u in enumerate(urls)
        ]

    def start_cluster(self, **env: str) -> Cluster:
        return Cluster({**self.env, **env}, self.tmp, self.args.workers)

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
            seen: set[int] = set()
            # Each worker as soon as its sender threads exist (they start with its first
            # chunk), so that every worker is recorded, not only the first one busy.
            while len(seen) < cluster.workers and time.monotonic() < deadline:
                time.sleep(0.1)
                for pid in cluster.worker_pids():
                    if pid in seen:
                        continue
                    seen.add(pid)
                    out = RESULTS / f"profile-{self.mode}-{name}-{pid}.txt"
                    self.profiles.setdefault(name, []).append(out)
                    spawn(
                        [spy, "record", "-f", "raw", "-o", str(out), "--pid", str(pid)]
                        + ["-d", str(seconds), "-r", "100", "--nonblocking"]
                        + os.environ.get("BENCH_PYSPY_ARGS", "").split(),
                        log=RESULTS / "py-spy.log",
                    )

        threading.Thread(target=attach, daemon=True).start()

    def profile_self(self, name: str) -> subprocess.Popen | None:
        """With --profile: py-spy records this process (the emitting site) until stopped
        with SIGINT; collapsed stacks in ``bench/results/profile-<mode>-<name>-<pid>.txt``."""
        spy = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
        if not self.args.profile or not os.path.exists(spy):
            return None
        out = RESULTS / f"profile-{self.mode}-{name}-{os.getpid()}-{self.run_no}.txt"
        self.profiles.setdefault(name, []).append(out)
        p = spawn(
            [spy, "record", "-f", "raw", "-o", str(out), "--pid", str(os.getpid())]
            + ["-r", "200", "--nonblocking"]
            + os.environ.get("BENCH_PYSPY_ARGS", "").split(),
            log=RESULTS / "py-spy.log",
        )
        time.sleep(1.0)  # py-spy attaches
        return p

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
            done, t0, cpu0 = 0, time.perf_counter(), time.thread_time()
            while done < n and time.perf_counter() - t0 < 10:
                r = (s or requests).post(url, data=body, headers=headers, timeout=5)
                r.raise_for_status()
                done += 1
            out[name] = done / (time.perf_counter() - t0)
            # The client's own CPU per request: what a delivery's CPU is compared with.
            out[f"{name}_cpu_ms"] = 1000 * (time.thread_time() - cpu0) / max(1, done)
        return out

    @contextlib.contextmanager
    def peer_worker(self, name: str):
        """django-webhook's Celery worker (prefork, ``-c <workers>``) while the block runs."""
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
            yield worker
        finally:
            stop(worker, wait=15)

    def peer(self, events: int, n_endpoints: int, name: str) -> dict | None:
        """django-webhook: same deliveries, same receiver, celery -c <workers>, Redis."""
        if not self.peer_ok or self.args.no_peer:
            return None
        flush_redis(REDIS_DB_PEER)
        with self.peer_worker(name):
            prefix = f"/{self.tag}/peer-{name}/"
            urls = [self.receiver.url(f"{prefix}e{k}") for k in range(n_endpoints)]
            info = self._peer_drive(events, urls, self.args.batch)
            if info is None:
                return None
            total = events * n_endpoints
            got = self.receiver.wait_count(prefix, total, timeout=self.args.drain_timeout)
            end = max(line[0] for line in got) if got else time.time()
            return {
                "deliveries": len(got),
                "expected": total,
                "rate": len(got) / (end - info["t_first"]),
            }

    def _peer_drive(
        self, events: int, urls: list[str], batch: int, spacing: float = 0.0, request=False
    ):
        drv = subprocess.run(
            [PEER_VENV / "bin" / "python", "drive.py", "--events", str(events)]
            + ["--urls", ",".join(urls), "--batch", str(batch), "--spacing", str(spacing)]
            + (["--request"] if request else []),
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
            machine0, cpu0 = machine_busy(), cluster.cpu_by_pid()
            t_first = time.time()
            for start in range(0, events, batch):
                emit_s.append(self.emit_batch(start, min(batch, events - start)))
            t_emitted = time.time()
            total = events * healthy
            got = self.receiver.wait_count(prefix, total, timeout=self.args.drain_timeout)
            end = max(line[0] for line in got) if got else time.time()
            peaks = cluster.worker_peaks_mb()
            cpu1 = cluster.cpu_by_pid()
            cluster_cpu = sum(cpu1.values()) - sum(cpu0.values())
            # Split: the worker processes (those with sender threads by now), and
            # django-q2's other processes (main, sentinel, pusher, monitor).
            workers = set(cluster.worker_pids())
            worker_cpu = sum(v - cpu0.get(p, 0.0) for p, v in cpu1.items() if p in workers)
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
            "worker_cpu_ms_per_delivery": 1000 * worker_cpu / max(1, len(got)),
            "other_cpu_ms_per_delivery": 1000 * (cluster_cpu - worker_cpu) / max(1, len(got)),
            "machine_busy_fraction": (machine1[0] - machine0[0])
            / max(1e-9, machine1[1] - machine0[1]),
        }

    def memory(self, events: int) -> dict:
        """Peak RSS of each worker while it delivers ``events`` events of 256 KiB each."""
        from django.db import transaction

        from webhooks_app import emit

        self.reset()
        prefix = f"/{self.tag}/memory/"
        self.endpoints([self.receiver.url(f"{prefix}e0")])
        # Printable and incompressible enough; the whole body stays within 256 KiB (the
        # default MAX_PAYLOAD_BYTES), the envelope taking the last ~300 bytes.
        blob = "".join(
            random.choices("abcdefghijklmnopqrstuvwxyz0123456789", k=LARGE_EVENT_BYTES - 512)
        )
        # A backlog (as after an outage of the receiver or of the cluster): the worst
        # case for a claim, which then finds every event due at once.
        for start in range(0, events, 10):
            with transaction.atomic():
                for i in range(start, min(start + 10, events)):
                    emit("user.created", {"id": i, "blob": blob})
        cluster = self.start_cluster()
        try:
            baseline = cluster.worker_peaks_mb()
            t_first = time.time()
            got = self.receiver.wait_count(prefix, events, timeout=self.args.drain_timeout)
            end = max(line[0] for line in got) if got else time.time()
            peaks = cluster.worker_peaks_mb()
        finally:
            cluster.stop()
        return {
            "deliveries": len(got),
            "expected": events,
            "rate": len(got) / (end - t_first),
            "event_bytes": LARGE_EVENT_BYTES,
            "worker_peak_rss_mb": peaks,
            "worker_rss_before_mb": baseline,
        }

    # The request path: a view's transaction with a model save, with and without emit().
    REQUEST_KINDS = (
        ("bare", None),  # the save alone: the reference
        ("none", "user.deleted"),  # emit() of a type no endpoint subscribes to
        ("one", "user.created"),  # 1 subscribed endpoint
        ("ten", "user.updated"),  # 10 subscribed endpoints
    )

    def _request_endpoints(self, prefix: str) -> None:
        self.endpoints([self.receiver.url(f"{prefix}one")], events=["user.created"])
        self.endpoints(
            [self.receiver.url(f"{prefix}ten{k}") for k in range(10)], events=["user.updated"]
        )

    def request_sample(self, i: int, event_type: str | None) -> tuple[float, float, float]:
        """One view-like transaction: (whole block, the emit() call, BEGIN) in seconds. The
        block is what the view pays: BEGIN, the save, emit(), COMMIT, the on-commit wake.
        On SQLite (IMMEDIATE) BEGIN is where the view waits for the write lock."""
        from django.db import transaction

        from webhooks_app import emit

        model = bench_customer_model()
        t0 = time.perf_counter()
        with transaction.atomic():
            tb = time.perf_counter()
            model.objects.create(username=f"user{i}", email=f"user{i}@example.com")
            t1 = time.perf_counter()
            if event_type:
                emit(
                    event_type,
                    {"id": i, "username": f"user{i}", "email": f"user{i}@example.com"},
                )
            t2 = time.perf_counter()
        return time.perf_counter() - t0, t2 - t1, tb - t0

    def request_path(self) -> dict:
        """Save vs save + emit() in one view transaction each, the kinds interleaved so
        that the machine's drift hits all alike: first with no cluster running (key
        "idle", back to back), then while the cluster delivers every event 2 ms after it
        is emitted ("draining"); django-webhook the same way on the same database kind."""
        prefix = f"/{self.tag}/request/"

        def measure(spacing: float, profile_name: str = "") -> dict:
            for i in range(20):  # warm-up
                for _, event_type in self.REQUEST_KINDS:
                    self.request_sample(i, event_type)
            spy = self.profile_self(profile_name) if profile_name else None
            total: dict[str, list[float]] = {k: [] for k, _ in self.REQUEST_KINDS}
            call: dict[str, list[float]] = {k: [] for k, _ in self.REQUEST_KINDS}
            begin: dict[str, list[float]] = {k: [] for k, _ in self.REQUEST_KINDS}
            # A new order of the kinds each round: in a fixed order each kind always
            # came the same time after the one before it (e.g. the bare save right after
            # the 10-endpoint emit's wake-up), so the workers' bursts of work fell on
            # some kinds more than on others.
            rng = random.Random(1234)
            order = list(self.REQUEST_KINDS)
            try:
                for i in range(self.args.request_emits):
                    rng.shuffle(order)
                    for kind, event_type in order:
                        t, e, b = self.request_sample(i, event_type)
                        total[kind].append(t * 1000)
                        call[kind].append(e * 1000)
                        begin[kind].append(b * 1000)
                        if spacing:
                            time.sleep(spacing)
            finally:
                if spy is not None:
                    stop(spy, sig=signal.SIGINT, wait=20)
            return {
                kind: {
                    "median_ms": statistics.median(total[kind]),
                    "p99_ms": pct(total[kind], 99),
                    "emit_median_ms": statistics.median(call[kind]),
                    "emit_p99_ms": pct(call[kind], 99),
                    "begin_p99_ms": pct(begin[kind], 99),
                    # The share of the block's p99 tail (its slowest 1 %) spent in BEGIN.
                    "begin_share_of_tail": _tail_share(total[kind], begin[kind]),
                }
                for kind, _ in self.REQUEST_KINDS
            }

        ensure_bench_customer_table()
        self.reset()
        self._request_endpoints(prefix)
        # Idle: back to back, as in a busy web process. (Sleeping between emits lets this
        # VM's vCPU go idle, and the next emit then runs cold: about 2x slower measured.)
        out: dict = {"idle": measure(0, "emit")}
        self.reset()
        self._request_endpoints(prefix)
        cluster = self.start_cluster()
        try:
            time.sleep(0.5)
            out["draining"] = measure(0.002)  # the cluster keeps up
        finally:
            cluster.stop()
        out["peer"] = self.peer_request()
        return out

    def peer_request(self) -> dict | None:
        """django-webhook's request path: bare save vs save + delay() to 1 webhook, with
        its Celery worker delivering meanwhile, then with no worker running."""
        if not self.peer_ok or self.args.no_peer:
            return None
        url = self.receiver.url(f"/{self.tag}/peer-request/e0")
        flush_redis(REDIS_DB_PEER)
        out = {}
        with self.peer_worker("request"):
            out["draining"] = self._peer_drive(
                self.args.request_emits, [url], 1, spacing=0.002, request=True
            )
        out["idle"] = self._peer_drive(self.args.request_emits, [url], 1, request=True)
        flush_redis(REDIS_DB_PEER)  # the idle run's tasks: nobody will run them
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
        # Retry timing needs every retry attempted: no circuit breaker (it would hold the
        # endpoint's deliveries after 10 failures in a row, which is its job).
        cluster = self.start_cluster(WEBHOOKS_BREAKER_THRESHOLD="0")
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
        if "fanout" in sc and not a.quick and not a.no_peer_fanout:
            step("peer_fanout", self.peer, a.fanout_events, a.endpoints, "fanout")
        if "dead" in sc:
            step("dead", self.throughput, "dead", a.fanout_events, a.endpoints - 1, 1)
        if "memory" in sc:
            step("memory", self.memory, a.large_events)
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
        cpu_ratio = per_run(
            lambda r, k=key: r[k]["cluster_cpu_ms_per_delivery"] / r["ceiling"]["session_cpu_ms"]
        )
        add(
            label,
            "cluster CPU per delivery (all qcluster processes)",
            per_run(lambda r, k=key: r[k]["cluster_cpu_ms_per_delivery"]),
            "ms",
            per_run(lambda r: r["ceiling"]["session_cpu_ms"]),
            "CPU ms per bare Session request",
            cpu_ratio,
            "≤ 1.0×",
            cpu_ratio is not None and cpu_ratio <= 1.0,
        )
        add(
            label,
            "  of which worker processes / django-q2's others",
            per_run(lambda r, k=key: r[k]["worker_cpu_ms_per_delivery"]),
            "ms",
            per_run(lambda r, k=key: r[k]["other_cpu_ms_per_delivery"]),
            "ms others",
        )
        add(
            label,
            "  the same against the Session request's wall time",
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
        add("memory", "peak RSS per worker during burst (VmHWM, max)", rss, "MB")
    if any("memory" in r for r in runs):
        rss = per_run(lambda r: max(r["memory"]["worker_peak_rss_mb"]))
        complete = all(g(r, "memory", "deliveries") == g(r, "memory", "expected") for r in runs)
        add(
            "memory",
            "peak RSS per worker, 256 KiB events (VmHWM, max)"
            + ("" if complete else " (INCOMPLETE)"),
            rss,
            "MB",
            120,
            "goal",
            rss / 120 if rss else None,
            "≤ 120 MB",
            rss is not None and rss <= 120,
        )
        add(
            "memory",
            "deliveries/s of 256 KiB events",
            per_run(lambda r: r["memory"]["rate"]),
            "/s",
        )
    if any("request" in r for r in runs):
        request_rows(add, per_run)
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


REQUEST_LABELS = {
    "idle": "no cluster, back to back",
    "draining": "cluster draining meanwhile",
}


def request_rows(add, per_run) -> None:
    """The request path: each figure beside django-webhook's in the same run."""
    for mode, label in REQUEST_LABELS.items():

        def ours(kind, stat, mode=mode):
            return per_run(lambda r: r["request"][mode][kind][stat])

        def peer(kind, stat, mode=mode):
            return per_run(lambda r: r["request"]["peer"][mode][kind][stat])

        def added(kind, stat, mode=mode):
            return per_run(
                lambda r: r["request"][mode][kind][stat] - r["request"][mode]["bare"][stat]
            )

        def peer_added(stat, mode=mode):
            return per_run(
                lambda r: (
                    r["request"]["peer"][mode]["hook"][stat]
                    - r["request"]["peer"][mode]["bare"][stat]
                )
            )

        sc = f"request ({mode})"
        add(
            sc,
            f"bare save, median ({label})",
            ours("bare", "median_ms"),
            "ms",
            peer("bare", "median_ms"),
            "django-webhook's bare save",
        )
        add(
            sc,
            "bare save, p99",
            ours("bare", "p99_ms"),
            "ms",
            peer("bare", "p99_ms"),
            "django-webhook's bare save",
        )
        add(
            sc,
            "bare save: BEGIN p99, share of the slowest 1 % in BEGIN",
            ours("bare", "begin_p99_ms"),
            "ms",
            ours("bare", "begin_share_of_tail"),
            "share (SQLite: the write-lock wait)",
        )
        for stat, word in (("median_ms", "median"), ("p99_ms", "p99")):
            value, ref = ours("one", stat), peer("hook", stat)
            add(
                sc,
                f"save + emit, 1 endpoint, {word}",
                value,
                "ms",
                ref,
                "django-webhook save + enqueue",
                value / ref if value and ref else None,
            )
        for stat, word in (("median_ms", "median"), ("p99_ms", "p99")):
            value, ref = added("one", stat), peer_added(stat)
            ok = value <= ref if value is not None and ref is not None else None
            target = "≤ django-webhook's"
            if value is not None and value < 0:
                # The bare save's own tail was the larger one (on SQLite while draining:
                # the write-lock wait): a difference of p99s then decides nothing.
                ok, target = None, "≤ django-webhook's (undecided: < 0)"
            add(
                sc,
                f"what emit adds to the bare save, 1 endpoint, {word}",
                value,
                "ms",
                ref,
                "what django-webhook's enqueue adds",
                value / ref if value is not None and ref else None,
                target,
                ok,
            )
        for stat, word in (("median_ms", "median"), ("p99_ms", "p99")):
            value = added("none", stat)
            add(
                sc,
                f"what emit adds, no endpoint subscribed, {word}",
                value,
                "ms",
                0.15 if word == "median" else None,
                "goal" if word == "median" else "",
                value / 0.15 if value is not None and word == "median" else None,
                "≤ 0.15 ms" if word == "median" else "",
                value <= 0.15 if value is not None and word == "median" else None,
            )
        for stat, word in (("median_ms", "median"), ("p99_ms", "p99")):
            value, ref = added("ten", stat), peer_added(stat)
            add(
                sc,
                f"what emit adds, 10 endpoints, {word}",
                value,
                "ms",
                ref,
                "django-webhook's enqueue (1 webhook)",
            )
        add(
            sc,
            "emit() call alone, 1 endpoint, median / p99",
            ours("one", "emit_median_ms"),
            "ms",
            ours("one", "emit_p99_ms"),
            "p99",
        )
        add(
            sc,
            "emit() call alone, 10 endpoints, median / p99",
            ours("ten", "emit_median_ms"),
            "ms",
            ours("ten", "emit_p99_ms"),
            "p99",
        )


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
    p.add_argument(
        "--no-peer-fanout", action="store_true", help="skip django-webhook's fan-out (slow)"
    )
    p.add_argument("--drain-timeout", type=float, default=300)
    a = p.parse_args()
    a.scenarios = [s.strip() for s in a.scenarios.split(",") if s.strip()]
    unknown = set(a.scenarios) - set(ALL_SCENARIOS)
    if unknown:
        p.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    a.request_emits, a.latency_emits, a.retry_events, a.ceiling_requests = 500, 50, 20, 3000
    a.large_events = 600
    a.quick_extra = ["peer"]
    if a.quick:
        a.runs, a.events, a.fanout_events = 1, 500, 100
        a.request_emits, a.latency_emits, a.retry_events, a.ceiling_requests = 200, 15, 5, 1000
        a.large_events = 400
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
        profiles = {}
        if bench.profiles:
            from profile_top import top

            time.sleep(2)  # the last py-spy writes its file
            for name, files in bench.profiles.items():
                found = [f for f in files if f.exists()]
                profiles[name] = top(found, 20) if found else "(no profile written)"
                print(f"\nprofile {name} ({', '.join(f.name for f in found)}):\n{profiles[name]}")
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
                    "profiles": profiles,
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
