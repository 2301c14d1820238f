"""Prompt-adherence checker for the tiny model: estimates object colour, shape and motion from video frames.

Not an upstream module. It relies on the data design of ``data.py``: objects are bright palette colours, the
background is dark. Steps:

1. Foreground pixels: brightness (max channel) above ``FOREGROUND_BRIGHTNESS`` and within
   ``COLOUR_TOLERANCE`` (RGB distance) of a palette colour; each is labelled with its nearest palette colour.
2. Objects: palette colours covering at least ``MIN_OBJECT_PIXELS`` pixels over the clip, largest first.
3. Motion of an object: the centroid track of its colour's pixels. A horizontal reversal (an interior extreme
   of x at least ``BOUNCE_PIXELS`` beyond both ends) is "bounces"; otherwise the larger of the net x / y
   displacements (first three vs last three visible frames) gives right / left / up / down, or "static" when
   both are below ``STATIC_PIXELS``.
4. Shape: the median fill ratio (pixels / bounding-box area) over frames where the object does not touch the
   border: square ~1.0, circle ~0.79, triangle ~0.5.

``score_caption(video, caption)`` compares these estimates with what the caption asks for.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .data import OBJECT_COLOURS, parse_caption

FOREGROUND_BRIGHTNESS = 0.55
COLOUR_TOLERANCE = 0.45
MIN_OBJECT_PIXELS = 40  # over the whole clip
MIN_FRAME_PIXELS = 4  # a frame counts for the track when the object covers this many pixels
BOUNCE_PIXELS = 6.0
STATIC_PIXELS = 4.0
SQUARE_FILL = 0.89  # fill ratio thresholds: >= square, >= circle, else triangle
CIRCLE_FILL = 0.64

_PALETTE_NAMES = list(OBJECT_COLOURS)
_PALETTE = np.asarray([OBJECT_COLOURS[name] for name in _PALETTE_NAMES], dtype=np.float32)  # [K, 3]


@dataclass
class ObjectEstimate:
    """What the checker sees of one object."""

    colour: str
    pixels: int
    motion: str
    shape: str
    track: np.ndarray  # [n_visible, 3] rows (frame, x, y)


@dataclass
class AdherenceScore:
    """Per-caption result: each asked-for object matched by colour, then motion and shape compared."""

    caption: str
    colour_correct: float  # fraction of the caption's objects whose colour was found
    motion_correct: float  # fraction whose motion matches (an object not found counts as wrong)
    shape_correct: float
    found: list[ObjectEstimate]


def as_unit_video(video) -> np.ndarray:
    """Accepts ``[T, H, W, 3]`` uint8 / float in [0, 1], or ``[3, T, H, W]`` float in [-1, 1] (model output).

    Returns:
        ``[T, H, W, 3]`` float32 in [0, 1].
    """
    array = video.detach().cpu().numpy() if hasattr(video, "detach") else np.asarray(video)
    if array.ndim != 4:
        raise ValueError(f"video must have 4 dims ([T, H, W, 3] or [3, T, H, W]); got shape {array.shape}")
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.shape[0] == 3 and array.shape[-1] != 3:
        return np.clip((array.transpose(1, 2, 3, 0) + 1.0) / 2.0, 0.0, 1.0).astype(np.float32)
    if array.shape[-1] != 3:
        raise ValueError(f"video must be [T, H, W, 3] or [3, T, H, W]; got shape {array.shape}")
    return np.clip(array, 0.0, 1.0).astype(np.float32)


def colour_labels(video: np.ndarray) -> np.ndarray:
    """Palette index of every foreground pixel, -1 for background: ``[T, H, W]`` int."""
    distance = np.linalg.norm(video[..., None, :] - _PALETTE, axis=-1)  # [T, H, W, K]
    nearest = distance.argmin(axis=-1)
    foreground = (video.max(axis=-1) > FOREGROUND_BRIGHTNESS) & (distance.min(axis=-1) < COLOUR_TOLERANCE)
    return np.where(foreground, nearest, -1)


def _track(mask: np.ndarray) -> np.ndarray:
    rows = []
    for t, frame in enumerate(mask):
        ys, xs = np.nonzero(frame)
        if len(xs) >= MIN_FRAME_PIXELS:
            rows.append((t, xs.mean() + 0.5, ys.mean() + 0.5))
    return np.asarray(rows, dtype=np.float64).reshape(-1, 3)


def classify_motion(track: np.ndarray) -> str:
    """right / left / up / down / bounces / static (or unknown with fewer than 6 visible frames)."""
    if len(track) < 6:
        return "unknown"
    x, y = track[:, 1], track[:, 2]
    interior = x[1:-1]
    ends_high, ends_low = max(x[0], x[-1]), min(x[0], x[-1])
    if interior.max() - ends_high >= BOUNCE_PIXELS or ends_low - interior.min() >= BOUNCE_PIXELS:
        return "bounces"
    dx, dy = x[-3:].mean() - x[:3].mean(), y[-3:].mean() - y[:3].mean()
    if max(abs(dx), abs(dy)) < STATIC_PIXELS:
        return "static"
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


def classify_shape(mask: np.ndarray) -> str:
    """circle / square / triangle from the median fill ratio of frames away from the border (or unknown)."""
    ratios = []
    height, width = mask.shape[1:]
    for frame in mask:
        ys, xs = np.nonzero(frame)
        if len(xs) < 12:
            continue
        if xs.min() == 0 or ys.min() == 0 or xs.max() == width - 1 or ys.max() == height - 1:
            continue
        ratios.append(len(xs) / ((xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1)))
    if not ratios:
        return "unknown"
    fill = float(np.median(ratios))
    return "square" if fill >= SQUARE_FILL else "circle" if fill >= CIRCLE_FILL else "triangle"


def analyse_video(video) -> list[ObjectEstimate]:
    """The objects the checker finds, largest first (see the module docstring)."""
    frames = as_unit_video(video)
    labels = colour_labels(frames)
    found = []
    for index, name in enumerate(_PALETTE_NAMES):
        mask = labels == index
        pixels = int(mask.sum())
        if pixels < MIN_OBJECT_PIXELS:
            continue
        track = _track(mask)
        found.append(ObjectEstimate(name, pixels, classify_motion(track), classify_shape(mask), track))
    return sorted(found, key=lambda obj: -obj.pixels)


def score_caption(video, caption: str) -> AdherenceScore:
    """Scores a video against its caption.

    A caption object's colour counts as correct when that colour is among the ``n`` largest objects found
    (``n`` = the number of objects in the caption); its motion and shape are those of that colour's object.
    """
    wanted = parse_caption(caption)
    found = analyse_video(video)
    top = {obj.colour: obj for obj in found[: len(wanted)]}
    colour = motion = shape = 0
    for target in wanted:
        estimate = top.get(target["colour"])
        if estimate is None:
            continue
        colour += 1
        motion += estimate.motion == target["motion"]
        shape += estimate.shape == target["shape"]
    n = len(wanted)
    return AdherenceScore(caption, colour / n, motion / n, shape / n, found)


def summarise(scores: list[AdherenceScore]) -> dict[str, float]:
    """Mean colour / motion / shape accuracy over captions (each caption weighted equally)."""
    if not scores:
        raise ValueError("summarise needs at least one score")
    return {
        "colour": float(np.mean([s.colour_correct for s in scores])),
        "motion": float(np.mean([s.motion_correct for s in scores])),
        "shape": float(np.mean([s.shape_correct for s in scores])),
        "count": len(scores),
    }
