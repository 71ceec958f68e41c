"""Endpoints, subscriptions, events and the delivery records; no I/O here."""

from __future__ import annotations

import secrets
import time
from datetime import datetime

from django.db import models, router, transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from . import crypto


def new_event_id() -> str:
    """``evt_`` + a time-ordered, unguessable id (ms timestamp, 64 random bits)."""
    return f"evt_{int(time.time() * 1000):011x}{secrets.token_hex(8)}"


class RoutingQuerySet(models.QuerySet):
    """Bulk writes that change the routing stamp (``routing.py``) in the same transaction,
    unless they only touch the engine's bookkeeping columns, so every process's emit()
    sees the change at its next call."""

    def _bumping(self, fields) -> bool:
        return fields is None or not set(fields) <= self.model.ROUTING_BOOKKEEPING

    def update(self, **kwargs):
        from . import routing

        if not self._bumping(kwargs):
            # The engine's bookkeeping (after every chunk): one plain statement, as before.
            return super().update(**kwargs)
        with transaction.atomic(using=self.db, savepoint=False):
            changed = super().update(**kwargs)
            if changed:
                routing.bump(self.db)
        return changed

    update.alters_data = True

    def delete(self):
        from . import routing

        with transaction.atomic(using=self.db, savepoint=False):
            deleted = super().delete()
            if deleted[0]:
                routing.bump(self.db)
        return deleted

    delete.alters_data = True
    delete.queryset_only = True

    def bulk_create(self, objs, *args, **kwargs):
        from . import routing

        with transaction.atomic(using=self.db, savepoint=False):
            created = super().bulk_create(objs, *args, **kwargs)
            if created:
                routing.bump(self.db)
        return created

    def bulk_update(self, objs, fields, *args, **kwargs):
        from . import routing

        with transaction.atomic(using=self.db, savepoint=False):
            updated = super().bulk_update(objs, fields, *args, **kwargs)
            if updated and self._bumping(fields):
                routing.bump(self.db)
        return updated


class RoutingWrites(models.Model):
    """Saves and deletes that change the routing stamp, like ``RoutingQuerySet``."""

    # Columns the engine keeps up to date on its own; emit() never reads them.
    ROUTING_BOOKKEEPING: frozenset[str] = frozenset()

    objects = RoutingQuerySet.as_manager()

    class Meta:
        abstract = True

    def save(self, *args, **kwargs):
        from . import routing

        using = kwargs.get("using") or router.db_for_write(type(self), instance=self)
        fields = kwargs.get("update_fields")
        with transaction.atomic(using=using, savepoint=False):
            super().save(*args, **kwargs)
            if fields is None or not set(fields) <= self.ROUTING_BOOKKEEPING:
                routing.bump(using)

    def delete(self, *args, **kwargs):
        from . import routing

        using = kwargs.get("using") or router.db_for_write(type(self), instance=self)
        with transaction.atomic(using=using, savepoint=False):
            deleted = super().delete(*args, **kwargs)
            routing.bump(using)
        return deleted


class RoutingStamp(models.Model):
    """One row (id 1) whose random stamp changes with every routing change (routing.py)."""

    stamp = models.CharField(max_length=32)

    def __str__(self) -> str:
        return self.stamp


class BreakerState(models.TextChoices):
    CLOSED = "closed", _("Closed")
    OPEN = "open", _("Open")
    HALF_OPEN = "half_open", _("Half-open")


class Endpoint(RoutingWrites):
    ROUTING_BOOKKEEPING = frozenset(
        {
            "consecutive_failures",
            "breaker_state",
            "breaker_failures",
            "breaker_opened_at",
            "paused_until",
            "next_slot_at",
            "notice_sent_at",
            "notice_failures",
            "notice_last_error",
            "updated_at",
        }
    )

    class Method(models.TextChoices):
        POST = "POST", "POST"
        GET = "GET", "GET"

    BreakerState = BreakerState

    tenant = models.CharField(
        _("tenant"),
        max_length=100,
        blank=True,
        default="",
        db_index=True,
        help_text=_("The account this endpoint belongs to; empty for a single-tenant site."),
    )
    name = models.CharField(_("name"), max_length=200, blank=True)
    description = models.TextField(_("description"), blank=True)
    url = models.CharField(_("URL"), max_length=2000)
    method = models.CharField(
        _("HTTP method"), max_length=4, choices=Method.choices, default=Method.POST
    )
    is_active = models.BooleanField(_("active"), default=True)
    # Secrets are stored encrypted (see crypto.py) and never rendered after creation.
    secret_encrypted = models.TextField(editable=False)
    previous_secret_encrypted = models.TextField(blank=True, default="", editable=False)
    previous_secret_expires_at = models.DateTimeField(null=True, blank=True, editable=False)
    # {name: encrypted value}: header values often carry credentials (Authorization),
    # so they are stored encrypted like the secret; see get_headers() / set_headers().
    headers = models.JSONField(_("custom headers"), default=dict, blank=True)
    payload_extra = models.JSONField(_("custom payload values"), default=dict, blank=True)
    payload_fields = models.JSONField(
        _("payload fields"),
        default=list,
        blank=True,
        help_text=_("Keys of the event data to send (dotted for nested keys); empty: all."),
    )
    # A name from formats.payload_formats(); empty: the site's WEBHOOKS_APP["PAYLOAD_FORMAT"].
    # No choices here: sites register formats in code, and choices would shape migrations.
    payload_format = models.CharField(
        _("payload format"),
        max_length=50,
        blank=True,
        default="",
        help_text=_("The shape of the JSON sent; empty: the site's default."),
    )
    payload_filter = models.JSONField(
        _("payload filter"),
        default=dict,
        blank=True,
        help_text=_("Only events matching this filter are delivered; empty: every event."),
    )
    notify_email = models.EmailField(
        _("failure notification email"),
        blank=True,
        help_text=_("Told when a delivery fails for good or the endpoint is disabled."),
    )
    disabled_reason = models.CharField(_("disabled reason"), max_length=300, blank=True)
    consecutive_failures = models.PositiveIntegerField(default=0, editable=False)
    # Flow control (engine.claim enforces it across every worker and host).
    rate_limit = models.PositiveIntegerField(
        _("rate limit"),
        null=True,
        blank=True,
        help_text=_("At most this many deliveries per second; empty: no limit."),
    )
    ordered = models.BooleanField(
        _("ordered delivery"),
        default=False,
        help_text=_(
            "Send one delivery at a time in emit order; a failing delivery holds the later "
            "ones until it succeeds or fails for good."
        ),
    )
    breaker_state = models.CharField(
        _("circuit breaker"),
        max_length=10,
        choices=BreakerState.choices,
        default=BreakerState.CLOSED,
        editable=False,
    )
    # Failed attempts in a row (any delivery); opens the breaker at BREAKER_THRESHOLD.
    breaker_failures = models.PositiveIntegerField(default=0, editable=False)
    # When the breaker first opened in the current incident (kept across re-opens).
    breaker_opened_at = models.DateTimeField(null=True, blank=True, editable=False)
    # The claim skips this endpoint's deliveries until then: breaker open (its cool-down),
    # a probe or an ordered delivery in flight (its lease), rate limit booked up.
    paused_until = models.DateTimeField(null=True, blank=True, editable=False)
    # Rate limit: the time of the next free send slot (GCRA's theoretical arrival time).
    next_slot_at = models.DateTimeField(null=True, blank=True, editable=False)
    # Failure notices: when the last one was sent, and what failed since (the digest).
    notice_sent_at = models.DateTimeField(null=True, blank=True, editable=False)
    notice_failures = models.PositiveIntegerField(default=0, editable=False)
    notice_last_error = models.TextField(blank=True, default="", editable=False)
    # Made by a REST Hooks subscription (API hooks/): only these can be unsubscribed
    # there, so a platform's DELETE never removes an endpoint someone made by hand.
    rest_hook = models.BooleanField(_("REST Hooks subscription"), default=False, editable=False)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    class Meta:
        ordering = ["-id"]
        verbose_name = _("webhook endpoint")
        verbose_name_plural = _("webhook endpoints")
        indexes = [
            models.Index(fields=["tenant", "is_active"], name="webhooks_ep_tenant_active"),
            # The claim's "skip paused endpoints" subquery reads only paused rows.
            models.Index(
                fields=["paused_until"],
                condition=Q(paused_until__isnull=False),
                name="webhooks_ep_paused",
            ),
        ]

    def __str__(self) -> str:
        return self.name or self.url

    # Secrets -------------------------------------------------------------------------
    def set_secret(self, plaintext: str) -> None:
        self.secret_encrypted = crypto.encrypt(plaintext)

    def get_secret(self) -> str:
        return crypto.decrypt(self.secret_encrypted)

    def signing_secrets(self, now: datetime | None = None) -> list[str]:
        """The current secret, plus the previous one while its grace period lasts."""
        now = now or timezone.now()
        keys = [self.get_secret()]
        if (
            self.previous_secret_encrypted
            and self.previous_secret_expires_at
            and self.previous_secret_expires_at > now
        ):
            keys.append(crypto.decrypt(self.previous_secret_encrypted))
        return keys

    # Custom headers ----------------------------------------------------------------------
    def set_headers(self, plain: dict[str, str]) -> None:
        self.headers = {name: crypto.encrypt(value) for name, value in (plain or {}).items()}

    def get_headers(self) -> dict[str, str]:
        """The custom headers in plain text (raises ValueError if a value won't decrypt)."""
        return {name: crypto.decrypt(value) for name, value in (self.headers or {}).items()}

    def masked_headers(self) -> dict[str, str]:
        """What pages and the API show: ``{"Authorization": "Bearer ••••1a2b"}``."""
        from .headers import MASK, mask

        shown = {}
        for name, value in (self.headers or {}).items():
            try:
                shown[name] = mask(crypto.decrypt(value))
            except ValueError:
                shown[name] = MASK
        return shown

    @property
    def event_types(self) -> list[str]:
        return sorted(s.event_type for s in self.subscriptions.all() if s.enabled)


class Subscription(RoutingWrites):
    """One event type an endpoint receives; ``enabled`` is the per-event toggle."""

    endpoint = models.ForeignKey(Endpoint, on_delete=models.CASCADE, related_name="subscriptions")
    event_type = models.CharField(_("event type"), max_length=100)
    enabled = models.BooleanField(_("enabled"), default=True)

    class Meta:
        ordering = ["event_type"]
        constraints = [
            models.UniqueConstraint(
                fields=["endpoint", "event_type"], name="webhooks_subscription_unique"
            )
        ]
        indexes = [models.Index(fields=["event_type", "enabled"], name="webhooks_sub_type")]

    def __str__(self) -> str:
        return self.event_type


class Event(models.Model):
    # (Migration 0013 dropped the LIKE-only copy of its unique index that PostgreSQL got.)
    public_id = models.CharField(max_length=40, unique=True, default=new_event_id, editable=False)
    # No index of its own: the composite indexes below start with it.
    tenant = models.CharField(max_length=100, blank=True, default="")
    event_type = models.CharField(max_length=100)
    data = models.JSONField(default=dict)
    # The exact body bytes (UTF-8) of the standard envelope, fixed at emit time so that
    # every retry and replay sends identical bytes.
    body = models.TextField()
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    # Sent by send_test() (the Test button / test API): a webhook-test: true header.
    is_test = models.BooleanField(default=False)

    class Meta:
        ordering = ["-id"]
        indexes = [
            # The event log (API, admin): one tenant's events newest first, by type too.
            models.Index(fields=["tenant", "-id"], name="webhooks_event_tenant"),
            models.Index(fields=["tenant", "event_type", "-id"], name="webhooks_event_tenant_type"),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} {self.public_id}"


class InactivityTimer(models.Model):
    """A pending ``touch()``: its event is emitted once ``due_at`` passes untouched.

    The row is the timer: a worker deletes it and emits the event in one transaction, so
    a crash either did both or neither, and a restart simply finds the row still due.
    """

    key = models.CharField(max_length=200, unique=True)
    tenant = models.CharField(max_length=100, blank=True, default="")
    event_type = models.CharField(max_length=100)
    data = models.JSONField(default=dict)
    idle_seconds = models.FloatField()
    due_at = models.DateTimeField(db_index=True)
    # The first touch of this cycle, and the last one.
    created_at = models.DateTimeField(default=timezone.now)
    touched_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["due_at"]

    def __str__(self) -> str:
        return f"{self.key} → {self.event_type} at {self.due_at:%Y-%m-%d %H:%M:%S}"


class Delivery(models.Model):
    """One event to one endpoint: the source of truth for what must still be sent."""

    class Status(models.TextChoices):
        PENDING = "pending", _("Pending")
        SUCCEEDED = "succeeded", _("Success")
        FAILED = "failed", _("Failed")

    # No single-column index on either key: webhooks_delivery_unique starts with the
    # event, webhooks_dlv_endpoint with the endpoint (cascades and joins use those).
    event = models.ForeignKey(
        Event, on_delete=models.CASCADE, related_name="deliveries", db_index=False
    )
    # Deleting an endpoint deletes its deliveries and their attempts (documented).
    endpoint = models.ForeignKey(
        Endpoint, on_delete=models.CASCADE, related_name="deliveries", db_index=False
    )
    tenant = models.CharField(max_length=100, blank=True, default="")
    event_type = models.CharField(max_length=100)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    # Attempts made in the current sequence (reset by a replay): indexes RETRY_SCHEDULE.
    sequence_attempts = models.PositiveIntegerField(default=0)
    # When pending: when the next attempt is due, or, while claimed, when the claim ends.
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    claim_token = models.CharField(max_length=32, blank=True, default="")
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_response_ms = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    # Set only when this endpoint's body differs from the event's (GET, selected fields,
    # custom values); fixed at emit time like Event.body.
    body = models.TextField(null=True, blank=True)
    # The body's media type when it is not application/json (e.g. CloudEvents'), fixed
    # with the body: a later change of the endpoint's format never mislabels it.
    content_type = models.CharField(max_length=100, blank=True, default="")
    # The HTTP method the body was built for (GET: a query string, POST: JSON), fixed at
    # emit time with it: an endpoint whose method changes later gets the new method for
    # later events only, and a delivery is never sent in a form it was not built for.
    # Empty on rows from before this column (see send_method()).
    method = models.CharField(max_length=4, blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-id"]
        verbose_name_plural = _("deliveries")
        constraints = [
            models.UniqueConstraint(fields=["event", "endpoint"], name="webhooks_delivery_unique")
        ]
        indexes = [
            # The dispatcher's and the recovery loop's only query: due pending rows.
            models.Index(
                fields=["next_attempt_at"],
                condition=Q(status="pending"),
                name="webhooks_delivery_due",
            ),
            # History pages: one endpoint's deliveries newest first, optionally by status.
            models.Index(fields=["endpoint", "-id"], name="webhooks_dlv_endpoint"),
            models.Index(fields=["endpoint", "status", "-id"], name="webhooks_dlv_ep_status"),
            models.Index(fields=["endpoint", "event_type", "-id"], name="webhooks_dlv_ep_type"),
            # Both history filters at once: without it SQLite walks one of the two
            # indexes above and checks the other column row by row (~0.3 s at 1M rows).
            models.Index(
                fields=["endpoint", "status", "event_type", "-id"],
                name="webhooks_dlv_ep_status_type",
            ),
            # API lists per tenant, and the stats' recent failures.
            models.Index(fields=["tenant", "-id"], name="webhooks_dlv_tenant"),
            models.Index(fields=["status", "-last_attempt_at"], name="webhooks_dlv_status_time"),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} → {self.endpoint_id} ({self.status})"

    def payload_bytes(self) -> bytes:
        return (self.body if self.body is not None else self.event.body).encode("utf-8")

    def send_method(self) -> str:
        """The method to send with: the one the body was built for."""
        if self.method:
            return self.method
        # Older rows: the envelope and custom JSON bodies are objects; a query is not.
        if self.body is None or self.body.startswith("{"):
            return Endpoint.Method.POST
        return Endpoint.Method.GET


class DeliveryAttempt(models.Model):
    # Indexed by webhooks_attempt_unique, which starts with it.
    delivery = models.ForeignKey(
        Delivery, on_delete=models.CASCADE, related_name="attempt_log", db_index=False
    )
    number = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    duration_ms = models.PositiveIntegerField(default=0)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    response_excerpt = models.TextField(blank=True)
    error = models.TextField(blank=True)
    succeeded = models.BooleanField(default=False)

    class Meta:
        ordering = ["delivery", "number"]
        constraints = [
            models.UniqueConstraint(fields=["delivery", "number"], name="webhooks_attempt_unique")
        ]

    def __str__(self) -> str:
        return f"attempt {self.number} of delivery {self.delivery_id}"


class IdempotencyKey(models.Model):
    """One ``emit(..., idempotency_key=...)`` key per tenant: the unique constraint, not a
    read-then-write, makes concurrent callers agree on the first event.

    Kept apart from Event because an unrouted event writes no Event row; the key then
    carries the event's body so a repeated call can still return it.
    """

    tenant = models.CharField(max_length=100, blank=True, default="")
    key = models.CharField(max_length=200)
    event_public_id = models.CharField(max_length=40)
    event_type = models.CharField(max_length=100)
    # Only when the event itself was not stored (unrouted): what emit() returned.
    body = models.TextField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "key"], name="webhooks_idempotency_unique")
        ]

    def __str__(self) -> str:
        return f"{self.key} → {self.event_public_id}"


class MagicLinkUse(models.Model):
    """A portal magic link that was redeemed: each link opens the portal once."""

    nonce = models.CharField(max_length=64, unique=True)
    tenant = models.CharField(max_length=100, blank=True, default="")
    used_at = models.DateTimeField(default=timezone.now)
    # Rows past this time can be deleted: an expired link is refused on its signature.
    expires_at = models.DateTimeField(db_index=True)

    def __str__(self) -> str:
        return f"magic link {self.nonce[:8]}… ({self.tenant})"


class Recovery(models.Model):
    """One bulk recovery ("replay every failed delivery since T"): the per-tenant throttle
    counts these rows, so it holds across processes and hosts, and they are the record
    of who recovered what."""

    tenant = models.CharField(max_length=100, blank=True, default="")
    endpoint = models.ForeignKey(Endpoint, on_delete=models.CASCADE, related_name="recoveries")
    since = models.DateTimeField()
    until = models.DateTimeField(null=True, blank=True)
    queued = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-id"]
        verbose_name_plural = _("recoveries")
        indexes = [models.Index(fields=["tenant", "created_at"], name="webhooks_recovery_tenant")]

    def __str__(self) -> str:
        return f"recovery of {self.endpoint_id} since {self.since:%Y-%m-%d %H:%M}"
