"""What a device install costs: disk, memory and the time to the first inference.

* ``install_mb``: the size on disk of a fresh virtual environment with the agent alone
  installed (``pip install .``, no extras: no web stack), or of ``--venv DIR``.
* ``rss_mb``: the agent's resident memory (the largest ``VmRSS`` sampled every 0.5 s)
  while it runs one camera for ``--seconds``: the sample footage, written here to an
  MJPEG video that the agent decodes as it would a camera's stream, looped at ``--fps``
  (so the agent-only install needs no scikit-image), with its broker up (a private
  Mosquitto) and its metrics served.
* ``cold_start_s``: from starting ``edge-agent run`` to its first inference (its
  ``edge_inferences_total`` polled every 10 ms: the figure is good to about 10 ms).

Baseline in the same run, from the same environment: a bare Python process that loads
the same model with LiteRT and invokes it in a loop at the same rate for as long
(``baseline_rss_mb``, ``baseline_cold_start_s``): the runtime's own floor, so that the
agent's share shows.

Last line: JSON with ``install_mb``, ``rss_mb`` and ``cold_start_s`` (issue 12's targets:
install <= 400 MB, RSS <= 150 MB), the largest folders of the install (``largest_mb``),
the baselines and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import cv2

from cloud_hub.mosquitto import MosquittoBroker, free_port
from edge_agent.footage import SampleFootage
from models import ModelStore, ModelZoo

ROOT = Path(__file__).resolve().parent.parent
MODEL = "blazeface-short"
SOURCE = "camera"
INFERENCES = re.compile(r'^edge_inferences_total\{source="camera"\} ([0-9.e+]+)$', re.M)

BARE_LITERT = """
import sys, time
import numpy as np
from ai_edge_litert.interpreter import Interpreter
interpreter = Interpreter(model_path=sys.argv[1], num_threads=1)
interpreter.allocate_tensors()
detail = interpreter.get_input_details()[0]
frame = np.zeros(detail["shape"], dtype=detail["dtype"])
period, end = 1.0 / float(sys.argv[2]), None
while True:
    interpreter.set_tensor(detail["index"], frame)
    interpreter.invoke()
    if end is None:
        print("first", flush=True)
        end = time.monotonic() + float(sys.argv[3])
    if time.monotonic() > end:
        break
    time.sleep(period)
print("done", flush=True)
"""


def _size_mb(folder: Path) -> float:
    """Bytes of every regular file under ``folder`` (links not followed), in MB (10^6)."""
    total = 0
    for directory, _, files in os.walk(folder):
        for name in files:
            path = Path(directory) / name
            if not path.is_symlink():
                total += path.stat().st_size
    return total / 1e6


def _largest(venv: Path, count: int = 6) -> dict[str, float]:
    """The ``count`` largest folders of the venv's site-packages, in MB."""
    sizes = {entry.name: _size_mb(entry) for site in venv.glob("lib/python*/site-packages")
             for entry in site.iterdir() if entry.is_dir()}
    return {name: round(size, 1) for name, size in
            sorted(sizes.items(), key=lambda item: -item[1])[:count]}


def _no_deps() -> list[str]:
    """What every agent install adds with ``--no-deps`` (the Makefile's AGENT_NO_DEPS)."""
    found = re.search(r"^AGENT_NO_DEPS := (.+)$", (ROOT / "Makefile").read_text(), re.M)
    if found is None:
        raise RuntimeError("the Makefile names no AGENT_NO_DEPS")
    return found.group(1).split()


def _agent_venv(folder: Path) -> Path:
    """A fresh venv with the agent alone (the project without extras), as a device has it:
    the project, then the tracker's packages with ``--no-deps``."""
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
    pip = [str(folder / "bin" / "python"), "-m", "pip", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "install", str(ROOT)], check=True)
    subprocess.run([*pip, "install", "--no-deps", *_no_deps()], check=True)
    return folder


def _rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _watch(process: subprocess.Popen[bytes], seconds: float) -> float:
    """The largest resident memory of ``process`` over ``seconds``, sampled every 0.5 s."""
    peak = 0.0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None:
        peak = max(peak, _rss_mb(process.pid) or 0.0)
        time.sleep(0.5)
    if process.poll() is not None:
        raise RuntimeError(f"the process exited early with status {process.returncode}")
    return peak


def _inferences(port: int) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as page:
            found = INFERENCES.search(page.read().decode())
    except (urllib.error.URLError, OSError):
        return 0.0
    return float(found.group(1)) if found else 0.0


def _write_config(folder: Path, store: Path, video: Path, broker_port: int,
                  metrics_port: int, fps: float) -> Path:
    config = folder / "agent.toml"
    config.write_text(
        f'state_dir = "{folder / "state"}"\nmodel_store = "{store}"\n'
        '[device]\nid = "footprint"\n'
        f"[mqtt]\nport = {broker_port}\n"
        f'[metrics]\nport = {metrics_port}\n'
        f'[[sources]]\nname = "{SOURCE}"\nkind = "video"\nurl = "{video}"\n'
        f'model = "{MODEL}"\nloop = true\nmax_fps = {fps}\n')
    return config


def _write_footage(path: Path, fps: float) -> Path:
    """The sample footage as an MJPEG AVI, a camera's stream stand-in."""
    footage = SampleFootage()
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps,
                             (footage.width, footage.height))
    for frame in footage.frames():
        writer.write(cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def _measure_agent(venv: Path, folder: Path, store: Path, fps: float, seconds: float,
                   env: dict[str, str]) -> dict[str, float]:
    video = _write_footage(folder / "camera.avi", fps)
    broker = MosquittoBroker(folder / "broker")
    broker.start()
    metrics_port = free_port()
    config = _write_config(folder, store, video, broker.port, metrics_port, fps)
    started = time.monotonic()
    agent = subprocess.Popen([str(venv / "bin" / "edge-agent"), "run", "--config", str(config)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        while _inferences(metrics_port) < 1:
            if agent.poll() is not None:
                error = agent.stderr.read().decode() if agent.stderr else ""
                raise RuntimeError(f"the agent exited with {agent.returncode}: {error[-2000:]}")
            if time.monotonic() - started > 120:
                raise RuntimeError("no inference within 120 s")
            time.sleep(0.01)
        cold_start = time.monotonic() - started
        peak = _watch(agent, seconds)
        return {"rss_mb": round(peak, 1), "cold_start_s": round(cold_start, 3),
                "inferences": _inferences(metrics_port)}
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(30)
        except subprocess.TimeoutExpired:
            agent.kill()
        broker.stop()


def _measure_bare(venv: Path, model_file: Path, fps: float, seconds: float,
                  env: dict[str, str]) -> dict[str, float]:
    started = time.monotonic()
    bare = subprocess.Popen([str(venv / "bin" / "python"), "-c", BARE_LITERT, str(model_file),
                             str(fps), str(seconds)], stdout=subprocess.PIPE, env=env)
    assert bare.stdout is not None
    if bare.stdout.readline().strip() != b"first":
        raise RuntimeError("the bare LiteRT loop did not start")
    cold_start = time.monotonic() - started
    try:
        peak = _watch(bare, seconds - 0.5)
    finally:
        bare.wait(30)
    return {"baseline_rss_mb": round(peak, 1), "baseline_cold_start_s": round(cold_start, 3)}


def main(argv: list[str]) -> int:
    """Measure and print; the last line is JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench footprint")
    parser.add_argument("--venv", type=Path, default=None,
                        help="measure this venv (it must have edge-agent) instead of "
                        "building an agent-only one (which needs PyPI or pip's cache)")
    parser.add_argument("--seconds", type=float, default=20.0,
                        help="how long each process runs while its memory is sampled")
    parser.add_argument("--fps", type=float, default=15.0, help="the camera's frame rate")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-footprint-") as tmp:
        folder = Path(tmp)
        env = dict(os.environ)
        if args.venv is None:
            print("building an agent-only venv (pip install ., no extras) ...", flush=True)
            venv = _agent_venv(folder / "venv")
            env.pop("PYTHONPATH", None)  # the venv's own copy of the agent, nothing else
        else:
            venv = args.venv.resolve()
        install_mb = _size_mb(venv)
        largest = _largest(venv)
        print(f"install: {install_mb:.0f} MB in {venv}; largest: {largest}", flush=True)
        store = ModelStore(folder / "store")
        bundle = ModelZoo(store).ensure(MODEL)
        agent = _measure_agent(venv, folder, store.root, args.fps, args.seconds, env)
        print(f"agent: {agent['rss_mb']} MB resident at most, first inference after "
              f"{agent['cold_start_s']} s", flush=True)
        bare = _measure_bare(venv, bundle.model_path, args.fps, args.seconds, env)
        print(f"bare LiteRT: {bare['baseline_rss_mb']} MB resident at most, first inference "
              f"after {bare['baseline_cold_start_s']} s", flush=True)
    result: dict[str, Any] = {
        "benchmark": "footprint", "install_mb": round(install_mb, 1),
        "venv": "agent-only, built" if args.venv is None else str(args.venv),
        "largest_mb": largest,
        **agent, **bare, "model": MODEL, "fps": args.fps, "seconds": args.seconds,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
    }
    print(json.dumps(result))
    return 0
