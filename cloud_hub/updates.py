"""The hub as a TUF repository of model bundles (python-tuf's Metadata API).

Roles and keys (Ed25519), each in its own file under the keys folder:

* ``root/`` (one or more keys, meant to live offline) signs ``root``;
* ``targets.pem`` (the publisher's key) signs ``targets``: which bundles exist, with
  their length, sha256 and custom metadata (name, version, runtime, task, hardware). It
  is online by default; with ``targets_key_online=False`` the repository never reads it
  from the keys folder, and publishing (or re-signing targets) takes the key file from
  the operator (``--targets-key FILE``);
* ``snapshot.pem`` and ``timestamp.pem`` are always online: they only re-sign
  ``snapshot`` and ``timestamp``, which expire quickly so that a frozen mirror is noticed.

Metadata that expires must be re-signed before it does, or every device refuses to
update (python-tuf: "timestamp.json is expired"). :meth:`ModelRepository.refresh`
re-signs every role whose key is at hand once less than half of its lifetime is left;
the hub's ``tuf-refresher`` thread (:class:`RepositoryRefresher`) calls it on a schedule
and ``cloud-hub keys refresh`` from cron. Root (a year) is re-signed only by rotating it
with the offline root keys.

Private keys are created ``0600`` (atomically: never readable by others, not even for a
moment) in ``0700`` folders, and a key that group or others can read is refused when it
is loaded, naming the file, as ssh does.

Metadata uses consistent snapshots: ``metadata/{version}.root.json``,
``metadata/{version}.snapshot.json``, ``metadata/{version}.targets.json``,
``metadata/timestamp.json``, and targets under ``targets/`` prefixed by their sha256.
A device trusts the ``root.json`` it was provisioned with; everything else it verifies.
"""

from __future__ import annotations

import fcntl
import io
import json
import logging
import os
import stat
import threading
import zipfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives import serialization
from prometheus_client import Counter, Gauge
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

from cloud_hub.errors import TargetsKeyOfflineError, UnprotectedKeyError, UpdateRepositoryError
from models import (
    MANIFEST_FILENAME,
    BackendSpec,
    Golden,
    Model,
    ModelBundle,
    create_backend,
    golden_outputs,
)

log = logging.getLogger(__name__)

Role = Literal["root", "targets", "snapshot", "timestamp"]
ROLES: tuple[Role, ...] = ("root", "targets", "snapshot", "timestamp")
EXPIRY: dict[Role, timedelta] = {
    "root": timedelta(days=365), "targets": timedelta(days=90),
    "snapshot": timedelta(days=7), "timestamp": timedelta(days=1)}
# A role is re-signed once less than this share of its lifetime is left: a hub that was
# down (or a cron job that failed) for almost half a lifetime still leaves devices served.
RESIGN_BELOW_SHARE = 0.5
PRIVATE_FILE_MODE = 0o600
PRIVATE_FOLDER_MODE = 0o700

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """The system clock, in UTC."""
    return datetime.now(UTC)


def _private_folder(folder: Path) -> None:
    """Make ``folder`` (and its missing parents) a folder only its owner can enter."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    for path in reversed(missing):
        path.mkdir(mode=PRIVATE_FOLDER_MODE, exist_ok=True)
    folder.chmod(PRIVATE_FOLDER_MODE)  # also where it existed; mkdir's mode meets the umask


def _write_key(path: Path, signer: CryptoSigner) -> None:
    """Write a private key: created ``0600`` under a temporary name, then renamed, so it
    is never readable by anyone else, nor seen half-written."""
    _private_folder(path.parent)
    partial = path.with_name(f".{path.name}.partial")
    partial.unlink(missing_ok=True)
    handle = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
    try:
        os.write(handle, signer.private_bytes)
        os.fsync(handle)
    finally:
        os.close(handle)
    partial.replace(path)


def check_private_key(path: Path) -> None:
    """Refuse a private key file that its group or others may read or write.

    Raises:
        UnprotectedKeyError: They may (the message names the file and its mode).
        UpdateRepositoryError: The file cannot be examined.
    """
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError as exc:
        raise UpdateRepositoryError(f"{path}: cannot read the signing key: "
                                    f"{exc.strerror}") from exc
    if mode & 0o077:
        raise UnprotectedKeyError(path, mode)


def check_private_keys(folder: Path) -> None:
    """:func:`check_private_key` on every ``*.pem`` under ``folder`` (the hub's start).

    Raises:
        UnprotectedKeyError: One of them is readable by others.
    """
    for path in sorted(folder.rglob("*.pem")):
        check_private_key(path)


def _read_key(path: Path) -> CryptoSigner:
    check_private_key(path)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise UpdateRepositoryError(f"{path}: cannot read the signing key: {exc}") from exc
    return CryptoSigner(key)


@dataclass(frozen=True, slots=True)
class RoleExpiry:
    """When one role's newest metadata expires, and whether this hub can re-sign it."""

    role: Role
    version: int
    expires: datetime
    key_online: bool

    def due(self, now: datetime) -> bool:
        """Whether less than :data:`RESIGN_BELOW_SHARE` of its lifetime is left."""
        return self.expires - now < EXPIRY[self.role] * RESIGN_BELOW_SHARE


def roles_to_resign(expiries: Iterable[RoleExpiry], now: datetime, *,
                    targets_key: bool, force: bool = False) -> tuple[Role, ...]:
    """Which roles to re-sign now, in signing order.

    A role is due when little of its lifetime is left (or always, with ``force``), and is
    re-signed only where its key is at hand (snapshot and timestamp always are; targets
    when ``targets_key``; root never: that takes the offline root keys). Each role names
    the version of the one below it, so a new targets needs a new snapshot, and a new
    snapshot a new timestamp.
    """
    due = {e.role for e in expiries if force or e.due(now)}
    chosen: list[Role] = []
    if "targets" in due and targets_key:
        chosen.append("targets")
    if chosen or "snapshot" in due:
        chosen.append("snapshot")
    if chosen or "timestamp" in due:
        chosen.append("timestamp")
    return tuple(chosen)


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

    Every change (init, publish, refresh, root rotation) holds an exclusive lock on
    ``folder/.lock``, so that the hub's refresher, its API and a ``cloud-hub`` command in
    another process never interleave their writes.

    Args:
        clock: The time used for expiry dates; tests move it.
        targets_key_online: Whether ``keys/targets.pem`` may be used. When not, signing
            targets needs the key file passed in (``targets_key=``).
    """

    def __init__(self, folder: Path, keys: Path, *, clock: Clock = utc_now,
                 targets_key_online: bool = True) -> None:
        self.folder = folder
        self.keys = keys
        self.metadata_dir = folder / "metadata"
        self.targets_dir = folder / "targets"
        self.targets_key_online = targets_key_online
        self._clock = clock

    def now(self) -> datetime:
        """The repository's clock (UTC, whole seconds)."""
        return self._clock().astimezone(UTC).replace(microsecond=0)

    def exists(self) -> bool:
        """Whether ``init`` has run."""
        return (self.metadata_dir / "1.root.json").exists()

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.folder.mkdir(parents=True, exist_ok=True)
        with (self.folder / ".lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _targets_signer(self, targets_key: Path | None) -> CryptoSigner:
        if targets_key is not None:
            return _read_key(targets_key)
        if not self.targets_key_online:
            raise TargetsKeyOfflineError(
                "the targets key is kept offline on this hub: sign with "
                "`cloud-hub models publish BUNDLE --targets-key FILE`")
        return _read_key(self.keys / "targets.pem")

    # -- set-up ----------------------------------------------------------------------

    def init(self, *, root_keys: int = 1, root_threshold: int = 1) -> None:
        """Create keys and version-1 metadata for every role.

        Raises:
            UpdateRepositoryError: The repository already exists.
        """
        if not 1 <= root_threshold <= root_keys:
            raise UpdateRepositoryError("root_threshold must be between 1 and root_keys")
        with self._locked():
            if self.exists():
                raise UpdateRepositoryError(f"{self.folder} already holds a repository")
            self._init(root_keys, root_threshold)

    def _init(self, root_keys: int, root_threshold: int) -> None:
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
                golden: Golden | None = None, targets_key: Path | None = None) -> str:
        """Add a bundle version as a signed target, then re-sign snapshot and timestamp.

        Args:
            hardware: What the model is built for (``any``, ``x86_64``, ``edgetpu`` ...).
            golden: The model's golden outputs (:func:`models.golden_outputs`); computed on
                the CPU here when not given.
            targets_key: The targets key file, where it is kept offline.

        Returns:
            The target path devices download.

        Raises:
            TargetsKeyOfflineError: The targets key is offline and none was given.
            UnprotectedKeyError: A key file is readable by others.
        """
        signer = self._targets_signer(targets_key)
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
        with self._locked():
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(data)
            targets = self.load("targets")
            targets.signed.targets[path] = target
            self._sign_targets(targets, signer)
            self._sign_snapshot()
            self._sign_timestamp()
        return path

    def expiries(self) -> tuple[RoleExpiry, ...]:
        """Version and expiry of each role's newest metadata.

        Raises:
            UpdateRepositoryError: The repository has not been initialised.
        """
        online = {"root": False, "targets": self.targets_key_online,
                  "snapshot": True, "timestamp": True}
        return tuple(RoleExpiry(role, (signed := self.load(role).signed).version,
                                signed.expires, online[role]) for role in ROLES)

    def refresh(self, *, targets_key: Path | None = None,
                force: bool = False) -> tuple[Role, ...]:
        """Re-sign, with fresh expiry dates, every role that is due and whose key is at
        hand (see :func:`roles_to_resign`); run it often, it does nothing when nothing is
        due.

        Args:
            targets_key: The targets key file, where it is kept offline.
            force: Re-sign them whether due or not.

        Returns:
            The roles re-signed.

        Raises:
            UpdateRepositoryError: No repository, or a key cannot be read.
            UnprotectedKeyError: A key file is readable by others.
        """
        with self._locked():
            targets_at_hand = targets_key is not None or self.targets_key_online
            roles = roles_to_resign(self.expiries(), self.now(), targets_key=targets_at_hand,
                                    force=force)
            if "targets" in roles:
                self._sign_targets(self.load("targets"), self._targets_signer(targets_key))
            if "snapshot" in roles:
                self._sign_snapshot()
            if "timestamp" in roles:
                self._sign_timestamp()
        if roles:
            log.info("re-signed %s", ", ".join(roles))
        return roles

    def _sign_targets(self, targets: Metadata[Any], signer: CryptoSigner) -> None:
        targets.signed.version += 1
        targets.signed.expires = self.now() + EXPIRY["targets"]
        targets.signatures.clear()
        targets.sign(signer)
        self._write(targets, f"{targets.signed.version}.targets.json")

    def _release(self, *, targets_version: int) -> None:
        snapshot = Metadata(Snapshot(version=1, expires=self.now() + EXPIRY["snapshot"]))
        snapshot.signed.meta["targets.json"] = MetaFile(version=targets_version)
        snapshot.sign(_read_key(self.keys / "snapshot.pem"))
        self._write(snapshot, "1.snapshot.json")
        self._sign_timestamp()

    def _sign_snapshot(self) -> None:
        snapshot = self.load("snapshot")
        snapshot.signed.version += 1
        snapshot.signed.expires = self.now() + EXPIRY["snapshot"]
        snapshot.signed.meta["targets.json"] = MetaFile(
            version=self.load("targets").signed.version)
        snapshot.signatures.clear()
        snapshot.sign(_read_key(self.keys / "snapshot.pem"))
        self._write(snapshot, f"{snapshot.signed.version}.snapshot.json")

    def _sign_timestamp(self) -> None:
        snapshot_version = self.load("snapshot").signed.version
        try:
            version = self.load("timestamp").signed.version + 1
        except UpdateRepositoryError:
            version = 1
        timestamp = Metadata(Timestamp(version=version,
                                       expires=self.now() + EXPIRY["timestamp"]))
        timestamp.signed.snapshot_meta = MetaFile(version=snapshot_version)
        timestamp.sign(_read_key(self.keys / "timestamp.pem"))
        self._write(timestamp, "timestamp.json")

    # -- root rotation ---------------------------------------------------------------

    def rotate_root(self, *, new_root_keys: int = 1, new_threshold: int = 1) -> None:
        """Replace the root keys: the new root is signed by the old and the new keys, so
        that devices can verify it against both thresholds."""
        with self._locked():
            self._rotate_root(new_root_keys, new_threshold)

    def _rotate_root(self, new_root_keys: int, new_threshold: int) -> None:
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


class RepositoryRefresher:
    """The ``tuf-refresher`` thread: keeps the repository's metadata from expiring.

    It checks at start and then every ``interval_s`` seconds; each check re-signs what is
    due (:meth:`ModelRepository.refresh`) and sets the expiry gauges. A failed check is
    logged and counted, and the next one tries again: the thread outlives any one failure.
    A hub with no repository yet (before ``cloud-hub keys init``) only waits.

    Args:
        repository: The repository (its clock is the refresher's).
        interval_s: Seconds between checks (wall time, whatever the repository's clock).
        expiry: Gauge of each role's expiry, Unix seconds, by ``role``.
        resigned: Counter of re-signed metadata, by ``role``.
        failures: Counter of failed checks.
    """

    def __init__(self, repository: ModelRepository, *, interval_s: float, expiry: Gauge,
                 resigned: Counter, failures: Counter) -> None:
        self.repository = repository
        self.interval_s = interval_s
        self._expiry = expiry
        self._resigned = resigned
        self._failures = failures
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the ``tuf-refresher`` thread."""
        self._thread = threading.Thread(target=self._run, name="tuf-refresher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop after the check under way, if any."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def _run(self) -> None:
        while True:
            self.check()
            if self._stop.wait(self.interval_s):
                return

    def check(self) -> tuple[Role, ...]:
        """One check: re-sign what is due, update the gauges; returns the roles re-signed."""
        if not self.repository.exists():
            return ()
        try:
            roles = self.repository.refresh()
            expiries = self.repository.expiries()
        except Exception:  # disk, keys, anything: count it and try again next time
            self._failures.inc()
            log.exception("re-signing the TUF metadata failed; devices refuse updates once "
                          "it expires")
            return ()
        for role in roles:
            self._resigned.labels(role).inc()
        for entry in expiries:
            self._expiry.labels(entry.role).set(entry.expires.timestamp())
        return roles
