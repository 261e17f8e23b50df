"""Feature extractors for windows of sensor readings, named so manifests can refer to them.

A model trained on one feature set must be fed the same features at run time, so the
manifest's ``input.feature_set`` names the extractor, and the agent refuses a model whose
extractor it does not have.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]

WINDOW_STATS_V1 = "window-stats/1"
LOCAL = 8
WINDOW_STATS_V1_NAMES = (
    "mean", "std", "min", "max", "slope", "net_change", "max_step", "min_local_std", "peak_z",
)


def window_stats_v1(windows: npt.NDArray[np.floating]) -> FloatArray:
    """Nine statistics per window (rows: windows, columns: readings in time order).

    They describe level (mean, min, max), spread (std), trend (least-squares slope, net
    change), jumps (largest step), a stuck sensor (the smallest spread of any
    :data:`LOCAL` consecutive readings: noise keeps it above zero while a sensor works)
    and spikes (largest robust z-score against the window's median).
    """
    values = np.atleast_2d(np.asarray(windows, dtype=np.float64))
    n = values.shape[1]
    if n < LOCAL:
        raise ValueError(f"a window needs at least {LOCAL} readings, got {n}")
    t = np.arange(n, dtype=np.float64) - (n - 1) / 2.0
    steps = np.diff(values, axis=1)
    median = np.median(values, axis=1, keepdims=True)
    mad = np.median(np.abs(values - median), axis=1, keepdims=True) + 1e-6
    features = np.stack([
        values.mean(axis=1),
        values.std(axis=1),
        values.min(axis=1),
        values.max(axis=1),
        (values * t).sum(axis=1) / (t * t).sum(),
        values[:, -1] - values[:, 0],
        np.abs(steps).max(axis=1),
        _rolling_std(values, LOCAL).min(axis=1),
        (np.abs(values - median) / mad).max(axis=1),
    ], axis=1)
    return features.astype(np.float32)


def _rolling_std(values: npt.NDArray[np.float64], width: int) -> npt.NDArray[np.float64]:
    sums = np.cumsum(np.pad(values, ((0, 0), (1, 0))), axis=1)
    squares = np.cumsum(np.pad(values * values, ((0, 0), (1, 0))), axis=1)
    mean = (sums[:, width:] - sums[:, :-width]) / width
    mean_square = (squares[:, width:] - squares[:, :-width]) / width
    return np.sqrt(np.maximum(mean_square - mean * mean, 0.0))


FEATURE_SETS: dict[str, Callable[[npt.NDArray[np.floating]], FloatArray]] = {
    WINDOW_STATS_V1: window_stats_v1,
}
