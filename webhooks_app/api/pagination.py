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
