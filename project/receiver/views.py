"""Receives webhooks like a customer's server would, and lists them with their check."""

from django.db import transaction
from django.db.models import F
from django.http import HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.csrf import csrf_exempt

from webhooks_app.signing import WebhookVerificationError, verify

from .models import Inbox, ReceivedWebhook


@csrf_exempt
def receive(request, slug):
    inbox = get_object_or_404(Inbox, slug=slug)
    raw = (
        request.body if request.method == "POST" else request.META.get("QUERY_STRING", "").encode()
    )
    headers = {k: v for k, v in request.headers.items() if k.lower() != "cookie"}
    try:
        verify(inbox.secret, raw, headers)
        verified, error = True, ""
    except WebhookVerificationError as exc:
        verified, error = False, str(exc)
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
