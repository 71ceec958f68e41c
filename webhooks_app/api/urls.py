"""API routes; a host site mounts them with ``path("api/webhooks/", include(...))``."""

from django.urls import path
from rest_framework.routers import SimpleRouter

from . import views
from .schema import ApiRootView, SchemaView

router = SimpleRouter()
router.register("endpoints", views.EndpointViewSet, basename="webhooks-endpoint")
router.register("deliveries", views.DeliveryViewSet, basename="webhooks-delivery")
router.register("events", views.EventViewSet, basename="webhooks-event")
router.register("hooks", views.HookViewSet, basename="webhooks-hook")

urlpatterns = [
    path("", ApiRootView.as_view(), name="webhooks-api-root"),
    *router.urls,
    path("event-types/", views.EventTypeListView.as_view(), name="webhooks-event-types"),
    path(
        "event-types/<str:name>/sample/",
        views.EventTypeSampleView.as_view(),
        name="webhooks-event-type-sample",
    ),
    path(
        "payload-formats/", views.PayloadFormatListView.as_view(), name="webhooks-payload-formats"
    ),
    path("stats/", views.StatsView.as_view(), name="webhooks-stats"),
    path("schema/", SchemaView.as_view(), name="webhooks-schema"),
]
