"""Forms and widgets of the webhooks admin: validation is delegated to the services."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.utils.translation import gettext_lazy as _

from .. import events, formats, matching, services
from ..conf import app_settings
from ..models import Endpoint

# The endpoint fields a form hands to create_endpoint / update_endpoint.
SERVICE_FIELDS = services.UPDATABLE


def subscribable_event_types() -> dict[str, dict[str, Any]]:
    """Every type offered for new subscriptions: not the built-in test, not deprecated."""
    return events.subscribable_event_types()


def grouped_event_types(
    subscribed: Iterable[str] = (),
) -> list[tuple[str, list[tuple[str, str, bool]]]]:
    """[(group, [(name, description, deprecated), ...]), ...] by the catalogue's group.

    Deprecated types are listed only where already ``subscribed`` (they keep working)."""
    keep = set(subscribed)
    groups: dict[str, list[tuple[str, str, bool]]] = {}
    for name, info in sorted(events.event_types().items()):
        if name == events.TEST_EVENT or (info["deprecated"] and name not in keep):
            continue
        groups.setdefault(info["group"], []).append(
            (name, info["description"], info["deprecated"])
        )
    return sorted(groups.items())


def wildcard_choices(subscribed: Iterable[str] = ()) -> list[tuple[str, str]]:
    """``*`` and ``<prefix>.*`` for every prefix of a declared type, plus any other
    pattern already subscribed."""
    prefixes: set[str] = set()
    for name in subscribable_event_types():
        parts = name.split(".")
        prefixes.update(".".join(parts[:i]) for i in range(1, len(parts)))
    rows = [(matching.WILDCARD, str(_("Every event type, including ones added later")))]
    patterns = sorted({f"{p}.*" for p in prefixes} | {n for n in subscribed if "*" in n})
    for pattern in patterns:
        if pattern != matching.WILDCARD:
            rows.append(
                (pattern, str(_("Every %(prefix)s event") % {"prefix": pattern[:-1]}))
            )
    return rows


class EventsWidget(forms.Widget):
    """Grouped checkboxes: one to subscribe, one to enable, per event type or wildcard.

    The value is ``{type: enabled}``. The "enabled" box of a type not yet subscribed is
    pre-ticked, so ticking "subscribe" alone subscribes it enabled; a hidden marker
    tells "all toggles off" apart from a client that sends no toggles at all.
    """

    template_name = "webhooks_app/admin/widgets/events.html"

    def value_from_datadict(self, data, files, name):
        if not hasattr(data, "getlist"):
            return data.get(name)
        chosen = [v for v in data.getlist(name) if v]
        if f"{name}_toggles" in data:
            enabled = set(data.getlist(f"{name}_enabled"))
            return {n: n in enabled for n in chosen}
        return {n: True for n in chosen}

    def value_omitted_from_data(self, data, files, name):
        return False

    def get_context(self, name, value, attrs):
        context = super().get_context(name, value, attrs)
        value = value if isinstance(value, Mapping) else {}

        def row(n: str, d: str, deprecated: bool = False) -> dict[str, Any]:
            return {
                "name": n,
                "description": d,
                "deprecated": deprecated,
                "subscribed": n in value,
                "enabled": bool(value.get(n, True)),
            }

        groups = [
            {"prefix": group, "rows": [row(*t) for t in types]}
            for group, types in grouped_event_types(value)
        ]
        context["widget"]["groups"] = groups
        context["widget"]["wildcards"] = [row(n, d) for n, d in wildcard_choices(value)]
        return context


class EventsField(forms.Field):
    widget = EventsWidget
    default_error_messages = {"required": _("Select at least one event.")}

    def to_python(self, value: Any) -> dict[str, bool]:
        if not value:
            return {}
        if not isinstance(value, Mapping):
            raise ValidationError(_("Give a list of event types."), code="invalid")
        return {str(k): bool(v) for k, v in value.items()}


def _parses_as_json(text: str) -> bool:
    try:
        json.loads(text)
    except (ValueError, RecursionError):  # nested too deep to parse: it stays text
        return False
    return True


class BoundedJSONField(forms.JSONField):
    """Django's JSONField, but JSON nested too deep for the parser is a field error, not
    a RecursionError (a 500) in to_python() or when the form is shown again."""

    default_error_messages = {"too_deep": _("This JSON is nested too deeply.")}

    def to_python(self, value: Any) -> Any:
        try:
            return super().to_python(value)
        except RecursionError:
            raise ValidationError(self.error_messages["too_deep"], code="too_deep") from None

    def bound_data(self, data: Any, initial: Any) -> Any:
        try:
            return super().bound_data(data, initial)
        except RecursionError:
            return forms.fields.InvalidJSONInput(data)


NAME_LABEL = _("Name")  # the key column's default heading


class KeyValueWidget(forms.Widget):
    """Rows of name/value inputs (``<name>_key`` / ``<name>_value``) plus blank ones."""

    template_name = "webhooks_app/admin/widgets/key_value.html"

    def __init__(self, attrs=None, *, key_label: Any = NAME_LABEL, json_values: bool = False):
        super().__init__(attrs)
        self.key_label = key_label
        self.json_values = json_values

    def value_from_datadict(self, data, files, name):
        if not hasattr(data, "getlist"):
            return data.get(name)
        keys, values = data.getlist(f"{name}_key"), data.getlist(f"{name}_value")
        values += [""] * (len(keys) - len(values))
        return [(k, v) for k, v in zip(keys, values, strict=False) if k.strip() or v.strip()]

    def value_omitted_from_data(self, data, files, name):
        return False

    def _display(self, value: Any) -> str:
        if isinstance(value, str) and not (self.json_values and _parses_as_json(value)):
            return value
        return json.dumps(value)

    def get_context(self, name, value, attrs):
        context = super().get_context(name, value, attrs)
        if isinstance(value, Mapping):
            rows = [(k, self._display(v)) for k, v in value.items()]
        else:
            rows = [(k, v) for k, v in (value or [])]
        context["widget"]["rows"] = rows + [("", "")] * (1 if rows else 2)
        context["widget"]["key_label"] = self.key_label
        return context


class KeyValueField(forms.Field):
    """Name/value rows -> dict; with ``json_values`` a value that parses as JSON is JSON."""

    def __init__(self, *, json_values: bool = False, key_label: Any = NAME_LABEL, **kwargs):
        self.json_values = json_values
        kwargs.setdefault("widget", KeyValueWidget(key_label=key_label, json_values=json_values))
        kwargs.setdefault("required", False)
        super().__init__(**kwargs)

    def to_python(self, value: Any) -> dict[str, Any]:
        if not value:
            return {}
        if isinstance(value, Mapping):
            return dict(value)
        out: dict[str, Any] = {}
        for key, raw in value:
            key = key.strip()
            if not key:
                raise ValidationError(_("Every value needs a name."), code="invalid")
            if key in out:
                raise ValidationError(
                    _("%(key)s is given twice."), code="invalid", params={"key": key}
                )
            if self.json_values and _parses_as_json(raw):
                out[key] = json.loads(raw)
            else:
                out[key] = raw
        return out


class PayloadFieldsField(forms.CharField):
    """Comma- or newline-separated keys -> list."""

    def __init__(self, **kwargs):
        kwargs.setdefault("required", False)
        kwargs.setdefault("widget", forms.Textarea(attrs={"rows": 2, "cols": 60}))
        super().__init__(**kwargs)

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return ", ".join(value)
        return value

    def to_python(self, value: Any) -> list[str]:
        if isinstance(value, list | tuple):
            return [str(v) for v in value]
        text = super().to_python(value)
        return [p.strip() for p in re.split(r"[,\n]", text or "") if p.strip()]


class EndpointChangeForm(forms.ModelForm):
    """Edit an endpoint; every rule lives in ``services.clean_endpoint_fields``."""

    events = EventsField(
        label=_("Events"),
        help_text=_(
            "Tick the events this endpoint receives. Untick “enabled” to pause one event "
            "without losing the subscription."
        ),
    )
    headers = KeyValueField(
        label=_("Custom headers"),
        key_label=_("Header"),
        help_text=_(
            "Sent with every request. Signature, content and connection headers are "
            "reserved. Values are stored encrypted and shown masked; leave a masked value "
            "as it is to keep it."
        ),
    )
    payload_extra = KeyValueField(
        label=_("Custom payload values"),
        key_label=_("Key"),
        json_values=True,
        help_text=_(
            "Added at the top level of every payload. A value that parses as JSON "
            "(123, true, {…}) is sent as JSON, anything else as text."
        ),
    )
    payload_fields = PayloadFieldsField(
        label=_("Payload fields"),
        help_text=_(
            "Keys of the event data to send, separated by commas (dotted for nested keys, "
            "e.g. customer.email), at most %(n)s. Empty: send all data."
        ),
    )

    payload_format = forms.ChoiceField(
        label=_("Payload format"),
        required=False,
        help_text=_(
            "The shape of the JSON sent. Standard: id, event, timestamp, version, tenant "
            "and data. Flat: the data's fields beside event. Type: type, Unix timestamp, "
            "tenant and data. CloudEvents: CloudEvents 1.0 structured JSON."
        ),
    )
    payload_filter = BoundedJSONField(
        label=_("Payload filter"),
        required=False,
        widget=forms.Textarea(attrs={"rows": 4, "cols": 60, "class": "wh-code"}),
        help_text=_(
            'Only events matching this JSON filter are sent, e.g. {"data.amount": '
            '{"$gte": 100}, "data.plan": {"$in": ["pro", "team"]}}. Paths start with data, '
            "event or tenant; operators: $eq $neq $gt $gte $lt $lte $in $nin $exists, and "
            "$or / $and with a list of filters; a plain value means $eq. Empty: every event."
        ),
    )

    class Meta:
        model = Endpoint
        fields = [
            "name",
            "description",
            "url",
            "method",
            "is_active",
            "notify_email",
            "headers",
            "payload_extra",
            "payload_fields",
            "payload_filter",
            "payload_format",
            "rate_limit",
            "ordered",
        ]
        widgets = {
            "url": forms.URLInput(attrs={"class": "vURLField", "placeholder": "https://"}),
            "description": forms.Textarea(attrs={"rows": 2, "cols": 60}),
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            # Header values are credentials: the form shows them masked, and a value left
            # masked keeps its stored value (services.update_endpoint).
            self.initial["headers"] = self.instance.masked_headers()
        if self.instance.pk and "events" not in self.initial:
            self.initial["events"] = {
                s.event_type: s.enabled for s in self.instance.subscriptions.all()
            }
        if "payload_format" in self.fields:
            # Read per form: sites register formats in code, after this module loads.
            self.fields["payload_format"].choices = [
                ("", _("Site default (%(name)s)") % {"name": formats.default_name()}),
                *formats.choices(),
            ]
        if "payload_fields" in self.fields:
            field = self.fields["payload_fields"]
            field.help_text = field.help_text % {"n": app_settings.MAX_PAYLOAD_FIELDS}
        if "url" in self.fields:  # absent when the admin shows the form read-only
            self.fields["url"].help_text = _(
                "The address that receives the webhooks (https required unless the site "
                "allows http; private network addresses are refused)."
            )

    def service_values(self) -> dict[str, Any]:
        return {k: self.cleaned_data[k] for k in SERVICE_FIELDS if k in self.cleaned_data}

    def _post_clean(self) -> None:
        # The ModelForm copies cleaned values onto the instance; header values must stay
        # as stored (encrypted) until services resolves masked values and encrypts.
        stored = self.instance.headers
        super()._post_clean()
        self.instance.headers = stored

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        try:
            services.clean_endpoint_fields(
                self.service_values(), instance=self.instance if self.instance.pk else None
            )
        except ValidationError as exc:
            self._add_service_errors(exc)
        return cleaned

    def _add_service_errors(self, exc: ValidationError) -> None:
        if not hasattr(exc, "error_dict"):
            self.add_error(None, exc)
            return
        for field, errors in exc.error_dict.items():
            self.add_error(field if field in self.fields else None, errors)


class EndpointAddForm(EndpointChangeForm):
    """Create an endpoint: also the tenant and an optional secret of one's own."""

    secret = forms.CharField(
        label=_("Secret"),
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text=_(
            "Leave blank to generate a secure secret (recommended). Your own must be at "
            "least 32 characters. It is shown once after saving and never again."
        ),
    )

    class Meta(EndpointChangeForm.Meta):
        fields = ["tenant", *EndpointChangeForm.Meta.fields]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        tenant = cleaned.get("tenant") or ""
        try:
            services.check_endpoint_limit(tenant)
        except ValidationError as exc:
            self.add_error(None, exc)
        return cleaned

    def clean_secret(self) -> str:
        secret = self.cleaned_data.get("secret") or ""
        if secret:
            services.validate_secret(secret)
        return secret


class RotateSecretForm(forms.Form):
    GRACE_CHOICES = [
        ("0", _("None: the old secret stops working now")),
        ("3600", _("1 hour")),
        ("86400", _("24 hours")),
        ("604800", _("7 days")),
    ]
    grace = forms.TypedChoiceField(
        label=_("Grace period"),
        choices=GRACE_CHOICES,
        coerce=int,
        initial="0",
        help_text=_(
            "During a grace period every request carries signatures made with both the "
            "old and the new secret, so receivers can switch without dropping webhooks."
        ),
    )


class RecoverForm(forms.Form):
    """Bulk recovery: the window of failed deliveries to send again."""

    since = forms.DateTimeField(
        label=_("Failed since"),
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
        input_formats=["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d"],
        help_text=_("Deliveries created at or after this time (server time zone)."),
    )
    until = forms.DateTimeField(
        label=_("Until"),
        required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
        input_formats=["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d"],
        help_text=_("Leave empty for up to now."),
    )
