"""The shipped tiny-model profile was produced by the profiler, is consistent with its own scores, and is accepted
by the model it was made for."""

from __future__ import annotations

import numpy as np

from common_cache import UniformSchedule
from common_cache.profiling import refresh_steps_from_change, split_blocks
from wan.cache_profiles import builtin_profile
from wan.configs import WAN_CONFIGS


def test_tiny_profile_comes_from_the_profiler_and_matches_its_scores():
    profile = builtin_profile("t2v-tiny")
    meta = profile.metadata
    assert meta["source"] == "profiler" and not meta.get("provisional")
    assert meta["command"].startswith("python scripts/profile_wan.py --task t2v-tiny")
    assert meta["model"] == "Wan2.1-T2V-tiny" and len(meta["prompts"]) >= 4
    profile.config.check_depths({"blocks": WAN_CONFIGS["t2v-tiny"].num_layers})
    group = profile.config.groups[0]
    settings = meta["profiler"]
    assert split_blocks(profile.scores["blocks"], cache_k=len(group.cached_blocks)) == group.cached_blocks
    if settings.get("refresh_budget") is None:  # a uniform refresh interval
        assert group.schedule == UniformSchedule(settings["interval"])
    else:  # refresh steps placed by the step-change curve
        curve = np.array([np.nan if v is None else v for v in settings["step_change"]])
        budget = len(group.refresh_steps(meta["steps"]))
        assert refresh_steps_from_change(curve, group.warmup_steps, meta["steps"], budget) == \
            group.refresh_steps(meta["steps"])
