"""Built-in cache profiles, one JSON file per task (``<task>.json``), used by ``--delta_cache``.

* ``t2v-14B.json``: the paper's 28-block list, uniform interval 6, warm-up 6 (ideal speedup 2.016x at 50 steps).
* ``t2v-1.3B.json``: provisional (the paper has no list for the 30-block model); see its metadata.
* ``t2v-tiny.json``: written by the profiler (``scripts/profile_wan.py``) for the shipped tiny model.
"""

import os

from common_cache import CacheProfile

PROFILE_DIR = os.path.dirname(os.path.abspath(__file__))


def builtin_profile_path(task: str) -> str:
    return os.path.join(PROFILE_DIR, f"{task}.json")


def builtin_profile(task: str) -> CacheProfile | None:
    """The shipped profile of ``task``, or None when there is none."""
    path = builtin_profile_path(task)
    return CacheProfile.load(path) if os.path.isfile(path) else None
