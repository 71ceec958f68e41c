"""REST API for webhooks_app (djangorestframework): mount with include("webhooks_app.api.urls").

Routes, relative to the mount point (the demo uses ``/api/webhooks/``)::

    GET, POST               endpoints/                      list (search, is_active) / create
    GET, PUT, PATCH, DELETE endpoints/{id}/
    POST                    endpoints/{id}/test/            synchronous test delivery
    POST                    endpoints/{id}/rotate-secret/   {"grace": seconds}
    GET                     endpoints/{id}/deliveries/      status, event_type, created_*
    GET                     deliveries/                     ... and endpoint
    GET                     deliveries/{id}/                with its attempts
    POST                    deliveries/{id}/replay/
    GET                     event-types/
    GET                     stats/
    GET                     schema/                         OpenAPI 3 (YAML; ?format=json)

Modules: ``tenancy`` (which tenant a request acts for), ``permissions`` (DRF classes,
tenant and plan gate), ``throttling``, ``parsers`` (JSON only, bounded nesting),
``serializers``, ``filters``, ``pagination``, ``views`` (call ``webhooks_app.services``),
``schema`` (the committed ``openapi.yaml`` and how to regenerate it).
Settings (``WEBHOOKS_APP``): TENANT_RESOLVER, FEATURE_GATE, API_AUTHENTICATION_CLASSES,
API_PERMISSION_CLASSES, API_THROTTLE_RATE.

Request bodies are JSON objects; unknown or read-only fields, wrong JSON types and unknown
query parameters are 400s with a message per field, never silently ignored.
"""
