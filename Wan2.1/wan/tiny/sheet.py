"""Contact sheets: a few frames of several videos in one PNG (for the docs and for eyeballing training runs).

Not an upstream module.
"""

from __future__ import annotations

import numpy as np

from .adherence import as_unit_video


def contact_sheet(videos, labels: list[str] | None = None, frames=(0, 4, 8, 12, 16), scale: int = 2,
                  label_width: int = 0) -> np.ndarray:
    """One row per video: the chosen frames side by side, upscaled by ``scale`` (nearest).

    Args:
        videos: ``[T, H, W, 3]`` in [0, 1] / uint8, or ``[3, T, H, W]`` in [-1, 1], one per row.
        labels: optional text per row, drawn in a strip of ``label_width`` pixels on the left.
        frames: frame indices to show.
        scale: integer upscaling factor.
        label_width: width of the label strip (0 = no labels).

    Returns:
        ``[rows * H * scale, label_width + len(frames) * (W * scale + 2), 3]`` uint8.
    """
    rows = []
    for index, video in enumerate(videos):
        clip = as_unit_video(video)
        tiles = []
        for t in frames:
            tile = np.repeat(np.repeat(clip[t], scale, axis=0), scale, axis=1)
            tiles += [tile, np.ones((tile.shape[0], 2, 3), np.float32)]
        row = np.concatenate(tiles, axis=1)
        if label_width:
            strip = np.ones((row.shape[0], label_width, 3), np.float32)
            row = np.concatenate([_text(strip, labels[index] if labels else ""), row], axis=1)
        rows += [row, np.ones((2, row.shape[1], 3), np.float32)]
    return (np.concatenate(rows, axis=0) * 255).round().astype(np.uint8)


def _text(strip: np.ndarray, text: str) -> np.ndarray:
    """Draws wrapped black text on a white strip (PIL's built-in bitmap font)."""
    from PIL import Image, ImageDraw

    image = Image.fromarray((strip * 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    words, lines, line = text.split(), [], ""
    max_chars = max(8, strip.shape[1] // 6)
    for word in words:
        if len(line) + len(word) + 1 > max_chars:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    lines.append(line)
    draw.multiline_text((3, 2), "\n".join(lines), fill=(0, 0, 0), spacing=1)
    return np.asarray(image, dtype=np.float32) / 255.0


def save_png(image: np.ndarray, path: str) -> None:
    from PIL import Image

    Image.fromarray(image).save(path)
