"""Cursor pagination on ``-id``: stable under inserts, one index range scan per page."""

from __future__ import annotations

from typing import Any

from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.pagination import Cursor, CursorPagination

# Primary keys are BigAutoField; anything beyond would overflow the database driver.
MAX_ID = 2**63 - 1


class IdCursorPagination(CursorPagination):
    """Newest first by primary key.

    Offsets shift when rows are inserted; a cursor holding the last id seen does not, and
    ``WHERE id < :last ORDER BY id DESC LIMIT n`` is served by the (tenant|endpoint, -id)
    indexes however deep the page. Ids are unique, so the cursor never needs an offset.
    """

    ordering = "-id"
    page_size = 50
    page_size_query_param = "limit"
    max_page_size = 200

    def get_page_size(self, request: Any) -> int:
        # DRF silently falls back to the default for limit=0, -1, abc or 10000; a client
        # asking for something it cannot get should hear so.
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return self.page_size
        if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= self.max_page_size:
            raise ValidationError(
                {self.page_size_query_param: [f"Give a number from 1 to {self.max_page_size}."]}
            )
        return int(raw)

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.page_size_query_param:
                parameter["description"] = (
                    f"Results per page, 1 to {self.max_page_size} (default {self.page_size})."
                )
                parameter["schema"] = {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": self.max_page_size,
                }
            elif parameter["name"] == self.cursor_query_param:
                parameter["description"] = "The `next` or `previous` link's cursor."
        return parameters

    def decode_cursor(self, request: Any) -> Cursor | None:
        # DRF answers a bad cursor with 404 and lets a well-formed but non-numeric
        # position reach the database (a 500); both are client errors here.
        try:
            cursor = super().decode_cursor(request)
        except NotFound:
            cursor = False
        if cursor is None:
            return None
        position = cursor.position if cursor else None
        if (
            not cursor
            or cursor.offset
            or position is None
            or not position.isdigit()
            or int(position) > MAX_ID
        ):
            raise ValidationError({self.cursor_query_param: ["Invalid cursor."]})
        return cursor
