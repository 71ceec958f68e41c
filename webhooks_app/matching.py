"""Which endpoints an event goes to: wildcard subscriptions and payload filters.

A subscription names an event type (``user.created``), every type under a prefix
(``user.*``, which also matches ``user.profile.updated``), or every type (``*``). For one
emitted type the candidate subscriptions are a short list of exact names
(:func:`candidate_names`), so emit() still finds them with one indexed ``IN`` query, and
types declared later are matched without touching any subscription.

A payload filter is a small MongoDB-style query on the event
``{"event": <type>, "tenant": <tenant>, "data": <data as sent>}``, e.g.
``{"data.amount": {"$gte": 100}, "data.plan": {"$in": ["pro", "team"]}}``. It is
validated once, when the endpoint is saved (:func:`clean_filter`), and evaluated in
Python for each candidate endpoint at emit time (:func:`matches`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from django.core.exceptions import ValidationError

WILDCARD = "*"
COMPARISONS = ("$eq", "$neq", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists")
LOGICAL = ("$or", "$and")
# What a filter's paths may start with: the event's type, its tenant, its data.
ROOTS = ("event", "tenant", "data")
MAX_DEPTH = 10
MAX_FILTER_BYTES = 10_000
MAX_IN_ITEMS = 1_000
_PREFIX = re.compile(r"^[^\s*]+$")
_SURROGATE = re.compile("[\ud800-\udfff]")


# Wildcards ---------------------------------------------------------------------------
def is_pattern(name: str) -> bool:
    return name == WILDCARD or name.endswith(".*")


def validate_pattern(name: str) -> None:
    """``*`` or ``<prefix>.*`` with a prefix of non-space characters and no ``*``."""
    if name == WILDCARD:
        return
    prefix = name[:-2]
    if not name.endswith(".*") or not prefix or not _PREFIX.match(prefix) or ".." in name:
        raise ValidationError(
            "%(name)s is not a valid wildcard: use * for every event type or a prefix "
            "followed by .* (for example user.*).",
            code="invalid_pattern",
            params={"name": name},
        )
    if prefix.startswith(".") or prefix.endswith("."):
        raise ValidationError(
            "%(name)s is not a valid wildcard.", code="invalid_pattern", params={"name": name}
        )


def candidate_names(event_type: str) -> list[str]:
    """Subscription names that can match ``event_type``, most specific first:
    ``a.b.c`` -> ``["a.b.c", "a.b.*", "a.*", "*"]``."""
    parts = event_type.split(".")
    names = [event_type]
    for i in range(len(parts) - 1, 0, -1):
        names.append(".".join(parts[:i]) + ".*")
    names.append(WILDCARD)
    return names


def pattern_matches(pattern: str, event_type: str) -> bool:
    if pattern == WILDCARD:
        return True
    if pattern.endswith(".*"):
        return event_type.startswith(pattern[:-1])
    return pattern == event_type


def specificity(name: str) -> int:
    """Higher wins when several subscriptions of one endpoint match: the exact name, then
    the longest prefix. So ``user.*`` enabled with ``user.deleted`` paused skips deletes."""
    if name == WILDCARD:
        return 0
    if name.endswith(".*"):
        return len(name)
    return 1_000_000


# Payload filters ---------------------------------------------------------------------
def _error(message: str, **params: Any) -> ValidationError:
    return ValidationError(message, code="invalid_filter", params=params)


def _check_json(value: Any, where: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise _error("The filter is nested too deeply at %(path)s.", path=where)
    if isinstance(value, str):
        if "\x00" in value:
            raise _error("Null characters are not allowed (at %(path)s).", path=where)
        if _SURROGATE.search(value):  # no UTF-8 for it: a 500 from the database
            raise _error("Lone surrogates are not allowed (at %(path)s).", path=where)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise _error("%(path)s: numbers must be finite.", path=where)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise _error("%(path)s: keys must be text.", path=where)
            _check_json(key, where, depth + 1)
            _check_json(item, where, depth + 1)
    elif isinstance(value, list | tuple):
        for item in value:
            _check_json(item, where, depth + 1)
    elif value is not None and not isinstance(value, bool | int):
        raise _error("%(path)s: only JSON values are allowed.", path=where)


def _check_path(path: str) -> None:
    parts = path.split(".")
    if parts[0] not in ROOTS or any(not p or p.startswith("$") for p in parts):
        raise _error(
            "Unknown path %(path)s: a path starts with event, tenant or data and names "
            "keys separated by dots (for example data.customer.plan).",
            path=path,
        )


def _is_operator_object(value: Any) -> bool:
    return isinstance(value, Mapping) and bool(value) and all(k.startswith("$") for k in value)


def _check_condition(path: str, cond: Any, depth: int) -> None:
    if not isinstance(cond, Mapping) or not cond:
        _check_json(cond, path, depth)
        return
    dollars = [k for k in cond if k.startswith("$")]
    if not dollars:
        _check_json(cond, path, depth)  # an object literal: equality
        return
    if len(dollars) != len(cond):
        raise _error(
            "%(path)s mixes operators and plain keys; put a literal object under $eq.",
            path=path,
        )
    for op, arg in cond.items():
        where = f"{path}.{op}"
        if op not in COMPARISONS:
            raise _error(
                "Unknown operator %(op)s at %(path)s; use one of %(ops)s.",
                op=op,
                path=path,
                ops=", ".join(COMPARISONS),
            )
        if op in ("$gt", "$gte", "$lt", "$lte"):
            if isinstance(arg, bool) or not isinstance(arg, int | float | str):
                raise _error("%(path)s needs a number or a text.", path=where)
        elif op in ("$in", "$nin"):
            if not isinstance(arg, list | tuple):
                raise _error("%(path)s needs a list of values.", path=where)
            if len(arg) > MAX_IN_ITEMS:
                raise _error("%(path)s: at most %(n)d values.", path=where, n=MAX_IN_ITEMS)
        elif op == "$exists":
            if not isinstance(arg, bool):
                raise _error("%(path)s needs true or false.", path=where)
        _check_json(arg, where, depth + 1)


def _check_filter(value: Any, where: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise _error("The filter is nested too deeply at %(path)s.", path=where)
    if not isinstance(value, Mapping):
        raise _error("%(path)s must be an object of path: condition.", path=where or "The filter")
    for key, cond in value.items():
        if not isinstance(key, str) or not key:
            raise _error("Filter keys must be non-empty text.")
        _check_json(key, where or "the top of the filter", depth)
        if key in LOGICAL:
            here = f"{where}.{key}" if where else key
            if not isinstance(cond, list | tuple) or not cond:
                raise _error("%(path)s needs a non-empty list of filters.", path=here)
            for i, sub in enumerate(cond):
                _check_filter(sub, f"{here}[{i}]", depth + 1)
        elif key.startswith("$"):
            raise _error(
                "Unknown operator %(op)s at the top of a filter; use a path, $or or $and.",
                op=key,
            )
        else:
            _check_path(key)
            _check_condition(key, cond, depth + 1)


def clean_filter(value: Any) -> dict[str, Any]:
    """Validate a payload filter; ``{}`` (or None) means every event."""
    if value in (None, "", {}):
        return {}
    if not isinstance(value, Mapping):
        raise _error("Give the filter as an object of path: condition.")
    _check_filter(value, "", 0)
    try:
        size = len(json.dumps(value, separators=(",", ":")))
    except (TypeError, ValueError):
        raise _error("The filter must be JSON.") from None
    if size > MAX_FILTER_BYTES:
        raise _error("The filter is too large (at most %(n)d bytes).", n=MAX_FILTER_BYTES)
    return json.loads(json.dumps(value))


_MISSING = object()


def _resolve(doc: Any, path: str) -> Any:
    cur = doc
    for part in path.split("."):
        if isinstance(cur, Mapping):
            cur = cur.get(part, _MISSING)
            if cur is _MISSING:
                return _MISSING
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            return _MISSING
    return cur


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _same(a: Any, b: Any) -> bool:
    """JSON equality: ``1 == 1.0``, but ``true`` is not ``1``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if _number(a) and _number(b):
        return a == b
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def _ordered(a: Any, b: Any) -> bool:
    return (_number(a) and _number(b)) or (isinstance(a, str) and isinstance(b, str))


def _test(op: str, value: Any, arg: Any) -> bool:
    missing = value is _MISSING
    if op == "$exists":
        return (not missing) == arg
    if op == "$eq":
        return not missing and _same(value, arg)
    if op == "$neq":
        return missing or not _same(value, arg)
    if op == "$in":
        return not missing and any(_same(value, x) for x in arg)
    if op == "$nin":
        return missing or not any(_same(value, x) for x in arg)
    if missing or not _ordered(value, arg):
        return False
    if op == "$gt":
        return value > arg
    if op == "$gte":
        return value >= arg
    if op == "$lt":
        return value < arg
    return value <= arg  # $lte


def matches(flt: Mapping[str, Any], event: Mapping[str, Any]) -> bool:
    """Does ``event`` (``{"event", "tenant", "data"}``) pass the validated filter ``flt``?"""
    for key, cond in flt.items():
        if key == "$or":
            if not any(matches(sub, event) for sub in cond):
                return False
        elif key == "$and":
            if not all(matches(sub, event) for sub in cond):
                return False
        else:
            value = _resolve(event, key)
            if _is_operator_object(cond):
                if not all(_test(op, value, arg) for op, arg in cond.items()):
                    return False
            elif not _test("$eq", value, cond):
                return False
    return True
