"""Settings of the peer site; the benchmark passes the database and broker in env vars.

PEER_DATABASE: ``sqlite:/path/to/file`` or ``postgres:dbname`` (127.0.0.1, user postgres).
PEER_REDIS_URL: Celery's broker.
"""

import os

SECRET_KEY = "bench-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1"]
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django_webhook",
    "peersite",
]

_db = os.environ.get("PEER_DATABASE", "sqlite:/tmp/peer.sqlite3")
_kind, _, _name = _db.partition(":")
if _kind == "postgres":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": _name,
            "USER": "postgres",
            "HOST": "127.0.0.1",
            "PORT": "5432",
            "CONN_MAX_AGE": 60,
        }
    }
else:
    # Same SQLite tuning as webhooks_app's demo settings, so the comparison is fair.
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": _name,
            "OPTIONS": {
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
            },
        }
    }

CELERY_BROKER_URL = os.environ.get("PEER_REDIS_URL", "redis://127.0.0.1:6379/6")
CELERY_TASK_IGNORE_RESULT = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

# The package's documented setup: whitelist the models whose changes send webhooks.
DJANGO_WEBHOOK = {"MODELS": ["peersite.Customer"]}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "root": {"level": "ERROR"},
}
