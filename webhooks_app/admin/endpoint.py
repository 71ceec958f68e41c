"""``EndpointAdmin``: the endpoint list, add and change forms, and the extra URLs."""

from __future__ import annotations

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.urls import path, reverse
from django.utils.formats import date_format
from django.utils.html import format_html
from django.utils.timezone import localtime
from django.utils.translation import gettext_lazy as _

from .. import queries, services
from ..models import Delivery, Endpoint
from .display import breaker_badge, status_badge
from .filters import ActiveFilter, TenantFilter
from .forms import EndpointAddForm, EndpointChangeForm
from .pages import EndpointPagesMixin


@admin.register(Endpoint)
class EndpointAdmin(EndpointPagesMixin, admin.ModelAdmin):
    form = EndpointChangeForm
    add_form = EndpointAddForm
    change_list_template = "webhooks_app/admin/endpoint/change_list.html"
    change_form_template = "webhooks_app/admin/endpoint/change_form.html"
    delete_confirmation_template = "webhooks_app/admin/endpoint/delete_confirmation.html"
    list_display_links = None
    list_filter = [ActiveFilter, TenantFilter]
    search_fields = ["name", "url"]
    list_per_page = 50
    save_as = False
    fieldsets = [
        (None, {"fields": ["name", "description", "url", "is_active", "events"]}),
        (_("Filter"), {"fields": ["payload_filter"]}),
        (
            _("Request"),
            {
                "fields": [
                    "method",
                    "payload_format",
                    "headers",
                    "payload_extra",
                    "payload_fields",
                ]
            },
        ),
        (_("Delivery"), {"fields": ["rate_limit", "ordered", "breaker_display"]}),
        (_("Notifications"), {"fields": ["notify_email"]}),
        (
            _("Details"),
            {"fields": ["tenant", "secret_info", "disabled_reason", "created_at", "updated_at"]},
        ),
    ]
    add_fieldsets = [
        (None, {"fields": ["name", "description", "url", "is_active", "events", "secret"]}),
        (_("Filter"), {"fields": ["payload_filter"]}),
        (
            _("Request"),
            {
                "fields": [
                    "method",
                    "payload_format",
                    "headers",
                    "payload_extra",
                    "payload_fields",
                ]
            },
        ),
        (_("Delivery"), {"fields": ["rate_limit", "ordered"]}),
        (_("Notifications"), {"fields": ["notify_email"]}),
        (_("Tenant"), {"fields": ["tenant"], "classes": ["collapse"]}),
    ]
    readonly_fields = [
        "tenant",
        "secret_info",
        "breaker_display",
        "disabled_reason",
        "created_at",
        "updated_at",
    ]

    class Media:
        css = {"all": ["webhooks_app/admin.css"]}
        js = ["webhooks_app/admin.js"]

    # Forms --------------------------------------------------------------------------------
    def get_fieldsets(self, request, obj=None):
        if obj is None:
            return self.add_fieldsets
        fieldsets = super().get_fieldsets(request, obj)
        if not self.has_change_permission(request, obj):
            # Read-only pages render model fields as stored: show header values masked.
            fieldsets = [
                (
                    title,
                    {
                        **opts,
                        "fields": [
                            "masked_headers" if f == "headers" else f for f in opts["fields"]
                        ],
                    },
                )
                for title, opts in fieldsets
            ]
        return fieldsets

    @admin.display(description=_("custom headers"))
    def masked_headers(self, obj: Endpoint) -> str:
        shown = obj.masked_headers()
        return ", ".join(f"{k}: {v}" for k, v in shown.items()) or "—"

    def get_readonly_fields(self, request, obj=None):
        return [] if obj is None else super().get_readonly_fields(request, obj)

    def get_form(self, request, obj=None, change=False, **kwargs):
        if obj is None:
            kwargs["form"] = self.add_form
        return super().get_form(request, obj, change=change, **kwargs)

    @admin.display(description=_("events"))
    def events(self, obj: Endpoint) -> str:
        """The read-only rendering of the events field (for staff with view permission)."""
        subs = obj.subscriptions.all()
        return ", ".join(s.event_type + ("" if s.enabled else " (paused)") for s in subs) or "—"

    @admin.display(description=_("circuit breaker"))
    def breaker_display(self, obj: Endpoint) -> str:
        return breaker_badge(obj.breaker_state)

    @admin.display(description=_("secret"))
    def secret_info(self, obj: Endpoint) -> str:
        return _("Hidden. It was shown once when created; use “Rotate secret” for a new one.")

    def save_model(self, request, obj, form, change):
        values = form.service_values()
        if change:
            services.update_endpoint(obj, **values)
            return
        endpoint, secret = services.create_endpoint(
            tenant=form.cleaned_data.get("tenant") or None,
            secret=form.cleaned_data.get("secret") or None,
            **values,
        )
        obj.pk = endpoint.pk
        obj.refresh_from_db()
        obj._state.adding = False
        # Lives only as long as this request, for response_add.
        request._webhooks_new_secret = secret

    def response_add(self, request, obj, post_url_continue=None):
        secret = getattr(request, "_webhooks_new_secret", None)
        if secret is None or admin.options.IS_POPUP_VAR in request.POST:
            return super().response_add(request, obj, post_url_continue)
        self.message_user(
            request,
            format_html(_("The webhook endpoint “{}” was added."), obj),
            messages.SUCCESS,
        )
        return self._secret_page(request, obj, secret, created=True)

    def delete_model(self, request, obj):
        services.delete_endpoint(obj)

    def delete_queryset(self, request, queryset):
        for endpoint in queryset:
            services.delete_endpoint(endpoint)

    def get_deleted_objects(self, objs, request):
        # Django would list every related row; with a long history that is a million
        # links. Summarise instead: the deliveries go with the endpoint (CASCADE).
        objs = list(objs)
        ids = [o.pk for o in objs]
        subs = sum(len(o.subscriptions.all()) for o in objs)
        deliveries = Delivery.objects.filter(endpoint_id__in=ids).count()
        summary = [
            str(_("%(n)d event subscription(s)") % {"n": subs}),
            str(_("%(n)d deliveries with their attempt logs") % {"n": deliveries}),
        ]
        deleted = [str(o) for o in objs] + [summary]
        counts = {
            Endpoint._meta.verbose_name_plural: len(objs),
            _("subscriptions"): subs,
            Delivery._meta.verbose_name_plural: deliveries,
        }
        perms_needed = set()
        if not self.has_delete_permission(request):
            perms_needed.add(Endpoint._meta.verbose_name)
        return deleted, counts, perms_needed, []

    # List ---------------------------------------------------------------------------------
    def get_queryset(self, request):
        return queries.with_list_columns(super().get_queryset(request))

    def get_list_display(self, request):
        links = "links_change" if self.has_change_permission(request) else "links_view"
        return [
            "name_link",
            "url_display",
            "events_display",
            "active_display",
            "breaker_display",
            "created_display",
            "last_delivery_display",
            links,
        ]

    @admin.display(description=_("name"), ordering="name")
    def name_link(self, obj: Endpoint) -> str:
        url = reverse("admin:webhooks_app_endpoint_change", args=[obj.pk])
        return format_html('<a href="{}">{}</a>', url, obj.name or _("(unnamed)"))

    @admin.display(description=_("URL"), ordering="url")
    def url_display(self, obj: Endpoint) -> str:
        return format_html('<code class="wh-url">{}</code>', obj.url)

    @admin.display(description=_("events"), ordering="event_count")
    def events_display(self, obj: Endpoint) -> int:
        return obj.event_count

    @admin.display(description=_("status"), ordering="is_active")
    def active_display(self, obj: Endpoint) -> str:
        if obj.is_active:
            return format_html('<span class="wh-badge wh-ok">{}</span>', _("Active"))
        return format_html(
            '<span class="wh-badge wh-off" title="{}">{}</span>',
            obj.disabled_reason,
            _("Inactive"),
        )

    @admin.display(description=_("created"), ordering="created_at")
    def created_display(self, obj: Endpoint) -> str:
        return format_html(
            '<span class="wh-nowrap" title="{}">{}</span>',
            date_format(localtime(obj.created_at), "DATETIME_FORMAT"),
            date_format(localtime(obj.created_at), "M j, Y"),
        )

    @admin.display(description=_("last delivery"))
    def last_delivery_display(self, obj: Endpoint) -> str:
        return status_badge(obj.last_delivery_status)

    @admin.display(description=_("actions"))
    def links_change(self, obj: Endpoint) -> str:
        # The Test button submits a form rendered outside the changelist form (HTML's
        # form= attribute), since forms cannot nest.
        return format_html(
            '<span class="wh-links"><a href="{}">{}</a>'
            '<button type="submit" class="wh-linkbutton" form="wh-test-{}">{}</button>'
            '<a href="{}">{}</a></span>',
            reverse("admin:webhooks_app_endpoint_change", args=[obj.pk]),
            _("Edit"),
            obj.pk,
            _("Test"),
            reverse("admin:webhooks_app_endpoint_history", args=[obj.pk]),
            _("History"),
        )

    @admin.display(description=_("actions"))
    def links_view(self, obj: Endpoint) -> str:
        return format_html(
            '<span class="wh-links"><a href="{}">{}</a><a href="{}">{}</a></span>',
            reverse("admin:webhooks_app_endpoint_change", args=[obj.pk]),
            _("View"),
            reverse("admin:webhooks_app_endpoint_history", args=[obj.pk]),
            _("History"),
        )

    def changelist_view(self, request, extra_context=None):
        tenant = request.GET.get(TenantFilter.parameter_name) or None
        extra_context = {
            **(extra_context or {}),
            "wh_stats": queries.stats(tenant=tenant),
            "wh_can_change": self.has_change_permission(request),
        }
        return super().changelist_view(request, extra_context)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        obj = self.get_object(request, unquote(object_id))
        extra_context = {**(extra_context or {}), "wh_can_change": False}
        if obj is not None:
            extra_context["wh_can_change"] = self.has_change_permission(request, obj)
        return super().change_view(request, object_id, form_url, extra_context)

    # Extra URLs ---------------------------------------------------------------------------
    def get_urls(self):
        prefix = f"{self.opts.app_label}_{self.opts.model_name}"
        wrap = self.admin_site.admin_view
        return [
            # Before the object URLs: "<path:object_id>/" would take "event-types/".
            path("event-types/", wrap(self.event_types_view), name=f"{prefix}_event_types"),
            path("<path:object_id>/test/", wrap(self.test_view), name=f"{prefix}_test"),
            path("<path:object_id>/preview/", wrap(self.preview_view), name=f"{prefix}_preview"),
            path(
                "<path:object_id>/rotate-secret/",
                wrap(self.rotate_secret_view),
                name=f"{prefix}_rotate_secret",
            ),
            path(
                "<path:object_id>/recover/",
                wrap(self.recover_view),
                name=f"{prefix}_recover",
            ),
            path(
                "<path:object_id>/history/replay/",
                wrap(self.replay_selected_view),
                name=f"{prefix}_replay_selected",
            ),
            path(
                "<path:object_id>/history/<int:delivery_id>/replay/",
                wrap(self.replay_view),
                name=f"{prefix}_replay",
            ),
            path(
                "<path:object_id>/history/<int:delivery_id>/",
                wrap(self.delivery_view),
                name=f"{prefix}_delivery",
            ),
            path(
                "<path:object_id>/history/",
                wrap(self.history_view),
                name=f"{prefix}_history",
            ),
            *super().get_urls(),
        ]
