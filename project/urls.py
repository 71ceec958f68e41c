"""URLs of the demo site."""

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from django.views.generic import RedirectView

from project.receiver import views as receiver

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    path("admin/", admin.site.urls),
    # Customers (non-staff users) log in here to reach the webhooks portal.
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("api/webhooks/", include("webhooks_app.api.urls")),
    path("webhooks/", include("webhooks_app.portal.urls")),
    path("metrics/", include("webhooks_app.metrics.urls")),
    path("receiver/", receiver.inbox_list, name="receiver-list"),
    path("receiver/<slug:slug>/", receiver.receive, name="receiver-receive"),
]
