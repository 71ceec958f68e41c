"""Query-string filters for the endpoint and delivery lists, validated like request bodies.

Each filter is a serializer: it validates the query string (a bad value is a 400 naming
the parameter, never a silent no-op) and drf-spectacular documents it from the same
class via ``extend_schema(parameters=[...])``.
"""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from rest_framework import serializers

from .. import queries
from ..models import Delivery
from .pagination import MAX_ID


class _QueryFilter(serializers.Serializer):
    def filter(self, queryset: QuerySet, values: dict[str, Any]) -> QuerySet:
        raise NotImplementedError

    # Read by the pagination class and DRF's format override, not by the filter.
    OTHER_PARAMETERS = ("cursor", "limit", "format")

    @classmethod
    def apply(cls, queryset: QuerySet, query_params: Any) -> QuerySet:
        """Validate ``query_params`` (400 on bad values) and filter ``queryset``."""
        known = set(cls().fields) | set(cls.OTHER_PARAMETERS)
        # ``?stauts=failed`` silently listing everything is the bug this prevents.
        unknown = sorted(name for name in query_params if name not in known)
        if unknown:
            raise serializers.ValidationError(
                {name: ["Unknown query parameter."] for name in unknown}
            )
        # A plain dict: with a QueryDict DRF reads a missing boolean as False (checkbox
        # semantics), which would turn "no is_active filter" into "is_active=false".
        data = {name: query_params.get(name) for name in cls().fields if name in query_params}
        serializer = cls(data=data)
        serializer.is_valid(raise_exception=True)
        return serializer.filter(queryset, serializer.validated_data)


class EndpointFilter(_QueryFilter):
    search = serializers.CharField(
        required=False,
        max_length=200,
        help_text="Case-insensitive text in the endpoint's name or URL.",
    )
    is_active = serializers.BooleanField(
        required=False, help_text="true: active endpoints only; false: inactive only."
    )

    def filter(self, queryset: QuerySet, values: dict[str, Any]) -> QuerySet:
        return queries.filter_endpoints(
            queryset, search=values.get("search"), is_active=values.get("is_active")
        )


class DeliveryFilter(_QueryFilter):
    status = serializers.ChoiceField(choices=Delivery.Status.choices, required=False)
    event_type = serializers.CharField(required=False, max_length=100)
    created_after = serializers.DateTimeField(
        required=False, help_text="Deliveries created at or after this time (ISO 8601)."
    )
    created_before = serializers.DateTimeField(
        required=False, help_text="Deliveries created before this time (ISO 8601)."
    )
    event = serializers.RegexField(
        r"^evt_[A-Za-z0-9]{1,36}$",
        required=False,
        help_text="An event id (evt_...): the deliveries that event produced.",
    )

    def filter(self, queryset: QuerySet, values: dict[str, Any]) -> QuerySet:
        return queries.filter_deliveries(
            queryset,
            status=values.get("status"),
            event_type=values.get("event_type"),
            created_after=values.get("created_after"),
            created_before=values.get("created_before"),
            endpoint_id=values.get("endpoint"),
            event=values.get("event"),
        )


class TenantDeliveryFilter(DeliveryFilter):
    """``GET /deliveries/`` can also narrow to one endpoint (read in the parent's filter)."""

    endpoint = serializers.IntegerField(
        required=False, min_value=1, max_value=MAX_ID, help_text="An endpoint id."
    )


class EventFilter(_QueryFilter):
    """``GET /events/``: the event log, by type and time."""

    event_type = serializers.CharField(required=False, max_length=100)
    created_after = serializers.DateTimeField(
        required=False, help_text="Events created at or after this time (ISO 8601)."
    )
    created_before = serializers.DateTimeField(
        required=False, help_text="Events created before this time (ISO 8601)."
    )

    def filter(self, queryset: QuerySet, values: dict[str, Any]) -> QuerySet:
        return queries.filter_events(
            queryset,
            event_type=values.get("event_type"),
            created_after=values.get("created_after"),
            created_before=values.get("created_before"),
        )


class PreviewQuery(_QueryFilter):
    """``GET /endpoints/{id}/preview/?event_type=...``."""

    OTHER_PARAMETERS = ("format",)

    event_type = serializers.CharField(
        required=False,
        max_length=100,
        help_text="The event type whose example to preview; default: the endpoint's first.",
    )

    def filter(self, queryset: Any, values: dict[str, Any]) -> dict[str, Any]:
        return dict(values)  # nothing to filter: the validated parameters themselves
