"""Sample security-camera footage composed from real photographs, with ground truth.

A static outdoor background (``rocket.png``), the astronaut's head from ``astronaut.png``
walking through at several scales, the cat from ``chelsea.png`` crossing, long static
stretches, slow lighting drift and sensor noise. All photographs ship inside
scikit-image, so nothing is downloaded. Every frame carries the boxes of what is in it
and the name of its segment.

With ``hard``, hard segments follow: two faces at once (one small), a face in grey low
light, a small blurred face, a face passing behind a pillar (occlusion: a face is in
view while at least half of it shows), and camera shake over the empty scene.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from edge_agent.errors import SampleDataError

ImageArray = npt.NDArray[np.uint8]

# Where things are in the source photographs (pixels of the original images).
_ASTRONAUT_HEAD = (120, 30, 330, 250)  # x1, y1, x2, y2 of the sprite crop
_ASTRONAUT_FACE = (178, 82, 271, 174)  # the face inside astronaut.png
_CAT = (100, 20, 360, 290)


@dataclass(frozen=True, slots=True)
class TruthObject:
    """Something really in a frame: ``face`` or ``cat``, and its box in frame pixels.

    Attributes:
        visible: Share of the object's box inside the frame (1.0 when wholly in view).
    """

    kind: str
    box: tuple[int, int, int, int]
    visible: float = 1.0


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame of footage (RGB) and what is really in it."""

    index: int
    image: ImageArray
    truth: tuple[TruthObject, ...]
    segment: str = "static"

    @property
    def has_face(self) -> bool:
        """A face is at least half in view."""
        return any(obj.kind == "face" and obj.visible >= 0.5 for obj in self.truth)


@dataclass(frozen=True, slots=True)
class _Pass:
    """One object crossing the frame: which sprite, face width in pixels, frames, path."""

    kind: str
    width: int
    frames: int
    y: int
    left_to_right: bool = True
    segment: str = ""
    dark: float = 1.0  # the whole frame's brightness, times this
    grey: bool = False
    blur: int = 0  # Gaussian kernel on the sprite (odd), 0 for none
    partner_width: int = 0  # a second face crossing the other way, this wide
    partner_y: int = 0
    pillar: bool = False  # a pillar in the middle of the view hides what passes it


@dataclass(frozen=True, slots=True)
class _Shake:
    """The camera shakes: the empty scene jumps by up to ``pixels`` each frame."""

    frames: int
    pixels: int


BACKGROUNDS = ("rocket", "coffee", "camera")


def _photographs(background: str) -> tuple[ImageArray, ImageArray, ImageArray]:
    try:
        from skimage import data
    except ImportError as exc:
        raise SampleDataError(
            "sample footage needs scikit-image: pip install 'edge-cloud-runtime[samples]'"
        ) from exc
    scene = getattr(data, background)()
    if scene.ndim == 2:  # "camera" is a grey photograph
        scene = cv2.cvtColor(scene, cv2.COLOR_GRAY2RGB)
    return scene, data.astronaut(), data.chelsea()


class SampleFootage:
    """Deterministic footage of ``width`` x ``height`` frames.

    The script: static scene, the astronaut crosses large, static, the cat crosses,
    static with the light dimming, the astronaut crosses smaller, static; with
    ``distant_pass``, then once more far away (a small face), and static.
    """

    def __init__(
        self, *, width: int = 640, height: int = 360, static_frames: int = 20,
        seed: int = 0, noise_sigma: float = 2.0, distant_pass: bool = False,
        hard: bool = False, background: str = "rocket",
    ) -> None:
        if background not in BACKGROUNDS:
            raise SampleDataError(f"background {background!r}: expected one of {BACKGROUNDS}")
        self.background = background
        if width < 160 or height < 120:
            raise SampleDataError(f"footage must be at least 160x120, got {width}x{height}")
        self.width = width
        self.height = height
        self.static_frames = static_frames
        self.seed = seed
        self.noise_sigma = noise_sigma
        unit = height / 360
        self.script: tuple[_Pass | _Shake | int, ...] = (
            static_frames,
            _Pass("face", int(150 * unit), 24, int(60 * unit), segment="face-large"),
            static_frames,
            _Pass("cat", int(170 * unit), 20, int(150 * unit), left_to_right=False,
                  segment="cat"),
            static_frames,
            _Pass("face", int(110 * unit), 24, int(110 * unit), left_to_right=False,
                  segment="face-medium"),
            static_frames,
        )
        if distant_pass:  # far away: a small face, slower across the view, the edge unsure
            self.script += (_Pass("face", int(88 * unit), 48, int(40 * unit),
                                  segment="face-distant"), static_frames)
        if hard:
            self.script += (
                _Pass("face", int(130 * unit), 36, int(40 * unit), segment="two-faces",
                      partner_width=int(80 * unit), partner_y=int(190 * unit)),
                static_frames,
                _Pass("face", int(120 * unit), 36, int(80 * unit), segment="low-light",
                      dark=0.35, grey=True),
                static_frames,
                _Pass("face", int(64 * unit), 36, int(140 * unit), segment="small-blurred",
                      blur=5),
                static_frames,
                _Pass("face", int(120 * unit), 36, int(70 * unit), segment="occlusion",
                      pillar=True),
                static_frames,
                _Shake(30, max(2, int(6 * unit))),
                static_frames,
            )

    def __len__(self) -> int:
        return sum(step if isinstance(step, int) else step.frames for step in self.script)

    def _pillar(self) -> tuple[int, int]:
        """The occluding pillar's left and right edges."""
        return int(self.width * 0.42), int(self.width * 0.58)

    def frames(self) -> Iterator[Frame]:
        """Yield every frame in order."""
        background_photo, astronaut, cat = _photographs(self.background)
        background = cv2.resize(
            background_photo, (self.width, self.height), interpolation=cv2.INTER_AREA
        )
        sprites = {
            "face": _sprite(astronaut, _ASTRONAUT_HEAD, _ASTRONAUT_FACE),
            "cat": _sprite(cat, _CAT, _CAT),
        }
        rng = np.random.default_rng(self.seed)
        total = len(self)
        index = 0
        for step in self.script:
            count = step if isinstance(step, int) else step.frames
            for k in range(count):
                canvas = background.astype(np.float32)
                truth: tuple[TruthObject, ...] = ()
                segment = "static"
                if isinstance(step, _Shake):
                    segment = "shake"
                    dx, dy = (int(v) for v in rng.integers(-step.pixels, step.pixels + 1, 2))
                    canvas = np.roll(canvas, (dy, dx), axis=(0, 1))
                elif isinstance(step, _Pass):
                    segment = step.segment or step.kind
                    passes = [step]
                    if step.partner_width:
                        passes.append(_Pass(step.kind, step.partner_width, step.frames,
                                            step.partner_y, not step.left_to_right,
                                            blur=step.blur))
                    seen = [self._paste(canvas, sprites[p.kind], p, k) for p in passes]
                    if step.pillar:
                        left, right = self._pillar()
                        canvas[:, left:right] = (70.0, 66.0, 60.0)
                        seen = [self._behind_pillar(obj) for obj in seen]
                    truth = tuple(obj for obj in seen if obj is not None)
                    if step.grey:
                        canvas[:] = canvas.mean(axis=2, keepdims=True)
                    canvas *= np.float32(step.dark)
                # Lighting drifts slowly over the whole clip (clouds, dusk).
                canvas *= 1.0 - 0.25 * np.sin(np.pi * index / max(total - 1, 1))
                noise = rng.standard_normal(size=canvas.shape, dtype=np.float32)
                canvas += noise * np.float32(self.noise_sigma)
                image = np.clip(canvas, 0, 255).astype(np.uint8)
                yield Frame(index, image, truth, segment)
                index += 1

    def _behind_pillar(self, obj: TruthObject | None) -> TruthObject | None:
        """What of ``obj`` the pillar leaves in view."""
        if obj is None:
            return None
        left, right = self._pillar()
        x1, x2 = obj.box[0], obj.box[2]
        width = max(x2 - x1, 1)
        hidden = max(0, min(x2, right) - max(x1, left))
        if hidden >= width:
            return None
        return TruthObject(obj.kind, obj.box, round(obj.visible * (width - hidden) / width, 3))

    def _paste(
        self, canvas: npt.NDArray[np.float32], sprite: tuple[ImageArray, tuple[int, ...]],
        step: _Pass, k: int,
    ) -> TruthObject | None:
        picture, inner = sprite
        scale = step.width / (inner[2] - inner[0])
        h, w = picture.shape[:2]
        new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
        resized = cv2.resize(picture, (new_w, new_h), interpolation=cv2.INTER_AREA)
        if step.blur:
            resized = cv2.GaussianBlur(resized, (step.blur, step.blur), 0)
        progress = (k + 0.5) / step.frames
        if not step.left_to_right:
            progress = 1.0 - progress
        x = round(progress * (self.width + new_w)) - new_w
        y = min(step.y, self.height - new_h)
        x1, y1 = max(x, 0), max(y, 0)
        x2, y2 = min(x + new_w, self.width), min(y + new_h, self.height)
        canvas[y1:y2, x1:x2] = resized[y1 - y : y2 - y, x1 - x : x2 - x]
        box = (
            round(x + inner[0] * scale), round(y + inner[1] * scale),
            round(x + inner[2] * scale), round(y + inner[3] * scale),
        )
        clipped = (
            max(box[0], 0), max(box[1], 0), min(box[2], self.width), min(box[3], self.height)
        )
        visible_area = max(clipped[2] - clipped[0], 0) * max(clipped[3] - clipped[1], 0)
        if visible_area == 0:
            return None
        area = (box[2] - box[0]) * (box[3] - box[1])
        return TruthObject(step.kind, clipped, round(visible_area / area, 3))


def _sprite(
    photo: ImageArray, crop: tuple[int, int, int, int], inner: tuple[int, int, int, int]
) -> tuple[ImageArray, tuple[int, ...]]:
    x1, y1, x2, y2 = crop
    relative = (inner[0] - x1, inner[1] - y1, inner[2] - x1, inner[3] - y1)
    return np.ascontiguousarray(photo[y1:y2, x1:x2]), relative
