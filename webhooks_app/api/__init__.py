"""REST API for webhooks_app (djangorestframework): mount with include("webhooks_app.api.urls")."""
