"""Receives webhooks like a customer's server would, and lists them with their check."""

from urllib.parse import urlsplit

from django.db import transaction
from django.db.models import F
from django.http import HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.csrf import csrf_exempt

from webhooks_app.signing import WebhookVerificationError, verify

from .models import Inbox, ReceivedWebhook


def candidate_secrets(request, inbox: Inbox) -> list[str]:
    """The secrets a delivery to this inbox may be signed with.

    Demo only: the demo site plays both the sender and the customer, so besides the
    inbox's own secret (the seeded endpoint's) it may look up the secrets of every
    webhooks_app endpoint whose URL points at this inbox — including those a newcomer
    creates in the admin, the API or the portal. A real receiver knows its one secret.
    Each is still checked by signing.verify(): nothing is taken on trust.
    """
    from webhooks_app.models import Endpoint

    found = [inbox.secret] if inbox.secret else []
    for endpoint in Endpoint.objects.filter(url__contains=f"/receiver/{inbox.slug}/"):
        if urlsplit(endpoint.url).path.rstrip("/") != request.path.rstrip("/"):
            continue
        try:
            found.extend(endpoint.signing_secrets())
        except Exception:  # a secret that no longer decrypts: it cannot verify anything
            continue
    return list(dict.fromkeys(found))


def check_signature(raw: bytes, headers: dict, secrets: list[str]) -> tuple[bool, str]:
    if not secrets:
        return False, "no secret known for this inbox"
    error = ""
    for secret in secrets:
        try:
            verify(secret, raw, headers)
            return True, ""
        except WebhookVerificationError as exc:
            error = str(exc)
    return False, error


@csrf_exempt
def receive(request, slug):
    # Any /receiver/<slug>/ works: an endpoint a newcomer points anywhere here gets an inbox.
    inbox, _ = Inbox.objects.get_or_create(slug=slug)
    raw = (
        request.body if request.method == "POST" else request.META.get("QUERY_STRING", "").encode()
    )
    headers = {k: v for k, v in request.headers.items() if k.lower() != "cookie"}
    verified, error = check_signature(raw, headers, candidate_secrets(request, inbox))
    with transaction.atomic():
        answered = inbox.status_code
        if inbox.fail_first:
            Inbox.objects.filter(pk=inbox.pk).update(fail_first=F("fail_first") - 1)
            answered = 500
        ReceivedWebhook.objects.create(
            inbox=inbox,
            method=request.method,
            headers=headers,
            body=raw.decode("utf-8", "replace"),
            event_type=headers.get("X-Webhook-Event", ""),
            webhook_id=headers.get("Webhook-Id", ""),
            verified=verified,
            verification_error=error,
            answered=answered,
        )
    if answered >= 300:
        return HttpResponse(f"demo receiver answering {answered}", status=answered)
    return JsonResponse({"received": True, "verified": verified})


def inbox_list(request):
    received = ReceivedWebhook.objects.select_related("inbox")[:100]
    return render(
        request, "receiver/list.html", {"received": received, "inboxes": Inbox.objects.all()}
    )
