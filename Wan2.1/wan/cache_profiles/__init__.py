"""Built-in cache profiles, one JSON file per name; ``--delta_cache`` uses the task's default (:data:`DEFAULTS`,
else ``<task>.json``) and ``--cache_profile NAME`` any of them by name (``--cache_profile t2v-tiny-4x``).

* ``t2v-14B.json``: the paper's 28-block list, uniform interval 6, warm-up 6 (ideal speedup 2.016x at 50 steps).
* ``t2v-1.3B.json``: provisional (the paper has no list for the 30-block model); see its metadata.
* ``t2v-tiny.json``: the paper's kind of profile for the shipped tiny model, written by the profiler
  (``scripts/profile_wan.py``): the 8 blocks of lowest R_attn cached, warm-up 6, interval 6 (1.92x ideal).
* ``t2v-tiny-2x.json``, ``t2v-tiny-3x.json``, ``t2v-tiny-4x.json``: budgeted profiles of the tiny model
  (``scripts/profile_wan.py --target_speedup``): all blocks as one unit with its own refresh steps and residual
  forecasting (the 4x one with a damped slope, chosen on the profiling prompts); ``t2v-tiny-3x`` is
  ``--delta_cache``'s default for ``t2v-tiny`` (docs/benchmarks.md, section 9).
* ``i2v-14B.json``: provisional: the ``t2v-14B`` list (same 40-block depth), not profiled on an i2v model; its
  metadata gives the profiling command for a real I2V checkpoint.
* ``i2v-tiny.json``: provisional: the ``t2v-tiny`` list, for the tiny i2v architecture (no shipped weights).
"""

import os

from common_cache import CacheProfile

PROFILE_DIR = os.path.dirname(os.path.abspath(__file__))


def builtin_profile_path(task: str) -> str:
    return os.path.join(PROFILE_DIR, f"{task}.json")


# The profile --delta_cache uses for a task when it is not <task>.json.
DEFAULTS = {"t2v-tiny": "t2v-tiny-3x"}


def builtin_names() -> list[str]:
    """The names of every shipped profile."""
    return sorted(name[:-5] for name in os.listdir(PROFILE_DIR) if name.endswith(".json"))


def builtin_profile(name: str) -> CacheProfile | None:
    """The shipped profile called ``name``, or None when there is none."""
    path = builtin_profile_path(name)
    return CacheProfile.load(path) if os.path.isfile(path) else None


def default_profile(task: str) -> CacheProfile | None:
    """The profile ``--delta_cache`` uses for ``task``, or None when there is none."""
    return builtin_profile(DEFAULTS.get(task, task))


def resolve_profile_path(value: str) -> str:
    """``--cache_profile``: a path, or the name of a shipped profile (which a path of that name shadows).

    Raises:
        FileNotFoundError: neither a file nor a built-in name (the names are listed).
    """
    if os.path.exists(value) or not value:
        return value
    path = builtin_profile_path(value)
    if os.path.isfile(path) and os.sep not in value:
        return path
    raise FileNotFoundError(f"--cache_profile {value}: no such file, and not a built-in profile name: allowed a "
                            f"profile file or one of {builtin_names()}")
