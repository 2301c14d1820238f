"""Writing the generated videos: the official pixel arithmetic and file name, written atomically.

References: Tencent/HunyuanVideo hyvideo/utils/file_utils.py (`save_videos_grid`) and sample_video.py (the name).

`save_videos_grid` keeps upstream's frames exactly: per frame a grid of the batch (`make_grid` layout: one image
as is, else padding 2 with value 0), clamp to [0, 1], `(x * 255)` truncated to uint8, written by imageio's
FFMPEG plugin with its defaults (libx264, quality 5, yuv420p) at 24 fps. The difference: the frames go to a hidden
temporary file in the target folder that replaces the target only when complete, so a failure never leaves a
partial video.
"""

from __future__ import annotations

import math
import os
from datetime import datetime

import imageio
import numpy as np
import torch

from profilingdit.files import atomic_path, safe_name_part

GRID_PADDING = 2


def video_file_name(save_path: str, seed: int, prompt: str, now: datetime | None = None) -> str:
    """Upstream's output path: ``{save_path}/{%Y-%m-%d-%H:%M:%S}_seed{seed}_{prompt[:100] without '/'}.mp4``.

    Unlike upstream, the prompt part is made safe for file systems (:func:`profilingdit.files.safe_name_part`:
    whitespace, newlines, quotes, ``*``, ``?``, ``\\`` ... become ``_``) and kept within 200 UTF-8 bytes, so that
    any prompt gives a valid name under the 255-byte limit.
    """
    stamp = (now or datetime.now()).strftime("%Y-%m-%d-%H:%M:%S")
    return f"{save_path}/{stamp}_seed{seed}_{safe_name_part(prompt[:100].replace('/', ''), 100, 200)}.mp4"


def make_grid(images: torch.Tensor, nrow: int = 1, padding: int = GRID_PADDING) -> torch.Tensor:
    """`torchvision.utils.make_grid` without normalisation: [B, C, H, W] -> [C, H', W'] (a batch of 1 unpadded)."""
    if images.shape[0] == 1:
        return images[0]
    count, channels, height, width = images.shape
    per_row = min(nrow, count)
    rows = math.ceil(count / per_row)
    grid = images.new_zeros(channels, rows * (height + padding) + padding, per_row * (width + padding) + padding)
    for k in range(count):
        top = (k // per_row) * (height + padding) + padding
        left = (k % per_row) * (width + padding) + padding
        grid[:, top:top + height, left:left + width] = images[k]
    return grid


def videos_to_frames(videos: torch.Tensor, rescale: bool = False, n_rows: int = 1) -> list[np.ndarray]:
    """[B, C, T, H, W] videos in [0, 1] (or [-1, 1] with ``rescale``) -> T uint8 frames [H', W', C]."""
    if videos.ndim != 5 or videos.shape[1] not in (1, 3) or 0 in videos.shape:
        raise ValueError(f"save_videos_grid: videos must be [B, C, T, H, W] with C 1 or 3, got {tuple(videos.shape)}")
    frames = []
    for frame in videos.detach().float().cpu().permute(2, 0, 1, 3, 4):  # [B, C, H, W] per frame
        image = make_grid(frame, nrow=n_rows).permute(1, 2, 0)  # [H', W', C]
        if rescale:
            image = (image + 1.0) / 2.0
        frames.append((image.clamp(0, 1) * 255).numpy().astype(np.uint8))  # truncation, as upstream
    return frames


def save_videos_grid(videos: torch.Tensor, path: str, rescale: bool = False, n_rows: int = 1, fps: int = 24) -> str:
    """Writes videos as one mp4 (a per-frame grid of the batch), atomically; creates the folder.

    Args:
        videos: [B, C, T, H, W] in [0, 1] (upstream passes one video, ``sample[None]``).
        path: the .mp4 path.
        rescale: map [-1, 1] to [0, 1] first.
        n_rows: images per row of the grid.
        fps: frames per second.

    Returns:
        ``path``.
    """
    frames = videos_to_frames(videos, rescale, n_rows)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_path(path) as temp:
        imageio.mimsave(temp, frames, format="FFMPEG", fps=fps)
    return path
