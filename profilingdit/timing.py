"""What a generation measured and the denoising loop's progress bar, shared by both pipelines and the benchmarks.

The cache a step is timed with is duck-typed (anything with ``stats``, such as ``common_cache.DeltaCache``), so this
module needs nothing from :mod:`common_cache`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm import tqdm


@dataclass
class GenerationReport:
    """Timings of one generation.

    Attributes:
        seeds: the seeds actually used.
        denoise_seconds: wall time of the denoising loop.
        denoise_cpu_seconds: the process's CPU time in the denoising loop (all threads; on a CPU run with one
            thread it is the loop's cost without what other processes on the machine take from it).
        step_seconds: wall time of each step (measured by :class:`DenoiseTimer`, after waiting for a GPU).
        full_steps: steps on which every block ran (no cache, warm-up and refresh steps).
        decode_seconds: VAE decoding.
        total_seconds: the whole generation.
    """

    seeds: list[int] = field(default_factory=list)
    denoise_seconds: float = 0.0
    denoise_cpu_seconds: float = 0.0
    step_seconds: list[float] = field(default_factory=list)
    full_steps: list[int] = field(default_factory=list)
    decode_seconds: float = 0.0
    total_seconds: float = 0.0

    def record_step(self, index: int, seconds: float, cache: Any | None) -> None:
        """Adds step ``index``'s time; the step counts as full when the cache skipped no block in it."""
        self.step_seconds.append(seconds)
        if cache is None or all(group.skipped[index] == 0 for group in cache.stats.groups.values()):
            self.full_steps.append(index)

    def timings(self) -> dict:
        """The report's timings for a statistics JSON (seconds; ``step_seconds`` per step)."""
        return {"denoise_seconds": self.denoise_seconds, "denoise_cpu_seconds": self.denoise_cpu_seconds,
                "decode_seconds": self.decode_seconds,
                "total_seconds": self.total_seconds, "step_seconds": list(self.step_seconds),
                "full_steps": list(self.full_steps), "seeds": list(self.seeds)}

    def measured_speedup(self) -> float | None:
        """Full-compute loop time estimated from this run's own full steps, over the actual loop time.

        Step 0 is left out of the estimate (it pays one-off costs such as allocator warm-up). None when the run has
        no other full step.
        """
        full = [self.step_seconds[i] for i in self.full_steps if i > 0]
        if not full or self.denoise_seconds <= 0:
            return None
        return sum(full) / len(full) * len(self.step_seconds) / self.denoise_seconds


class DenoiseTimer:
    """The denoising loop's bookkeeping, shared by both pipelines: times every step into ``report`` (waiting for a
    GPU first, so that a step's time is its real cost) and shows a progress bar with the block calls the cache saved.

    Usage: ``timer = DenoiseTimer(report, cache, len(timesteps), device, progress)``, ``timer.step_done(i)`` at the
    end of every step, ``timer.close()`` after the loop.
    """

    def __init__(self, report: GenerationReport, cache, num_steps: int, device: torch.device, show: bool) -> None:
        self.report, self.cache, self.device = report, cache, device
        self.bar = tqdm(total=num_steps, desc="denoising", disable=not show)
        self.start = self.last = time.perf_counter()
        self.cpu_start = time.process_time()

    def step_done(self, index: int) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.report.record_step(index, now - self.last, self.cache)
        self.last = now
        self.bar.update(1)
        if self.cache is not None:
            self.bar.set_postfix_str(saved_calls_text(self.cache))

    def close(self) -> None:
        self.bar.close()
        self.report.denoise_seconds = time.perf_counter() - self.start
        self.report.denoise_cpu_seconds = time.process_time() - self.cpu_start


def saved_calls_text(cache: Any) -> str:
    """The progress-bar postfix: block calls the cache (a ``common_cache.DeltaCache``) saved so far."""
    stats = cache.stats
    return f"cache saved {stats.skipped_calls}/{stats.total_calls} block calls"
