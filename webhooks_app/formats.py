"""Payload formats: the shape of the JSON object an endpoint receives for an event.

Each endpoint picks one (``Endpoint.payload_format``; empty means the site's
``WEBHOOKS_APP["PAYLOAD_FORMAT"]``). Four are built in, matching the products this app
was modelled on, and a site adds its own with :func:`register_payload_format`:

- ``standard``: ``{"id", "event", "timestamp", "version", "<TENANT_KEY>", "data"}``;
- ``flat``: the data's own fields at the top level beside ``"event"`` (Pickaxe);
- ``type``: ``{"type", "timestamp" (Unix seconds), "<TENANT_KEY>", "data"}`` (Userpilot;
  set ``TENANT_KEY`` to ``"app_token"`` for its exact shape);
- ``cloudevents``: CloudEvents 1.0 structured JSON, sent as
  ``application/cloudevents+json``.

A format only builds the object. Field selection (``payload_fields``) has already been
applied to ``data``; custom values (``payload_extra``) are added at the top level after
it without ever replacing one of the format's keys; GET endpoints get the object
flattened into a query string; the serialiser is the project's (``events.dumps``). So
all of these work the same with every format, and the event id always travels in the
``webhook-id`` header too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.core.exceptions import ValidationError

from .conf import app_settings

STANDARD = "standard"
FLAT = "flat"
TYPE = "type"
CLOUDEVENTS = "cloudevents"
JSON = "application/json"


@dataclass(frozen=True)
class EventInfo:
    """What a format may use: the event, its tenant and the (field-selected) data."""

    id: str
    type: str
    created: datetime
    tenant: str
    data: Any
    # An envelope format adds ``"test": true`` when set (test events, see has_envelope).
    test: bool = False

    @property
    def timestamp(self) -> str:
        """RFC 3339 in UTC with milliseconds, as the standard envelope writes it."""
        return self.created.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass(frozen=True)
class PayloadFormat:
    name: str
    build: Callable[[EventInfo], Mapping[str, Any]]
    label: str
    content_type: str = JSON
    # True when the format wraps the data in an envelope of its own keys, so a flag such
    # as ``"test": true`` can be added beside them without touching the data.
    envelope: bool = True
    # Top-level keys custom values may not use (besides those the format adds itself).
    reserved: Callable[[], Iterable[str]] = lambda: ()
    # Extra rules for custom values under this format: raises ValidationError.
    check_extra: Callable[[Mapping[str, Any]], None] | None = None


def _standard(e: EventInfo) -> dict[str, Any]:
    body = {
        "id": e.id,
        "event": e.type,
        "timestamp": e.timestamp,
        "version": app_settings.PAYLOAD_VERSION,
        app_settings.TENANT_KEY: e.tenant,
        "data": e.data,
    }
    if e.test:
        body["test"] = True
    return body


def _flat(e: EventInfo) -> dict[str, Any]:
    # The event type wins over a data field called "event": receivers branch on it.
    if isinstance(e.data, Mapping):
        return {**{k: v for k, v in e.data.items() if k != "event"}, "event": e.type}
    return {"event": e.type, "data": e.data}  # a list or scalar has no fields to spread


def _type(e: EventInfo) -> dict[str, Any]:
    body = {
        "type": e.type,
        "timestamp": int(e.created.timestamp()),
        app_settings.TENANT_KEY: e.tenant,
        "data": e.data,
    }
    if e.test:
        body["test"] = True
    return body


def _cloudevents(e: EventInfo) -> dict[str, Any]:
    body = {
        "specversion": "1.0",
        "id": e.id,
        "source": cloudevents_source(e.tenant),
        "type": e.type,
        "time": e.timestamp,
        "datacontenttype": JSON,
        "data": e.data,
    }
    if e.test:
        body["test"] = True  # an extension attribute (boolean)
    return body


def cloudevents_source(tenant: str) -> str:
    """``WEBHOOKS_APP["CLOUDEVENTS_SOURCE"]`` with ``{tenant}`` filled in."""
    return app_settings.CLOUDEVENTS_SOURCE.replace("{tenant}", tenant or "-")


_CE_CONTEXT = {"specversion", "id", "source", "type", "time", "datacontenttype", "data"}
_CE_RESERVED = {"dataschema", "subject", "data_base64", "test"}


def _check_cloudevents_extra(extra: Mapping[str, Any]) -> None:
    """Custom values become CloudEvents extension attributes: the spec limits their names
    to lower-case ASCII letters and digits and their values to scalars."""
    for key, value in extra.items():
        if not (key.isascii() and key.isalnum() and key == key.lower() and len(key) <= 20):
            raise ValidationError(
                "%(key)r is not a CloudEvents attribute name: use at most 20 lower-case "
                "letters and digits.",
                code="invalid",
                params={"key": key},
            )
        if value is None or isinstance(value, Mapping | list | tuple | float):
            raise ValidationError(
                "CloudEvents attribute %(key)s must be text, an integer or true/false.",
                code="invalid",
                params={"key": key},
            )


_formats: dict[str, PayloadFormat] = {}


def _add(fmt: PayloadFormat) -> None:
    _formats[fmt.name] = fmt


_add(
    PayloadFormat(
        STANDARD,
        _standard,
        "Standard envelope (id, event, timestamp, version, tenant, data)",
        reserved=lambda: (
            "id",
            "event",
            "timestamp",
            "version",
            "data",
            "test",
            app_settings.TENANT_KEY,
        ),
    )
)
_add(
    PayloadFormat(
        FLAT,
        _flat,
        "Flat (the data's fields beside event)",
        envelope=False,
        reserved=lambda: ("event",),
    )
)
_add(
    PayloadFormat(
        TYPE,
        _type,
        "Type (type, Unix timestamp, tenant, data)",
        reserved=lambda: ("type", "timestamp", "data", "test", app_settings.TENANT_KEY),
    )
)
_add(
    PayloadFormat(
        CLOUDEVENTS,
        _cloudevents,
        "CloudEvents 1.0 (structured JSON)",
        content_type="application/cloudevents+json",
        reserved=lambda: _CE_CONTEXT | _CE_RESERVED,
        check_extra=_check_cloudevents_extra,
    )
)
BUILTIN = (STANDARD, FLAT, TYPE, CLOUDEVENTS)


def register_payload_format(
    name: str,
    fn: Callable[[EventInfo], Mapping[str, Any]],
    *,
    label: str | None = None,
    content_type: str = JSON,
    envelope: bool = True,
    reserved: Iterable[str] = (),
) -> None:
    """Add a payload format endpoints can choose (in an ``AppConfig.ready()``).

    ``fn(event)`` gets an :class:`EventInfo` (``data`` already narrowed to the endpoint's
    selected fields) and returns the JSON object to send. ``envelope=True`` says the
    object has keys of its own beside the data, so test events may add ``"test": true``
    (``fn`` sees ``event.test``); ``reserved`` are keys custom values may not take.
    """
    if not isinstance(name, str) or not name or len(name) > 50 or name in BUILTIN:
        raise ValueError(f"Payload format names are 1-50 characters, not a built-in: {name!r}")
    keys = tuple(reserved)
    _add(
        PayloadFormat(
            name,
            fn,
            label or name,
            content_type=content_type,
            envelope=envelope,
            reserved=lambda: keys,
        )
    )


def unregister_payload_format(name: str) -> None:
    """Remove a format registered in code (tests); built-in formats stay."""
    if name not in BUILTIN:
        _formats.pop(name, None)


def is_registered(name: str) -> bool:
    """Whether ``name`` is a format endpoints can choose (no copy: emit() asks per row)."""
    return name in _formats


def payload_formats() -> dict[str, PayloadFormat]:
    """Every format endpoints can choose, by name."""
    return dict(_formats)


def choices() -> list[tuple[str, str]]:
    """(name, label) pairs for forms and the API, built-in formats first."""
    return [(f.name, f.label) for f in _formats.values()]


def default_name() -> str:
    return app_settings.PAYLOAD_FORMAT


def get(name: str) -> PayloadFormat:
    """The format called ``name`` (``""``: the site default). ``KeyError`` if unknown."""
    return _formats[name or default_name()]


def has_envelope(name: str) -> bool:
    """Whether ``name`` (``""``: the site default) wraps the data in keys of its own,
    so a flag like ``"test": true`` goes beside them. Unknown formats: False."""
    fmt = _formats.get(name or default_name())
    return bool(fmt and fmt.envelope)


def content_type(name: str) -> str:
    fmt = _formats.get(name or default_name())
    return fmt.content_type if fmt else JSON


def clean_name(value: Any) -> str:
    """Validate an endpoint's ``payload_format``; ``""`` (site default) is allowed."""
    if value in (None, ""):
        return ""
    if not isinstance(value, str) or value not in _formats:
        raise ValidationError(
            "Unknown payload format %(value)s. Choose one of: %(names)s.",
            code="invalid_choice",
            params={"value": repr(value)[:60], "names": ", ".join(_formats)},
        )
    return value


def check_extra(name: str, extra: Mapping[str, Any]) -> None:
    """Custom values allowed under format ``name``: none of its keys, and its own rules."""
    if not extra:
        return
    fmt = get(name)
    clash = sorted(set(extra) & set(fmt.reserved()))
    if clash:
        raise ValidationError(
            "%(keys)s is reserved by the %(format)s payload format.",
            code="reserved",
            params={"keys": ", ".join(clash), "format": fmt.name},
        )
    if fmt.check_extra:
        fmt.check_extra(extra)


def build(name: str, event: EventInfo, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The payload object of format ``name`` for ``event`` with custom values ``extra``."""
    fmt = get(name)
    payload = fmt.build(event)
    if not isinstance(payload, Mapping):
        raise TypeError(
            f"Payload format {fmt.name!r} returned {type(payload).__name__}, not a JSON object"
        )
    payload = dict(payload)
    for key, value in (extra or {}).items():
        payload.setdefault(key, value)  # never replaces one of the format's keys
    return payload
