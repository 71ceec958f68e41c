"""Endpoint lifecycle: what the admin, the API and site code call to change things.

Every function validates its input and raises ``ValidationError`` with a message per
field before writing anything; writes happen in one transaction.
"""

from __future__ import annotations

import secrets as _secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.core.validators import validate_email
from django.db import transaction
from django.utils import timezone

from . import engine, events, formats, jsonenc, matching, queries, signing, transport
from . import headers as headers_policy
from .conf import app_settings
from .models import Delivery, Endpoint, Subscription

RESERVED_HEADERS = headers_policy.RESERVED
RESERVED_HEADER_PREFIXES = headers_policy.RESERVED_PREFIXES
UPDATABLE = (
    "name",
    "description",
    "url",
    "method",
    "is_active",
    "headers",
    "payload_extra",
    "payload_fields",
    "payload_filter",
    "payload_format",
    "events",
    "notify_email",
    "rate_limit",
    "ordered",
)
MAX_RATE_LIMIT = 10_000  # deliveries per second


def reserved_payload_keys(payload_format: str = "") -> set[str]:
    """Top-level keys custom values may not use under ``payload_format`` (its own)."""
    return set(formats.get(payload_format).reserved())


# Validation ------------------------------------------------------------------------------
def _storable(text: str) -> bool:
    """Whether the database can hold ``text``: PostgreSQL refuses NUL (a DataError), and a
    lone surrogate has no UTF-8 (the driver's encode fails) on every database."""
    return "\x00" not in text and not jsonenc.has_lone_surrogate(text)


def _clean_events(value: Any, subscribed: Iterable[str] = ()) -> dict[str, bool]:
    """``["a", "b"]`` or ``{"a": True, "b": False}`` -> {type: enabled}.

    Names are declared types or wildcards (``user.*``, ``*``). A deprecated type is refused
    unless it is among ``subscribed`` (the endpoint's current subscriptions), which keep
    working.
    """
    if isinstance(value, str) or not isinstance(value, Mapping | list | tuple | set):
        raise ValidationError("Give a list of event types.", code="invalid")
    toggles = dict(value) if isinstance(value, Mapping) else {name: True for name in value}
    if not toggles:
        raise ValidationError("Select at least one event.", code="required")
    known = events.event_types()
    if any(not isinstance(n, str) for n in toggles):
        raise ValidationError("Event types must be text.", code="invalid")
    if not all(_storable(n) for n in toggles):
        raise ValidationError("Event types cannot contain NUL or lone surrogates.", code="invalid")
    patterns = [n for n in toggles if "*" in n]
    for name in patterns:
        matching.validate_pattern(name)
    unknown = [
        n for n in toggles if "*" not in n and (n not in known or n == events.TEST_EVENT)
    ]
    if unknown:
        raise ValidationError(
            "Unknown event type(s): %(names)s.",
            code="unknown_event_type",
            params={"names": ", ".join(map(str, unknown))},
        )
    kept = set(subscribed)
    deprecated = [n for n in toggles if n in known and known[n]["deprecated"] and n not in kept]
    if deprecated:
        raise ValidationError(
            "%(names)s is deprecated and can no longer be subscribed to.",
            code="deprecated_event_type",
            params={"names": ", ".join(deprecated)},
        )
    if any(len(n) > 100 for n in toggles):
        raise ValidationError("Event types have at most 100 characters.", code="invalid")
    if any(not isinstance(v, bool) for v in toggles.values()):
        raise ValidationError("Event toggles must be true or false.", code="invalid")
    return toggles


def _clean_headers(value: Any, current: Mapping[str, str] | None = None) -> dict[str, str]:
    """Name/value pairs that can always be sent (see ``headers.py``). ``current``: the
    endpoint's present values; a value submitted still masked keeps its present value."""
    if value in (None, ""):
        return {}
    if not isinstance(value, Mapping):
        raise ValidationError("Give headers as name/value pairs.", code="invalid")
    if current:
        value = headers_policy.unmask(dict(value), dict(current))
    cleaned = {}
    for name, val in value.items():
        problem = headers_policy.name_problem(name)
        if problem:
            code = "invalid" if "not a valid" in problem else "reserved"
            raise ValidationError(problem, code=code)
        problem = headers_policy.value_problem(name, val)
        if problem:
            raise ValidationError(problem, code="invalid")
        cleaned[name] = val
    if len({n.lower() for n in cleaned}) != len(cleaned):
        raise ValidationError("Each header may be given once.", code="invalid")
    if len(cleaned) > 20:
        raise ValidationError("At most 20 custom headers.", code="invalid")
    return cleaned


def _clean_payload_extra(value: Any) -> dict[str, Any]:
    if value in (None, ""):
        return {}
    if not isinstance(value, Mapping):
        raise ValidationError("Give custom payload values as key/value pairs.", code="invalid")
    # Keys the endpoint's payload format uses itself are refused by _check_shape().
    if any(not isinstance(k, str) or not k for k in value):
        raise ValidationError("Keys must be non-empty text.", code="invalid")
    # Datetimes, Decimals, UUIDs... are stored as DjangoJSONEncoder writes them; what
    # JSON cannot carry (NaN, sets, bytes, huge integers) is refused with its path.
    cleaned = jsonenc.normalise(dict(value), path="payload_extra")
    cap = app_settings.MAX_PAYLOAD_EXTRA_BYTES
    size = len(jsonenc.dumps(cleaned).encode("utf-8"))
    if cap and size > cap:
        # Copied into every delivery row of the endpoint: a few MB here multiply fast.
        raise ValidationError(
            "Custom payload values may add at most %(cap)d bytes to each payload; these "
            "are %(size)d bytes.",
            code="max_size",
            params={"cap": cap, "size": size},
        )
    return cleaned


def _clean_payload_fields(value: Any) -> list[str]:
    if value in (None, ""):
        return []
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise ValidationError("Give a list of field names.", code="invalid")
    if any(not isinstance(v, str) or not v.strip() for v in value):
        raise ValidationError("Field names must be non-empty text.", code="invalid")
    # PostgreSQL's jsonb cannot hold NUL (a DataError, a 500), and no key contains one.
    if not all(_storable(v) for v in value):
        raise ValidationError("Field names cannot contain NUL characters.", code="invalid")
    limit = app_settings.MAX_PAYLOAD_FIELDS
    if len(value) > limit:
        raise ValidationError(
            "At most %(n)d fields can be selected; %(given)d were given.",
            code="max_fields",
            params={"n": limit, "given": len(value)},
        )
    return [v.strip() for v in value]


def validate_secret(secret: Any) -> str:
    if not isinstance(secret, str):
        raise ValidationError("The secret must be text.", code="invalid")
    if len(secret) < signing.MIN_SECRET_LENGTH:
        raise ValidationError(
            "The secret must be at least %(n)d characters long.",
            code="min_length",
            params={"n": signing.MIN_SECRET_LENGTH},
        )
    if len(secret) > 200 or any(c.isspace() for c in secret):
        raise ValidationError(
            "The secret must be at most 200 characters, without spaces.", code="invalid"
        )
    return secret


def _clean_field(name: str, value: Any) -> Any:
    if name == "url":
        if not isinstance(value, str) or not value.strip():
            raise ValidationError("Enter the URL that will receive the webhooks.", code="required")
        transport.validate_url(value)  # whitespace anywhere is refused, not trimmed
        return value
    if name == "method":
        if value not in Endpoint.Method.values:
            raise ValidationError("Choose POST or GET.", code="invalid_choice")
        return value
    if name in ("name", "description"):
        if value is None:
            return ""
        if not isinstance(value, str):
            raise ValidationError("Must be text.", code="invalid")
        if name == "name" and len(value) > 200:
            raise ValidationError("At most 200 characters.", code="max_length")
        if not _storable(value):
            raise ValidationError(
                "Cannot contain NUL characters or lone surrogates.", code="invalid"
            )
        return value.strip()
    if name == "rate_limit":
        if value in (None, ""):
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValidationError("Give a whole number of deliveries per second.", code="invalid")
        if not 1 <= value <= MAX_RATE_LIMIT:
            raise ValidationError(
                "Between 1 and %(max)d deliveries per second (empty: no limit).",
                code="invalid",
                params={"max": MAX_RATE_LIMIT},
            )
        return value
    if name in ("is_active", "ordered"):
        if not isinstance(value, bool):
            raise ValidationError("Must be true or false.", code="invalid")
        return value
    if name == "notify_email":
        if value in (None, ""):
            return ""
        if not isinstance(value, str) or len(value) > 254:  # the column's max_length
            raise ValidationError("Enter a valid email address.", code="invalid")
        validate_email(value)
        return value
    if name == "headers":
        return _clean_headers(value)
    if name == "payload_extra":
        return _clean_payload_extra(value)
    if name == "payload_fields":
        return _clean_payload_fields(value)
    if name == "payload_filter":
        return matching.clean_filter(value)
    if name == "payload_format":
        return formats.clean_name(value)
    if name == "events":
        return _clean_events(value)
    raise ValidationError("Unknown field.", code="unknown")


def _check_shape(cleaned: dict[str, Any], instance: Endpoint | None) -> None:
    """Custom values against the payload format they will be sent in (both may change
    at once, or only one of them)."""
    if "payload_extra" not in cleaned and "payload_format" not in cleaned:
        return
    current = instance or Endpoint()
    name = cleaned.get("payload_format", current.payload_format)
    extra = cleaned.get("payload_extra", current.payload_extra)
    try:
        formats.check_extra(name, extra)
    except KeyError:
        return  # an unknown format was already reported on its field
    except ValidationError as exc:
        raise ValidationError({"payload_extra": exc.error_list}) from None


def clean_endpoint_fields(
    values: Mapping[str, Any], *, instance: Endpoint | None = None
) -> dict[str, Any]:
    """Validate endpoint fields; ``ValidationError`` with one entry per bad field.

    ``instance``: the endpoint being changed, for rules that involve a field not given
    (custom values are checked against the payload format, given or current; header
    values left masked keep its present values). Header values come back in plain text.
    ``instance``'s current subscriptions may also keep types that have since been
    deprecated.
    """
    errors: dict[str, list] = {}
    cleaned: dict[str, Any] = {}
    for name, value in values.items():
        if name not in UPDATABLE:
            errors[name] = [ValidationError("Unknown field.", code="unknown")]
            continue
        try:
            if name == "events" and instance is not None and instance.pk:
                subscribed = instance.subscriptions.values_list("event_type", flat=True)
                cleaned[name] = _clean_events(value, subscribed)
                continue
            if name == "headers":
                current = _current_headers(instance) if instance is not None else None
                cleaned[name] = _clean_headers(value, current)
                continue
            cleaned[name] = _clean_field(name, value)
        except ValidationError as exc:
            errors[name] = exc.error_list
    if "payload_extra" not in errors and "payload_format" not in errors:
        try:
            _check_shape(cleaned, instance)
        except ValidationError as exc:
            errors.update(exc.error_dict)
    if errors:
        raise ValidationError(errors)
    return cleaned


def _current_headers(endpoint: Endpoint) -> dict[str, str]:
    try:
        return endpoint.get_headers()
    except ValueError:
        return {}  # undecryptable: masked values then cannot stand for anything


def _set_subscriptions(endpoint: Endpoint, toggles: dict[str, bool]) -> None:
    Subscription.objects.filter(endpoint=endpoint).exclude(event_type__in=list(toggles)).delete()
    existing = {s.event_type: s for s in Subscription.objects.filter(endpoint=endpoint)}
    for name, enabled in toggles.items():
        sub = existing.get(name)
        if sub is None:
            Subscription.objects.create(endpoint=endpoint, event_type=name, enabled=enabled)
        elif sub.enabled != enabled:
            sub.enabled = enabled
            sub.save(update_fields=["enabled"])


# Services --------------------------------------------------------------------------------
def create_endpoint(
    *,
    url: str,
    events: Iterable[str] | Mapping[str, bool],
    tenant: str | None = None,
    secret: str | None = None,
    rest_hook: bool = False,
    **options: Any,
) -> tuple[Endpoint, str]:
    """Create an endpoint; returns it and its plaintext secret (shown once, never again).

    ``rest_hook=True`` marks a REST Hooks subscription (the API's hooks/ makes these).
    """
    values = {"url": url, "events": events, **options}
    errors: dict[str, list] = {}
    try:
        cleaned = clean_endpoint_fields(values)
    except ValidationError as exc:
        errors.update(exc.error_dict)
        cleaned = {}
    if secret in (None, ""):
        plaintext = signing.generate_secret()
    else:
        try:
            plaintext = validate_secret(secret)
        except ValidationError as exc:
            errors["secret"] = exc.error_list
    if tenant is not None and (
        not isinstance(tenant, str) or len(tenant) > 100 or not _storable(tenant)
    ):
        errors["tenant"] = [ValidationError("The tenant must be text of at most 100 characters.")]
    else:
        try:
            check_endpoint_limit(tenant or "")
        except ValidationError as exc:
            errors[NON_FIELD_ERRORS] = exc.error_list
    if errors:
        raise ValidationError(errors)
    toggles = cleaned.pop("events")
    plain_headers = cleaned.pop("headers", {})
    with transaction.atomic():
        endpoint = Endpoint(tenant=tenant or "", rest_hook=bool(rest_hook), **cleaned)
        endpoint.set_headers(plain_headers)
        endpoint.set_secret(plaintext)
        endpoint.save()
        _set_subscriptions(endpoint, toggles)
        if endpoint.notify_email:
            transaction.on_commit(lambda: _confirm_creation(endpoint), robust=True)
    return endpoint, plaintext


def check_endpoint_limit(tenant: str) -> None:
    """``ValidationError`` when ``tenant`` has ``MAX_ENDPOINTS_PER_TENANT`` endpoints
    (each emit writes one row per endpoint: the cap bounds what one tenant multiplies)."""
    cap = app_settings.MAX_ENDPOINTS_PER_TENANT
    if cap and Endpoint.objects.filter(tenant=tenant).count() >= cap:
        raise ValidationError(
            "This account already has %(n)d webhook endpoints, the most allowed; "
            "delete one to add another.",
            code="too_many_endpoints",
            params={"n": cap},
        )


def _confirm_creation(endpoint: Endpoint) -> None:
    """The reference products email a confirmation; the secret is never in it."""
    from .model_events import notify

    notify(
        endpoint,
        f"Webhook created: {endpoint}",
        f"The webhook {endpoint} now receives {', '.join(endpoint.event_types)} at "
        f"{endpoint.url}.\nFailed deliveries will be reported to this address.",
    )


def update_endpoint(endpoint: Endpoint, **changes: Any) -> Endpoint:
    """Change URL, events, status and options; never the secret (use rotate_secret)."""
    if "secret" in changes:
        raise ValidationError({"secret": ["The secret cannot be edited; rotate it instead."]})
    cleaned = clean_endpoint_fields(changes, instance=endpoint)
    toggles = cleaned.pop("events", None)
    with transaction.atomic():
        for name, value in cleaned.items():
            if name == "headers":
                endpoint.set_headers(value)  # encrypted at rest, like the secret
                continue
            setattr(endpoint, name, value)
        fields = [*cleaned, "updated_at"]
        if cleaned.get("is_active"):
            endpoint.disabled_reason = ""
            endpoint.consecutive_failures = 0
            fields += ["disabled_reason", "consecutive_failures"]
            if not Endpoint.objects.filter(pk=endpoint.pk, is_active=True).exists():
                # Enabling a disabled endpoint starts afresh: breaker closed, no pause.
                endpoint.breaker_state = Endpoint.BreakerState.CLOSED
                endpoint.breaker_failures = 0
                endpoint.breaker_opened_at = None
                endpoint.paused_until = None
                fields += ["breaker_state", "breaker_failures", "breaker_opened_at"]
                fields += ["paused_until"]
        # Only the changed columns: a concurrent rotate_secret() is never written back over.
        endpoint.save(update_fields=fields)
        if toggles is not None:
            _set_subscriptions(endpoint, toggles)
    return endpoint


def rotate_secret(
    endpoint: Endpoint, *, grace: timedelta | float | int | None = None, secret: str | None = None
) -> str:
    """Replace the secret; returns the new plaintext (shown once).

    Without ``grace`` the old secret stops working at once; with it, requests carry both
    signatures until the grace period ends. At most 7 days.
    """
    if grace is not None and not isinstance(grace, timedelta):
        try:
            grace = timedelta(seconds=float(grace))
        except (TypeError, ValueError):
            raise ValidationError({"grace": ["Give the grace period in seconds."]}) from None
    if grace is not None and not (timedelta(0) <= grace <= timedelta(days=7)):
        raise ValidationError({"grace": ["The grace period must be between 0 and 7 days."]})
    plaintext = signing.generate_secret() if not secret else validate_secret(secret)
    with transaction.atomic():
        locked = Endpoint.objects.select_for_update().get(pk=endpoint.pk)
        if grace:
            locked.previous_secret_encrypted = locked.secret_encrypted
            locked.previous_secret_expires_at = timezone.now() + grace
        else:
            locked.previous_secret_encrypted = ""
            locked.previous_secret_expires_at = None
        locked.set_secret(plaintext)
        locked.save(
            update_fields=[
                "secret_encrypted",
                "previous_secret_encrypted",
                "previous_secret_expires_at",
                "updated_at",
            ]
        )
    endpoint.refresh_from_db()
    return plaintext


@dataclass
class TestResult:
    delivery: Delivery
    ok: bool
    status_code: int | None
    duration_ms: int
    response_excerpt: str
    error: str


def send_test(
    endpoint: Endpoint,
    data: Mapping[str, Any] | None = None,
    *,
    event_type: str = events.TEST_EVENT,
) -> TestResult:
    """Send a test event now, in this thread; recorded in the history.

    ``event_type`` (default the built-in ``webhook.test``) picks the declared type whose
    example payload is sent (``data`` overrides it). Every test carries a
    ``webhook-test: true`` header and ``"test": true`` in the envelope.
    """
    if not isinstance(event_type, str):
        raise ValidationError({"event_type": ["Give an event type name."]})
    info = events.event_types().get(event_type)
    if info is None:
        raise ValidationError(
            {"event_type": [f"Unknown event type {event_type!r}; see the event catalogue."]}
        )
    payload = data if data is not None else info["example"]
    payload = {} if payload is None else payload
    if info["schema"] and app_settings.VALIDATE_PAYLOADS:
        try:
            events.validate_payload(event_type, payload, info)
        except ValidationError as exc:
            raise ValidationError({"data": exc.error_list}) from None
    try:
        event, env = events.new_event(event_type, payload, endpoint.tenant, test=True)
    except ValidationError as exc:
        raise ValidationError({"data": exc.error_list}) from None
    token = _secrets.token_hex(16)
    with transaction.atomic():
        event.save()
        # Claimed by us from the start, so no worker sends it a second time.
        delivery = events.new_delivery(
            endpoint,
            event,
            env,
            event.data,
            test=True,
            claim_token=token,
            # No due time: no worker ever claims a test, even if this process dies.
            next_attempt_at=None,
        )
        delivery.save()
    delivery.endpoint = endpoint
    delivery.event = event
    # Whatever fails (a secret that no longer decrypts, a header that cannot be sent) is
    # a recorded failure with its reason: never a 500, never a row left pending.
    outcome = engine.safe_attempt(delivery)
    try:
        engine.record(token, [outcome], retry=False)
    finally:
        engine.fail_unsent(token, [delivery.pk], outcome.response.error or "not recorded")
    delivery.refresh_from_db()
    r = outcome.response
    return TestResult(delivery, r.ok, r.status_code, r.duration_ms, r.excerpt, r.error)


SIGNATURE_HEADERS = ("webhook-signature", "x-webhook-signature")
MASK = "••••••••"


def mask_signature(value: str) -> str:
    """``v1,abc= v1,def=`` -> ``v1,•••• v1,••••``; ``sha256=abc`` -> ``sha256=••••``."""
    masked = []
    for part in value.split(" "):
        for sep in (",", "="):
            if sep in part:
                masked.append(part.split(sep, 1)[0] + sep + MASK)
                break
        else:
            masked.append(MASK)
    return " ".join(masked)


@dataclass
class PreviewRequest:
    """The request an endpoint would receive, its signatures masked."""

    event_type: str
    subscribed: bool
    method: str
    url: str
    headers: dict[str, str]
    body: str


def preview(
    endpoint: Endpoint,
    event_type: str | None = None,
    *,
    data: Any = None,
    event: Any = None,
) -> PreviewRequest:
    """What ``endpoint`` would receive for ``event_type``'s example (or ``data``), or for
    an existing ``event``: method, URL, headers (signatures masked) and body.

    Nothing is saved or sent, and the endpoint may be inactive. The request is built by
    the code the engine sends with (``events.new_delivery``, ``engine.wire``,
    ``engine.request_headers``, ``transport.request_url``), so the preview cannot drift
    from the real thing.
    """
    if event is None:
        if event_type in (None, ""):
            event_type = (endpoint.event_types or [events.TEST_EVENT])[0]
        try:
            events.check_event_type(event_type)
        except ValidationError as exc:
            raise ValidationError({"event_type": exc.error_list}) from None
        if data is None:
            data = events.event_types()[event_type].get("example") or {}
        try:
            event, env = events.new_event(event_type, data, endpoint.tenant)
        except ValidationError as exc:
            raise ValidationError({"data": exc.error_list}) from None
    else:
        data = event.data
        env = events.envelope(
            event.public_id, event.event_type, event.created_at, event.tenant, data
        )
    delivery = events.new_delivery(endpoint, event, env, data)
    delivery.endpoint = endpoint
    method, body = engine.wire(delivery)
    custom = endpoint.get_headers()
    headers = engine.request_headers(delivery, body, endpoint.signing_secrets(), custom)
    for name in headers:
        if name.lower() in SIGNATURE_HEADERS:
            headers[name] = mask_signature(headers[name])
        elif name in custom:  # credentials: shown masked, as everywhere else
            headers[name] = headers_policy.mask(headers[name])
    return PreviewRequest(
        event_type=event.event_type,
        subscribed=event.event_type in endpoint.event_types,
        method=method,
        url=transport.request_url(method, endpoint.url, body),
        headers=headers,
        # A GET request has no body: its payload is the URL's query string.
        body="" if method == Endpoint.Method.GET else body.decode("utf-8"),
    )


def replay(delivery: Delivery) -> Delivery:
    """Start a new attempt sequence for ``delivery``: same event id, same body bytes."""
    if delivery.status == Delivery.Status.PENDING:
        raise ValidationError("This delivery is still being attempted.", code="pending")
    if delivery.event_type == events.TEST_EVENT:
        # Workers never send tests: a replayed test is sent now, in this thread, as Test is.
        return _replay_test(delivery)
    if not Endpoint.objects.filter(pk=delivery.endpoint_id, is_active=True).exists():
        raise ValidationError(
            "The endpoint is disabled; enable it before replaying.", code="inactive"
        )
    with transaction.atomic():
        updated = (
            Delivery.objects.filter(pk=delivery.pk)
            .exclude(status=Delivery.Status.PENDING)
            .update(
                status=Delivery.Status.PENDING,
                sequence_attempts=0,
                claim_token="",
                next_attempt_at=timezone.now() + timedelta(seconds=app_settings.RETRY_SCHEDULE[0]),
            )
        )
        if updated:
            from .tasks import wake_workers_on_commit

            wake_workers_on_commit()
    delivery.refresh_from_db()
    return delivery


def _replay_test(delivery: Delivery) -> Delivery:
    token = _secrets.token_hex(16)
    claimed = (
        Delivery.objects.filter(pk=delivery.pk)
        .exclude(status=Delivery.Status.PENDING)
        .update(
            status=Delivery.Status.PENDING,
            sequence_attempts=0,
            claim_token=token,
            next_attempt_at=None,  # never due: no worker claims it
        )
    )
    if not claimed:
        raise ValidationError("This delivery is still being attempted.", code="pending")
    row = Delivery.objects.select_related("event", "endpoint").get(pk=delivery.pk)
    outcome = engine.safe_attempt(row)
    try:
        engine.record(token, [outcome], retry=False)
    finally:
        engine.fail_unsent(token, [row.pk], outcome.response.error or "not recorded")
    delivery.refresh_from_db()
    return delivery


def replay_many(deliveries: Iterable[Delivery]) -> tuple[int, list[str]]:
    """Replay several deliveries; returns how many were queued and why others were not."""
    count, problems = 0, []
    for delivery in deliveries:
        try:
            replay(delivery)
            count += 1
        except ValidationError as exc:
            problems.append(f"#{delivery.pk}: {' '.join(exc.messages)}")
    return count, problems


def delete_endpoint(endpoint: Endpoint) -> None:
    """Delete the endpoint with its subscriptions and delivery history."""
    from .models import DeliveryAttempt

    with transaction.atomic():
        # Set-based deletes: Django's cascade would load every delivery of a busy endpoint
        # (millions of rows) into memory first.
        DeliveryAttempt.objects.filter(delivery__endpoint=endpoint).delete()
        deliveries = Delivery.objects.filter(endpoint=endpoint)
        deliveries._raw_delete(deliveries.db)  # no attempts left: nothing else refers to them
        endpoint.delete()


def stats(tenant: str | None = None) -> dict[str, int]:
    """Dashboard counts; kept here for site code, read through ``queries.stats``."""
    return queries.stats(tenant)


def prune(*, days: float | None = None, dry_run: bool = False, max_seconds: float | None = None):
    """Delete finished deliveries, their attempts and events older than ``days``
    (default ``RETENTION_DAYS``), in small batches; returns a ``PruneResult``."""
    from .retention import prune as _prune

    return _prune(days=days, dry_run=dry_run, max_seconds=max_seconds)


# Bulk recovery ---------------------------------------------------------------------------
RECOVER_BATCH = 500


class RecoverThrottled(ValidationError):
    """Too many recoveries for this tenant; ``wait`` is seconds until the next is allowed."""

    def __init__(self, wait: float) -> None:
        super().__init__(
            "Too many recoveries for this account; try again in %(wait)d seconds.",
            code="throttled",
            params={"wait": max(1, int(wait + 0.999))},
        )
        self.wait = wait


@dataclass
class RecoverResult:
    queued: int
    since: Any
    until: Any


def _clean_moment(value: Any, name: str) -> Any:
    """A timezone-aware datetime from a datetime or an ISO 8601 string."""
    from datetime import datetime

    from django.utils.dateparse import parse_datetime

    if isinstance(value, str):
        try:
            parsed = parse_datetime(value.strip())
        except ValueError:
            parsed = None
        if parsed is None:
            raise ValidationError({name: ["Give a date and time (ISO 8601)."]})
        value = parsed
    if not isinstance(value, datetime):
        raise ValidationError({name: ["Give a date and time."]})
    if timezone.is_naive(value):
        value = timezone.make_aware(value)
    return value


def _lock_tenant(tenant: str) -> None:
    """Serialise concurrent recoveries of one tenant until the transaction ends, so two
    clicks at once cannot both pass the throttle (SQLite's IMMEDIATE transactions already
    serialise every writer; PostgreSQL gets an advisory lock on the tenant)."""
    from django.db import connection

    if connection.vendor == "postgresql":
        import hashlib

        key = int.from_bytes(
            hashlib.sha256(f"webhooks_app.recover:{tenant}".encode()).digest()[:8],
            "big",
            signed=True,
        )
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [key])


def recover(endpoint: Endpoint, *, since: Any, until: Any = None) -> RecoverResult:
    """Replay every failed delivery of ``endpoint`` created in [since, until) (Svix's
    "recover failed messages since"): same event ids, same body bytes, a new attempt
    sequence each, sent in the order they were created.

    Idempotent: deliveries already pending again are not touched, so a second call
    queues nothing new. Throttled per tenant (``RECOVER_RATE``, counted in the database,
    so it holds across processes): raises :class:`RecoverThrottled`. Rows are queued in
    batches of ``RECOVER_BATCH``, each its own short transaction.
    """
    from .models import Recovery

    errors: dict[str, list] = {}
    try:
        since = _clean_moment(since, "since")
    except ValidationError as exc:
        errors.update(exc.error_dict)
    if until is not None:
        try:
            until = _clean_moment(until, "until")
        except ValidationError as exc:
            errors.update(exc.error_dict)
    now = timezone.now()
    if not errors:
        if since > now:
            errors["since"] = [ValidationError("The start lies in the future.")]
        elif until is not None and until <= since:
            errors["until"] = [ValidationError("The end must come after the start.")]
    if errors:
        raise ValidationError(errors)
    if not Endpoint.objects.filter(pk=endpoint.pk, is_active=True).exists():
        raise ValidationError(
            "The endpoint is disabled; enable it before recovering.", code="inactive"
        )
    rate = app_settings.RECOVER_RATE
    with transaction.atomic():
        if rate:
            _lock_tenant(endpoint.tenant)
            number, period = rate
            recent = list(
                Recovery.objects.filter(
                    tenant=endpoint.tenant, created_at__gt=now - timedelta(seconds=period)
                )
                .order_by("-created_at")
                .values_list("created_at", flat=True)[:number]
            )
            if len(recent) >= number:
                oldest = recent[-1]
                raise RecoverThrottled((oldest + timedelta(seconds=period) - now).total_seconds())
        record = Recovery.objects.create(
            tenant=endpoint.tenant, endpoint=endpoint, since=since, until=until, created_at=now
        )
    failed = Delivery.objects.filter(
        endpoint=endpoint, status=Delivery.Status.FAILED, created_at__gte=since
    )
    if until is not None:
        failed = failed.filter(created_at__lt=until)
    queued, last_id = 0, 0
    due = now + timedelta(seconds=app_settings.RETRY_SCHEDULE[0])
    while True:
        ids = list(
            failed.filter(id__gt=last_id)
            .order_by("id")
            .values_list("id", flat=True)[:RECOVER_BATCH]
        )
        if not ids:
            break
        last_id = ids[-1]
        with transaction.atomic():
            queued += Delivery.objects.filter(id__in=ids, status=Delivery.Status.FAILED).update(
                status=Delivery.Status.PENDING,
                sequence_attempts=0,
                claim_token="",
                next_attempt_at=due,
            )
    Recovery.objects.filter(pk=record.pk).update(queued=queued)
    if queued:
        from .tasks import wake_workers_on_commit

        wake_workers_on_commit()  # at once, or when the caller's transaction commits
    return RecoverResult(queued, since, until)


def reencrypt_stored_secrets() -> tuple[int, list[int]]:
    """Re-encrypt every endpoint's secrets and header values with the first key
    (``ENCRYPTION_KEYS[0]``, or the one derived from ``SECRET_KEY``); returns how many
    endpoints were rewritten and the ids of those with a value no key decrypts (left as
    they are). Each endpoint is rewritten under a row lock, so a concurrent
    ``rotate_secret`` is never overwritten."""
    from . import crypto

    done, failed = 0, []
    for pk in Endpoint.objects.order_by("pk").values_list("pk", flat=True).iterator():
        with transaction.atomic():
            endpoint = Endpoint.objects.select_for_update().filter(pk=pk).first()
            if endpoint is None:
                continue
            try:
                endpoint.secret_encrypted = crypto.reencrypt(endpoint.secret_encrypted)
                if endpoint.previous_secret_encrypted:
                    endpoint.previous_secret_encrypted = crypto.reencrypt(
                        endpoint.previous_secret_encrypted
                    )
                headers = endpoint.headers or {}
                endpoint.headers = {k: crypto.reencrypt(v) for k, v in headers.items()}
            except ValueError:
                failed.append(pk)
                continue
            endpoint.save(
                update_fields=["secret_encrypted", "previous_secret_encrypted", "headers"]
            )
            done += 1
    return done, failed
