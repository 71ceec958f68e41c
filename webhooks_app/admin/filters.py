"""Changelist filters of the endpoint admin."""

from __future__ import annotations

from django.contrib import admin
from django.utils.translation import gettext_lazy as _

from ..models import Endpoint


class ActiveFilter(admin.SimpleListFilter):
    title = _("status")
    parameter_name = "active"

    def lookups(self, request, model_admin):
        return [("1", _("Active")), ("0", _("Inactive"))]

    def queryset(self, request, queryset):
        if self.value() in ("0", "1"):
            return queryset.filter(is_active=self.value() == "1")
        return queryset


class TenantFilter(admin.SimpleListFilter):
    """Shown only when some endpoint has a tenant (an empty list hides the filter)."""

    title = _("tenant")
    parameter_name = "tenant"

    def lookups(self, request, model_admin):
        tenants = (
            Endpoint.objects.exclude(tenant="")
            .order_by("tenant")
            .values_list("tenant", flat=True)
            .distinct()
        )
        return [(t, t) for t in tenants[:200]]

    def queryset(self, request, queryset):
        if self.value():
            return queryset.filter(tenant=self.value())
        return queryset
