"""Bodies receivers can verify: jsonenc writes what JSON.stringify(JSON.parse(body)) gives
back, checked by real Node.js; emit() takes what Django sites hold and refuses the rest
before any SQL runs."""

from __future__ import annotations

import datetime as dt
import json
import math
import random
import struct
import uuid
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils.translation import gettext_lazy

from tests import nodejs
from webhooks_app import emit, jsonenc
from webhooks_app.conf import app_settings
from webhooks_app.models import Delivery, Event

# (payload, the exact text JSON.stringify writes for it)
AWKWARD = [
    ({"amount": 10.0}, '{"amount":10}'),
    ({"z": -0.0}, '{"z":0}'),
    ({"big": 1e21, "small": 1e-7}, '{"big":1e+21,"small":1e-7}'),
    ({"n": 1e16}, '{"n":10000000000000000}'),
    ({"n": 2.0**60}, '{"n":1152921504606847000}'),
    ({"n": 123e-20, "m": 0.000001, "k": 1e-6 / 10}, '{"n":1.23e-18,"m":0.000001,"k":1e-7}'),
    ({"f": 0.1 + 0.2, "t": 5e-324}, '{"f":0.30000000000000004,"t":5e-324}'),
    ({"max": 1.7976931348623157e308}, '{"max":1.7976931348623157e+308}'),
    ({"safe": 2**53 - 1, "neg": -(2**53 - 1)}, '{"safe":9007199254740991,"neg":-9007199254740991}'),
    ({"b": 1, "10": 2, "2": 3, "a": 4}, '{"2":3,"10":2,"b":1,"a":4}'),
    (
        {"x": 1, "4294967295": 2, "4294967294": 3, "01": 4, "-1": 5, "0": 6},
        '{"0":6,"4294967294":3,"x":1,"4294967295":2,"01":4,"-1":5}',
    ),
    ({"nested": {"9": [1.0, {"1": 2.5, "0": "z"}]}}, '{"nested":{"9":[1,{"0":"z","1":2.5}]}}'),
    ({1: "int key", "b": True}, '{"1":"int key","b":true}'),
    ({"s": 'é€😀 "q" \\ \n\t\x07\x1f\x7f\u2028\u2029</script>'}, None),
    ({"empty": {}, "list": [], "none": None, "false": False}, None),
    ({"tuple": (1, 2.0, "3")}, '{"tuple":[1,2,"3"]}'),
]


def test_bodies_are_written_as_json_stringify_writes_them():
    for payload, expected in AWKWARD:
        text = jsonenc.dumps(payload)
        if expected is not None:
            assert text == expected, payload


def _random_floats(n: int) -> list[float]:
    rng = random.Random(9)
    out: list[float] = []
    while len(out) < n:
        f = struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0]
        if math.isfinite(f):
            out.append(f)
        out.append(rng.uniform(-1e6, 1e6) * 10 ** rng.randint(-30, 30))
        out.append(round(rng.uniform(-1e4, 1e4), rng.randint(0, 4)))
    return out


def test_node_gives_back_the_exact_bytes():
    """Real V8 parses and re-serialises every body: the texts must be identical."""
    nodejs.ensure_node_modules()
    rng = random.Random(3)
    texts = [jsonenc.dumps(p) for p, _ in AWKWARD]
    texts.append(jsonenc.dumps({"floats": _random_floats(3000)}))
    texts.append(jsonenc.dumps({str(rng.randint(0, 10**10)): i for i in range(300)}))
    alphabet = [chr(c) for c in [*range(1, 0x30), 0x7F, 0xE9, 0x2028, 0xFEFF, 0x1F600]]
    texts.append(jsonenc.dumps(["".join(rng.choices(alphabet, k=40)) for _ in range(200)]))
    assert nodejs.roundtrip(texts) == texts


@pytest.mark.parametrize(
    ("data", "path", "words"),
    [
        ({"x": float("nan")}, "data.x", "NaN"),
        ({"x": [1, float("inf")]}, "data.x[1]", "Infinity"),
        ({"x": -float("inf")}, "data.x", "Infinity"),
        ({"tags": {"a", "b"}}, "data.tags", "set"),
        ({"raw": b"\x00"}, "data.raw", "bytes"),
        ({"id": 2**53}, "data.id", "2**53"),
        ({"id": -(2**64)}, "data.id", "2**53"),
        ({"s": "a\ud800b"}, "data.s", "surrogate"),
        ({"\udfff": 1}, "data", "surrogate"),
        ({"s": "a\x00b"}, "data.s", "NUL"),
        ({"o": object()}, "data.o", "object"),
        ({"t": dt.time(1, 2, tzinfo=dt.UTC)}, "data.t", "timezone-aware"),
        ({(1, 2): "tuple key"}, "data", "key"),
        ({1: "a", "1": "b"}, "data", "twice"),
    ],
)
def test_what_json_cannot_carry_is_refused_with_its_path(data, path, words):
    with pytest.raises(ValidationError) as exc:
        jsonenc.normalise(data)
    (message,) = exc.value.messages
    assert message.startswith(f"{path}: ") and words in message, message


def test_circular_and_deep_structures_are_refused():
    loop: dict = {"a": []}
    loop["a"].append(loop)
    with pytest.raises(ValidationError, match=r"data\.a\[0\]: is a circular reference"):
        jsonenc.normalise(loop)
    deep: list = []
    inner = deep
    for _ in range(app_settings.MAX_PAYLOAD_DEPTH):
        inner.append([])
        inner = inner[0]
    with pytest.raises(ValidationError, match="nested deeper than 32 levels"):
        jsonenc.normalise(deep)
    assert jsonenc.normalise(deep[0]) == deep[0]  # exactly at the limit


def test_large_integers_as_strings_when_the_setting_says_so():
    with override_settings(WEBHOOKS_APP={"LARGE_INTEGERS": "string"}):
        assert jsonenc.dumps({"id": 2**64, "ok": 7}) == '{"id":"18446744073709551616","ok":7}'


def test_django_values_are_written_as_django_json_encoder_writes_them():
    when = dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)
    data = {
        "when": when,
        "day": dt.date(2026, 1, 2),
        "at": dt.time(3, 4, 5),
        "took": dt.timedelta(minutes=1, seconds=2),
        "amount": Decimal("10.00"),
        "id": uuid.UUID(int=255),
        "label": gettext_lazy("Hello"),
    }
    assert jsonenc.normalise(data) == {
        "when": "2026-01-02T03:04:05.678Z",
        "day": "2026-01-02",
        "at": "03:04:05",
        "took": "P0DT00H01M02S",
        "amount": "10.00",
        "id": "00000000-0000-0000-0000-0000000000ff",
        "label": "Hello",
    }


# emit() ------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_emit_takes_datetimes_and_stores_what_it_sends(make_endpoint):
    make_endpoint("http://127.0.0.1:9/hook")
    when = dt.datetime(2026, 5, 6, 7, 8, 9, 123456, tzinfo=dt.UTC)
    event = emit("user.created", {"when": when, "amount": Decimal("1.50"), "ratio": 2.0})
    event.refresh_from_db()
    sent = json.loads(event.body)["data"]
    assert sent == {"when": "2026-05-06T07:08:09.123Z", "amount": "1.50", "ratio": 2}
    assert event.data == sent
    assert '"ratio":2}' in event.body


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "data",
    [
        {"x": float("nan")},
        {"x": float("inf")},
        {"tags": {1, 2}},
        {"raw": b"bytes"},
        {"s": "\ud83d"},
        {"id": 2**70},
        {"big": "x" * (256 * 1024)},
    ],
    ids=["nan", "inf", "set", "bytes", "surrogate", "bigint", "too-large"],
)
def test_bad_data_is_refused_before_any_sql_and_the_transaction_goes_on(make_endpoint, data):
    make_endpoint("http://127.0.0.1:9/hook")
    User = get_user_model()
    with transaction.atomic():
        User.objects.create(username="before")
        with CaptureQueriesContext(connection) as queries, pytest.raises(ValidationError):
            emit("user.created", data)
        assert queries.captured_queries == []
        User.objects.create(username="after")  # the caller's transaction is still usable
        emit("user.created", {"ok": True})
    assert set(User.objects.values_list("username", flat=True)) == {"before", "after"}
    assert Event.objects.filter(event_type="user.created").count() == 1 + 2  # 2 user saves


@pytest.mark.django_db
def test_max_payload_bytes_is_configurable(make_endpoint):
    make_endpoint("http://127.0.0.1:9/hook")
    with override_settings(WEBHOOKS_APP={**_demo_settings(), "MAX_PAYLOAD_BYTES": 1000}):
        emit("user.created", {"s": "x" * 800})
        with pytest.raises(ValidationError, match="more than the 1000 bytes allowed"):
            emit("user.created", {"s": "x" * 1000})
        # an endpoint's own body (custom values) counts too
        make_endpoint("http://127.0.0.1:9/other", payload_extra={"pad": "y" * 500})
        with pytest.raises(ValidationError, match="one of the endpoints"):
            emit("user.created", {"s": "x" * 700})
    assert Delivery.objects.count() == 1


def _demo_settings() -> dict:
    from django.conf import settings

    return dict(settings.WEBHOOKS_APP)


# GET endpoints and method changes ----------------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_get_query_is_signed_exactly_as_it_goes_on_the_wire(receiver, make_endpoint):
    from webhooks_app import engine, signing

    # (A space in the URL itself is refused since, at save and at send: see transport.)
    _, secret = make_endpoint(receiver.url("/hook?pipe=a|b&name=Zoë&pct=%2f"), method="GET")
    old = emit("user.created", {"email": "ü@b.c", "ratio": 2.0, "n": 1e-7})
    # A row written before the fix kept the URL's own query unescaped in its body.
    Delivery.objects.filter(event=old).update(body="sp=x y&v=|ü")
    new = emit("user.created", {"email": "ü@b.c"})
    engine.drain()
    got = {r.header("webhook-id"): r for r in receiver.wait_for(2)}
    for event in (old, new):
        req = got[event.public_id]
        assert req.method == "GET" and req.body == b""
        signing.verify(secret, req.query.encode(), req.headers)
        assert Delivery.objects.get(event=event).status == "succeeded"
    assert got[old.public_id].query == "sp=x%20y&v=%7C%C3%BC"
    query = got[new.public_id].query
    assert query == Delivery.objects.get(event=new).body
    assert query.startswith("pipe=a%7Cb&name=Zo%C3%AB&pct=%2F&id=evt_")
    assert "&data.email=%C3%BC%40b.c" in query


@pytest.mark.django_db(transaction=True)
def test_a_method_change_after_emit_never_sends_a_body_in_the_wrong_form(
    receiver, make_endpoint
):
    """The rule: a delivery keeps the method its body was built for at emit time."""
    from webhooks_app import engine, services, signing

    post, post_secret = make_endpoint(receiver.url("/post"))
    get, get_secret = make_endpoint(receiver.url("/get?k=v"), method="GET")
    event = emit("user.created", {"email": "a@b.c"})
    services.update_endpoint(post, method="GET")
    services.update_endpoint(get, method="POST")
    engine.drain()
    by_path = {r.path: r for r in receiver.wait_for(2)}
    as_post, as_get = by_path["/post"], by_path["/get"]
    assert as_post.method == "POST" and as_post.body == event.body.encode()
    assert as_post.header("Content-Type") == "application/json"
    signing.verify(post_secret, as_post.body, as_post.headers)
    assert as_get.method == "GET" and as_get.body == b"" and as_get.header("Content-Type") is None
    assert as_get.query.startswith("k=v&id=" + event.public_id)
    signing.verify(get_secret, as_get.query.encode(), as_get.headers)
    # Events emitted after the change use the new methods.
    receiver.received.clear()
    later = emit("user.created", {"email": "c@d.e"})
    engine.drain()
    by_path = {r.path: r for r in receiver.wait_for(2)}
    assert by_path["/post"].method == "GET" and by_path["/get"].method == "POST"
    assert by_path["/get"].body == later.body.encode()


# MODEL_EVENTS --------------------------------------------------------------------------------
def _user_binding(**extra) -> dict:
    return {
        **_demo_settings(),
        "MODEL_EVENTS": {
            "auth.User": {
                "created": "user.created",
                "updated": "user.updated",
                "fields": ["pk", "username", "date_joined", "last_login", "is_staff"],
                **extra,
            }
        },
    }


@pytest.mark.django_db
def test_a_binding_with_dates_does_not_break_the_sites_own_save(make_endpoint):
    make_endpoint("http://127.0.0.1:9/hook", events=["user.created", "user.updated"])
    with override_settings(WEBHOOKS_APP=_user_binding()):
        user = get_user_model().objects.create(username="mike")
    event = Event.objects.get(event_type="user.created")
    assert event.data["date_joined"] == json.loads(event.body)["data"]["date_joined"]
    assert event.data["date_joined"].endswith("Z") and event.data["last_login"] is None
    assert event.data["id"] == user.pk


@pytest.mark.django_db
def test_a_login_sends_no_user_updated(client, make_endpoint):
    make_endpoint("http://127.0.0.1:9/hook", events=["user.created", "user.updated"])
    with override_settings(WEBHOOKS_APP=_user_binding()):
        user = get_user_model().objects.create_user("ann", password="pw-ann-12345")
        assert client.login(username="ann", password="pw-ann-12345")  # saves last_login
        assert not Event.objects.filter(event_type="user.updated").exists()
        user.email = "ann@example.com"
        user.save()
        assert Event.objects.filter(event_type="user.updated").count() == 1
        user.save(update_fields=["last_login", "email"])  # an ignored field among others
        assert Event.objects.filter(event_type="user.updated").count() == 2


@pytest.mark.django_db
def test_watch_fields_name_the_fields_whose_change_matters(make_endpoint):
    make_endpoint("http://127.0.0.1:9/hook", events=["user.created", "user.updated"])
    with override_settings(WEBHOOKS_APP=_user_binding(watch_fields=["email", "is_staff"])):
        user = get_user_model().objects.create_user("bob", password="x" * 12)
        user.first_name = "Bob"
        user.save()  # not watched
        user.save(update_fields=["first_name"])
        assert not Event.objects.filter(event_type="user.updated").exists()
        user.email = "bob@example.com"
        user.save()  # a plain save that changed a watched field
        user.is_staff = True
        user.save(update_fields=["is_staff"])
        user.save()  # nothing changed
        updates = Event.objects.filter(event_type="user.updated").order_by("id")
        assert [e.data["is_staff"] for e in updates] == [False, True]


@pytest.mark.django_db
def test_emit_depth_limit_counts_levels_of_data(make_endpoint):
    make_endpoint("http://127.0.0.1:9/hook")
    deep: dict = {}
    inner = deep
    for _ in range(app_settings.MAX_PAYLOAD_DEPTH - 1):
        inner["d"] = {}
        inner = inner["d"]
    emit("user.created", deep)  # 32 levels
    inner["d"] = {}
    with pytest.raises(ValidationError, match=r"^\['data(\.d){32}: nested deeper than 32"):
        emit("user.created", deep)


@pytest.mark.django_db
def test_custom_payload_values_take_django_values_and_refuse_bad_ones(make_endpoint):
    from webhooks_app import services

    endpoint, _ = make_endpoint(
        "http://127.0.0.1:9/hook",
        payload_extra={"since": dt.date(2026, 1, 1), "fee": Decimal("0.50"), "rate": 3.0},
    )
    endpoint.refresh_from_db()
    assert endpoint.payload_extra == {"since": "2026-01-01", "fee": "0.50", "rate": 3}
    event = emit("user.created", {"a": 1})
    body = Delivery.objects.get(event=event).body
    sent = json.loads(body)  # (PostgreSQL's jsonb keeps custom values in its own order)
    assert {k: sent[k] for k in ("since", "fee", "rate")} == endpoint.payload_extra
    assert '"rate":3' in body and jsonenc.dumps(sent) == body
    for bad, words in [({"x": float("nan")}, "NaN"), ({"x": 2**60}, "2**53"), ({"x": {1}}, "set")]:
        with pytest.raises(ValidationError) as exc:
            services.update_endpoint(endpoint, payload_extra=bad)
        (message,) = exc.value.message_dict["payload_extra"]
        assert message.startswith("payload_extra.x: ") and words in message


@pytest.mark.django_db
def test_a_typo_in_watch_fields_is_reported_and_never_breaks_a_save(make_endpoint):
    from django.core.checks import run_checks

    make_endpoint("http://127.0.0.1:9/hook", events=["user.created", "user.updated"])
    with override_settings(WEBHOOKS_APP=_user_binding(watch_fields=["emial"])):
        errors = [e for e in run_checks() if e.id == "webhooks_app.E003"]
        assert [e.msg for e in errors] == [
            "WEBHOOKS_APP['MODEL_EVENTS']['auth.User']['watch_fields'] names 'emial', "
            "not a field of auth.User."
        ]
        user = get_user_model().objects.create_user("typo", password="x" * 12)
        user.email = "t@example.com"
        user.save()  # no exception; with no valid watched field every update counts
    assert Event.objects.filter(event_type="user.updated").count() == 1


def test_rows_from_before_the_method_column_are_sent_as_their_body_was_built():
    assert Delivery(method="", body=None).send_method() == "POST"  # the envelope
    assert Delivery(method="", body='{"id":"evt_1"}').send_method() == "POST"  # custom JSON
    assert Delivery(method="", body="id=evt_1&event=x").send_method() == "GET"
    assert Delivery(method="GET", body=None).send_method() == "GET"


@pytest.mark.django_db
def test_get_queries_write_numbers_as_json_bodies_do(make_endpoint):
    make_endpoint("http://127.0.0.1:9/hook", method="GET")
    event = emit("user.created", {"ratio": 2.0, "n": 1e-7, "big": 1e21, "z": -0.0, "10": 1})
    query = Delivery.objects.get(event=event).body
    assert query.endswith("&data.10=1&data.ratio=2&data.n=1e-7&data.big=1e%2B21&data.z=0")
