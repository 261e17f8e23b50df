"""Runs a model install in its own process and kills itself (SIGKILL) right after a step
is persisted: ``python -m tests.edge_agent.install_driver ROOT ARCHIVE GOLDEN STEP``."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

from edge_agent.updates import ModelInstaller
from models import BackendSpec, Model, ModelBundle, create_backend
from sync.install import HealthStats, InstallRecord


def load(bundle: ModelBundle) -> Model:
    """The device's loader: LiteRT on the CPU."""
    backend = create_backend(bundle, BackendSpec("litert", "xnnpack"))
    backend.load()
    return Model(bundle, backend)


class CrashingInstaller(ModelInstaller):
    """Dies the moment the chosen step has been written to disk."""

    def __init__(self, root: Path, crash_at: str) -> None:
        super().__init__(root, load)
        self.crash_at = crash_at

    def _save(self, record: InstallRecord) -> None:
        super()._save(record)
        if record.step.value == self.crash_at:
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> int:
    root, archive, golden_file, crash_at = sys.argv[1:5]
    golden = json.loads(Path(golden_file).read_text())
    installer = CrashingInstaller(Path(root), crash_at)
    record = installer.begin("blazeface-short", "1.1.0")
    record = installer.stage(record, Path(archive))
    record, model = installer.smoke(record, golden)
    assert model is not None
    record = installer.swap(record)
    healthy = HealthStats(inferences=100, errors=0, median_latency_s=0.002, escalations=5)
    installer.conclude(record, healthy, healthy)
    return 0


if __name__ == "__main__":
    sys.exit(main())
