"""Request and response shapes of the API; type checks only, the rules live in services.

Input serializers are strict: they refuse fields they do not know (and read-only ones)
and values of the wrong JSON type, instead of coercing or ignoring them, so a client's
typo is a 400 rather than a silently different endpoint. Everything beyond types (URL
safety, secret length, event registry, header names) is validated by ``services``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.core.validators import MaxLengthValidator, MinLengthValidator
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from ..models import Delivery, DeliveryAttempt, Endpoint
from ..signing import MIN_SECRET_LENGTH


# Strict fields ---------------------------------------------------------------------------
class StrictCharField(serializers.CharField):
    """Text only: DRF's CharField would turn ``123`` or ``true`` into a string."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictBooleanField(serializers.BooleanField):
    """``true``/``false`` only: DRF's BooleanField also takes ``"yes"``, ``1``, ``"on"``."""

    default_error_messages = {"invalid": "Must be true or false."}

    def to_internal_value(self, data: Any) -> bool:
        if not isinstance(data, bool):
            self.fail("invalid")
        return data


class StrictIntegerField(serializers.IntegerField):
    """A JSON number without a fraction (not ``"30"``, not ``true``)."""

    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, bool) or not isinstance(data, int | float):
            self.fail("invalid")
        if isinstance(data, float) and not data.is_integer():
            self.fail("invalid")
        return super().to_internal_value(int(data))


@extend_schema_field(
    {
        "oneOf": [
            {"type": "array", "items": {"type": "string"}},
            {"type": "object", "additionalProperties": {"type": "boolean"}},
        ],
        "description": (
            "Event types to receive: a list of names, or an object of name -> enabled "
            "(the per-event toggle). A name may be a wildcard: `user.*` (every type "
            "under user.) or `*` (every type), including types declared later. "
            "Deprecated types cannot be newly subscribed. Responses list the enabled "
            "ones. See /event-types/."
        ),
    }
)
class EventsField(serializers.Field):
    default_error_messages = {
        "invalid": "Give a list of event type names, or an object of name: true/false."
    }

    def to_internal_value(self, data: Any) -> list[str] | dict[str, bool]:
        if isinstance(data, list):
            if not all(isinstance(name, str) for name in data):
                self.fail("invalid")
            return list(data)
        if isinstance(data, Mapping):
            if not all(isinstance(v, bool) for v in data.values()):
                self.fail("invalid")
            return dict(data)
        self.fail("invalid")

    def to_representation(self, value: Any) -> list[str]:
        return list(value)


def reject_nul_characters(value: Any) -> None:
    """No U+0000 anywhere in a JSON value: PostgreSQL cannot store it in text or jsonb."""
    if isinstance(value, str):
        if "\x00" in value:
            raise serializers.ValidationError("Null characters are not allowed.")
    elif isinstance(value, Mapping):
        for key, item in value.items():
            reject_nul_characters(key)
            reject_nul_characters(item)
    elif isinstance(value, list):
        for item in value:
            reject_nul_characters(item)


class StrictSerializer(serializers.Serializer):
    """Refuses unknown and read-only fields with a message per field."""

    # Fields a client may plausibly send that are not accepted here, with the reason.
    refused_fields: dict[str, str] = {}

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, Mapping):
            errors: dict[str, list[str]] = {}
            for name in data:
                field = self.fields.get(name)
                if field is None:
                    errors[str(name)] = [self.refused_fields.get(name, "Unknown field.")]
                elif field.read_only:
                    errors[str(name)] = ["This field is read-only."]
            if errors:
                raise serializers.ValidationError(errors)
        return super().to_internal_value(data)


class ErrorSerializer(serializers.Serializer):
    """Every error but a 400: ``{"detail": "..."}``."""

    detail = serializers.CharField()


# Endpoints -------------------------------------------------------------------------------
class EndpointSerializer(StrictSerializer):
    """An endpoint as the API shows it (never its secret) and as clients write it."""

    id = serializers.IntegerField(read_only=True)
    name = StrictCharField(required=False, allow_blank=True, max_length=200)
    description = StrictCharField(required=False, allow_blank=True, trim_whitespace=False)
    url = StrictCharField(
        max_length=2000,
        trim_whitespace=False,  # services refuses whitespace in a URL, it does not guess
        help_text="Where webhooks are sent. https only unless the site allows http; "
        "private and reserved addresses are refused.",
    )
    method = serializers.ChoiceField(choices=Endpoint.Method.choices, required=False)
    is_active = StrictBooleanField(required=False)
    events = EventsField(source="event_types")
    headers = serializers.DictField(
        child=StrictCharField(allow_blank=True, trim_whitespace=False),
        required=False,
        help_text="Custom headers sent with every request. Values are stored encrypted "
        "and shown masked (`Bearer ••••1a2b`); send a masked value back unchanged to keep it.",
    )
    payload_extra = serializers.DictField(
        child=serializers.JSONField(),
        required=False,
        validators=[reject_nul_characters],
        help_text="Custom values added to every payload's top level.",
    )
    payload_fields = serializers.ListField(
        child=StrictCharField(),
        required=False,
        help_text="Keys of the event data to send (dotted for nested keys); empty: all.",
    )
    payload_format = StrictCharField(
        required=False,
        allow_blank=True,
        max_length=50,
        help_text="The shape of the JSON sent: standard, flat, type, cloudevents, or a "
        "format the site registered; empty: the site's default. See /payload-formats/.",
    )
    payload_filter = serializers.DictField(
        child=serializers.JSONField(),
        required=False,
        validators=[reject_nul_characters],
        help_text="Only events matching this filter are delivered, e.g. "
        '`{"data.amount": {"$gte": 100}, "data.plan": {"$in": ["pro", "team"]}}`. Paths '
        "start with data, event or tenant; operators $eq $neq $gt $gte $lt $lte $in $nin "
        "$exists, and $or / $and over lists of filters; a bare value means $eq. "
        "Empty: every event.",
    )
    notify_email = serializers.EmailField(required=False, allow_blank=True)
    rate_limit = StrictIntegerField(
        required=False,
        allow_null=True,
        help_text="At most this many deliveries per second, across all workers; "
        "null: no limit. Deliveries over the cap wait their turn.",
    )
    ordered = StrictBooleanField(
        required=False,
        help_text="Deliver one at a time in emit order; a failing delivery holds the "
        "later ones until it succeeds or fails for good. Default: in parallel.",
    )
    breaker_state = serializers.ChoiceField(
        choices=Endpoint.BreakerState.choices,
        read_only=True,
        help_text="Circuit breaker: closed (delivering), open (failing; deliveries wait "
        "for the cool-down), half_open (one probe delivery in flight).",
    )
    disabled_reason = serializers.CharField(read_only=True)
    created_at = serializers.DateTimeField(read_only=True)
    updated_at = serializers.DateTimeField(read_only=True)

    refused_fields = {
        "secret": "The secret cannot be edited; use POST /endpoints/{id}/rotate-secret/.",
        "tenant": "The tenant is set by the server from your credentials.",
    }

    # Defaults a PUT applies to the fields it leaves out: PUT replaces the endpoint.
    PUT_DEFAULTS: dict[str, Any] = {
        "name": "",
        "description": "",
        "method": Endpoint.Method.POST,
        "is_active": True,
        "headers": {},
        "payload_extra": {},
        "payload_fields": [],
        "payload_filter": {},
        "payload_format": "",
        "notify_email": "",
        "rate_limit": None,
        "ordered": False,
    }

    def to_representation(self, instance: Any) -> dict[str, Any]:
        data = super().to_representation(instance)
        if isinstance(instance, Endpoint):
            data["headers"] = instance.masked_headers()  # values are credentials
        return data

    def service_values(self) -> dict[str, Any]:
        """Validated data keyed as ``services`` names them."""
        values = dict(self.validated_data)
        if "event_types" in values:
            values["events"] = values.pop("event_types")
        return values


@extend_schema_field(
    {"type": "string", "minLength": MIN_SECRET_LENGTH, "maxLength": 200, "pattern": r"^\S+$"}
)
class SecretField(StrictCharField):
    """Documents its length limits but leaves checking them to ``services``.

    ``services.create_endpoint`` validates the secret together with the URL and events,
    so a request with several problems gets all their messages in one 400; a failing
    serializer field would stop validation before the services ran.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.validators = [
            v for v in self.validators if not isinstance(v, MinLengthValidator | MaxLengthValidator)
        ]


class EndpointCreateSerializer(EndpointSerializer):
    secret = SecretField(
        write_only=True,
        required=False,
        allow_blank=True,  # "" means "generate one", like leaving it out
        min_length=MIN_SECRET_LENGTH,
        max_length=200,
        help_text=f"Your own signing secret (at least {MIN_SECRET_LENGTH} characters); "
        "omit it to have one generated. Either way it is returned once, in this response.",
    )


class EndpointWithSecretSerializer(EndpointSerializer):
    """The create response: the endpoint and its plaintext secret, shown this once."""

    secret = serializers.CharField(
        read_only=True, help_text="The signing secret. Store it now: it is never shown again."
    )


class TestRequestSerializer(StrictSerializer):
    event_type = StrictCharField(
        required=False,
        max_length=100,
        help_text="The declared type to send, with its example payload; default: the "
        "built-in webhook.test. Every test carries a `webhook-test: true` header and "
        '`"test": true` in the envelope.',
    )
    data = serializers.DictField(
        child=serializers.JSONField(),
        required=False,
        validators=[reject_nul_characters],
        help_text="The test event's data; default: the type's example "
        '(webhook.test: {"message": "This is a test webhook"}).',
    )


class TestResultSerializer(serializers.Serializer):
    ok = serializers.BooleanField(help_text="The endpoint answered 2xx in time.")
    status_code = serializers.IntegerField(allow_null=True)
    duration_ms = serializers.IntegerField()
    response_excerpt = serializers.CharField(allow_blank=True)
    error = serializers.CharField(allow_blank=True)
    delivery = serializers.IntegerField(
        source="delivery.pk", help_text="The test delivery, in the history like any other."
    )
    event_id = serializers.CharField(source="delivery.event.public_id")


class RotateSecretRequestSerializer(StrictSerializer):
    grace = StrictIntegerField(
        required=False,
        allow_null=True,
        min_value=0,
        max_value=7 * 24 * 3600,
        help_text="Seconds during which the old secret keeps signing too (at most 7 days). "
        "Omitted or 0: the old secret stops at once.",
    )


class RecoverRequestSerializer(StrictSerializer):
    since = serializers.DateTimeField(
        help_text="Replay failed deliveries created at or after this time (ISO 8601)."
    )
    until = serializers.DateTimeField(
        required=False, allow_null=True, help_text="... and before this time; default: now."
    )


class RecoverResultSerializer(serializers.Serializer):
    queued = serializers.IntegerField(
        help_text="Failed deliveries queued to be sent again (0 when already pending)."
    )
    since = serializers.DateTimeField()
    until = serializers.DateTimeField(allow_null=True)


class RotateSecretResponseSerializer(serializers.Serializer):
    secret = serializers.CharField(help_text="The new secret. Store it now: never shown again.")
    previous_secret_expires_at = serializers.DateTimeField(
        allow_null=True, help_text="Until when the old secret still signs requests."
    )


class PreviewSerializer(serializers.Serializer):
    event_type = serializers.CharField()
    subscribed = serializers.BooleanField(
        help_text="Whether the endpoint receives this type (if it is active)."
    )
    method = serializers.CharField()
    url = serializers.CharField(help_text="For GET endpoints, with the query that is sent.")
    headers = serializers.DictField(
        child=serializers.CharField(), help_text="As sent, with the signatures masked."
    )
    body = serializers.CharField(
        allow_blank=True, help_text="The exact body (empty for GET: see the URL)."
    )


# Deliveries ------------------------------------------------------------------------------
class DeliveryAttemptSerializer(serializers.ModelSerializer):
    class Meta:
        model = DeliveryAttempt
        fields = [
            "number",
            "started_at",
            "duration_ms",
            "status_code",
            "response_excerpt",
            "error",
            "succeeded",
        ]
        read_only_fields = fields


class DeliverySerializer(serializers.ModelSerializer):
    event_id = serializers.CharField(source="event.public_id", read_only=True)

    class Meta:
        model = Delivery
        fields = [
            "id",
            "event_id",
            "endpoint",
            "event_type",
            "status",
            "attempts",
            "next_attempt_at",
            "last_attempt_at",
            "last_status_code",
            "last_response_ms",
            "last_error",
            "created_at",
        ]
        read_only_fields = fields


class DeliveryDetailSerializer(DeliverySerializer):
    attempt_log = DeliveryAttemptSerializer(many=True, read_only=True)
    payload = serializers.SerializerMethodField(help_text="The exact body (or query string) sent.")

    class Meta(DeliverySerializer.Meta):
        fields = [*DeliverySerializer.Meta.fields, "payload", "attempt_log"]
        read_only_fields = fields

    @extend_schema_field(OpenApiTypes.STR)
    def get_payload(self, delivery: Delivery) -> str:
        return delivery.payload_bytes().decode("utf-8")


# Events ----------------------------------------------------------------------------------
class EventSerializer(serializers.Serializer):
    id = serializers.CharField(
        source="public_id", help_text="The event id (evt_...), also sent as webhook-id."
    )
    event_type = serializers.CharField()
    created_at = serializers.DateTimeField()


class EventDeliverySerializer(DeliverySerializer):
    endpoint_name = serializers.CharField(source="endpoint.name", read_only=True)

    class Meta(DeliverySerializer.Meta):
        fields = [*DeliverySerializer.Meta.fields, "endpoint_name"]
        read_only_fields = fields


class EventDetailSerializer(EventSerializer):
    data = serializers.JSONField(help_text="The event's data as emitted.")
    deliveries = EventDeliverySerializer(
        source="delivery_rows", many=True, help_text="The deliveries it produced, oldest first."
    )


# Registry and stats ----------------------------------------------------------------------
class EventTypeSerializer(serializers.Serializer):
    name = serializers.CharField()
    description = serializers.CharField(allow_blank=True)
    group = serializers.CharField(help_text="The catalogue group the type is listed under.")
    example = serializers.JSONField(help_text="An example of the event's data.")
    schema = serializers.JSONField(
        allow_null=True, help_text="The JSON Schema of the event's data, if declared."
    )
    deprecated = serializers.BooleanField(
        help_text="Still delivered to existing subscriptions; cannot be newly subscribed."
    )
    subscribable = serializers.BooleanField(
        help_text="false for built-in types (webhook.test) and deprecated ones: endpoints "
        "cannot newly subscribe to them."
    )


class PayloadFormatSerializer(serializers.Serializer):
    name = serializers.CharField(help_text="The value of an endpoint's payload_format.")
    label = serializers.CharField()
    content_type = serializers.CharField(help_text="The Content-Type of POST bodies.")
    envelope = serializers.BooleanField(
        help_text="The data is wrapped in keys of the format's own (test events add "
        '"test": true beside them).'
    )
    default = serializers.BooleanField(help_text="The site's default format.")


class StatsSerializer(serializers.Serializer):
    total = serializers.IntegerField(help_text="Endpoints.")
    active = serializers.IntegerField()
    inactive = serializers.IntegerField()
    event_types = serializers.IntegerField(help_text="Distinct event types subscribed to.")
    failed_24h = serializers.IntegerField(help_text="Deliveries failed in the last 24 hours.")


# REST Hooks (Zapier, Make, n8n) ------------------------------------------------------------
class HookSubscribeSerializer(StrictSerializer):
    target_url = StrictCharField(
        max_length=2000, help_text="The URL the platform wants the event delivered to."
    )
    event = StrictCharField(max_length=100, help_text="One subscribable event type.")


class HookSerializer(serializers.Serializer):
    id = serializers.IntegerField(help_text="The subscription id (an endpoint id).")
    target_url = serializers.CharField()
    event = serializers.CharField()
    secret = serializers.CharField(
        help_text="The signing secret of the deliveries, returned this once."
    )
