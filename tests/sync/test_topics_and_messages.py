"""The topic layout and message codec: round trips, and refusals that name the problem."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import ValidationError

from sync import (
    DetectionPayload,
    EventIdFactory,
    EventMessage,
    MalformedMessageError,
    ModelRef,
    OversizedMessageError,
    ReceiptMessage,
    StatusMessage,
    TelemetryMessage,
    TopicError,
    TopicLayout,
    UpdateReport,
    VerdictMessage,
    check_name,
    decode,
    encode,
    event_id_time_ms,
    is_event_id,
    peek_schema,
)

pytestmark = pytest.mark.unit

LAYOUT = TopicLayout("acme")


def _event(**changes: object) -> EventMessage:
    fields: dict[str, object] = {
        "event_id": EventIdFactory()(), "device_id": "cam-1", "source": "door",
        "captured_at": 1_790_000_000.5, "reason": "uncertain", "priority": 5,
        "model": ModelRef(name="blazeface-short", version="1.0.0"),
        "detections": (DetectionPayload(box=(1, 2, 30, 40), score=0.6, label="face",
                                        keypoints=((5, 6),)),),
        "crop_jpeg": b"\xff\xd8\xff\xe0jpeg", "frame_size": (640, 360),
    }
    fields.update(changes)
    return EventMessage.model_validate(fields)


def test_topics() -> None:
    assert LAYOUT.events("cam-1") == "acme/v1/cam-1/events"
    assert LAYOUT.verdicts("cam-1") == "acme/v1/cam-1/verdicts"
    assert LAYOUT.models("lobby") == "acme/v1/groups/lobby/models"
    assert LAYOUT.shared("hub", "events") == "$share/hub/acme/v1/+/events"
    address = LAYOUT.parse("acme/v1/cam-1/status")
    assert (address.name, address.kind) == ("cam-1", "status")
    assert LAYOUT.parse("acme/v1/groups/lobby/models").kind == "models"


@pytest.mark.parametrize("device", ["", "a/b", "+", "#", "cam 1", "x" * 65, ".."])
def test_device_ids_that_could_escape_their_topics_are_refused(device: str) -> None:
    with pytest.raises(TopicError, match="must be 1-64 characters"):
        LAYOUT.events(device)


@pytest.mark.parametrize("topic", [
    "other/v1/cam-1/events", "acme/v2/cam-1/events", "acme/v1/cam-1/secrets",
    "acme/v1/cam-1/events/extra", "acme/v1/+/events",
])
def test_foreign_topics_are_refused(topic: str) -> None:
    with pytest.raises(TopicError):
        LAYOUT.parse(topic)


def test_event_round_trip_with_images() -> None:
    event = _event()
    payload = encode(event)
    assert peek_schema(payload) == "event/1"
    assert decode(payload, EventMessage) == event
    assert json.loads(payload)["schema"] == "event/1"


def test_ids_are_sortable_uuid7() -> None:
    clock = iter([1000, 1000, 1000, 999, 1001])
    make = EventIdFactory(clock_ms=lambda: next(clock), random_bits=lambda n: 0)
    ids = [make() for _ in range(5)]
    assert ids == sorted(ids) and len(set(ids)) == 5
    assert all(is_event_id(i) for i in ids)
    assert event_id_time_ms(ids[0]) == 1000 and event_id_time_ms(ids[-1]) == 1001


@pytest.mark.parametrize(("payload", "message", "field"), [
    (b"{not json", "not valid JSON", None),
    (b"[1]", "bad EventMessage", None),
])
def test_malformed_payloads(payload: bytes, message: str, field: str | None) -> None:
    with pytest.raises(MalformedMessageError, match=message) as caught:
        decode(payload, EventMessage)
    if field:
        assert caught.value.field == field


def test_bad_fields_are_named() -> None:
    raw = json.loads(encode(_event()))
    raw["schema"] = "verdict/1"
    with pytest.raises(MalformedMessageError) as caught:
        decode(json.dumps(raw).encode(), EventMessage)
    assert caught.value.field == "schema"
    raw = json.loads(encode(_event()))
    raw["priority"] = 12
    with pytest.raises(MalformedMessageError) as caught:
        decode(json.dumps(raw).encode(), EventMessage)
    assert caught.value.field == "priority"
    raw = json.loads(encode(_event()))
    raw["event_id"] = "not-a-uuid"
    with pytest.raises(MalformedMessageError, match="event_id: Value error, must be"):
        decode(json.dumps(raw).encode(), EventMessage)
    raw = json.loads(encode(_event()))
    raw["device_id"] = "cam/2"
    with pytest.raises(MalformedMessageError, match="device_id"):
        decode(json.dumps(raw).encode(), EventMessage)
    raw = json.loads(encode(_event()))
    raw["admin"] = True
    with pytest.raises(MalformedMessageError, match=r"admin: Extra inputs"):
        decode(json.dumps(raw).encode(), EventMessage)


def test_oversized_is_refused_before_parsing() -> None:
    with pytest.raises(OversizedMessageError, match="exceeds the limit of 100 bytes"):
        decode(b"x" * 101, EventMessage, max_bytes=100)


def test_verdict_and_status() -> None:
    verdict = VerdictMessage(
        event_id=EventIdFactory()(), device_id="cam-1", outcome="confirmed",
        model=ModelRef(name="blazeface-full", version="1.0.0"), inference_ms=3.5,
        decided_at=1.0,
    )
    assert decode(encode(verdict), VerdictMessage) == verdict
    status = StatusMessage(device_id="cam-1", state="offline", at=2.0)
    assert decode(encode(status), StatusMessage).state == "offline"
    with pytest.raises(MalformedMessageError):
        decode(encode(status), VerdictMessage)


def _verdict_json() -> dict[str, object]:
    verdict = VerdictMessage(
        event_id=EventIdFactory()(), device_id="cam-1", outcome="rejected",
        model=ModelRef(name="blazeface-full", version="1.0.0"), inference_ms=3.5,
        decided_at=1.0)
    raw: dict[str, object] = json.loads(encode(verdict))
    return raw


@pytest.mark.parametrize("number", ["Infinity", "-Infinity", "NaN", "1e999"])
@pytest.mark.parametrize(("kind", "build", "path"), [
    (EventMessage, lambda: json.loads(encode(_event())), ("captured_at",)),
    (EventMessage, lambda: json.loads(encode(_event(anomaly_score=0.5))), ("anomaly_score",)),
    (EventMessage, lambda: json.loads(encode(_event(readings=(1.0, 2.0)))), ("readings", 1)),
    (EventMessage, lambda: json.loads(encode(_event())), ("detections", 0, "box", 2)),
    (EventMessage, lambda: json.loads(encode(_event())), ("crop_box",)),
    (EventMessage, lambda: json.loads(encode(_event(verdict_timeout_s=5.0))),
     ("verdict_timeout_s",)),
    (VerdictMessage, _verdict_json, ("decided_at",)),
    (VerdictMessage, _verdict_json, ("inference_ms",)),
    (StatusMessage, lambda: json.loads(encode(StatusMessage(device_id="c", state="online",
                                                            at=1.0))), ("at",)),
])
def test_non_finite_numbers_are_refused_at_decode(
        number: str, kind: type[EventMessage | VerdictMessage | StatusMessage],
        build: Callable[[], dict[str, Any]], path: tuple[str | int, ...]) -> None:
    """JSON that Python's json module happily writes: ``Infinity`` once reached the
    dashboard as ``-inf ms`` and the API as ``null``."""
    raw = build()
    target: Any = raw
    for step in path[:-1]:
        target = target[step]
    if path == ("crop_box",):
        raw["crop_box"] = [0.0, 0.0, 1.0, 1.0]
        target, path = raw["crop_box"], (3,)
    target[path[-1]] = "__NUMBER__"
    payload = json.dumps(raw).replace('"__NUMBER__"', number).encode()
    with pytest.raises(MalformedMessageError, match="finite number"):
        decode(payload, kind)


def test_non_finite_numbers_cannot_be_built_either() -> None:
    with pytest.raises(ValidationError, match="finite number"):
        _event(captured_at=float("inf"))


@pytest.mark.parametrize("timeout_s", [0.0, -1.0, 86400.5])
def test_a_verdict_timeout_outside_its_bounds_is_refused(timeout_s: float) -> None:
    raw = json.loads(encode(_event(verdict_timeout_s=5.0)))
    raw["verdict_timeout_s"] = timeout_s
    with pytest.raises(MalformedMessageError, match="verdict_timeout_s"):
        decode(json.dumps(raw).encode(), EventMessage)


@pytest.mark.parametrize("timeout_s", [1e-300, 86400.0])
def test_a_verdict_timeout_within_its_bounds_is_kept(timeout_s: float) -> None:
    assert decode(encode(_event(verdict_timeout_s=timeout_s)),
                  EventMessage).verdict_timeout_s == timeout_s


def test_receipts_carry_event_ids_only() -> None:
    ids = tuple(EventIdFactory()() for _ in range(3))
    receipt = ReceiptMessage(device_id="cam-1", event_ids=ids, at=1.0)
    assert decode(encode(receipt), ReceiptMessage).event_ids == ids
    assert peek_schema(encode(receipt)) == "receipt/1"
    with pytest.raises(MalformedMessageError, match="UUIDv7"):
        decode(b'{"schema": "receipt/1", "device_id": "cam-1", "event_ids": ["x"], "at": 1}',
               ReceiptMessage)
    with pytest.raises(MalformedMessageError, match="event_ids"):
        decode(b'{"schema": "receipt/1", "device_id": "cam-1", "event_ids": [], "at": 1}',
               ReceiptMessage)


def test_a_status_orders_by_its_connection_and_sequence() -> None:
    status = StatusMessage(device_id="cam-1", state="offline", at=5.0, epoch=4.0, seq=2**31 - 1)
    again = decode(encode(status), StatusMessage)
    assert (again.epoch, again.seq) == (4.0, 2**31 - 1)
    assert decode(b'{"schema": "status/1", "device_id": "cam-1", "state": "online", "at": 1}',
                  StatusMessage).epoch is None  # an older agent: the hub orders by arrival


def test_an_install_step_is_one_of_the_install_vocabulary() -> None:
    report = {"schema": "update/1", "device_id": "cam-1", "model": "m", "version": "1.0.0",
              "step": "committed", "at": 1.0}
    assert decode(json.dumps(report).encode(), UpdateReport).step == "committed"
    with pytest.raises(MalformedMessageError, match="step"):
        decode(json.dumps({**report, "step": "done-ish"}).encode(), UpdateReport)


def test_a_hostile_nesting_depth_is_not_a_message() -> None:
    assert peek_schema(b"[" * 100_000) is None


@pytest.mark.parametrize("name", ["a" * 64 + "\n", "cam-1\n", "cam-1\n\n", "\ncam-1"])
def test_a_name_with_a_newline_is_refused(name: str) -> None:
    """Python's ``$`` also matches before a final newline: ``"a" * 64 + "\\n"`` passed the
    device-id check (the API provisioned it; its 65 characters then broke the dashboard's
    paging). Every checked name, id and prefix must match whole."""
    with pytest.raises(TopicError):
        check_name(name)
    with pytest.raises(TopicError):
        TopicLayout(name)
    assert not is_event_id(EventIdFactory()() + "\n")


@pytest.mark.parametrize(("name", "value", "ok"), [
    ("outbox_events", 0.0, True), ("outbox_events", 2.0**53, True),
    ("outbox_bytes", 31_700.0, True), ("queue_depth", -3.0, True),  # not a backlog count
    ("outbox_events", -1.0, False), ("outbox_events", 1e308, False),
    ("outbox_bytes", -0.5, False), ("outbox_bytes", 2.0**53 + 2, False),
])
def test_a_telemetry_backlog_is_a_count(name: str, value: float, ok: bool) -> None:
    """The hub adds the fleet's backlogs up: one device's 1e308 made the dashboard's total
    inf, and a negative one took from the others'."""
    message = {"schema": "telemetry/1", "device_id": "cam-1", "at": 1.0,
               "values": {name: value}}
    if ok:
        assert decode(json.dumps(message).encode(), TelemetryMessage).values[name] == value
    else:
        with pytest.raises(MalformedMessageError, match=name):
            decode(json.dumps(message).encode(), TelemetryMessage)
