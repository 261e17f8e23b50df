"""The cloud hub: judges what the edge escalates, stores events, serves the web API,
and distributes signed model updates.

Public API: the service and its settings, the judge's seam (:class:`EventJudge`), the
app factory, the store, the TUF repository and rollouts, and the hub's errors.
"""

from __future__ import annotations

from cloud_hub import _requirements  # noqa: F401  (first: names the [hub] extra if missing)
from cloud_hub.api import create_app
from cloud_hub.distribution import ModelDistribution
from cloud_hub.errors import (
    BadCursorError,
    HubError,
    JudgeError,
    NotFoundError,
    ProvisioningError,
    RetryLaterError,
    SettingsError,
    StoreError,
    StoreUnavailableError,
    UpdateRepositoryError,
)
from cloud_hub.judge import EventJudge, Judgement
from cloud_hub.service import HubService
from cloud_hub.settings import HubSettings, load_settings
from cloud_hub.store import Store
from cloud_hub.updates import ModelRepository

__all__ = [
    "BadCursorError",
    "EventJudge",
    "HubError",
    "HubService",
    "HubSettings",
    "JudgeError",
    "Judgement",
    "ModelDistribution",
    "ModelRepository",
    "NotFoundError",
    "ProvisioningError",
    "RetryLaterError",
    "SettingsError",
    "Store",
    "StoreError",
    "StoreUnavailableError",
    "UpdateRepositoryError",
    "create_app",
    "load_settings",
]
