"""Task registries: configs, video sizes and the sizes each task supports.

References: Wan2.1 wan/configs/__init__.py (registry names and contents; the t2v and i2v tasks).

``WAN_CONFIGS``, ``SIZE_CONFIGS``, ``MAX_AREA_CONFIGS`` and ``SUPPORTED_SIZES`` keep their upstream
names; their keys are the ``--task`` and ``--size`` choices of generate.py. A further task (e.g. a tiny
trained model) is added with :func:`register_task`, which keeps the registries consistent.
"""

from collections.abc import Iterable

from easydict import EasyDict

from .shared_config import wan_shared_cfg
from .wan_i2v_14B import i2v_14B
from .wan_i2v_tiny import i2v_tiny
from .wan_t2v_1_3B import t2v_1_3B
from .wan_t2v_14B import t2v_14B
from .wan_t2v_tiny import t2v_tiny

WAN_CONFIGS: dict[str, EasyDict] = {
    "t2v-14B": t2v_14B,
    "t2v-1.3B": t2v_1_3B,
    "t2v-tiny": t2v_tiny,
    "i2v-14B": i2v_14B,
    "i2v-tiny": i2v_tiny,
}

# "W*H" strings of the command line -> (W, H), as upstream.
SIZE_CONFIGS: dict[str, tuple[int, int]] = {
    "720*1280": (720, 1280),
    "1280*720": (1280, 720),
    "480*832": (480, 832),
    "832*480": (832, 480),
    "1024*1024": (1024, 1024),
    "64*64": (64, 64),
}

# Pixel areas used by the image-conditioned tasks upstream (no 1024*1024 entry there either); 64*64 is the tiny
# task's.
MAX_AREA_CONFIGS: dict[str, int] = {
    "720*1280": 720 * 1280,
    "1280*720": 1280 * 720,
    "480*832": 480 * 832,
    "832*480": 832 * 480,
    "64*64": 64 * 64,
}

SUPPORTED_SIZES: dict[str, tuple[str, ...]] = {
    "t2v-14B": ("720*1280", "1280*720", "480*832", "832*480"),
    "t2v-1.3B": ("480*832", "832*480"),
    "t2v-tiny": ("64*64",),
    "i2v-14B": ("720*1280", "1280*720", "480*832", "832*480"),
    "i2v-tiny": ("64*64",),
}


def is_image_task(task: str) -> bool:
    """Whether ``task`` generates from an image (``--image``): its DiT is an i2v model."""
    return WAN_CONFIGS[task].get("model_type") == "i2v"


def register_task(task: str, config: EasyDict, supported_sizes: Iterable[str]) -> None:
    """Adds a task to ``WAN_CONFIGS`` and ``SUPPORTED_SIZES``.

    Args:
        task: the ``--task`` name, e.g. ``"t2v-tiny"``; must not be registered yet.
        config: the task config (usually a copy of ``wan_shared_cfg`` updated with the model fields).
        supported_sizes: ``--size`` strings the task accepts; each must be a key of ``SIZE_CONFIGS``.

    Raises:
        ValueError: the task exists already, or a size is unknown.
    """
    if task in WAN_CONFIGS:
        raise ValueError(f"task {task!r} is already registered; registered tasks: {sorted(WAN_CONFIGS)}")
    sizes = tuple(supported_sizes)
    unknown = [size for size in sizes if size not in SIZE_CONFIGS]
    if unknown or not sizes:
        raise ValueError(
            f"supported_sizes for task {task!r} must be a non-empty list of {sorted(SIZE_CONFIGS)}, "
            f"got {list(sizes)}"
        )
    WAN_CONFIGS[task] = config
    SUPPORTED_SIZES[task] = sizes


__all__ = [
    "MAX_AREA_CONFIGS",
    "is_image_task",
    "SIZE_CONFIGS",
    "SUPPORTED_SIZES",
    "WAN_CONFIGS",
    "register_task",
    "wan_shared_cfg",
]
