"""The enrollment bundle: everything a device needs to join the fleet, in one file.

``cloud-hub devices add ID --bundle FILE`` writes it; ``edge-agent enroll FILE`` turns
it into the agent's configuration. It is a contract between the two sides, so it lives
here, with one encode/decode pair like the wire messages: JSON, validated strictly,
unknown keys refused, a ``schema`` tag (``enrollment/1``) so that a later format is
recognised rather than misread.

What it holds: the device's id and group; the broker's address as the device must use it
(``mqtts://host:port``, which may differ from the address the hub itself uses), the CA
certificate that signed the broker's certificate (PEM, inline), the device's MQTT
username and password; the hub's public URL; and, when the hub signs model updates, the
TUF trusted root (inline JSON) and the URL of the TUF repository. The password makes the
file a secret: it is written readable by its owner only, and the agent's side keeps the
password in a file of its own, readable by its owner only, too.

Pure: no I/O here; the two CLIs read and write the file.
"""

from __future__ import annotations

import json
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sync.errors import MalformedMessageError
from sync.topics import check_name

ENROLLMENT_SCHEMA = "enrollment/1"
MAX_BUNDLE_BYTES = 1024 * 1024  # a CA chain and a TUF root are a few KB each
PEM_CERTIFICATE = "-----BEGIN CERTIFICATE-----"


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BrokerAddress(_Part):
    """Where the device finds the broker, and how it proves itself there.

    Attributes:
        url: ``mqtts://host:port`` (TLS, verified) or ``mqtt://host:port`` (plain TCP,
            for a broker on a trusted network only).
        ca_pem: The CA certificate(s) that signed the broker's certificate, PEM;
            ``None``: the device's system CAs.
        username: The device's MQTT username (its id).
        password: Its MQTT password.
        prefix: The fleet's topic prefix.
    """

    url: str
    ca_pem: str | None = None
    username: str = Field(min_length=1)
    password: str = Field(min_length=1)
    prefix: str = "fleet"

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError(f"broker url {value!r} is not mqtts://host:port or mqtt://host:port")
        parts.port  # noqa: B018  (a port out of range raises ValueError here)
        return value

    @field_validator("ca_pem")
    @classmethod
    def _pem(cls, value: str | None) -> str | None:
        if value is not None and PEM_CERTIFICATE not in value:
            raise ValueError("ca_pem holds no PEM certificate")
        return value

    @property
    def tls(self) -> bool:
        """Whether the broker speaks TLS (``mqtts``)."""
        return urlsplit(self.url).scheme == "mqtts"

    @property
    def host(self) -> str:
        """The broker's host name, as its certificate names it."""
        host = urlsplit(self.url).hostname
        assert host is not None  # checked by the validator
        return host

    @property
    def port(self) -> int:
        """The broker's port (8883 for mqtts, 1883 for mqtt, unless the URL says)."""
        return urlsplit(self.url).port or (8883 if self.tls else 1883)


class UpdateTrust(_Part):
    """Signed model updates: the hub's TUF repository and the root the device trusts.

    Attributes:
        url: The TUF repository's base URL (the hub's ``/tuf``).
        trusted_root: The TUF root metadata the device starts from (JSON object).
    """

    url: str = Field(min_length=1)
    trusted_root: dict[str, object]

    @field_validator("trusted_root")
    @classmethod
    def _root(cls, value: dict[str, object]) -> dict[str, object]:
        signed = value.get("signed")
        if not isinstance(signed, dict) or signed.get("_type") != "root":
            raise ValueError("trusted_root is not TUF root metadata")
        return value


class EnrollmentBundle(_Part):
    """One device's enrollment (see the module docstring).

    Attributes:
        device_id: The device's id (also its MQTT username and client id).
        group: Its group (rollouts go to groups).
        broker: The broker and the device's credentials there.
        hub_url: The hub's public URL (dashboard and API).
        updates: Signed updates, or ``None`` where the hub has no TUF repository yet.
    """

    schema_tag: Literal["enrollment/1"] = Field(default="enrollment/1", alias="schema")
    device_id: str
    group: str
    broker: BrokerAddress
    hub_url: str | None = None
    updates: UpdateTrust | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("device_id", "group")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_name(value)


def encode_enrollment(bundle: EnrollmentBundle) -> bytes:
    """The bundle as the file's bytes (indented JSON)."""
    return json.dumps(bundle.model_dump(mode="json", by_alias=True), indent=1).encode()


def decode_enrollment(data: bytes, *, max_bytes: int = MAX_BUNDLE_BYTES) -> EnrollmentBundle:
    """Parse and validate a bundle file's bytes.

    Raises:
        MalformedMessageError: Too large, not JSON, another schema, or a field missing or
            wrong (``field`` names it).
    """
    if len(data) > max_bytes:
        raise MalformedMessageError(f"enrollment bundle of {len(data)} bytes exceeds "
                                    f"{max_bytes} bytes")
    try:
        raw = json.loads(data)
    except ValueError as exc:
        raise MalformedMessageError(f"enrollment bundle is not JSON: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("schema") != ENROLLMENT_SCHEMA:
        schema = raw.get("schema") if isinstance(raw, dict) else None
        raise MalformedMessageError(
            f"not an enrollment bundle of schema {ENROLLMENT_SCHEMA!r} (schema {schema!r})",
            field="schema")
    try:
        return EnrollmentBundle.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"])
        raise MalformedMessageError(f"enrollment bundle: {where}: {error['msg']}",
                                    field=where) from exc
