"""Resumable training state: atomic saves, the latest step of a stage, logging, learning-rate schedule, EMA.

Not an upstream module.
"""

from __future__ import annotations

import glob
import math
import os
import re
import time

import torch


def atomic_save(obj, path: str) -> None:
    """``torch.save`` to a temporary name, then rename (an interrupted save never leaves a broken file)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def latest_step_file(stage_dir: str) -> tuple[int, str] | None:
    """(step, path) of the newest ``step_XXXXXX.pt`` in a stage folder, or None."""
    found = []
    for path in glob.glob(os.path.join(stage_dir, "step_*.pt")):
        match = re.search(r"step_(\d+)\.pt$", path)
        if match:
            found.append((int(match.group(1)), path))
    return max(found) if found else None


def save_step(stage_dir: str, step: int, state: dict, keep: int = 2) -> None:
    """Saves ``state`` as ``step_{step}.pt`` and deletes all but the newest ``keep`` step files."""
    atomic_save(state, os.path.join(stage_dir, f"step_{step:06d}.pt"))
    steps = sorted(glob.glob(os.path.join(stage_dir, "step_*.pt")))
    for old in steps[:-keep]:
        os.remove(old)


def is_done(stage_dir: str) -> bool:
    return os.path.isfile(os.path.join(stage_dir, "DONE"))


def mark_done(stage_dir: str, note: str = "") -> None:
    with open(os.path.join(stage_dir, "DONE"), "w") as handle:
        handle.write(note + "\n")


class StageLog:
    """Appends timestamped lines to ``<stage_dir>/log.txt`` and prints them."""

    def __init__(self, stage_dir: str):
        os.makedirs(stage_dir, exist_ok=True)
        self.path = os.path.join(stage_dir, "log.txt")
        self.start = time.time()

    def __call__(self, message: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')} +{time.time() - self.start:7.1f}s] {message}"
        print(line, flush=True)
        with open(self.path, "a") as handle:
            handle.write(line + "\n")


def cosine_lr(step: int, total: int, peak: float, warmup: int, min_ratio: float) -> float:
    """Linear warm-up to ``peak``, then cosine decay to ``min_ratio * peak`` at ``total``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def ema_update(ema: dict[str, torch.Tensor], model: torch.nn.Module, decay: float) -> None:
    """``ema = decay * ema + (1 - decay) * params`` for every floating tensor of the state dict."""
    for key, value in model.state_dict().items():
        if value.is_floating_point():
            ema[key].mul_(decay).add_(value, alpha=1 - decay)
        else:
            ema[key].copy_(value)


def ema_debiased(ema: dict[str, torch.Tensor], initial: dict[str, torch.Tensor], decay: float,
                 updates: int) -> dict[str, torch.Tensor]:
    """Removes the initial weights from an EMA that started at them (Adam-style bias correction).

    After ``n`` updates ``ema = decay^n * initial + (1 - decay) * sum_k decay^(n-k) * params_k``; returns
    ``(ema - decay^n * initial) / (1 - decay^n)``, the normalised average of the trained weights only.
    """
    weight = decay**updates
    return {
        key: (value - weight * initial[key]) / (1 - weight) if value.is_floating_point() else value
        for key, value in ema.items()
    }
