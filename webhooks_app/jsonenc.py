"""Webhook bodies written byte for byte as ECMAScript's ``JSON.stringify`` writes them.

Receivers are told to verify ``JSON.stringify(req.body)`` after ``express.json()``
(the reference product's snippet), so the bytes we sign must equal
``JSON.stringify(JSON.parse(body))``. Python's ``json`` differs in three ways, each fixed
here:

* numbers: ``1.0`` and ``-0.0`` are written ``1`` and ``0``; exponents as JS writes them
  (``1e21`` -> ``1e+21``, ``1e-07`` -> ``1e-7``, ``1e+16`` -> ``10000000000000000``),
  formatted by the ``rfc8785`` package (its number format is ECMAScript's);
* key order: keys that are array indexes (``"0"`` ... ``"4294967294"``) come first in
  ascending numeric order, then the other keys in insertion order, as JS objects keep
  them (``rfc8785`` itself sorts keys, which is JCS, not what ``JSON.stringify`` does);
* integers beyond ±(2**53 - 1), which a JS number cannot hold: refused, or sent as
  strings with ``WEBHOOKS_APP['LARGE_INTEGERS'] = "string"``.

:func:`normalise` also turns what Django sites hold (datetimes, dates, times, durations,
``Decimal``, ``UUID``, lazy translation strings) into the strings ``DjangoJSONEncoder``
writes, and refuses what JSON cannot carry (sets, bytes, circular structures, lone
surrogates, NUL characters, NaN/Infinity, nesting deeper than ``MAX_PAYLOAD_DEPTH``)
with a ``ValidationError`` naming the path, before anything is written to the database.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

import rfc8785
from django.core.exceptions import ValidationError
from django.core.serializers.json import DjangoJSONEncoder

from .conf import app_settings

MAX_SAFE_INTEGER = 2**53 - 1
_MAX_ARRAY_INDEX = 2**32 - 2
# Nesting allowed when dumps() is given a structure that was not checked by emit():
# deep enough for any envelope, shallow enough to stay clear of Python's recursion limit.
_HARD_DEPTH = 200
_BAD_CHARS = re.compile("[\x00\ud800-\udfff]")
_django = DjangoJSONEncoder()
_compact = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _invalid(path: str, message: str) -> ValidationError:
    where = path or "the value"
    return ValidationError(f"{where}: {message}", code="invalid_json")


def _array_index(key: str) -> int | None:
    """``int(key)`` if JS treats ``key`` as an array index (ordered first), else None."""
    if not key.isascii() or not key.isdigit() or (key[0] == "0" and len(key) > 1):
        return None
    n = int(key)
    return n if n <= _MAX_ARRAY_INDEX else None


def _key(key: Any, path: str) -> str:
    if isinstance(key, str):
        return _text(key if type(key) is str else str.__str__(key), path)
    if isinstance(key, int) and not isinstance(key, bool):
        return str(int(key))
    converted = None
    try:
        converted = _django.default(key)  # lazy strings, UUIDs, dates as keys
    except (TypeError, ValueError):
        pass
    if isinstance(converted, str):
        return _text(converted, path)
    raise _invalid(path, f"the key {key!r} is not text (JSON object keys are strings)")


def _text(value: str, path: str) -> str:
    match = _BAD_CHARS.search(value)
    if match:
        char = match.group()
        if char == "\x00":
            raise _invalid(path, "contains a NUL character (\\u0000), which cannot be stored")
        raise _invalid(
            path, f"contains a lone surrogate (\\u{ord(char):04x}), which is not valid UTF-8"
        )
    return value


class _Walk:
    """One normalisation pass; remembers whether any non-integral float is left."""

    def __init__(self, max_depth: int) -> None:
        self.max_depth = max_depth
        self.large = app_settings.LARGE_INTEGERS
        self.floats = False
        self.active: set[int] = set()

    def value(self, v: Any, path: str, depth: int) -> Any:
        if v is None or v is True or v is False:
            return v
        if isinstance(v, str):
            return _text(v if type(v) is str else str.__str__(v), path)
        if isinstance(v, int):
            n = int(v)
            if -MAX_SAFE_INTEGER <= n <= MAX_SAFE_INTEGER:
                return n
            if self.large == "string":
                return str(n)
            raise _invalid(
                path,
                f"the integer {n} is outside ±(2**53 - 1), which JavaScript cannot hold "
                "exactly; send it as a string (or set WEBHOOKS_APP['LARGE_INTEGERS'] = "
                '"string")',
            )
        if isinstance(v, float):
            f = float(v)
            if not math.isfinite(f):
                raise _invalid(path, f"{f} is not a JSON number (NaN and Infinity are refused)")
            if f.is_integer() and abs(f) <= MAX_SAFE_INTEGER:
                return int(f)  # 1.0 -> 1, -0.0 -> 0: JS has one number type
            self.floats = True
            return f
        if isinstance(v, Mapping | list | tuple):
            if depth >= self.max_depth:
                raise _invalid(path, f"nested deeper than {self.max_depth} levels")
            ident = id(v)
            if ident in self.active:
                raise _invalid(path, "is a circular reference")
            self.active.add(ident)
            try:
                if isinstance(v, Mapping):
                    return self.mapping(v, path, depth + 1)
                return [
                    self.value(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(v)
                ]
            finally:
                self.active.discard(ident)
        if isinstance(v, set | frozenset):
            raise _invalid(path, "a set is not JSON; pass a list")
        if isinstance(v, bytes | bytearray | memoryview):
            raise _invalid(path, "bytes are not JSON; decode them or send base64 text")
        try:
            converted = _django.default(v)  # datetime, date, time, timedelta, Decimal, UUID
        except (TypeError, ValueError) as exc:
            detail = str(exc) if isinstance(exc, ValueError) else "is not JSON-serialisable"
            raise _invalid(path, f"{type(v).__name__} {detail}") from None
        return self.value(converted, path, depth)

    def mapping(self, m: Mapping, path: str, depth: int) -> dict[str, Any]:
        indexed: list[tuple[int, str, Any]] = []
        named: dict[str, Any] = {}
        seen: set[str] = set()
        for raw_key, item in m.items():
            key = _key(raw_key, path)
            if key in seen:
                raise _invalid(path, f"the key {key!r} occurs twice once converted to text")
            seen.add(key)
            sub = self.value(item, f"{path}.{key}" if path else key, depth)
            index = _array_index(key)
            if index is None:
                named[key] = sub
            else:
                indexed.append((index, key, sub))
        if not indexed:
            return named
        indexed.sort()
        out = {key: sub for _, key, sub in indexed}
        out.update(named)
        return out


def normalise(value: Any, *, path: str = "data", max_depth: int | None = None) -> Any:
    """``value`` as plain JSON data (what ``Event.data`` stores), keys in JS order.

    Raises ``ValidationError`` naming the path of the first value JSON cannot carry.
    ``max_depth`` defaults to ``WEBHOOKS_APP['MAX_PAYLOAD_DEPTH']``.
    """
    depth = app_settings.MAX_PAYLOAD_DEPTH if max_depth is None else max_depth
    return _Walk(depth).value(value, path, 0)


def format_number(value: float | int) -> str:
    """A number as JS writes it (``1.0`` -> ``1``, ``1e-07`` -> ``1e-7``), e.g. for a query."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return rfc8785.dumps(float(value)).decode("ascii")


def _write(v: Any, out: list[str]) -> None:
    if isinstance(v, dict):
        out.append("{")
        first = True
        for key, sub in v.items():
            if not first:
                out.append(",")
            first = False
            out.append(_compact.encode(key))
            out.append(":")
            _write(sub, out)
        out.append("}")
    elif isinstance(v, list):
        out.append("[")
        for i, sub in enumerate(v):
            if i:
                out.append(",")
            _write(sub, out)
        out.append("]")
    elif isinstance(v, float):
        out.append(format_number(v))
    else:
        out.append(_compact.encode(v))


def dumps(value: Any) -> str:
    """``value`` as the text ``JSON.stringify(JSON.parse(text))`` gives back unchanged.

    Accepts what :func:`normalise` accepts (and raises its ``ValidationError``).
    """
    walk = _Walk(_HARD_DEPTH)
    tree = walk.value(value, "", 0)
    if not walk.floats:
        # Only integers, strings and literals: Python's C encoder writes them as JS does
        # (same escapes, non-ASCII kept), and the keys are already in JS order.
        return _compact.encode(tree)
    out: list[str] = []
    _write(tree, out)
    return "".join(out)


def check_size(body: str, what: str = "The event body") -> int:
    """The UTF-8 size of ``body``; ``ValidationError`` beyond ``MAX_PAYLOAD_BYTES``."""
    size = len(body.encode("utf-8"))
    limit = app_settings.MAX_PAYLOAD_BYTES
    if limit and size > limit:
        raise ValidationError(
            f"{what} is {size} bytes, more than the {limit} bytes allowed "
            "(WEBHOOKS_APP['MAX_PAYLOAD_BYTES']).",
            code="too_large",
        )
    return size
