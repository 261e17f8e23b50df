"""The hub as a TUF repository of model bundles (python-tuf's Metadata API).

Roles and keys (Ed25519), each in its own file under the keys folder:

* ``root/`` (one or more keys, meant to live offline) signs ``root``;
* ``targets.pem`` (the publisher's key) signs ``targets``: which bundles exist, with
  their length, sha256 and custom metadata (name, version, runtime, task, hardware);
* ``snapshot.pem`` and ``timestamp.pem`` are the online keys: they only re-sign
  ``snapshot`` and ``timestamp``, which expire quickly so that a frozen mirror is noticed.

Metadata uses consistent snapshots: ``metadata/{version}.root.json``,
``metadata/{version}.snapshot.json``, ``metadata/{version}.targets.json``,
``metadata/timestamp.json``, and targets under ``targets/`` prefixed by their sha256.
A device trusts the ``root.json`` it was provisioned with; everything else it verifies.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

from cloud_hub.errors import UpdateRepositoryError
from models import (
    MANIFEST_FILENAME,
    BackendSpec,
    Golden,
    Model,
    ModelBundle,
    create_backend,
    golden_outputs,
)

EXPIRY = {"root": timedelta(days=365), "targets": timedelta(days=90),
          "snapshot": timedelta(days=7), "timestamp": timedelta(days=1)}
ONLINE_ROLES = ("snapshot", "timestamp")


def _write_key(path: Path, signer: CryptoSigner) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(signer.private_bytes)
    path.chmod(0o600)


def _read_key(path: Path) -> CryptoSigner:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise UpdateRepositoryError(f"{path}: cannot read the signing key: {exc}") from exc
    return CryptoSigner(key)


def bundle_archive(bundle: ModelBundle) -> bytes:
    """A bundle as one zip (manifest + model file), the unit that is signed and shipped."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(MANIFEST_FILENAME, bundle.manifest.to_json())
        archive.writestr(bundle.manifest.file.path, bundle.read_verified_model())
    return buffer.getvalue()


def golden_outputs_on_cpu(bundle: ModelBundle) -> Golden:
    """Golden outputs computed with the runtime's plain CPU kernels."""
    spec = BackendSpec("litert" if bundle.manifest.runtime == "tflite" else "onnxruntime",
                       "cpu")
    backend = create_backend(bundle, spec)
    backend.load()
    try:
        return golden_outputs(Model(bundle, backend))
    finally:
        backend.close()


def target_path(name: str, version: str) -> str:
    """Where a bundle version lives among the targets."""
    return f"models/{name}/{name}-{version}.zip"


class ModelRepository:
    """A TUF repository in ``folder`` (``metadata/``, ``targets/``), keys in ``keys``.

    Args:
        now: The time used for expiry dates; tests move it.
    """

    def __init__(self, folder: Path, keys: Path, *, now: datetime | None = None) -> None:
        self.folder = folder
        self.keys = keys
        self.metadata_dir = folder / "metadata"
        self.targets_dir = folder / "targets"
        self._now = now

    def now(self) -> datetime:
        """The repository's clock (UTC, whole seconds)."""
        return (self._now or datetime.now(UTC)).replace(microsecond=0)

    # -- set-up ----------------------------------------------------------------------

    def init(self, *, root_keys: int = 1, root_threshold: int = 1) -> None:
        """Create keys and version-1 metadata for every role.

        Raises:
            UpdateRepositoryError: The repository already exists.
        """
        if (self.metadata_dir / "1.root.json").exists():
            raise UpdateRepositoryError(f"{self.folder} already holds a repository")
        if not 1 <= root_threshold <= root_keys:
            raise UpdateRepositoryError("root_threshold must be between 1 and root_keys")
        signers = {"root": [CryptoSigner.generate_ed25519() for _ in range(root_keys)]}
        for role in ("targets", "snapshot", "timestamp"):
            signers[role] = [CryptoSigner.generate_ed25519()]
        for index, signer in enumerate(signers["root"]):
            _write_key(self.keys / "root" / f"root-{index}.pem", signer)
        for role in ("targets", "snapshot", "timestamp"):
            _write_key(self.keys / f"{role}.pem", signers[role][0])
        root = Root(expires=self.now() + EXPIRY["root"], consistent_snapshot=True)
        for role, role_signers in signers.items():
            for signer in role_signers:
                root.add_key(signer.public_key, role)
        root.roles["root"].threshold = root_threshold
        root_md = Metadata(root)
        for signer in signers["root"]:
            root_md.sign(signer, append=True)
        self._write(root_md, "1.root.json")
        self._write(root_md, "root.json")
        targets = Metadata(Targets(expires=self.now() + EXPIRY["targets"]))
        targets.sign(signers["targets"][0])
        self._write(targets, "1.targets.json")
        self._release(targets_version=1)

    # -- publishing ------------------------------------------------------------------

    def publish(self, bundle: ModelBundle, *, hardware: Iterable[str] = ("any",),
                golden: Golden | None = None) -> str:
        """Add a bundle version as a signed target, then re-sign snapshot and timestamp.

        Args:
            hardware: What the model is built for (``any``, ``x86_64``, ``edgetpu`` ...).
            golden: The model's golden outputs (:func:`models.golden_outputs`); computed on
                the CPU here when not given.

        Returns:
            The target path devices download.
        """
        if golden is None:
            golden = golden_outputs_on_cpu(bundle)
        manifest = bundle.manifest
        data = bundle_archive(bundle)
        path = target_path(manifest.name, manifest.version)
        custom: dict[str, Any] = {
            "name": manifest.name, "version": manifest.version, "runtime": manifest.runtime,
            "task": manifest.task, "hardware": sorted(set(hardware)),
            "accelerators": list(manifest.accelerators),
            # Canonical JSON (what is signed) has no floats: millionths, as integers.
            "golden_micro": {name: [round(v * 1_000_000) for v in values]
                             for name, values in golden.items()},
        }
        target = TargetFile.from_data(path, data, ["sha256"])
        target.unrecognized_fields = {"custom": custom}
        digest = target.hashes["sha256"]
        destination = self.targets_dir / Path(path).parent / f"{digest}.{Path(path).name}"
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_bytes(data)
        targets = self.load("targets")
        targets.signed.targets[path] = target
        targets.signed.version += 1
        targets.signed.expires = self.now() + EXPIRY["targets"]
        targets.signatures.clear()
        targets.sign(_read_key(self.keys / "targets.pem"))
        self._write(targets, f"{targets.signed.version}.targets.json")
        self._release(targets_version=targets.signed.version)
        return path

    def refresh(self) -> None:
        """Re-sign snapshot and timestamp with fresh expiry (run it well before they expire)."""
        self._release(targets_version=self.load("targets").signed.version)

    def _release(self, *, targets_version: int) -> None:
        try:
            previous = self.load("snapshot").signed.version
        except UpdateRepositoryError:
            previous = 0
        snapshot = Metadata(Snapshot(version=previous + 1,
                                     expires=self.now() + EXPIRY["snapshot"]))
        snapshot.signed.meta["targets.json"] = MetaFile(version=targets_version)
        snapshot.sign(_read_key(self.keys / "snapshot.pem"))
        self._write(snapshot, f"{snapshot.signed.version}.snapshot.json")
        try:
            timestamp_version = self.load("timestamp").signed.version + 1
        except UpdateRepositoryError:
            timestamp_version = 1
        timestamp = Metadata(Timestamp(version=timestamp_version,
                                       expires=self.now() + EXPIRY["timestamp"]))
        timestamp.signed.snapshot_meta = MetaFile(version=snapshot.signed.version)
        timestamp.sign(_read_key(self.keys / "timestamp.pem"))
        self._write(timestamp, "timestamp.json")

    # -- root rotation ---------------------------------------------------------------

    def rotate_root(self, *, new_root_keys: int = 1, new_threshold: int = 1) -> None:
        """Replace the root keys: the new root is signed by the old and the new keys, so
        that devices can verify it against both thresholds."""
        old = self.load("root")
        old_signers = [_read_key(p) for p in sorted((self.keys / "root").glob("*.pem"))]
        new_signers = [CryptoSigner.generate_ed25519() for _ in range(new_root_keys)]
        root = old.signed
        for keyid in list(root.roles["root"].keyids):
            root.revoke_key(keyid, "root")
        for signer in new_signers:
            root.add_key(signer.public_key, "root")
        root.roles["root"].threshold = new_threshold
        root.version += 1
        root.expires = self.now() + EXPIRY["root"]
        rotated = Metadata(root)
        for signer in [*old_signers, *new_signers]:
            rotated.sign(signer, append=True)
        self._write(rotated, f"{root.version}.root.json")
        self._write(rotated, "root.json")
        for path in (self.keys / "root").glob("*.pem"):
            path.unlink()
        for index, signer in enumerate(new_signers):
            _write_key(self.keys / "root" / f"root-{index}.pem", signer)

    # -- files -----------------------------------------------------------------------

    def load(self, role: str) -> Metadata[Any]:
        """The newest metadata of ``role``.

        Raises:
            UpdateRepositoryError: There is none.
        """
        if role == "timestamp":
            candidates = [self.metadata_dir / "timestamp.json"]
        elif role == "root":
            candidates = [self.metadata_dir / "root.json"]
        else:
            versions = sorted(
                (int(p.name.split(".")[0]) for p in self.metadata_dir.glob(f"*.{role}.json")),
                reverse=True,
            )
            candidates = [self.metadata_dir / f"{v}.{role}.json" for v in versions[:1]]
        for candidate in candidates:
            if candidate.exists():
                return Metadata.from_file(str(candidate))
        raise UpdateRepositoryError(f"no {role} metadata in {self.metadata_dir}")

    def trusted_root(self) -> bytes:
        """The version-1 root that devices are provisioned with."""
        return (self.metadata_dir / "1.root.json").read_bytes()

    def _write(self, metadata: Metadata[Any], name: str) -> None:
        self.metadata_dir.mkdir(parents=True, exist_ok=True)
        data = metadata.to_bytes(JSONSerializer(compact=False))
        partial = self.metadata_dir / f".{name}.partial"
        partial.write_bytes(data)
        partial.replace(self.metadata_dir / name)

    def targets_index(self) -> dict[str, dict[str, Any]]:
        """Published target paths and their custom metadata."""
        targets = self.load("targets").signed
        return {path: json.loads(json.dumps(t.unrecognized_fields.get("custom", {})))
                for path, t in targets.targets.items()}
