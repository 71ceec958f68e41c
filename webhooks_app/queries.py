"""The read side shared by the admin, the customer portal and the API.

History, filters, keyset paging and stats live here once, so the three front ends stay
thin: they parse input, check permission and tenant, and read through these functions.
"""

from __future__ import annotations
