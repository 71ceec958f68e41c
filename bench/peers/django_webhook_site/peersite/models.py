from django.db import models


class Customer(models.Model):
    """The model whose creation sends a webhook (the payload's size matches the bench's)."""

    username = models.CharField(max_length=100)
    email = models.CharField(max_length=200)

    def __str__(self) -> str:
        return self.username
