"""Emit events through django-webhook (model post_save -> Celery task per webhook).

Run in the peer's virtualenv with the peer site's settings. Creates one Webhook per URL
subscribed to ``peersite.Customer/create``, then creates ``--events`` customers, each in
its own transaction like a view would, and prints one JSON line: the wall-clock time of
the first emit and the per-emit durations. The receiver's access log tells the rest.
"""

import argparse
import json
import os
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "peersite.settings")

import django  # noqa: E402

django.setup()

from django.db import transaction  # noqa: E402
from django_webhook.models import (  # noqa: E402
    Webhook,
    WebhookEvent,
    WebhookSecret,
    WebhookTopic,
)
from peersite.models import Customer, Plain  # noqa: E402


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (the same as bench.py's)."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q / 100 * len(s) + 0.5)) - 1))]


def request_path(n: int, spacing: float) -> dict:
    """One create per transaction, as a view does, timed around the whole
    ``transaction.atomic()`` block (BEGIN, INSERT, post_save -> delay(), COMMIT),
    interleaved with the bare save of a model no webhook listens to."""
    samples: dict[str, list[float]] = {"bare": [], "hook": []}
    # A new order each round, as bench.py's own request path does (a fixed order puts
    # the bare save always right after the worker's burst for the previous hook).
    rng = random.Random(1234)
    order = [("bare", Plain), ("hook", Customer)]
    for i in range(n + 20):  # the first 20 rounds warm up
        rng.shuffle(order)
        for kind, model in order:
            t0 = time.perf_counter()
            with transaction.atomic():
                model.objects.create(username=f"user{i}", email=f"user{i}@example.com")
            if i >= 20:
                samples[kind].append((time.perf_counter() - t0) * 1000)
            if spacing:
                time.sleep(spacing)
    return {
        k: {"median_ms": statistics.median(v), "p99_ms": pct(v, 99), "n": len(v)}
        for k, v in samples.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--urls", required=True, help="comma-separated receiver URLs")
    parser.add_argument("--batch", type=int, default=1, help="creates per transaction")
    parser.add_argument("--spacing", type=float, default=0.0, help="seconds between batches")
    parser.add_argument(
        "--request", action="store_true", help="request path: bare save vs save + enqueue"
    )
    args = parser.parse_args()

    WebhookEvent.objects.all().delete()
    Webhook.objects.all().delete()
    Customer.objects.all().delete()
    topic = WebhookTopic.objects.get(name="peersite.Customer/create")
    for url in args.urls.split(","):
        hook = Webhook.objects.create(url=url)
        hook.topics.set([topic])
        WebhookSecret.objects.create(webhook=hook, token="bench-secret-0123456789")

    if args.request:
        Plain.objects.all().delete()
        print(json.dumps(request_path(args.events, args.spacing)))
        return

    durations = []
    t_first = time.time()
    for start in range(0, args.events, args.batch):
        with transaction.atomic():
            # Timed inside the transaction, as the bench times emit(): the view's BEGIN
            # and COMMIT are not the webhook library's cost.
            t0 = time.perf_counter()
            for i in range(start, min(start + args.batch, args.events)):
                Customer.objects.create(username=f"user{i}", email=f"user{i}@example.com")
            durations.append(time.perf_counter() - t0)
        if args.spacing:
            time.sleep(args.spacing)
    t_last = time.time()
    durations.sort()
    print(
        json.dumps(
            {
                "t_first": t_first,
                "t_last": t_last,
                "emit_median_ms": statistics.median(durations) * 1000 / args.batch,
                "emit_p99_ms": durations[max(0, int(len(durations) * 0.99) - 1)]
                * 1000
                / args.batch,
            }
        )
    )


if __name__ == "__main__":
    main()
