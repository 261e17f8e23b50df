"""Errors raised by the cloud hub.

Hierarchy::

    HubError                    anything the hub refuses
    ├── RetryLaterError         transient: try again later (a message stays unacknowledged)
    │   ├── StoreUnavailableError   (also a StoreError) database down, locked or disk full
    │   └── ImageStoreUnavailableError  (also an ImageStoreError) image storage failed
    ├── SettingsError           settings missing, wrong, or a placeholder secret in production
    ├── ImageStoreError         an image too large, or a reference that is not one
    ├── StoreError              the database failed (permanently) or holds a newer schema
    │   ├── NotFoundError       no such device, event, model or token
    │   └── BadCursorError      a page cursor the hub did not issue
    ├── ProvisioningError       a device id is refused, or the broker refused a change
    │   └── DeviceExistsError   provisioned already, and no rotation was asked for
    ├── BrokerUnavailableError  the broker could not be reached or did not answer (retry)
    ├── UpdateRepositoryError   the TUF repository or its signing keys cannot be used
    │   ├── TargetsKeyOfflineError  signing targets needs the offline targets key
    │   └── UnprotectedKeyError     a private key file is readable by others
    └── JudgeError              the heavy model could not judge an escalation
        └── BadImageError       an image was refused before or while decoding it
"""

from __future__ import annotations

from pathlib import Path

from models import ImageRefusal


class HubError(Exception):
    """Base of every error the hub raises."""


class SettingsError(HubError):
    """The hub's settings are unusable; the message names the setting."""


class RetryLaterError(HubError):
    """A transient failure: the same work may succeed later. Every other ``HubError`` is
    permanent: retrying the same input fails the same way."""


class StoreError(HubError):
    """The database failed."""


class StoreUnavailableError(StoreError, RetryLaterError):
    """The database cannot be used right now (unreachable, locked, disk full)."""


class ImageStoreError(HubError):
    """An image the image store refuses (too large), or a reference that is not one."""


class ImageStoreUnavailableError(ImageStoreError, RetryLaterError):
    """The image storage cannot be used right now (disk full, object store unreachable)."""


class BadCursorError(StoreError):
    """A page cursor that the hub did not issue (or that was altered)."""


class NotFoundError(StoreError):
    """No such record.

    Attributes:
        kind: ``device``, ``event``, ``model`` or ``token``.
        key: What was looked up.
    """

    def __init__(self, kind: str, key: str) -> None:
        self.kind = kind
        self.key = key
        super().__init__(f"no {kind} {key!r}")


class ProvisioningError(HubError):
    """A device cannot be provisioned as asked: its id is unusable or reserved, it exists
    already (and no rotation was asked for), or the broker refused the change."""


class DeviceExistsError(ProvisioningError):
    """The device is provisioned already; issuing new credentials is a rotation.

    Attributes:
        device_id: The device.
    """

    def __init__(self, device_id: str) -> None:
        self.device_id = device_id
        super().__init__(f"device {device_id!r} exists; rotate its credentials explicitly "
                         "(cloud-hub devices add --rotate, or \"rotate\": true in the API)")


class BrokerUnavailableError(HubError):
    """The broker could not be reached or did not answer in time; retry later."""


class JudgeError(HubError):
    """The heavy model could not judge an escalation (e.g. its image does not decode)."""


class BadImageError(JudgeError):
    """An escalated or uploaded image was refused, most often before it was decoded.

    Attributes:
        reason: ``unknown-format``, ``malformed-header``, ``too-large`` or ``undecodable``.
    """

    def __init__(self, reason: ImageRefusal, detail: str) -> None:
        self.reason: ImageRefusal = reason
        super().__init__(detail)


class UpdateRepositoryError(HubError):
    """The TUF repository or its signing keys cannot be used."""


class TargetsKeyOfflineError(UpdateRepositoryError):
    """Signing targets needs the targets key, which this hub keeps offline: publishing
    happens with ``cloud-hub models publish BUNDLE --targets-key FILE``."""


class UnprotectedKeyError(UpdateRepositoryError):
    """A private key file that its group or others may read (as ssh, we refuse it).

    Attributes:
        path: The key file.
        mode: Its permission bits.
    """

    def __init__(self, path: Path, mode: int) -> None:
        self.path = path
        self.mode = mode
        super().__init__(f"{path}: permissions {mode:04o} are too open: a private key must be "
                         f"readable by its owner only (chmod 600 {path})")
