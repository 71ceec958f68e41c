"""Pure signing and verification of webhook requests; no Django imports.

Two schemes are produced for every request:

* Standard Webhooks (https://www.standardwebhooks.com): ``webhook-id``,
  ``webhook-timestamp`` and ``webhook-signature: v1,<base64 HMAC-SHA256>`` over
  ``"{id}.{timestamp}.{body}"``. The key is the base64 part of a ``whsec_`` secret, or the
  secret's UTF-8 bytes when it is not of that form (receivers using the
  ``standardwebhooks`` library then pass ``"whsec_" + base64(secret)``).
* The legacy headers of the reference product: ``X-Webhook-Signature: sha256=<hex>``, an
  HMAC-SHA256 of the raw body keyed with the secret string itself.

During a rotation grace period each header carries one signature per valid secret.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Iterable, Mapping

SECRET_PREFIX = "whsec_"
MIN_SECRET_LENGTH = 32
DEFAULT_TOLERANCE = 300


class WebhookVerificationError(Exception):
    """The request's signature, timestamp or headers do not check out."""


def generate_secret() -> str:
    """A new secret: ``whsec_`` and the base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def secret_key_bytes(secret: str) -> bytes:
    """The HMAC key of the Standard Webhooks scheme for ``secret``."""
    if secret.startswith(SECRET_PREFIX):
        try:
            return base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
        except (binascii.Error, ValueError):
            pass
    return secret.encode("utf-8")


def standard_signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64>`` for one secret."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key_bytes(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def legacy_signature(secret: str, body: bytes) -> str:
    """``sha256=<hex>``: HMAC-SHA256 of the raw body keyed with the secret string."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def sign_headers(
    secrets_: Iterable[str],
    *,
    msg_id: str,
    body: bytes,
    timestamp: int | None = None,
    schemes: Iterable[str] = ("standard", "legacy"),
) -> dict[str, str]:
    """The signature headers for ``body``, one signature per secret in ``secrets_``."""
    keys = [s for s in secrets_ if s]
    ts = int(time.time()) if timestamp is None else int(timestamp)
    schemes = set(schemes)
    headers: dict[str, str] = {}
    if "standard" in schemes:
        headers["webhook-id"] = msg_id
        headers["webhook-timestamp"] = str(ts)
        headers["webhook-signature"] = " ".join(
            standard_signature(k, msg_id, ts, body) for k in keys
        )
    if "legacy" in schemes:
        headers["X-Webhook-Id"] = msg_id
        headers["X-Webhook-Timestamp"] = str(ts)
        headers["X-Webhook-Signature"] = ",".join(legacy_signature(k, body) for k in keys)
    return headers


def _header(headers: Mapping[str, str], name: str) -> str | None:
    lower = name.lower()
    for key, value in headers.items():
        if key.lower() == lower:
            return value
    return None


def _check_timestamp(raw: str | None, tolerance: int, now: float | None) -> int:
    if raw is None:
        raise WebhookVerificationError("missing timestamp header")
    try:
        ts = int(raw)
    except ValueError:
        raise WebhookVerificationError("invalid timestamp header") from None
    current = time.time() if now is None else now
    if ts < current - tolerance:
        raise WebhookVerificationError("message timestamp too old")
    if ts > current + tolerance:
        raise WebhookVerificationError("message timestamp too new")
    return ts


def verify(
    secret: str,
    body: bytes | str,
    headers: Mapping[str, str],
    *,
    tolerance: int = DEFAULT_TOLERANCE,
    now: float | None = None,
    schemes: Iterable[str] = ("standard",),
) -> None:
    """Check a received webhook; raise :class:`WebhookVerificationError` if it fails.

    By default only the Standard Webhooks headers are accepted: their signature covers
    the id and the timestamp. The legacy ``sha256=`` signature covers the body alone, so
    a captured request could be replayed with a fresh ``X-Webhook-Timestamp``; accept it
    only by asking for it (``schemes=("standard", "legacy")``) and de-duplicate by id.
    Comparisons are constant-time; the timestamp must lie within ``tolerance`` seconds.
    """
    schemes = set(schemes)
    raw = body.encode("utf-8") if isinstance(body, str) else bytes(body)
    std = _header(headers, "webhook-signature")
    if std is None and "legacy" not in schemes:
        raise WebhookVerificationError("missing webhook-signature header")
    if std is not None and "standard" in schemes:
        msg_id = _header(headers, "webhook-id")
        if not msg_id:
            raise WebhookVerificationError("missing webhook-id header")
        ts = _check_timestamp(_header(headers, "webhook-timestamp"), tolerance, now)
        expected = standard_signature(secret, msg_id, ts, raw).split(",", 1)[1]
        for candidate in std.split(" "):
            version, _, sig = candidate.partition(",")
            if version == "v1" and hmac.compare_digest(sig.encode(), expected.encode()):
                return
        raise WebhookVerificationError("no matching signature found")
    legacy = _header(headers, "X-Webhook-Signature")
    if legacy is None:
        raise WebhookVerificationError("missing signature headers")
    _check_timestamp(_header(headers, "X-Webhook-Timestamp"), tolerance, now)
    expected = legacy_signature(secret, raw)
    for candidate in legacy.split(","):
        if hmac.compare_digest(candidate.strip().encode(), expected.encode()):
            return
    raise WebhookVerificationError("no matching signature found")
