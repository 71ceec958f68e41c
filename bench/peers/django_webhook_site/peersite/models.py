from django.db import models


class Customer(models.Model):
    """The model whose creation sends a webhook (the payload's size matches the bench's)."""

    username = models.CharField(max_length=100)
    email = models.CharField(max_length=200)

    def __str__(self) -> str:
        return self.username


class Plain(models.Model):
    """The same row with no webhook bound: the bare save the request path is measured
    against (django-webhook only listens to the models in DJANGO_WEBHOOK['MODELS'])."""

    username = models.CharField(max_length=100)
    email = models.CharField(max_length=200)

    def __str__(self) -> str:
        return self.username
