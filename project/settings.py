"""Settings of the demo site, also used by the tests; everything comes from the environment.

DATABASE_URL (default: a SQLite file under var/, in WAL mode with IMMEDIATE transactions)
and REDIS_URL (set: django-q2's Redis broker; unset: its ORM broker) choose the backends.
"""

import os
from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(environ.Env().str("WEBHOOKS_VAR_DIR", default=str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)

env = environ.Env()
if (BASE_DIR / ".env").exists():
    environ.Env.read_env(BASE_DIR / ".env")

# The default key is for the local demo only; any real deployment sets SECRET_KEY.
SECRET_KEY = env("SECRET_KEY", default="demo-only-not-secret-3f9c1e7a2b8d4c6e9f0a1b2c3d4e5f60")
DEBUG = env.bool("DEBUG", default=True)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "django_q",
    "webhooks_app",
    "project.receiver",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "project.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]
WSGI_APPLICATION = "project.wsgi.application"

DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'demo.sqlite3'}"),
}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # WAL lets readers run beside the writer; IMMEDIATE takes the write lock up front so
    # a transaction never fails half-way with "database is locked" (notes/django-q2.md).
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
    # A file, not :memory:, so a qcluster subprocess can share the test database.
    DATABASES["default"]["TEST"] = {
        # One file per test run, so concurrent runs never share (or delete) a database.
        "NAME": env("TEST_SQLITE_PATH", default=str(VAR_DIR / f"test-{os.getpid()}.sqlite3"))
    }
# Persistent connections: django-q2's ORM broker calls close_old_connections() on every
# enqueue, which with CONN_MAX_AGE=0 closes (and the next query reopens) the caller's
# connection after each on-commit wake-up.
DATABASES["default"].setdefault("CONN_MAX_AGE", 60)
DATABASES["default"].setdefault("CONN_HEALTH_CHECKS", True)

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_PASSWORD_VALIDATORS = []
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "static"
LOGIN_URL = "/accounts/login/"
EMAIL_BACKEND = env("EMAIL_BACKEND", default="django.core.mail.backends.console.EmailBackend")
# For EMAIL_BACKEND=django.core.mail.backends.filebased.EmailBackend (cluster tests read it).
EMAIL_FILE_PATH = env("EMAIL_FILE_PATH", default=str(VAR_DIR / "mail"))
# Failure notices are sent from the workers' sender threads: never let SMTP hang them.
EMAIL_TIMEOUT = env.int("EMAIL_TIMEOUT", default=10)

REDIS_URL = env("REDIS_URL", default="")
Q_CLUSTER = {
    "name": env("Q_CLUSTER_NAME", default="webhooks_app"),
    "workers": env.int("Q_WORKERS", default=2),
    "timeout": 60,
    "retry": 120,
    # Wake-up tasks carry no result worth keeping; Delivery rows are the record.
    "save_limit": -1,
    "ack_failures": True,
    "recycle": 100_000,
    "poll": 0.1,
    "catch_up": False,
    "label": "Task queue",
}
if REDIS_URL:
    # A Redis that does not answer must not hang a request for the OS connect timeout.
    if "socket_connect_timeout" not in REDIS_URL:
        REDIS_URL += ("&" if "?" in REDIS_URL else "?") + "socket_connect_timeout=2"
    Q_CLUSTER["redis"] = REDIS_URL
else:
    Q_CLUSTER["orm"] = "default"

WEBHOOKS_APP = {
    "EVENT_TYPES": {
        "user.created": {
            "description": "A user signed up.",
            "example": {"id": 42, "username": "mike", "email": "mike@example.com"},
        },
        "user.updated": {
            "description": "A user's profile changed.",
            "example": {"id": 42, "username": "mike", "email": "mike@example.com"},
        },
        "user.deleted": {"description": "A user was removed.", "example": {"id": 42}},
        "payment.succeeded": {
            "description": "A payment went through.",
            "example": {"amount": 1999, "currency": "usd", "customer": "cus_123"},
        },
        "subscription.cancelled": {
            "description": "A subscription was cancelled.",
            "example": {"subscription": "sub_123", "reason": "too expensive"},
        },
        "conversation.ended": {
            "description": "A conversation had 30 minutes without activity.",
            "example": {"conversation": "conv_123", "messages": 12},
        },
    },
    # The demo and the tests deliver to a receiver on this machine over plain http;
    # the app's own defaults refuse both.
    "ALLOW_HTTP": env.bool("WEBHOOKS_ALLOW_HTTP", default=True),
    "ALLOWED_NETWORKS": env.list("WEBHOOKS_ALLOWED_NETWORKS", default=["127.0.0.0/8", "::1/128"]),
    "RETRY_SCHEDULE": [
        float(s) for s in env.list("WEBHOOKS_RETRY_SCHEDULE", default=["0", "2", "4", "8", "16"])
    ],
    "TIMEOUT": env.float("WEBHOOKS_TIMEOUT", default=30.0),
    "LEASE_SECONDS": env.float("WEBHOOKS_LEASE_SECONDS", default=6.0),
    "POLL_INTERVAL": env.float("WEBHOOKS_POLL_INTERVAL", default=0.5),
    "SENDER_THREADS": env.int("WEBHOOKS_SENDER_THREADS", default=8),
    "AUTO_DISABLE_AFTER": env.int("WEBHOOKS_AUTO_DISABLE_AFTER", default=0),
    "PROXY": env("WEBHOOKS_PROXY", default=None),
    "BREAKER_THRESHOLD": env.int("WEBHOOKS_BREAKER_THRESHOLD", default=10),
    "BREAKER_COOLDOWN": env.float("WEBHOOKS_BREAKER_COOLDOWN", default=30.0),
    "BREAKER_DISABLE_AFTER": env.float("WEBHOOKS_BREAKER_DISABLE_AFTER", default=0),
    "NOTIFY_INTERVAL": env.float("WEBHOOKS_NOTIFY_INTERVAL", default=3600.0),
    "ROUTING_LISTEN": env.bool("WEBHOOKS_ROUTING_LISTEN", default=True),
    # The customer portal (/webhooks/) inside the demo site's own layout and menu.
    "PORTAL_BASE_TEMPLATE": "site_base.html",
    "MODEL_EVENTS": {
        "auth.User": {
            "created": "user.created",
            "updated": "user.updated",
            "deleted": "user.deleted",
            "fields": ["pk", "username", "email"],
        }
    },
}

# Plan checks (WEBHOOKS_APP["FEATURE_GATE"] / ["TENANT_GATE"]); the cluster tests set them.
for _gate in ("FEATURE_GATE", "TENANT_GATE"):
    if env(f"WEBHOOKS_{_gate}", default=""):
        WEBHOOKS_APP[_gate] = env(f"WEBHOOKS_{_gate}")

# The demo runs single-tenant (./dev demo sets this) so the admin user's API calls see the
# seeded endpoint; the tests use the app's default resolver (one tenant per user).
if env("WEBHOOKS_TENANT_RESOLVER", default=""):
    WEBHOOKS_APP["TENANT_RESOLVER"] = env("WEBHOOKS_TENANT_RESOLVER")

REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        "rest_framework.authentication.BasicAuthentication",
    ],
}
SPECTACULAR_SETTINGS = {
    "TITLE": "webhooks_app API",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "webhooks_app": {
            "handlers": ["console"],
            "level": env("WEBHOOKS_LOG_LEVEL", default="INFO"),
        },
    },
}
