"""The tables' indexes: each one costs every emit() an insert, so none may be redundant,
and the lookups that used a dropped index still find a covering one."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from webhooks_app.models import Delivery, DeliveryAttempt, Event

# (model, column, the index that starts with the column and serves its lookups)
COVERED = [
    (Delivery, "event_id", "webhooks_delivery_unique"),
    (Delivery, "endpoint_id", "webhooks_dlv_endpoint"),
    (DeliveryAttempt, "delivery_id", "webhooks_attempt_unique"),
    (Event, "tenant", "webhooks_event_tenant"),
]


def _indexes(model) -> dict[str, dict]:
    with connection.cursor() as cursor:
        return connection.introspection.get_constraints(cursor, model._meta.db_table)


def _single_column(model, column: str) -> list[str]:
    """Names of the non-unique indexes on exactly ``column``."""
    return sorted(
        name
        for name, info in _indexes(model).items()
        if info["index"] and not info["unique"] and info["columns"] == [column]
    )


@pytest.mark.django_db
@pytest.mark.parametrize(("model", "column", "covering"), COVERED)
def test_no_index_that_another_one_covers(model, column, covering):
    found = _indexes(model)
    assert covering in found and found[covering]["columns"][0] == column
    assert _single_column(model, column) == []


@pytest.mark.django_db
def test_event_public_id_stays_unique_without_a_like_copy():
    found = _indexes(Event)
    unique = [n for n, i in found.items() if i["unique"] and i["columns"] == ["public_id"]]
    assert len(unique) == 1
    assert _single_column(Event, "public_id") == []  # PostgreSQL's varchar_pattern_ops copy


@pytest.mark.django_db
@pytest.mark.skipif(connection.vendor != "sqlite", reason="SQLite's planner is deterministic")
@pytest.mark.parametrize(("model", "column", "covering"), COVERED)
def test_lookups_by_the_column_use_the_covering_index(model, column, covering):
    """(A guard against a later index change: the dropped index gave the same plan.)"""
    with connection.cursor() as cursor:
        cursor.execute(
            f"EXPLAIN QUERY PLAN SELECT id FROM {model._meta.db_table} WHERE {column} = %s", [1]
        )
        plan = " ".join(str(row[-1]) for row in cursor.fetchall())
    # A search of an index that starts with the column (any of them), not a scan.
    assert plan.startswith("SEARCH") and "INDEX" in plan and f"({column}=?)" in plan, plan


@pytest.mark.django_db(transaction=True)
def test_migration_0013_goes_back_and_forth():
    """Back to 0012 the dropped indexes are there again, under Django's names, and
    forward they are gone."""
    executor = MigrationExecutor(connection)
    executor.migrate([("webhooks_app", "0012_routing_stamp")])
    try:
        with connection.schema_editor() as editor:
            name = editor._create_index_name
        for model, column, _ in COVERED:
            assert name(model._meta.db_table, [column]) in _single_column(model, column)
        if connection.vendor == "postgresql":
            table = Event._meta.db_table
            assert _single_column(Event, "public_id") == [name(table, ["public_id"], "_like")]
    finally:
        executor = MigrationExecutor(connection)
        executor.loader.build_graph()
        executor.migrate(executor.loader.graph.leaf_nodes())
    for model, column, _ in COVERED:
        assert _single_column(model, column) == []


@pytest.mark.django_db(transaction=True)
def test_an_index_of_the_column_added_by_hand_is_kept():
    """0013 drops Django's indexes only: one a DBA added to the same column stays."""
    table = Delivery._meta.db_table
    executor = MigrationExecutor(connection)
    executor.migrate([("webhooks_app", "0012_routing_stamp")])
    try:
        with connection.cursor() as cursor:
            cursor.execute(f"CREATE INDEX ops_delivery_endpoint ON {table} (endpoint_id)")
    finally:
        executor = MigrationExecutor(connection)
        executor.loader.build_graph()
        executor.migrate(executor.loader.graph.leaf_nodes())
    try:
        assert _single_column(Delivery, "endpoint_id") == ["ops_delivery_endpoint"]
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP INDEX ops_delivery_endpoint")
