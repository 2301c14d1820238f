"""References: Wan2.1 wan/utils/utils.py and generate.py (video output, `str2bool`, the default output name).

`cache_video` keeps the official pixel arithmetic (clamp, per-frame grid of the batch, normalisation by
`value_range`, `(x * 255).type(uint8)` truncation, libx264 at imageio quality 8) but differs on failure: the
official function retries five times and returns None; this one raises, and because it writes to a temporary
file in the target folder and renames it at the end, a failed write never leaves a partial video behind (an
existing file is kept untouched).
"""

import argparse
import math
import os
from datetime import datetime

import imageio
import torch

from profilingdit.files import atomic_path, safe_name_part

__all__ = ["str2bool", "cache_video", "video_to_frames", "make_frame_grid", "default_save_file"]

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".mov")
VIDEO_CODEC = "libx264"
VIDEO_QUALITY = 8  # imageio's 0..10 variable-bitrate scale, as in the official cache_video
GRID_PADDING = 2  # torchvision.utils.make_grid defaults used by the official code: padding 2, pad value 0


def str2bool(v):
    """argparse type for booleans: yes/true/t/y/1 and no/false/f/n/0, case-insensitive.

    Args:
        v: a bool (returned as is) or a string.

    Returns:
        The boolean value.
    """
    if isinstance(v, bool):
        return v
    lowered = str(v).lower()
    if lowered in ("yes", "true", "t", "y", "1"):
        return True
    if lowered in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(
        f"Boolean value expected, got {v!r}; allowed: yes/true/t/y/1 or no/false/f/n/0 (any case)"
    )


def make_frame_grid(frames, nrow=1, padding=GRID_PADDING, pad_value=0.0):
    """Tile a batch of images into one image, like `torchvision.utils.make_grid` (without normalisation).

    A batch of one is returned unpadded; otherwise `min(nrow, B)` images per row, each surrounded by `padding`
    pixels of `pad_value`. One-channel images are repeated to three channels.

    Args:
        frames: [B, C, H, W] tensor with C in (1, 3).
        nrow: images per row (>= 1).
        padding: border width in pixels.
        pad_value: border value.

    Returns:
        [C', H', W'] tensor (C' = 3 for one-channel input).
    """
    if frames.dim() != 4 or frames.shape[1] not in (1, 3):
        raise ValueError(
            f"make_frame_grid: frames must be [B, C, H, W] with C 1 or 3, got shape {tuple(frames.shape)}"
        )
    if frames.shape[1] == 1:
        frames = frames.repeat(1, 3, 1, 1)
    count, channels, height, width = frames.shape
    if count == 1:
        return frames[0]
    per_row = min(nrow, count)
    rows = math.ceil(count / per_row)
    cell_h, cell_w = height + padding, width + padding
    grid = frames.new_full((channels, rows * cell_h + padding, per_row * cell_w + padding), pad_value)
    for k in range(count):
        top, left = (k // per_row) * cell_h + padding, (k % per_row) * cell_w + padding
        grid[:, top:top + height, left:left + width] = frames[k]
    return grid


def video_to_frames(tensor, nrow=1, normalize=True, value_range=(-1, 1)):
    """Turn a video batch into uint8 frames exactly as the official `cache_video` does.

    Args:
        tensor: [B, C, T, H, W] video(s), C in (1, 3); computed in fp32 on the CPU.
        nrow: videos per row of the per-frame grid.
        normalize: map `value_range` to [0, 1]; without it the values must already lie in [0, 1].
        value_range: (low, high) of the input; values are clamped to it first.

    Returns:
        numpy uint8 array [T, H', W', 3].
    """
    if not isinstance(tensor, torch.Tensor) or tensor.dim() != 5 or tensor.shape[1] not in (1, 3) \
            or 0 in tensor.shape:
        shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise ValueError(
            f"cache_video: tensor must be a non-empty [B, C, T, H, W] video with C 1 or 3, got {shape}"
        )
    if isinstance(nrow, bool) or not isinstance(nrow, int) or nrow < 1:
        raise ValueError(f"cache_video: nrow must be an int >= 1, got {nrow!r}")
    if len(value_range) != 2 or not value_range[0] < value_range[1]:
        raise ValueError(f"cache_video: value_range must be (low, high) with low < high, got {value_range!r}")
    low, high = float(value_range[0]), float(value_range[1])
    video = tensor.detach().to("cpu", torch.float32).clamp(low, high)
    if normalize:
        video = (video - low) / max(high - low, 1e-5)
    frames = torch.stack([make_frame_grid(frame, nrow=nrow) for frame in video.unbind(2)])  # [T, 3, H', W']
    frames = (frames * 255).type(torch.uint8)  # truncation, as upstream
    return frames.permute(0, 2, 3, 1).contiguous().numpy()


def cache_video(tensor, save_file, fps=16, nrow=1, normalize=True, value_range=(-1, 1)):
    """Write a video batch to an mp4 (libx264, imageio quality 8), atomically.

    The frames go to a hidden temporary file in the target folder, which replaces `save_file` only once it is
    complete. Frame sizes are written as they are (`macro_block_size=1`, no rescaling): libx264's yuv420p
    needs even sizes, so odd grid sizes are refused up front. Wan2.1 outputs are multiples of 16, and a batch
    grid of even frames stays even.

    Args:
        tensor: [B, C, T, H, W] video(s) in `value_range` (the official call passes `video[None]`).
        save_file: output path ending in .mp4 (or .mkv / .mov); its folder must exist.
        fps: frames per second (> 0).
        nrow: videos per row when B > 1.
        normalize: map `value_range` to [0, 1] before the uint8 conversion.
        value_range: (low, high) of the input values.

    Returns:
        `save_file`.
    """
    frames = video_to_frames(tensor, nrow=nrow, normalize=normalize, value_range=value_range)
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise ValueError(f"cache_video: frame size {height}x{width} (HxW) must be even for libx264 / yuv420p")
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not fps > 0:
        raise ValueError(f"cache_video: fps must be a number > 0, got {fps!r}")
    folder, name = os.path.split(os.path.abspath(save_file))
    extension = os.path.splitext(name)[1].lower()
    if extension not in VIDEO_EXTENSIONS:
        raise ValueError(
            f"cache_video: save_file {save_file!r} must end with one of {', '.join(VIDEO_EXTENSIONS)}"
        )
    if not os.path.isdir(folder):
        raise FileNotFoundError(
            f"cache_video: output folder {folder!r} of save_file {save_file!r} does not exist"
        )
    with atomic_path(save_file) as temp_file:
        _write_frames(temp_file, frames, fps)
    return save_file


def _write_frames(path, frames, fps):
    writer = imageio.get_writer(
        path, format="FFMPEG", mode="I", fps=fps, codec=VIDEO_CODEC, quality=VIDEO_QUALITY, macro_block_size=1
    )
    try:
        for frame in frames:
            writer.append_data(frame)
    finally:
        writer.close()


def default_save_file(task, size, ulysses_size, ring_size, prompt, now=None):
    """The official default output name of generate.py, made safe for any file system.

    `{task}_{size}_{ulysses}_{ring}_{prompt[:50] with ' ' and '/' -> '_'}_{%Y%m%d_%H%M%S}.mp4` (`.png` for t2i
    tasks). Two differences to upstream, both so that every prompt gives a valid name: the `*` of the size is
    always written `x` (upstream does so on Windows only; `*` is invalid on Windows, exFAT and SMB shares and a
    wildcard in shells), and the prompt part goes through `profilingdit.files.safe_name_part` (newlines, tabs, quotes,
    `* ? : < > | \\` become `_`; at most 200 UTF-8 bytes, so that CJK or emoji prompts stay under the 255-byte limit).

    Args:
        task: e.g. "t2v-1.3B".
        size: the `--size` string, e.g. "832*480".
        ulysses_size: `--ulysses_size`.
        ring_size: `--ring_size`.
        prompt: the prompt.
        now: the time stamp to use (default `datetime.now()`).

    Returns:
        The file name (no folder).
    """
    stamp = (now or datetime.now()).strftime("%Y%m%d_%H%M%S")
    short_prompt = safe_name_part(prompt.replace(" ", "_").replace("/", "_"), 50, 200)
    suffix = ".png" if "t2i" in task else ".mp4"
    return f"{task}_{size.replace('*', 'x')}_{ulysses_size}_{ring_size}_{short_prompt}_{stamp}{suffix}"
