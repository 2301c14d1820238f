"""Turns :class:`ProfileStatistics` into a :class:`common_cache.CacheProfile` (the JSON ``--cache_profile`` reads)."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np

from common_cache.config import CacheConfig, CacheProfile, StreamGroupConfig
from common_cache.profiling.decisions import refresh_steps_from_change, split_blocks
from common_cache.profiling.statistics import STATISTICS, ProfileStatistics
from common_cache.schedule import StepListSchedule, UniformSchedule


@dataclass(frozen=True)
class ProfileSettings:
    """The decisions that turn statistics into a profile.

    Attributes:
        statistic: the per-block score: ``r_attn`` (the paper's foreground ratio), ``lift``, ``delta_change`` or
            ``reuse_error``
            (every block with a low score is a candidate for caching).
        first_step: steps before this are left out of the block scores (None = ``warmup_steps``: the steps where
            the cache acts).
        cache_k: compute budget: cache this many blocks per group (an int for every group, or group -> int).
        tau: score threshold (cache blocks below it); with neither ``cache_k`` nor ``tau``: below the mean.
        warmup_steps: full steps before caching starts (the paper's s0 = 6).
        refresh_budget: refresh steps (s0 included) placed by the step-change curve; None = uniform ``interval``.
        interval: refresh interval when ``refresh_budget`` is None.
    """

    statistic: str = "r_attn"
    first_step: int | None = None
    cache_k: int | Mapping[str, int] | None = None
    tau: float | None = None
    warmup_steps: int = 6
    refresh_budget: int | None = None
    interval: int = 6

    def __post_init__(self) -> None:
        if self.statistic not in STATISTICS:
            raise ValueError(f"statistic={self.statistic!r} is not allowed: expected one of {STATISTICS}")

    def k_for(self, group: str) -> int | None:
        if isinstance(self.cache_k, Mapping):
            return self.cache_k.get(group)
        return self.cache_k


def build_profile(statistics: ProfileStatistics, settings: ProfileSettings, metadata: Mapping) -> CacheProfile:
    """Block lists, schedules, scores and metadata for every profiled group.

    Args:
        statistics: what the recorder collected.
        settings: split rule, warm-up and refresh budget.
        metadata: facts about the run (model, task, steps, size, prompts, command, ...); ``source``, ``date``
            and the profiler's settings and curves are added.
    """
    first_step = settings.warmup_steps if settings.first_step is None else settings.first_step
    curve = statistics.change_curve()
    groups, scores, details = [], {}, {}
    for group, depth in statistics.depths.items():
        block_scores = statistics.block_scores(group, settings.statistic, first_step)
        cached = split_blocks(block_scores, settings.k_for(group), settings.tau)
        if settings.refresh_budget is not None:
            steps = refresh_steps_from_change(curve, settings.warmup_steps, statistics.num_steps,
                                              settings.refresh_budget)
            schedule = StepListSchedule(steps)
        else:
            schedule = UniformSchedule(settings.interval)
        groups.append(StreamGroupConfig(group, depth, cached, settings.warmup_steps, schedule))
        scores[group] = _rounded(block_scores)
        details[group] = {stat: _rounded(statistics.block_scores(group, stat, first_step))
                          for stat in STATISTICS if statistics.recorded(group, stat)}
    profiler = {
        **{k: v for k, v in asdict(settings).items() if v is not None},
        "first_step": first_step,
        "block_scores": details,
        "step_change": _rounded(curve),
    }
    meta = {
        **metadata,
        "source": "profiler",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "steps": statistics.num_steps,
        "prompts": list(statistics.prompts),
        "profiler": profiler,
    }
    return CacheProfile(CacheConfig(tuple(groups)), scores, meta)


def _rounded(values: np.ndarray) -> list:
    return [None if not np.isfinite(v) else round(float(v), 6) for v in np.asarray(values, dtype=np.float64)]
