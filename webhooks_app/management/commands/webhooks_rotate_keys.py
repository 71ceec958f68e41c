"""manage.py webhooks_rotate_keys: re-encrypt stored secrets and headers with the first key."""

from django.core.management.base import BaseCommand, CommandError

from webhooks_app import services


class Command(BaseCommand):
    help = (
        "Re-encrypt every endpoint secret and custom header value with the first key of "
        "WEBHOOKS_APP['ENCRYPTION_KEYS'] (or the key derived from SECRET_KEY). Run it after "
        "adding a new first key (or a new SECRET_KEY with the old one in "
        "SECRET_KEY_FALLBACKS); then the old key can be removed."
    )

    def handle(self, **options):
        done, failed = services.reencrypt_stored_secrets()
        self.stdout.write(f"{done} endpoint(s) re-encrypted with the first key.")
        if failed:
            ids = ", ".join(map(str, failed))
            raise CommandError(
                f"{len(failed)} endpoint(s) have values no configured key decrypts "
                f"(ids {ids}); they were left unchanged. Add the key they were encrypted "
                "with to ENCRYPTION_KEYS (or SECRET_KEY_FALLBACKS) and run this again."
            )
