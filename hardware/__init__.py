"""Hardware detection and the ordered backend plan.

Probe the machine (:func:`probe_hardware`), order the backends worth trying for a model
(:func:`plan_backends`), then prove them one by one (:func:`load_model`).
"""

from __future__ import annotations

from hardware.errors import HardwareError, NoBackendError, UnknownBackendError
from hardware.plan import (
    BackendPlan,
    Exclusion,
    PlannedBackend,
    PrecisionChoice,
    choose_precision,
    int8_acceleration,
    machine_signature,
    plan_backends,
    plan_for_runtime,
)
from hardware.probe import HardwareProfile, RuntimeInventory, probe_hardware
from hardware.select import BackendFactory, Selection, SkippedBackend, load_model

__all__ = [
    "BackendFactory",
    "BackendPlan",
    "Exclusion",
    "HardwareError",
    "HardwareProfile",
    "NoBackendError",
    "PlannedBackend",
    "PrecisionChoice",
    "RuntimeInventory",
    "Selection",
    "SkippedBackend",
    "UnknownBackendError",
    "choose_precision",
    "int8_acceleration",
    "load_model",
    "machine_signature",
    "plan_backends",
    "plan_for_runtime",
    "probe_hardware",
]
