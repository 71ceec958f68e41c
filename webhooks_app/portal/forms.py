"""Portal forms: the admin's endpoint forms without the tenant (the portal sets it).

They inherit the admin form's fields and widgets, so an option added there (and to
``services.UPDATABLE``) shows up here too; every rule stays in ``services``.
"""

from __future__ import annotations

from django import forms
from django.core.exceptions import ValidationError
from django.utils.translation import gettext_lazy as _

from .. import services
from ..admin.forms import EndpointAddForm, EndpointChangeForm, RotateSecretForm

# Shown first; every other field of the form goes under "More options".
MAIN_FIELDS = ("name", "url", "events", "secret", "is_active")

__all__ = ["PortalCreateForm", "PortalEditForm", "RotateSecretForm", "DeleteForm"]


class _PortalFields:
    def main_fields(self) -> list:
        return [self[n] for n in MAIN_FIELDS if n in self.fields]  # type: ignore[attr-defined]

    def more_fields(self) -> list:
        return [self[n] for n in self.fields if n not in MAIN_FIELDS]  # type: ignore[attr-defined]


class PortalCreateForm(_PortalFields, EndpointAddForm):
    class Meta(EndpointAddForm.Meta):
        fields = [f for f in EndpointAddForm.Meta.fields if f != "tenant"]

    def __init__(self, *args, tenant: str = "", **kwargs):
        self.tenant = tenant  # the portal's tenant: the form has no tenant field
        super().__init__(*args, **kwargs)
        self.fields["url"].widget.attrs["placeholder"] = "https://"
        self.fields["is_active"].initial = True
        self.fields["secret"].help_text = _(
            "Leave blank to generate a secure secret (recommended), or enter your own of "
            "at least 32 characters. It is shown once after saving."
        )


    def clean(self) -> dict:
        # The admin form checks the limit of the tenant field it has; this one has none,
        # so its check would count the default tenant "" instead of the portal's.
        cleaned = super(EndpointAddForm, self).clean()
        try:
            services.check_endpoint_limit(self.tenant)
        except ValidationError as exc:
            self.add_error(None, exc)
        return cleaned


class PortalEditForm(_PortalFields, EndpointChangeForm):
    class Meta(EndpointChangeForm.Meta):
        fields = [f for f in EndpointChangeForm.Meta.fields if f != "tenant"]


class DeleteForm(forms.Form):
    """Nothing to fill in: the POST itself (with its CSRF token) is the confirmation."""
