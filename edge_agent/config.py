"""The agent's configuration: one TOML file, validated before anything starts.

Every section is a frozen pydantic model that refuses unknown keys. A bad value is one
:class:`ConfigError` naming the key, the value and what was expected. Secrets may come
from the environment instead of the file: ``EDGE_AGENT_MQTT_PASSWORD`` overrides
``mqtt.password``.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails

from edge_agent.errors import ConfigError
from models import DEFAULT_MAX_IMAGE_PIXELS
from sync import check_name

PASSWORD_ENV = "EDGE_AGENT_MQTT_PASSWORD"
Seconds = Annotated[float, Field(gt=0)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DeviceConfig(_Section):
    """Who this device is."""

    id: str
    group: str = "default"

    @field_validator("id", "group")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_name(value)  # TopicError is a ValueError: pydantic reports it


class MqttConfig(_Section):
    """The broker connection (MQTT 5)."""

    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    prefix: str = "fleet"
    username: str | None = None
    password: str | None = None
    password_file: Path | None = Field(
        default=None, description="a file holding the password (readable by the agent's "
        "user only), instead of password; EDGE_AGENT_MQTT_PASSWORD still wins")
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    session_expiry_s: int = Field(default=7 * 24 * 3600, ge=0)
    message_expiry_s: int = Field(default=24 * 3600, ge=1)
    reconnect_min_s: Seconds = 0.5
    reconnect_max_s: Seconds = 30.0
    max_inflight: int = Field(default=100, ge=1, le=65535)
    drain_rate_per_s: float = Field(
        default=50.0, gt=0, description="publishes/s, live and backlog together, from the "
        "first second (live events go first, so they are judged within their timeout)")
    max_unconfirmed: int = Field(
        default=2000, ge=1, description="escalations published without the hub's receipt")
    receipt_timeout_s: Seconds = Field(
        default=30.0, description="publish again when the hub has not confirmed in this long")
    retry_max_s: Seconds = Field(default=300.0, description="longest backoff between retries")
    telemetry_interval_s: float = Field(default=60.0, ge=0, description="0 turns telemetry off")

    @model_validator(mode="after")
    def _consistent(self) -> MqttConfig:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be at least reconnect_min_s")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        if self.password is not None and self.password_file is not None:
            raise ValueError("password and password_file exclude each other")
        return self

    def with_password_file_read(self, key: str) -> MqttConfig:
        """This config with :attr:`password_file`'s contents as the password.

        Raises:
            ConfigError: The file cannot be read (``key`` names the setting).
        """
        if self.password_file is None or self.password is not None:
            return self
        try:
            password = self.password_file.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{key} = '{self.password_file}': cannot read: {exc.strerror}",
                              key=key) from exc
        return self.model_copy(update={"password": password, "password_file": None})


class OutboxConfig(_Section):
    """The durable escalation outbox (SQLite, WAL)."""

    path: Path = Path("outbox.sqlite3")
    max_events: int = Field(default=10_000, ge=1)
    max_bytes: int = Field(default=256 * 1024 * 1024, ge=64 * 1024)
    ttl_s: Seconds = 24 * 3600.0
    when_full: Literal["evict", "refuse"] = "evict"
    synchronous: Literal["FULL", "NORMAL"] = "FULL"


class PolicyConfig(_Section):
    """When a result is decided locally, escalated or dropped."""

    confident_score: float = Field(default=0.8, gt=0, le=1)
    uncertain_score: float = Field(default=0.5, ge=0, lt=1)
    suspicious_labels: tuple[str, ...] = ()
    max_escalations_per_minute: float = Field(default=60.0, gt=0)
    escalation_burst: int = Field(default=10, ge=1)
    audit_sample_rate: float = Field(default=0.02, ge=0, le=1)
    crop_max_bytes: int = Field(default=48 * 1024, ge=2048)
    thumbnail_width: int = Field(default=320, ge=32)
    min_interval_s: float = Field(default=0.0, ge=0, description="per source, between events")
    verdict_reuse_s: float = Field(
        default=2.0, ge=0, description="the hub's verdict on a tracked object decides that "
        "track's later frames for this long, unless its evidence changes (0: never)")
    unexplained_per_minute: float = Field(
        default=20.0, ge=0, description="per source: moving regions no detection explains, "
        "escalated as a crop for the hub to judge (0: never)")
    size_change_ratio: float = Field(
        default=2.0, gt=1, description="a track is escalated again when its box's area has "
        "grown or shrunk by this factor since its last escalation")

    @model_validator(mode="after")
    def _band(self) -> PolicyConfig:
        if self.uncertain_score >= self.confident_score:
            raise ValueError("uncertain_score must be below confident_score")
        return self


class TrackingConfig(_Section):
    """Object tracking (norfair): which detection of a frame is which object."""

    min_iou: float = Field(default=0.1, gt=0, lt=1,
                           description="least overlap with a track's predicted box to join it")
    max_missed_frames: int = Field(
        default=15, ge=1, le=1000, description="detector runs without a match before a "
        "track ends (carries it through flicker and short occlusions)")


class JournalConfig(_Section):
    """The decision journal: every tracked object's lifecycle, to a file and MQTT."""

    enabled: bool = True
    path: Path = Field(default=Path("journal.jsonl"),
                       description="JSON lines; relative paths are taken from state_dir")
    max_bytes: int = Field(default=16 * 1024 * 1024, ge=4096,
                           description="the file is rotated when it would grow past this")
    backups: int = Field(default=3, ge=1, le=100, description="rotated files kept")
    publish: bool = Field(default=True, description="also publish each entry (QoS 0) on "
                          "the device's journal topic")


class FallbackConfig(_Section):
    """What happens when no verdict arrives in time."""

    verdict_timeout_s: Seconds = 10.0
    action: Literal["act", "hold"] = "act"


class MotionConfig(_Section):
    """The cheap motion gate in front of the detector."""

    enabled: bool = True
    changed_fraction: float = Field(default=0.004, gt=0, lt=1)
    pixel_threshold: int = Field(default=18, ge=1, le=255)
    hold_frames: int = Field(default=3, ge=0)
    keyframe_interval: int = Field(default=150, ge=1, description="infer at least every N frames")
    width: int = Field(default=160, ge=32)


class SourceConfig(_Section):
    """One input."""

    name: str
    kind: Literal["video", "folder", "sensor", "sample"]
    url: str | None = None
    model: str
    backend: str | None = None
    motion: MotionConfig = MotionConfig()
    max_fps: float | None = Field(default=None, gt=0)
    max_pixels: int = Field(
        default=DEFAULT_MAX_IMAGE_PIXELS, ge=1, description="largest width x height of a "
        "folder's image or a stream's frame, read from its header before decoding")
    loop: bool = False
    await_verdicts: bool = Field(
        default=False, description="recorded footage only (a video file, a folder, the "
        "sample): take the next frame only once the hub judged this frame's escalations "
        "(or their fallback ran), as `bench cascade` does, so that a replay of footage "
        "decides every frame with every verdict it asked for")
    topic: str | None = None
    window: int = Field(default=32, ge=2)
    features: tuple[str, ...] = ()
    broker: MqttConfig | None = Field(
        default=None, description="a sensor source's broker (credentials and TLS); "
        "default: [mqtt]'s. The hub's broker pins each device to one client id, so a "
        "sensor source there needs a local broker of its own")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_name(value, "source name")

    @model_validator(mode="after")
    def _needs(self) -> SourceConfig:
        if self.kind in ("video", "folder") and not self.url:
            raise ValueError(f"a {self.kind} source needs url")
        if self.kind == "sensor" and not self.topic:
            raise ValueError("a sensor source needs topic")
        live = self.kind == "sensor" or (
            self.kind == "video" and self.url is not None
            and ("://" in self.url or self.url.isdigit()))
        if self.await_verdicts and live:
            raise ValueError(f"await_verdicts: {self.url or self.topic!r} is live; only "
                             "recorded footage (a video file, a folder, the sample) can wait")
        return self


class ActionConfig(_Section):
    """Something local systems react to: an MQTT message, a command, or a webhook."""

    kind: Literal["mqtt", "command", "webhook"]
    on: tuple[Literal["decision", "verdict", "fallback", "reconciled"], ...] = (
        "decision", "verdict", "fallback",
    )
    topic: str | None = None
    command: tuple[str, ...] = ()
    url: str | None = None
    timeout_s: Seconds = 5.0

    @model_validator(mode="after")
    def _needs(self) -> ActionConfig:
        wanted = {"mqtt": self.topic, "command": self.command, "webhook": self.url}[self.kind]
        if not wanted:
            field = {"mqtt": "topic", "command": "command", "webhook": "url"}[self.kind]
            raise ValueError(f"a {self.kind} action needs {field}")
        return self


class UpdatesConfig(_Section):
    """Signed model updates from the hub's TUF repository."""

    enabled: bool = False
    url: str | None = Field(default=None, description="the hub's /tuf base URL")
    trusted_root: Path | None = Field(default=None, description="root.json from provisioning")
    health_inferences: int = Field(default=50, ge=1, description="calls judged after a swap")
    health_warmup_inferences: int = Field(default=20, ge=0, description="not judged")
    health_max_wait_s: Seconds = 600.0
    health_side_by_side: bool = Field(
        default=True, description="run the previous model beside the new one in the window, "
        "so that latency is compared in pairs under the same load (costs one more inference "
        "a frame while the window lasts); off, latency is not judged")
    max_latency_ratio: float = Field(default=1.5, gt=1)
    max_escalation_ratio: float = Field(default=2.0, gt=1)

    @model_validator(mode="after")
    def _needs(self) -> UpdatesConfig:
        if self.enabled and (not self.url or self.trusted_root is None):
            raise ValueError("enabled updates need url and trusted_root")
        return self


class HomeAssistantConfig(_Section):
    """Home Assistant's MQTT discovery on a local broker (see
    :mod:`edge_agent.home_assistant`); off by default."""

    enabled: bool = False
    broker: MqttConfig = Field(
        default_factory=MqttConfig, description="the local broker Home Assistant reads "
        "(host, port, username, password, tls, ca_file ...): not the hub's")
    discovery_prefix: str = Field(default="homeassistant", pattern=r"^[A-Za-z0-9_/-]+$")
    state_prefix: str = Field(default="edge-agent", pattern=r"^[A-Za-z0-9_/-]+$")
    node_id: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="Home Assistant's node id; default the device id ('.' as '_')")


class MetricsConfig(_Section):
    """Prometheus metrics on an optional local port (0 = off)."""

    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535)


class WatchdogConfig(_Section):
    """When the pipeline counts as stuck (no frame finished for this long)."""

    stuck_after_s: Seconds = 30.0


class AgentConfig(_Section):
    """The whole configuration file."""

    device: DeviceConfig
    state_dir: Path = Path("/var/lib/edge-agent")
    model_store: Path | None = None
    mqtt: MqttConfig = MqttConfig()
    outbox: OutboxConfig = OutboxConfig()
    policy: PolicyConfig = PolicyConfig()
    tracking: TrackingConfig = TrackingConfig()
    journal: JournalConfig = JournalConfig()
    fallback: FallbackConfig = FallbackConfig()
    sources: tuple[SourceConfig, ...] = Field(min_length=1)
    actions: tuple[ActionConfig, ...] = ()
    metrics: MetricsConfig = MetricsConfig()
    watchdog: WatchdogConfig = WatchdogConfig()
    updates: UpdatesConfig = UpdatesConfig()
    home_assistant: HomeAssistantConfig = HomeAssistantConfig()

    @model_validator(mode="after")
    def _unique_sources(self) -> AgentConfig:
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ValueError(f"source names must be unique, got {names}")
        return self

    @property
    def journal_path(self) -> Path:
        """The decision journal's file, relative paths taken from ``state_dir``."""
        return self.journal.path if self.journal.path.is_absolute() else (
            self.state_dir / self.journal.path
        )

    @property
    def outbox_path(self) -> Path:
        """The outbox database, relative paths taken from ``state_dir``."""
        return self.outbox.path if self.outbox.path.is_absolute() else (
            self.state_dir / self.outbox.path
        )


def parse_config(raw: dict[str, Any], *, origin: str = "config",
                 environ: dict[str, str] | None = None) -> AgentConfig:
    """Validate a parsed TOML document, applying environment overrides for secrets.

    Raises:
        ConfigError: A key is unknown, missing or has a wrong value; the message names the
            key, the value and what was expected.
    """
    environ = dict(os.environ) if environ is None else environ
    password = environ.get(PASSWORD_ENV)
    if password is not None:
        raw = {**raw, "mqtt": {**raw.get("mqtt", {}), "password": password,
                               "password_file": None}}
    try:
        return AgentConfig.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
        # A table whose items failed is reported again as a whole (``sources`` "should
        # have at least 1 item"): keep only the items' own errors.
        errors = [e for e in errors if not any(
            len(o["loc"]) > len(e["loc"]) and o["loc"][:len(e["loc"])] == e["loc"]
            for o in errors)] or errors
        problems = [_problem(origin, error) for error in errors]
        first = errors[0]
        key = ".".join(str(p) for p in first["loc"]) or None
        raise ConfigError(problems[0][1], key=key,
                          problems=tuple(text for _, text in problems)) from exc


def _problem(origin: str, error: ErrorDetails) -> tuple[str | None, str]:
    """One validation error as ``(key, message)``, the message naming key and value."""
    key = ".".join(str(p) for p in error["loc"]) or None
    if error["type"] == "missing":
        return key, f"{origin}: {key}: required key is missing"
    if error["type"] == "extra_forbidden":
        return key, f"{origin}: {key}: unknown key"
    value = error.get("input")
    shown = repr(value) if not isinstance(value, dict) else "a table"
    return key, f"{origin}: {key or '(top level)'} = {shown}: {error['msg']}"


def file_problems(config: AgentConfig, *, origin: str = "config") -> list[str]:
    """What the valid ``config`` names on disk but is not there: TLS files (of ``[mqtt]``
    and of each sensor source's broker) and the update client's trusted root.

    Returns:
        One message per problem, naming the key and the path; empty when all is there.
    """
    named: list[tuple[str, Path | None]] = []
    brokers = [("mqtt", config.mqtt)] + [
        (f"sources.{i}.broker", s.broker) for i, s in enumerate(config.sources)
        if s.broker is not None]
    for prefix, broker in brokers:
        named += [(f"{prefix}.ca_file", broker.ca_file), (f"{prefix}.cert_file",
                   broker.cert_file), (f"{prefix}.key_file", broker.key_file),
                  (f"{prefix}.password_file", broker.password_file)]
    named.append(("updates.trusted_root", config.updates.trusted_root))
    problems = []
    for key, path in named:
        if path is None:
            continue
        if not path.is_file():
            problems.append(f"{origin}: {key} = '{path}': no such file")
        elif not os.access(path, os.R_OK):
            problems.append(f"{origin}: {key} = '{path}': not readable by this user")
    return problems


def load_config(path: Path, *, environ: dict[str, str] | None = None) -> AgentConfig:
    """Read and validate a TOML configuration file.

    Raises:
        ConfigError: The file is missing or not TOML, or a value is wrong.
    """
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    return read_secrets(parse_config(raw, origin=str(path), environ=environ))


def read_secrets(config: AgentConfig) -> AgentConfig:
    """``config`` with every broker's ``password_file`` read into its password.

    Raises:
        ConfigError: A password file cannot be read.
    """
    sources = tuple(
        source if source.broker is None else source.model_copy(update={
            "broker": source.broker.with_password_file_read(f"sources.{i}.broker.password_file")})
        for i, source in enumerate(config.sources))
    return config.model_copy(update={
        "mqtt": config.mqtt.with_password_file_read("mqtt.password_file"), "sources": sources})
