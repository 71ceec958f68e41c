"""Portal routes; a site mounts them with ``path("webhooks/", include(...))``."""

from django.urls import path

from . import views

app_name = "webhooks_portal"

urlpatterns = [
    path("", views.endpoint_list, name="list"),
    path("new/", views.endpoint_create, name="create"),
    path("verify/", views.verify, name="verify"),
    path("leave/", views.end_session, name="leave"),
    path("open/<str:token>/", views.magic_open, name="magic"),
    path("<int:pk>/", views.endpoint_edit, name="edit"),
    path("<int:pk>/test/", views.endpoint_test, name="test"),
    path("<int:pk>/rotate-secret/", views.endpoint_rotate, name="rotate"),
    path("<int:pk>/delete/", views.endpoint_delete, name="delete"),
    path("<int:pk>/history/", views.endpoint_history, name="history"),
    path("<int:pk>/history/<int:delivery_id>/", views.delivery_detail, name="delivery"),
    path(
        "<int:pk>/history/<int:delivery_id>/replay/",
        views.delivery_replay,
        name="replay",
    ),
]
