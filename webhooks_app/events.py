"""The event-type registry and ``emit()``, the public entry point.

``emit()`` writes the Event and one Delivery per subscribed active endpoint in the
caller's transaction (a transactional outbox): a rollback sends nothing, and the workers
are woken only once the transaction has committed. An event no endpoint wants writes
nothing unless ``KEEP_UNROUTED_EVENTS`` is set.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode, urlsplit

from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.db import connections, models, router, transaction
from django.utils import timezone

from . import formats, jsonenc, matching, routing
from .conf import app_settings
from .transport import wire_query

logger = logging.getLogger("webhooks_app.events")

TEST_EVENT = "webhook.test"
BUILTIN_EVENT_TYPES: dict[str, dict[str, Any]] = {
    TEST_EVENT: {
        "description": "Sent by the Test button and the test API; never by the site itself.",
        "example": {"message": "This is a test webhook"},
    }
}
_registered: dict[str, dict[str, Any]] = {}


def register_event_type(
    name: str,
    *,
    description: str = "",
    example: Any = None,
    group: str | None = None,
    schema: Mapping[str, Any] | None = None,
    deprecated: bool = False,
) -> None:
    """Declare an event type in code (in addition to ``WEBHOOKS_APP['EVENT_TYPES']``).

    ``group`` heads the type's checkbox group in the admin (default: the part of the
    name before the first dot); ``schema`` is a JSON Schema that ``emit()`` checks the
    data against when ``VALIDATE_PAYLOADS`` is on; a ``deprecated`` type is still
    delivered to existing subscriptions but can no longer be subscribed to.
    """
    if schema is not None:
        check_schema(name, schema)
    _registered[name] = {
        "description": description,
        "example": example or {},
        "group": group,
        "schema": schema,
        "deprecated": deprecated,
    }


def _entry(name: str, info: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "description": info.get("description", "") or "",
        "example": info.get("example", {}),
        "group": info.get("group") or name.split(".", 1)[0],
        "schema": info.get("schema"),
        "deprecated": bool(info.get("deprecated", False)),
    }


def event_types() -> dict[str, dict[str, Any]]:
    """All known event types: built-in, from settings, registered in code.

    Each is ``{"description", "example", "group", "schema", "deprecated"}``.
    """
    types = {name: _entry(name, info) for name, info in BUILTIN_EVENT_TYPES.items()}
    for name, info in {**app_settings.EVENT_TYPES, **_registered}.items():
        types[name] = _entry(name, info or {})
    return types


def subscribable_event_types() -> dict[str, dict[str, Any]]:
    """The types offered for new subscriptions: not the built-in test, not deprecated."""
    return {
        name: info
        for name, info in event_types().items()
        if name != TEST_EVENT and not info["deprecated"]
    }


# JSON Schema validation (the jsonschema library; see README's dependency notes) --------
_validators: dict[int, tuple[Any, Any]] = {}


def check_schema(name: str, schema: Any) -> None:
    """Raise ``ImproperlyConfigured`` if ``schema`` is not a valid JSON Schema."""
    import jsonschema

    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except (jsonschema.SchemaError, TypeError, AttributeError) as exc:
        message = getattr(exc, "message", str(exc))
        raise ImproperlyConfigured(
            f"The schema of event type {name!r} is not a valid JSON Schema: {message}"
        ) from None


def _validator(schema: Any) -> Any:
    # Keyed by identity (declared schemas live as long as the settings or the registry);
    # the stored schema guards against a recycled id.
    cached = _validators.get(id(schema))
    if cached is None or cached[0] is not schema:
        import jsonschema

        cls = jsonschema.validators.validator_for(schema)
        cached = (schema, cls(schema, format_checker=cls.FORMAT_CHECKER))
        _validators[id(schema)] = cached
    return cached[1]


def _path(error: Any) -> str:
    out = "data"
    for part in error.absolute_path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def validate_payload(
    event_type: str,
    data: Any,
    info: Mapping[str, Any] | None = None,
    *,
    normalised: bool = False,
) -> None:
    """Check ``data`` (as JSON, as receivers get it) against the type's schema, if any.

    Raises ``ValidationError`` naming the first failing path, e.g. ``data.amount``.
    ``normalised``: ``data`` is already what new_event() made of it.
    """
    if info is None:
        info = event_types().get(event_type) or {}
    schema = info.get("schema")
    if not schema:
        return
    import jsonschema

    as_json = data if normalised else jsonenc.normalise(data, path="data")
    error = jsonschema.exceptions.best_match(_validator(schema).iter_errors(as_json))
    if error is not None:
        path = _path(error)
        raise ValidationError(
            "Event data for %(type)s does not match its schema at %(path)s: %(message)s",
            code="schema",
            params={"type": event_type, "path": path, "message": error.message},
        )


def check_event_type(event_type: str) -> dict[str, Any]:
    """The declared type's catalogue entry; ``ValidationError`` for an unknown type.

    Builds only this type's entry (every emit() asks; the whole catalogue cost 20 µs),
    looked up in the order event_types() lets them override each other."""
    if isinstance(event_type, str):
        info = _registered.get(event_type)
        if info is None:
            declared = app_settings.EVENT_TYPES
            if event_type in declared:
                info = declared[event_type] or {}
            else:
                info = BUILTIN_EVENT_TYPES.get(event_type)
        if info is not None:
            return _entry(event_type, info)
    types = event_types()
    info = types.get(event_type) if isinstance(event_type, str) else None
    if info is None:
        known = ", ".join(sorted(types))
        raise ValidationError(
            f"Unknown event type {event_type!r}. Declare it in WEBHOOKS_APP['EVENT_TYPES'] "
            f"or with register_event_type(). Known types: {known}.",
            code="unknown_event_type",
        )
    return info


# Compact JSON exactly as ``JSON.stringify`` writes it, so receivers can re-serialise
# (see jsonenc.py); every body is built with it.
dumps = jsonenc.dumps


def envelope(event_id: str, event_type: str, created, tenant: str, data: Any) -> dict:
    return {
        "id": event_id,
        "event": event_type,
        # "2026-12-01T19:18:35.344Z"; isoformat() is C, strftime() cost twice as much.
        "timestamp": created.astimezone(UTC).isoformat(timespec="milliseconds")[:-6] + "Z",
        "version": app_settings.PAYLOAD_VERSION,
        app_settings.TENANT_KEY: tenant,
        "data": data,
    }


def _select(data: Any, fields: list[str]) -> Any:
    if not fields or not isinstance(data, Mapping):
        return data
    out: dict[str, Any] = {}
    for path in fields:
        src: Any = data
        keys = path.split(".")
        for key in keys:
            if not isinstance(src, Mapping) or key not in src:
                break
            src = src[key]
        else:
            dst = out
            for key in keys[:-1]:
                dst = dst.setdefault(key, {})
            dst[keys[-1]] = src
    return out


def _flatten(prefix: str, value: Any, out: list[tuple[str, str]]) -> None:
    if isinstance(value, Mapping):
        for key, sub in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), sub, out)
    elif isinstance(value, list | tuple):
        out.append((prefix, dumps(value)))
    elif value is None:
        out.append((prefix, ""))
    elif isinstance(value, bool):
        out.append((prefix, "true" if value else "false"))
    elif isinstance(value, float):
        out.append((prefix, jsonenc.format_number(value)))
    else:
        out.append((prefix, str(value)))


def endpoint_format(endpoint) -> str:
    """The name of the payload format ``endpoint`` gets (its own, else the site's).

    A format that is no longer registered (a site removed it from its code) falls back to
    the standard one, logged, rather than failing the emitting request.
    """
    name = getattr(endpoint, "payload_format", "") or formats.default_name()
    if not formats.is_registered(name):
        logger.error(
            "endpoint %s: unknown payload format %r, sending the standard one",
            endpoint.id,
            name,
        )
        return formats.STANDARD
    return name


def endpoint_content_type(endpoint, payload_format: str | None = None) -> str:
    """The Content-Type of ``endpoint``'s bodies, or "" for application/json (and GET)."""
    if endpoint.method != "POST":
        return ""
    ctype = formats.content_type(payload_format or endpoint_format(endpoint))
    return "" if ctype == formats.JSON else ctype


def endpoint_body(
    endpoint, env: dict, data: Any, *, test: bool = False, payload_format: str | None = None
) -> str | None:
    """The body for ``endpoint`` if it differs from the standard envelope, else None.

    Built in the endpoint's payload format (see formats.py) from the selected fields,
    plus its custom values; ``test`` marks a test event in formats with an envelope.
    GET endpoints get the same fields flattened into a query string; its exact bytes
    are what is signed.
    """
    name = payload_format or endpoint_format(endpoint)
    custom = endpoint.payload_fields or endpoint.payload_extra
    if not custom and not test and endpoint.method == "POST" and name == formats.STANDARD:
        return None
    info = formats.EventInfo(
        id=env["id"],
        type=env["event"],
        created=datetime.fromisoformat(env["timestamp"]),
        tenant=env[app_settings.TENANT_KEY],
        data=_select(data, endpoint.payload_fields),
        test=test,
    )
    payload = formats.build(name, info, endpoint.payload_extra)
    if endpoint.method == "GET":
        pairs: list[tuple[str, str]] = []
        _flatten("", jsonenc.normalise(payload, path="", max_depth=200), pairs)
        # e.g. ?token=... in the endpoint's URL, percent-encoded as it goes on the wire
        own = wire_query(urlsplit(endpoint.url).query)
        return f"{own}&{urlencode(pairs)}" if own else urlencode(pairs)
    return dumps(payload)


@dataclass(frozen=True)
class _Target:
    """What emit() needs of a subscribed endpoint."""

    id: int
    method: str
    url: str
    payload_fields: list
    payload_extra: dict
    payload_format: str = ""
    payload_filter: dict = field(default_factory=dict)


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str | bytes) else value


def subscribed_endpoints(tenant: str, event_type: str, *, using: str | None = None) -> list:
    """Active endpoints of ``tenant`` with ``event_type`` enabled, directly or by a
    wildcard (``user.*``, ``*``), before payload filters.

    One hand-written query: this runs inside every emitting transaction, and building the
    equivalent ORM join costs more than running it (~0.4 ms of the 1 ms budget). The
    wildcards that can match are a few exact names, so the subscription index still
    serves it; when several subscriptions of one endpoint match, the most specific one
    decides (``user.*`` enabled with ``user.deleted`` paused skips deletions).
    """
    from .models import Endpoint, Subscription

    db = using or router.db_for_write(Endpoint)
    conn = connections[db]
    q = conn.ops.quote_name
    # The built-in test type is only ever sent by send_test(): no wildcard matches it.
    names = [event_type] if event_type == TEST_EVENT else matching.candidate_names(event_type)
    marks = ", ".join(["%s"] * len(names))
    sql = (
        f"SELECT e.id, e.method, e.url, e.payload_fields, e.payload_extra, e.payload_format, "
        f"e.payload_filter, s.event_type, s.enabled "
        f"FROM {q(Endpoint._meta.db_table)} e "
        f"JOIN {q(Subscription._meta.db_table)} s ON s.endpoint_id = e.id "
        f"WHERE e.tenant = %s AND e.is_active = %s AND s.event_type IN ({marks}) "
        f"ORDER BY e.id"
    )
    with conn.cursor() as cursor:
        cursor.execute(sql, [tenant, True, *names])
        rows = cursor.fetchall()
    if len(rows) > 1:
        best: dict[int, tuple] = {}
        for r in rows:
            kept = best.get(r[0])
            if kept is None or matching.specificity(r[7]) > matching.specificity(kept[7]):
                best[r[0]] = r
        rows = list(best.values())
    return [
        _Target(r[0], r[1], r[2], _json(r[3]) or [], _json(r[4]) or {}, r[5], _json(r[6]) or {})
        for r in rows
        if r[8]  # the deciding subscription is enabled
    ]


def filter_targets(targets: list, event_type: str, tenant: str, data: Any) -> list:
    """The targets whose payload filter passes ``data`` (normalised, as new_event() left
    it: what the receiver gets, e.g. a datetime as its ISO text)."""
    if not any(t.payload_filter for t in targets):
        return targets
    doc = {"event": event_type, "tenant": tenant, "data": data}
    return [t for t in targets if not t.payload_filter or matching.matches(t.payload_filter, doc)]


def _unsaved_event(tenant: str, event_type: str, test: bool):
    """``Event(tenant=..., event_type=..., is_test=...)``, built through the positional
    path of ``Model.__init__`` (what ``from_db`` uses): keyword arguments cost every
    emit() about a third more in that constructor. ``data`` and ``body`` are set after."""
    from .models import Event, new_event_id

    values = {
        "id": None,
        "public_id": new_event_id(),
        "tenant": tenant,
        "event_type": event_type,
        "data": None,
        "body": "",
        "created_at": timezone.now(),
        "is_test": test,
    }
    # A KeyError here means Event gained a field: give it its default above.
    return Event(*[values[f.attname] for f in Event._meta.concrete_fields])


def new_event(
    event_type: str, data: Any, tenant: str, *, test: bool = False
) -> tuple[Any, dict]:
    """An unsaved Event with its body bytes fixed, and the envelope they encode.

    ``data`` is normalised first (datetimes, Decimals, UUIDs... as DjangoJSONEncoder
    writes them; ``ValidationError`` for what JSON cannot carry), and ``Event.data``
    stores the normalised form, so the row and the body say the same thing.
    ``test`` marks an event sent by ``send_test()`` (``Event.is_test``): every request
    for it carries a ``webhook-test: true`` header; its deliveries are built with
    ``new_delivery(..., test=True)``, which adds ``"test": true`` in enveloped formats.
    """
    event = _unsaved_event(tenant, event_type, test)
    raw = envelope(event.public_id, event_type, event.created_at, tenant, data)
    # One pass normalises and writes; the depth limit applies to "data", one level down.
    env, event.body = jsonenc.normalise_and_dump(
        raw, max_depth=app_settings.MAX_PAYLOAD_DEPTH, levels_above=1
    )
    event.data = env["data"]
    jsonenc.check_size(event.body)
    return event, env


def delivery_form(endpoint, env: dict, data: Any, *, test: bool = False) -> dict[str, Any]:
    """What a delivery of the event in ``env`` to ``endpoint`` sends: its ``body``
    (None: the event's standard envelope), ``content_type`` and ``method``.

    The one place a delivery's bytes are decided: emit() (through it directly), the test
    sender and the live preview (through new_delivery()) all build with it, so a preview
    shows exactly what is sent.
    """
    name = endpoint_format(endpoint)
    return {
        "body": endpoint_body(endpoint, env, data, test=test, payload_format=name),
        "content_type": endpoint_content_type(endpoint, name),
        "method": endpoint.method,
    }


def new_delivery(endpoint, event, env: dict, data: Any, *, test: bool = False, **fields: Any):
    """An unsaved Delivery of ``event`` to ``endpoint`` with its body bytes fixed (see
    ``delivery_form``)."""
    return _delivery(event, endpoint.id, delivery_form(endpoint, env, data, test=test), **fields)


def _delivery(event, endpoint_id: int, form: dict[str, Any], **fields: Any):
    from .models import Delivery

    return Delivery(
        event=event,
        endpoint_id=endpoint_id,
        tenant=event.tenant,
        event_type=event.event_type,
        **form,
        **fields,
    )


MAX_IDEMPOTENCY_KEY = 200


def clean_idempotency_key(key: Any) -> str:
    if not isinstance(key, str) or not key or len(key) > MAX_IDEMPOTENCY_KEY:
        raise ValidationError(
            {"idempotency_key": [f"Give text of 1 to {MAX_IDEMPOTENCY_KEY} characters."]}
        )
    if "\x00" in key:
        raise ValidationError({"idempotency_key": ["The key must not contain NUL."]})
    if jsonenc.has_lone_surrogate(key):
        raise ValidationError({"idempotency_key": ["The key must not contain lone surrogates."]})
    return key


def clean_tenant(tenant: Any) -> str:
    """``tenant`` as emit() and touch() store it: text of at most 100 characters that the
    database can hold (no NUL, no lone surrogate); None means the single-tenant ``""``."""
    if tenant is None:
        return ""
    if (
        not isinstance(tenant, str)
        or len(tenant) > 100
        or "\x00" in tenant
        or jsonenc.has_lone_surrogate(tenant)
    ):
        raise ValidationError(
            {"tenant": ["The tenant must be text of at most 100 characters, without NUL."]}
        )
    return tenant


def _claim_key(key: str, event, stored: bool, using: str | None):
    """Take ``key`` for ``event``; None if taken, else the first event of the window.

    One statement, ``INSERT ... ON CONFLICT DO UPDATE ... WHERE expired``: a key
    whose window has passed is taken over, a live one is left alone. A concurrent caller
    with the same key waits on the unique index until the first transaction ends (then
    sees its row), so two callers never both create the event. No exception is raised,
    so the caller's transaction is never broken.
    """
    from .models import Event, IdempotencyKey

    db = using or router.db_for_write(IdempotencyKey)
    conn = connections[db]
    q = conn.ops.quote_name
    table = q(IdempotencyKey._meta.db_table)
    cols = ["tenant", "key", "event_public_id", "event_type", "body", "created_at"]
    now = event.created_at
    cutoff = now - app_settings.IDEMPOTENCY_WINDOW
    adapt = conn.ops.adapt_datetimefield_value
    updates = ", ".join(f"{q(c)} = excluded.{q(c)}" for c in cols[2:])
    sql = (
        f"INSERT INTO {table} ({', '.join(map(q, cols))}) VALUES (%s, %s, %s, %s, %s, %s) "
        f"ON CONFLICT ({q('tenant')}, {q('key')}) DO UPDATE SET {updates} "
        f"WHERE {table}.{q('created_at')} < %s"
    )
    params = [
        event.tenant,
        key,
        event.public_id,
        event.event_type,
        None if stored else event.body,
        adapt(now),
        adapt(cutoff),
    ]
    with conn.cursor() as cursor:
        cursor.execute(sql, params)
        # 1: inserted, or an expired key taken over; 0: a live key (no RETURNING, so
        # SQLite older than 3.35 works too).
        if cursor.rowcount == 1:
            return None
    first = IdempotencyKey.objects.using(db).get(tenant=event.tenant, key=key)
    found = Event.objects.using(db).filter(public_id=first.event_public_id).first()
    if found is not None:
        return found
    # The first event was unrouted (not stored): rebuild what emit() returned then.
    body = first.body or ""
    try:
        data = json.loads(body).get("data") if body else None
    except (ValueError, AttributeError):
        data = None
    return Event(
        public_id=first.event_public_id,
        tenant=first.tenant,
        event_type=first.event_type,
        data=data,
        body=body,
        created_at=first.created_at,
    )


def emit(
    event_type: str,
    data: Any = None,
    *,
    tenant: str | None = None,
    using: str | None = None,
    idempotency_key: str | None = None,
):
    """Record ``event_type`` with ``data`` for ``tenant`` and queue its deliveries.

    Runs in the caller's transaction; returns the :class:`~webhooks_app.models.Event`.
    When no endpoint is subscribed, nothing is written (unless ``KEEP_UNROUTED_EVENTS``)
    and the returned Event is unsaved: ``pk`` is None, ``public_id`` and ``body`` are set.
    With ``idempotency_key``, a second call with the same key and tenant within
    ``IDEMPOTENCY_WINDOW`` creates nothing and returns the first call's event (unsaved if
    that one was unrouted); safe under concurrent callers and inside their transactions.
    Raises ``ValidationError`` for an unknown event type, data that is not JSON, or (with
    ``VALIDATE_PAYLOADS`` on) data that does not match the type's schema. Endpoints whose
    payload filter the event does not pass get no delivery (and count as not subscribed).
    """
    info = check_event_type(event_type)
    if idempotency_key is not None:
        idempotency_key = clean_idempotency_key(idempotency_key)
    data = {} if data is None else data
    tenant = clean_tenant(tenant)
    # Everything that can refuse the data runs before the first SQL statement, so a
    # ValidationError leaves the caller's transaction usable.
    event, env = new_event(event_type, data, tenant)
    data = event.data
    if info["schema"] and app_settings.VALIDATE_PAYLOADS:
        validate_payload(event_type, data, info, normalised=True)
    # Cached per process until an endpoint or subscription changes (routing.py).
    endpoints = routing.cached(
        using, (tenant, event_type), lambda: subscribed_endpoints(tenant, event_type, using=using)
    )
    endpoints = filter_targets(endpoints, event_type, tenant, data)
    stored = bool(endpoints) or app_settings.KEEP_UNROUTED_EVENTS
    if idempotency_key is None and not stored:
        return event  # unrouted: no row, no wake-up (bounded tables)
    # What each delivery row differs in (the rest is the event's, or the defaults).
    deliveries = [(ep.id, delivery_form(ep, env, data)) for ep in endpoints]
    for _, form in deliveries:
        if form["body"] is not None:
            jsonenc.check_size(form["body"], "The body for one of the endpoints")
    with transaction.atomic(using=using, savepoint=False):
        if idempotency_key is not None:
            first = _claim_key(idempotency_key, event, stored, using)
            if first is not None:
                return first
            if not stored:
                return event
        if deliveries:
            _insert_outbox(event, deliveries, using)
            from .tasks import wake_workers_on_commit

            wake_workers_on_commit(using)
        else:
            event.save(using=using)
    return event


def _row(obj, conn) -> tuple[list[str], list]:
    """Columns and database values of an unsaved ``obj``, as the ORM's INSERT has them
    (defaults and ``auto_now`` applied), the primary key left to the database."""
    fields = [f for f in obj._meta.concrete_fields if not f.primary_key]
    return (
        [f.column for f in fields],
        [f.get_db_prep_save(f.pre_save(obj, True), conn) for f in fields],
    )


# Delivery columns emit() sets per event (the rest of a row: per endpoint, or defaults).
_PER_EVENT = ("tenant", "event_type", "next_attempt_at", "created_at", "updated_at")
_PER_ENDPOINT = ("endpoint_id", "body", "content_type", "method")
# Statement texts kept per number of deliveries (a fan-out wider than this builds its own).
_MAX_CACHED_SHAPE = 64


class _DeliveryRows:
    """How emit() writes Delivery rows on one database without building a model object
    per row (that and ``_row()`` cost ~70 µs per delivery, a tenth of an emit to one
    endpoint): the columns once, every other column's default once, and the statement
    text once per number of deliveries."""

    def __init__(self, conn) -> None:
        from .models import Delivery

        self.fields = [f for f in Delivery._meta.concrete_fields if not f.primary_key]
        self.columns = [f.column for f in self.fields]
        self.at = {f.attname: i for i, f in enumerate(self.fields)}
        # Defaults of the columns nobody sets.
        self.template: list = [None] * len(self.fields)
        for i, f in enumerate(self.fields):
            if f.attname in _PER_EVENT or f.attname in _PER_ENDPOINT or f.attname == "event_id":
                continue
            stamped = getattr(f, "auto_now", False) or getattr(f, "auto_now_add", False)
            if (
                stamped
                or (f.has_default() and callable(f.default))
                or (
                    type(f).pre_save is not models.Field.pre_save
                    and not isinstance(f, models.DateField)  # (its pre_save only stamps)
                )
            ):
                # A value per row (from pre_save() or a callable default): not a template's.
                raise ImproperlyConfigured(f"emit() does not fill Delivery.{f.name}: add it above")
            self.template[i] = f.get_db_prep_save(f.get_default(), conn)
        self.statements: dict[int, str] = {}
        # Rows per INSERT on SQLite: its limit of bound variables (999 before 3.32) over
        # the row's columns. (PostgreSQL has no limit here, and one statement.)
        limit = conn.features.max_query_params or 65535
        self.batch = max(1, limit // len(self.fields))

    def rows(self, conn, event, due, deliveries: list[tuple[int, dict]]) -> list[list]:
        """One list of database values per (endpoint id, delivery_form()) in
        ``deliveries``; the event id's column is left for the caller."""
        at, fields = self.at, self.fields
        base = list(self.template)
        base[at["tenant"]] = event.tenant
        base[at["event_type"]] = event.event_type
        for name, value in (
            ("next_attempt_at", due),
            ("created_at", event.created_at),
            ("updated_at", event.created_at),  # (auto_now: when the row is written)
        ):
            base[at[name]] = fields[at[name]].get_db_prep_save(value, conn)
        out = []
        for endpoint_id, form in deliveries:
            row = list(base)
            row[at["endpoint_id"]] = endpoint_id
            row[at["body"]] = form["body"]
            row[at["content_type"]] = form["content_type"]
            row[at["method"]] = form["method"]
            out.append(row)
        return out


_delivery_rows: dict[str, _DeliveryRows] = {}


def _insert_outbox(event, deliveries: list[tuple[int, dict]], using: str | None) -> None:
    """Insert ``event`` and its deliveries, (endpoint id, ``delivery_form()``) pairs, in
    hand-written SQL: one statement on PostgreSQL (the event in a CTE, each delivery
    selecting its id), two elsewhere.

    Every emit() with a subscriber pays this inside the caller's transaction; the ORM's
    ``save()`` + ``bulk_create()`` cost more Python than the statements (about half of
    emit()'s time on SQLite) and a round trip each on PostgreSQL.
    """
    from .models import Delivery, Event

    db = using or router.db_for_write(Event)
    conn = connections[db]
    now = event.created_at
    due = now + timedelta(seconds=app_settings.RETRY_SCHEDULE[0])
    if conn.vendor not in ("postgresql", "sqlite") or not (
        conn.features.can_return_columns_from_insert
    ):
        event.save(using=db)
        Delivery.objects.using(db).bulk_create(
            [
                _delivery(event, endpoint_id, form, next_attempt_at=due, created_at=now)
                for endpoint_id, form in deliveries
            ]
        )
        return
    plan = _delivery_rows.get(db)
    if plan is None:
        plan = _delivery_rows[db] = _DeliveryRows(conn)
    ev_cols, ev_vals = _row(event, conn)
    rows = plan.rows(conn, event, due, deliveries)
    at = plan.at["event_id"]
    n = len(rows)
    with conn.cursor() as cursor:
        if conn.vendor == "postgresql":
            sql = plan.statements.get(n)
            if sql is None:
                sql = _outbox_sql_pg(conn, ev_cols, plan.columns, at, n)
                if n <= _MAX_CACHED_SHAPE:
                    plan.statements[n] = sql
            params = list(ev_vals)
            for vals in rows:
                params += vals[:at]
                params += vals[at + 1 :]
            cursor.execute(sql, params)
            event.pk = cursor.fetchone()[0]
        else:
            q = conn.ops.quote_name
            cursor.execute(
                f"INSERT INTO {q(Event._meta.db_table)} ({', '.join(q(c) for c in ev_cols)}) "
                f"VALUES ({', '.join(['%s'] * len(ev_cols))}) RETURNING {q('id')}",
                ev_vals,
            )
            event.pk = cursor.fetchone()[0]
            one = "(" + ", ".join(["%s"] * len(plan.columns)) + ")"
            cols_sql = ", ".join(q(c) for c in plan.columns)
            for start in range(0, n, plan.batch):
                batch = rows[start : start + plan.batch]
                params = []
                for vals in batch:
                    vals[at] = event.pk
                    params += vals
                cursor.execute(
                    f"INSERT INTO {q(Delivery._meta.db_table)} ({cols_sql}) "
                    f"VALUES {', '.join([one] * len(batch))}",
                    params,
                )
    event._state.adding, event._state.db = False, db


def _outbox_sql_pg(conn, ev_cols: list[str], d_cols: list[str], at: int, n: int) -> str:
    """The event's INSERT and ``n`` deliveries' in one statement; parameters: the event's
    values, then each delivery's without its event id (taken from the event's row)."""
    from .models import Delivery, Event

    q = conn.ops.quote_name
    cols_sql = ", ".join(q(c) for c in d_cols)
    ctes = [
        f"ev AS (INSERT INTO {q(Event._meta.db_table)} "
        f"({', '.join(q(c) for c in ev_cols)}) VALUES ({', '.join(['%s'] * len(ev_cols))}) "
        f"RETURNING {q('id')})"
    ]
    select = ", ".join("ev.id" if i == at else "%s" for i in range(len(d_cols)))
    table = q(Delivery._meta.db_table)
    for k in range(n):
        ctes.append(f"d{k} AS (INSERT INTO {table} ({cols_sql}) SELECT {select} FROM ev)")
    return f"WITH {', '.join(ctes)} SELECT id FROM ev"
