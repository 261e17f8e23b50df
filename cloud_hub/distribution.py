"""Publishing model versions and rolling them out to device groups.

Publishing stores the bundle, records it, and signs it into the TUF repository. A rollout
announces the version on the group's retained ``models`` topic, naming the devices of the
waves started so far; devices report each install step on their ``updates`` topic, and
each report may advance (or halt) the rollout, which then announces again. A fleet-wide
rollback re-publishes the previous model under the next patch version (devices refuse to
install a lower version, by design) and rolls that out to the whole group at once.

Reports reach whichever hub the shared subscription hands them to, so a rollout changes
only through :meth:`Store.update_rollout`, atomically in the database. A rollout is
announced again only when the devices it targets change: each such change (a wave
started, a halt) follows reports from devices that could only have reported after the
previous announcement reached the broker, so two hubs cannot overwrite the group's
retained announcement out of order.

An operator pauses, resumes or cancels a rollout through the same compare-and-set. A
rollout that cannot progress says why in its warnings (:func:`rollout_warnings`, pure,
computed when the rollout is read): devices it waits for that are offline for long, that
have updates turned off, or a group with no device left.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloud_hub.errors import HubError, NotFoundError, TargetsKeyOfflineError
from cloud_hub.settings import HubSettings
from cloud_hub.store import Store
from cloud_hub.updates import Clock, ModelRepository, target_path, utc_now
from models import ModelBundle, ModelStore, default_store_path, semver_key
from sync import ModelAnnouncement, TopicLayout, UpdateReport, encode
from sync.rollout import LIVE_STATUSES, Rollout, cancel, on_report, pause, resume, roll_back, start

log = logging.getLogger(__name__)

Publisher = Callable[[str, bytes, bool], None]
#: Told ``(before, after)`` when a rollout's status changed here (webhooks).
StatusListener = Callable[[Rollout, Rollout], None]


class ModelDistribution:
    """The hub's side of signed model updates.

    Args:
        clock: The signing clock (expiry dates of the TUF metadata); tests move it.
        on_status: Told when a rollout's status changes through this hub (a report that
            halts or completes it, an operator's command).
    """

    def __init__(self, settings: HubSettings, store: Store, publish: Publisher, *,
                 clock: Clock = utc_now, on_status: StatusListener | None = None) -> None:
        self.settings = settings
        self.store = store
        self._publish = publish
        self._on_status = on_status
        self.layout = TopicLayout(settings.mqtt_prefix)
        self.repository = ModelRepository(
            settings.repository_dir, settings.signing_keys_dir, clock=clock,
            targets_key_online=not settings.targets_key_offline)
        self.models = ModelStore(settings.model_store or default_store_path())

    def publish(self, bundle: ModelBundle, *, hardware: Iterable[str] = ("any",),
                targets_key: Path | None = None) -> str:
        """Store, record and sign a bundle version; returns its TUF target path.

        Args:
            targets_key: The targets key file, where the hub keeps it offline.

        Raises:
            HubError: The repository has no keys (run ``cloud-hub keys init``).
            TargetsKeyOfflineError: The targets key is offline and none was given.
        """
        self._check_can_sign(targets_key)
        stored = self.models.add(bundle.manifest, bundle.read_verified_model())
        manifest = stored.manifest
        self.store.add_model(name=manifest.name, version=manifest.version, task=manifest.task,
                             runtime=manifest.runtime, sha256=manifest.file.sha256,
                             size_bytes=manifest.file.size_bytes, path=str(stored.root))
        path = self.repository.publish(stored, hardware=hardware, targets_key=targets_key)
        log.info("published %s as %s", stored.label, path)
        return path

    def start(self, *, model: str, version: str, group: str, canary_percent: float,
              max_failure_share: float = 0.2) -> Rollout:
        """Start rolling ``model`` ``version`` out to ``group``.

        Raises:
            NotFoundError: The version was never published.
            HubError: The group has no devices.
        """
        if not any(m["version"] == version for m in self.store.list_models(name=model)):
            raise NotFoundError("model version", f"{model} {version}")
        devices = [d["id"] for d in self.store.list_devices(group=group)]
        if not devices:
            raise HubError(f"group {group!r} has no devices")
        rollout = start(rollout_id=f"r-{uuid.uuid4().hex[:10]}", model=model, version=version,
                        group=group, devices=devices, canary_percent=canary_percent,
                        max_failure_share=max_failure_share)
        self.store.add_rollout(rollout=rollout)
        self._announce(rollout)
        return rollout

    def report(self, report: UpdateReport) -> None:
        """Record a device's install step and let it move its rollout.

        Raises:
            StoreError: The database failed (the report may be handled again).
        """
        self.store.add_update_report(device_id=report.device_id, rollout_id=report.rollout_id,
                                     model=report.model, version=report.version,
                                     step=report.step, reason=report.reason, at=report.at)
        if report.rollout_id is None:
            return
        try:
            change = self.store.update_rollout(
                rollout_id=report.rollout_id,
                change=lambda rollout: on_report(rollout, report.device_id, report.step))
        except NotFoundError:
            log.warning("report for unknown rollout %s", report.rollout_id)
            return
        before, after = change.before, change.after
        if after.status == "halted" and before.status != "halted":
            log.warning("rollout %s halted: %s", after.id, after.reason)
        self._changed(before, after)

    def roll_back(self, rollout_id: str, reason: str = "operator request", *,
                  targets_key: Path | None = None) -> Rollout:
        """Stop a rollout and ship the previous version to the whole group again.

        Args:
            targets_key: The targets key file, where the hub keeps it offline (the previous
                model is signed again as the next version).

        Returns:
            The new rollout that carries the previous model.

        Raises:
            NotFoundError: No such rollout.
            HubError: There is no earlier version to go back to.
        """
        self._check_can_sign(targets_key)
        rollout = self.store.update_rollout(
            rollout_id=rollout_id, change=lambda current: roll_back(current, reason)).after
        versions = sorted((m["version"] for m in self.store.list_models(name=rollout.model)),
                          key=semver_key)
        earlier = [v for v in versions if semver_key(v) < semver_key(rollout.version)]
        if not earlier:
            raise HubError(f"{rollout.model} has no version before {rollout.version}")
        previous = self.models.resolve(f"{rollout.model}@{earlier[-1]}")
        major, minor, patch = (int(p) for p in max(versions, key=semver_key)
                               .split("+")[0].split("-")[0].split("."))
        again = self.models.add(
            previous.manifest.model_copy(update={"version": f"{major}.{minor}.{patch + 1}"}),
            previous.read_verified_model(),
        )
        self.publish(again, targets_key=targets_key)
        return self.start(model=rollout.model, version=again.manifest.version,
                          group=rollout.group, canary_percent=100)

    def cancel(self, rollout_id: str, reason: str = "cancelled by the operator") -> Rollout:
        """Stop a rollout where it is: devices that installed keep the version, no other
        device is told to install it (the group's announcement is narrowed at once).

        Raises:
            NotFoundError: No such rollout.
            RolloutStateError: It is completed, halted or rolled back already.
        """
        return self._command(rollout_id, lambda rollout: cancel(rollout, reason))

    def pause(self, rollout_id: str) -> Rollout:
        """Start no further wave (devices already told go on installing).

        Raises:
            NotFoundError: No such rollout.
            RolloutStateError: It is not running.
        """
        return self._command(rollout_id, pause)

    def resume(self, rollout_id: str) -> Rollout:
        """Go on with a paused rollout; a wave that finished meanwhile moves on at once.

        Raises:
            NotFoundError: No such rollout.
            RolloutStateError: It is not paused.
        """
        return self._command(rollout_id, resume)

    def _command(self, rollout_id: str, change: Callable[[Rollout], Rollout]) -> Rollout:
        done = self.store.update_rollout(rollout_id=rollout_id, change=change)
        if done.after != done.before:
            log.info("rollout %s: %s -> %s", rollout_id, done.before.status, done.after.status)
        self._changed(done.before, done.after)
        return done.after

    def _changed(self, before: Rollout, after: Rollout) -> None:
        """Announce again when the targeted devices changed; tell the listener of a new
        status."""
        if after.targeted != before.targeted:
            self._announce(after)
        if after.status != before.status and self._on_status is not None:
            self._on_status(before, after)

    def _check_can_sign(self, targets_key: Path | None) -> None:
        if not self.repository.exists():
            raise HubError("no signing keys: run `cloud-hub keys init` first")
        if targets_key is None and not self.repository.targets_key_online:
            raise TargetsKeyOfflineError(
                "publishing is off on this hub: its targets key is kept offline "
                "(CLOUD_HUB_TARGETS_KEY_OFFLINE); sign on the machine that holds the key with "
                "`cloud-hub models publish BUNDLE --targets-key FILE` (a fleet rollback with "
                "`cloud-hub rollout rollback ROLLOUT_ID --targets-key FILE`)")

    def _announce(self, rollout: Rollout) -> None:
        announcement = ModelAnnouncement(
            rollout_id=rollout.id, group=rollout.group, model=rollout.model,
            version=rollout.version, target=target_path(rollout.model, rollout.version),
            devices=rollout.targeted, at=time.time(),
        )
        self._publish(self.layout.models(rollout.group), encode(announcement), True)
        log.info("rollout %s (%s %s to %s): %s, wave %d, targeting %d device(s)",
                 rollout.id, rollout.model, rollout.version, rollout.group, rollout.status,
                 rollout.wave + 1, len(rollout.targeted))


def warnings_now(store: Store, settings: HubSettings, rollout: Rollout, *,
                 now: float | None = None) -> list[str]:
    """Why ``rollout`` cannot progress, from its group's devices as stored now (see
    :func:`rollout_warnings`)."""
    if rollout.status not in LIVE_STATUSES:
        return []
    return rollout_warnings(
        rollout, [device_readiness(d) for d in store.list_devices(group=rollout.group)],
        now=time.time() if now is None else now,
        offline_after_s=settings.rollout_offline_warning_s)


def current_rollout(store: Store, rollout_id: str) -> Rollout:
    """A stored rollout as a value (for the API)."""
    return Rollout.from_dict(store.get_rollout(rollout_id=rollout_id))




@dataclass(frozen=True, slots=True)
class DeviceReadiness:
    """What a rollout's warnings need to know of one device of its group.

    Attributes:
        last_seen: When the hub last heard from it (Unix s; ``None``: never).
        updates_enabled: Whether it installs updates (``None``: it did not say).
    """

    id: str
    online: bool
    last_seen: float | None
    updates_enabled: bool | None


def device_readiness(device: Mapping[str, Any]) -> DeviceReadiness:
    """The readiness of a device as :meth:`Store.list_devices` returns it."""
    last_seen = device.get("last_seen")
    enabled = device.get("updates_enabled")
    return DeviceReadiness(str(device["id"]), bool(device["online"]),
                           float(last_seen) if last_seen is not None else None,
                           bool(enabled) if enabled is not None else None)


def rollout_warnings(rollout: Rollout, group: Sequence[DeviceReadiness], *, now: float,
                     offline_after_s: float) -> list[str]:
    """Why a running or paused rollout cannot progress, one sentence each (empty: nothing
    stands in its way). Pure.

    A wave moves on only when every device of it has reported, so a device of the current
    wave (or a later one) that is offline for long, or that has updates turned off, holds
    the whole rollout; a group left without devices holds it too.

    Args:
        group: The devices of the rollout's group now.
        now: The current time (Unix s).
        offline_after_s: How long offline counts as long.
    """
    if rollout.status not in LIVE_STATUSES:
        return []
    found = {d.id: d for d in group}
    if not found:
        return [f"group {rollout.group} has no devices: nothing can install "
                f"{rollout.model} {rollout.version}"]
    waiting = [d for wave in rollout.waves[rollout.wave:] for d in wave
               if rollout.outcome(d) is None]
    warnings = []
    gone = [d for d in waiting if d not in found]
    if gone:
        warnings.append(f"{_devices(gone)} left group {rollout.group} or were removed; "
                        "the wave waits for their reports")
    updates_off = [d for d in waiting if d in found and found[d].updates_enabled is False]
    if updates_off:
        warnings.append(f"updates are turned off on {_devices(updates_off)} (updates.enabled "
                        "in the agent's config): they will never install this version")
    quiet = [d for d in waiting if d in found and _quiet(found[d], now, offline_after_s)]
    if quiet:
        warnings.append(f"{_devices(quiet)} offline for over {_duration(offline_after_s)} "
                        "(or never connected): the wave waits for them")
    return warnings


def _quiet(device: DeviceReadiness, now: float, offline_after_s: float) -> bool:
    return not device.online and (device.last_seen is None
                                  or now - device.last_seen > offline_after_s)


def _devices(names: Sequence[str], shown: int = 5) -> str:
    listed = ", ".join(names[:shown]) + (f" and {len(names) - shown} more"
                                         if len(names) > shown else "")
    return f"{len(names)} device(s) ({listed})"


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:g} h"
    if seconds >= 60:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"
