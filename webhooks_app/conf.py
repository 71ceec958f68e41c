"""webhooks_app settings: one ``WEBHOOKS_APP`` dict, read live on every access.

Nothing here is computed at import time, so ``override_settings`` works in tests and no
setting ever shapes a model field or a migration.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

DEFAULTS: dict[str, Any] = {
    # {"user.created": {"description": "...", "example": {...}, "group": "Users",
    #   "schema": {...JSON Schema...}, "deprecated": False}, ...}
    "EVENT_TYPES": {},
    # Attempt schedule: seconds to wait before each attempt, counted from the end of the
    # previous one. Five attempts at 0, 2, 4, 8 and 16 s by default.
    "RETRY_SCHEDULE": [0, 2, 4, 8, 16],
    # A Retry-After header on 429/503 is honoured, but never beyond this many seconds.
    "RETRY_AFTER_MAX": 300,
    # Seconds for a whole attempt: a 2xx within this time is a success.
    "TIMEOUT": 30.0,
    "CONNECT_TIMEOUT": 10.0,
    # How long a claim lasts unless renewed. A live worker renews its claims (a
    # heartbeat, about every third of this) while it sends, however long a send takes;
    # a killed worker stops renewing, and its deliveries are sent again by another
    # worker once this runs out: crash recovery in seconds, not minutes.
    "LEASE_SECONDS": 6.0,
    # Body bytes one worker holds at a time (claimed, queued or being sent); at least one
    # delivery is always claimed, however large. Keeps worker memory flat with big events.
    "CLAIM_MAX_BYTES": 8 * 1024 * 1024,
    # Worker side: how often each worker checks for due deliveries (retries, recovery).
    "POLL_INTERVAL": 0.5,
    # Sender threads per worker process, and how many of them one endpoint may occupy.
    "SENDER_THREADS": 8,
    "ENDPOINT_CONCURRENCY": 4,
    # Deliveries handed to one sender thread at a time.
    "CHUNK_SIZE": 25,
    "ALLOW_HTTP": False,
    # Networks that are normally refused (private, loopback, ...) but allowed here.
    "ALLOWED_NETWORKS": [],
    "RESPONSE_EXCERPT_BYTES": 2048,
    # Name of the tenant key in the payload envelope (e.g. "enterpriseId").
    "TENANT_KEY": "tenant",
    "PAYLOAD_VERSION": "v1",
    # The payload format of endpoints that do not choose one: "standard", "flat", "type",
    # "cloudevents" or a name given to register_payload_format() (see formats.py).
    "PAYLOAD_FORMAT": "standard",
    # The CloudEvents "source" attribute (a URI reference); "{tenant}" is replaced by the
    # event's tenant. Set it to something that names your site, e.g. "https://example.com".
    "CLOUDEVENTS_SOURCE": "/webhooks_app",
    # How many data fields one endpoint may select (Userpilot allows 10 properties).
    "MAX_PAYLOAD_FIELDS": 10,
    # Signature headers to send: "standard" (webhook-*), "legacy" (X-Webhook-*), or both.
    "SIGNATURE_SCHEMES": ["standard", "legacy"],
    # Fernet keys (urlsafe base64, 32 bytes) for secrets at rest; the first encrypts,
    # all decrypt. Empty: a key derived from SECRET_KEY.
    "ENCRYPTION_KEYS": [],
    # Model signals -> event types, e.g.
    # {"auth.User": {"created": "user.created", "fields": ["id", "username", "email"]}}
    "MODEL_EVENTS": {},
    # Disable an endpoint after this many consecutive failed deliveries (0: never).
    "AUTO_DISABLE_AFTER": 0,
    # Circuit breaker: after this many failed attempts in a row to one endpoint (any of
    # its deliveries; 0: never) its deliveries wait; after BREAKER_COOLDOWN seconds one
    # probe delivery is sent: success closes the breaker, failure re-opens it.
    "BREAKER_THRESHOLD": 10,
    "BREAKER_COOLDOWN": 30.0,
    # Disable an endpoint whose breaker has stayed open this many seconds (0: never).
    "BREAKER_DISABLE_AFTER": 0,
    # At most one failure email per endpoint per this many seconds: the first failure is
    # mailed at once, later ones are summed up in one digest when the interval ends.
    "NOTIFY_INTERVAL": 3600.0,
    # Dotted path of a callable(request) -> tenant key for the REST API.
    "TENANT_RESOLVER": "webhooks_app.api.tenancy.default_tenant_resolver",
    # Dotted path of a callable(request, tenant) -> bool gating the feature (e.g. by plan).
    # The API and portal pass the request; the engine asks at send time with request=None
    # (unless TENANT_GATE is set) and records refused deliveries as failed, replayable.
    "FEATURE_GATE": None,
    # Dotted path of a callable(tenant) -> bool the engine uses instead of
    # FEATURE_GATE(None, tenant), for gates that need a request.
    "TENANT_GATE": None,
    # Customer portal (webhooks_app.portal): the template its pages extend (blocks
    # "title" and "content"), and a callable(request, tenant) -> bool saying who in a
    # tenant may manage webhooks (None: any authenticated user of the tenant).
    "PORTAL_BASE_TEMPLATE": "webhooks_app/portal/base.html",
    "PORTAL_PERMISSION": None,
    # Seconds a portal session opened by a magic link lasts (at most; the browser
    # session may end earlier).
    "PORTAL_SESSION_SECONDS": 8 * 3600,
    # DRF classes for the API; None means the project's DRF defaults.
    "API_AUTHENTICATION_CLASSES": None,
    "API_PERMISSION_CLASSES": None,
    "API_THROTTLE_RATE": "30/min",
    # Django's queue name / cluster for wake-up tasks (None: the default cluster).
    "Q_CLUSTER": None,
    # Check emit()'s data against the event type's JSON Schema ("schema" in EVENT_TYPES).
    # None: on when settings.DEBUG is, so development catches drift and production does
    # not pay for it.
    "VALIDATE_PAYLOADS": None,
    # emit() refuses a body (envelope, or an endpoint's own body) larger than this many
    # bytes of UTF-8 with a ValidationError, before anything is written. 0: no limit.
    "MAX_PAYLOAD_BYTES": 256 * 1024,
    # emit() refuses event data nested deeper than this many objects/arrays.
    "MAX_PAYLOAD_DEPTH": 32,
    # Integers beyond +-(2**53 - 1) cannot be held by a JavaScript number, so a receiver
    # verifying JSON.stringify(JSON.parse(body)) would fail: "refuse" (ValidationError
    # naming the path) or "string" (sent and stored as a decimal string).
    "LARGE_INTEGERS": "refuse",
    # Write an Event row even when no endpoint is subscribed to it (e.g. for an event
    # log). Off by default: an unrouted event writes nothing, and emit() returns an
    # unsaved Event (pk None) carrying the id and body it would have had.
    "KEEP_UNROUTED_EVENTS": False,
    # emit(..., idempotency_key=...): seconds during which the same key (per tenant)
    # returns the first event and creates nothing. 24 hours.
    "IDEMPOTENCY_WINDOW": 86400,
    # Finished deliveries (and their attempts, and events left without deliveries) are
    # deleted this many days after their last attempt, by an hourly django-q2 schedule
    # and `manage.py webhooks_prune`. Pending deliveries are never deleted. 0: keep all.
    "RETENTION_DAYS": 30,
    # Rows deleted per transaction, and seconds of pause between two: small batches keep
    # SQLite's write lock short, so the site's emit() never waits long for it. None: 100
    # on SQLite, 1000 elsewhere (PostgreSQL locks only the old rows; fewer commits).
    "PRUNE_BATCH_SIZE": None,
    "PRUNE_PAUSE": 0.025,
    # SQLite in WAL mode: WAL checkpoints run in a background thread of each process
    # instead of in whichever commit crosses SQLite's threshold (sqlite_checkpoints.py).
    "SQLITE_BACKGROUND_CHECKPOINTS": True,
    # services.recover() (admin, API, command): bulk recoveries per tenant, "N/period"
    # with period second, minute, hour or day. None: unlimited.
    "RECOVER_RATE": "10/hour",
    # Per endpoint: the custom payload values' size (bytes of their JSON), since they are
    # copied into every delivery row of that endpoint. 0: no limit.
    "MAX_PAYLOAD_EXTRA_BYTES": 8192,
    # Endpoints one tenant may have (each emit writes a row per endpoint). 0: no limit.
    "MAX_ENDPOINTS_PER_TENANT": 100,
    # The metrics view (webhooks_app.metrics.urls) answers only requests carrying
    # "Authorization: Bearer <token>" when set; None: whoever reaches the URL.
    "METRICS_TOKEN": None,
    # Every delivery leaves through this HTTP(S) proxy ("http://proxy.internal:3128",
    # credentials allowed in the URL), so receivers can allow-list one egress address.
    # The SSRF check still applies to the destination, before the proxy is contacted,
    # and the proxy is asked for the checked address, not the name. None: direct.
    "PROXY": None,
    # On PostgreSQL, emit() learns of endpoint and subscription changes by LISTEN/NOTIFY
    # and skips its per-emit read of the routing stamp (routing.py). Turn it off where
    # LISTEN does not work, e.g. behind PgBouncer in transaction-pooling mode.
    "ROUTING_LISTEN": True,
}


class AppSettings:
    """Typed, documented access to ``settings.WEBHOOKS_APP``, read live."""

    def _get(self, name: str) -> Any:
        user = getattr(settings, "WEBHOOKS_APP", {}) or {}
        if name not in DEFAULTS:
            raise AttributeError(name)
        return user.get(name, DEFAULTS[name])

    @property
    def EVENT_TYPES(self) -> dict[str, dict[str, Any]]:
        value = self._get("EVENT_TYPES")
        if isinstance(value, list | tuple):
            return {name: {} for name in value}
        return dict(value)

    @property
    def RETRY_SCHEDULE(self) -> list[float]:
        schedule = [float(s) for s in self._get("RETRY_SCHEDULE")]
        if not schedule:
            raise ImproperlyConfigured("WEBHOOKS_APP['RETRY_SCHEDULE'] needs at least one entry.")
        return schedule

    @property
    def RETRY_AFTER_MAX(self) -> float:
        return float(self._get("RETRY_AFTER_MAX"))

    @property
    def TIMEOUT(self) -> float:
        return float(self._get("TIMEOUT"))

    @property
    def CONNECT_TIMEOUT(self) -> float:
        return min(float(self._get("CONNECT_TIMEOUT")), self.TIMEOUT)

    @property
    def LEASE_SECONDS(self) -> float:
        # Renewed while held, so it need not cover an attempt; below 2 s a renewal
        # delayed by a busy database could let a live worker's claim lapse.
        return max(float(self._get("LEASE_SECONDS")), 2.0)

    @property
    def CLAIM_MAX_BYTES(self) -> int:
        return max(1, int(self._get("CLAIM_MAX_BYTES")))

    @property
    def POLL_INTERVAL(self) -> float:
        return float(self._get("POLL_INTERVAL"))

    @property
    def SENDER_THREADS(self) -> int:
        return max(1, int(self._get("SENDER_THREADS")))

    @property
    def ENDPOINT_CONCURRENCY(self) -> int:
        return max(1, int(self._get("ENDPOINT_CONCURRENCY")))

    @property
    def CHUNK_SIZE(self) -> int:
        return max(1, int(self._get("CHUNK_SIZE")))

    @property
    def ALLOW_HTTP(self) -> bool:
        return bool(self._get("ALLOW_HTTP"))

    @property
    def ALLOWED_NETWORKS(self) -> list[str]:
        return list(self._get("ALLOWED_NETWORKS"))

    @property
    def RESPONSE_EXCERPT_BYTES(self) -> int:
        return int(self._get("RESPONSE_EXCERPT_BYTES"))

    @property
    def TENANT_KEY(self) -> str:
        return str(self._get("TENANT_KEY"))

    @property
    def PAYLOAD_VERSION(self) -> str:
        return str(self._get("PAYLOAD_VERSION"))

    @property
    def PAYLOAD_FORMAT(self) -> str:
        return str(self._get("PAYLOAD_FORMAT") or "standard")

    @property
    def CLOUDEVENTS_SOURCE(self) -> str:
        return str(self._get("CLOUDEVENTS_SOURCE") or "/webhooks_app")

    @property
    def MAX_PAYLOAD_FIELDS(self) -> int:
        return max(1, int(self._get("MAX_PAYLOAD_FIELDS")))

    @property
    def SIGNATURE_SCHEMES(self) -> list[str]:
        return list(self._get("SIGNATURE_SCHEMES"))

    @property
    def ENCRYPTION_KEYS(self) -> list[str]:
        return list(self._get("ENCRYPTION_KEYS"))

    @property
    def MODEL_EVENTS(self) -> dict[str, dict[str, Any]]:
        return dict(self._get("MODEL_EVENTS"))

    @property
    def AUTO_DISABLE_AFTER(self) -> int:
        return int(self._get("AUTO_DISABLE_AFTER") or 0)

    @property
    def BREAKER_THRESHOLD(self) -> int:
        return max(0, int(self._get("BREAKER_THRESHOLD") or 0))

    @property
    def BREAKER_COOLDOWN(self) -> float:
        return max(0.0, float(self._get("BREAKER_COOLDOWN")))

    @property
    def BREAKER_DISABLE_AFTER(self) -> float:
        return max(0.0, float(self._get("BREAKER_DISABLE_AFTER") or 0))

    @property
    def NOTIFY_INTERVAL(self) -> float:
        return max(0.0, float(self._get("NOTIFY_INTERVAL")))

    @property
    def TENANT_RESOLVER(self) -> str:
        return str(self._get("TENANT_RESOLVER"))

    @property
    def FEATURE_GATE(self) -> str | None:
        return self._get("FEATURE_GATE")

    @property
    def TENANT_GATE(self) -> str | None:
        return self._get("TENANT_GATE")

    @property
    def PORTAL_BASE_TEMPLATE(self) -> str:
        return str(self._get("PORTAL_BASE_TEMPLATE"))

    @property
    def PORTAL_PERMISSION(self) -> str | None:
        return self._get("PORTAL_PERMISSION")

    @property
    def PORTAL_SESSION_SECONDS(self) -> int:
        return int(self._get("PORTAL_SESSION_SECONDS"))

    @property
    def API_AUTHENTICATION_CLASSES(self) -> list[str] | None:
        return self._get("API_AUTHENTICATION_CLASSES")

    @property
    def API_PERMISSION_CLASSES(self) -> list[str] | None:
        return self._get("API_PERMISSION_CLASSES")

    @property
    def API_THROTTLE_RATE(self) -> str | None:
        return self._get("API_THROTTLE_RATE")

    @property
    def Q_CLUSTER(self) -> str | None:
        return self._get("Q_CLUSTER")

    @property
    def VALIDATE_PAYLOADS(self) -> bool:
        value = self._get("VALIDATE_PAYLOADS")
        return bool(settings.DEBUG) if value is None else bool(value)

    @property
    def MAX_PAYLOAD_BYTES(self) -> int:
        return max(0, int(self._get("MAX_PAYLOAD_BYTES") or 0))

    @property
    def MAX_PAYLOAD_DEPTH(self) -> int:
        return max(1, int(self._get("MAX_PAYLOAD_DEPTH")))

    @property
    def LARGE_INTEGERS(self) -> str:
        value = self._get("LARGE_INTEGERS")
        if value not in ("refuse", "string"):
            raise ImproperlyConfigured(
                'WEBHOOKS_APP[\'LARGE_INTEGERS\'] must be "refuse" or "string".'
            )
        return value

    @property
    def KEEP_UNROUTED_EVENTS(self) -> bool:
        return bool(self._get("KEEP_UNROUTED_EVENTS"))

    @property
    def IDEMPOTENCY_WINDOW(self) -> timedelta:
        value = self._get("IDEMPOTENCY_WINDOW")
        return value if isinstance(value, timedelta) else timedelta(seconds=float(value))

    @property
    def RETENTION_DAYS(self) -> float:
        return float(self._get("RETENTION_DAYS") or 0)

    @property
    def PRUNE_BATCH_SIZE(self) -> int | None:
        value = self._get("PRUNE_BATCH_SIZE")
        return None if value is None else max(1, int(value))

    @property
    def PRUNE_PAUSE(self) -> float:
        return max(0.0, float(self._get("PRUNE_PAUSE")))

    @property
    def SQLITE_BACKGROUND_CHECKPOINTS(self) -> bool:
        return bool(self._get("SQLITE_BACKGROUND_CHECKPOINTS"))

    @property
    def RECOVER_RATE(self) -> tuple[int, float] | None:
        """(number, seconds) from "N/period", or None for no limit."""
        value = self._get("RECOVER_RATE")
        if not value:
            return None
        number, _, period = str(value).partition("/")
        seconds = {"s": 1, "m": 60, "h": 3600, "d": 86400}.get(period[:1].lower())
        if seconds is None:
            raise ImproperlyConfigured(
                "WEBHOOKS_APP['RECOVER_RATE'] must look like '10/hour' (second, minute, "
                "hour or day)."
            )
        return int(number), float(seconds)

    @property
    def MAX_PAYLOAD_EXTRA_BYTES(self) -> int:
        return max(0, int(self._get("MAX_PAYLOAD_EXTRA_BYTES") or 0))

    @property
    def MAX_ENDPOINTS_PER_TENANT(self) -> int:
        return max(0, int(self._get("MAX_ENDPOINTS_PER_TENANT") or 0))

    @property
    def METRICS_TOKEN(self) -> str | None:
        return self._get("METRICS_TOKEN") or None

    @property
    def PROXY(self) -> str | None:
        value = self._get("PROXY") or None
        if value is not None and not str(value).lower().startswith(("http://", "https://")):
            raise ImproperlyConfigured(
                "WEBHOOKS_APP['PROXY'] must be an http:// or https:// URL of the proxy."
            )
        return value

    @property
    def ROUTING_LISTEN(self) -> bool:
        return bool(self._get("ROUTING_LISTEN"))


app_settings = AppSettings()
