"""The cache part of the end-of-run summary and the statistics JSON (``--cache_stats``), shared by both command
lines (a generation's timings: :mod:`profilingdit.timing`)."""

from __future__ import annotations

import logging

from common_cache.config import CacheProfile
from common_cache.delta_cache import DeltaCache
from profilingdit.files import write_json_atomic
from profilingdit.timing import GenerationReport


def log_cache_profile(logger: logging.Logger, profile: CacheProfile, source: str, num_steps: int) -> None:
    """Logs the profile in use once at start-up (tag, groups, effective refresh steps, provisional warning)."""
    logger.info("cache profile %s (%s)", profile.config.tag(), source)
    for group in profile.config.groups:
        if not group.units:
            logger.info("cache group %s: blocks %s, warm-up %d, refresh steps %s, forecast order %d", group.name,
                        list(group.cached_blocks), group.warmup_steps, list(group.refresh_steps(num_steps)),
                        group.forecast_order)
            continue
        group.check_steps(num_steps)
        for unit in group.resolved_units():
            logger.info("cache group %s, blocks %d..%d: warm-up %d, refresh steps %s, forecast order %d", group.name,
                        unit.first, unit.last, unit.warmup_steps,
                        list(unit.schedule.refresh_steps(unit.warmup_steps, num_steps)), unit.forecast_order)
    if profile.metadata.get("provisional"):
        logger.warning("the cache profile is provisional: %s", profile.metadata.get("source"))


def log_cache_summary(logger: logging.Logger, cache: DeltaCache, report: GenerationReport, profile: CacheProfile,
                      stats_path: str | None) -> None:
    """Logs block calls, ideal and measured speedup and buffer memory; writes the statistics JSON if asked."""
    measured = report.measured_speedup()
    for line in cache.stats.summary().splitlines():
        logger.info(line)
    logger.info("speedup of the denoising loop: ideal %.3fx, measured %s (full-step time x steps / loop time)",
                cache.stats.ideal_speedup, f"{measured:.3f}x" if measured else "n/a")
    if stats_path:
        write_run_stats(stats_path, report, {"policy": "delta_cache", "profile_tag": profile.config.tag(),
                                             "measured_speedup": measured, **cache.stats.to_dict()})


def write_run_stats(path: str, report: GenerationReport, cache_part: dict | None = None) -> None:
    """Writes a run's statistics JSON (``--cache_stats``) atomically: the report's timings (``denoise_seconds``,
    ``decode_seconds``, ``total_seconds``, ``step_seconds``...) plus the cache policy's statistics.

    Args:
        path: the JSON file.
        report: the run's timings.
        cache_part: the policy's fields (``policy``, block calls, speedup...); None for a run without a cache, which
            is written with ``"policy": "none"`` so that full and cached runs share one format.
    """
    write_json_atomic(path, {**(cache_part or {"policy": "none"}), **report.timings()})
