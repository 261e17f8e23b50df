"""The whole system on one machine: a private Mosquitto, the hub, and an edge agent.

The broker requires passwords and confines each client to its topics with the dynamic
security plugin, as in production, with production's packet and queue limits; the hub
provisions the demo's device through the plugin's control topic. The hub uses its
embedded SQLite store. The agent runs the sample footage as a separate ``edge-agent``
process, as it would on a camera box.
Ctrl-C stops everything.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from cloud_hub.api import create_app
from cloud_hub.api.auth import hash_token, new_token
from cloud_hub.errors import HubError
from cloud_hub.mosquitto import BrokerLimits, MosquittoBroker
from cloud_hub.service import HubService
from cloud_hub.settings import HubSettings

DEVICE = "demo-cam"


def run_demo(*, port: int, loop: bool, stop: threading.Event | None = None,
             folder: Path | None = None) -> int:
    """Run until Ctrl-C (or ``stop``); returns the exit status."""
    import uvicorn

    stop = stop or threading.Event()
    folder = folder or Path(tempfile.mkdtemp(prefix="edge-cloud-demo-"))
    broker = MosquittoBroker(folder / "broker", anonymous=False, limits=BrokerLimits())
    broker.start()
    settings = HubSettings(
        data_dir=folder / "hub", mqtt_port=broker.port, mqtt_username=broker.hub_username,
        mqtt_password=broker.hub_password, secret_key=secrets.token_urlsafe(32),
        http_port=port, detector_model="blazeface-full-onnx",
    )
    service = HubService(settings)
    service.open_store()
    try:
        _, credentials = service.provision_device(DEVICE, "demo")
    except HubError:
        broker.stop()
        raise
    token = new_token()
    service.store.add_token(name="demo-admin", role="admin",
                            token_hash=hash_token(settings.secret_key, token))
    service.store.close()

    server = uvicorn.Server(uvicorn.Config(create_app(service), host="127.0.0.1", port=port,
                                           log_level="warning"))
    web = threading.Thread(target=server.run, name="http", daemon=True)
    web.start()
    deadline = time.monotonic() + 120
    while not service.ready and time.monotonic() < deadline and web.is_alive():
        time.sleep(0.2)
    if not service.ready:
        broker.stop()
        raise HubError("the hub did not start; run with -v for details")

    agent_config = folder / "agent.toml"
    agent_config.write_text(
        f'state_dir = "{folder / "agent"}"\n[device]\nid = "{DEVICE}"\ngroup = "demo"\n'
        f'[mqtt]\nport = {broker.port}\nusername = "{DEVICE}"\n'
        '[policy]\nconfident_score = 0.9\nmax_escalations_per_minute = 120\n'
        'audit_sample_rate = 0.05\n[fallback]\nverdict_timeout_s = 5\n'
        '[[sources]]\nname = "yard"\nkind = "sample"\nmodel = "blazeface-short"\n'
        f'max_fps = 15.0\nloop = {"true" if loop else "false"}\n'
    )
    binary = Path(sys.executable).parent
    subprocess.run([str(binary / "edge-agent"), "models", "pull", "blazeface-short"],
                   check=True, stdout=subprocess.DEVNULL)
    agent = subprocess.Popen(
        [str(binary / "edge-agent"), "run", "--config", str(agent_config)],
        env={**os.environ, "EDGE_AGENT_MQTT_PASSWORD": credentials.password},
    )
    base = f"http://127.0.0.1:{port}"
    print(f"broker:    mqtt://127.0.0.1:{broker.port} (config and dynamic security state "
          f"in {broker.folder})")
    print(f"dashboard: {base}/dashboard/login?token={token}")
    print(f"API:       {base}/docs   (Authorization: Bearer {token})")
    print(f"agent:     {DEVICE} over the sample footage; config {agent_config}")
    print("Ctrl-C stops everything.")
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set()) if in_main else None
    try:
        shown = -1
        while not stop.wait(2.0):
            counts = service.store.event_counts(since=0)["by_outcome"]
            total = sum(counts.values())
            if total != shown:
                shown = total
                print(f"escalations {total}: " + ", ".join(
                    f"{n} {k}" for k, n in sorted(counts.items())), flush=True)
    finally:
        if in_main:
            signal.signal(signal.SIGINT, previous)
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(30)
        except subprocess.TimeoutExpired:
            agent.kill()
        server.should_exit = True
        web.join(30)
        broker.stop()
        print("stopped")
    return 0
