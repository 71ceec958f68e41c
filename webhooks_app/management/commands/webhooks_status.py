"""manage.py webhooks_status: backlog, oldest due, failing and disabled endpoints, workers."""

from __future__ import annotations

from django.core.management.base import BaseCommand
from django.utils import timezone

from webhooks_app import queries


def _clusters() -> list:
    """django-q2's own status of each running cluster (host, pid, workers), if any."""
    try:
        from django_q.brokers import get_broker
        from django_q.status import Stat

        return list(Stat.get_all(broker=get_broker()))
    except Exception:  # the broker is down: the rest of the report still helps
        return []


class Command(BaseCommand):
    help = "Show the delivery backlog, failing and disabled endpoints and worker activity."

    def handle(self, **options):
        now = timezone.now()
        out = self.stdout.write
        b = queries.backlog(now)
        oldest = f"{(now - b.oldest_due).total_seconds():.1f} s ago" if b.oldest_due else "-"
        out(f"Backlog: {b.due} due now, oldest due {oldest}")
        out(f"In flight: {b.in_flight} deliveries in {b.claims} claim(s)")
        recent = queries.recent_activity(5, now)
        out(
            "Last 5 min: "
            + (", ".join(f"{n} {status}" for status, n in sorted(recent.items())) or "no attempts")
        )
        failing = queries.failing_endpoints()
        out(f"Failing endpoints: {len(failing)}")
        for ep in failing:
            out(f"  #{ep.pk} {ep}: {ep.consecutive_failures} failed deliveries in a row")
        disabled = queries.disabled_endpoints()
        out(f"Disabled endpoints: {len(disabled)}")
        for ep in disabled:
            out(f"  #{ep.pk} {ep}: {ep.disabled_reason or 'switched off'}")
        workers = queries.in_flight_by_worker(now)
        out(f"Workers sending now: {len(workers)}")
        for tag, n in sorted(workers.items()):
            pid, _, host = tag.partition(".")
            try:
                label = f"pid {int(pid, 16)} on host {host}"
            except ValueError:
                label = tag
            out(f"  {label}: {n} deliveries in flight")
        clusters = _clusters()
        # django-q2 keeps these in the broker (Redis) or Django's cache: with the ORM broker
        # and a per-process cache, other processes' clusters are not visible here.
        out(f"Clusters reporting to django-q2: {len(clusters)}")
        for c in clusters:
            uptime = f"{(now - c.tob).total_seconds():.0f} s" if getattr(c, "tob", None) else "-"
            out(
                f"  {c.host} pid {c.pid} {c.status}: {len(c.workers)} worker(s) "
                f"{' '.join(map(str, c.workers))}, up {uptime}, "
                f"{c.task_q_size} task(s) queued in the cluster"
            )
