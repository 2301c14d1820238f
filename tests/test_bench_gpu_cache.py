"""scripts/bench/gpu_cache.py: a budgeted tiny-model profile is applied to a deeper model without changing its
schedule; profiles that cannot be mapped are refused with the depths named."""

import pytest
from scripts_loader import load_script
from wan.cache_profiles import builtin_profile_path, resolve_profile_path

from common_cache import CacheProfile, DeltaCache


def _script():
    return load_script("scripts/bench/gpu_cache.py", "bench_gpu_cache")


def test_whole_stack_profile_keeps_steps_and_weights_at_depth_30():
    bench = _script()
    tiny = CacheProfile.load(resolve_profile_path("t2v-tiny-4x")).config
    mapped = bench.on_depth(tiny, 30)
    group, source = mapped.group("blocks"), tiny.group("blocks")
    assert group.depth == 30 and group.cached_blocks == tuple(range(30))
    (unit,) = group.units
    assert (unit.first, unit.last) == (0, 29)
    assert unit.schedule == source.units[0].schedule and unit.forecast_order == source.units[0].forecast_order
    assert unit.forecast_weights == source.units[0].forecast_weights
    assert group.forecast_target == source.forecast_target == "output"
    # The same block-call budget: 11 refresh steps of 50 per branch, now of 30 blocks each.
    cache = DeltaCache(mapped)
    cache.bind({"blocks": 30})
    cache.begin(50)
    steps = cache._steps["blocks"]
    assert sum(step.computed for step in steps) == 11 * 30
    assert sum(step.skipped for step in steps) == 39 * 30


def test_same_depth_unchanged_and_partial_profile_refused():
    bench = _script()
    paper = CacheProfile.load(builtin_profile_path("t2v-1.3B")).config
    assert bench.on_depth(paper, 30) is paper
    with pytest.raises(SystemExit, match="depth 30 .* does not fit a 12-block model"):
        bench.on_depth(paper, 12)
