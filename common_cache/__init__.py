"""common_cache: model-agnostic block-selective delta caching (ProfilingDiT).

The public API (documented in docs/caching.md):

* :func:`run_blocks`: the entry point a transformer forward calls for each block stack.
* :class:`CacheConfig`, :class:`StreamGroupConfig`, schedules, :class:`CacheProfile`: typed configuration and the
  JSON cache profile.
* :class:`DeltaCache`, :func:`attach_cache`, :func:`detach_cache`: the run-time cache.
* :func:`enable_cache`, :func:`disable_cache`: put any cache policy on our transformers and on diffusers transformers
  and pipelines (docs/diffusers.md; :mod:`common_cache.adapters`).
* :class:`CacheStats`: per-generation statistics; :class:`GenerationReport`, the summary helpers and
  :func:`write_run_stats` (``--cache_stats``).
* File and signal helpers of the command lines: :func:`atomic_path`, :func:`check_output_file`,
  :func:`check_output_folder`, :func:`safe_name_part`, :func:`handle_interrupts`.
* :func:`add_cache_args`, :func:`cache_profile_from_args`, :func:`delta_cache_from_args`: the shared CLI group.
"""

from common_cache.cli import add_cache_args, cache_profile_from_args, delta_cache_from_args, parse_int_list
from common_cache.config import CacheConfig, CacheProfile, StreamGroupConfig, UnitConfig
from common_cache.files import (
    Interrupted,
    atomic_path,
    check_output_file,
    check_output_folder,
    handle_interrupts,
    interrupt_exit_code,
    load_component,
    safe_name_part,
    write_json_atomic,
)
from common_cache.delta_cache import DeltaCache
from common_cache.policy import attach_cache, detach_cache
from common_cache.report import (
    DenoiseTimer,
    GenerationReport,
    log_cache_profile,
    log_cache_summary,
    saved_calls_text,
    write_run_stats,
)
from common_cache.plan import (
    CacheUnit,
    GroupPlan,
    cache_units,
    compile_group,
    compile_steps,
    lagrange_weights,
    step_kinds,
)
from common_cache.runner import call_block, run_blocks, step_context
from common_cache.schedule import LinearSchedule, StepListSchedule, UniformSchedule, schedule_from_dict
from common_cache.stats import CacheStats
from common_cache.adapters import disable_cache, enable_cache  # last: it builds on the modules above

__all__ = [
    "CacheConfig",
    "CacheProfile",
    "CacheStats",
    "CacheUnit",
    "DeltaCache",
    "DenoiseTimer",
    "GenerationReport",
    "GroupPlan",
    "Interrupted",
    "LinearSchedule",
    "StepListSchedule",
    "StreamGroupConfig",
    "UniformSchedule",
    "UnitConfig",
    "add_cache_args",
    "atomic_path",
    "attach_cache",
    "cache_profile_from_args",
    "cache_units",
    "check_output_file",
    "check_output_folder",
    "call_block",
    "compile_group",
    "compile_steps",
    "delta_cache_from_args",
    "detach_cache",
    "disable_cache",
    "enable_cache",
    "handle_interrupts",
    "interrupt_exit_code",
    "lagrange_weights",
    "load_component",
    "log_cache_profile",
    "log_cache_summary",
    "parse_int_list",
    "run_blocks",
    "safe_name_part",
    "saved_calls_text",
    "schedule_from_dict",
    "step_context",
    "step_kinds",
    "write_json_atomic",
    "write_run_stats",
]
