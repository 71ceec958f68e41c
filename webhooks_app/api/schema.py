"""The OpenAPI document: served at ``schema/`` and committed as ``openapi.yaml``.

The committed file is the contract; ``tests/test_api_schema.py`` regenerates it and fails
when the code disagrees. Regenerate after an intentional change with::

    .venv/bin/python manage.py spectacular --urlconf webhooks_app.api.urls \\
        --custom-settings webhooks_app.api.schema.SPECTACULAR_SETTINGS \\
        --validate --fail-on-warn --file webhooks_app/api/openapi.yaml

Paths are relative to wherever the host site mounts ``webhooks_app.api.urls``; the
served copy names that mount point in ``servers``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.renderers import OpenApiYamlRenderer
from drf_spectacular.settings import patched_settings
from drf_spectacular.utils import extend_schema
from drf_spectacular.views import SpectacularAPIView
from rest_framework.permissions import AllowAny
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from .. import __version__

SCHEMA_FILE = Path(__file__).with_name("openapi.yaml")
URLCONF = "webhooks_app.api.urls"
REGENERATE = (
    ".venv/bin/python manage.py spectacular --urlconf webhooks_app.api.urls "
    "--custom-settings webhooks_app.api.schema.SPECTACULAR_SETTINGS "
    "--validate --fail-on-warn --file webhooks_app/api/openapi.yaml"
)

# Applied over the host's SPECTACULAR_SETTINGS, so the document describes this app, not
# the host site, and is the same wherever the app is installed.
SPECTACULAR_SETTINGS: dict[str, Any] = {
    "TITLE": "webhooks_app API",
    "DESCRIPTION": (
        "Manage outbound webhooks: endpoints, their signing secrets, test deliveries, the "
        "delivery history and replays. Every request acts for one tenant; other tenants' "
        "objects answer 404. Lists use cursor pagination (`cursor`, `limit`)."
    ),
    "VERSION": __version__,
    # Separate request and response components: read-only fields are not request input.
    "COMPONENT_SPLIT_REQUEST": True,
    "SCHEMA_PATH_PREFIX": "",
    "SERVERS": [],
    "SCHEMA_COERCE_PATH_PK_SUFFIX": True,
    "ENUM_NAME_OVERRIDES": {},
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "webhooks_app.api.schema.forbid_unknown_request_fields",
        "webhooks_app.api.schema.integer_ids",
    ],
}


def forbid_unknown_request_fields(result: dict, generator: Any, **kwargs: Any) -> dict:
    """Request bodies refuse unknown fields (400), so say so: additionalProperties false."""
    for name, component in result.get("components", {}).get("schemas", {}).items():
        if name.endswith("Request") and component.get("type") == "object":
            component["additionalProperties"] = False
    return result


def integer_ids(result: dict, generator: Any, **kwargs: Any) -> dict:
    """Document ``{id}`` as the integer it is.

    The routes accept any segment (see ``WebhooksAPIMixin.lookup_value_regex``) only so
    that a malformed id gets a JSON 404; that is not an invitation to send strings.
    """
    for operations in result.get("paths", {}).values():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                if parameter.get("in") == "path" and parameter.get("name") == "id":
                    parameter["schema"] = {"type": "integer"}
                    parameter["description"] = "The object's id."
    return result


def generate() -> dict[str, Any]:
    """The document as the committed file should hold it."""
    with patched_settings(SPECTACULAR_SETTINGS):
        return SchemaGenerator(urlconf=URLCONF).get_schema(request=None, public=True)


def render(document: dict[str, Any]) -> str:
    return OpenApiYamlRenderer().render(document, renderer_context={}).decode("utf-8")


class SchemaView(SpectacularAPIView):
    """The OpenAPI document, YAML or JSON by content negotiation (``?format=json``)."""

    # Public: it describes the API, holds no data, and lets tooling fetch it unauthenticated.
    permission_classes = [AllowAny]
    urlconf = URLCONF
    custom_settings = SPECTACULAR_SETTINGS

    @extend_schema(exclude=True)  # the document does not describe itself
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        response = super().get(request, *args, **kwargs)
        # The mount point: the path up to this view's own "schema/".
        prefix = request.path[: request.path.rfind("schema/")]
        response.data = {**response.data, "servers": [{"url": prefix.rstrip("/") or "/"}]}
        return response


class ApiRootView(APIView):
    """``GET`` the mount point: where the routes and the schema are (public, no data)."""

    permission_classes = [AllowAny]
    authentication_classes: list = []
    renderer_classes = [JSONRenderer]
    ROUTES = ("endpoints", "deliveries", "event-types", "stats")

    @extend_schema(exclude=True)  # a map of the document's own paths
    def get(self, request: Request) -> Response:
        base = request.path if request.path.endswith("/") else request.path + "/"
        return Response(
            {
                "name": SPECTACULAR_SETTINGS["TITLE"],
                "version": __version__,
                "routes": {r: request.build_absolute_uri(f"{base}{r}/") for r in self.ROUTES},
                "schema": request.build_absolute_uri(f"{base}schema/"),
                "authentication": "Every route but this one and schema/ needs an "
                "authenticated user; each acts for that user's tenant.",
            }
        )
