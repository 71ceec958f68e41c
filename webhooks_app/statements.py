"""The engine's hand-written SQL: the claim and the record of every chunk.

Every delivery goes through one claim and one record, so their Python cost is paid per
delivery: compiling the ORM's querysets (a claim compiled four, about 2 ms of a worker's
CPU even when nothing was due) and building model instances through them cost more
than the HTTP request the delivery is for. The statements here are built once per shape
and cached; their rows become model instances through ``Model.from_db`` with the
backend's and fields' own converters, as the ORM's iterator does.

PostgreSQL gets single statements with array parameters (``= ANY(%s)``, ``unnest``): a
constant text with few parameters, which psycopg parses once (it caches statements of
at most 50 parameters and 4 KiB), and no round trip more than needed. SQLite (no
round trips to save) gets plain ``IN`` lists. Other databases are not supported (system
check ``webhooks_app.E022``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.db.models import Model

from .models import Delivery, DeliveryAttempt, Endpoint, Event

_cache: dict[tuple, Any] = {}


def _cached(key: tuple, build):
    sql = _cache.get(key)
    if sql is None:
        sql = _cache[key] = build()
    return sql


def _columns(conn, model: type[Model], alias: str, skip: Sequence[str] = ()) -> list:
    q = conn.ops.quote_name
    return [
        f"{alias}.{q(f.column)}" for f in model._meta.concrete_fields if f.name not in skip
    ]


def _id_in(conn, column: str, model: type[Model], n: int) -> str:
    """``column`` among a list of ids: one array parameter on PostgreSQL (a constant
    text), ``n`` parameters on SQLite (see ``id_params``)."""
    if conn.vendor == "postgresql":
        return f"{column} = ANY(%s::{model._meta.pk.cast_db_type(conn)}[])"
    return f"{column} IN ({', '.join(['%s'] * n)})"


def id_params(conn, ids: Sequence[int]) -> list:
    """The parameters of an ``_id_in`` list."""
    return [list(ids)] if conn.vendor == "postgresql" else list(ids)


def _shape(conn, n: int) -> int:
    """Cache key part of a statement with an id list: its length matters on SQLite only."""
    return -1 if conn.vendor == "postgresql" else n


def _row_columns(conn) -> list:
    """A claimed row's columns: the delivery's, then its event's without ``data``."""
    return _columns(conn, Delivery, "d") + _columns(conn, Event, "e", skip=("data",))


# The claim ---------------------------------------------------------------------------
# The partial index of due rows (``status = 'pending'``), which the claim must walk in
# due order: a walk of every pending row, sorted, costs in proportion to the backlog.
DUE_INDEX = "webhooks_delivery_due"


def due_sql(conn, excluded: int) -> str:
    """Due deliveries, oldest due first, with what the claim decides on: (id, body size,
    endpoint id, its rate limit, ordered, breaker state). Parameters: now, now, the test
    event type, the excluded endpoint ids (PostgreSQL: one list; SQLite: one each,
    ``excluded`` of them), the limit. Rows of a paused endpoint and test sends are not
    due for a worker. PostgreSQL locks the rows it returns, skipping the rows another
    claimer holds.

    The status is written as a literal, not a parameter: SQLite only uses a partial
    index when the query's WHERE repeats the index's condition, and ``status = ?`` does
    not. Even then its planner preferred the ``(status, last_attempt_at)`` index and
    sorted every pending row (3.5 ms for 10,000 pending, against 0.33 ms through
    ``DUE_INDEX``), so SQLite is told which index to use (``INDEXED BY``, which fails
    loudly should the index ever be renamed).
    """
    pg = conn.vendor == "postgresql"
    return _cached(
        (conn.alias, "due", _shape(conn, excluded)), lambda: _due_sql(conn, excluded, pg)
    )


def _due_sql(conn, excluded: int, pg: bool) -> str:
    q = conn.ops.quote_name
    d, e, ep = q(Delivery._meta.db_table), q(Event._meta.db_table), q(Endpoint._meta.db_table)
    endpoint = f"d.{q('endpoint_id')}"
    exclude = f" AND NOT ({_id_in(conn, endpoint, Endpoint, excluded)})"
    if pg:
        size = f"COALESCE(OCTET_LENGTH(d.{q('body')}), OCTET_LENGTH(e.{q('body')}))"
        lock = " FOR UPDATE OF d SKIP LOCKED"
    else:
        size = (
            f"COALESCE(LENGTH(CAST(d.{q('body')} AS BLOB)), LENGTH(CAST(e.{q('body')} AS BLOB)))"
        )
        exclude = exclude if excluded else ""
        lock = ""
    index = "" if pg else f" INDEXED BY {q(DUE_INDEX)}"
    pending = Delivery.Status.PENDING.value
    assert pending.isalpha()  # a literal of the code's own, never input
    return (
        f"SELECT d.{q('id')}, {size}, d.{q('endpoint_id')}, ep.{q('rate_limit')}, "
        f"ep.{q('ordered')}, ep.{q('breaker_state')} FROM {d} d{index} "
        f"INNER JOIN {ep} ep ON d.{q('endpoint_id')} = ep.{q('id')} "
        f"INNER JOIN {e} e ON d.{q('event_id')} = e.{q('id')} "
        f"WHERE d.{q('next_attempt_at')} <= %s AND d.{q('status')} = '{pending}' "
        f"AND NOT (d.{q('endpoint_id')} IN "
        f"(SELECT p.{q('id')} FROM {ep} p WHERE p.{q('paused_until')} > %s)) "
        f"AND NOT (d.{q('event_type')} = %s){exclude} "
        f"ORDER BY d.{q('next_attempt_at')} ASC LIMIT %s{lock}"
    )


def due_params(conn, now, excluded: list[int], limit: int, test_event: str) -> list:
    when = Delivery._meta.get_field("next_attempt_at").get_db_prep_value(now, conn)
    return [when, when, test_event, *id_params(conn, excluded), limit]


def lease_sql(conn, n: int) -> str:
    """Lease rows to a claim token. PostgreSQL (rows the claim's transaction holds):
    parameters lease end, token, the ids (one list); it returns each row with its event
    (``loaded_rows``). SQLite: lease end, token, the ``n`` ids, pending, now: only rows
    still pending and due (another worker may have leased them since the read)."""
    pg = conn.vendor == "postgresql"
    return _cached((conn.alias, "lease", _shape(conn, n)), lambda: _lease_sql(conn, n, pg))


def _lease_sql(conn, n: int, pg: bool) -> str:
    q = conn.ops.quote_name
    d, e = q(Delivery._meta.db_table), q(Event._meta.db_table)
    sets = f"{q('next_attempt_at')} = %s, {q('claim_token')} = %s"
    if pg:
        return (
            f"UPDATE {d} AS d SET {sets} FROM {e} AS e "
            f"WHERE {_id_in(conn, 'd.' + q('id'), Delivery, n)} "
            f"AND e.{q('id')} = d.{q('event_id')} "
            f"RETURNING {', '.join(_row_columns(conn))}"
        )
    return (
        f"UPDATE {d} SET {sets} WHERE {_id_in(conn, q('id'), Delivery, n)} "
        f"AND {q('status')} = %s AND {q('next_attempt_at')} <= %s"
    )


def leased_sql(conn, n: int) -> str:
    """SQLite: the rows of a claim token among ``n`` ids, each with its event
    (``loaded_rows``). Parameters: the ids, the token."""
    return _cached((conn.alias, "leased", n), lambda: _leased_sql(conn, n))


def _leased_sql(conn, n: int) -> str:
    q = conn.ops.quote_name
    d, e = q(Delivery._meta.db_table), q(Event._meta.db_table)
    return (
        f"SELECT {', '.join(_row_columns(conn))} FROM {d} d "
        f"INNER JOIN {e} e ON d.{q('event_id')} = e.{q('id')} "
        f"WHERE {_id_in(conn, 'd.' + q('id'), Delivery, n)} "
        f"AND d.{q('claim_token')} = %s"
    )


def endpoints_sql(conn, n: int) -> str:
    """Endpoints by id, every column. Parameters: the ids (PostgreSQL: one list; SQLite:
    one each, ``n`` of them). Their rows become objects through ``loaded_endpoints``."""
    return _cached((conn.alias, "endpoints", _shape(conn, n)), lambda: _endpoints_sql(conn, n))


def _endpoints_sql(conn, n: int) -> str:
    q = conn.ops.quote_name
    return (
        f"SELECT {', '.join(_columns(conn, Endpoint, 'ep'))} "
        f"FROM {q(Endpoint._meta.db_table)} ep "
        f"WHERE {_id_in(conn, 'ep.' + q('id'), Endpoint, n)}"
    )


def loaded_endpoints(conn, rows: list[tuple]) -> dict[int, Endpoint]:
    """``{id: Endpoint}`` from rows of ``endpoints_sql``, as ``in_bulk()`` builds them."""
    fields = list(Endpoint._meta.concrete_fields)
    names = [f.attname for f in fields]
    converters = _converters(conn, [(Endpoint, f) for f in fields])
    out = {}
    for row in rows:
        endpoint = Endpoint.from_db(conn.alias, names, _converted(conn, converters, row))
        out[endpoint.pk] = endpoint
    return out


def _converted(conn, converters: list, row: tuple) -> tuple | list:
    if not converters:
        return row
    row = list(row)
    for i, expression, functions in converters:
        value = row[i]
        for convert in functions:
            value = convert(value, expression, conn)
        row[i] = value
    return row


def loaded_rows(conn, rows: list[tuple]) -> list[Delivery]:
    """Deliveries (with their event, its ``data`` deferred) from rows of ``lease_sql``
    or ``leased_sql``, as ``select_related("event").defer("event__data")`` builds them."""
    db = conn.alias
    d_fields = [f for f in Delivery._meta.concrete_fields]
    e_fields = [f for f in Event._meta.concrete_fields if f.name != "data"]
    d_names = [f.attname for f in d_fields]
    e_names = [f.attname for f in e_fields]
    converters = _converters(
        conn, [(Delivery, f) for f in d_fields] + [(Event, f) for f in e_fields]
    )
    cut = len(d_fields)
    cache_event = Delivery._meta.get_field("event").set_cached_value
    out = []
    for row in rows:
        row = _converted(conn, converters, row)
        delivery = Delivery.from_db(db, d_names, row[:cut])
        cache_event(delivery, Event.from_db(db, e_names, row[cut:]))
        out.append(delivery)
    return out


def _converters(conn, fields: list) -> list:
    """(column index, expression, converters) of the columns that have converters, as
    ``SQLCompiler.get_converters`` finds them (backend's first, then the field's). Which
    columns have them is cached; the converters are the caller's connection's own (a
    backend's converters are bound to its thread's connection, e.g. its time zone)."""
    key = (conn.alias, "converted", tuple((m, f.name) for m, f in fields))

    def build():
        out = []
        for i, (model, field) in enumerate(fields):
            col = field.get_col(model._meta.db_table)
            if conn.ops.get_db_converters(col) + col.get_db_converters(conn):
                out.append((i, col))
        return out

    return [
        (i, col, conn.ops.get_db_converters(col) + col.get_db_converters(conn))
        for i, col in _cached(key, build)
    ]


# The record --------------------------------------------------------------------------
ATTEMPT_COLUMNS = (
    "started_at",
    "duration_ms",
    "status_code",
    "response_excerpt",
    "error",
    "succeeded",
)


def record_sql(conn, names: tuple) -> str:
    """PostgreSQL: a chunk's outcomes in one statement. Parameters: one list per column
    (delivery id, the delivery columns ``names``, then ``ATTEMPT_COLUMNS``), the token.

    The new state of every row is an ``UPDATE … FROM unnest(…)`` that only matches rows
    still carrying the token: it locks each row and re-checks the token after waiting
    for a concurrent writer, as a ``SELECT … FOR UPDATE`` would. The attempts are
    inserted for exactly the rows it updated (joined to its ``RETURNING``), numbered by
    the row's counter after the UPDATE. Returns (id, attempts, sequence_attempts) of the
    recorded rows, as the database now has them.

    It locks nothing but these deliveries: the endpoint's bookkeeping (``reset_failures_sql``)
    comes after, on its own, so an endpoint row that a site's transaction holds (an admin
    save, a test send inside ``ATOMIC_REQUESTS``) never holds up the outcomes.
    """
    return _cached((conn.alias, "record", names), lambda: _record_sql(conn, names))


def _array_type(conn, field) -> str:
    # Text, not varchar(n): a cast to varchar(n) would cut a longer value silently, where
    # the column itself refuses it.
    db_type = field.cast_db_type(conn)
    return "text" if db_type.startswith("varchar") else db_type


def _record_sql(conn, names: tuple) -> str:
    q = conn.ops.quote_name
    d_fields = {f.name: f for f in Delivery._meta.concrete_fields}
    a_fields = {f.name: f for f in DeliveryAttempt._meta.concrete_fields}
    columns = [
        ("id", d_fields["id"]),
        *((d_fields[n].column, d_fields[n]) for n in names),
        *((f"a_{c}", a_fields[c]) for c in ATTEMPT_COLUMNS),
    ]
    arrays = ", ".join(f"%s::{_array_type(conn, f)}[]" for _, f in columns)
    sets = ", ".join(f"{q(d_fields[n].column)} = v.{q(d_fields[n].column)}" for n in names)
    attempts, sequence = q("attempts"), q("sequence_attempts")
    inserted = ", ".join(q(c) for c in ("delivery_id", "number", *ATTEMPT_COLUMNS))
    selected = ", ".join(["v.id", f"u.{attempts}", *(f"v.{q('a_' + c)}" for c in ATTEMPT_COLUMNS)])
    return (
        f"WITH v AS (SELECT * FROM unnest({arrays}) AS v ({', '.join(q(c) for c, _ in columns)})), "
        f"u AS (UPDATE {q(Delivery._meta.db_table)} AS d SET {attempts} = d.{attempts} + 1, "
        f"{sequence} = d.{sequence} + 1, {sets} FROM v "
        f"WHERE d.{q('id')} = v.{q('id')} AND d.{q('claim_token')} = %s "
        f"RETURNING d.{q('id')}, d.{attempts}, d.{sequence}), "
        f"i AS (INSERT INTO {q(DeliveryAttempt._meta.db_table)} ({inserted}) "
        f"SELECT {selected} FROM v JOIN u ON u.{q('id')} = v.{q('id')} "
        f"RETURNING {q('delivery_id')}) "
        f"SELECT u.{q('id')}, u.{attempts}, u.{sequence} FROM u "
        f"JOIN i ON i.{q('delivery_id')} = u.{q('id')}"
    )


def reset_failures_sql(conn, endpoints: int) -> str:
    """An UPDATE that ends the run of failed deliveries of ``endpoints`` endpoints (their
    ids are the parameters, see ``id_params``), for a recorded success: whatever the
    worker's (possibly stale) Endpoint object says, another worker may have counted
    failures since it was loaded. A row with no run is not written (nor locked)."""
    return _cached(
        (conn.alias, "reset", _shape(conn, endpoints)),
        lambda: _reset_failures_sql(conn, endpoints),
    )


def _reset_failures_sql(conn, n: int) -> str:
    q = conn.ops.quote_name
    failures = q("consecutive_failures")
    return (
        f"UPDATE {q(Endpoint._meta.db_table)} SET {failures} = 0 "
        f"WHERE {_id_in(conn, q('id'), Endpoint, n)} AND {failures} > 0"
    )
