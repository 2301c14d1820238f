"""Deterministic procedural videos with captions and ground-truth masks: the training data of the tiny Wan model.

Not an upstream module: the tiny model (configs/wan_t2v_tiny.py) is trained on these videos.

A video shows one or two objects (circle, square or triangle; small or large; one of six bright colours) moving
right, left, up, down, or bouncing left and right between the side walls, over a dark background (plain,
vertical gradient, diagonal stripes or checkers; textures may scroll). Captions follow one template, e.g.

    "a large red circle moves to the right over a gray striped background"
    "a small blue square bounces and a yellow triangle moves up over a moving dark green checkered background"

Design choices that make the prompt-adherence checker (``adherence.py``) reliable: object colours are bright
(max channel >= 0.9) and far apart in RGB, backgrounds are dark (max channel <= 0.45), so "bright and close to
a palette colour" separates the objects from any background, and each object of a video has its own colour.

Held-out split: the 90 (colour, shape, motion) triples are split into 72 training triples and 18 held-out ones
(``(colour + 2 * shape + motion) % 5 == 0``); every colour, shape and motion still occurs in training, and every
(colour, shape) pair with four of its five motions. Evaluation prompts use only held-out triples.

Everything is a pure function of a seed: ``render(spec)`` has no randomness; specs come from
``numpy.random.default_rng([seed, index])``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

WIDTH = HEIGHT = 64
FRAMES = 17
SUPERSAMPLE = 2  # shapes are rendered at 2x and averaged down (anti-aliased edges)

OBJECT_COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.15, 0.15),
    "green": (0.15, 0.9, 0.15),
    "blue": (0.2, 0.35, 1.0),
    "yellow": (1.0, 0.95, 0.15),
    "purple": (0.8, 0.2, 0.95),
    "white": (0.95, 0.95, 0.95),
}
BACKGROUND_COLOURS: dict[str, tuple[float, float, float]] = {
    "black": (0.06, 0.06, 0.06),
    "gray": (0.3, 0.3, 0.3),
    "dark blue": (0.05, 0.08, 0.34),
    "dark green": (0.05, 0.27, 0.08),
    "brown": (0.3, 0.17, 0.06),
    "dark red": (0.32, 0.05, 0.05),
}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 6.0, "large": 10.0}  # half-width of the bounding box in pixels
MOTIONS = ("right", "left", "up", "down", "bounces")
MOTION_PHRASES = {
    "right": "moves to the right", "left": "moves to the left", "up": "moves up", "down": "moves down",
    "bounces": "bounces",
}
BACKGROUND_KINDS = ("plain", "gradient", "striped", "checkered")
TEXTURE_PERIOD = 16  # pixels per stripe / checker pair
MAX_BACKGROUND_BRIGHTNESS = 0.45


@dataclass(frozen=True)
class ObjectSpec:
    """One object: its caption attributes and its trajectory (pixel units, origin at the top-left corner)."""

    colour: str
    shape: str
    size: str
    motion: str
    x0: float
    y0: float
    speed: float  # pixels per frame along the motion axis (bounce: initial horizontal velocity, signed)


@dataclass(frozen=True)
class BackgroundSpec:
    colour: str
    kind: str
    moving: bool = False
    scroll: float = 0.0  # pixels per frame of a moving texture (signed)


@dataclass(frozen=True)
class VideoSpec:
    objects: tuple[ObjectSpec, ...]
    background: BackgroundSpec


# ------------------------------------------------------------------------------------------------------------
# Splits


def is_held_out(colour: str, shape: str, motion: str) -> bool:
    """Whether a (colour, shape, motion) triple is reserved for evaluation."""
    c, s, m = list(OBJECT_COLOURS).index(colour), SHAPES.index(shape), MOTIONS.index(motion)
    return (c + 2 * s + m) % 5 == 0


def triples(held_out: bool) -> list[tuple[str, str, str]]:
    """The (colour, shape, motion) triples of one split, in a fixed order."""
    return [(c, s, m) for c in OBJECT_COLOURS for s in SHAPES for m in MOTIONS if is_held_out(c, s, m) == held_out]


# ------------------------------------------------------------------------------------------------------------
# Sampling specs


def random_object(rng: np.random.Generator, colour: str, shape: str, motion: str) -> ObjectSpec:
    """An object of the given triple with a random size, speed and start that keeps it inside the frame."""
    size = str(rng.choice(list(SIZES)))
    r = SIZES[size]
    lo, hi = r + 1.0, WIDTH - r - 1.0
    steps = FRAMES - 1
    if motion == "bounces":
        speed = float(rng.uniform(3.5, 4.5)) * float(rng.choice([-1.0, 1.0]))
        return ObjectSpec(colour, shape, size, motion, float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi)), speed)
    speed = float(rng.uniform(1.5, 2.2))
    travel = speed * steps
    along_start = float(rng.uniform(lo, hi - travel))  # stays inside for the whole clip
    across = float(rng.uniform(lo, hi))
    if motion in ("left", "up"):
        along_start = WIDTH - along_start  # mirror: start near the far side
    x0, y0 = (along_start, across) if motion in ("right", "left") else (across, along_start)
    return ObjectSpec(colour, shape, size, motion, x0, y0, speed)


def random_background(rng: np.random.Generator) -> BackgroundSpec:
    """A random background: colour, kind, and for textured kinds a scroll half of the time."""
    colour = str(rng.choice(list(BACKGROUND_COLOURS)))
    kind = str(rng.choice(BACKGROUND_KINDS))
    moving = kind in ("striped", "checkered") and bool(rng.random() < 0.5)
    scroll = float(rng.choice([-1.0, 1.0])) * float(rng.uniform(0.75, 1.25)) if moving else 0.0
    return BackgroundSpec(colour, kind, moving, scroll)


def sample_spec(seed: int, index: int, held_out: bool = False, two_object_prob: float = 0.25) -> VideoSpec:
    """A random video spec, a pure function of (seed, index).

    Args:
        seed: dataset seed.
        index: video index.
        held_out: draw the (first) object's triple from the held-out split (evaluation) instead of training.
        two_object_prob: probability of a second object (its triple always comes from the training split).

    Returns:
        The spec; the objects of one video have different colours.
    """
    rng = np.random.default_rng([seed, index])
    pool = triples(held_out)
    colour, shape, motion = pool[int(rng.integers(len(pool)))]
    objects = [random_object(rng, colour, shape, motion)]
    if rng.random() < two_object_prob:
        others = [t for t in triples(False) if t[0] != colour]
        objects.append(random_object(rng, *others[int(rng.integers(len(others)))]))
    return VideoSpec(tuple(objects), random_background(rng))


def eval_specs(count: int = 60, seed: int = 20250) -> list[VideoSpec]:
    """Single-object evaluation specs with distinct captions, cycling through the 18 held-out triples."""
    specs, captions, index = [], set(), 0
    held = triples(True)
    while len(specs) < count:
        rng = np.random.default_rng([seed, index])
        spec = VideoSpec((random_object(rng, *held[len(specs) % len(held)]),), random_background(rng))
        index += 1
        if caption(spec) not in captions:
            captions.add(caption(spec))
            specs.append(spec)
    return specs


PROFILING_SEED = 1234  # the profiler's captions come from the training split (evaluation uses the held-out one)


def profiling_prompts(count: int | None = None) -> list[str]:
    """The default profiling prompts of t2v-tiny (``scripts/profile_wan.py``, MagCache's calibration): ``count``
    (default 8) training-split captions drawn with :data:`PROFILING_SEED`."""
    return [caption(sample_spec(PROFILING_SEED, i)) for i in range(count or 8)]


# ------------------------------------------------------------------------------------------------------------
# Captions


def _object_phrase(obj: ObjectSpec) -> str:
    return f"a {obj.size} {obj.colour} {obj.shape} {MOTION_PHRASES[obj.motion]}"


def background_phrase(bg: BackgroundSpec) -> str:
    texture = "" if bg.kind == "plain" else f" {bg.kind}"
    return f"{'moving ' if bg.moving else ''}{bg.colour}{texture} background"


def caption(spec: VideoSpec) -> str:
    """The caption of a spec (one template, lower case, no punctuation)."""
    objects = " and ".join(_object_phrase(obj) for obj in spec.objects)
    return f"{objects} over a {background_phrase(spec.background)}"


_OBJECT_RE = re.compile(
    r"a (?P<size>{sizes}) (?P<colour>{colours}) (?P<shape>{shapes}) (?P<motion>{motions})".format(
        sizes="|".join(SIZES), colours="|".join(OBJECT_COLOURS), shapes="|".join(SHAPES),
        motions="|".join(MOTION_PHRASES.values()),
    )
)


def parse_caption(text: str) -> list[dict[str, str]]:
    """The objects a caption asks for: ``[{"size", "colour", "shape", "motion"}, ...]`` in caption order.

    Raises:
        ValueError: the text names no object in the caption template.
    """
    phrase_to_motion = {phrase: motion for motion, phrase in MOTION_PHRASES.items()}
    objects = [
        {**m.groupdict(), "motion": phrase_to_motion[m.group("motion")]}
        for m in _OBJECT_RE.finditer(text.lower().split(" over ")[0])
    ]
    if not objects:
        raise ValueError(f"caption {text!r} names no object of the form 'a <size> <colour> <shape> <motion>'")
    return objects


def caption_corpus() -> list[str]:
    """Sentences covering every word of the template (tokenizer training corpus)."""
    lines = []
    for index in range(3000):
        lines.append(caption(sample_spec(7, index, held_out=index % 5 == 0, two_object_prob=0.3)))
    return lines


# ------------------------------------------------------------------------------------------------------------
# Rendering


def positions(obj: ObjectSpec) -> np.ndarray:
    """Centre (x, y) of an object in every frame, ``[FRAMES, 2]``; bounces reflect off the side walls."""
    t = np.arange(FRAMES, dtype=np.float64)
    if obj.motion == "bounces":
        r = SIZES[obj.size]
        lo, span = r, WIDTH - 2 * r
        u = (obj.x0 - lo + obj.speed * t) % (2 * span)  # unfold the reflections
        x = lo + np.where(u > span, 2 * span - u, u)
        return np.stack([x, np.full_like(t, obj.y0)], axis=1)
    direction = {"right": (1, 0), "left": (-1, 0), "up": (0, -1), "down": (0, 1)}[obj.motion]
    return np.stack([obj.x0 + direction[0] * obj.speed * t, obj.y0 + direction[1] * obj.speed * t], axis=1)


def _grid(scale: int) -> tuple[np.ndarray, np.ndarray]:
    coords = (np.arange(WIDTH * scale, dtype=np.float64) + 0.5) / scale
    return np.meshgrid(coords, coords, indexing="xy")  # x [H, W], y [H, W]


def shape_coverage(shape: str, r: float, cx: float, cy: float) -> np.ndarray:
    """Fraction of each pixel covered by the shape, ``[H, W]`` (supersampled)."""
    x, y = _grid(SUPERSAMPLE)
    dx, dy = x - cx, y - cy
    if shape == "circle":
        inside = dx**2 + dy**2 <= r**2
    elif shape == "square":
        inside = (np.abs(dx) <= r) & (np.abs(dy) <= r)
    elif shape == "triangle":  # apex up, base at the bottom of the bounding box
        inside = (dy <= r) & (np.abs(dx) <= (dy + r) / 2)
    else:
        raise ValueError(f"shape {shape!r} is not one of {SHAPES}")
    s = SUPERSAMPLE
    return inside.reshape(HEIGHT, s, WIDTH, s).mean(axis=(1, 3))


def background_frame(bg: BackgroundSpec, t: int) -> np.ndarray:
    """One background frame ``[H, W, 3]`` in [0, 1]."""
    colour = np.asarray(BACKGROUND_COLOURS[bg.colour])
    x, y = _grid(1)
    if bg.kind == "plain":
        factor = np.ones_like(x)
    elif bg.kind == "gradient":
        factor = 0.5 + 0.8 * y / HEIGHT
    else:
        offset = bg.scroll * t
        half = TEXTURE_PERIOD / 2
        if bg.kind == "striped":
            band = np.floor((x + y + offset) / half)
        else:
            band = np.floor((x + offset) / half) + np.floor(y / half)
        factor = np.where(band % 2 == 0, 1.0, 0.5)
    frame = factor[..., None] * colour
    if bg.kind in ("striped", "checkered"):
        frame = frame + np.where(factor < 1.0, 0.03, 0.0)[..., None]  # keeps a black texture visible
    return np.minimum(frame, MAX_BACKGROUND_BRIGHTNESS)


def render(spec: VideoSpec) -> tuple[np.ndarray, np.ndarray]:
    """Renders a spec.

    Returns:
        video ``[FRAMES, H, W, 3]`` float32 in [0, 1]; masks ``[n_objects, FRAMES, H, W]`` bool: the visible pixels
        of each object (coverage >= 0.5, minus the pixels a later object covers).
    """
    video = np.zeros((FRAMES, HEIGHT, WIDTH, 3), dtype=np.float64)
    masks = np.zeros((len(spec.objects), FRAMES, HEIGHT, WIDTH), dtype=bool)
    tracks = [positions(obj) for obj in spec.objects]
    for t in range(FRAMES):
        frame = background_frame(spec.background, t)
        for i, obj in enumerate(spec.objects):
            cover = shape_coverage(obj.shape, SIZES[obj.size], *tracks[i][t])
            frame = frame * (1 - cover[..., None]) + cover[..., None] * np.asarray(OBJECT_COLOURS[obj.colour])
            visible = cover >= 0.5
            masks[:i, t] &= ~visible
            masks[i, t] = visible
        video[t] = frame
    return video.astype(np.float32), masks


def to_model_range(video: np.ndarray) -> np.ndarray:
    """``[T, H, W, 3]`` in [0, 1] -> ``[3, T, H, W]`` in [-1, 1] (the VAE's input layout)."""
    return np.ascontiguousarray(video.transpose(3, 0, 1, 2) * 2.0 - 1.0, dtype=np.float32)
