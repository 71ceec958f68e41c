"""The endpoint admin's extra pages: Test, Preview, Rotate secret, delivery history, replay,
recover.

Each follows ``UserAdmin.user_change_password``: it gets the object, checks the
permission, changes data only on POST through a service, logs it, messages, redirects.
The one exception to post/redirect/get is the one-time secret page (after "add" and
after "Rotate secret"): the plaintext is rendered in the response to the POST itself and
kept nowhere else (no session, no message), so reloading cannot show it again.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.http import urlencode
from django.utils.translation import gettext_lazy as _

from .. import matching, queries, services
from ..events import TEST_EVENT, event_types
from ..models import Delivery, Endpoint
from .display import status_badge
from .forms import RecoverForm, RotateSecretForm

HISTORY_PAGE_SIZE = queries.HISTORY_PAGE_SIZE


class EndpointPagesMixin:
    """Views mixed into ``EndpointAdmin``; its ``get_urls()`` routes them."""

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

    def _page_media(self) -> forms.Media:
        """The admin's media without Django's actions.js: these pages have no action
        form of Django's (actions.js expects its ``button[name=index]`` and threw on the
        history page); admin.js does their select-all."""
        media = self.media
        js = [j for j in media._js if not str(j).endswith("admin/js/actions.js")]
        return forms.Media(css=media._css, js=js)

    def _context(self, request: HttpRequest, obj: Endpoint, title: str, **extra: Any) -> dict:
        return {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "original": obj,
            "title": title,
            "subtitle": str(obj),
            "media": self._page_media(),
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

    def _test_types(self, obj: Endpoint) -> list[tuple[str, dict]]:
        """The Test page's choices: webhook.test first, then every type that can be sent
        (deprecated ones only where the endpoint still receives them)."""
        subscribed = {s.event_type for s in obj.subscriptions.all()}
        types = event_types()
        rest = [
            (n, i)
            for n, i in sorted(types.items())
            if n != TEST_EVENT and (not i["deprecated"] or n in subscribed)
        ]
        return [(TEST_EVENT, types[TEST_EVENT]), *rest]

    def test_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """GET: the Test page (with the result of the last test sent from it); POST: send
        a test of the chosen type (``event_type``; default webhook.test)."""
        obj = self._get_endpoint(request, object_id, change=True)
        url = reverse("admin:webhooks_app_endpoint_test", args=[obj.pk])
        if request.method == "POST":
            event_type = request.POST.get("event_type") or TEST_EVENT
            try:
                result = services.send_test(obj, event_type=event_type)
            except ValidationError as exc:
                self.message_user(request, " ".join(exc.messages), messages.ERROR)
                return HttpResponseRedirect(url)
            outcome = (
                _("Test %(type)s webhook delivered (HTTP %(code)s).")
                % {"type": event_type, "code": result.status_code}
                if result.ok
                else _("Test %(type)s webhook failed: %(why)s")
                % {"type": event_type, "why": result.error or f"HTTP {result.status_code}"}
            )
            self.log_change(request, obj, str(outcome))
            self.message_user(request, outcome, messages.SUCCESS if result.ok else messages.ERROR)
            query = urlencode({"event_type": event_type, "result": result.delivery.pk})
            return HttpResponseRedirect(f"{url}?{query}")
        result = queries.test_result(obj, request.GET.get("result"))
        choices = self._test_types(obj)
        chosen = request.GET.get("event_type", TEST_EVENT)
        if chosen not in dict(choices):
            chosen = TEST_EVENT
        context = self._context(
            request,
            obj,
            _("Test webhook endpoint"),
            result=result,
            attempt=result.attempt_log.all().last() if result else None,
            type_choices=[
                {"name": n, "description": i["description"], "selected": n == chosen}
                for n, i in choices
            ],
            chosen=chosen,
            example=json.dumps(dict(choices)[chosen]["example"], indent=2, ensure_ascii=False),
        )
        return TemplateResponse(request, "webhooks_app/admin/endpoint/test.html", context)

    def event_types_view(self, request: HttpRequest) -> HttpResponse:
        """The event catalogue: every declared type by group, with example and schema."""
        if not self.has_view_or_change_permission(request):
            raise PermissionDenied
        groups: dict[str, list[dict[str, Any]]] = {}
        for name, info in sorted(event_types().items()):
            groups.setdefault(info["group"], []).append(
                {
                    "name": name,
                    "description": info["description"],
                    "deprecated": info["deprecated"],
                    "builtin": name == TEST_EVENT,
                    "example": json.dumps(info["example"], indent=2, ensure_ascii=False),
                    "schema": json.dumps(info["schema"], indent=2, ensure_ascii=False)
                    if info["schema"]
                    else "",
                }
            )
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": _("Event catalogue"),
            "media": self.media,
            "groups": sorted(groups.items()),
        }
        return TemplateResponse(request, "webhooks_app/admin/endpoint/event_types.html", context)

    def preview_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """GET only: what this endpoint would receive for the chosen type's example."""
        obj = self._get_endpoint(request, object_id, change=False)
        subscribed = set(obj.event_types)
        types = sorted(event_types())
        # Subscribed types first, then the others (and the built-in test event).
        ordered = [t for t in types if t in subscribed] + [t for t in types if t not in subscribed]
        type_choices = [
            (t, t if t in subscribed else _("%(type)s (not subscribed)") % {"type": t})
            for t in ordered
        ]
        preview, error, pretty = None, None, ""
        try:
            preview = services.preview(obj, request.GET.get("event_type") or None)
        except ValidationError as exc:
            error = " ".join(exc.messages)
        if preview and preview.body:
            try:
                pretty = json.dumps(json.loads(preview.body), indent=2, ensure_ascii=False)
            except ValueError:
                pretty = ""
        context = self._context(
            request,
            obj,
            _("Preview"),
            preview=preview,
            error=error,
            pretty=pretty,
            type_choices=type_choices,
        )
        return TemplateResponse(request, "webhooks_app/admin/endpoint/preview.html", context)

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
        if status not in Delivery.Status.values:
            status = ""
        event_type = request.GET.get("event_type", "")
        event = request.GET.get("event", "").strip()
        if not queries.is_event_id(event):
            event = ""
        qs = queries.filter_deliveries(
            queries.deliveries(endpoint=obj), status=status, event_type=event_type, event=event
        )
        before, after = request.GET.get("before", ""), request.GET.get("after", "")
        page = queries.history_page(qs, before=before, after=after)
        rows = page.rows
        filters = {
            k: v for k, v in (("status", status), ("event_type", event_type), ("event", event)) if v
        }

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
        # Wildcard subscriptions list the declared types they cover.
        subscribed = set(obj.event_types)
        covered = {
            n
            for n in event_types()
            if n != TEST_EVENT and any(matching.pattern_matches(p, n) for p in subscribed)
        }
        exact = {n for n in subscribed if "*" not in n}
        types = sorted(covered | exact | {TEST_EVENT} | ({event_type} - {""}))
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
            count=page.count,
            count_capped=page.count_capped,
            newest_url=link() if (before or after) else None,
            newer_url=link(after=page.newer) if page.newer else None,
            older_url=link(before=page.older) if page.older else None,
            status_choices=status_choices,
            type_choices=type_choices,
            filtered=bool(filters),
            event=event,
            clear_event_url=filter_link("event", ""),
            return_query=request.GET.urlencode(),
        )
        return TemplateResponse(request, "webhooks_app/admin/endpoint/history.html", context)

    def delivery_view(self, request: HttpRequest, object_id: str, delivery_id: int) -> HttpResponse:
        obj = self._get_endpoint(request, object_id, change=False)
        delivery = queries.delivery_detail(queries.deliveries(endpoint=obj), delivery_id)
        if delivery is None:
            raise Http404(_("No delivery with this id."))
        payload = queries.payload_text(delivery)
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

    def recover_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """GET: the window form; POST: ``services.recover`` every failed delivery in it."""
        obj = self._get_endpoint(request, object_id, change=True)
        initial = {"since": timezone.localtime() - timedelta(days=1)}
        form = RecoverForm(request.POST or None, initial=initial)
        if request.method == "POST" and form.is_valid():
            try:
                result = services.recover(
                    obj, since=form.cleaned_data["since"], until=form.cleaned_data["until"]
                )
            except ValidationError as exc:
                if hasattr(exc, "error_dict"):
                    for field, errors in exc.error_dict.items():
                        form.add_error(field if field in form.fields else None, errors)
                else:
                    form.add_error(None, exc)
            else:
                msg = _("%(n)d failed deliveries queued to be sent again.") % {"n": result.queued}
                self.log_change(request, obj, str(msg))
                self.message_user(request, msg, messages.SUCCESS)
                url = reverse("admin:webhooks_app_endpoint_history", args=[obj.pk])
                return HttpResponseRedirect(f"{url}?status=pending")
        failed = queries.deliveries(endpoint=obj).filter(status=Delivery.Status.FAILED)
        count, capped = queries.capped_count(failed)
        context = self._context(
            request,
            obj,
            _("Recover failed deliveries"),
            form=form,
            failed_count=count,
            failed_capped=capped,
        )
        return TemplateResponse(request, "webhooks_app/admin/endpoint/recover.html", context)
