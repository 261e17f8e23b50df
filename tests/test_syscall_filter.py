"""The units' syscall filter does not kill the runtimes (issue 12: a filter that LiteRT
and ONNX Runtime survive, proved by running the agent under it).

systemd is not PID 1 here, so ``systemd-run`` cannot start the unit; instead the unit's
own ``SystemCallFilter=`` lines are rebuilt as systemd builds them and loaded with
libseccomp before the agent is ``exec``ed (:mod:`tests.support.seccomp`), with the same
action, SIGSYS. ``systemd-analyze verify`` checks the unit itself
(tests/test_system_service.py).

One difference, on purpose: these tests run as root (the interpreter lives in root's
home, which no other user can reach), and SQLite, when it runs as root, hands its WAL
and shared-memory files to the database file's owner with ``fchown`` (``@chown``, part of
``@privileged``). The service runs as its own user, where SQLite never calls it, so the
tests add ``@chown`` and nothing else.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from cloud_hub.system_service import hub_service
from edge_agent.system_service import agent_service
from models import ModelStore
from tests.broker import Collector, MosquittoBroker
from tests.edge_agent.agent_helpers import write_config
from tests.support.seccomp import expand, filtered_command, unit_allowed_syscalls


def _has_libseccomp() -> bool:
    try:
        import pyseccomp  # noqa: F401
    except (ImportError, OSError):
        return False
    return True


pytestmark = [pytest.mark.integration, pytest.mark.skipif(
    not _has_libseccomp(), reason="pyseccomp or libseccomp.so.2 is missing")]

BIN = Path(sys.executable).parent
AS_ROOT_ONLY = expand("@chown")  # see the module docstring
UNITS = {"edge-agent": agent_service(program=BIN / "edge-agent").unit,
         "cloud-hub": hub_service(program=BIN / "cloud-hub").unit}


def allowed_by(unit: str) -> frozenset[str]:
    return unit_allowed_syscalls(unit) | AS_ROOT_ONLY


def run_filtered(allowed: frozenset[str], folder: Path, command: list[str],
                 **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(filtered_command(allowed, folder, command), capture_output=True,
                          text=True, timeout=180, check=False,
                          env={**os.environ, "HOME": str(folder), **env})


def infer(model: str, backend: str, image: Path) -> list[str]:
    return [str(BIN / "python"), "-m", "edge_agent", "infer", model, str(image),
            "--backend", backend, "--json"]


@pytest.fixture
def photo(tmp_path: Path, astronaut: npt.NDArray[np.uint8]) -> Path:
    path = tmp_path / "astronaut.jpg"
    cv2.imwrite(str(path), cv2.cvtColor(astronaut, cv2.COLOR_RGB2BGR))
    return path


def test_the_filter_kills_what_it_leaves_out(tmp_path: Path) -> None:
    """The harness bites: a call outside the unit's list (chown) kills with SIGSYS."""
    allowed = unit_allowed_syscalls(UNITS["edge-agent"])
    assert "chown" not in allowed and "mbind" in allowed and "read" in allowed
    result = run_filtered(allowed, tmp_path, [sys.executable, "-c",
                          f"import os; os.chown({str(tmp_path)!r}, 0, 0)"])
    assert result.returncode == -signal.SIGSYS, result.stderr


@pytest.mark.parametrize("unit", sorted(UNITS))
@pytest.mark.parametrize(("model", "backend"), [("blazeface-short", "litert"),
                                                ("blazeface-short-onnx", "onnxruntime:cpu")])
def test_runtimes_infer_under_the_units_filter(
    tmp_path: Path, zoo_store: ModelStore, photo: Path, unit: str, model: str, backend: str,
) -> None:
    result = run_filtered(allowed_by(UNITS[unit]), tmp_path, infer(model, backend, photo),
                          EDGE_AGENT_MODEL_STORE=str(zoo_store.root))
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    answer = json.loads(result.stdout)
    assert answer["detections"], answer


def test_without_the_two_resource_calls_onnx_runtime_dies(
    tmp_path: Path, zoo_store: ModelStore, photo: Path,
) -> None:
    """Why the unit gives mbind and sched_setaffinity back: without them, the plain
    ``~@privileged @resources`` filter kills ONNX Runtime's inference."""
    plain = allowed_by(UNITS["edge-agent"]) - {"mbind", "sched_setaffinity"}
    result = run_filtered(plain, tmp_path, infer("blazeface-short-onnx", "onnxruntime:cpu",
                                                 photo),
                          EDGE_AGENT_MODEL_STORE=str(zoo_store.root))
    assert result.returncode == -signal.SIGSYS, (result.returncode, result.stderr[-2000:])


def test_the_agent_runs_to_the_end_under_the_units_filter(
    tmp_path: Path, zoo_store: ModelStore, astronaut: npt.NDArray[np.uint8],
) -> None:
    """The whole agent: video decoding, the tracker, SQLite outbox, paho, its threads."""
    video = tmp_path / "door.avi"
    frame = cv2.cvtColor(astronaut, cv2.COLOR_RGB2BGR)
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter.fourcc(*"MJPG"), 10,
                             (frame.shape[1], frame.shape[0]))
    for _ in range(10):
        writer.write(frame)
    writer.release()
    broker = MosquittoBroker(tmp_path / "broker")
    broker.start()
    hub = Collector(broker.port, "fleet/v1/+/events")  # confirms what the agent sends
    try:
        config = write_config(tmp_path / "agent.toml", {
            "state_dir": tmp_path / "state", "model_store": zoo_store.root,
            "device": {"id": "cam-filtered"},
            "mqtt": {"port": broker.port, "reconnect_min_s": 0.1, "reconnect_max_s": 0.5},
            "sources": [{"name": "door", "kind": "video", "url": video,
                         "model": "blazeface-short", "motion": {"enabled": False}}],
        })
        result = run_filtered(allowed_by(UNITS["edge-agent"]), tmp_path, [
            str(BIN / "python"), "-m", "edge_agent", "run", "--config", str(config),
            "--exit-when-done"])
    finally:
        hub.close()
        broker.stop()
    assert result.returncode == 0, (result.returncode, result.stderr[-3000:])
