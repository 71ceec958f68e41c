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
_DIGITS = frozenset("0123456789")
_django = DjangoJSONEncoder()
_compact = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


_SURROGATE = re.compile("[\ud800-\udfff]")


def has_lone_surrogate(text: str) -> bool:
    """Whether ``text`` holds a lone surrogate (no UTF-8 for it: the database driver's
    encode would fail, a 500)."""
    return _SURROGATE.search(text) is not None


def _invalid(path: str, message: str) -> ValidationError:
    where = path or "the value"
    return ValidationError(f"{where}: {message}", code="invalid_json")


def _array_index(key: str) -> int | None:
    """``int(key)`` if JS treats ``key`` as an array index (ordered first), else None."""
    if not key.isdigit() or not key.isascii() or (key[0] == "0" and len(key) > 1):
        return None
    n = int(key)
    return n if n <= _MAX_ARRAY_INDEX else None


def _plain_float(f: float) -> bool:
    """Whether Python's repr of ``f`` is what JS writes too (no exponent, no ``.0``)."""
    r = repr(f)
    return "e" not in r and not r.endswith(".0")


class _Walk:
    """One normalisation pass.

    The path of the value being looked at is a stack of keys and indexes, turned into
    text only for an error message. ``special_floats`` tells whether a float is left
    whose Python repr differs from what JS writes (the body is then written by _write()).
    """

    def __init__(self, max_depth: int, root: str, levels_above: int = 0) -> None:
        self.max_depth = max_depth
        self.limit = max_depth + levels_above
        self.large = app_settings.LARGE_INTEGERS
        self.special_floats = False
        self.active: set[int] = set()
        self.root = root
        self.parts: list[str | int] = []

    def fail(self, message: str) -> ValidationError:
        out = self.root
        for part in self.parts:
            if isinstance(part, int):
                out += f"[{part}]"
            else:
                out = f"{out}.{part}" if out else part
        return _invalid(out, message)

    def text(self, value: str) -> str:
        match = _BAD_CHARS.search(value)
        if match:
            char = match.group()
            if char == "\x00":
                raise self.fail("contains a NUL character (\\u0000), which cannot be stored")
            raise self.fail(
                f"contains a lone surrogate (\\u{ord(char):04x}), which is not valid UTF-8"
            )
        return value

    def value(self, v: Any, depth: int) -> Any:
        t = type(v)
        if t is str:
            return self.text(v)
        if t is dict or t is list:
            return self.container(v, depth)
        if t is int:
            if -MAX_SAFE_INTEGER <= v <= MAX_SAFE_INTEGER:
                return v
            return self.large_int(v)
        if v is None or v is True or v is False:
            return v
        if t is float:
            return self.number(v)
        # Subclasses and the rest: str/int enums, other mappings, tuples, Django's values.
        if isinstance(v, str):
            return self.text(str.__str__(v))
        if isinstance(v, int):
            return self.value(int(v), depth)
        if isinstance(v, float):
            return self.number(float(v))
        if isinstance(v, Mapping | list | tuple):
            return self.container(v, depth)
        if isinstance(v, set | frozenset):
            raise self.fail("a set is not JSON; pass a list")
        if isinstance(v, bytes | bytearray | memoryview):
            raise self.fail("bytes are not JSON; decode them or send base64 text")
        try:
            converted = _django.default(v)  # datetime, date, time, timedelta, Decimal, UUID
        except (TypeError, ValueError) as exc:
            detail = str(exc) if isinstance(exc, ValueError) else "is not JSON-serialisable"
            raise self.fail(f"{type(v).__name__} {detail}") from None
        return self.value(converted, depth)

    def large_int(self, n: int) -> str:
        if n.bit_length() > 1000:  # ~300 digits: str() of a 4300-digit int is a ValueError
            raise self.fail(
                f"an integer of {n.bit_length()} bits is too large to send; send it as a string"
            )
        if self.large == "string":
            return str(n)
        raise self.fail(
            f"the integer {n} is outside ±(2**53 - 1), which JavaScript cannot hold "
            "exactly; send it as a string (or set WEBHOOKS_APP['LARGE_INTEGERS'] = "
            '"string")'
        )

    def number(self, f: float) -> int | float:
        if not math.isfinite(f):
            raise self.fail(f"{f} is not a JSON number (NaN and Infinity are refused)")
        if f.is_integer() and -MAX_SAFE_INTEGER <= f <= MAX_SAFE_INTEGER:
            return int(f)  # 1.0 -> 1, -0.0 -> 0: JS has one number type
        if not self.special_floats and not _plain_float(f):
            self.special_floats = True
        return f

    def container(self, v: Any, depth: int) -> Any:
        if depth >= self.limit:
            raise self.fail(f"nested deeper than {self.max_depth} levels")
        ident = id(v)
        if ident in self.active:
            raise self.fail("is a circular reference")
        self.active.add(ident)
        try:
            if type(v) is dict or (type(v) is not list and isinstance(v, Mapping)):
                return self.mapping(v, depth + 1)
            parts = self.parts
            search = _BAD_CHARS.search
            out = []
            for i, item in enumerate(v):
                t = type(item)
                # Plain strings and safe integers inline: most of a payload, and a call
                # per value doubled the time of a whole emit().
                if (t is str and not search(item)) or (
                    t is int and -MAX_SAFE_INTEGER <= item <= MAX_SAFE_INTEGER
                ):
                    out.append(item)
                    continue
                parts.append(i)
                out.append(self.value(item, depth + 1))
                parts.pop()
            return out
        finally:
            self.active.discard(ident)

    def key(self, key: Any) -> str:
        if type(key) is str:
            return self.text(key)
        if isinstance(key, str):
            return self.text(str.__str__(key))
        if isinstance(key, int) and not isinstance(key, bool):
            return str(int(key))
        converted = None
        try:
            converted = _django.default(key)  # lazy strings, UUIDs, dates as keys
        except (TypeError, ValueError):
            pass
        if isinstance(converted, str):
            return self.text(converted)
        raise self.fail(f"the key {key!r} is not text (JSON object keys are strings)")

    def mapping(self, m: Mapping, depth: int) -> dict[str, Any]:
        indexed: dict[str, tuple[int, Any]] = {}
        out: dict[str, Any] = {}
        parts = self.parts
        search = _BAD_CHARS.search
        for raw_key, item in m.items():
            key = raw_key if type(raw_key) is str and not search(raw_key) else self.key(raw_key)
            if key in out or key in indexed:
                raise self.fail(f"the key {key!r} occurs twice once converted to text")
            t = type(item)
            if (t is str and not search(item)) or (
                t is int and -MAX_SAFE_INTEGER <= item <= MAX_SAFE_INTEGER
            ):
                sub = item
            else:
                parts.append(key)
                sub = self.value(item, depth)
                parts.pop()
            index = _array_index(key) if key and key[0] in _DIGITS else None
            if index is None:
                out[key] = sub
            else:
                indexed[key] = (index, sub)
        if not indexed:
            return out
        ordered = {k: sub for k, (_, sub) in sorted(indexed.items(), key=lambda kv: kv[1][0])}
        ordered.update(out)
        return ordered


def _walk(value: Any, path: str, max_depth: int, levels_above: int = 0) -> tuple[Any, bool]:
    walk = _Walk(max_depth, path, levels_above)
    return walk.value(value, 0), walk.special_floats


def normalise(value: Any, *, path: str = "data", max_depth: int | None = None) -> Any:
    """``value`` as plain JSON data (what ``Event.data`` stores), keys in JS order.

    Raises ``ValidationError`` naming the path of the first value JSON cannot carry.
    ``max_depth`` defaults to ``WEBHOOKS_APP['MAX_PAYLOAD_DEPTH']``.
    """
    depth = app_settings.MAX_PAYLOAD_DEPTH if max_depth is None else max_depth
    return _walk(value, path, depth)[0]


def format_number(value: float | int) -> str:
    """A number as JS writes it (``1.0`` -> ``1``, ``1e-07`` -> ``1e-7``), e.g. for a query."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    f = float(value)
    if f.is_integer() and abs(f) <= MAX_SAFE_INTEGER:
        return str(int(f))
    if _plain_float(f):
        return repr(f)
    return rfc8785.dumps(f).decode("ascii")


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


def _encode(tree: Any, special_floats: bool) -> str:
    if not special_floats:
        # Integers, strings, literals and floats whose repr JS shares: Python's C encoder
        # writes them as JS does (same escapes, non-ASCII kept); keys are in JS order.
        return _compact.encode(tree)
    out: list[str] = []
    _write(tree, out)
    return "".join(out)


def dumps(value: Any) -> str:
    """``value`` as the text ``JSON.stringify(JSON.parse(text))`` gives back unchanged.

    Accepts what :func:`normalise` accepts (and raises its ``ValidationError``).
    """
    return _encode(*_walk(value, "", _HARD_DEPTH))


def normalise_and_dump(
    value: Any, *, path: str = "", max_depth: int | None = None, levels_above: int = 0
) -> tuple[Any, str]:
    """``(normalise(value), dumps(value))`` in one pass (emit() builds the envelope so).

    ``max_depth`` applies to what lies ``levels_above`` levels down (the envelope's
    ``data``), and error messages name that limit.
    """
    depth = _HARD_DEPTH if max_depth is None else max_depth
    tree, special = _walk(value, path, depth, levels_above)
    return tree, _encode(tree, special)


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
