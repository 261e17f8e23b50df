"""The hub's settings: environment (``CLOUD_HUB_*``) or an env file, validated at start."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cloud_hub.errors import SettingsError
from models import DEFAULT_MAX_IMAGE_PIXELS

PLACEHOLDER_SECRETS = frozenset({"", "changethis", "change-me", "secret", "development"})


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/cloud-hub`` (``~/.local/share/cloud-hub``)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local/share")
    return Path(base) / "cloud-hub"


class HubSettings(BaseSettings):
    """Everything the hub needs to know; every field can be set as ``CLOUD_HUB_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="CLOUD_HUB_", extra="forbid", frozen=True)

    mode: Literal["development", "production"] = "development"
    secret_key: str = Field(default="changethis", description="peppers API token hashes")
    data_dir: Path = Field(default_factory=default_data_dir)
    database_url: str | None = Field(
        default=None, description="sqlite:///path or postgresql+psycopg://...; default SQLite"
    )
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535)

    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = Field(default=1883, ge=1, le=65535)
    mqtt_username: str | None = None
    mqtt_password: str | None = None
    mqtt_prefix: str = "fleet"
    share_group: str = "hub"
    mqtt_client_id: str | None = Field(
        default=None, pattern=r"^hub-[A-Za-z0-9_.-]{1,60}$",
        description="the ingest session's client id, hub-<something> (no device can be "
        "named hub-*, so none can take the hub's session); default hub-<hostname>, stable "
        "across restarts: replicas sharing a host must each set their own, since a "
        "persistent session outlives its process and keeps its share of the subscription")
    mqtt_tls: bool = Field(default=False, description="TLS to the broker (verified)")
    mqtt_ca_file: Path | None = Field(
        default=None, description="CA that signed the broker's certificate; default: system")
    mqtt_cert_file: Path | None = Field(default=None, description="client certificate (mTLS)")
    mqtt_key_file: Path | None = Field(default=None, description="its private key")
    device_mqtt_url: str | None = Field(
        default=None, pattern=r"^mqtts?://[^/]+$", description="the broker as devices reach "
        "it, written into enrollment bundles (mqtts://hub.example.net:8883); default: "
        "mqtt_host and mqtt_port, mqtts when mqtt_tls is on")
    device_ca_file: Path | None = Field(
        default=None, description="the CA devices verify the broker with, written into "
        "enrollment bundles; default: mqtt_ca_file")
    public_url: str | None = Field(
        default=None, pattern=r"^https?://", description="the hub's URL as devices and "
        "people reach it (https://hub.example.net), written into enrollment bundles with "
        "its /tuf repository; default: http://http_host:http_port")
    broker_control: Literal["mosquitto-dynsec", "none"] = Field(
        default="mosquitto-dynsec", description="how devices are provisioned, rotated and "
        "revoked on the broker: through Mosquitto's dynamic security plugin, or not at all "
        "(another broker, e.g. EMQX, managed by the operator; see docs/deployment.md)")
    ingest_workers: int = Field(default=4, ge=1, le=64,
                                description="judge threads taking from the admission queue")
    intake_workers: int = Field(
        default=2, ge=1, le=64, description="threads that store and acknowledge incoming "
        "messages and admit escalations (or answer busy)")
    admission_capacity: int = Field(
        default=256, ge=1, le=1_000_000, description="escalations waiting for judgement; "
        "beyond it, or when one cannot be judged within its device's verdict timeout, the "
        "hub answers busy at once (by priority, fair across devices)")
    default_verdict_timeout_s: float = Field(
        default=10.0, gt=0, description="a device's verdict timeout when its escalation "
        "does not say (agents send theirs)")
    mqtt_receive_maximum: int = Field(
        default=1000, ge=1, le=65535, description="MQTT 5 Receive Maximum: QoS 1 messages "
        "the broker may send the hub before it acknowledges them (it acknowledges once "
        "stored); size it for the fleet's bursts")
    mqtt_max_inflight: int = Field(
        default=1000, ge=1, le=65535, description="verdicts in flight to the broker at once; "
        "at most the broker's Receive Maximum (Mosquitto's max_inflight_messages)")
    max_message_bytes: int = Field(default=512 * 1024, ge=1024)

    model_store: Path | None = None
    detector_model: str = Field(
        default="blazeface-full-onnx",
        validation_alias=AliasChoices("detector_model", "judge_model",
                                      "CLOUD_HUB_DETECTOR_MODEL", "CLOUD_HUB_JUDGE_MODEL"),
        description="the judge's detector: any detector bundle in the store or the zoo "
        "(ssd-anchors, yolo or boxes-scores family, float or INT8), e.g. nudenet-320n; "
        "also CLOUD_HUB_JUDGE_MODEL")
    judge_labels: str = Field(
        default="", description="labels that confirm an escalation, comma-separated (e.g. "
        "FACE_FEMALE,FACE_MALE for nudenet-320n); empty: any label the detector has")
    landmark_model: str | None = "face-landmark"
    backend: str | None = None
    runtime_threads: int | None = Field(
        default=None, ge=1, le=256, description="CPU threads of each model run (ONNX "
        "Runtime's intra-op threads, LiteRT's threads); default: the runtime's own choice")
    confirm_score: float = Field(default=0.6, gt=0, lt=1)
    batch_max_size: int = Field(default=16, ge=1, le=256)
    batch_autotune: bool = Field(
        default=True, description="measure the model at batch sizes up to batch_max_size "
        "when it loads and batch at the smallest one within 5% of the best throughput")
    batch_max_delay_ms: float = Field(default=5.0, ge=0)

    max_upload_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    max_bundle_bytes: int = Field(
        default=512 * 1024 * 1024, ge=1024,
        description="largest uncompressed size of an uploaded bundle zip's entries")
    max_bundle_entries: int = Field(default=16, ge=2, description="most entries in a bundle zip")
    max_image_pixels: int = Field(
        default=DEFAULT_MAX_IMAGE_PIXELS, ge=1, description="largest width x height of an "
        "escalated or uploaded image, read from its header before it is decoded")
    public_metrics: bool = Field(
        default=False, description="serve /metrics without a token (it names device ids)")
    image_store: Literal["file", "s3"] = Field(
        default="file", description="where escalated images are kept (the database keeps "
        "their sha256): files under image_dir, or S3-compatible object storage at "
        "image_store_url (pip install obstore; credentials from AWS_* variables)")
    image_dir: Path | None = Field(default=None, description="data_dir/images by default")
    image_store_url: str | None = Field(
        default=None, pattern=r"^s3://[^/]+(/.*)?$", description="s3://bucket[/prefix]")
    metrics_top_devices: int = Field(
        default=10, ge=0, le=10_000, description="devices with their own series on /metrics "
        "(the largest outbox backlogs); the rest count only in the fleet's totals, so "
        "/metrics stays the same size for 10 devices or 100,000. 0: none")
    image_retention_days: float = Field(default=7.0, gt=0)
    event_retention_days: float = Field(default=90.0, gt=0)
    journal_steps_per_minute: float = Field(
        default=600.0, gt=0, description="decision journal steps a device may send a "
        "minute (more are dropped and counted as journal-rate)")
    journal_burst: int = Field(default=200, ge=1,
                               description="journal steps a device may send at once")
    journal_unescalated_keep_s: float = Field(
        default=3600.0, gt=0, description="how long journal steps of a track never "
        "escalated are kept when its end step was lost (a track that ends unescalated "
        "is forgotten at once)")

    tuf_dir: Path | None = Field(default=None, description="TUF repository; data_dir/tuf")
    keys_dir: Path | None = Field(
        default=None, description="signing keys; data_dir/keys (keep keys/root offline)")
    targets_key_offline: bool = Field(
        default=False, description="never sign targets with keys/targets.pem: publishing "
        "then needs `cloud-hub models publish --targets-key FILE`, and re-signing targets "
        "`cloud-hub keys refresh --targets-key FILE` (at least every 45 days)")
    tuf_refresh_interval_s: float = Field(
        default=300.0, gt=0, le=3600,
        description="seconds between checks of the update metadata's expiry dates")
    webhook_url: str | None = Field(
        default=None, pattern=r"^https?://", description="POST verdicts and rollout changes "
        "here, signed (X-Hub-Signature: t=...,v1=HMAC-SHA256 of '<t>.<body>'); off when unset")
    webhook_secret: str | None = Field(
        default=None, min_length=16, description="the webhooks' HMAC key, shared with the "
        "receiver")
    webhook_events: str = Field(
        default="verdict,rollout", pattern=r"^(verdict|rollout)(,(verdict|rollout))*$",
        description="which webhooks to send, comma-separated: verdict, rollout")
    webhook_queue_max: int = Field(default=1000, ge=1, description="webhooks waiting at "
                                   "most; more are dropped (counted)")
    webhook_max_attempts: int = Field(default=6, ge=1, le=50)
    webhook_timeout_s: float = Field(default=10.0, gt=0, le=120)
    webhook_backoff_min_s: float = Field(
        default=1.0, gt=0, description="delay before the first retry; doubles per retry, "
        "with jitter, up to webhook_backoff_max_s")
    webhook_backoff_max_s: float = Field(default=300.0, gt=0)
    rollout_offline_warning_s: float = Field(
        default=3600.0, gt=0, description="a rollout warns about a device it waits for "
        "that has been offline (not heard from) for longer than this")

    @model_validator(mode="after")
    def _object_store_needs_its_url(self) -> HubSettings:
        if self.image_store == "s3" and not self.image_store_url:
            raise ValueError("image_store s3 needs image_store_url (s3://bucket[/prefix])")
        return self

    @model_validator(mode="after")
    def _tls_files_need_tls(self) -> HubSettings:
        if (self.mqtt_cert_file is None) != (self.mqtt_key_file is None):
            raise ValueError("mqtt_cert_file and mqtt_key_file go together")
        named = [name for name in ("mqtt_ca_file", "mqtt_cert_file", "mqtt_key_file")
                 if getattr(self, name) is not None]
        if named and not self.mqtt_tls:
            raise ValueError(f"{', '.join(named)} set but mqtt_tls is off; set "
                             "CLOUD_HUB_MQTT_TLS=true")
        return self

    @model_validator(mode="after")
    def _webhooks_are_signed(self) -> HubSettings:
        if self.webhook_url and not self.webhook_secret:
            raise ValueError("webhook_url needs webhook_secret (CLOUD_HUB_WEBHOOK_SECRET, "
                             "at least 16 characters): every webhook is signed")
        return self

    @model_validator(mode="after")
    def _room_for_the_admission_queue(self) -> HubSettings:
        # Escalations stay unacknowledged until answered: the broker's window must hold
        # the admission queue and more, or intake would starve while judging catches up.
        if self.mqtt_receive_maximum <= self.admission_capacity:
            raise ValueError(f"mqtt_receive_maximum ({self.mqtt_receive_maximum}) must be "
                             f"more than admission_capacity ({self.admission_capacity})")
        return self

    @model_validator(mode="after")
    def _no_placeholder_secret_in_production(self) -> HubSettings:
        if self.mode == "production" and (
            self.secret_key in PLACEHOLDER_SECRETS or len(self.secret_key) < 32
        ):
            raise ValueError(
                "secret_key is a placeholder or shorter than 32 characters; set "
                "CLOUD_HUB_SECRET_KEY (e.g. `python -c 'import secrets; "
                "print(secrets.token_urlsafe(32))'`) before running in production"
            )
        return self

    @property
    def judge_label_set(self) -> frozenset[str]:
        """:attr:`judge_labels` as a set (empty: any label confirms)."""
        return frozenset(label.strip() for label in self.judge_labels.split(",")
                         if label.strip())

    @property
    def device_broker_url(self) -> str:
        """The broker's URL for devices (:attr:`device_mqtt_url` or its default)."""
        scheme = "mqtts" if self.mqtt_tls else "mqtt"
        return self.device_mqtt_url or f"{scheme}://{self.mqtt_host}:{self.mqtt_port}"

    @property
    def hub_public_url(self) -> str:
        """The hub's URL for devices and people, without a trailing slash."""
        return (self.public_url or f"http://{self.http_host}:{self.http_port}").rstrip("/")

    @property
    def repository_dir(self) -> Path:
        """The TUF repository served at ``/tuf``."""
        return self.tuf_dir or self.data_dir / "tuf"

    @property
    def signing_keys_dir(self) -> Path:
        """Where ``cloud-hub keys init`` writes the keys."""
        return self.keys_dir or self.data_dir / "keys"

    @property
    def images_dir(self) -> Path:
        """Where the file image store keeps escalated images."""
        return self.image_dir or self.data_dir / "images"

    @property
    def effective_database_url(self) -> str:
        """The configured database, or SQLite in ``data_dir``."""
        return self.database_url or f"sqlite:///{self.data_dir / 'hub.sqlite3'}"


def load_settings(*, settings_file: Path | None = None, **overrides: object) -> HubSettings:
    """Read settings from the environment, a ``CLOUD_HUB_*=...`` file, and ``overrides``.

    Raises:
        SettingsError: A setting is wrong or the file is missing; the message names it.
    """
    if settings_file is not None and not settings_file.is_file():
        raise SettingsError(f"{settings_file}: no such settings file")
    try:
        return HubSettings(_env_file=settings_file, **overrides)  # type: ignore[arg-type,call-arg]
    except ValidationError as exc:
        error = exc.errors()[0]
        name = ".".join(str(p) for p in error["loc"]) or "settings"
        env = f"CLOUD_HUB_{name.upper()}" if name != "settings" else "settings"
        raise SettingsError(f"{env}: {error['msg']}") from exc
