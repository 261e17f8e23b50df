"""Installing a verified model on the device: two slots, a smoke test, a health window.

Layout under ``root`` (the agent's state directory)::

    models/<name>/slots/<version>/   one bundle per slot (the serving and the staged one)
    models/<name>/active             the serving version (replaced atomically)
    models/<name>/install.json       the last InstallRecord (replaced atomically)

Staging unpacks the verified archive into its own slot and verifies the bundle again. The
smoke test runs the model's golden input (a deterministic tensor made from its own input
spec) and compares the outputs with the values signed at publish time. The swap replaces
``active`` with a rename, so every reader sees the old or the new version, never neither.
The previous slot is deleted only at commit; a rollback points ``active`` back at it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from edge_agent.errors import EdgeAgentError, InstallError
from models import Model, ModelBundle, ModelError, open_bundle, smoke_test
from sync import SyncError, check_name
from sync.install import (
    HealthLimits,
    HealthStats,
    InstallRecord,
    Step,
    advance,
    judge_health,
    resume_action,
)

log = logging.getLogger(__name__)

BundleLoader = Callable[[ModelBundle], Model]


class ModelInstaller:
    """Stages, tests, swaps and commits (or rolls back) model versions for one device.

    Args:
        root: The agent's state directory.
        loader: Loads a bundle on the device's backend (the hardware plan in production).
        clock: Unix time for the record's history.
    """

    def __init__(self, root: Path, loader: BundleLoader, *,
                 clock: Callable[[], float] = time.time,
                 limits: HealthLimits | None = None) -> None:
        self.root = root / "models"
        self.loader = loader
        self.clock = clock
        self.limits = limits or HealthLimits()

    # -- reading state ---------------------------------------------------------------

    def _folder(self, name: str) -> Path:
        return self.root / _path_part(name, "model name")

    def slot(self, name: str, version: str) -> Path:
        """The folder of one version's bundle.

        Raises:
            InstallError: The name or version is not one plain folder name.
        """
        return self._folder(name) / "slots" / _path_part(version, "model version")

    def active_version(self, name: str) -> str | None:
        """The serving version, if any."""
        pointer = self._folder(name) / "active"
        return pointer.read_text().strip() if pointer.exists() else None

    def active_bundle(self, name: str) -> ModelBundle:
        """The serving bundle, verified.

        Raises:
            InstallError: Nothing is installed.
        """
        version = self.active_version(name)
        if version is None:
            raise InstallError(f"no version of {name} is installed")
        return open_bundle(self.slot(name, version))

    def record(self, name: str) -> InstallRecord | None:
        """The last install record of ``name``."""
        path = self._folder(name) / "install.json"
        if not path.exists():
            return None
        try:
            return InstallRecord.from_dict(json.loads(path.read_text()))
        except (json.JSONDecodeError, SyncError) as exc:
            raise InstallError(f"{path}: unreadable install record: {exc}") from exc

    # -- steps -----------------------------------------------------------------------

    def seed(self, bundle: ModelBundle) -> None:
        """Install a first version directly (provisioning), with no health window."""
        name, version = bundle.manifest.name, bundle.manifest.version
        self._copy_bundle(bundle.root, self.slot(name, version))
        self._point(name, version)

    def begin(self, name: str, candidate: str) -> InstallRecord:
        """Start installing ``candidate`` over the serving version."""
        record = InstallRecord(name, self.active_version(name), candidate,
                               history=((Step.IDLE.value, self.clock()),))
        self._save(record)
        return record

    def refuse(self, record: InstallRecord, reason: str) -> InstallRecord:
        """Record that the update was refused before anything changed."""
        return self._step(record, Step.REFUSED, reason)

    def stage(self, record: InstallRecord, archive: Path) -> InstallRecord:
        """Unpack a verified archive into the candidate's slot and verify the bundle."""
        record = self._step(record, Step.VERIFIED) if record.step == Step.IDLE else record
        slot = self.slot(record.model, record.candidate)
        staging = slot.with_name(f".{slot.name}.staging")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            with zipfile.ZipFile(archive) as bundle_zip:
                for member in bundle_zip.namelist():
                    (staging / Path(member).name).write_bytes(bundle_zip.read(member))
            bundle = open_bundle(staging)
            if (bundle.manifest.name, bundle.manifest.version) != (record.model,
                                                                    record.candidate):
                raise InstallError(f"archive holds {bundle.label}, not "
                                   f"{record.model}@{record.candidate}")
        except (zipfile.BadZipFile, ModelError, InstallError) as exc:
            shutil.rmtree(staging, ignore_errors=True)
            self._step(record, Step.ROLLED_BACK, f"staging failed: {exc}")
            raise InstallError(f"staging {record.model} {record.candidate} failed: {exc}") from exc
        shutil.rmtree(slot, ignore_errors=True)
        staging.rename(slot)
        return self._step(record, Step.STAGED)

    def smoke(self, record: InstallRecord, golden: Mapping[str, Sequence[float]]
              ) -> tuple[InstallRecord, Model | None]:
        """Load the staged model and check its golden outputs; roll back if they differ."""
        try:
            model = self.loader(open_bundle(self.slot(record.model, record.candidate)))
        except (ModelError, EdgeAgentError) as exc:
            return self._rollback(record, f"cannot load the new model: {exc}"), None
        problem = smoke_test(model, golden)
        if problem is not None:
            model.close()
            return self._rollback(record, f"smoke test failed: {problem}"), None
        return self._step(record, Step.SMOKE_PASSED), model

    def swap(self, record: InstallRecord) -> InstallRecord:
        """Make the candidate the serving version (one rename)."""
        self._point(record.model, record.candidate)
        return self._step(record, Step.ACTIVE)

    def conclude(self, record: InstallRecord, new: HealthStats, baseline: HealthStats | None,
                 *, limits: HealthLimits | None = None,
                 window_closed: bool = False) -> InstallRecord:
        """Judge the health window: commit, roll back, or keep watching (unchanged).

        Args:
            limits: The device's limits (else the installer's own).
            window_closed: The window's time is up: decide now (see :func:`judge_health`).
        """
        verdict, reason = judge_health(new, baseline, limits or self.limits,
                                       window_closed=window_closed)
        if verdict == "undecided":
            return record
        if verdict == "degraded":
            return self._rollback(record, f"health window: {reason}")
        committed = self._step(record, Step.COMMITTED, reason)
        if record.previous and record.previous != record.candidate:
            shutil.rmtree(self.slot(record.model, record.previous), ignore_errors=True)
        return committed

    def resume(self, name: str) -> str:
        """After a restart: make the serving version consistent with the last record, and
        say what is left to do (see :func:`sync.install.resume_action`)."""
        record = self.record(name)
        if record is None:
            return "none"
        action = resume_action(record)
        if action in ("verify", "stage", "smoke-test", "swap"):
            # Nothing the new version did is trusted yet: serve the previous one and
            # start the install again from its verified download.
            if record.previous is not None:
                self._point(name, record.previous)
        elif action == "watch" and self.active_version(name) != record.candidate:
            self._rollback(record, "a rollback was under way when the agent stopped")
            return "none"
        return action

    # -- helpers ---------------------------------------------------------------------

    def _rollback(self, record: InstallRecord, reason: str) -> InstallRecord:
        if record.previous is not None:
            self._point(record.model, record.previous)
        log.warning("%s %s rolled back: %s", record.model, record.candidate, reason)
        rolled = self._step(record, Step.ROLLED_BACK, reason)
        if record.previous != record.candidate:
            shutil.rmtree(self.slot(record.model, record.candidate), ignore_errors=True)
        return rolled

    def _step(self, record: InstallRecord, step: Step, reason: str = "") -> InstallRecord:
        updated = advance(record, step, at=self.clock(), reason=reason)
        self._save(updated)
        return updated

    def _save(self, record: InstallRecord) -> None:
        _atomic_write(self._folder(record.model) / "install.json",
                      json.dumps(record.to_dict(), indent=2).encode())

    def _point(self, name: str, version: str) -> None:
        _atomic_write(self._folder(name) / "active", version.encode())

    @staticmethod
    def _copy_bundle(source: Path, slot: Path) -> None:
        staging = slot.with_name(f".{slot.name}.staging")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(source, staging)
        shutil.rmtree(slot, ignore_errors=True)
        staging.rename(slot)


def _path_part(value: str, what: str) -> str:
    """``value`` if it names one folder inside its parent (no separator, not ``..``)."""
    try:
        return check_name(value, what)
    except SyncError as exc:
        raise InstallError(str(exc)) from exc


def _atomic_write(path: Path, data: bytes) -> None:
    """Write via a temporary file, fsync, rename, fsync the folder: old or new, never torn."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    with partial.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    partial.replace(path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
