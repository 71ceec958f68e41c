"""Portal pages: parse input, check tenant and permission, call services, read via queries.

Every view runs behind :func:`portal_view` (login or magic-link session, the feature
gate, ``PORTAL_PERMISSION``, CSRF on POST) and looks endpoints up among its tenant's
only, so another tenant's ids answer 404 exactly like ids that never existed. The
one-time secret page is rendered in the response to the POST that made the secret and
kept nowhere else (no session, no message), with ``Cache-Control: no-store``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import wraps
from types import SimpleNamespace
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.utils.http import urlencode
from django.utils.translation import gettext as _
from django.views.decorators.csrf import csrf_protect
from django.views.decorators.debug import sensitive_post_parameters, sensitive_variables
from django.views.decorators.http import require_POST

from .. import events, queries, services, signing
from ..conf import app_settings
from ..models import Delivery, Endpoint
from . import magic
from .access import Access, end_magic_session, portal_access, start_magic_session
from .forms import DeleteForm, PortalCreateForm, PortalEditForm, RotateSecretForm

LIST_PAGE_SIZE = 50
STATUS_CSS = {"succeeded": "wh-ok", "failed": "wh-fail", "pending": "wh-pending"}


def _render(request: HttpRequest, template: str, context: dict, status: int = 200) -> HttpResponse:
    access: Access | None = getattr(request, "webhooks_portal", None)
    context = {
        "base_template": app_settings.PORTAL_BASE_TEMPLATE,
        "portal_access": access,
        "status_css": STATUS_CSS,
        **context,
    }
    return render(request, f"webhooks_app/portal/{template}", context, status=status)


def _refused(request: HttpRequest, message: str, status: int = 403) -> HttpResponse:
    return _render(request, "refused.html", {"message": message, "title": _("Webhooks")}, status)


def _message(request: HttpRequest, level: int, text: str) -> None:
    messages.add_message(request, level, text, fail_silently=True)


def frame_guarded(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Pages with secrets and Delete buttons are never framed by another site, even where
    the site lacks XFrameOptionsMiddleware (its X_FRAME_OPTIONS value, DENY by default)."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        response = view(request, *args, **kwargs)
        if "X-Frame-Options" not in response:
            response["X-Frame-Options"] = getattr(settings, "X_FRAME_OPTIONS", "DENY").upper()
        return response

    return wrapped


def portal_view(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Resolve the tenant, apply the gate and permission, then call ``view(request,
    tenant, ...)``."""

    @wraps(view)
    @frame_guarded
    @csrf_protect
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        access = portal_access(request)
        if access.login_required:
            return redirect_to_login(request.get_full_path())
        if access.refusal:
            return _refused(request, access.refusal)
        request.webhooks_portal = access  # type: ignore[attr-defined]
        return view(request, access.tenant, *args, **kwargs)

    return wrapped


def _throttled(request: HttpRequest, tenant: str, scope: str) -> HttpResponse | None:
    """The API's per-tenant limit on tests and replays, shared with the API (one budget
    per tenant, whichever front end sends); a 429 page beyond it."""
    try:
        from ..api.throttling import WebhooksActionThrottle
    except ImportError:  # no API extra (DRF) installed: the portal runs without it
        return None

    class PortalThrottle(WebhooksActionThrottle):
        def tenant(self, request: Any) -> str | None:
            return tenant

    throttle = PortalThrottle()
    if throttle.allow_request(request, SimpleNamespace(throttle_scope=scope)):
        return None
    wait = throttle.wait()
    message = _("Too many requests; try again in %(s)d seconds.") % {"s": int(wait or 1) + 1}
    return _refused(request, message, status=429)


def _endpoint(tenant: str, pk: int) -> Endpoint:
    endpoint = queries.endpoints(tenant).filter(pk=pk).first()
    if endpoint is None:
        raise Http404(_("No webhook with this id."))
    return endpoint


def _delivery(endpoint: Endpoint, delivery_id: int) -> Delivery:
    delivery = queries.delivery_detail(queries.deliveries(endpoint=endpoint), delivery_id)
    if delivery is None:
        raise Http404(_("No delivery with this id."))
    return delivery


def _service_errors(form: Any, exc: ValidationError) -> None:
    if not hasattr(exc, "error_dict"):
        form.add_error(None, exc)
        return
    for field, errors in exc.error_dict.items():
        form.add_error(field if field in form.fields else None, errors)


def signature_headers() -> list[str]:
    """The signature header names this site sends (from SIGNATURE_SCHEMES)."""
    sample = signing.sign_headers(
        ["x" * signing.MIN_SECRET_LENGTH],
        msg_id="msg",
        body=b"",
        schemes=app_settings.SIGNATURE_SCHEMES,
    )
    return list(sample)


def verify_context() -> dict[str, Any]:
    headers = signature_headers()
    lower = {h.lower() for h in headers}
    return {
        "standard": "webhook-signature" in lower,
        "legacy": "x-webhook-signature" in lower,
        "headers": headers,
        "tolerance": signing.DEFAULT_TOLERANCE,
    }


@sensitive_variables("secret")
def _secret_page(
    request: HttpRequest, endpoint: Endpoint, secret: str, *, created: bool
) -> HttpResponse:
    context = {
        "endpoint": endpoint,
        "secret": secret,
        "created": created,
        "title": _("Webhook secret"),
        **verify_context(),
    }
    response = _render(request, "secret.html", context)
    # Never cached by the browser or a proxy: the page holds the only copy.
    response["Cache-Control"] = "no-store, private"
    response["Pragma"] = "no-cache"
    return response


# Pages -----------------------------------------------------------------------------------
@portal_view
def endpoint_list(request: HttpRequest, tenant: str) -> HttpResponse:
    # NUL cannot be stored or searched in PostgreSQL text; it is never in a name or URL.
    search = request.GET.get("q", "").replace("\x00", "").strip()[:200]
    show = request.GET.get("status", "")
    is_active = {"active": True, "inactive": False}.get(show)
    if is_active is None:
        show = ""
    qs = queries.filter_endpoints(queries.endpoints(tenant), search=search, is_active=is_active)
    qs = queries.with_list_columns(qs, last_delivery_at=True).order_by("-id")
    page = Paginator(qs, LIST_PAGE_SIZE).get_page(request.GET.get("page"))

    def link(**params: str) -> str:
        merged = {k: v for k, v in {"q": search, "status": show, **params}.items() if v}
        return "?" + urlencode(merged) if merged else "?"

    tabs = [
        {"label": _("All"), "url": link(status=""), "selected": not show},
        {"label": _("Active"), "url": link(status="active"), "selected": show == "active"},
        {"label": _("Inactive"), "url": link(status="inactive"), "selected": show == "inactive"},
    ]
    context = {
        "title": _("Webhooks"),
        "stats": queries.stats(tenant),
        "page": page,
        "search": search,
        "show": show,
        "tabs": tabs,
        "previous_url": link(page=str(page.previous_page_number()))
        if page.has_previous()
        else None,
        "next_url": link(page=str(page.next_page_number())) if page.has_next() else None,
    }
    return _render(request, "list.html", context)


@sensitive_post_parameters("secret", "headers_value")
@portal_view
@sensitive_variables("secret")
def endpoint_create(request: HttpRequest, tenant: str) -> HttpResponse:
    user = getattr(request, "user", None)
    initial = {"notify_email": getattr(user, "email", "") or ""}
    form = PortalCreateForm(request.POST or None, initial=initial, tenant=tenant)
    if request.method == "POST" and form.is_valid():
        try:
            endpoint, secret = services.create_endpoint(
                tenant=tenant,
                secret=form.cleaned_data.get("secret") or None,
                **form.service_values(),
            )
        except ValidationError as exc:
            _service_errors(form, exc)
        else:
            _message(request, messages.SUCCESS, _("The webhook was created."))
            return _secret_page(request, endpoint, secret, created=True)
    return _render(request, "form.html", {"form": form, "title": _("Create webhook")})


@sensitive_post_parameters("headers_value")
@portal_view
def endpoint_edit(request: HttpRequest, tenant: str, pk: int) -> HttpResponse:
    endpoint = _endpoint(tenant, pk)
    form = PortalEditForm(request.POST or None, instance=endpoint)
    if request.method == "POST" and form.is_valid():
        try:
            services.update_endpoint(_endpoint(tenant, pk), **form.service_values())
        except ValidationError as exc:
            _service_errors(form, exc)
        else:
            _message(request, messages.SUCCESS, _("The webhook was saved."))
            return HttpResponseRedirect(reverse("webhooks_portal:list"))
    context = {"form": form, "endpoint": endpoint, "title": _("Edit webhook")}
    return _render(request, "form.html", context)


@portal_view
def endpoint_test(request: HttpRequest, tenant: str, pk: int) -> HttpResponse:
    endpoint = _endpoint(tenant, pk)
    if request.method == "POST":
        throttled = _throttled(request, tenant, "test")
        if throttled:
            return throttled
        result = services.send_test(endpoint)
        url = reverse("webhooks_portal:test", args=[endpoint.pk])
        return HttpResponseRedirect(f"{url}?{urlencode({'result': result.delivery.pk})}")
    result = queries.test_result(endpoint, request.GET.get("result"))
    context = {
        "endpoint": endpoint,
        "result": result,
        "attempt": result.attempt_log.all().last() if result else None,
        "example": json.dumps(events.event_types()[events.TEST_EVENT]["example"], indent=2),
        "title": _("Test webhook"),
    }
    return _render(request, "test.html", context)


@portal_view
@sensitive_variables("secret")
def endpoint_rotate(request: HttpRequest, tenant: str, pk: int) -> HttpResponse:
    endpoint = _endpoint(tenant, pk)
    form = RotateSecretForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            secret = services.rotate_secret(endpoint, grace=form.cleaned_data["grace"] or None)
        except ValidationError as exc:
            form.add_error("grace" if hasattr(exc, "error_dict") else None, exc)
        else:
            _message(request, messages.SUCCESS, _("The secret was rotated."))
            return _secret_page(request, endpoint, secret, created=False)
    context = {"endpoint": endpoint, "form": form, "title": _("Rotate secret")}
    return _render(request, "rotate.html", context)


@portal_view
def endpoint_delete(request: HttpRequest, tenant: str, pk: int) -> HttpResponse:
    endpoint = _endpoint(tenant, pk)
    if request.method == "POST" and DeleteForm(request.POST).is_valid():
        services.delete_endpoint(endpoint)
        _message(request, messages.SUCCESS, _("The webhook was deleted."))
        return HttpResponseRedirect(reverse("webhooks_portal:list"))
    deliveries = queries.capped_count(queries.deliveries(endpoint=endpoint))
    context = {"endpoint": endpoint, "deliveries": deliveries, "title": _("Delete webhook")}
    return _render(request, "delete.html", context)


@portal_view
def endpoint_history(request: HttpRequest, tenant: str, pk: int) -> HttpResponse:
    endpoint = _endpoint(tenant, pk)
    status = request.GET.get("status", "")
    if status not in Delivery.Status.values:
        status = ""
    qs = queries.filter_deliveries(queries.deliveries(endpoint=endpoint), status=status)
    before, after = request.GET.get("before", ""), request.GET.get("after", "")
    page = queries.history_page(qs, before=before, after=after)

    def link(**params: Any) -> str:
        merged = {k: v for k, v in {"status": status, **params}.items() if v}
        return "?" + urlencode(merged) if merged else "?"

    tabs = [{"label": _("All"), "url": link(status=""), "selected": not status}] + [
        {"label": label, "url": link(status=value), "selected": status == value}
        for value, label in Delivery.Status.choices
    ]
    context = {
        "endpoint": endpoint,
        "page": page,
        "tabs": tabs,
        "status": status,
        "newest_url": link() if not page.first else None,
        "newer_url": link(after=page.newer) if page.newer else None,
        "older_url": link(before=page.older) if page.older else None,
        "title": _("Delivery history"),
    }
    return _render(request, "history.html", context)


@portal_view
def delivery_detail(request: HttpRequest, tenant: str, pk: int, delivery_id: int) -> HttpResponse:
    endpoint = _endpoint(tenant, pk)
    delivery = _delivery(endpoint, delivery_id)
    context = {
        "endpoint": endpoint,
        "delivery": delivery,
        "attempts": list(delivery.attempt_log.all()),
        "payload": queries.payload_text(delivery),
        "can_replay": delivery.status != Delivery.Status.PENDING,
        "title": _("Delivery %(id)s") % {"id": delivery.pk},
    }
    return _render(request, "delivery.html", context)


@require_POST
@portal_view
def delivery_replay(request: HttpRequest, tenant: str, pk: int, delivery_id: int) -> HttpResponse:
    endpoint = _endpoint(tenant, pk)
    delivery = _delivery(endpoint, delivery_id)
    throttled = _throttled(request, tenant, "replay")
    if throttled:
        return throttled
    try:
        services.replay(delivery)
    except ValidationError as exc:
        _message(request, messages.ERROR, " ".join(exc.messages))
    else:
        _message(
            request,
            messages.SUCCESS,
            _("Delivery %(id)s was queued to be sent again.") % {"id": delivery.pk},
        )
    return HttpResponseRedirect(
        reverse("webhooks_portal:delivery", args=[endpoint.pk, delivery.pk])
    )


@portal_view
def verify(request: HttpRequest, tenant: str) -> HttpResponse:
    return _render(request, "verify.html", {"title": _("Verify your webhooks"), **verify_context()})


@require_POST
@frame_guarded
@csrf_protect
def end_session(request: HttpRequest) -> HttpResponse:
    """End a magic-link session (a logged-in user's own login is left alone)."""
    end_magic_session(request)
    return _refused(request, _("You have left the webhooks portal."), status=200)


@frame_guarded
@csrf_protect
def magic_open(request: HttpRequest, token: str) -> HttpResponse:
    """GET: check the link and offer a button (so link scanners that prefetch URLs do not
    use it up); POST: use it once, open a session for its tenant, go to the portal."""
    try:
        payload = magic.redeem(token) if request.method == "POST" else magic.read_token(token)
    except magic.InvalidLink as exc:
        return _refused(request, str(exc))
    if request.method != "POST":
        response = _render(request, "magic.html", {"title": _("Open the webhooks portal")})
        # The URL holds the token: not kept by caches, not sent on to other sites
        # ("same-origin", not "no-referrer": that makes the form POST send Origin: null,
        # which the CSRF check refuses).
        response["Cache-Control"] = "no-store, private"
        response["Referrer-Policy"] = "same-origin"
        return response
    start_magic_session(request, payload["t"])
    target = payload.get("x") or reverse("webhooks_portal:list")
    if not magic.is_portal_path(target):
        target = reverse("webhooks_portal:list")
    return HttpResponseRedirect(target)
