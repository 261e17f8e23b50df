"""The agent on arm64, end to end against an x86 hub: what a Raspberry Pi would run.

The root (``EDGE_ARM64_ROOT``) is an arm64 Debian with the agent-only wheel built from
this checkout installed in ``/opt/edge-agent``, run under qemu-user by
``packaging/arm64/emulated-root exec``. It shares the host's network, so the broker and
the hub started here on 127.0.0.1 are the device's hub. Each test prints what the
emulated device reported (``arm64 ...`` lines), which is the target's evidence.
"""

from __future__ import annotations

import json
import os
import platform
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import pytest
from skimage import data

from edge_agent.footage import SampleFootage
from hardware import load_model, plan_backends, probe_hardware
from models import ModelStore, ModelZoo, iou
from tests.broker import MosquittoBroker, free_port

pytestmark = pytest.mark.e2e

CHECKOUT = Path(__file__).parent.parent.parent
EMULATED_ROOT = CHECKOUT / "packaging" / "arm64" / "emulated-root"
STORE = "/var/lib/edge-agent/models"
DEVICE = "arm-cam-01"
HUB_LIBRARIES = ("fastapi", "sqlalchemy", "uvicorn", "psycopg", "pydantic-settings",
                 "starlette")
X86_ONLY = ("openvino", "avx", "sse", "vnni")
# The first time the astronaut walks through the sample footage, from a still frame.
STRETCH = range(19, 40)


class EmulatedDevice:
    """Runs commands inside the arm64 root, under qemu-user."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, inside: str) -> Path:
        """The host path of ``inside`` (an absolute path in the root)."""
        return self.root / inside.lstrip("/")

    def command(self, *args: str, env: dict[str, str] | None = None) -> list[str]:
        """The host command line that runs ``args`` in the root."""
        assignments = [f"{k}={v}" for k, v in (env or {}).items()]
        return [str(EMULATED_ROOT), "exec", str(self.root), *assignments, *args]

    def run(self, *args: str, env: dict[str, str] | None = None, timeout_s: float = 300,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run to the end; with ``check``, fail the test with its output when it fails."""
        result = subprocess.run(self.command(*args, env=env), capture_output=True, text=True,
                                timeout=timeout_s, check=False)
        assert result.returncode == 0 or not check, (
            f"{' '.join(args)} exited {result.returncode} in the arm64 root:\n"
            f"{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
        )
        return result

    def agent(self, *args: str, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
        """``edge-agent --store STORE ARGS`` in the root."""
        return self.run("/opt/edge-agent/bin/edge-agent", "--store", STORE, *args,
                        timeout_s=timeout_s)


@pytest.fixture(scope="module")
def device() -> EmulatedDevice:
    root = Path(os.environ["EDGE_ARM64_ROOT"])
    assert (root / "opt/edge-agent/bin/edge-agent").exists(), f"no agent installed in {root}"
    return EmulatedDevice(root)


def _write_rgb(path: Path, image: npt.NDArray[np.uint8]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))


def test_the_device_has_the_agent_alone(device: EmulatedDevice) -> None:
    installed = {}
    for metadata_file in device.path("/opt/edge-agent/lib").glob(
            "python3*/site-packages/*.dist-info/METADATA"):
        fields = dict(line.split(": ", 1) for line in metadata_file.read_text(
            errors="replace").split("\n\n", 1)[0].splitlines() if ": " in line)
        installed[fields["Name"].lower()] = fields["Version"]
    print(f"\narm64 install: edge-cloud-runtime {installed.get('edge-cloud-runtime')} with "
          f"{len(installed)} distributions in /opt/edge-agent")
    assert "edge-cloud-runtime" in installed
    assert not [name for name in HUB_LIBRARIES if name in installed]
    hub = device.run("/opt/edge-agent/bin/cloud-hub", "--help", check=False)
    assert hub.returncode == 1 and "pip install 'edge-cloud-runtime[hub]'" in hub.stderr


def test_doctor_reports_aarch64_and_an_arm_plan(device: EmulatedDevice) -> None:
    report = json.loads(device.agent("doctor", "--json").stdout)
    hardware = report["hardware"]
    runtimes = hardware["runtimes"]
    plans = {plan["model"]: [c["backend"] for c in plan["candidates"]]
             for plan in report["plans"]}
    print(f"\narm64 doctor: architecture {hardware['architecture']} (emulated on "
          f"{hardware['emulated_on']}), {hardware['cpu_count']} cores; runtimes: tflite="
          f"{runtimes['tflite']}, onnxruntime={','.join(runtimes['onnxruntime_providers'])}; "
          + "; ".join(f"{model}: {' > '.join(names)}" for model, names in plans.items()))
    assert hardware["architecture"] == "aarch64"
    host = platform.machine()  # qemu shows the host's cpuinfo; the probe sees through it
    assert hardware["emulated_on"] == (None if host in ("aarch64", "arm64") else host)
    assert runtimes["tflite"] == "ai_edge_litert"
    assert runtimes["onnxruntime_providers"] == []  # ONNX Runtime is the `onnx` extra
    # The TFLite models run on LiteRT; ONNX models have no candidate, and doctor says why.
    assert plans["any tflite model"][-1] == "litert:cpu"
    assert plans["any onnx model"] == []
    onnx_plan = next(plan for plan in report["plans"] if plan["model"] == "any onnx model")
    assert any("onnxruntime is not installed" in excluded["reason"]
               for excluded in onnx_plan["excluded"]), onnx_plan
    text = json.dumps(report["plans"]).lower() + " ".join(hardware["cpu_features"])
    assert not [word for word in X86_ONLY if word in text], text


@pytest.fixture(scope="module")
def x86_detector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """BlazeFace short-range on this (x86) machine: the reference."""
    store = ModelStore(tmp_path_factory.mktemp("x86-store"))
    bundle = ModelZoo(store).pull("blazeface-short")
    model, _ = load_model(bundle, plan_backends(probe_hardware(), bundle.manifest))
    yield model
    model.close()


def test_pull_and_infer_match_x86(device: EmulatedDevice, x86_detector: Any) -> None:
    device.agent("models", "pull", "blazeface-short")
    astronaut, coffee = data.astronaut(), data.coffee()
    _write_rgb(device.path("/tmp/photos/astronaut.png"), astronaut)
    _write_rgb(device.path("/tmp/photos/coffee.png"), coffee)
    on_arm = json.loads(device.agent("infer", "blazeface-short", "/tmp/photos/astronaut.png",
                                     "--json").stdout)
    faces = on_arm["detections"]
    reference = x86_detector.detect(astronaut)
    assert len(faces) == 1 and len(reference) == 1, (faces, reference)
    box = tuple(faces[0]["box"])
    overlap = iou(box, reference[0].box)
    skipped = "; ".join(f"{s['backend']}: {s['reason']}" for s in on_arm["skipped"]) or "none"
    print(f"\narm64 infer astronaut: {faces[0]['label']} {faces[0]['score']:.5f} box "
          f"[{', '.join(f'{v:.1f}' for v in box)}] on {on_arm['backend']} (skipped: {skipped})"
          f"; x86 {reference[0].score:.5f} box "
          f"[{', '.join(f'{v:.1f}' for v in reference[0].box)}]; IoU {overlap:.4f}")
    assert overlap >= 0.9
    nothing = json.loads(device.agent("infer", "blazeface-short", "/tmp/photos/coffee.png",
                                      "--json").stdout)
    print(f"arm64 infer coffee: {len(nothing['detections'])} detection(s)")
    assert nothing["detections"] == []


class Hub:
    """A private Mosquitto (dynamic security: each device confined to its topics) and
    ``cloud-hub serve`` on this host; the device is provisioned with ``cloud-hub``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.broker = MosquittoBroker(folder / "broker", anonymous=False)
        self.broker.start()
        self.http_port = free_port()
        self.env = {
            **os.environ,
            "CLOUD_HUB_DATA_DIR": str(folder / "hub"),
            "CLOUD_HUB_MODEL_STORE": str(folder / "hub-models"),
            "CLOUD_HUB_SECRET_KEY": secrets.token_urlsafe(32),
            "CLOUD_HUB_HTTP_PORT": str(self.http_port),
            "CLOUD_HUB_MQTT_PORT": str(self.broker.port),
            "CLOUD_HUB_MQTT_USERNAME": self.broker.hub_username,
            "CLOUD_HUB_MQTT_PASSWORD": self.broker.hub_password,
            "CLOUD_HUB_BATCH_AUTOTUNE": "false",
        }
        added = json.loads(self.cli("devices", "add", DEVICE, "--group", "arm64", "--json"))
        self.device_password: str = added["password"]
        self.token = self.cli("tokens", "create", "arm64-test", "--role", "viewer").strip()
        self.process = subprocess.Popen(
            [str(Path(sys.executable).parent / "cloud-hub"), "serve"], env=self.env,
            stdout=subprocess.DEVNULL, stderr=(folder / "hub.log").open("wb"),
        )

    def cli(self, *args: str) -> str:
        """Run ``cloud-hub ARGS`` with this hub's settings; its stdout."""
        return subprocess.run([str(Path(sys.executable).parent / "cloud-hub"), *args],
                              env=self.env, capture_output=True, text=True, check=True,
                              timeout=120).stdout

    def get(self, path: str) -> Any:
        """GET an API path with the viewer token; the JSON body."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}",
                                         headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def wait_ready(self, timeout_s: float = 240) -> None:
        """Wait until ``/readyz`` answers (its models loaded, ingest subscribed)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process.poll() is None, (self.folder / "hub.log").read_text()[-3000:]
            try:
                self.get("/readyz")
                return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.5)
        raise AssertionError(f"the hub was not ready in {timeout_s:.0f} s")

    def close(self) -> None:
        """Stop the hub, then the broker."""
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.broker.stop()


@pytest.fixture(scope="module", autouse=True)
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    """Started first, so that it loads its models while the device works."""
    started = Hub(tmp_path_factory.mktemp("hub"))
    yield started
    started.close()


def _write_footage(path: Path) -> int:
    """A short stretch of the sample footage as an MJPEG video file; its frame count."""
    footage = SampleFootage()
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0,
                             (footage.width, footage.height))
    written = 0
    for frame in footage.frames():
        if frame.index in STRETCH:
            writer.write(cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR))
            written += 1
        elif frame.index > STRETCH.stop:
            break
    writer.release()
    return written


def _agent_config(hub: Hub) -> str:
    # Everything the detector is unsure of or sure of goes to the hub (confident only at
    # 0.99), each frame on its own (no verdict reuse), so the hub judges several events.
    return f"""
state_dir = "/var/lib/edge-agent/state"
[device]
id = "{DEVICE}"
group = "arm64"
[mqtt]
host = "127.0.0.1"
port = {hub.broker.port}
username = "{DEVICE}"
[policy]
confident_score = 0.99
uncertain_score = 0.5
max_escalations_per_minute = 600
escalation_burst = 40
audit_sample_rate = 0.0
verdict_reuse_s = 0
[fallback]
verdict_timeout_s = 120
[[sources]]
name = "yard"
kind = "video"
url = "/var/lib/edge-agent/footage.avi"
model = "blazeface-short"
[[actions]]
kind = "command"
on = ["verdict", "reconciled", "fallback"]
command = ["/bin/sh", "-c", "printf '%s\\n' \\"$EDGE_EVENT\\" >> /var/lib/edge-agent/heard.jsonl"]
"""


def test_run_escalates_to_the_x86_hub_and_gets_verdicts(device: EmulatedDevice,
                                                         hub: Hub) -> None:
    frames = _write_footage(device.path("/var/lib/edge-agent/footage.avi"))
    device.path("/etc/edge-agent").mkdir(parents=True, exist_ok=True)
    device.path("/etc/edge-agent/agent.toml").write_text(_agent_config(hub))
    device.path("/var/lib/edge-agent/heard.jsonl").unlink(missing_ok=True)
    # test_pull_and_infer_match_x86 pulled it (and proves the pull); pulled again only
    # when this test runs alone, since every emulated command costs seconds of imports.
    if not [entry for entry in ModelStore(device.path(STORE)).entries()
            if entry.name == "blazeface-short" and entry.bundle is not None]:
        device.agent("models", "pull", "blazeface-short")
    hub.wait_ready()
    started = time.monotonic()
    run = device.run(
        "/opt/edge-agent/bin/edge-agent", "-v", "--store", STORE, "run", "--config",
        "/etc/edge-agent/agent.toml", "--exit-when-done",
        env={"EDGE_AGENT_MQTT_PASSWORD": hub.device_password}, timeout_s=400,
    )
    serving = [line for line in run.stderr.splitlines() if "source yard:" in line]
    print(f"\narm64 run: {frames} frames in {time.monotonic() - started:.0f} s (emulated); "
          + " | ".join(line.split("INFO: ")[-1] for line in serving))
    heard_file = device.path("/var/lib/edge-agent/heard.jsonl")
    lines = heard_file.read_text().splitlines() if heard_file.exists() else []
    heard = [json.loads(line) for line in lines]
    status = json.loads(device.path("/var/lib/edge-agent/state/status.json").read_text())
    on_device = {event["event_id"]: event for event in heard}
    judged = {event["id"]: event for event in
              hub.get(f"/v1/events?device_id={DEVICE}&limit=200")["items"]}
    for event_id, event in sorted(judged.items()):
        back = on_device.get(event_id, {})
        print(f"arm64 escalation {event_id}: x86 hub verdict {event['outcome']} "
              f"({event['hub_model']}), on the device: {back.get('kind')} {back.get('outcome')}")
    print(f"arm64 agent: {status['escalations']} escalation(s) sent, {status['verdicts']} "
          f"verdict(s) received, {status['fallbacks']} local fallback(s)")
    assert judged, "the hub judged no escalation from the arm64 agent:\n" + run.stderr[-3000:]
    assert status["escalations"] == len(judged) <= status["verdicts"]
    assert status["fallbacks"] == 0
    assert set(on_device) == set(judged)
    assert all(event["kind"] in ("verdict", "reconciled") for event in heard), heard
    assert all(on_device[i]["outcome"] == judged[i]["outcome"] for i in judged)
    assert all(event["outcome"] in ("confirmed", "rejected") for event in judged.values())
