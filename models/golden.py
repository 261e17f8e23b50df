"""A model's golden input and outputs: how a device proves an update behaves as signed.

The golden input is made from the model's own input spec, deterministically, so it needs
no extra file in the bundle: a grey gradient through the model's preprocessing for image
models, a fixed pseudo-random row for feature models. The publisher records the first
outputs the model gives on it; the device must reproduce them within a tolerance before
the model may serve. The same input proves each backend candidate at load.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from models.bundle import ModelBundle
from models.errors import ModelError
from models.model import Model
from models.preprocess import ImagePreprocessor

GOLDEN_VALUES = 32
GOLDEN_TOLERANCE = 1e-3
Golden = dict[str, list[float]]


def golden_input(bundle: ModelBundle) -> npt.NDArray[np.generic]:
    """A deterministic input shaped, typed and scaled exactly as the model expects."""
    spec = bundle.manifest.input
    if spec.is_image:
        # A grey gradient through the model's own preprocessing: realistic values, no luck.
        ramp = np.linspace(0, 255, spec.width * 2, dtype=np.float32).astype(np.uint8)
        image = np.broadcast_to(ramp[np.newaxis, :, np.newaxis], (spec.height, ramp.size, 3))
        tensor, _ = ImagePreprocessor(spec)(np.ascontiguousarray(image))
        return tensor
    rng = np.random.default_rng(0)
    return rng.standard_normal(size=(1, *spec.shape[1:])).astype(spec.dtype)


def golden_outputs(model: Model) -> Golden:
    """The first values of each output on the golden input (what a publisher signs)."""
    outputs = model.infer_tensor(golden_input(model.bundle))
    return {name: np.asarray(value, np.float64).ravel()[:GOLDEN_VALUES].tolist()
            for name, value in sorted(outputs.items())}


def smoke_test(model: Model, golden: Mapping[str, Sequence[float]],
               tolerance: float = GOLDEN_TOLERANCE) -> str | None:
    """``None`` if the model reproduces its golden outputs, else why not."""
    if not golden:
        return "there are no golden outputs to check against"
    try:
        actual = golden_outputs(model)
    except ModelError as exc:
        return f"the golden input failed: {exc}"
    for name, expected in golden.items():
        if name not in actual:
            return f"output {name!r} is missing"
        difference = np.abs(np.asarray(actual[name][: len(expected)]) - np.asarray(expected))
        worst = float(difference.max()) if difference.size else 0.0
        if not np.isfinite(worst) or worst > tolerance:
            return f"output {name!r} differs from its golden values by {worst:.3g}"
    return None
