"""Verified model downloads on the device: python-tuf's ngclient, plus our own checks.

The device trusts the ``root.json`` it was provisioned with. Every refresh verifies
timestamp, snapshot and targets against it (signatures and thresholds, versions that never
go back, expiry, snapshot/targets consistency, root rotations that satisfy both the old
and the new threshold). A download is accepted only if its length and sha256 match the
signed targets metadata; ngclient aborts one that runs past its signed length. On top of
TUF, :meth:`UpdateClient.offers` refuses what TUF cannot know is wrong for this device:
a version lower than the one installed, a runtime it lacks, hardware it does not have.

Every failure is one :class:`UpdateRefusedError` with a ``kind`` and a clear reason; nothing
unverified is written anywhere (ngclient persists metadata only after verifying it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata, Targets
from tuf.ngclient import Updater, UpdaterConfig

from edge_agent.errors import UpdateRefusedError
from models import semver_key

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ModelOffer:
    """A signed model version the repository offers."""

    path: str
    name: str
    version: str
    runtime: str
    hardware: tuple[str, ...]
    length: int
    sha256: str
    golden: dict[str, list[float]]


@dataclass(frozen=True, slots=True)
class DeviceFit:
    """What this device can run: runtimes and hardware tags (``x86_64``, ``cuda`` ...)."""

    runtimes: frozenset[str]
    hardware: frozenset[str]


def _refusal(exc: Exception) -> UpdateRefusedError:
    """Map python-tuf's exceptions, once, to a refusal with a kind."""
    if isinstance(exc, tuf_errors.ExpiredMetadataError):
        return UpdateRefusedError("expired", str(exc))
    if isinstance(exc, tuf_errors.UnsignedMetadataError):
        return UpdateRefusedError("signature", str(exc))
    if isinstance(exc, tuf_errors.BadVersionNumberError):
        return UpdateRefusedError("mix-and-match", str(exc))
    if isinstance(exc, tuf_errors.LengthOrHashMismatchError):
        return UpdateRefusedError("integrity", str(exc))
    if isinstance(exc, tuf_errors.DownloadLengthMismatchError):
        return UpdateRefusedError("too-long", str(exc))
    if isinstance(exc, tuf_errors.RepositoryError):
        return UpdateRefusedError("mix-and-match" if "snapshot" in str(exc).lower()
                             else "signature", str(exc))
    return UpdateRefusedError("unavailable", str(exc))


class UpdateClient:
    """Talks to the hub's TUF repository for one device.

    Args:
        folder: Where verified metadata and targets are kept (``metadata/``, ``targets/``).
        base_url: The repository's URL (``.../tuf``), with ``/metadata/`` and ``/targets/``.
        trusted_root: The provisioned root; written once if the folder has none.
    """

    def __init__(self, folder: Path, base_url: str, *, trusted_root: bytes | None = None,
                 max_target_bytes: int = 512 * 1024 * 1024) -> None:
        self.folder = folder
        self.metadata_dir = folder / "metadata"
        self.targets_dir = folder / "targets"
        self.base_url = base_url.rstrip("/")
        self.metadata_dir.mkdir(parents=True, exist_ok=True)
        self.targets_dir.mkdir(parents=True, exist_ok=True)
        root = self.metadata_dir / "root.json"
        if not root.exists():
            if trusted_root is None:
                raise UpdateRefusedError("signature", f"no trusted root in {self.metadata_dir}")
            root.write_bytes(trusted_root)
        self._config = UpdaterConfig(targets_max_length=max_target_bytes)
        self._updater: Updater | None = None

    def _new_updater(self) -> Updater:
        return Updater(str(self.metadata_dir), f"{self.base_url}/metadata/",
                       str(self.targets_dir), f"{self.base_url}/targets/",
                       config=self._config, bootstrap=None)

    def refresh(self) -> None:
        """Fetch and verify the newest metadata.

        Raises:
            UpdateRefusedError: Verification failed; the trusted metadata is unchanged.
        """
        self._updater = self._new_updater()
        try:
            self._updater.refresh()
        except (tuf_errors.RepositoryError, tuf_errors.DownloadError, OSError) as exc:
            self._updater = None
            raise _refusal(exc) from exc

    def offers(self, name: str, *, installed: str | None, fit: DeviceFit) -> list[ModelOffer]:
        """Signed versions of ``name`` newer than ``installed`` that fit this device,
        newest first. Call :meth:`refresh` first.

        Raises:
            UpdateRefusedError: The newest signed version is older than the installed one
                (``rollback``), or does not fit (``runtime`` / ``hardware``).
        """
        if self._updater is None:
            raise UpdateRefusedError("unavailable", "refresh() first")
        candidates = []
        prefix = f"models/{name}/"
        targets = self._trusted_targets()
        for path, target in targets.items():
            custom: dict[str, Any] = target.unrecognized_fields.get("custom", {})
            if not path.startswith(prefix) or custom.get("name") != name:
                continue
            candidates.append(ModelOffer(
                path=path, name=name, version=str(custom.get("version")),
                runtime=str(custom.get("runtime")),
                hardware=tuple(custom.get("hardware", ["any"])), length=target.length,
                sha256=target.hashes.get("sha256", ""),
                golden={name: [v / 1_000_000 for v in values]
                        for name, values in custom.get("golden_micro", {}).items()},
            ))
        candidates.sort(key=lambda o: semver_key(o.version), reverse=True)
        if not candidates:
            return []
        newest = candidates[0]
        if installed is not None and semver_key(newest.version) < semver_key(installed):
            raise UpdateRefusedError(
                "rollback", f"the newest signed {name} is {newest.version}, older than the "
                f"installed {installed}")
        fresh = [o for o in candidates
                 if installed is None or semver_key(o.version) > semver_key(installed)]
        for offer in fresh:
            if offer.runtime not in fit.runtimes:
                raise UpdateRefusedError(
                    "runtime", f"{name} {offer.version} needs {offer.runtime}; "
                    f"this device has {', '.join(sorted(fit.runtimes))}")
            if "any" not in offer.hardware and not set(offer.hardware) & fit.hardware:
                raise UpdateRefusedError(
                    "hardware", f"{name} {offer.version} is built for "
                    f"{', '.join(offer.hardware)}; this device is "
                    f"{', '.join(sorted(fit.hardware))}")
        return fresh

    def download(self, offer: ModelOffer) -> Path:
        """Download (or reuse from the cache) and verify one target.

        Raises:
            UpdateRefusedError: Length or hash mismatch, or a download longer than signed;
                nothing unverified is left in the cache.
        """
        if self._updater is None:
            raise UpdateRefusedError("unavailable", "refresh() first")
        try:
            info = self._updater.get_targetinfo(offer.path)
            if info is None:
                raise UpdateRefusedError("unavailable", f"{offer.path} is not a signed target")
            cached = self._updater.find_cached_target(info)
            return Path(cached or self._updater.download_target(info))
        except (tuf_errors.RepositoryError, tuf_errors.DownloadError, OSError) as exc:
            raise _refusal(exc) from exc

    def _trusted_targets(self) -> dict[str, Any]:
        # ngclient persists targets metadata only after verifying it during refresh().
        targets = Metadata[Targets].from_file(str(self.metadata_dir / "targets.json"))
        return dict(targets.signed.targets)
