"""A minimal Django site that sends webhooks with the PyPI package django-webhook."""

from .celery import app as celery_app

__all__ = ["celery_app"]
