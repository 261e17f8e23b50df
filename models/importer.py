"""Turning a user's ``.onnx`` or ``.tflite`` file into a bundle.

Three steps, the middle one pure:

1. :func:`read_model_facts` reads what the file says: its input (name, shape, dtype,
   TFLite quantization), its outputs, and its metadata (Ultralytics exports carry
   ``names``, ``imgsz``, ``task`` and ``stride``; ONNX files as metadata properties,
   TFLite files as a ``metadata.json`` in a zip appended to the flatbuffer), and whether
   it is quantized (ONNX QDQ nodes, integer TFLite tensors).
2. :func:`draft_manifest` combines those facts with an :class:`ImportRequest` (what the
   user said) into a manifest. It asks, by raising :class:`ModelImportError` naming the
   option, only for what the file does not say.
3. :func:`import_model` proves the draft: the model loads on the CPU, a warm-up runs on
   its golden input, the outputs are finite and fit the decoder, and the golden outputs
   are recorded in the manifest. The bundle written to the store is opened again and must
   reproduce them, so it can be published and rolled out like a zoo model.

Everything read from the file is hostile until checked: metadata is parsed with
:func:`ast.literal_eval` (literals only), sizes and counts are bounded.
"""

from __future__ import annotations

import ast
import io
import json
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from models.backends import BackendSpec, create_backend
from models.backends.litert import import_tflite_interpreter
from models.backends.onnxrt import import_onnxruntime
from models.bundle import ModelBundle, sha256_hex, write_bundle
from models.errors import ModelError, ModelImportError
from models.golden import golden_outputs, smoke_test
from models.manifest import MANIFEST_FILENAME, RUNTIME_SUFFIX, Manifest, Quantization
from models.model import Model
from models.store import ModelStore

MAX_LABELS = 10_000
MAX_SIDE = 8192
MAX_METADATA_BYTES = 1 << 20
ULTRALYTICS_TASKS = {"detect": "detector", "classify": "classifier"}
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul",
                     "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear"})
_ONNX_TYPES = {"tensor(float)": "float32", "tensor(uint8)": "uint8", "tensor(int8)": "int8"}

Family = Literal["ssd-anchors", "yolo", "boxes-scores"]


@dataclass(frozen=True, slots=True)
class TensorFacts:
    """One tensor as the file declares it; ``None`` for a dimension it leaves open."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str
    quantization: tuple[float, int] | None = None


@dataclass(frozen=True, slots=True)
class ModelFacts:
    """What a model file says about itself."""

    runtime: Literal["onnx", "tflite"]
    input: TensorFacts
    outputs: tuple[TensorFacts, ...]
    metadata: dict[str, str] = field(default_factory=dict)
    quantized: bool = False

    @property
    def ultralytics(self) -> bool:
        """Whether the file is an Ultralytics export (it names its author or its classes)."""
        return self.metadata.get("author") == "Ultralytics" or (
            "names" in self.metadata and "imgsz" in self.metadata)


@dataclass(frozen=True, slots=True)
class ImportRequest:
    """What the user says about a model file; ``None`` means "read it from the file".

    Attributes:
        name: Bundle name (default: the file's stem, lower-cased).
        input_size: ``(height, width)`` where the file leaves its input size open and has
            no ``imgsz``.
        mean / std: Normalisation in 0-255 pixel units, per channel or one for all.
        yolo_layout: ``v8`` or ``v5`` where the output's shape cannot tell.
    """

    name: str | None = None
    version: str = "1.0.0"
    task: Literal["detector", "classifier"] | None = None
    family: Family | None = None
    labels: tuple[str, ...] = ()
    score_threshold: float = 0.25
    nms_iou: float = 0.45
    label_thresholds: dict[str, float] = field(default_factory=dict)
    max_detections: int = 100
    color_order: Literal["RGB", "BGR", "GRAY"] | None = None
    resize: Literal["letterbox", "stretch"] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    input_size: tuple[int, int] | None = None
    yolo_layout: Literal["v8", "v5"] | None = None
    description: str = ""
    source: str = ""


def read_model_facts(data: bytes, *, path: str, runtime: str) -> ModelFacts:
    """Read a model file's input, outputs, metadata and quantization.

    Raises:
        ModelImportError: The bytes are not a model of ``runtime`` or have no usable input.
    """
    if runtime == "onnx":
        return _onnx_facts(data, path)
    if runtime == "tflite":
        return _tflite_facts(data, path)
    raise ModelImportError(path, f"unknown runtime {runtime!r}; expected onnx or tflite")


def _onnx_facts(data: bytes, path: str) -> ModelFacts:
    """Read through ONNX Runtime itself, so that importing needs nothing a device lacks."""
    ort = import_onnxruntime()
    try:
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise ModelImportError(path, f"is not an ONNX model ONNX Runtime can load: {exc}") from exc
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ModelImportError(path, f"has {len(inputs)} inputs; a bundle takes exactly one")

    def tensor(value: Any) -> TensorFacts:
        dims = tuple(d if isinstance(d, int) and d > 0 else None for d in value.shape)
        return TensorFacts(value.name, dims, _ONNX_TYPES.get(value.type, value.type))

    metadata = {str(key): str(text)[:MAX_METADATA_BYTES]
                for key, text in session.get_modelmeta().custom_metadata_map.items()}
    # A QDQ graph names its quantization operators in plain text in the protobuf.
    quantized = any(op.encode() in data for op in QDQ_OPS)
    return ModelFacts("onnx", tensor(inputs[0]), tuple(tensor(v) for v in session.get_outputs()),
                      metadata, quantized)


def _tflite_facts(data: bytes, path: str) -> ModelFacts:
    module, _ = import_tflite_interpreter()
    try:
        interpreter = module.Interpreter(model_content=data)
    except (ValueError, RuntimeError) as exc:
        raise ModelImportError(path, f"is not a TFLite model: {exc}") from exc

    def tensor(detail: dict[str, Any]) -> TensorFacts:
        signature = detail.get("shape_signature", detail["shape"])
        dims = tuple(int(d) if int(d) > 0 else None for d in signature)
        dtype = np.dtype(detail["dtype"]).name
        scale, zero_point = detail["quantization"]
        quant = (float(scale), int(zero_point)) if dtype in ("int8", "uint8") and scale else None
        return TensorFacts(str(detail["name"]), dims, dtype, quant)

    inputs = interpreter.get_input_details()
    if len(inputs) != 1:
        raise ModelImportError(path, f"has {len(inputs)} inputs; a bundle takes exactly one")
    outputs = tuple(tensor(d) for d in interpreter.get_output_details())
    input_facts = tensor(inputs[0])
    quantized = input_facts.quantization is not None or any(
        o.quantization is not None for o in outputs)
    return ModelFacts("tflite", input_facts, outputs, _appended_metadata(data), quantized)


def _appended_metadata(data: bytes) -> dict[str, str]:
    """Ultralytics appends a zip holding ``metadata.json`` to its TFLite exports."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            info = archive.getinfo("metadata.json")
            if info.file_size > MAX_METADATA_BYTES:
                return {}
            raw = json.loads(archive.read(info))
    except (zipfile.BadZipFile, KeyError, ValueError):
        return {}
    if not isinstance(raw, dict):
        return {}
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in raw.items()}


def _literal(text: str) -> object:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        try:
            parsed: object = json.loads(text)
        except ValueError:
            return None
        return parsed


def metadata_labels(metadata: dict[str, str], path: str) -> tuple[str, ...]:
    """Class names from Ultralytics' ``names`` (``{0: 'person', ...}`` or a list).

    Raises:
        ModelImportError: ``names`` is present but not a dense list of names.
    """
    text = metadata.get("names")
    if text is None:
        return ()
    value = _literal(text)
    if isinstance(value, dict):
        keys = sorted(value, key=lambda k: int(k) if str(k).lstrip("-").isdigit() else -1)
        if [str(k) for k in keys] != [str(i) for i in range(len(keys))]:
            raise ModelImportError(path, "metadata 'names' does not number its classes 0..n-1")
        value = [value[k] for k in keys]
    if (not isinstance(value, list) or not 0 < len(value) <= MAX_LABELS
            or not all(isinstance(v, str) and 0 < len(v) <= 200 for v in value)):
        raise ModelImportError(path, "metadata 'names' is not a list of class names")
    return tuple(value)


def metadata_image_size(metadata: dict[str, str], path: str) -> tuple[int, int] | None:
    """``(height, width)`` from Ultralytics' ``imgsz`` (``[h, w]`` or one side)."""
    text = metadata.get("imgsz")
    if text is None:
        return None
    value = _literal(text)
    if isinstance(value, int):
        value = [value, value]
    if (not isinstance(value, list | tuple) or len(value) != 2
            or not all(isinstance(v, int) and 0 < v <= MAX_SIDE for v in value)):
        raise ModelImportError(path, f"metadata 'imgsz' is not an image size: {text[:60]!r}")
    return int(value[0]), int(value[1])


def draft_manifest(facts: ModelFacts, request: ImportRequest, *, path: str,
                   file_bytes: bytes) -> Manifest:
    """The manifest for a model file: its facts, completed by the request.

    Raises:
        ModelImportError: Something needed is neither in the file nor in the request; the
            message names the option that supplies it.
    """
    labels = request.labels or metadata_labels(facts.metadata, path)
    task = request.task or ULTRALYTICS_TASKS.get(facts.metadata.get("task", ""))
    if task is None:
        raise ModelImportError(path, "the file does not say what task it does",
                               missing="--task detector or --task classifier")
    input_spec = _input_spec(facts, request, path)
    if task == "detector":
        output = _detector_output(facts, request, labels, path)
    else:
        output = _classifier_output(facts, labels, path)
    name = request.name or Path(path).stem.lower().replace(" ", "-")
    description = request.description or facts.metadata.get("description", "")
    source = request.source or f"imported from {Path(path).name}"
    if facts.ultralytics and facts.metadata.get("version"):
        source += f" (Ultralytics {facts.metadata['version'][:20]})"
    quantization = None
    if facts.quantized:
        quantization = Quantization(scheme="onnx-qdq" if facts.runtime == "onnx" else "tflite")
    raw = {
        "schema_version": 1, "name": name, "version": request.version, "task": task,
        "runtime": facts.runtime,
        "file": {"path": f"model{RUNTIME_SUFFIX[facts.runtime]}",
                 "sha256": sha256_hex(file_bytes), "size_bytes": len(file_bytes)},
        "input": input_spec, "output": output, "description": description[:500],
        "source": source[:500],
        "quantization": quantization.model_dump(mode="json") if quantization else None,
    }
    try:
        return Manifest.model_validate(raw)
    except ValueError as exc:
        raise ModelImportError(path, f"the manifest it makes is invalid: {exc}") from exc


def _input_spec(facts: ModelFacts, request: ImportRequest, path: str) -> dict[str, Any]:
    tensor = facts.input
    if tensor.dtype not in ("float32", "uint8", "int8"):
        raise ModelImportError(path, f"input {tensor.name!r} has type {tensor.dtype}; "
                               "only float32, uint8 and int8 inputs are supported")
    if len(tensor.shape) != 4:
        raise ModelImportError(path, f"input {tensor.name!r} has shape {_shown(tensor.shape)}; "
                               "an image model takes [batch, h, w, c] or [batch, c, h, w]")
    _, second, _, last = tensor.shape
    channels_last = last in (1, 3) and (second not in (1, 3) or facts.runtime == "tflite")
    layout = "NHWC" if channels_last else "NCHW"
    if layout == "NCHW" and second not in (1, 3):
        raise ModelImportError(path, f"input shape {_shown(tensor.shape)} has no 1 or 3 "
                               "channel axis")
    height, width = (tensor.shape[1], tensor.shape[2]) if channels_last else (
        tensor.shape[2], tensor.shape[3])
    if height is None or width is None:
        size = request.input_size or metadata_image_size(facts.metadata, path)
        if size is None:
            raise ModelImportError(path, f"input shape {_shown(tensor.shape)} leaves the "
                                   "image size open", missing="--input-size HxW")
        height, width = size
    channels = 3 if (last if channels_last else second) == 3 else 1
    shape = [1, height, width, channels] if channels_last else [1, channels, height, width]
    color_order = request.color_order or ("GRAY" if channels == 1 else "RGB")
    spec: dict[str, Any] = {
        "name": tensor.name, "shape": shape, "layout": layout, "dtype": tensor.dtype,
        "color_order": color_order, "resize": request.resize or "letterbox",
    }
    normalization = _normalization(facts, request, channels, path)
    if normalization is not None:
        spec["normalization"] = normalization
    if tensor.quantization is not None:
        spec["quantization"] = {"scale": tensor.quantization[0],
                                "zero_point": tensor.quantization[1]}
    return spec


def _normalization(facts: ModelFacts, request: ImportRequest, channels: int,
                   path: str) -> dict[str, list[float]] | None:
    if request.mean is not None or request.std is not None:
        mean = request.mean or (0.0,)
        std = request.std or (1.0,)
        return {"mean": _per_channel(mean, channels, "--mean", path),
                "std": _per_channel(std, channels, "--std", path)}
    takes_real_values = facts.input.dtype == "float32" or facts.input.quantization is not None
    if not takes_real_values:
        return None  # raw pixels
    if facts.ultralytics:  # Ultralytics models take RGB scaled to 0..1
        return {"mean": [0.0] * channels, "std": [255.0] * channels}
    raise ModelImportError(path, "the file does not say how its input is normalised",
                           missing="--mean and --std in 0-255 units, e.g. --mean 0 --std 255")


def _per_channel(values: tuple[float, ...], channels: int, option: str,
                 path: str) -> list[float]:
    if len(values) == 1:
        return [float(values[0])] * channels
    if len(values) != channels:
        raise ModelImportError(path, f"{option} needs 1 or {channels} values, got "
                               f"{len(values)}")
    return [float(v) for v in values]


def _detector_output(facts: ModelFacts, request: ImportRequest, labels: tuple[str, ...],
                     path: str) -> dict[str, Any]:
    family = request.family or _guess_family(facts)
    if family is None:
        shown = ", ".join(f"{o.name} {_shown(o.shape)}" for o in facts.outputs)
        raise ModelImportError(path, f"cannot tell the detector family from its outputs "
                               f"({shown})", missing="--family yolo or --family boxes-scores")
    common: dict[str, Any] = {
        "kind": "detector", "family": family, "score_threshold": request.score_threshold,
        "label_thresholds": request.label_thresholds,
        "max_detections": request.max_detections,
    }
    if family == "yolo":
        return {**common, **_yolo_output(facts, request, labels, path)}
    if family == "boxes-scores":
        return {**common, **_boxes_scores_output(facts, labels, path)}
    raise ModelImportError(path, "an ssd-anchors detector needs its anchor grid, which no file "
                           "says; write its manifest by hand (see models/zoo.py)")


def _guess_family(facts: ModelFacts) -> Family | None:
    if len(facts.outputs) == 1 and len(facts.outputs[0].shape) in (2, 3):
        return "yolo"
    if len(facts.outputs) >= 2 and any(o.shape[-1:] == (4,) for o in facts.outputs):
        return "boxes-scores"
    return None


def _yolo_output(facts: ModelFacts, request: ImportRequest, labels: tuple[str, ...],
                 path: str) -> dict[str, Any]:
    if len(facts.outputs) != 1:
        raise ModelImportError(path, f"a YOLO model has one output; this has "
                               f"{len(facts.outputs)}")
    output = facts.outputs[0]
    dims = list(output.shape[1:]) if len(output.shape) == 3 else list(output.shape)
    if not labels:
        raise ModelImportError(path, "the file does not name its classes",
                               missing="--labels a,b,c")
    count = len(labels)
    layout = request.yolo_layout
    if layout is None:
        if count + 4 in dims:
            layout = "v8"
        elif count + 5 in dims:
            layout = "v5"
        else:
            raise ModelImportError(
                path, f"output {output.name!r} {_shown(output.shape)} fits neither 4 + "
                f"{count} (v8) nor 5 + {count} (v5) values per candidate",
                missing="--labels with the right class count, or --yolo-layout")
    # Ultralytics' TFLite exports give boxes normalised to the input size.
    coordinates = "normalized" if facts.runtime == "tflite" and facts.ultralytics else "pixels"
    return {"output": output.name, "layout": layout, "coordinates": coordinates,
            "labels": list(labels), "nms_iou": request.nms_iou}


def _boxes_scores_output(facts: ModelFacts, labels: tuple[str, ...],
                         path: str) -> dict[str, Any]:
    if not labels:
        raise ModelImportError(path, "the file does not name its classes",
                               missing="--labels a,b,c")
    boxes = [o for o in facts.outputs if o.shape[-1:] == (4,)]
    rest = [o for o in facts.outputs if o not in boxes]
    counts = [o for o in rest if len(o.shape) <= 1 or o.shape[1:] in ((), (1,))]
    per_box = [o for o in rest if o not in counts]
    if len(boxes) != 1 or not 1 <= len(per_box) <= 2 or len(counts) > 1:
        raise ModelImportError(path, "expected one [n, 4] boxes output, scores (and classes), "
                               "and at most one count; got "
                               + ", ".join(f"{o.name} {_shown(o.shape)}" for o in facts.outputs))
    spec: dict[str, Any] = {"boxes_output": boxes[0].name, "labels": list(labels)}
    if len(per_box) == 2:
        classes, scores = _classes_and_scores(per_box[0], per_box[1], facts.runtime)
        spec["classes_output"] = classes.name
    else:
        [scores] = per_box
    spec["scores_output"] = scores.name
    if counts:
        spec["count_output"] = counts[0].name
    if facts.runtime == "tflite":  # TFLite_Detection_PostProcess: [ymin, xmin, ymax, xmax]
        spec.update(box_order="yxyx", coordinates="normalized")
    else:  # ONNX exports with NMS inside give corners in input pixels
        spec.update(box_order="xyxy", coordinates="pixels")
    return spec


def _classes_and_scores(first: TensorFacts, second: TensorFacts,
                        runtime: str) -> tuple[TensorFacts, TensorFacts]:
    """Which of two per-box outputs holds classes: by name where one says so, else by the
    usual order (TFLite's post-processing op: classes, then scores; ONNX exports: scores,
    then classes)."""
    for candidate, other in ((first, second), (second, first)):
        if any(word in candidate.name.lower() for word in ("class", "label")):
            return candidate, other
        if any(word in candidate.name.lower() for word in ("score", "conf")):
            return other, candidate
    return (first, second) if runtime == "tflite" else (second, first)


def _classifier_output(facts: ModelFacts, labels: tuple[str, ...], path: str) -> dict[str, Any]:
    if len(facts.outputs) != 1:
        raise ModelImportError(path, f"a classifier has one output; this has "
                               f"{len(facts.outputs)}")
    if not labels:
        raise ModelImportError(path, "the file does not name its classes",
                               missing="--labels a,b,c")
    # Ultralytics' classifiers end in a softmax already.
    return {"kind": "classifier", "output": facts.outputs[0].name, "labels": list(labels),
            "activation": "none" if facts.ultralytics else "softmax"}


def _shown(shape: tuple[int | None, ...]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def cpu_spec(bundle: ModelBundle) -> BackendSpec:
    """The plain CPU backend of a bundle's runtime: present wherever the runtime is."""
    if bundle.manifest.runtime == "tflite":
        return BackendSpec("litert", "cpu")
    return BackendSpec("onnxruntime", "cpu")


def prove_bundle(bundle: ModelBundle) -> dict[str, tuple[float, ...]]:
    """Load ``bundle`` on the CPU, run its golden input and (for a detector) decode an
    image; return the golden outputs.

    Raises:
        ModelImportError: The runtime refuses the model, an output is not finite, or the
            outputs do not fit the manifest's decoder.
    """
    backend = create_backend(bundle, cpu_spec(bundle))
    model = Model(bundle, backend)
    try:
        backend.load()
        golden = golden_outputs(model)
        for name, values in golden.items():
            if not np.isfinite(values).all():
                raise ModelImportError(str(bundle.model_path),
                                       f"warm-up output {name!r} is not finite")
        spec = bundle.manifest.input
        if bundle.manifest.task == "detector":
            model.detect(np.full((spec.height, spec.width, 3), 114, np.uint8))
        elif bundle.manifest.task == "classifier":
            model.classify(np.full((spec.height, spec.width, 3), 114, np.uint8))
    except ModelImportError:
        raise
    except ModelError as exc:
        raise ModelImportError(str(bundle.model_path), f"the warm-up failed: {exc}") from exc
    finally:
        model.close()
    return {name: tuple(values) for name, values in golden.items()}


def add_proven(store: ModelStore, manifest: Manifest, model_bytes: bytes) -> ModelBundle:
    """Prove a drafted bundle, record its golden outputs, write it into ``store``, and
    check that the stored copy reproduces them.

    Raises:
        ModelImportError: The proof failed; nothing is written.
    """
    with tempfile.TemporaryDirectory(prefix="edge-agent-import-") as tmp:
        draft = write_bundle(Path(tmp) / "bundle", manifest, model_bytes)
        golden = prove_bundle(draft)
    stored = store.add(manifest.model_copy(update={"golden": golden}), model_bytes)
    model = Model(stored, create_backend(stored, cpu_spec(stored)))
    try:
        model.backend.load()
        problem = smoke_test(model, {k: list(v) for k, v in golden.items()})
    finally:
        model.close()
    if problem is not None:
        raise ModelImportError(str(stored.root / MANIFEST_FILENAME),
                               f"the stored bundle does not reproduce its warm-up: {problem}")
    return stored


def import_model(path: Path, request: ImportRequest, store: ModelStore) -> ModelBundle:
    """Turn the model file at ``path`` into a proven bundle in ``store``.

    Raises:
        ModelImportError: The file is unreadable, is neither ``.onnx`` nor ``.tflite``,
            leaves something unsaid that the request does not give, or fails its proof.
    """
    runtime = {".onnx": "onnx", ".tflite": "tflite"}.get(path.suffix.lower())
    if runtime is None:
        raise ModelImportError(str(path), "is neither an .onnx nor a .tflite file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelImportError(str(path), f"cannot be read: {exc}") from exc
    return import_bytes(data, request, store, path=str(path), runtime=runtime)


def import_bytes(data: bytes, request: ImportRequest, store: ModelStore, *, path: str,
                 runtime: str) -> ModelBundle:
    """:func:`import_model` for bytes already in memory (the zoo's verified downloads)."""
    facts = read_model_facts(data, path=path, runtime=runtime)
    manifest = draft_manifest(facts, request, path=path, file_bytes=data)
    return add_proven(store, manifest, data)
