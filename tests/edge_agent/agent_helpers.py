"""Running the edge agent in tests: configs, in-process runs, subprocess runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.agent import EdgeAgent, ModelLoader
from edge_agent.config import AgentConfig, SourceConfig, parse_config
from hardware import Selection, plan_backends, probe_hardware
from hardware.select import SkippedBackend
from models import BackendDescription, BackendSpec, FakeBackend, Model, ModelBundle

ROOT = Path(__file__).parent.parent.parent


def toml_value(value: Any) -> str:
    """A TOML literal for ``value`` (the subset these configs use)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)


def write_config(path: Path, raw: dict[str, Any]) -> Path:
    """Write ``raw`` (tables of scalars, and arrays of such tables) as TOML."""
    lines = [f"{k} = {toml_value(v)}" for k, v in raw.items() if not isinstance(v, dict | list)]
    for key, value in raw.items():
        if isinstance(value, dict):
            lines.append(f"\n[{key}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in value.items()]
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for table in value:
                lines.append(f"\n[[{key}]]")
                for k, v in table.items():
                    if isinstance(v, dict):
                        continue
                    lines.append(f"{k} = {toml_value(v)}")
                for k, v in table.items():
                    if isinstance(v, dict):
                        lines.append(f"[{key}.{k}]")
                        lines += [f"{kk} = {toml_value(vv)}" for kk, vv in v.items()]
    path.write_text("\n".join(lines) + "\n")
    tomllib.loads(path.read_text())  # what we wrote must parse
    return path


def agent_config(tmp_path: Path, port: int, store: Path, **sections: Any) -> dict[str, Any]:
    """A configuration dict for a sample-footage agent; ``sections`` override tables."""
    raw: dict[str, Any] = {
        "state_dir": tmp_path / "state",
        "model_store": store,
        "device": {"id": "cam-test"},
        "mqtt": {"port": port, "reconnect_min_s": 0.1, "reconnect_max_s": 0.5},
        "policy": {"confident_score": 0.95, "max_escalations_per_minute": 6000.0,
                   "escalation_burst": 1000, "audit_sample_rate": 0.0},
        "fallback": {"verdict_timeout_s": 2.0},
        "sources": [{"name": "yard", "kind": "sample", "model": "blazeface-short"}],
    }
    for key, value in sections.items():
        raw[key] = {**raw[key], **value} if isinstance(raw.get(key), dict) else value
    return raw


class AgentThread:
    """An :class:`EdgeAgent` running in a thread of the test process."""

    def __init__(self, config: AgentConfig | dict[str, Any], **kwargs: Any) -> None:
        self.config = config if isinstance(config, AgentConfig) else parse_config(
            config, environ={})
        self.agent = EdgeAgent(self.config, **kwargs)
        self.stop = threading.Event()
        self.exit_code: int | None = None
        self.error: BaseException | None = None
        self._exit_when_done = False
        self.thread = threading.Thread(target=self._main, name="agent-under-test")

    def _main(self) -> None:
        try:
            self.exit_code = self.agent.run(self.stop, exit_when_done=self._exit_when_done)
        except BaseException as exc:
            self.error = exc

    def start(self, *, exit_when_done: bool = False) -> AgentThread:
        self._exit_when_done = exit_when_done
        self.thread.start()
        return self

    def wait_until(self, predicate: Callable[[dict[str, Any]], bool],
                   timeout_s: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        snapshot: dict[str, Any] = {}
        while time.monotonic() < deadline:
            if self.error is not None:
                raise self.error
            if self.agent.uplink is not None:
                snapshot = self.agent.snapshot()
                if predicate(snapshot):
                    return snapshot
            time.sleep(0.05)
        raise AssertionError(f"condition not met; last snapshot: {snapshot}")

    def finish(self, timeout_s: float = 60) -> int | None:
        self.stop.set()
        self.thread.join(timeout_s)
        if self.error is not None:
            raise self.error
        return self.exit_code


def agent_process(config_path: Path, *args: str,
                  stderr_to: Path | None = None) -> subprocess.Popen[bytes]:
    """``edge-agent run`` as a real process.

    Its stderr is a pipe for the caller to read (``communicate``), or with ``stderr_to``
    a file: an agent left running for long while nobody reads the pipe would block on
    its own logging once the pipe's 64 KiB are full.
    """
    if stderr_to is None:
        return subprocess.Popen(
            [sys.executable, "-m", "edge_agent", "run", "--config", str(config_path), *args],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    with stderr_to.open("wb") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "edge_agent", "run", "--config", str(config_path), *args],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log_file,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def read_status(state_dir: Path) -> dict[str, Any]:
    """The agent's status file, or ``{}`` while it has none."""
    try:
        return dict(json.loads((state_dir / "status.json").read_text()))
    except (OSError, json.JSONDecodeError):
        return {}


def fake_model_loader(
    bundle: ModelBundle, name: str,
    handler: Callable[[npt.NDArray[np.generic]], dict[str, npt.NDArray[np.generic]]],
) -> ModelLoader:
    """A model loader that serves ``bundle`` through ``handler`` on a fake backend
    ``fake:<name>`` (a hanging or crashing accelerator, say)."""

    def loader(source: SourceConfig) -> tuple[Model, Selection]:
        backend = FakeBackend(bundle, BackendSpec("fake", name), handler)
        backend.load()
        plan = plan_backends(probe_hardware(), bundle.manifest)
        description = BackendDescription(f"fake:{name}", "fake", name, "0")
        return Model(bundle, backend), Selection(f"fake:{name}", description,
                                                 (SkippedBackend("none", "test"),), plan)

    return loader
