"""Image to tensor: colour order, letterbox or stretch resize, normalisation, layout.

All of it is vectorised OpenCV/numpy and belongs to the model's input spec, not to a
backend, so every runtime sees exactly the same tensor.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
import numpy.typing as npt

from models.errors import InputSpecError
from models.manifest import InputSpec

ImageArray = npt.NDArray[np.uint8]
FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class Placement:
    """Where the source image landed inside the model input, to map results back.

    ``input_x = source_x * scale_x + pad_x`` (and the same for y), in input pixels.
    """

    source_width: int
    source_height: int
    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float
    input_width: int
    input_height: int
    input_size: FloatArray = field(init=False, repr=False, compare=False)
    padding: FloatArray = field(init=False, repr=False, compare=False)
    scale: FloatArray = field(init=False, repr=False, compare=False)
    source_size: FloatArray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # (x, y) vectors for mapping many points at once, computed once per image.
        object.__setattr__(self, "input_size",
                           np.array([self.input_width, self.input_height], np.float32))
        object.__setattr__(self, "padding", np.array([self.pad_x, self.pad_y], np.float32))
        object.__setattr__(self, "scale", np.array([self.scale_x, self.scale_y], np.float32))
        object.__setattr__(self, "source_size",
                           np.array([self.source_width, self.source_height], np.float32))

    def to_source(
        self, xs: npt.NDArray[np.floating], ys: npt.NDArray[np.floating]
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """Map normalised input coordinates (0..1 of the model input) to source pixels."""
        sx = (np.asarray(xs, dtype=np.float64) * self.input_width - self.pad_x) / self.scale_x
        sy = (np.asarray(ys, dtype=np.float64) * self.input_height - self.pad_y) / self.scale_y
        return sx, sy


def as_rgb_image(image: object) -> ImageArray:
    """Check that ``image`` is a usable picture and return it as an HxWx3 RGB uint8 array.

    Accepts HxW (grey), HxWx1, HxWx3 (RGB) and HxWx4 (RGBA) uint8 arrays.

    Raises:
        InputSpecError: Not an array, wrong dtype, empty, or an unsupported shape.
    """
    if not isinstance(image, np.ndarray):
        raise InputSpecError(f"image must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise InputSpecError(f"image must have dtype uint8, got {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 3:
        rgb = image
    elif image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        rgb = np.asarray(cv2.cvtColor(image, cv2.COLOR_GRAY2RGB), dtype=np.uint8)
    elif image.ndim == 3 and image.shape[2] == 4:
        rgb = np.asarray(cv2.cvtColor(image, cv2.COLOR_RGBA2RGB), dtype=np.uint8)
    else:
        raise InputSpecError(
            f"image must be HxW, HxWx1, HxWx3 or HxWx4, got shape {tuple(image.shape)}"
        )
    if rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise InputSpecError(f"image is empty (shape {tuple(image.shape)})")
    return rgb


class ImagePreprocessor:
    """Turns RGB images into the exact tensor an image model's input spec asks for."""

    def __init__(self, spec: InputSpec) -> None:
        if not spec.is_image:
            raise InputSpecError(f"input layout {spec.layout} is not an image layout")
        self.spec = spec
        self._dtype = np.dtype(spec.dtype)
        self._uniform: tuple[float, float] | None = None
        self._scale: FloatArray | None = None
        self._offset: FloatArray | None = None
        # pixel * scale + offset, per channel: the normalisation, then (for a quantized
        # input) the quantization folded in, so that both are one pass.
        affine: tuple[FloatArray, FloatArray] | None = None
        if spec.normalization is not None:
            std = np.asarray(spec.normalization.std, dtype=np.float32)
            mean = np.asarray(spec.normalization.mean, dtype=np.float32)
            affine = (1.0 / std, -mean / std)
        elif spec.quantization is not None:
            affine = (np.ones(spec.channels, np.float32), np.zeros(spec.channels, np.float32))
        self._depth = cv2.CV_32F
        self._limits: tuple[int, int] | None = None
        if spec.quantization is not None and affine is not None:
            quant = spec.quantization
            affine = (affine[0] / quant.scale, affine[1] / quant.scale + quant.zero_point)
            info = np.iinfo(self._dtype)
            self._limits = (int(info.min), int(info.max))
            self._depth = cv2.CV_8U if self._dtype == np.uint8 else cv2.CV_8S
        if affine is not None:
            scale, offset = affine
            if np.all(scale == scale[0]) and np.all(offset == offset[0]):
                # The usual case, one mean and one std for every channel, is a single
                # fused OpenCV pass: convert, scale and shift (and round and saturate to
                # a quantized type) at once.
                self._uniform = (float(scale[0]), float(offset[0]))
            else:
                # Whole-image tiles: broadcasting a 3-vector makes numpy loop 3 wide,
                # about ten times slower than element-wise work on contiguous arrays.
                tile = (spec.height, spec.width, spec.channels)
                self._scale = np.broadcast_to(scale, tile).astype(np.float32, order="C")
                self._offset = np.broadcast_to(offset, tile).astype(np.float32, order="C")

    def __call__(self, image: object) -> tuple[npt.NDArray[np.generic], Placement]:
        """Return a batch-of-one tensor for ``image`` and where the image was placed."""
        rgb = as_rgb_image(image)
        pixels, placement = self._place(rgb)
        return self._finish(pixels)[np.newaxis], placement

    def _place(self, rgb: ImageArray) -> tuple[ImageArray, Placement]:
        spec = self.spec
        target_w, target_h = spec.width, spec.height
        src_h, src_w = rgb.shape[:2]
        if spec.color_order == "BGR":
            rgb = np.ascontiguousarray(rgb[:, :, ::-1])
        elif spec.color_order == "GRAY":
            rgb = np.asarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), dtype=np.uint8)[..., np.newaxis]
        if spec.resize == "stretch":
            resized = _resize(rgb, target_w, target_h)
            placement = Placement(
                src_w, src_h, target_w / src_w, target_h / src_h, 0.0, 0.0, target_w, target_h
            )
            return resized, placement
        scale = min(target_w / src_w, target_h / src_h)
        new_w = max(1, min(target_w, round(src_w * scale)))
        new_h = max(1, min(target_h, round(src_h * scale)))
        pad_x = (target_w - new_w) // 2
        pad_y = (target_h - new_h) // 2
        if new_w != target_w or new_h != target_h:
            # The resize writes straight into the padded frame: one pass less.
            resized = np.zeros((target_h, target_w, rgb.shape[2]), np.uint8)
            _resize(rgb, new_w, new_h, into=resized[pad_y : pad_y + new_h,
                                                    pad_x : pad_x + new_w])
        else:
            resized = _resize(rgb, new_w, new_h)
        placement = Placement(
            src_w, src_h, new_w / src_w, new_h / src_h, float(pad_x), float(pad_y),
            target_w, target_h,
        )
        return resized, placement

    def _finish(self, pixels: ImageArray) -> npt.NDArray[np.generic]:
        tensor: npt.NDArray[np.generic]
        nchw = self.spec.layout == "NCHW"
        if nchw:  # move the bytes, before they are four times as many floats
            pixels = np.ascontiguousarray(pixels.transpose(2, 0, 1))
        if self._uniform is not None:
            scale, shift = self._uniform
            flat = pixels.reshape(pixels.shape[0], -1)
            tensor = np.asarray(cv2.addWeighted(flat, scale, flat, 0.0, shift,
                                                dtype=self._depth)).reshape(pixels.shape)
        elif self._scale is not None and self._offset is not None:
            normalised = pixels.astype(np.float32)
            tile_scale, tile_offset = self._scale, self._offset
            if nchw:
                tile_scale = tile_scale.transpose(2, 0, 1)
                tile_offset = tile_offset.transpose(2, 0, 1)
            normalised *= tile_scale
            normalised += tile_offset
            if self._limits is not None:
                tensor = np.clip(np.rint(normalised), *self._limits).astype(self._dtype)
            else:
                tensor = normalised
        else:
            tensor = pixels.astype(self._dtype, copy=False)
        return tensor


def _resize(image: ImageArray, width: int, height: int,
            into: ImageArray | None = None) -> ImageArray:
    """``image`` at ``width`` x ``height``, written to ``into`` if given (a view of the
    right size, e.g. the inside of a letterbox)."""
    if image.shape[1] == width and image.shape[0] == height:
        if into is None:
            return image
        into[...] = image
        return into
    # Shrinking a camera frame needs an area filter, or the detector sees aliasing. OpenCV's
    # INTER_AREA is fast for an exact factor of two but about ten times slower for any
    # other factor (1.4 ms for 640x360 -> 192x108, longer than some models run), so halve
    # while the image is at least twice the target (bilinear at exactly one half is the
    # same 2x2 mean, and as fast), then finish with bilinear, which does not alias for the
    # factor below two that is left.
    while image.shape[1] >= 2 * width and image.shape[0] >= 2 * height:
        image = _as_hwc(cv2.resize(image, (image.shape[1] // 2, image.shape[0] // 2),
                                   interpolation=cv2.INTER_AREA))
    if into is not None and into.flags.c_contiguous and into.shape[2] > 1:
        cv2.resize(image, (width, height), dst=into, interpolation=cv2.INTER_LINEAR)
        return into
    resized = _as_hwc(cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR))
    if into is None:
        return resized
    into[...] = resized
    return into


def _as_hwc(image: npt.NDArray[np.generic]) -> ImageArray:
    """OpenCV drops a single channel's axis; put it back."""
    pixels = np.asarray(image, dtype=np.uint8)
    return pixels[:, :, np.newaxis] if pixels.ndim == 2 else pixels
