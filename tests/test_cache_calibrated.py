"""Calibrated forecast weights: per reuse step in the profile, applied exactly by the engine instead of the finite
differences, and the damped slopes the budgeted profiler chooses on the profiling prompts."""

import argparse
import json

import numpy as np
import pytest
import torch
from cache_toys import ToyModel
from test_cache_forecast import _bound, group, inputs, run

from common_cache import (
    CacheConfig,
    CacheProfile,
    DeltaCache,
    StepListSchedule,
    UniformSchedule,
    UnitConfig,
    add_cache_args,
    cache_profile_from_args,
)
from common_cache.profiling.budget import choose_damping, damped_weights, with_damping


def _compiled_weights(config, num_steps):
    cache = _bound(config)
    cache.begin(num_steps)
    return {step: weights for step, plan in enumerate(cache._steps["blocks"])
            for op, _, _, weights in plan.ops if weights is not None}


def test_damping_1_is_the_finite_difference_and_half_damping_halves_the_slope():
    unit = UnitConfig(0, 3, 2, StepListSchedule((5, 9)), 1)
    config = CacheConfig((group(4, (0, 1, 2, 3), 0, UniformSchedule(1), units=(unit,)),))
    assert _close(dict(damped_weights(unit, 12, 1.0)), _compiled_weights(config, 12))
    assert with_damping(config, 12, 1.0) is config
    half = dict(damped_weights(unit, 12, 0.5))
    # records at 0, 1 (warm-up), 2 (the refresh after it), 5, 9: steps 3-4 forecast from (1, 2), 6-8 from (2, 5)
    assert sorted(half) == [3, 4, 6, 7, 8, 10, 11]
    assert half[3] == pytest.approx((-0.5, 1.5))  # r_2 + 0.5 * (3 - 2) / (2 - 1) * (r_2 - r_1)
    assert half[7] == pytest.approx((-1 / 3, 4 / 3))  # r_5 + 0.5 * 2 / 3 * (r_5 - r_2)
    assert half[11] == pytest.approx((-0.25, 1.25))  # r_9 + 0.5 * 2 / 4 * (r_9 - r_5)
    assert _close(_compiled_weights(with_damping(config, 12, 0.5), 12), half)


def _close(a, b):
    return sorted(a) == sorted(b) and all(a[k] == pytest.approx(b[k]) for k in a)


def test_damping_leaves_copies_alone():
    units = (UnitConfig(0, 1, 1, UniformSchedule(3), 0), UnitConfig(2, 3, 1, UniformSchedule(3), 1))
    config = CacheConfig((group(4, (0, 1, 2, 3), units=units),))
    damped = with_damping(config, 9, 0.7).groups[0].units
    assert damped[0].forecast_weights is None and damped[1].forecast_weights is not None


def test_choose_damping_keeps_the_candidate_of_best_measured_psnr():
    unit = UnitConfig(0, 1, 1, StepListSchedule((1, 5)), 1)
    config = CacheConfig((group(2, (0, 1), units=(unit,)),))
    references = [np.full((2, 4, 4, 3), 100, dtype=np.uint8)] * 2

    def run(cache, prompt, seed):  # the video's error grows with the distance of the slope scale from 0.7
        weights = cache.config.groups[0].units[0].forecast_weights
        scale = 1.0 if weights is None else -dict(weights)[3][0] / 2.0  # step 3: slope (3 - 1) / (1 - 0) = 2
        return references[0] + np.uint8(round(20 * abs(scale - 0.7))), 1.0

    damping, scores = choose_damping(config, run, ["a", "b"], [0, 1], references, 8)
    assert damping == 0.7 and list(scores) == ["1.0", "0.9", "0.8", "0.7", "0.6", "0.5"]
    assert scores["0.7"] == 100.0 and scores["0.5"] < scores["0.6"] < 100.0


def test_the_engine_adds_the_calibrated_combination_of_the_records():
    # The whole stack as one unit, steps 0, 1, 4 computed; reuse 2, 3 from records (0, 1), reuse 5 from (1, 4).
    xs = inputs(6)
    model = ToyModel(3)
    weights = ((2, (-0.5, 1.25)), (3, (0.25, 0.5)), (5, (-1.0, 2.0)))
    unit = UnitConfig(0, 2, 0, StepListSchedule((0, 1, 4)), 1, weights)
    cache = DeltaCache(CacheConfig((group(3, (0, 1, 2), units=(unit,)),)))
    outs = run(model, cache, xs)
    recorded = {s: outs[s] - xs[s] for s in (0, 1, 4)}
    for step, (older, newer), (i, j) in ((2, weights[0][1], (0, 1)), (3, weights[1][1], (0, 1)),
                                          (5, weights[2][1], (1, 4))):
        expected = xs[step] + older * recorded[i] + newer * recorded[j]
        torch.testing.assert_close(outs[step], expected, rtol=0, atol=1e-6)
    assert [b.calls for b in model.blocks] == [3, 3, 3]


def test_a_calibrated_single_weight_scales_the_copy():
    xs = inputs(3)
    model = ToyModel(2)
    unit = UnitConfig(0, 1, 0, StepListSchedule((0,)), 1, ((1, (0.5,)), (2, (0.5,))))
    outs = run(model, DeltaCache(CacheConfig((group(2, (0, 1), units=(unit,)),))), xs)
    torch.testing.assert_close(outs[2], xs[2] + 0.5 * (outs[0] - xs[0]), rtol=0, atol=1e-7)


@pytest.mark.parametrize("weights, message", [
    (((2, (1.0, 0.0)),), r"forecast_weights are given for the steps \[2\] but the unit reuses on the steps "
                         r"\[2, 3, 5\]"),
    (((2, (1.0,)), (3, (1.0, 0.0)), (5, (1.0, 0.0))), "forecast_weights at step 2 has 1 weights: the forecast "
                                                      "there uses 2 records"),
])
def test_calibrated_weights_that_do_not_fit_the_schedule_are_refused_at_begin(weights, message):
    unit = UnitConfig(0, 2, 0, StepListSchedule((0, 1, 4)), 1, weights)
    cache = _bound(CacheConfig((group(3, (0, 1, 2), units=(unit,)),)))
    with pytest.raises(ValueError, match=message):
        cache.begin(6)


@pytest.mark.parametrize("weights, message", [
    ([], "forecast_weights=\\[\\] is not allowed: expected a non-empty list"),
    ([[2, [1, 2, 3, 4]]], r"entry \[2, \[1, 2, 3, 4\]\] is not allowed: expected \[step, \[1 to 3 weights\]\]"),
    ([[2, [float("nan")]]], "forecast weight nan at step 2 is not allowed: expected a finite number"),
    ([[-1, [1.0]]], "forecast_weights step"),
    ([[2, [1.0]], [2, [0.5]]], r"lists the steps \[2\] more than once"),
])
def test_bad_calibrated_weights_are_named(weights, message):
    with pytest.raises(ValueError, match=message):
        UnitConfig(0, 2, 0, None, 1, weights)


def test_calibrated_weights_round_trip_and_give_way_to_command_line_schedules(tmp_path):
    weights = ((2, (-0.5, 1.5)), (3, (-1.0, 2.0)))
    units = (UnitConfig(0, 3, 2, StepListSchedule((4,)), 1, weights),)
    profile = CacheProfile(CacheConfig((group(4, (0, 1, 2, 3), 0, UniformSchedule(1), units=units),)))
    path = profile.save(str(tmp_path / "p.json"))
    assert json.load(open(path))["groups"][0]["units"][0]["forecast_weights"] == [[2, [-0.5, 1.5]], [3, [-1.0, 2.0]]]
    assert CacheProfile.load(path).config == profile.config
    parser = argparse.ArgumentParser()
    add_cache_args(parser)
    kept = cache_profile_from_args(parser.parse_args(["--delta_cache"]), profile, "test").config.groups[0]
    assert kept.resolved_units()[0].forecast_weights == weights
    for flags in (["--cache_interval", "2"], ["--cache_forecast_order", "1"], ["--cache_warmup", "1"]):
        args = parser.parse_args(["--delta_cache", *flags])
        assert cache_profile_from_args(args, profile, "test").config.groups[0].resolved_units()[0].forecast_weights \
            is None
