"""``path("metrics/", include("webhooks_app.metrics.urls"))`` in the host's URLconf."""

from django.urls import path

from .views import metrics

urlpatterns = [path("", metrics, name="webhooks-metrics")]
