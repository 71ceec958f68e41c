"""App config: connect receivers and register checks; no database access here."""

from django.apps import AppConfig


class WebhooksAppConfig(AppConfig):
    name = "webhooks_app"
    verbose_name = "Webhooks"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks, model_events, signals  # noqa: F401  (checks register on import)
        from .dispatcher import on_worker_spawn

        signals.webhook_event.connect(
            model_events.on_webhook_event, dispatch_uid="webhooks_app.webhook_event"
        )
        signals.delivery_failed.connect(
            model_events.notify_failure, dispatch_uid="webhooks_app.notify_failure"
        )
        signals.endpoint_disabled.connect(
            model_events.notify_disabled, dispatch_uid="webhooks_app.notify_disabled"
        )
        model_events.connect_model_signals()
        from django.db.models.signals import post_migrate

        from . import routing
        from .retention import on_post_migrate

        # The prune schedule is created after migrate, not here: no DB access in ready().
        post_migrate.connect(on_post_migrate, sender=self, dispatch_uid="webhooks_app.prune")
        post_migrate.connect(
            routing.on_post_migrate, sender=self, dispatch_uid="webhooks_app.routing"
        )
        from django.db.backends.signals import connection_created

        from .sqlite_checkpoints import on_connection_created

        connection_created.connect(
            on_connection_created, dispatch_uid="webhooks_app.sqlite_checkpoints"
        )
        try:
            from django_q.signals import post_spawn
        except ImportError:  # checks.E002 explains
            return
        post_spawn.connect(on_worker_spawn, dispatch_uid="webhooks_app.dispatcher")
