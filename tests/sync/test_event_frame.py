"""The framed event: an escalation's JSON header and its images as raw bytes. Round trips,
the old JSON still read, and every hostile frame refused as a MessageError naming why."""

from __future__ import annotations

import random
import struct
import time

import pytest

from sync import (
    DetectionPayload,
    EventIdFactory,
    EventMessage,
    MalformedMessageError,
    MessageError,
    ModelRef,
    OversizedMessageError,
    VerdictMessage,
    decode,
    encode,
    encode_event,
    is_framed_event,
    peek_schema,
)
from sync.messages import MAX_EVENT_HEADER_BYTES

pytestmark = pytest.mark.unit

PREAMBLE = struct.Struct(">4sBBxxIII")
CROP = b"\xff\xd8crop" + bytes(range(256)) * 40
THUMB = b"\xff\xd8thumb" + bytes(300)


def _event(**changes: object) -> EventMessage:
    fields: dict[str, object] = {
        "event_id": EventIdFactory()(), "device_id": "cam-1", "source": "door",
        "captured_at": time.time(), "reason": "uncertain", "priority": 5,
        "model": ModelRef(name="blazeface-short", version="1.0.0"),
        "detections": (DetectionPayload(box=(1, 2, 3, 4), score=0.5, label="face"),),
        "crop_jpeg": CROP, "thumbnail_jpeg": THUMB}
    fields.update(changes)
    return EventMessage.model_validate(fields)


def _frame(header: bytes, crop: bytes = b"", thumb: bytes = b"", *, flags: int = 3,
           version: int = 1, sizes: tuple[int, int, int] | None = None) -> bytes:
    sizes = sizes or (len(header), len(crop), len(thumb))
    return PREAMBLE.pack(b"\x89EVT", version, flags, *sizes) + header + crop + thumb


def _header(event: EventMessage) -> bytes:
    return event.model_dump_json(by_alias=True, exclude_none=True,
                                 exclude={"crop_jpeg", "thumbnail_jpeg"}).encode()


@pytest.mark.parametrize("images", [(CROP, THUMB), (CROP, None), (None, THUMB),
                                    (None, None), (b"", THUMB)])
def test_a_framed_event_round_trips(images: tuple[bytes | None, bytes | None]) -> None:
    event = _event(crop_jpeg=images[0], thumbnail_jpeg=images[1])
    payload = encode_event(event)
    assert is_framed_event(payload) and peek_schema(payload) == "event/1"
    assert decode(payload, EventMessage) == event


def test_images_travel_raw_and_old_json_events_are_still_read() -> None:
    event = _event()
    framed, old = encode_event(event), encode(event)
    assert len(framed) < len(CROP) + len(THUMB) + len(_header(event)) + 32
    assert len(old) > len(framed) * 1.25  # base64's third, and more
    assert not is_framed_event(old)
    assert decode(old, EventMessage) == decode(framed, EventMessage) == event


@pytest.mark.parametrize(("payload", "says"), [
    (b"\x89EVT\x01", "shorter than its preamble"),
    (_frame(_header(_event()), CROP, THUMB, version=2), "version 2"),
    (_frame(_header(_event()), CROP, THUMB, flags=7), "unknown parts"),
    (_frame(_header(_event()), CROP, THUMB, flags=1), "does not flag"),
    (_frame(_header(_event()), CROP, THUMB)[:-1], "do not add up"),
    (_frame(_header(_event()), CROP, THUMB) + b"x", "do not add up"),
    (_frame(_header(_event()), CROP, THUMB, sizes=(2**32 - 1, 2**32 - 1, 2**32 - 1)),
     "exceeds"),
    (_frame(b"x" * 10, sizes=(MAX_EVENT_HEADER_BYTES + 1, 0, 0)), "exceeds"),
    (_frame(b"{not json", CROP, THUMB), "not valid JSON"),
    (_frame(encode(_event()), CROP, THUMB), "after its header"),  # base64 images inside
    (_frame(_frame(_header(_event())), flags=0), "not valid JSON"),  # a frame in a frame
    (_frame(_header(_event()).replace(b'"priority":5', b'"priority":99'), CROP, THUMB),
     "priority"),
])
def test_a_hostile_frame_is_refused_naming_why(payload: bytes, says: str) -> None:
    with pytest.raises(MalformedMessageError, match=says):
        decode(payload, EventMessage)


def test_a_frame_is_only_an_event_and_the_size_limit_comes_first() -> None:
    payload = encode_event(_event())
    with pytest.raises(MalformedMessageError, match="not a VerdictMessage"):
        decode(payload, VerdictMessage)
    with pytest.raises(OversizedMessageError):
        decode(payload, EventMessage, max_bytes=len(payload) - 1)


def test_random_damage_gives_a_message_error_or_a_valid_event() -> None:
    """Flipped, cut and inserted bytes anywhere in a frame, preamble included: the codec
    never raises anything but a MessageError."""
    good = encode_event(_event(crop_jpeg=CROP[:200], thumbnail_jpeg=THUMB[:50]))
    rng = random.Random(11)
    refused = 0
    for _ in range(3000):
        damaged = bytearray(good)
        spot = rng.randrange(len(damaged)) if rng.random() < 0.5 else rng.randrange(32)
        action = rng.randrange(3)
        if action == 0:
            damaged[spot] ^= 1 << rng.randrange(8)
        elif action == 1:
            del damaged[spot:spot + rng.randrange(1, 8)]
        else:
            damaged[spot:spot] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 8)))
        try:
            assert isinstance(decode(bytes(damaged), EventMessage), EventMessage)
        except MessageError:
            refused += 1
    assert refused > 1000  # most damage is caught, none escapes as another error
