"""API views: parse input, check permissions, call ``webhooks_app.services``; no model writes.

Every queryset starts from the request's tenant (see ``tenancy.py``), so another
tenant's ids are simply not found: 404, exactly like ids that never existed.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import QuerySet
from django.http import Http404
from django.utils import timezone
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import APIException, PermissionDenied, Throttled
from rest_framework.exceptions import ValidationError as DRFValidationError
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.serializers import as_serializer_error
from rest_framework.views import APIView

from .. import events, formats, queries, services
from ..models import Delivery, Endpoint, Event, new_event_id
from . import serializers as s
from .filters import (
    DeliveryFilter,
    EndpointFilter,
    EventFilter,
    PreviewQuery,
    TenantDeliveryFilter,
)
from .pagination import MAX_ID, IdCursorPagination
from .parsers import BoundedJSONParser
from .permissions import HasTenant, api_authentication_classes, api_permission_classes
from .tenancy import resolve_tenant
from .throttling import WebhooksActionThrottle


class Conflict(APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "The resource is not in a state that allows this."
    default_code = "conflict"


# Documented on every operation so that clients (and the schema check) know them.
COMMON_ERRORS = {
    401: OpenApiResponse(s.ErrorSerializer, description="Not authenticated."),
    403: OpenApiResponse(
        s.ErrorSerializer, description="Not allowed, or webhooks are not on this tenant's plan."
    ),
}
NOT_FOUND = {404: OpenApiResponse(s.ErrorSerializer, description="No such object for this tenant.")}
BAD_REQUEST = {
    400: OpenApiResponse(
        OpenApiTypes.OBJECT,
        description="Invalid input: an object of field name -> list of messages.",
    )
}
THROTTLED = {429: OpenApiResponse(s.ErrorSerializer, description="Too many requests; retry later.")}
CONFLICT = {409: OpenApiResponse(s.ErrorSerializer, description="Not possible in this state.")}


class WebhooksAPIMixin:
    """Configuration read live from ``WEBHOOKS_APP`` and service errors mapped to 400s."""

    schema = AutoSchema()
    # Any path segment reaches the view, so a malformed id gets the API's JSON 404 (from
    # get_object) instead of the site's HTML one from the URL resolver.
    lookup_value_regex = "[^/]+"
    # JSON only: strict types mean the same thing in every request, and form encoding
    # cannot express them.
    parser_classes = [BoundedJSONParser]
    renderer_classes = [JSONRenderer]
    throttle_scope: str | None = None

    def get_authenticators(self) -> list[Any]:
        return [cls() for cls in api_authentication_classes()]

    def get_permissions(self) -> list[Any]:
        return [cls() for cls in api_permission_classes()]

    def get_throttles(self) -> list[Any]:
        throttles = list(super().get_throttles())  # type: ignore[misc]
        if self.throttle_scope:
            throttles.append(WebhooksActionThrottle())
        return throttles

    @property
    def tenant(self) -> str:
        tenant = resolve_tenant(self.request)  # type: ignore[attr-defined]
        if tenant is None:  # HasTenant already refused this request; never filter on None
            raise PermissionDenied(HasTenant.message)
        return tenant

    def handle_exception(self, exc: Exception) -> Response:
        # The one place where services' per-field ValidationError becomes a DRF 400.
        if isinstance(exc, DjangoValidationError):
            exc = DRFValidationError(as_serializer_error(exc))
        return super().handle_exception(exc)  # type: ignore[misc]

    def get_object(self) -> Any:
        # Ids that cannot be primary keys are a 404 here, not a driver overflow (500).
        value = str(self.kwargs.get(self.lookup_url_kwarg or self.lookup_field, ""))  # type: ignore[attr-defined]
        if not value.isascii() or not value.isdigit() or int(value) > MAX_ID:
            raise Http404
        return super().get_object()  # type: ignore[misc]


def _validated(serializer_class: type, request: Request) -> dict[str, Any]:
    # An empty body parses to {}; a JSON ``null`` stays None and is refused.
    serializer = serializer_class(data=request.data)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


@extend_schema_view(
    list=extend_schema(
        summary="List endpoints",
        parameters=[EndpointFilter],
        responses={200: s.EndpointSerializer(many=True), **BAD_REQUEST, **COMMON_ERRORS},
    ),
    create=extend_schema(
        summary="Create an endpoint",
        description="The response carries the signing secret; no other response ever does.",
        request=s.EndpointCreateSerializer,
        responses={201: s.EndpointWithSecretSerializer, **BAD_REQUEST, **COMMON_ERRORS},
    ),
    retrieve=extend_schema(
        summary="Get an endpoint",
        responses={200: s.EndpointSerializer, **COMMON_ERRORS, **NOT_FOUND},
    ),
    update=extend_schema(
        summary="Replace an endpoint",
        description="Fields left out get their defaults. The secret cannot be set here: "
        "use rotate-secret.",
        responses={200: s.EndpointSerializer, **BAD_REQUEST, **COMMON_ERRORS, **NOT_FOUND},
    ),
    partial_update=extend_schema(
        summary="Change an endpoint",
        responses={200: s.EndpointSerializer, **BAD_REQUEST, **COMMON_ERRORS, **NOT_FOUND},
    ),
    destroy=extend_schema(
        summary="Delete an endpoint with its delivery history",
        responses={204: None, **COMMON_ERRORS, **NOT_FOUND},
    ),
)
class EndpointViewSet(
    WebhooksAPIMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.UpdateModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    """Webhook endpoints of the request's tenant."""

    queryset = Endpoint.objects.none()  # for the schema; get_queryset is per tenant
    serializer_class = s.EndpointSerializer
    pagination_class = IdCursorPagination

    def get_queryset(self) -> QuerySet[Endpoint]:
        return queries.endpoints(self.tenant).prefetch_related("subscriptions")

    def filter_queryset(self, queryset: QuerySet) -> QuerySet:
        queryset = super().filter_queryset(queryset)
        if self.action == "list":
            queryset = EndpointFilter.apply(queryset, self.request.query_params)
        return queryset

    def get_serializer_class(self) -> type:
        return s.EndpointCreateSerializer if self.action == "create" else s.EndpointSerializer

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        secret = self.perform_create(serializer)
        data = {**s.EndpointSerializer(serializer.instance).data, "secret": secret}
        return Response(data, status=status.HTTP_201_CREATED)

    def perform_create(self, serializer: s.EndpointCreateSerializer) -> str:
        values = serializer.service_values()
        endpoint, secret = services.create_endpoint(tenant=self.tenant, **values)
        serializer.instance = self._reload(endpoint)
        return secret

    def update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        partial = kwargs.pop("partial", False)
        instance = self.get_object()
        serializer = self.get_serializer(instance, data=request.data, partial=partial)
        serializer.is_valid(raise_exception=True)
        self.perform_update(serializer)
        return Response(s.EndpointSerializer(serializer.instance).data)

    def perform_update(self, serializer: s.EndpointSerializer) -> None:
        changes = serializer.service_values()
        if not serializer.partial:
            changes = {**serializer.PUT_DEFAULTS, **changes}
        endpoint = services.update_endpoint(serializer.instance, **changes)
        serializer.instance = self._reload(endpoint)

    def perform_destroy(self, instance: Endpoint) -> None:
        services.delete_endpoint(instance)

    def _reload(self, endpoint: Endpoint) -> Endpoint:
        # Fresh subscriptions: the instance's prefetch cache predates the service call.
        return self.get_queryset().get(pk=endpoint.pk)

    @extend_schema(
        summary="Send a test webhook now",
        description="Sends a test event synchronously and reports the outcome: "
        "`webhook.test`, or `event_type` with that type's example payload. Marked as a "
        'test (`webhook-test: true` header, `"test": true` in the envelope) and recorded '
        "in the endpoint's history. A receiver's failure is still a 200 here.",
        request=s.TestRequestSerializer,
        responses={
            200: s.TestResultSerializer,
            **BAD_REQUEST,
            **COMMON_ERRORS,
            **NOT_FOUND,
            **THROTTLED,
        },
    )
    @action(detail=True, methods=["post"], throttle_scope="test")
    def test(self, request: Request, pk: str | None = None) -> Response:
        endpoint = self.get_object()
        values = _validated(s.TestRequestSerializer, request)
        result = services.send_test(
            endpoint, values.get("data"), event_type=values.get("event_type", events.TEST_EVENT)
        )
        return Response(s.TestResultSerializer(result).data)

    @extend_schema(
        summary="Preview what the endpoint would receive",
        description="The request this endpoint would get for an event type's example: "
        "method, URL, headers (signatures masked) and body, built by the code that sends "
        "webhooks. Nothing is sent or saved; works for inactive endpoints too.",
        parameters=[PreviewQuery],
        responses={200: s.PreviewSerializer, **BAD_REQUEST, **COMMON_ERRORS, **NOT_FOUND},
    )
    @action(detail=True, methods=["get"])
    def preview(self, request: Request, pk: str | None = None) -> Response:
        endpoint = self.get_object()
        values = PreviewQuery.apply(None, request.query_params)
        result = services.preview(endpoint, values.get("event_type"))
        return Response(s.PreviewSerializer(result).data)

    @extend_schema(
        summary="Rotate the signing secret",
        description="Returns the new secret, once. With `grace`, requests are signed with "
        "both secrets until the grace period ends.",
        request=s.RotateSecretRequestSerializer,
        responses={
            200: s.RotateSecretResponseSerializer,
            **BAD_REQUEST,
            **COMMON_ERRORS,
            **NOT_FOUND,
        },
    )
    @action(detail=True, methods=["post"], url_path="rotate-secret")
    def rotate_secret(self, request: Request, pk: str | None = None) -> Response:
        endpoint = self.get_object()
        values = _validated(s.RotateSecretRequestSerializer, request)
        secret = services.rotate_secret(endpoint, grace=values.get("grace") or None)
        expires = (
            endpoint.previous_secret_expires_at if endpoint.previous_secret_encrypted else None
        )
        return Response(
            s.RotateSecretResponseSerializer(
                {"secret": secret, "previous_secret_expires_at": expires}
            ).data
        )

    @extend_schema(
        summary="Recover failed deliveries",
        description="Replays every failed delivery of this endpoint created in "
        "[since, until): same event ids, same bytes. Calling it twice queues nothing new. "
        "Limited per tenant (`RECOVER_RATE`).",
        request=s.RecoverRequestSerializer,
        responses={
            202: s.RecoverResultSerializer,
            **BAD_REQUEST,
            **COMMON_ERRORS,
            **NOT_FOUND,
            **CONFLICT,
            **THROTTLED,
        },
    )
    @action(detail=True, methods=["post"])
    def recover(self, request: Request, pk: str | None = None) -> Response:
        endpoint = self.get_object()
        values = _validated(s.RecoverRequestSerializer, request)
        try:
            result = services.recover(endpoint, since=values["since"], until=values.get("until"))
        except services.RecoverThrottled as exc:
            raise Throttled(wait=exc.wait) from None
        except DjangoValidationError as exc:
            if hasattr(exc, "error_dict"):
                raise
            raise Conflict(" ".join(exc.messages)) from None  # a disabled endpoint
        return Response(s.RecoverResultSerializer(result).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(
        summary="List an endpoint's deliveries",
        parameters=[DeliveryFilter],
        responses={
            200: s.DeliverySerializer(many=True),
            **BAD_REQUEST,
            **COMMON_ERRORS,
            **NOT_FOUND,
        },
    )
    @action(detail=True, methods=["get"])
    def deliveries(self, request: Request, pk: str | None = None) -> Response:
        endpoint = self.get_object()
        queryset = queries.list_columns(queries.deliveries(endpoint=endpoint))
        queryset = DeliveryFilter.apply(queryset, request.query_params)
        page = self.paginate_queryset(queryset)
        return self.get_paginated_response(s.DeliverySerializer(page, many=True).data)


@extend_schema_view(
    list=extend_schema(
        summary="List deliveries",
        parameters=[TenantDeliveryFilter],
        responses={200: s.DeliverySerializer(many=True), **BAD_REQUEST, **COMMON_ERRORS},
    ),
    retrieve=extend_schema(
        summary="Get a delivery with its attempts",
        responses={200: s.DeliveryDetailSerializer, **COMMON_ERRORS, **NOT_FOUND},
    ),
)
class DeliveryViewSet(
    WebhooksAPIMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet
):
    """Deliveries of the request's tenant: one event to one endpoint, with its attempts."""

    queryset = Delivery.objects.none()
    serializer_class = s.DeliverySerializer
    pagination_class = IdCursorPagination

    def get_queryset(self) -> QuerySet[Delivery]:
        # Delivery.tenant is the endpoint's tenant, copied when the delivery is created
        # (emit, send_test); an endpoint's tenant never changes. Filtering on the copy
        # alone keeps each page one range scan of the (tenant, -id) index: also joining
        # on endpoint.tenant lets the planner go endpoint-first and sort every match.
        queryset = queries.deliveries(tenant=self.tenant)
        if self.action == "list":
            return queries.list_columns(queryset)
        return queryset.select_related("event").prefetch_related("attempt_log")

    def filter_queryset(self, queryset: QuerySet) -> QuerySet:
        queryset = super().filter_queryset(queryset)
        if self.action == "list":
            queryset = TenantDeliveryFilter.apply(queryset, self.request.query_params)
        return queryset

    def get_serializer_class(self) -> type:
        return s.DeliveryDetailSerializer if self.action == "retrieve" else s.DeliverySerializer

    @extend_schema(
        summary="Replay a delivery",
        description="Queues a new attempt sequence with the same event id and body bytes.",
        request=None,
        responses={
            202: s.DeliverySerializer,
            **COMMON_ERRORS,
            **NOT_FOUND,
            **CONFLICT,
            **THROTTLED,
        },
    )
    @action(detail=True, methods=["post"], throttle_scope="replay")
    def replay(self, request: Request, pk: str | None = None) -> Response:
        delivery = self.get_object()
        _validated(s.StrictSerializer, request)  # no body fields: refuse any given
        try:
            delivery = services.replay(delivery)
        except DjangoValidationError as exc:
            # A delivery still in flight or an inactive endpoint is a state conflict.
            raise Conflict(" ".join(exc.messages)) from None
        return Response(s.DeliverySerializer(delivery).data, status=status.HTTP_202_ACCEPTED)


@extend_schema_view(
    list=extend_schema(
        summary="List events",
        description="The event log of the request's tenant, newest first: events that "
        "were routed to at least one endpoint (or all, with KEEP_UNROUTED_EVENTS).",
        parameters=[EventFilter],
        responses={200: s.EventSerializer(many=True), **BAD_REQUEST, **COMMON_ERRORS},
    ),
    retrieve=extend_schema(
        summary="Get an event with the deliveries it produced",
        responses={200: s.EventDetailSerializer, **COMMON_ERRORS, **NOT_FOUND},
    ),
)
class EventViewSet(
    WebhooksAPIMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet
):
    """The event log: what happened, and what became of each delivery (by event id)."""

    queryset = Event.objects.none()
    serializer_class = s.EventSerializer
    pagination_class = IdCursorPagination
    lookup_field = "public_id"
    lookup_url_kwarg = "id"

    def get_queryset(self) -> QuerySet[Event]:
        return queries.events(self.tenant)

    def filter_queryset(self, queryset: QuerySet) -> QuerySet:
        queryset = super().filter_queryset(queryset)
        if self.action == "list":
            queryset = queries.event_list_columns(
                EventFilter.apply(queryset, self.request.query_params)
            )
        return queryset

    def get_object(self) -> Event:
        # Public ids (evt_...), not primary keys; another tenant's ids are simply not found.
        event = queries.event_detail(self.get_queryset(), self.kwargs.get("id"))
        if event is None:
            raise Http404
        return event

    def get_serializer_class(self) -> type:
        return s.EventDetailSerializer if self.action == "retrieve" else s.EventSerializer


class EventTypeListView(WebhooksAPIMixin, APIView):
    """The event catalogue: every type with its description, group, example and schema."""

    @extend_schema(
        summary="List event types (the catalogue)",
        responses={200: s.EventTypeSerializer(many=True), **COMMON_ERRORS},
    )
    def get(self, request: Request) -> Response:
        rows = [
            {
                "name": name,
                "description": info["description"],
                "group": info["group"],
                "example": info["example"],
                "schema": info["schema"],
                "deprecated": info["deprecated"],
                "subscribable": name != events.TEST_EVENT and not info["deprecated"],
            }
            for name, info in sorted(events.event_types().items())
        ]
        return Response(s.EventTypeSerializer(rows, many=True).data)


class PayloadFormatListView(WebhooksAPIMixin, APIView):
    """The payload formats endpoints can choose (built in and registered by the site)."""

    @extend_schema(
        summary="List payload formats",
        responses={200: s.PayloadFormatSerializer(many=True), **COMMON_ERRORS},
    )
    def get(self, request: Request) -> Response:
        default = formats.default_name()
        rows = [
            {
                "name": f.name,
                "label": f.label,
                "content_type": f.content_type,
                "envelope": f.envelope,
                "default": f.name == default,
            }
            for f in formats.payload_formats().values()
        ]
        return Response(s.PayloadFormatSerializer(rows, many=True).data)


class StatsView(WebhooksAPIMixin, APIView):
    """Counts for the tenant's dashboard."""

    @extend_schema(
        summary="Endpoint and delivery counts", responses={200: s.StatsSerializer, **COMMON_ERRORS}
    )
    def get(self, request: Request) -> Response:
        return Response(s.StatsSerializer(queries.stats(self.tenant)).data)


# REST Hooks --------------------------------------------------------------------------------
@extend_schema_view(
    create=extend_schema(
        summary="Subscribe a REST hook",
        description="The REST Hooks convention of Zapier, Make and n8n: creates an endpoint "
        "receiving one event type at `target_url`, with a generated secret. A 410 from the "
        "target disables it (unsubscribes).",
        request=s.HookSubscribeSerializer,
        responses={201: s.HookSerializer, **BAD_REQUEST, **COMMON_ERRORS},
    ),
    destroy=extend_schema(
        summary="Unsubscribe a REST hook",
        description="Deletes the subscription's endpoint with its delivery history. Only "
        "endpoints made by `POST hooks/` can be unsubscribed here; any other id is a 404.",
        responses={204: None, **COMMON_ERRORS, **NOT_FOUND},
    ),
)
class HookViewSet(
    WebhooksAPIMixin, mixins.CreateModelMixin, mixins.DestroyModelMixin, viewsets.GenericViewSet
):
    """REST Hooks subscriptions of the request's tenant: endpoints with one event each."""

    queryset = Endpoint.objects.none()
    serializer_class = s.HookSubscribeSerializer

    def get_queryset(self) -> QuerySet[Endpoint]:
        # Only what hooks/ subscribed: an endpoint made in the admin, the portal or
        # endpoints/ is a 404 here, as Zapier unsubscribes only its own subscriptions.
        return queries.rest_hooks(self.tenant)

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        values = _validated(s.HookSubscribeSerializer, request)
        try:
            endpoint, secret = services.create_endpoint(
                tenant=self.tenant,
                url=values["target_url"],
                events=[values["event"]],
                name=f"REST hook: {values['event']}"[:200],
                rest_hook=True,
            )
        except DjangoValidationError as exc:
            # Field names of this request: url -> target_url, events -> event.
            renamed = {"url": "target_url", "events": "event"}
            errors = as_serializer_error(exc)
            raise DRFValidationError({renamed.get(k, k): v for k, v in errors.items()}) from None
        data = {
            "id": endpoint.pk,
            "target_url": endpoint.url,
            "event": values["event"],
            "secret": secret,
        }
        return Response(s.HookSerializer(data).data, status=status.HTTP_201_CREATED)

    def perform_destroy(self, instance: Endpoint) -> None:
        services.delete_endpoint(instance)


class EventTypeSampleView(WebhooksAPIMixin, APIView):
    """What a REST Hooks platform polls to build a trigger: a list of sample payloads."""

    @extend_schema(
        summary="Sample payloads of an event type",
        description="A list with one envelope as deliveries carry it, built from the "
        "type's registered example.",
        responses={
            200: OpenApiResponse(OpenApiTypes.OBJECT, description="A list of sample payloads."),
            **COMMON_ERRORS,
            **NOT_FOUND,
        },
    )
    def get(self, request: Request, name: str) -> Response:
        info = events.event_types().get(name)
        if info is None or name == events.TEST_EVENT:
            raise Http404
        sample = events.envelope(
            new_event_id(), name, timezone.now(), self.tenant, info.get("example", {})
        )
        return Response([sample])
