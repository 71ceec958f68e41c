from django.apps import AppConfig


class ReceiverConfig(AppConfig):
    name = "project.receiver"
    label = "receiver"
    verbose_name = "Demo receiver"
    default_auto_field = "django.db.models.BigAutoField"
