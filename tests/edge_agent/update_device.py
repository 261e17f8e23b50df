"""A device's real update path in the test process: TUF client, installer and updater."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from edge_agent.config import UpdatesConfig
from edge_agent.updates import (
    DeviceFit,
    ModelHealth,
    ModelInstaller,
    UpdateClient,
    Updater,
    utc_now,
)
from models import Model, ModelBundle
from sync import ModelAnnouncement, UpdateReport
from sync.install import InstallRecord
from tests.edge_agent.install_driver import load

X86_TFLITE = DeviceFit(runtimes=frozenset({"tflite"}), hardware=frozenset({"x86_64"}))


class UpdatingDevice:
    """The device's update client (python-tuf), installer (slots, smoke test) and updater,
    seeded with ``seed`` under ``folder``. The health window sees a steady model: these
    tests are about what reaches the device, not about the health gate.

    Args:
        url: The repository (``.../tuf``).
        trusted_root: The provisioned ``1.root.json``.
        clock: The device's clock for metadata expiry.
    """

    def __init__(self, folder: Path, url: str, trusted_root: bytes, seed: ModelBundle, *,
                 fit: DeviceFit = X86_TFLITE,
                 clock: Callable[[], datetime] = utc_now) -> None:
        self.installer = ModelInstaller(folder / "state", load)
        self.installer.seed(seed)
        self.client = UpdateClient(folder / "tuf", url, trusted_root=trusted_root, clock=clock)
        self.reports: list[UpdateReport] = []
        self._models: list[Model] = []
        steady = ModelHealth(inferences=100)
        steady.latencies.extend([0.002] * 100)
        self.updater = Updater(
            device_id="cam-1", config=UpdatesConfig(health_inferences=50),
            installer=self.installer, client=self.client, fit=fit, swap=self._swap,
            health=lambda name: steady, report=self.reports.append)

    def _swap(self, name: str, model: Model) -> Model | None:
        self._models.append(model)
        return None

    def install(self, model: str, version: str) -> InstallRecord | None:
        """Act on an announcement of ``model`` ``version``, as the updater thread does."""
        return self.updater.install(ModelAnnouncement(
            rollout_id="r-test", group="site-a", model=model, version=version,
            target=f"models/{model}/{model}-{version}.zip", at=time.time()))

    def close(self) -> None:
        """Close the models the installs loaded."""
        for model in self._models:
            model.close()
