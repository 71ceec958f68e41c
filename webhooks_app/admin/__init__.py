"""Django admin for webhook endpoints: thin views over ``webhooks_app.services``.

- ``endpoint``: ``EndpointAdmin`` (list, add/change forms, the extra URLs);
- ``pages``: the extra pages (Test, Rotate secret, history, delivery, replay);
- ``forms``: the add/change/rotate forms and their widgets;
- ``filters`` and ``display``: changelist filters and status badges;
- ``event``: ``EventAdmin``, the read-only event log (search by event id).
"""

from .endpoint import EndpointAdmin
from .event import EventAdmin

__all__ = ["EndpointAdmin", "EventAdmin"]
