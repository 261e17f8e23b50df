"""What to say when a model name finds nothing: the command that gets it, or the names it
was probably meant to be. Pure: the caller passes every name it knows."""

from __future__ import annotations

import difflib
from collections.abc import Collection

#: The sensor anomaly model: trained on the device (``edge-agent models train-anomaly``),
#: never downloaded.
ANOMALY_MODEL = "sensor-anomaly"
ONNX_SUFFIX = "-onnx"


def missing_model_hint(name: str, *, stored: Collection[str], zoo: Collection[str]) -> str:
    """One sentence that helps after ``name`` was not found.

    Args:
        stored: Model names the store holds.
        zoo: Model names the zoo can pull.
    """
    if name == ANOMALY_MODEL:
        return "it is trained here, not downloaded: run `edge-agent models train-anomaly`"
    if name in zoo:
        return f"`edge-agent models pull {name}` fetches it from the zoo"
    base = name.removesuffix(ONNX_SUFFIX)
    if base != name and (base in zoo or base in stored):
        pull = "" if base in stored else f"`edge-agent models pull {base}`, then "
        return f"it is {base} converted to ONNX: {pull}`edge-agent models convert {base}`"
    known = sorted({*stored, *zoo, ANOMALY_MODEL})
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    if close:
        return f"did you mean {' or '.join(close)}?"
    return f"models you can get: {', '.join(sorted({*zoo, ANOMALY_MODEL}))}"
