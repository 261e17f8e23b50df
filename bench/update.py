"""From ``models publish`` to the first device serving the new model, on one machine.

A private Mosquitto, a hub (TUF repository served over HTTP, MQTT announcements) and one
edge agent running the sample footage with signed updates on. The clock starts before
the publish (signing into the repository) and stops when the device reports ``active``
(the new model swapped in, serving frames). The same download and verification is then
timed alone, with a fresh client, to show what TUF's checks cost.

Last line: JSON with ``seconds``, ``download_bytes`` and ``verify_seconds``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import uvicorn

from cloud_hub.api import create_app
from cloud_hub.mosquitto import MosquittoBroker, free_port
from cloud_hub.service import HubService
from cloud_hub.settings import HubSettings
from edge_agent.updates import UpdateClient, device_fit
from hardware import probe_hardware
from models import ModelStore, ModelZoo, default_store_path


def main(argv: list[str]) -> int:
    """Run the measurement and print the JSON line."""
    parser = argparse.ArgumentParser(prog="python -m bench update")
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args(argv)
    store = ModelStore(default_store_path())
    base = ModelZoo(store).ensure("blazeface-short")
    with tempfile.TemporaryDirectory(prefix="bench-update-") as tmp:
        folder = Path(tmp)
        broker = MosquittoBroker(folder / "broker")
        broker.start()
        port = free_port()
        hub_models = ModelStore(folder / "hub-models")
        new = hub_models.add(base.manifest.model_copy(update={"version": "9.0.0"}),
                             base.read_verified_model())
        settings = HubSettings(data_dir=folder / "hub", model_store=folder / "hub-models",
                               mqtt_port=broker.port, http_port=port, landmark_model=None,
                               detector_model="blazeface-short", secret_key="b" * 40)
        hub_models.add(base.manifest, base.read_verified_model())
        service = HubService(settings)
        service.open_store()
        assert service.distribution is not None
        service.distribution.repository.init()
        service.store.add_device(device_id="bench-cam", group="bench")
        service.store.close()
        server = uvicorn.Server(uvicorn.Config(create_app(service), host="127.0.0.1",
                                               port=port, log_level="warning"))
        threading.Thread(target=server.run, daemon=True).start()
        while not (service.ready and server.started):
            time.sleep(0.1)
        root = settings.repository_dir / "metadata" / "1.root.json"
        config = folder / "agent.toml"
        config.write_text(
            f'state_dir = "{folder / "agent"}"\nmodel_store = "{store.root}"\n'
            '[device]\nid = "bench-cam"\ngroup = "bench"\n'
            f'[mqtt]\nport = {broker.port}\n'
            '[[sources]]\nname = "yard"\nkind = "sample"\nmodel = "blazeface-short"\n'
            'loop = true\nmax_fps = 30.0\n[sources.motion]\nenabled = false\n'
            f'[updates]\nenabled = true\nurl = "http://127.0.0.1:{port}/tuf"\n'
            f'trusted_root = "{root}"\nhealth_inferences = 20\n'
        )
        agent = subprocess.Popen(
            [str(Path(sys.executable).parent / "edge-agent"), "run", "--config", str(config)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ))
        try:
            status = folder / "agent" / "status.json"
            while not (status.exists() and json.loads(status.read_text()).get("connected")):
                time.sleep(0.1)
            started = time.perf_counter()
            distribution = service.distribution
            distribution.publish(new)
            published = time.perf_counter()
            distribution.start(model="blazeface-short", version="9.0.0", group="bench",
                               canary_percent=100)
            deadline = time.monotonic() + args.timeout
            while True:
                steps = [r["step"] for r in service.store.update_reports_of(
                    device_id="bench-cam") if r["version"] == "9.0.0"]
                if "active" in steps:
                    break
                if time.monotonic() > deadline:
                    raise SystemExit(f"no device served 9.0.0 in {args.timeout} s: {steps}")
                time.sleep(0.02)
            serving = time.perf_counter()
        finally:
            agent.terminate()
            agent.wait(30)
        verify_started = time.perf_counter()
        client = UpdateClient(folder / "probe", f"http://127.0.0.1:{port}/tuf",
                              trusted_root=root.read_bytes())
        client.refresh()
        offer = client.choose("blazeface-short", "9.0.0", installed="1.0.0",
                              fit=device_fit(probe_hardware()))
        assert offer is not None  # 9.0.0 is not installed in the probe
        client.download(offer)
        verify_seconds = time.perf_counter() - verify_started
        server.should_exit = True
        broker.stop()
    result = {
        "benchmark": "update", "seconds": serving - started,
        "publish_seconds": published - started, "download_bytes": offer.length,
        "verify_seconds": verify_seconds,
    }
    print(f"publish to first device serving: {result['seconds']:.2f} s "
          f"(signing {result['publish_seconds']:.2f} s); download {offer.length} bytes, "
          f"refresh + download + verify {verify_seconds:.3f} s")
    print(json.dumps(result))
    return 0
