"""Escalations per second through the agent's durable path, against bare paho-mqtt.

In one run, on one private Mosquitto, with the same payloads (real encoded escalations)
and the same in-flight window:

* ``bare``: a paho-mqtt QoS 1 loop that publishes every payload and waits for every
  PUBACK; nothing is stored.
* ``agent``: :class:`edge_agent.delivery.uplink.Uplink`: each event committed to the SQLite outbox
  (WAL, ``synchronous=FULL``) before it is published, deleted when the hub's receipt
  for it arrives (end-to-end acknowledgement; a stand-in hub subscribes to the events and
  answers with receipts in batches, as the real hub's store does with its commits).

The stand-in hub is subscribed during both sides, so the broker delivers every message
once in both.

Rounds alternate which goes first; each round's agent rate is divided by the bare rate of
the same round, and ``ratio`` is the median of those paired ratios (a noisy moment on
this shared machine then slows both sides of a pair). Then the drain: 20,000
events are escalated while the broker is down, the broker starts, and the time until the
outbox is empty gives the drain rate.

Last line: JSON with ``ratio`` (agent / bare events per second; target >= 0.9) and
``drain_per_s``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from cloud_hub.mosquitto import MosquittoBroker
from edge_agent.config import MqttConfig, OutboxConfig
from edge_agent.delivery.outbox import Outbox, OutboxItem
from edge_agent.delivery.uplink import Uplink
from sync import (
    MAX_RECEIPT_IDS,
    EventIdFactory,
    EventMessage,
    ModelRef,
    ReceiptMessage,
    StatusMessage,
    TopicLayout,
    encode,
)

WINDOW = 100
LAYOUT = TopicLayout()


def _payloads(count: int, size: int, device: str = "bench-cam") -> list[OutboxItem]:
    make_id = EventIdFactory()
    items = []
    for _ in range(count):
        message = EventMessage(
            event_id=make_id(), device_id=device, source="bench", captured_at=time.time(),
            reason="uncertain", priority=5, model=ModelRef(name="blazeface-short",
                                                           version="1.0.0"),
            crop_jpeg=b"\xff\xd8" + bytes(size),
        )
        items.append(OutboxItem(message.event_id, LAYOUT.events(device),
                                encode(message), 5, time.time()))
    return items


class _ReceiptingHub:
    """Subscribes to every device's events and confirms them with receipts, batched.

    Its own process, as the real hub is: in the agent's process it would take the GIL
    from the very path being measured.
    """

    def __init__(self, port: int) -> None:
        context = multiprocessing.get_context("spawn")
        self._stop = context.Event()
        ready = context.Event()
        self._process = context.Process(target=_receipting_hub, args=(port, ready, self._stop),
                                        name="bench-hub", daemon=True)
        self._process.start()
        if not ready.wait(30):
            raise SystemExit("the stand-in hub could not subscribe")

    def close(self) -> None:
        self._stop.set()
        self._process.join(10)


def _receipting_hub(port: int, ready: Any, stop: Any) -> None:
    """The stand-in hub's process: receipts for every event, in batches every 5 ms."""
    ids: dict[str, list[str]] = {}
    lock = threading.Lock()

    def on_message(client: mqtt.Client, userdata: Any, message: Any) -> None:
        device = message.topic.split("/")[-2]
        event_id = json.loads(message.payload)["event_id"]
        with lock:
            ids.setdefault(device, []).append(event_id)

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-hub",
                         protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.on_connect = lambda c, *_: c.subscribe(LAYOUT.all_devices("events"), qos=1)
    client.on_subscribe = lambda *_: ready.set()
    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.loop_start()
    while not stop.wait(0.005):
        with lock:
            batches = dict(ids)
            ids.clear()
        for device, batch in batches.items():
            for start in range(0, len(batch), MAX_RECEIPT_IDS):
                receipt = ReceiptMessage(device_id=device, at=time.time(),
                                         event_ids=tuple(batch[start:start + MAX_RECEIPT_IDS]))
                client.publish(LAYOUT.verdicts(device), encode(receipt), qos=1)
    client.disconnect()
    client.loop_stop()


def _bare(port: int, items: list[OutboxItem]) -> float:
    done = threading.Event()
    acked = [0]

    def on_publish(*_: Any) -> None:
        acked[0] += 1
        if acked[0] == len(items):
            done.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-bare",
                         protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(WINDOW)
    client.on_publish = on_publish
    client.connect("127.0.0.1", port)
    client.loop_start()
    started = time.perf_counter()
    for item in items:
        client.publish(item.topic, item.payload, qos=1)
    if not done.wait(120):
        raise SystemExit(f"bare loop: only {acked[0]} of {len(items)} PUBACKs")
    elapsed = time.perf_counter() - started
    client.disconnect()
    client.loop_stop()
    return len(items) / elapsed


def _uplink(port: int, folder: Path, name: str) -> Uplink:
    return Uplink(
        device_id=name,
        config=MqttConfig(port=port, max_inflight=WINDOW, drain_rate_per_s=1e9,
                          reconnect_min_s=0.05, reconnect_max_s=0.2),
        outbox=Outbox(folder / f"{name}.sqlite3", OutboxConfig(max_events=100_000)),
        layout=LAYOUT,
        status=lambda state: StatusMessage(device_id=name, state=state, at=time.time()),
    )


def _agent(port: int, folder: Path, items: list[OutboxItem], name: str) -> float:
    uplink = _uplink(port, folder, name)
    uplink.start()
    deadline = time.monotonic() + 10
    while not uplink.connected and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.perf_counter()
    for item in items:
        uplink.submit(item)
    if not uplink.wait_idle(300):
        raise SystemExit(f"agent path did not drain: {uplink.counters()}")
    elapsed = time.perf_counter() - started
    uplink.stop()
    return len(items) / elapsed


def _drain(folder: Path, backlog: int, size: int) -> dict[str, float]:
    broker = MosquittoBroker(folder / "drain-broker")
    uplink = _uplink(broker.port, folder, "bench-drain")
    uplink.start()
    stored_at = time.perf_counter()
    for item in _payloads(backlog, size, "bench-drain"):
        uplink.submit(item)
    while uplink.counters().outbox_depth < backlog:
        time.sleep(0.01)
    store_s = time.perf_counter() - stored_at
    broker.start()
    hub = _ReceiptingHub(broker.port)
    started = time.perf_counter()
    if not uplink.wait_idle(600):
        raise SystemExit(f"backlog did not drain: {uplink.counters()}")
    elapsed = time.perf_counter() - started
    uplink.stop()
    hub.close()
    broker.stop()
    return {"backlog": backlog, "store_per_s": backlog / store_s,
            "drain_s": elapsed, "drain_per_s": backlog / elapsed}


def main(argv: list[str]) -> int:
    """Run the comparison and the drain, print the JSON line."""
    parser = argparse.ArgumentParser(prog="python -m bench publish")
    parser.add_argument("--events", type=int, default=3000, help="events per round")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--payload-bytes", type=int, default=2048, help="crop bytes per event")
    parser.add_argument("--backlog", type=int, default=20_000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-publish-") as tmp:
        folder = Path(tmp)
        broker = MosquittoBroker(folder / "broker")
        broker.start()
        hub = _ReceiptingHub(broker.port)
        try:
            bare_rates, agent_rates = [], []
            for r in range(args.rounds):
                items = _payloads(args.events, args.payload_bytes, f"bench-{r}")
                order = ["bare", "agent"] if r % 2 == 0 else ["agent", "bare"]
                for side in order:
                    if side == "bare":
                        bare_rates.append(_bare(broker.port, items))
                    else:
                        agent_rates.append(_agent(broker.port, folder, items, f"bench-{r}"))
        finally:
            hub.close()
            broker.stop()
        drain = _drain(folder, args.backlog, args.payload_bytes)
    bare = statistics.median(bare_rates)
    agent = statistics.median(agent_rates)
    ratio = statistics.median(a / b for a, b in zip(agent_rates, bare_rates, strict=True))
    result = {
        "benchmark": "publish", "events_per_round": args.events, "rounds": args.rounds,
        "payload_bytes": len(_payloads(1, args.payload_bytes)[0].payload),
        "bare_per_s": bare, "agent_per_s": agent, "ratio": ratio,
        "bare_rounds": bare_rates, "agent_rounds": agent_rates,
        **{f"drain_{k}" if not k.startswith("drain") else k: v for k, v in drain.items()},
        "targets": {"ratio": 0.9},
    }
    print(f"bare paho QoS 1: {bare:.0f}/s; agent outbox + QoS 1 + delete: {agent:.0f}/s "
          f"(paired ratio {ratio:.2f})")
    print(f"drain of {drain['backlog']} offline events: {drain['drain_s']:.1f} s "
          f"({drain['drain_per_s']:.0f}/s)")
    print(json.dumps(result))
    return 0
