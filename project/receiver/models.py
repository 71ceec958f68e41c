"""The demo's stand-in for a customer's server: inboxes and what they received."""

from django.db import models


class Inbox(models.Model):
    """A receiving URL (/receiver/<slug>/) and the secret it verifies with.

    The demo keeps the secret in plain text because it plays the customer, who must
    hold it to verify signatures; webhooks_app itself stores secrets encrypted.
    """

    slug = models.SlugField(unique=True)
    secret = models.CharField(max_length=200, blank=True)
    # What to answer: a status code, and how many requests should fail first.
    status_code = models.PositiveSmallIntegerField(default=200)
    fail_first = models.PositiveIntegerField(default=0)

    def __str__(self) -> str:
        return self.slug


class ReceivedWebhook(models.Model):
    inbox = models.ForeignKey(Inbox, on_delete=models.CASCADE, related_name="received")
    received_at = models.DateTimeField(auto_now_add=True)
    method = models.CharField(max_length=8)
    headers = models.JSONField(default=dict)
    body = models.TextField(blank=True)
    event_type = models.CharField(max_length=100, blank=True)
    webhook_id = models.CharField(max_length=60, blank=True)
    verified = models.BooleanField(default=False)
    verification_error = models.CharField(max_length=200, blank=True)
    answered = models.PositiveSmallIntegerField(default=200)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.method} {self.event_type} to {self.inbox_id}"
