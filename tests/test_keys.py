"""Encryption keys (issue 9 §4): SECRET_KEY_FALLBACKS, webhooks_rotate_keys, check W003."""

from datetime import timedelta

import pytest
from cryptography.fernet import Fernet
from django.conf import settings
from django.core.checks import run_checks
from django.core.management import CommandError, call_command
from django.test import override_settings

from webhooks_app import emit, engine, services, signing
from webhooks_app.models import Endpoint

pytestmark = pytest.mark.django_db(transaction=True)

OLD_SECRET_KEY = "old-secret-key-" + "x" * 40
NEW_SECRET_KEY = "new-secret-key-" + "y" * 40


def webhooks(**changes):
    return override_settings(WEBHOOKS_APP={**settings.WEBHOOKS_APP, **changes})


def make(receiver):
    endpoint, secret = services.create_endpoint(
        url=receiver.url(), events=["user.created"], headers={"Authorization": "Bearer tok-1"}
    )
    old = secret
    secret = services.rotate_secret(endpoint, grace=timedelta(hours=1))
    return Endpoint.objects.get(pk=endpoint.pk), secret, old


def readable(pk) -> bool:
    endpoint = Endpoint.objects.get(pk=pk)
    try:
        endpoint.signing_secrets(), endpoint.get_headers()
    except ValueError:
        return False
    return True


def test_secret_key_fallbacks_decrypt_values_stored_under_the_old_key(receiver):
    with override_settings(SECRET_KEY=OLD_SECRET_KEY, SECRET_KEY_FALLBACKS=[]):
        endpoint, secret, old = make(receiver)
    with override_settings(SECRET_KEY=NEW_SECRET_KEY, SECRET_KEY_FALLBACKS=[]):
        assert not readable(endpoint.pk)  # what happens without the fallback
    with override_settings(SECRET_KEY=NEW_SECRET_KEY, SECRET_KEY_FALLBACKS=[OLD_SECRET_KEY]):
        assert Endpoint.objects.get(pk=endpoint.pk).signing_secrets() == [secret, old]
        emit("user.created", {})
        engine.drain()
        (req,) = receiver.wait_for(1)
        signing.verify(secret, req.body, req.headers)
        assert req.header("Authorization") == "Bearer tok-1"
        call_command("webhooks_rotate_keys")
    with override_settings(SECRET_KEY=NEW_SECRET_KEY, SECRET_KEY_FALLBACKS=[]):
        e = Endpoint.objects.get(pk=endpoint.pk)
        assert e.signing_secrets() == [secret, old]
        assert e.get_headers() == {"Authorization": "Bearer tok-1"}


def test_rotate_keys_reencrypts_secrets_and_headers_with_the_first_key(receiver, capsys):
    old_key, new_key = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    with webhooks(ENCRYPTION_KEYS=[old_key]):
        endpoint, secret, old = make(receiver)
        broken, _ = services.create_endpoint(url=receiver.url(), events=["user.created"])
    Endpoint.objects.filter(pk=broken.pk).update(secret_encrypted="not-a-token")
    with webhooks(ENCRYPTION_KEYS=[new_key, old_key]):
        with pytest.raises(CommandError, match=f"ids {broken.pk}"):
            call_command("webhooks_rotate_keys")
    assert "1 endpoint(s) re-encrypted" in capsys.readouterr().out
    with webhooks(ENCRYPTION_KEYS=[new_key]):
        e = Endpoint.objects.get(pk=endpoint.pk)
        assert e.signing_secrets() == [secret, old]
        assert e.get_headers() == {"Authorization": "Bearer tok-1"}
    assert Endpoint.objects.get(pk=broken.pk).secret_encrypted == "not-a-token"


@pytest.mark.parametrize(
    "debug, keys, warned",
    [(False, [], True), (False, [Fernet.generate_key().decode()], False), (True, [], False)],
)
def test_check_warns_when_encryption_keys_are_unset_in_production(debug, keys, warned):
    with override_settings(DEBUG=debug), webhooks(ENCRYPTION_KEYS=keys):
        ids = [m.id for m in run_checks()]
    assert ("webhooks_app.W003" in ids) is warned
