"""Prometheus metrics, opt-in: ``path("metrics/", include("webhooks_app.metrics.urls"))``.

Every number is read from the database when Prometheus scrapes (a custom collector), so
it is right however many ``qcluster`` processes on however many hosts do the sending:
no per-process counters to add up, nothing lost when a worker is recycled. Needs the
``metrics`` extra (``prometheus-client``).
"""
