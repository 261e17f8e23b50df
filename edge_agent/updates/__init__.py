"""Signed model updates on the device: the TUF client, the staged installer, the updater.

* :mod:`~edge_agent.updates.client`: :class:`UpdateClient` follows the hub's TUF
  repository with python-tuf's ngclient and chooses the build that fits this device.
* :mod:`~edge_agent.updates.installer`: :class:`ModelInstaller` stages, smoke-tests,
  swaps and rolls back bundles in slots, resuming after a kill at any step.
* :mod:`~edge_agent.updates.updater`: the ``updater`` thread (:class:`Updater`) that
  follows announcements and drives the two, and the health window (:class:`ModelHealth`).
"""

from __future__ import annotations

from edge_agent.updates.client import (
    DeviceFit,
    ModelOffer,
    UpdateClient,
    choose_offer,
    utc_now,
)
from edge_agent.updates.installer import BundleLoader, ModelInstaller
from edge_agent.updates.updater import ModelHealth, Updater, device_fit, read_trusted_root

__all__ = [
    "BundleLoader",
    "DeviceFit",
    "ModelHealth",
    "ModelInstaller",
    "ModelOffer",
    "UpdateClient",
    "Updater",
    "choose_offer",
    "device_fit",
    "read_trusted_root",
    "utc_now",
]
