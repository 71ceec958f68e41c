"""Custom request headers: which names and values can always be sent, and masking.

Pure functions (no Django models): ``services`` validates with them when an endpoint is
saved, and the engine checks again before sending (a row written before these rules, or
by hand, becomes a recorded failure with a clear message, never an exception).
"""

from __future__ import annotations

import re

NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,100}$")
# Set by webhooks_app, or hop-by-hop / framing headers that only the HTTP client may set:
# a custom Content-Length or Transfer-Encoding would desynchronise the request, and
# Connection, Upgrade, TE, Expect... change how the connection itself behaves.
RESERVED = {
    "host",
    "content-length",
    "content-type",
    "content-encoding",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "user-agent",
}
RESERVED_PREFIXES = ("webhook-", "x-webhook-", "proxy-")
MAX_VALUE_LENGTH = 4000
MASK = "••••"  # outside Latin-1 on purpose: a masked value can never be stored as sent
# Control characters: RFC 9110 field values allow visible characters, space and tab.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def name_problem(name: object) -> str | None:
    """Why ``name`` cannot be a custom header name, or None."""
    if not isinstance(name, str) or not NAME.match(name):
        return f"{name!r} is not a valid header name."
    lower = name.lower()
    if lower in RESERVED or lower.startswith(RESERVED_PREFIXES):
        return f"The {name} header is set by webhooks_app or the HTTP client and cannot be set."
    return None


def value_problem(name: str, value: object) -> str | None:
    """Why ``value`` cannot be sent as the value of ``name``, or None (never echoes it)."""
    if not isinstance(value, str):
        return f"The value of {name} must be text."
    if "\r" in value or "\n" in value or "\x00" in value:
        return f"The value of {name} must be one line, without NUL, CR or LF characters."
    if _CONTROL.search(value):
        return f"The value of {name} must not contain control characters."
    if value != value.strip():
        return f"The value of {name} must not start or end with whitespace."
    if len(value) > MAX_VALUE_LENGTH:
        return f"The value of {name} must be at most {MAX_VALUE_LENGTH} characters."
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return (
            f"The value of {name} has characters HTTP headers cannot carry "
            "(only Latin-1; encode others, e.g. with percent-encoding)."
        )
    return None


def mask(value: str) -> str:
    """``Bearer ••••1a2b``: an auth scheme is kept, and the last 4 characters of a long
    value, so people can tell values apart without the value being shown."""
    scheme, sep, rest = value.partition(" ")
    if not (sep and rest and scheme.isalpha() and len(scheme) <= 20):
        scheme, rest = "", value
    tail = rest[-4:] if len(rest) >= 16 else ""
    return f"{scheme} {MASK}{tail}" if scheme else f"{MASK}{tail}"


def unmask(submitted: dict, current: dict[str, str]) -> dict:
    """``submitted`` with every value left masked replaced by the current value."""
    return {
        name: current[name] if name in current and value == mask(current[name]) else value
        for name, value in submitted.items()
    }
