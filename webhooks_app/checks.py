"""System checks (webhooks_app.E00x errors, W00x warnings)."""

from __future__ import annotations

import ipaddress

from django.apps import apps
from django.conf import settings
from django.core.checks import Error, Tags, Warning, register
from django.core.exceptions import FieldDoesNotExist

from .conf import DEFAULTS, app_settings


@register(Tags.compatibility)
def check_settings(app_configs=None, **kwargs):
    problems = []
    user = getattr(settings, "WEBHOOKS_APP", {}) or {}
    unknown = sorted(set(user) - set(DEFAULTS))
    if unknown:
        problems.append(
            Error(
                f"Unknown WEBHOOKS_APP setting(s): {', '.join(unknown)}.",
                hint=f"Known settings: {', '.join(sorted(DEFAULTS))}.",
                id="webhooks_app.E001",
            )
        )
    if "django_q" not in settings.INSTALLED_APPS:
        problems.append(
            Error(
                "webhooks_app sends through django-q2, which is not installed.",
                hint="Add 'django_q' to INSTALLED_APPS and configure Q_CLUSTER.",
                id="webhooks_app.E002",
            )
        )
    for label, binding in app_settings.MODEL_EVENTS.items():
        try:
            model = apps.get_model(label)
        except (LookupError, ValueError):
            problems.append(
                Error(
                    f"WEBHOOKS_APP['MODEL_EVENTS'] names {label!r}, not an installed model.",
                    hint="Use 'app_label.ModelName', e.g. 'auth.User'.",
                    id="webhooks_app.E003",
                )
            )
            continue
        for key in ("watch_fields", "ignore_fields"):
            for name in (binding or {}).get(key) or ():
                try:
                    model._meta.get_field(name)
                except FieldDoesNotExist:
                    problems.append(
                        Error(
                            f"WEBHOOKS_APP['MODEL_EVENTS'][{label!r}][{key!r}] names "
                            f"{name!r}, not a field of {label}.",
                            id="webhooks_app.E003",
                        )
                    )
    for net in app_settings.ALLOWED_NETWORKS:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            problems.append(
                Error(
                    f"WEBHOOKS_APP['ALLOWED_NETWORKS'] has {net!r}, which is not a network.",
                    hint="Use CIDR notation such as '127.0.0.0/8'.",
                    id="webhooks_app.E004",
                )
            )
    try:
        schedule = app_settings.RETRY_SCHEDULE
        if any(s < 0 for s in schedule):
            raise ValueError
    except Exception:
        problems.append(
            Error(
                "WEBHOOKS_APP['RETRY_SCHEDULE'] must be a non-empty list of seconds >= 0.",
                id="webhooks_app.E005",
            )
        )
    for name, info in app_settings.EVENT_TYPES.items():
        if not isinstance(name, str) or not name or len(name) > 100 or "*" in name:
            problems.append(
                Error(
                    f"Event type {name!r} must be text of 1-100 characters without '*' "
                    "(a '*' in a subscription is a wildcard).",
                    id="webhooks_app.E006",
                )
            )
        schema = (info or {}).get("schema") if isinstance(info, dict) else None
        if schema is not None:
            from django.core.exceptions import ImproperlyConfigured

            from .events import check_schema

            try:
                check_schema(str(name), schema)
            except ImproperlyConfigured as exc:
                problems.append(
                    Error(
                        f"WEBHOOKS_APP['EVENT_TYPES'][{name!r}]['schema'] is invalid: {exc}",
                        hint="Give a JSON Schema (https://json-schema.org), e.g. "
                        '{"type": "object", "required": ["id"]}.',
                        id="webhooks_app.E021",
                    )
                )
    from . import formats

    if app_settings.PAYLOAD_FORMAT not in formats.payload_formats():
        problems.append(
            Error(
                f"WEBHOOKS_APP['PAYLOAD_FORMAT'] is {app_settings.PAYLOAD_FORMAT!r}, not a "
                "payload format.",
                hint=f"Use one of {', '.join(formats.payload_formats())}, or register it with "
                "webhooks_app.formats.register_payload_format() in an AppConfig.ready().",
                id="webhooks_app.E007",
            )
        )
    q = getattr(settings, "Q_CLUSTER", {}) or {}
    timeout, retry = q.get("timeout"), q.get("retry")
    if timeout and retry and retry <= timeout:
        problems.append(
            Warning(
                "Q_CLUSTER['retry'] should exceed Q_CLUSTER['timeout'], or long tasks run twice.",
                id="webhooks_app.W001",
            )
        )
    for alias, db in settings.DATABASES.items():
        if db.get("ENGINE", "").endswith("sqlite3"):
            options = db.get("OPTIONS", {})
            if options.get("transaction_mode") != "IMMEDIATE":
                problems.append(
                    Warning(
                        f"DATABASES[{alias!r}] is SQLite without transaction_mode IMMEDIATE: "
                        "workers will hit 'database is locked'.",
                        hint="Set OPTIONS transaction_mode='IMMEDIATE', a timeout, and WAL "
                        "(init_command='PRAGMA journal_mode=WAL').",
                        id="webhooks_app.W002",
                    )
                )
    if not app_settings.ENCRYPTION_KEYS and not settings.DEBUG:
        problems.append(
            Warning(
                "WEBHOOKS_APP['ENCRYPTION_KEYS'] is not set: endpoint secrets and header "
                "values are encrypted with a key derived from SECRET_KEY.",
                hint="Set ENCRYPTION_KEYS (Fernet.generate_key()) so that changing "
                "SECRET_KEY cannot make them unreadable; keep the old SECRET_KEY in "
                "SECRET_KEY_FALLBACKS until `manage.py webhooks_rotate_keys` has run.",
                id="webhooks_app.W003",
            )
        )
    return problems


# Hooks named by dotted path: a typo should fail at startup, not on a customer's request
# or in a worker at send time.
HOOK_SETTINGS = ("TENANT_RESOLVER", "FEATURE_GATE", "TENANT_GATE", "PORTAL_PERMISSION")


@register(Tags.compatibility)
def check_hooks(app_configs=None, **kwargs):
    from django.utils.module_loading import import_string

    problems = []
    for name in HOOK_SETTINGS:
        path = getattr(app_settings, name)
        if not path:
            continue
        try:
            hook = import_string(path) if isinstance(path, str) else path
        except ImportError as exc:
            hook, why = None, f"cannot be imported ({exc})"
        else:
            why = "is not callable"
        if not callable(hook):
            problems.append(
                Error(
                    f"WEBHOOKS_APP[{name!r}] = {path!r} {why}.",
                    hint="Give the dotted path of a function, e.g. 'myapp.webhooks.has_plan'.",
                    id="webhooks_app.E020",
                )
            )
    return problems


@register(Tags.compatibility)
def check_operations(app_configs=None, **kwargs):
    """PROXY and RECOVER_RATE: a typo should fail at startup, not fail every delivery."""
    from django.core.exceptions import ImproperlyConfigured

    problems = []
    for name, check_id, hint in (
        ("PROXY", "webhooks_app.E030", "e.g. 'http://egress.internal:3128', or None."),
        ("RECOVER_RATE", "webhooks_app.E031", "e.g. '10/hour', or None for no limit."),
    ):
        try:
            getattr(app_settings, name)
        except (ImproperlyConfigured, ValueError, TypeError) as exc:
            problems.append(Error(str(exc), hint=hint, id=check_id))
    return problems


@register(Tags.compatibility)
def check_database(app_configs=None, **kwargs):
    """The engine's claim and record are SQL written for SQLite and PostgreSQL (reading
    the vendor opens no connection)."""
    from django.db import connections, router

    from .models import Delivery

    db = router.db_for_write(Delivery)
    vendor = connections[db].vendor
    if vendor in ("sqlite", "postgresql"):
        return []
    return [
        Error(
            f"webhooks_app supports SQLite and PostgreSQL; database {db!r} is {vendor}.",
            hint="Route webhooks_app's models to a SQLite or PostgreSQL database.",
            id="webhooks_app.E022",
        )
    ]
