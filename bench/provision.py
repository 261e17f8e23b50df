"""Bulk provisioning through Mosquitto's dynamic security plugin, against one at a time.

In one run, each on a fresh private Mosquitto (production limits, the plugin holding
nothing but the hub):

* ``single``: ``--single`` devices provisioned one call each (what ``cloud-hub devices
  add ID`` does, without the Python start-up): a control connection and two commands
  per device; and the same devices in one batch: ``speedup`` at equal count.
* ``batch``: ``--devices`` devices in one :meth:`HubService.provision_devices` call (what
  ``cloud-hub devices add --from FILE`` and ``POST /v1/devices/batch`` do): one
  connection, many commands per message, one database transaction.

Mosquitto 2.0's plugin rewrites its whole JSON state after every command, so the broker's
share grows with the number of devices it already holds; ``broker_state_bytes`` is that
state's size at the end, ``broker_cpu_s`` the CPU time Mosquitto spent in the batch and
``hub_cpu_s`` this process's (the hub's part: credentials, commands, the transaction).

Last line: JSON with ``provision_s`` (the batch of ``--devices``), ``broker_cpu_s``
(less dependent on the machine's load than the wall time), ``hub_cpu_s``, the baseline's
figures, and ``speedup``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.cpu import process_cpu_s
from cloud_hub.mosquitto import BrokerLimits, MosquittoBroker
from cloud_hub.provisioning import DeviceSpec
from cloud_hub.service import HubService
from cloud_hub.settings import HubSettings

SECRET = "bench-secret-" + "x" * 32


def _hub(folder: Path) -> tuple[HubService, MosquittoBroker]:
    broker = MosquittoBroker(folder / "broker", anonymous=False, limits=BrokerLimits())
    broker.start()
    settings = HubSettings(
        data_dir=folder / "hub", model_store=folder / "models", secret_key=SECRET,
        mqtt_port=broker.port, mqtt_username=broker.hub_username,
        mqtt_password=broker.hub_password, mqtt_client_id="hub-bench",
        broker_control="mosquitto-dynsec")
    service = HubService(settings, ingest=False)
    service.open_store()
    return service, broker


def _cpu_s(broker: MosquittoBroker) -> float:
    """CPU seconds (user and system) the broker's process has used."""
    assert broker.process is not None
    return process_cpu_s(broker.process.pid)


@dataclass(frozen=True, slots=True)
class BatchRun:
    """One batch on a fresh broker: wall and CPU seconds, devices created, and the size of
    the broker's state at the end."""

    wall_s: float
    broker_cpu_s: float
    hub_cpu_s: float
    created: int
    state_bytes: int


def _batch(folder: Path, specs: list[DeviceSpec]) -> BatchRun:
    """Provision ``specs`` in one call on a fresh broker."""
    service, broker = _hub(folder)
    try:
        cpu_before, hub_before = _cpu_s(broker), time.process_time()
        started = time.perf_counter()
        outcomes = service.provision_devices(specs)
        wall_s = time.perf_counter() - started
        hub_cpu_s = time.process_time() - hub_before
        cpu_s = _cpu_s(broker) - cpu_before
        state_bytes = broker.dynsec_file.stat().st_size
    finally:
        service.store.close()
        broker.stop()
    return BatchRun(wall_s, cpu_s, hub_cpu_s, sum(o.status == "created" for o in outcomes),
                    state_bytes)


def main(argv: list[str]) -> int:
    """Run the benchmark; prints progress, then one JSON line."""
    parser = argparse.ArgumentParser(prog="python -m bench provision")
    parser.add_argument("--devices", type=int, default=1000, help="devices in the batch")
    parser.add_argument("--single", type=int, default=100,
                        help="devices provisioned one call each, and in one small batch, "
                        "on fresh brokers (the baseline, at equal count)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        service, broker = _hub(folder / "single")
        try:
            cpu_before = _cpu_s(broker)
            started = time.perf_counter()
            for index in range(args.single):
                service.provision_device(f"one-{index:05d}", "bench")
            single_s = time.perf_counter() - started
            single_cpu_s = _cpu_s(broker) - cpu_before
        finally:
            service.store.close()
            broker.stop()
        print(f"single: {args.single} devices one call each in {single_s:.2f} s")
        small = _batch(folder / "small", [
            DeviceSpec(f"one-{index:05d}", "bench") for index in range(args.single)])
        print(f"small batch: {args.single} devices in {small.wall_s:.2f} s")
        batch = _batch(folder / "batch", [
            DeviceSpec(f"cam-{index:05d}", f"floor-{index % 10}")
            for index in range(args.devices)])
        print(f"batch: {batch.created} of {args.devices} devices in {batch.wall_s:.2f} s")
    print(json.dumps({
        "devices": args.devices, "created": batch.created,
        "provision_s": round(batch.wall_s, 2), "broker_cpu_s": round(batch.broker_cpu_s, 2),
        "hub_cpu_s": round(batch.hub_cpu_s, 3), "broker_state_bytes": batch.state_bytes,
        "baseline": {"devices": args.single, "single_s": round(single_s, 2),
                     "single_broker_cpu_s": round(single_cpu_s, 2),
                     "batch_s": round(small.wall_s, 2),
                     "batch_broker_cpu_s": round(small.broker_cpu_s, 2)},
        "speedup": round(single_s / small.wall_s, 1),
    }))
    return 0
