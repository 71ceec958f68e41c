"""``EventAdmin``: the event log, read-only; find an event by its id and see what became
of each delivery it produced."""

from __future__ import annotations

import json

from django.contrib import admin
from django.core.paginator import Paginator
from django.urls import reverse
from django.utils.formats import date_format
from django.utils.functional import cached_property
from django.utils.html import format_html, format_html_join
from django.utils.timezone import localtime
from django.utils.translation import gettext_lazy as _

from .. import queries
from ..events import event_types
from ..models import Event
from .display import status_badge
from .filters import TenantFilter


class CappedPaginator(Paginator):
    """Counts at most ``queries.HISTORY_COUNT_CAP`` rows: the log may hold millions."""

    @cached_property
    def count(self) -> int:
        return queries.capped_count(self.object_list)[0]


class EventTypeFilter(admin.SimpleListFilter):
    """Choices from the registry, not a DISTINCT over the whole table."""

    title = _("event type")
    parameter_name = "event_type"

    def lookups(self, request, model_admin):
        return [(name, name) for name in sorted(event_types())]

    def queryset(self, request, queryset):
        return queries.filter_events(queryset, event_type=self.value())


@admin.register(Event)
class EventAdmin(admin.ModelAdmin):
    list_display = ["public_id_display", "event_type", "tenant", "created_at"]
    list_display_links = ["public_id_display"]
    list_filter = [EventTypeFilter, TenantFilter]
    search_fields = ["public_id"]  # matched exactly, see get_search_results
    search_help_text = _("An event id (evt_…), as in the webhook-id header.")
    list_per_page = 50
    paginator = CappedPaginator
    show_full_result_count = False
    fields = ["public_id", "event_type", "tenant", "created_at", "data_display", "deliveries"]
    readonly_fields = fields

    class Media:
        css = {"all": ["webhooks_app/admin.css"]}

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def get_queryset(self, request):
        return queries.events()

    def get_search_results(self, request, queryset, search_term):
        # Exact (Django's "=" lookup is iexact, which no index serves); anything that is
        # not an event id matches nothing instead of scanning the table.
        term = search_term.strip()
        if not term:
            return queryset, False
        if not queries.is_event_id(term):
            return queryset.none(), False
        return queries.filter_events(queryset, public_id=term), False

    @admin.display(description=_("event id"), ordering="id")
    def public_id_display(self, obj: Event) -> str:
        return format_html("<code>{}</code>", obj.public_id)

    @admin.display(description=_("data"))
    def data_display(self, obj: Event) -> str:
        text = json.dumps(obj.data, indent=2, ensure_ascii=False, default=str)
        return format_html('<pre class="wh-pre">{}</pre>', text)

    @admin.display(description=_("deliveries"))
    def deliveries(self, obj: Event) -> str:
        event = queries.event_detail(queries.events().filter(pk=obj.pk), obj.public_id)
        rows = event.delivery_rows if event else []
        if not rows:
            return format_html('<span class="wh-muted">{}</span>', _("None."))
        body = format_html_join(
            "",
            '<tr><td><a href="{}">#{}</a></td><td><a href="{}">{}</a></td><td>{}</td>'
            "<td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    reverse("admin:webhooks_app_endpoint_delivery", args=[d.endpoint_id, d.pk]),
                    d.pk,
                    reverse("admin:webhooks_app_endpoint_history", args=[d.endpoint_id])
                    + f"?event={obj.public_id}",
                    d.endpoint,
                    status_badge(d.status),
                    d.last_status_code or "—",
                    d.attempts,
                    date_format(localtime(d.last_attempt_at), "DATETIME_FORMAT")
                    if d.last_attempt_at
                    else "—",
                )
                for d in rows
            ),
        )
        head = format_html(
            "<tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr>",
            _("Delivery"),
            _("Endpoint"),
            _("Status"),
            _("Code"),
            _("Attempts"),
            _("Last attempt"),
        )
        return format_html('<table class="wh-event-deliveries">{}{}</table>', head, body)
