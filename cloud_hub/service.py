"""The hub's parts wired together: store, models, batchers, judge, ingest, retention,
the ``tuf-refresher`` thread that keeps the signed update metadata from expiring, and the
``webhook-sender`` thread (when a webhook URL is set) that verdicts and rollout changes
are queued to."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from cloud_hub.batching import (
    MicroBatcher,
    candidate_batch_sizes,
    choose_batch_size,
    measure_batch_sizes,
)
from cloud_hub.distribution import ModelDistribution
from cloud_hub.errors import DeviceExistsError, HubError, ProvisioningError, SettingsError
from cloud_hub.images import (
    IMAGE_GRACE_S,
    FileImageStore,
    ImageStore,
    ObjectImageStore,
    object_store_from_url,
)
from cloud_hub.ingest import IngestWorker
from cloud_hub.judge import EventJudge, Judge, load_hub_model
from cloud_hub.metrics import HubMetrics
from cloud_hub.mqtt import BrokerSettings, publish_once
from cloud_hub.provisioning import (
    BrokerControl,
    Command,
    DeviceCredentials,
    DeviceSpec,
    EnrollmentMaterial,
    ProvisionOutcome,
    add_device_commands,
    batch_add_commands,
    check_device_id,
    group_role_commands,
    hub_role_commands,
    new_credentials,
    repair_role_commands,
    revoke_device_commands,
    rotate_device_commands,
)
from cloud_hub.settings import HubSettings
from cloud_hub.store import NewDevice, Store
from cloud_hub.supervision import Supervisor
from cloud_hub.updates import Clock, RepositoryRefresher, check_private_keys, utc_now
from cloud_hub.webhooks import WebhookConfig, WebhookSender, verdict_data
from hardware import Selection
from models import Model
from sync import Advance, TopicError, TopicLayout, UpdateReport, check_name
from sync.rollout import Rollout

log = logging.getLogger(__name__)

RETENTION_INTERVAL_S = 3600.0


def image_store_for(settings: HubSettings) -> ImageStore:
    """The image store the settings name (nothing is opened or written yet).

    Raises:
        ImageStoreError: Object storage without ``obstore``, or a bad URL.
    """
    if settings.image_store == "s3":
        assert settings.image_store_url is not None  # the settings' validator checks it
        store, prefix = object_store_from_url(settings.image_store_url)
        return ObjectImageStore(store, prefix=prefix,
                                max_image_bytes=settings.max_message_bytes)
    return FileImageStore(settings.images_dir, max_image_bytes=settings.max_message_bytes)


class HubService:
    """One hub process.

    Args:
        settings: Validated settings.
        ingest: Whether to consume escalations from the broker (an API-only replica may not).
        clock: The signing clock (expiry dates of the update metadata); tests move it.
        judge: Judges escalations instead of the models' :class:`Judge`, which is then
            not loaded (the scale-out benchmark's fixed-cost judge).
    """

    def __init__(self, settings: HubSettings, *, ingest: bool = True,
                 clock: Clock = utc_now, judge: EventJudge | None = None) -> None:
        self.settings = settings
        self._clock = clock
        self.refresher: RepositoryRefresher | None = None
        self.broker = BrokerSettings.from_settings(settings)
        self.metrics = HubMetrics(settings.metrics_top_devices)
        self.store = Store(settings.effective_database_url, images=image_store_for(settings))
        self.metrics.watch_fleet(self.store.fleet_state)
        self.models: dict[str, tuple[Model, Selection]] = {}
        self.batchers: dict[str, MicroBatcher] = {}
        self.judge: EventJudge | None = judge
        self.distribution: ModelDistribution | None = None
        self.ingest: IngestWorker | None = None
        webhooks = WebhookConfig.from_settings(settings)
        self.webhooks = (WebhookSender(webhooks, self.metrics.webhooks)
                         if webhooks is not None else None)
        self._want_ingest = ingest
        self._stop = threading.Event()
        self._retention: threading.Thread | None = None
        self.supervisor = Supervisor()
        self._lock = threading.Lock()
        self.ready = False

    def open_store(self) -> None:
        """Open the store alone (for CLI commands that need no models)."""
        self.settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.store.open()
        self.distribution = ModelDistribution(self.settings, self.store, self._announce,
                                              clock=self._clock, on_status=self._rollout_status)

    def _announce(self, topic: str, payload: bytes, retain: bool) -> None:
        if self.ingest is not None:
            self.ingest.publish(topic, payload, retain)
        else:
            publish_once(self.broker, topic, payload, retain=retain)

    def _rollout_status(self, before: Rollout, after: Rollout) -> None:
        if self.webhooks is not None:
            self.webhooks.submit("rollout", {
                "rollout_id": after.id, "model": after.model, "version": after.version,
                "group": after.group, "status": after.status, "previous_status": before.status,
                "wave": after.wave + 1, "reason": after.reason})

    def _verdict(self, event: dict[str, Any]) -> None:
        if self.webhooks is not None:
            self.webhooks.submit("verdict", verdict_data(event))

    def _complete_hub_role(self) -> None:
        """Give the hub's broker role the rules of this version (before ingest subscribes):
        a broker initialised by an older hub lacks, say, the journal's subscription."""
        if self.settings.broker_control != "mosquitto-dynsec":
            return
        try:
            BrokerControl(self.broker).run(hub_role_commands(
                TopicLayout(self.settings.mqtt_prefix), self.settings.share_group))
        except HubError as exc:  # unreachable now, or no broker-control: say so, go on
            log.warning("could not check the hub's broker role for new rules: %s", exc)

    def _on_update_report(self, report: UpdateReport) -> None:
        if self.distribution is not None:
            self.distribution.report(report)

    def start(self) -> None:
        """Open the store, load the models, start batching, ingest and retention.

        Raises:
            HubError: The store or a model could not be opened.
            UnprotectedKeyError: A signing key is readable by others (named).
        """
        self._check_signing_keys()
        self.open_store()
        if self.webhooks is not None:
            self.webhooks.start()
        if self._want_ingest:
            self.broker.check()  # a wrong CA or host name stops the hub here, loudly
            self._complete_hub_role()
        if self.judge is None:
            self.judge = self._model_judge()
        if self._want_ingest:
            self.ingest = IngestWorker(self.settings, self.store, self.judge, self.metrics,
                                       on_update_report=self._on_update_report,
                                       on_verdict=self._verdict,
                                       supervisor=self.supervisor)
            self.ingest.start()
        self._retention = self.supervisor.spawn(self._retain, "retention")
        assert self.distribution is not None  # open_store() sets it
        self.refresher = RepositoryRefresher(
            self.distribution.repository, interval_s=self.settings.tuf_refresh_interval_s,
            expiry=self.metrics.tuf_expiry, resigned=self.metrics.tuf_resigned,
            failures=self.metrics.tuf_refresh_failures)
        self.refresher.start()
        self.ready = True

    def stop(self) -> None:
        """Stop everything started."""
        self.ready = False
        self.supervisor.stopping()
        self._stop.set()
        if self.refresher is not None:
            self.refresher.stop()
        if self.ingest is not None:
            self.ingest.stop()
        if self.webhooks is not None:
            self.webhooks.stop()
        for batcher in self.batchers.values():
            batcher.stop()
        for model, _ in self.models.values():
            model.close()
        self.store.close()

    def _check_signing_keys(self) -> None:
        """Refuse to start on a private key others can read, as ssh does."""
        keys = self.settings.signing_keys_dir
        check_private_keys(keys)
        targets = keys / "targets.pem"
        if self.settings.targets_key_offline and targets.exists():
            log.warning("the targets key is to be kept offline, but %s is on this machine: "
                        "move it to offline storage", targets)

    def _model_judge(self) -> Judge:
        """The judge of the configured detector and landmark models, loading them."""
        detector_batcher = self.batcher(self.settings.detector_model)
        detector, _ = self.models[self.settings.detector_model]
        landmarks = None
        if self.settings.landmark_model:
            landmarks, _ = self._load(self.settings.landmark_model)
        return Judge(detector, detector_batcher, landmarks,
                     confirm_score=self.settings.confirm_score,
                     max_image_pixels=self.settings.max_image_pixels,
                     labels=self.settings.judge_label_set)

    def _load(self, name: str) -> tuple[Model, Selection]:
        with self._lock:
            if name not in self.models:
                try:
                    self.models[name] = load_hub_model(self.settings, name)
                except Exception as exc:  # model, zoo and hardware errors alike
                    raise HubError(f"cannot load model {name!r}: {exc}") from exc
            return self.models[name]

    def batcher(self, name: str) -> MicroBatcher:
        """The micro-batcher of a detector model, loading the model on first use.

        Raises:
            HubError: The model cannot be loaded or is not a detector.
        """
        with self._lock:
            existing = self.batchers.get(name)
        if existing is not None:
            return existing
        model, _ = self._load(name)
        if model.manifest.task != "detector":
            raise HubError(f"model {name!r} is a {model.manifest.task} model, not a detector")
        max_size = self.settings.batch_max_size
        if self.settings.batch_autotune and max_size > 1:
            max_size = self._tune_batch_size(model)
        self.metrics.batch_limit.labels(name).set(max_size)
        with self._lock:
            if name not in self.batchers:
                batcher = MicroBatcher(
                    name, model, max_size=max_size,
                    max_delay_s=self.settings.batch_max_delay_ms / 1000.0,
                    batch_sizes=self.metrics.batch_size, batch_waits=self.metrics.batch_wait,
                )
                batcher.start()
                self.batchers[name] = batcher
            return self.batchers[name]

    def _tune_batch_size(self, model: Model) -> int:
        """Measure ``model`` at each batch size up to the configured largest (about a
        second on a CPU) and pick the one to batch at."""
        spec = model.manifest.input
        example = model.prepare_image(np.zeros((spec.height, spec.width, 3), np.uint8))
        rates = measure_batch_sizes(model, example,
                                    candidate_batch_sizes(self.settings.batch_max_size))
        chosen = choose_batch_size(rates)
        log.info("%s: batching up to %d (images/s by batch size: %s)", model.bundle.label,
                 chosen, ", ".join(f"{size}: {rate:.0f}" for size, rate in rates.items()))
        return chosen

    def provision_device(self, device_id: str, group: str,
                         labels: dict[str, str] | None = None, *,
                         rotate: bool = False) -> tuple[dict[str, Any], DeviceCredentials]:
        """Register a device and issue its MQTT credentials on the broker.

        With ``broker_control`` ``mosquitto-dynsec`` the broker learns the device at once
        (no reload); with ``none`` only the hub's registry changes.

        Args:
            rotate: Issue new credentials to a device that exists: its old password
                stops working and its session is disconnected. Without it, an existing
                device is refused.

        Raises:
            ProvisioningError: The id is unusable or one of the hub's own names.
            DeviceExistsError: The device exists and ``rotate`` is false.
            BrokerUnavailableError: The broker could not be reached.
        """
        check_device_id(device_id, hub_username=self.broker.username or "hub",
                        hub_client_ids=(self.broker.client_id,))
        exists = self.store.device_exists(device_id=device_id)
        if exists and not rotate:
            raise DeviceExistsError(device_id)
        credentials = new_credentials(device_id)
        layout = TopicLayout(self.settings.mqtt_prefix)
        # A rotation of a device the hub does not know replaces a broker client that an
        # interrupted batch left behind.
        self._control((rotate_device_commands if rotate else add_device_commands)(
            layout, credentials, group))
        device = self.store.add_device(device_id=device_id, group=group, labels=labels,
                                       credential_hash=credentials.fingerprint)
        log.info("device %s %s (group %s)", device_id,
                 "credentials rotated" if exists else "provisioned", group)
        return device, credentials

    def provision_devices(self, specs: Sequence[DeviceSpec], *,
                          advance: Advance | None = None) -> tuple[ProvisionOutcome, ...]:
        """Register many devices at once, each with its own credentials on the broker.

        Idempotent: a device registered before is left as it is (``exists``); an id or
        group that is not a plain name, an id of the hub's or listed twice is ``failed``.
        The broker
        decides between concurrent calls naming the same device (one creates its
        client, the other hears ``exists``), and only devices whose client this call
        created are registered, in one transaction; if that fails, those clients are
        deleted again and the error raised.

        Args:
            advance: Told of each device done with (a progress bar): at once for those
                left out, and as each new device's credentials are made (their hashing is
                most of the work).

        Raises:
            BrokerUnavailableError: The broker could not be reached or stopped answering
                (clients it created meanwhile are not registered: running the same batch
                again reports them ``failed``; ``devices add ID --rotate`` re-issues one).
            StoreError: The registration failed (the clients were deleted again).
        """
        hub_username = self.broker.username or "hub"
        unusable: dict[int, str] = {}  # by place in specs: a bad name, an id twice, the hub's
        seen: set[str] = set()
        for index, spec in enumerate(specs):
            try:
                check_device_id(spec.device_id, hub_username=hub_username,
                                hub_client_ids=(self.broker.client_id,))
                check_name(spec.group, "group")
            except (ProvisioningError, TopicError) as exc:
                unusable[index] = str(exc)
            if spec.device_id in seen:
                unusable[index] = "listed twice in this batch"
            seen.add(spec.device_id)
        usable = [spec for index, spec in enumerate(specs) if index not in unusable]
        existing = self.store.existing_devices(device_ids=[s.device_id for s in usable])
        new = [spec for spec in usable if spec.device_id not in existing]
        if advance is not None:
            advance(len(specs) - len(new))
        credentials = {}
        for spec in new:
            credentials[spec.device_id] = new_credentials(spec.device_id)
            if advance is not None:
                advance(1)
        refused = self._create_clients(new, credentials)
        created = [spec for spec in new if spec.device_id not in refused]
        try:
            self.store.add_new_devices(rows=[
                NewDevice(spec.device_id, spec.group, credentials[spec.device_id].fingerprint)
                for spec in created])
        except HubError:
            self._delete_clients([spec.device_id for spec in created])
            raise
        log.info("provisioned %d devices (%d existed, %d refused)", len(created),
                 len(existing), len(refused) + len(unusable))
        outcomes: list[ProvisionOutcome] = []
        for index, spec in enumerate(specs):
            if index in unusable:
                outcomes.append(ProvisionOutcome(spec.device_id, spec.group, "failed",
                                                 reason=unusable[index]))
            elif spec.device_id in existing:
                outcomes.append(ProvisionOutcome(spec.device_id, spec.group, "exists"))
            elif spec.device_id in refused:
                reason = refused[spec.device_id]
                outcomes.append(ProvisionOutcome(spec.device_id, spec.group,
                                                 "exists" if reason is None else "failed",
                                                 reason=reason or ""))
            else:
                outcomes.append(ProvisionOutcome(spec.device_id, spec.group, "created",
                                                 credentials[spec.device_id]))
        return tuple(outcomes)

    def _create_clients(self, new: Sequence[DeviceSpec],
                        credentials: dict[str, DeviceCredentials]) -> dict[str, str | None]:
        """Create the broker clients of ``new``; the ones refused, each with why (``None``:
        another call registered it meanwhile)."""
        if self.settings.broker_control != "mosquitto-dynsec" or not new:
            return {}
        layout = TopicLayout(self.settings.mqtt_prefix)
        control = BrokerControl(self.broker)
        groups = group_role_commands(layout, sorted({spec.group for spec in new}))
        answers = control.execute([*groups, *(
            command for spec in new
            for command in batch_add_commands(layout, credentials[spec.device_id], spec.group))
        ])[len(groups):]
        refused: dict[str, str | None] = {}
        repaired: list[DeviceSpec] = []
        for spec, role_error, client_error in zip(new, answers[0::2], answers[1::2],
                                                  strict=True):
            if client_error is not None:
                refused[spec.device_id] = f"the broker refused it: {client_error}"
            elif role_error is not None:
                # The role was there already (an earlier, interrupted try, a concurrent
                # call, or the old layout's): the client is ours, so its rules are too.
                repaired.append(spec)
        if repaired:
            repairs = [command for spec in repaired for command in repair_role_commands(
                layout, credentials[spec.device_id], spec.group)]
            try:
                again = control.execute(repairs)
            except HubError:
                self._delete_clients([s.device_id for s in new if s.device_id not in refused])
                raise
            for spec, client_error in zip(repaired, again[3::4], strict=True):
                if client_error is not None:  # another call took the name meanwhile
                    refused[spec.device_id] = f"the broker refused it: {client_error}"
        if refused:
            # Refused because it is registered now (a concurrent call won), or not?
            ids = list(refused)
            known = self.store.existing_devices(device_ids=ids)
            refused.update(dict.fromkeys(known))
        return refused

    def _delete_clients(self, device_ids: Sequence[str]) -> None:
        """Undo clients this call created (best effort; logged when the broker is gone)."""
        try:
            self._control([c for device_id in device_ids
                           for c in revoke_device_commands(device_id)])
        except HubError as exc:
            log.error("could not delete %d broker clients after a failed registration: %s",
                      len(device_ids), exc)

    def enrollment_material(self) -> EnrollmentMaterial:
        """What enrollment bundles hold besides each device's id, group and credentials:
        the broker as devices reach it, its CA, the hub's URL and, when the hub has a TUF
        repository, its current root.

        Raises:
            SettingsError: The CA file cannot be read.
            ProvisioningError: A setting does not fit a bundle.
        """
        settings = self.settings
        ca_file = settings.device_ca_file or settings.mqtt_ca_file
        try:
            ca_pem = ca_file.read_text() if ca_file is not None else None
        except OSError as exc:
            raise SettingsError(f"CLOUD_HUB_DEVICE_CA_FILE: cannot read {ca_file}: "
                                f"{exc.strerror}") from exc
        root_file = settings.repository_dir / "metadata" / "root.json"
        trusted_root = json.loads(root_file.read_text()) if root_file.is_file() else None
        return EnrollmentMaterial(
            broker_url=settings.device_broker_url, prefix=settings.mqtt_prefix,
            ca_pem=ca_pem, hub_url=settings.hub_public_url, trusted_root=trusted_root)

    def revoke_device(self, device_id: str) -> None:
        """Take a device's broker access away: it is disconnected and cannot reconnect.

        Its events stay in the store; provisioning it again needs ``rotate``.

        Raises:
            NotFoundError: No such device.
            BrokerUnavailableError: The broker could not be reached.
        """
        self.store.get_device(device_id=device_id)  # NotFoundError for an unknown id
        self._control(revoke_device_commands(device_id))
        self.store.revoke_device(device_id=device_id, at=time.time())
        log.info("device %s revoked", device_id)

    def _control(self, commands: Sequence[Command]) -> None:
        if self.settings.broker_control == "mosquitto-dynsec":
            BrokerControl(self.broker).run(commands)

    def _retain(self) -> None:
        while not self._stop.wait(1.0 if not self.ready else RETENTION_INTERVAL_S):
            now = time.time()
            try:
                images, events = self.store.prune(
                    images_before=now - self.settings.image_retention_days * 86400,
                    events_before=now - self.settings.event_retention_days * 86400,
                    images_idle_before=now - IMAGE_GRACE_S,
                    unescalated_before=now - self.settings.journal_unescalated_keep_s,
                )
            except HubError as exc:
                log.error("retention failed: %s", exc)
                continue
            except Exception:  # retention degrades; judging goes on without it
                log.exception("retention failed")
                continue
            if images or events:
                log.info("retention: pruned images of %d events, deleted %d events",
                         images, events)
