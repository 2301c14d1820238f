"""common_cache: model-agnostic block-selective delta caching (ProfilingDiT).

Caching only: the sequence-parallel runtime, file and signal helpers and generation timing it builds on live in
:mod:`profilingdit` (``profilingdit.parallel``, ``profilingdit.files``, ``profilingdit.timing``).

The public API (documented in docs/caching.md):

* :func:`run_blocks`: the entry point a transformer forward calls for each block stack.
* :class:`CacheConfig`, :class:`StreamGroupConfig`, schedules, :class:`CacheProfile`: typed configuration and the
  JSON cache profile.
* :class:`DeltaCache`, :func:`attach_cache`, :func:`detach_cache`: the run-time cache.
* :func:`enable_cache`, :func:`disable_cache`: put any cache policy on our transformers and on diffusers transformers
  and pipelines (docs/diffusers.md; :mod:`common_cache.adapters`).
* :class:`CacheStats`: per-generation statistics; the summary helpers and :func:`write_run_stats` (``--cache_stats``).
* :func:`add_cache_args`, :func:`cache_profile_from_args`, :func:`delta_cache_from_args`: the shared CLI group.
"""

from common_cache.cli import add_cache_args, cache_profile_from_args, delta_cache_from_args, parse_int_list
from common_cache.config import CacheConfig, CacheProfile, StreamGroupConfig, UnitConfig
from common_cache.delta_cache import DeltaCache
from common_cache.policy import attach_cache, detach_cache
from common_cache.report import log_cache_profile, log_cache_summary, write_run_stats
from common_cache.plan import (
    CacheUnit,
    GroupPlan,
    cache_units,
    compile_group,
    compile_steps,
    lagrange_weights,
    step_kinds,
)
from common_cache.runner import call_block, run_blocks, stack_input_unused, step_context
from common_cache.schedule import LinearSchedule, StepListSchedule, UniformSchedule, schedule_from_dict
from common_cache.stats import CacheStats
from common_cache.adapters import disable_cache, enable_cache  # last: it builds on the modules above

__all__ = [
    "CacheConfig",
    "CacheProfile",
    "CacheStats",
    "CacheUnit",
    "DeltaCache",
    "GroupPlan",
    "LinearSchedule",
    "StepListSchedule",
    "StreamGroupConfig",
    "UniformSchedule",
    "UnitConfig",
    "add_cache_args",
    "attach_cache",
    "cache_profile_from_args",
    "cache_units",
    "call_block",
    "compile_group",
    "compile_steps",
    "delta_cache_from_args",
    "detach_cache",
    "disable_cache",
    "enable_cache",
    "lagrange_weights",
    "log_cache_profile",
    "log_cache_summary",
    "parse_int_list",
    "run_blocks",
    "schedule_from_dict",
    "stack_input_unused",
    "step_context",
    "step_kinds",
    "write_run_stats",
]
