"""Django admin for webhooks (filled in by the admin work)."""
