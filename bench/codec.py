"""An escalation's bytes on the wire and in storage, and the CPU to encode and decode it.

In one run, on the same real escalation (a face crop and a 320-pixel thumbnail from the
sample image, JPEG as the agent makes them):

* ``json``: the images base64 inside the JSON (``encode``/``decode``: the old format);
* ``frame``: the framed event (``encode_event``; JSON header, raw JPEG bytes after it);
* ``cbor``: the same fields as CBOR with ``cbor2`` (bytes native), validated the same way
  (only when ``cbor2`` is importable; it is not a dependency).

Each decode includes the full validation of the message. Then storage: ``--events``
copies of the event (each its own id and crop) stored in SQLite by the hub's store, once
with the images in the rows (before) and once in the file image store (after): bytes per
event in the database file and in image files (on-disk blocks).

Last line: JSON with bytes and microseconds per format, ``frame_over_json`` ratios, and
``bytes_per_event`` on the wire and in storage, before and after.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from skimage import data

from cloud_hub.images import FileImageStore
from cloud_hub.store import Store
from edge_agent.escalation import bounded_jpeg
from sync import (
    DetectionPayload,
    EventIdFactory,
    EventMessage,
    ModelRef,
    decode,
    encode,
    encode_event,
)


def _event() -> EventMessage:
    image = np.ascontiguousarray(data.astronaut())
    crop = bounded_jpeg(np.ascontiguousarray(image[60:220, 150:300]), 48 * 1024)
    small = cv2.resize(image, (320, 320), interpolation=cv2.INTER_AREA)
    return EventMessage(
        event_id=EventIdFactory()(), device_id="bench-cam", source="door",
        captured_at=time.time(), reason="uncertain", priority=5,
        model=ModelRef(name="blazeface-short", version="1.0.0"),
        detections=(DetectionPayload(box=(178, 82, 271, 174), score=0.7, label="face"),),
        frame_size=(512, 512), crop_box=(150, 60, 300, 220), crop_jpeg=crop,
        thumbnail_jpeg=bounded_jpeg(np.asarray(small, dtype=np.uint8), 48 * 1024))


def _per_call_us(call: Callable[[], Any], rounds: int) -> float:
    best = float("inf")
    for _ in range(5):  # the best of five: a busy moment on a shared machine is not the codec
        started = time.perf_counter()
        for _ in range(rounds):
            call()
        best = min(best, (time.perf_counter() - started) / rounds)
    return best * 1e6


def _stored_bytes(event: EventMessage, count: int, folder: Path,
                  images: FileImageStore | None) -> dict[str, int]:
    """Bytes per event in the database and in image files, ``count`` events stored."""
    folder.mkdir(parents=True, exist_ok=True)
    database = folder / "hub.sqlite3"
    store = Store(f"sqlite:///{database}", images=images)
    store.open()
    make_id = EventIdFactory()
    try:
        empty = _database_bytes(store, database)
        for index in range(count):
            unique = index.to_bytes(4, "big")  # each event its own images, none shared
            store.add_event(
                id=make_id(), device_id=event.device_id, source=event.source,
                reason=event.reason, priority=event.priority, captured_at=event.captured_at,
                received_at=time.time(), edge_model=event.model.name,
                edge_version=event.model.version,
                edge_detections=json.dumps([d.model_dump(mode="json")
                                            for d in event.detections]),
                crop=(event.crop_jpeg or b"") + unique,
                thumbnail=(event.thumbnail_jpeg or b"") + unique)
        in_database = _database_bytes(store, database) - empty
    finally:
        store.close()
    files = sum(path.stat().st_blocks * 512 for path in images.root.rglob("*")
                if path.is_file()) if images is not None else 0
    return {"database": in_database // count, "files": files // count,
            "total": (in_database + files) // count}


def _database_bytes(store: Store, database: Path) -> int:
    with store.engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    return database.stat().st_size


def main(argv: list[str]) -> int:
    """Run the benchmark; prints one JSON line."""
    parser = argparse.ArgumentParser(prog="python -m bench codec")
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--events", type=int, default=500, help="events stored")
    args = parser.parse_args(argv)
    event = _event()
    formats: dict[str, tuple[Callable[[], bytes], Callable[[bytes], EventMessage]]] = {
        "json": (lambda: encode(event), lambda p: decode(p, EventMessage)),
        "frame": (lambda: encode_event(event), lambda p: decode(p, EventMessage)),
    }
    try:
        cbor2: Any = importlib.import_module("cbor2")  # optional: measured where installed
    except ImportError:
        cbor2 = None
    if cbor2 is not None:
        formats["cbor"] = (
            lambda: cbor2.dumps(event.model_dump(by_alias=True, exclude_none=True)),
            lambda p: EventMessage.model_validate(cbor2.loads(p)))
    results: dict[str, dict[str, float]] = {}
    for name, (encoder, decoder) in formats.items():
        payload = encoder()
        assert decoder(payload) == event, name
        results[name] = {
            "bytes": len(payload),
            "encode_us": round(_per_call_us(encoder, args.rounds), 1),
            "decode_us": round(_per_call_us(functools.partial(decoder, payload),
                                            args.rounds), 1),
        }
        print(name, results[name])
    images = len(event.crop_jpeg or b"") + len(event.thumbnail_jpeg or b"")
    frame, old = results["frame"], results["json"]
    with tempfile.TemporaryDirectory() as tmp:
        before = _stored_bytes(event, args.events, Path(tmp) / "blobs", None)
        after = _stored_bytes(event, args.events, Path(tmp) / "files", FileImageStore(
            Path(tmp) / "files" / "images", max_image_bytes=1 << 20))
    print("storage before", before, "after", after)
    print(json.dumps({
        "images_bytes": images, **results,
        "frame_over_json": {key: round(frame[key] / old[key], 3) for key in frame},
        "bytes_per_event": {
            "wire": {"before": old["bytes"], "after": frame["bytes"]},
            "storage": {"before": before, "after": after}},
    }))
    return 0
