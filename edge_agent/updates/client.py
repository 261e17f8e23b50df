"""Verified model downloads on the device: python-tuf's ngclient, plus our own checks.

The device trusts the ``root.json`` it was provisioned with. Every refresh verifies
timestamp, snapshot and targets against it (signatures and thresholds, versions that never
go back, expiry, snapshot/targets consistency, root rotations that satisfy both the old
and the new threshold). A download is accepted only if its length and sha256 match the
signed targets metadata; ngclient aborts one that runs past its signed length, and
metadata files are bounded by python-tuf's own limits (a timestamp of 16 KiB, targets of
5 MB ...). On top of TUF, :func:`choose_offer` decides what TUF cannot know: the highest
signed version built for this device's runtime and hardware, up to the announced one and
newer than the installed one. Builds for other hardware never block it; a version lower
than the installed one is refused as a rollback, one larger than the device takes as
too long.

Expiry is judged on the device's clock (injected, so that tests can move it).

Every failure is one :class:`UpdateRefusedError` with a ``kind`` and a clear reason; nothing
unverified is written anywhere (ngclient persists metadata only after verifying it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata, Targets
from tuf.ngclient import Updater as TufUpdater
from tuf.ngclient import UpdaterConfig

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
        return UpdateRefusedError("signature", str(exc))
    return UpdateRefusedError("unavailable", str(exc))


def _misfit(offer: ModelOffer, fit: DeviceFit, max_bytes: int) -> UpdateRefusedError | None:
    """Why this device cannot take ``offer``, or ``None`` if it can."""
    if offer.runtime not in fit.runtimes:
        return UpdateRefusedError(
            "runtime", f"{offer.name} {offer.version} needs {offer.runtime}; this device "
            f"has {', '.join(sorted(fit.runtimes))}")
    if "any" not in offer.hardware and not set(offer.hardware) & fit.hardware:
        return UpdateRefusedError(
            "hardware", f"{offer.name} {offer.version} is built for "
            f"{', '.join(offer.hardware)}; this device is {', '.join(sorted(fit.hardware))}")
    if offer.length > max_bytes:
        return UpdateRefusedError(
            "too-long", f"{offer.name} {offer.version} is {offer.length} bytes; this device "
            f"takes at most {max_bytes}")
    return None


def choose_offer(signed: Iterable[ModelOffer], *, name: str, announced: str,
                 installed: str | None, fit: DeviceFit,
                 max_bytes: int) -> ModelOffer | None:
    """What to install when ``announced`` is announced: the highest signed version of
    ``name`` that fits this device, newer than ``installed`` and not newer than
    ``announced``. ``None``: ``announced`` is installed already.

    Raises:
        UpdateRefusedError: ``announced`` is not signed (``unavailable``); it is older than
            the installed version (``rollback``); nothing newer fits this device (why the
            announced build does not: ``runtime``, ``hardware`` or ``too-long``).
    """
    offers = [o for o in signed if o.name == name]
    target = next((o for o in offers if o.version == announced), None)
    if target is None:
        raise UpdateRefusedError("unavailable", f"{name} {announced} is not signed")
    if installed == announced:
        return None
    if installed is not None and semver_key(announced) < semver_key(installed):
        raise UpdateRefusedError(
            "rollback", f"{name} {announced} is older than the installed {installed}: a "
            "model never goes back (the hub ships an earlier model as a new version)")
    fitting = [o for o in offers
               if _misfit(o, fit, max_bytes) is None
               and semver_key(o.version) <= semver_key(announced)
               and (installed is None or semver_key(o.version) > semver_key(installed))]
    if fitting:
        return max(fitting, key=lambda o: semver_key(o.version))
    problem = _misfit(target, fit, max_bytes)
    assert problem is not None  # a fitting announced build is among the fitting ones
    raise problem


def utc_now() -> datetime:
    """The device's clock, in UTC."""
    return datetime.now(UTC)


class UpdateClient:
    """Talks to the hub's TUF repository for one device.

    Args:
        folder: Where verified metadata and targets are kept (``metadata/``, ``targets/``).
        base_url: The repository's URL (``.../tuf``), with ``/metadata/`` and ``/targets/``.
        trusted_root: The provisioned root; written once if the folder has none.
        max_target_bytes: The largest model archive this device takes.
        clock: The time that metadata expiry is judged against.
    """

    def __init__(self, folder: Path, base_url: str, *, trusted_root: bytes | None = None,
                 max_target_bytes: int = 512 * 1024 * 1024,
                 clock: Callable[[], datetime] = utc_now) -> None:
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
        # python-tuf's default metadata limits: the model size limit applies to targets.
        self._config = UpdaterConfig()
        self.max_target_bytes = max_target_bytes
        self._clock = clock
        self._updater: TufUpdater | None = None

    def _new_updater(self) -> TufUpdater:
        updater = TufUpdater(str(self.metadata_dir), f"{self.base_url}/metadata/",
                             str(self.targets_dir), f"{self.base_url}/targets/",
                             config=self._config, bootstrap=None)
        # ngclient reads the system clock when it is built and judges every expiry against
        # that instant; this device's clock takes its place (it is the same one outside
        # tests).
        updater._trusted_set.reference_time = self._clock()
        return updater

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

    def signed(self, name: str) -> list[ModelOffer]:
        """Every signed version of ``name``, newest first. Call :meth:`refresh` first.

        Raises:
            UpdateRefusedError: :meth:`refresh` has not succeeded.
        """
        if self._updater is None:
            raise UpdateRefusedError("unavailable", "refresh() first")
        offers = []
        prefix = f"models/{name}/"
        for path, target in self._trusted_targets().items():
            custom: dict[str, Any] = target.unrecognized_fields.get("custom", {})
            if not path.startswith(prefix) or custom.get("name") != name:
                continue
            offers.append(ModelOffer(
                path=path, name=name, version=str(custom.get("version")),
                runtime=str(custom.get("runtime")),
                hardware=tuple(custom.get("hardware", ["any"])), length=target.length,
                sha256=target.hashes.get("sha256", ""),
                golden={name: [v / 1_000_000 for v in values]
                        for name, values in custom.get("golden_micro", {}).items()},
            ))
        return sorted(offers, key=lambda o: semver_key(o.version), reverse=True)

    def choose(self, name: str, announced: str, *, installed: str | None,
               fit: DeviceFit) -> ModelOffer | None:
        """The signed version to install when ``announced`` is announced (see
        :func:`choose_offer`). Call :meth:`refresh` first.

        Raises:
            UpdateRefusedError: Nothing newer fits, or the announcement is a rollback.
        """
        return choose_offer(self.signed(name), name=name, announced=announced,
                            installed=installed, fit=fit, max_bytes=self.max_target_bytes)

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
