"""The API's one request parser: JSON, with a bound on nesting."""

from __future__ import annotations

from typing import Any

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

# Far more than any endpoint option or test payload needs, and far below the depth at
# which Python's json module (here, in the engine, or in the admin) hits the recursion
# limit and turns a client's odd input into a 500.
MAX_DEPTH = 32


def _depth(value: Any) -> int:
    """Nesting depth, iteratively: the check itself must not recurse."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children = list(item.values())
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        if deepest > MAX_DEPTH:
            break
        stack.extend((child, level + 1) for child in children)
    return deepest


class BoundedJSONParser(JSONParser):
    """DRF's JSONParser, refusing (400) bodies nested deeper than ``MAX_DEPTH``."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError(f"JSON parse error - nested deeper than {MAX_DEPTH} levels.") from None
        if _depth(data) > MAX_DEPTH:
            raise ParseError(f"JSON parse error - nested deeper than {MAX_DEPTH} levels.")
        return data
