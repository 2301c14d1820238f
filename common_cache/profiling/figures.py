"""Profiling figures (matplotlib, Agg): the block x step R_attn heatmap (paper Fig. 2) and the step-change curve
(paper Fig. 4). Files are written atomically (temporary name in the same folder, then rename)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_figure_atomic(figure, path: str, dpi: int = 120) -> str:
    """Saves a matplotlib figure as PNG via a temporary file, so an interrupted run leaves no partial image."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".figure-", suffix=".png", dir=folder)
    os.close(fd)
    try:
        figure.savefig(tmp, dpi=dpi, format="png", bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def plot_heatmap(
    heatmap: np.ndarray,
    path: str,
    cached_blocks: Sequence[int] = (),
    title: str = "",
    label: str = "R_attn (foreground ratio)",
) -> str:
    """Block x step heatmap; cached (background) blocks are marked on the block axis.

    Args:
        heatmap: ``[depth, steps]`` (NaN = not recorded).
        path: PNG file.
        cached_blocks: blocks the profile caches (their labels get a "B").
        title: figure title.
        label: colour bar label.
    """
    plt = _pyplot()
    depth, steps = heatmap.shape
    figure, axis = plt.subplots(figsize=(min(14, 3 + steps * 0.16), min(10, 1.5 + depth * 0.28)))
    image = axis.imshow(np.ma.masked_invalid(heatmap), aspect="auto", origin="lower", cmap="viridis",
                        interpolation="nearest")
    figure.colorbar(image, ax=axis, label=label)
    axis.set_xlabel("denoising step")
    axis.set_ylabel("block (B = cached / background-focused)")
    axis.set_yticks(range(depth))
    axis.set_yticklabels([f"{b} B" if b in set(cached_blocks) else str(b) for b in range(depth)], fontsize=7)
    axis.set_title(title, fontsize=9)
    try:
        return save_figure_atomic(figure, path)
    finally:
        plt.close(figure)


def plot_step_change(
    curve: np.ndarray,
    path: str,
    schedules: Mapping[str, Sequence[int]] | None = None,
    warmup_steps: int | None = None,
    title: str = "",
) -> str:
    """The step-change curve with the refresh steps of one or more schedules as tick marks.

    Args:
        curve: ``[steps]`` mean absolute change from step s-1 to s (NaN at step 0).
        path: PNG file.
        schedules: label -> refresh steps, drawn as markers under the curve.
        warmup_steps: shades the warm-up.
        title: figure title.
    """
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(8, 3.6))
    steps = np.arange(curve.size)
    axis.plot(steps, curve, color="black", marker=".", label="mean |prediction(s) - prediction(s-1)|")
    if warmup_steps:
        axis.axvspan(-0.5, warmup_steps - 0.5, color="0.9", label=f"warm-up (steps 0..{warmup_steps - 1})")
    finite = curve[np.isfinite(curve)]
    low = float(finite.min()) if finite.size else 0.0
    for row, (name, refresh) in enumerate((schedules or {}).items()):
        y = [low * (0.85 - 0.1 * row)] * len(refresh) if low > 0 else [-(row + 1) * 0.02] * len(refresh)
        axis.plot(list(refresh), y, linestyle="none", marker="|", markersize=12, label=f"refresh: {name}")
    axis.set_xlabel("denoising step")
    axis.set_ylabel("step change")
    axis.set_title(title, fontsize=9)
    axis.legend(fontsize=7, loc="upper center")
    try:
        return save_figure_atomic(figure, path)
    finally:
        plt.close(figure)
