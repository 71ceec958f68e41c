"""webhooks_app.signing against independent implementations, one broken header at a time."""

import base64
import hashlib
import hmac
import time

import pytest
import standardwebhooks

from webhooks_app import signing

BODY = b'{"id":"evt_1","event":"user.created","data":{"email":"a@b.c"}}'


def headers_for(secret, body=BODY, msg_id="evt_1", ts=None, secrets_=None):
    return signing.sign_headers(secrets_ or [secret], msg_id=msg_id, body=body, timestamp=ts)


def test_generated_secret_is_whsec_base64_of_32_bytes():
    secret = signing.generate_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret[6:], validate=True)) == 32
    assert signing.generate_secret() != secret


def test_standard_signature_verifies_with_the_standardwebhooks_library():
    secret = signing.generate_secret()
    headers = headers_for(secret)
    assert standardwebhooks.Webhook(secret).verify(BODY, headers) is not None


def test_legacy_signature_is_hmac_sha256_hex_of_raw_body_keyed_with_the_secret_string():
    secret = "x" * 40
    headers = headers_for(secret)
    expected = hmac.new(secret.encode(), BODY, hashlib.sha256).hexdigest()
    assert headers["X-Webhook-Signature"] == f"sha256={expected}"
    assert headers["X-Webhook-Timestamp"] == headers["webhook-timestamp"]
    assert headers["X-Webhook-Id"] == "evt_1"


def test_non_whsec_secret_verifies_with_library_given_its_base64():
    secret = "my-own-secret-that-is-long-enough-1234"
    headers = headers_for(secret)
    wrapped = "whsec_" + base64.b64encode(secret.encode()).decode()
    standardwebhooks.Webhook(wrapped).verify(BODY, headers)
    signing.verify(secret, BODY, headers)


@pytest.mark.parametrize("scheme", ["standard", "legacy"])
def test_verify_accepts_each_scheme_alone(scheme):
    secret = signing.generate_secret()
    headers = signing.sign_headers([secret], msg_id="evt_1", body=BODY, schemes=[scheme])
    signing.verify(secret, BODY, headers, schemes=[scheme])


@pytest.mark.parametrize(
    "header, value, message",
    [
        ("webhook-signature", "v1,AAAA", "no matching signature"),
        ("webhook-id", "evt_other", "no matching signature"),
        ("webhook-timestamp", "not-a-number", "invalid timestamp"),
        ("webhook-timestamp", str(int(time.time()) - 3600), "too old"),
        ("webhook-timestamp", str(int(time.time()) + 3600), "too new"),
    ],
)
def test_verify_rejects_each_broken_standard_header(header, value, message):
    secret = signing.generate_secret()
    headers = headers_for(secret)
    headers[header] = value
    with pytest.raises(signing.WebhookVerificationError, match=message):
        signing.verify(secret, BODY, headers)


@pytest.mark.parametrize("header", ["webhook-id", "webhook-timestamp"])
def test_verify_rejects_missing_standard_header(header):
    secret = signing.generate_secret()
    headers = headers_for(secret)
    del headers[header]
    with pytest.raises(signing.WebhookVerificationError):
        signing.verify(secret, BODY, headers)


def test_verify_rejects_tampered_body_wrong_secret_and_legacy_mismatch():
    secret = signing.generate_secret()
    headers = headers_for(secret)
    with pytest.raises(signing.WebhookVerificationError):
        signing.verify(secret, BODY + b" ", headers)
    with pytest.raises(signing.WebhookVerificationError):
        signing.verify(signing.generate_secret(), BODY, headers)
    legacy = signing.sign_headers([secret], msg_id="evt_1", body=BODY, schemes=["legacy"])
    legacy["X-Webhook-Signature"] = "sha256=" + "0" * 64
    with pytest.raises(signing.WebhookVerificationError):
        signing.verify(secret, BODY, legacy, schemes=["legacy"])
    with pytest.raises(signing.WebhookVerificationError, match="missing"):
        signing.verify(secret, BODY, {})


def test_legacy_headers_alone_are_refused_unless_asked_for():
    """Stripping the standard headers and refreshing X-Webhook-Timestamp must not make a
    captured request verify: the legacy HMAC does not cover the timestamp."""
    secret = signing.generate_secret()
    old = headers_for(secret, ts=int(time.time()) - 86400)
    with pytest.raises(signing.WebhookVerificationError, match="too old"):
        signing.verify(secret, BODY, old)
    replayed = {k: v for k, v in old.items() if not k.startswith("webhook-")}
    replayed["X-Webhook-Timestamp"] = str(int(time.time()))
    with pytest.raises(signing.WebhookVerificationError, match="missing webhook-signature"):
        signing.verify(secret, BODY, replayed)
    signing.verify(secret, BODY, replayed, schemes=["standard", "legacy"])  # opted in


def test_two_secrets_give_two_signatures_each_verifying():
    old, new = signing.generate_secret(), signing.generate_secret()
    headers = headers_for(None, secrets_=[new, old])
    assert len(headers["webhook-signature"].split(" ")) == 2
    assert len(headers["X-Webhook-Signature"].split(",")) == 2
    for secret in (old, new):
        signing.verify(secret, BODY, headers)
        standardwebhooks.Webhook(secret).verify(BODY, headers)
    with pytest.raises(signing.WebhookVerificationError):
        signing.verify(signing.generate_secret(), BODY, headers)


def test_verify_uses_constant_time_comparison(monkeypatch):
    calls = []
    real = hmac.compare_digest
    monkeypatch.setattr(signing.hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b))
    secret = signing.generate_secret()
    signing.verify(secret, BODY, headers_for(secret))
    assert calls
