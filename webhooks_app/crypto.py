"""Encryption of endpoint secrets at rest (Fernet; keys from settings, read live)."""

from __future__ import annotations

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings

from .conf import app_settings


def _fernet() -> MultiFernet:
    keys = app_settings.ENCRYPTION_KEYS
    if not keys:
        # A key derived from SECRET_KEY, so a default install needs no extra setting.
        # Sites that rotate SECRET_KEY should set ENCRYPTION_KEYS explicitly.
        digest = hashlib.sha256(b"webhooks_app.secret-at-rest:" + settings.SECRET_KEY.encode())
        keys = [base64.urlsafe_b64encode(digest.digest()).decode()]
    return MultiFernet([Fernet(k) for k in keys])


def encrypt(plaintext: str) -> str:
    """Encrypt a secret for storage."""
    return _fernet().encrypt(plaintext.encode("utf-8")).decode("ascii")


def decrypt(token: str) -> str:
    """Decrypt a stored secret; raises ValueError (never echoing the token) on failure."""
    try:
        return _fernet().decrypt(token.encode("ascii")).decode("utf-8")
    except (InvalidToken, ValueError):
        raise ValueError(
            "An endpoint secret could not be decrypted: check WEBHOOKS_APP['ENCRYPTION_KEYS'] "
            "(or SECRET_KEY_FALLBACKS, if SECRET_KEY changed)."
        ) from None
