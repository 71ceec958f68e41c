"""Django admin for webhook endpoints: thin views over ``webhooks_app.services``.

Extra pages follow ``UserAdmin.user_change_password``: custom paths before the model's
own, each wrapped in ``admin_site.admin_view``; a view gets the object, checks the
permission, changes data only on POST through a service, logs it, messages, redirects.

The one exception to post/redirect/get is the one-time secret page (after "add" and
after "Rotate secret"): the plaintext is rendered in the response to the POST itself and
kept nowhere else (no session, no message), so reloading cannot show it again.
"""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Count, OuterRef, Q, QuerySet, Subquery
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.formats import date_format
from django.utils.html import format_html
from django.utils.http import urlencode
from django.utils.timezone import localtime
from django.utils.translation import gettext_lazy as _

from . import services
from .admin_forms import EndpointAddForm, EndpointChangeForm, RotateSecretForm
from .events import TEST_EVENT, event_types
from .models import Delivery, Endpoint

HISTORY_PAGE_SIZE = 50
# The history header counts at most this many rows: exact below, "10,000+" above, so a
# page load never counts a million rows.
HISTORY_COUNT_CAP = 10_000

STATUS_CSS = {
    Delivery.Status.SUCCEEDED: "wh-ok",
    Delivery.Status.FAILED: "wh-fail",
    Delivery.Status.PENDING: "wh-pending",
}


def status_badge(status: str | None) -> str:
    if not status:
        return format_html('<span class="wh-muted">{}</span>', _("never"))
    label = Delivery.Status(status).label
    return format_html('<span class="wh-badge {}">{}</span>', STATUS_CSS[status], label)


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


@admin.register(Endpoint)
class EndpointAdmin(admin.ModelAdmin):
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
        (
            _("Request"),
            {"fields": ["method", "headers", "payload_extra", "payload_fields"]},
        ),
        (_("Notifications"), {"fields": ["notify_email"]}),
        (
            _("Details"),
            {"fields": ["tenant", "secret_info", "disabled_reason", "created_at", "updated_at"]},
        ),
    ]
    add_fieldsets = [
        (None, {"fields": ["name", "description", "url", "is_active", "events", "secret"]}),
        (
            _("Request"),
            {"fields": ["method", "headers", "payload_extra", "payload_fields"]},
        ),
        (_("Notifications"), {"fields": ["notify_email"]}),
        (_("Tenant"), {"fields": ["tenant"], "classes": ["collapse"]}),
    ]
    readonly_fields = ["tenant", "secret_info", "disabled_reason", "created_at", "updated_at"]

    class Media:
        css = {"all": ["webhooks_app/admin.css"]}
        js = ["webhooks_app/admin.js"]

    # Forms --------------------------------------------------------------------------------
    def get_fieldsets(self, request, obj=None):
        return self.add_fieldsets if obj is None else super().get_fieldsets(request, obj)

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
        last_status = Delivery.objects.filter(endpoint=OuterRef("pk")).order_by("-id")
        return (
            super()
            .get_queryset(request)
            .annotate(
                event_count=Count(
                    "subscriptions", filter=Q(subscriptions__enabled=True), distinct=True
                ),
                last_delivery_status=Subquery(last_status.values("status")[:1]),
            )
        )

    def get_list_display(self, request):
        links = "links_change" if self.has_change_permission(request) else "links_view"
        return [
            "name_link",
            "url_display",
            "events_display",
            "active_display",
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
            "wh_stats": services.stats(tenant=tenant),
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
            path("<path:object_id>/test/", wrap(self.test_view), name=f"{prefix}_test"),
            path(
                "<path:object_id>/rotate-secret/",
                wrap(self.rotate_secret_view),
                name=f"{prefix}_rotate_secret",
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

    def _get_endpoint(self, request: HttpRequest, object_id: str, *, change: bool) -> Endpoint:
        obj = self.get_object(request, unquote(object_id))
        if obj is None:
            raise Http404(_("No webhook endpoint with this id."))
        allowed = (
            self.has_change_permission(request, obj)
            if change
            else self.has_view_or_change_permission(request, obj)
        )
        if not allowed:
            raise PermissionDenied
        return obj

    def _context(self, request: HttpRequest, obj: Endpoint, title: str, **extra: Any) -> dict:
        return {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "original": obj,
            "title": title,
            "subtitle": str(obj),
            "media": self.media,
            "wh_can_change": self.has_change_permission(request, obj),
            **extra,
        }

    def _secret_page(
        self, request: HttpRequest, obj: Endpoint, secret: str, *, created: bool
    ) -> HttpResponse:
        context = self._context(
            request,
            obj,
            _("Webhook secret"),
            secret=secret,
            created=created,
        )
        response = TemplateResponse(request, "webhooks_app/admin/endpoint/secret.html", context)
        # Never cached by the browser or a proxy: the page holds the only copy.
        response["Cache-Control"] = "no-store, private"
        response["Pragma"] = "no-cache"
        return response

    def test_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """GET: the Test page (with the result of the last test sent from it); POST: send."""
        obj = self._get_endpoint(request, object_id, change=True)
        if request.method == "POST":
            result = services.send_test(obj)
            outcome = (
                _("Test webhook delivered (HTTP %(code)s).") % {"code": result.status_code}
                if result.ok
                else _("Test webhook failed: %(why)s")
                % {"why": result.error or f"HTTP {result.status_code}"}
            )
            self.log_change(request, obj, str(outcome))
            self.message_user(request, outcome, messages.SUCCESS if result.ok else messages.ERROR)
            url = reverse("admin:webhooks_app_endpoint_test", args=[obj.pk])
            return HttpResponseRedirect(f"{url}?{urlencode({'result': result.delivery.pk})}")
        result = None
        if request.GET.get("result", "").isdigit():
            result = (
                Delivery.objects.filter(
                    pk=int(request.GET["result"]), endpoint=obj, event_type=TEST_EVENT
                )
                .prefetch_related("attempt_log")
                .first()
            )
        context = self._context(
            request,
            obj,
            _("Test webhook endpoint"),
            result=result,
            attempt=result.attempt_log.all().last() if result else None,
            example=json.dumps(event_types()[TEST_EVENT]["example"], indent=2),
        )
        return TemplateResponse(request, "webhooks_app/admin/endpoint/test.html", context)

    def rotate_secret_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        obj = self._get_endpoint(request, object_id, change=True)
        form = RotateSecretForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            grace = form.cleaned_data["grace"] or None
            try:
                secret = services.rotate_secret(obj, grace=grace)
            except ValidationError as exc:
                form.add_error("grace" if hasattr(exc, "error_dict") else None, exc)
            else:
                msg = _("Rotated the secret") + (
                    str(_(" (old secret valid for %(s)d more seconds)") % {"s": grace})
                    if grace
                    else ""
                )
                self.log_change(request, obj, str(msg))
                self.message_user(request, _("The secret was rotated."), messages.SUCCESS)
                return self._secret_page(request, obj, secret, created=False)
        context = self._context(request, obj, _("Rotate secret"), form=form)
        return TemplateResponse(request, "webhooks_app/admin/endpoint/rotate_secret.html", context)

    def history_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """Deliveries newest first, keyset-paginated (``?before=<id>`` / ``?after=<id>``).

        Each page is one index range scan on (endpoint[, status | event_type], -id) of
        PAGE_SIZE + 1 rows, however deep, and the header counts at most COUNT_CAP rows.
        """
        obj = self._get_endpoint(request, object_id, change=False)
        status = request.GET.get("status", "")
        event_type = request.GET.get("event_type", "")
        qs = Delivery.objects.filter(endpoint=obj)
        if status in Delivery.Status.values:
            qs = qs.filter(status=status)
        else:
            status = ""
        if event_type:
            qs = qs.filter(event_type=event_type)
        before, after = request.GET.get("before", ""), request.GET.get("after", "")
        page_qs = qs.select_related("event").only(
            "id",
            "endpoint_id",
            "event_type",
            "status",
            "attempts",
            "created_at",
            "last_attempt_at",
            "last_status_code",
            "last_response_ms",
            "last_error",
            "event__public_id",
        )
        if after.isdigit():
            rows = list(page_qs.filter(id__gt=int(after)).order_by("id")[: HISTORY_PAGE_SIZE + 1])
            has_newer = len(rows) > HISTORY_PAGE_SIZE
            rows = rows[:HISTORY_PAGE_SIZE][::-1]
            has_older = bool(rows) and qs.filter(id__lt=rows[-1].id).exists()
        else:
            if before.isdigit():
                page_qs = page_qs.filter(id__lt=int(before))
            rows = list(page_qs.order_by("-id")[: HISTORY_PAGE_SIZE + 1])
            has_older = len(rows) > HISTORY_PAGE_SIZE
            rows = rows[:HISTORY_PAGE_SIZE]
            has_newer = before.isdigit() and bool(rows) and qs.filter(id__gt=rows[0].id).exists()
        if not (before or after) and not has_older:
            capped = len(rows)  # the whole history fits on this page: no count query
        else:
            capped = qs.order_by()[: HISTORY_COUNT_CAP + 1].count()
        filters = {k: v for k, v in (("status", status), ("event_type", event_type)) if v}

        def link(**params: Any) -> str:
            return "?" + urlencode({**filters, **params}) if {**filters, **params} else "?"

        def filter_link(name: str, value: str) -> str:
            params = {**filters, name: value}
            if not value:
                params.pop(name)
            return "?" + urlencode(params) if params else "?"

        status_choices = [
            {"label": _("All"), "url": filter_link("status", ""), "selected": not status}
        ] + [
            {"label": label, "url": filter_link("status", value), "selected": status == value}
            for value, label in Delivery.Status.choices
        ]
        types = sorted(set(obj.event_types) | {TEST_EVENT} | ({event_type} - {""}))
        type_choices = [
            {"label": _("All"), "url": filter_link("event_type", ""), "selected": not event_type}
        ] + [
            {"label": t, "url": filter_link("event_type", t), "selected": event_type == t}
            for t in types
        ]
        context = self._context(
            request,
            obj,
            _("Delivery history"),
            rows=[(d, status_badge(d.status)) for d in rows],
            count=min(capped, HISTORY_COUNT_CAP),
            count_capped=capped > HISTORY_COUNT_CAP,
            newest_url=link() if (before or after) else None,
            newer_url=link(after=rows[0].id) if has_newer and rows else None,
            older_url=link(before=rows[-1].id) if has_older and rows else None,
            status_choices=status_choices,
            type_choices=type_choices,
            filtered=bool(filters),
            return_query=request.GET.urlencode(),
        )
        return TemplateResponse(request, "webhooks_app/admin/endpoint/history.html", context)

    def delivery_view(self, request: HttpRequest, object_id: str, delivery_id: int) -> HttpResponse:
        obj = self._get_endpoint(request, object_id, change=False)
        delivery = get_object_or_404(
            Delivery.objects.select_related("event"), pk=delivery_id, endpoint=obj
        )
        payload = delivery.payload_bytes().decode("utf-8", "replace")
        try:
            payload = json.dumps(json.loads(payload), indent=2, ensure_ascii=False)
        except ValueError:
            pass  # a GET endpoint's query string, shown as sent
        log = list(delivery.attempt_log.all())
        context = self._context(
            request,
            obj,
            _("Delivery %(id)s") % {"id": delivery.pk},
            delivery=delivery,
            badge=status_badge(delivery.status),
            attempts=[(a, status_badge("succeeded" if a.succeeded else "failed")) for a in log],
            payload=payload,
            can_replay=delivery.status != Delivery.Status.PENDING,
        )
        return TemplateResponse(request, "webhooks_app/admin/endpoint/delivery.html", context)

    def replay_view(self, request: HttpRequest, object_id: str, delivery_id: int) -> HttpResponse:
        obj = self._get_endpoint(request, object_id, change=True)
        delivery = get_object_or_404(Delivery, pk=delivery_id, endpoint=obj)
        url = reverse("admin:webhooks_app_endpoint_delivery", args=[obj.pk, delivery.pk])
        if request.method != "POST":
            return HttpResponseRedirect(url)
        try:
            services.replay(delivery)
        except ValidationError as exc:
            self.message_user(request, " ".join(exc.messages), messages.ERROR)
        else:
            self.log_change(request, obj, str(_("Replayed delivery %(id)s") % {"id": delivery.pk}))
            self.message_user(
                request,
                _("Delivery %(id)s was queued to be sent again.") % {"id": delivery.pk},
                messages.SUCCESS,
            )
        return HttpResponseRedirect(url)

    def replay_selected_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        obj = self._get_endpoint(request, object_id, change=True)
        url = reverse("admin:webhooks_app_endpoint_history", args=[obj.pk])
        query = request.POST.get("return_query", "")
        back = HttpResponseRedirect(f"{url}?{query}" if query else url)
        if request.method != "POST":
            return back
        ids = [int(i) for i in request.POST.getlist("ids") if i.isdigit()][: HISTORY_PAGE_SIZE * 4]
        if not ids:
            self.message_user(request, _("Select deliveries to replay."), messages.WARNING)
            return back
        deliveries: QuerySet[Delivery] = Delivery.objects.filter(endpoint=obj, pk__in=ids)
        count, problems = services.replay_many(deliveries.order_by("id"))
        if count:
            self.log_change(request, obj, str(_("Replayed %(n)d deliveries") % {"n": count}))
            self.message_user(
                request, _("%(n)d deliveries queued to be sent again.") % {"n": count}
            )
        for problem in problems:
            self.message_user(request, problem, messages.WARNING)
        return back
