"""Residual forecasting and per-unit schedules in the engine: exact arithmetic against hand computations on toy
stacks, block-call counts, memory, and the profile format."""

import json

import pytest
import torch
from cache_toys import ToyModel, plain_loop

from common_cache import (
    CacheConfig,
    CacheProfile,
    DeltaCache,
    StepListSchedule,
    StreamGroupConfig,
    UniformSchedule,
    UnitConfig,
    attach_cache,
    lagrange_weights,
    stack_input_unused,
)


def inputs(num_steps, shape=(2, 5)):
    generator = torch.Generator().manual_seed(3)
    return [torch.randn(shape, generator=generator) for _ in range(num_steps)]


def run(model, cache, xs, branch="cond", sigmas=None):
    attach_cache(model, cache)
    cache.begin(len(xs), sigmas=sigmas)
    outs = []
    for i, x in enumerate(xs):
        with cache.step(i, branch):
            outs.append(model(x))
    return outs


def residual(model, first, last, x):
    """The residual of blocks first..last on the plain model's input at block ``first``."""
    h = plain_loop(model.blocks[:first], x)
    return plain_loop(model.blocks[first:last + 1], h) - h


def group(depth, cached, warmup=1, schedule=None, order=0, **kwargs):
    return StreamGroupConfig("blocks", depth, cached, warmup, schedule or UniformSchedule(3), order, **kwargs)


# ------------------------------------------------------------------------------------------------ forecasting


def test_order_0_with_explicit_units_is_bit_identical_to_the_implicit_ones():
    xs = inputs(9)
    model = ToyModel(6)
    implicit = run(model, DeltaCache(CacheConfig((group(6, (1, 3, 4, 5), 2, UniformSchedule(3)),))), xs)
    units = (UnitConfig(1, 1), UnitConfig(3, 5))
    explicit = run(model, DeltaCache(CacheConfig((group(6, (1, 3, 4, 5), 2, UniformSchedule(3), units=units),))),
                   xs)
    assert all(torch.equal(a, b) for a, b in zip(implicit, explicit))


def test_order_1_reuse_is_the_linear_extrapolation_of_the_last_two_records():
    # One span 0..3 (the whole stack), warm-up 2: steps 0, 1 run (both recorded, order 1), then refresh at 2 and 5;
    # the reuse steps 3, 4 forecast from the records at 1 and 2, steps 6, 7 from 2 and 5.
    xs = inputs(8)
    model = ToyModel(4)
    cache = DeltaCache(CacheConfig((group(4, (0, 1, 2, 3), 2, StepListSchedule((2, 5)), order=1),)))
    outs = run(model, cache, xs)
    # A span over the whole stack records out - in of the cached run itself (its input is the step's input).
    recorded = {s: outs[s] - xs[s] for s in (1, 2, 5)}
    for step, (i, j) in {3: (1, 2), 4: (1, 2), 6: (2, 5), 7: (2, 5)}.items():
        forecast = recorded[j] + (recorded[j] - recorded[i]) * (step - j) / (j - i)
        torch.testing.assert_close(outs[step], xs[step] + forecast, rtol=0, atol=1e-6)
    assert [b.calls for b in model.blocks] == [4] * 4  # steps 0, 1, 2, 5
    assert cache.stats.skipped_calls == 16 and cache.stats.computed_calls == 16


def test_output_target_forecasts_the_span_output_whatever_its_input():
    # Span 1..2 of 4 blocks refreshed on steps 0, 1, 4: reuse steps 2, 3 forecast the span's
    # *output* from the records of steps 0 and 1; steps 5, 6 from 1 and 4 (damped weights given per step), step 7
    # takes the output of step 4 (weights 0, 1). Block 3 always runs, on the forecast output.
    xs = inputs(8)
    model = ToyModel(4)
    weights = ((2, (-1.0, 2.0)), (3, (-2.0, 3.0)), (5, (-0.25, 1.25)), (6, (-0.5, 1.5)), (7, (0.0, 1.0)))
    units = (UnitConfig(1, 2, 0, StepListSchedule((0, 1, 4)), 1, weights),)
    config = CacheConfig((group(4, (1, 2), units=units, forecast_target="output"),))
    assert CacheConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    outs = run(model, DeltaCache(config), xs)
    assert [b.calls for b in model.blocks] == [8, 3, 3, 8]  # the span runs on steps 0, 1, 4 only
    span_out = {s: plain_loop(model.blocks[:3], xs[s]) for s in (0, 1, 4)}
    for step, (i, j, w) in {2: (0, 1, 2.0), 3: (0, 1, 3.0), 5: (1, 4, 1.25), 6: (1, 4, 1.5), 7: (1, 4, 1.0)}.items():
        forecast = w * span_out[j] + (1.0 - w) * span_out[i]
        torch.testing.assert_close(outs[step], model.blocks[3](forecast), rtol=0, atol=1e-6)
    # The same schedule forecasting residuals adds them to block 1's input on the reuse step instead.
    residual_outs = run(ToyModel(4), DeltaCache(CacheConfig((group(4, (1, 2), units=units),))), xs)
    h = model.blocks[0](xs[2])
    d = {s: span_out[s] - model.blocks[0](xs[s]) for s in (0, 1)}
    torch.testing.assert_close(residual_outs[2], model.blocks[3](h + 2.0 * d[1] - d[0]), rtol=0, atol=1e-6)
    assert not torch.allclose(residual_outs[2], outs[2])


@pytest.mark.parametrize("cached, target, expected", [
    ((0, 1, 2), "output", [False, False, True, False, True, True]),  # whole stack, output: its reuse steps
    ((0, 1, 2), "residual", [False] * 6),  # a residual is added to the stack's input
    ((1, 2), "output", [False] * 6),  # block 0 runs and feeds the span
])
def test_only_a_whole_stack_output_forecast_leaves_the_stack_input_unused(cached, target, expected):
    config = CacheConfig((group(3, cached, 1, StepListSchedule((3,)), 1, forecast_target=target),))
    cache = DeltaCache(config)
    model = ToyModel(3)
    attach_cache(model, cache)
    cache.begin(6)
    assert not stack_input_unused(cache, "blocks")  # outside a step
    assert not stack_input_unused(None, "blocks")
    unused = []
    for step, x in enumerate(inputs(6)):
        with cache.step(step, "cond"):
            unused.append(stack_input_unused(cache, "blocks"))
            model(x)
    assert unused == expected


def test_order_2_reuse_is_the_quadratic_extrapolation_of_the_last_three_records():
    xs = inputs(9)
    model = ToyModel(3)
    cache = DeltaCache(CacheConfig((group(3, (1,), 3, StepListSchedule((3, 5)), order=2),)))
    outs = run(model, cache, xs)
    assert [b.calls for b in model.blocks] == [9, 5, 9]
    # Block 1 runs on steps 0..3 and 5; the records used: (1, 2, 3) at step 4, (2, 3, 5) at steps 6..8.
    rec = {s: residual(model, 1, 1, xs[s]) for s in (1, 2, 3, 5)}
    for step, nodes in {4: (1, 2, 3), 6: (2, 3, 5), 7: (2, 3, 5), 8: (2, 3, 5)}.items():
        a, b, c = nodes
        x = step
        forecast = (rec[a] * (x - b) * (x - c) / ((a - b) * (a - c)) + rec[b] * (x - a) * (x - c) / ((b - a) * (b - c))
                    + rec[c] * (x - a) * (x - b) / ((c - a) * (c - b)))
        h0 = model.blocks[0](xs[step])
        expected = model.blocks[2](h0 + forecast)
        torch.testing.assert_close(outs[step], expected, rtol=0, atol=1e-5)


def test_the_first_reuse_after_a_single_record_copies_it():
    # Warm-up 0: only step 0 has run before the reuse at step 1, so order 2 falls back to the copy there.
    xs = inputs(4)
    model = ToyModel(2)
    cache = DeltaCache(CacheConfig((group(2, (0, 1), 0, StepListSchedule((0, 3)), order=2),)))
    outs = run(model, cache, xs)
    assert torch.equal(outs[1], xs[1] + (outs[0] - xs[0]))


def test_forecast_over_sigma_uses_the_sigmas_given_to_begin():
    xs = inputs(5)
    sigmas = [1.0, 0.9, 0.6, 0.5, 0.1]
    model = ToyModel(2)
    cache = DeltaCache(CacheConfig((group(2, (0, 1), 2, UniformSchedule(5), order=1, forecast_abscissa="sigma"),)))
    outs = run(model, cache, xs, sigmas=sigmas)
    d1, d2 = outs[1] - xs[1], outs[2] - xs[2]
    for step in (3, 4):
        slope = (d2 - d1) / (sigmas[2] - sigmas[1])
        torch.testing.assert_close(outs[step], xs[step] + d2 + slope * (sigmas[step] - sigmas[2]), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="forecasts over sigma: the pipeline must pass the run's sigmas"):
        _bound(cache.config).begin(5)


def _bound(config):
    cache = DeltaCache(config)
    cache.bind({"blocks": config.groups[0].depth})
    return cache


def test_lagrange_weights_reproduce_polynomials_and_refuse_repeated_nodes():
    assert lagrange_weights([4], 9) == (1.0,)
    w = lagrange_weights([1, 2, 4], 6)
    assert sum(wi * (3 * n * n - n + 2) for wi, n in zip(w, [1, 2, 4])) == pytest.approx(3 * 36 - 6 + 2)
    with pytest.raises(ValueError, match="repeat a value"):
        lagrange_weights([1.0, 1.0], 2)


def test_history_memory_grows_with_the_order():
    xs = inputs(10, shape=(4, 8))
    peaks = []
    for order in (0, 1, 2):
        cache = DeltaCache(CacheConfig((group(4, (0, 2), 2, UniformSchedule(4), order=order),)))
        run(ToyModel(4), cache, xs)
        peaks.append(cache.stats.peak_buffer_bytes)
    one_delta = 4 * 8 * 4  # fp32
    assert peaks == [2 * one_delta, 4 * one_delta, 6 * one_delta]  # two units x (order + 1) records


# ------------------------------------------------------------------------------------------------ per-unit schedules


def test_per_unit_schedules_give_exactly_the_planned_block_calls():
    # depth 6: unit 0..1 warm-up 2, refresh 2, 5 (runs 0, 1, 2, 5); unit 3 warm-up 1, every 2 steps (runs 0, 1, 3,
    # 5, 7); block 2, 4, 5 always run. 8 steps, two guidance branches.
    units = (UnitConfig(0, 1, 2, StepListSchedule((5,)), 1), UnitConfig(3, 3, 1, UniformSchedule(2), 0))
    config = CacheConfig((group(6, (0, 1, 3), 0, UniformSchedule(1), units=units),))
    model, cache, xs = ToyModel(6), DeltaCache(config), inputs(8)
    attach_cache(model, cache)
    cache.begin(8)
    for i, x in enumerate(xs):
        for branch in ("cond", "uncond"):
            with cache.step(i, branch):
                model(x)
    assert [b.calls for b in model.blocks] == [8, 8, 16, 10, 16, 16]
    assert cache.stats.groups["blocks"].skipped == [0, 0, 2, 4, 6, 0, 6, 4]
    assert cache.stats.ideal_speedup == pytest.approx(96 / 74)


def test_unit_configs_round_trip_through_json_and_fill_from_the_group(tmp_path):
    units = (UnitConfig(0, 2, 3, StepListSchedule((3, 10)), 2), UnitConfig(5, 5))
    config = CacheConfig((group(8, (0, 1, 2, 5), 6, UniformSchedule(4), order=1, units=units),))
    path = CacheProfile(config, metadata={"m": 1}).save(str(tmp_path / "p.json"))
    data = json.load(open(path))
    assert data["groups"][0]["units"] == [
        {"blocks": [0, 2], "warmup_steps": 3, "schedule": {"kind": "list", "steps": [3, 10]}, "forecast_order": 2},
        {"blocks": [5, 5]}]
    del data["groups"][0]["cached_blocks"]  # derived from the units when absent
    json.dump(data, open(path, "w"))
    loaded = CacheProfile.load(path).config
    assert loaded == config
    resolved = loaded.groups[0].resolved_units()
    assert resolved[1] == UnitConfig(5, 5, 6, UniformSchedule(4), 1)
    assert loaded.groups[0].short() == "b4w6i4u2o2"


@pytest.mark.parametrize("kwargs, message", [
    (dict(cached=(0, 1, 2), units=(UnitConfig(0, 1), UnitConfig(1, 2))), "overlaps the unit before it"),
    (dict(cached=(0, 1, 3), units=(UnitConfig(0, 1),)), r"the units cover blocks \[0, 1\] but cached_blocks is"),
    (dict(cached=(0,), units=(UnitConfig(0, 9),)), "unit 0..9 is out of range for depth 6"),
    (dict(cached=(0,), forecast_order=3), "forecast_order=3 is not allowed: expected an integer 0..2"),
    (dict(cached=(0,), forecast_abscissa="time"), "forecast_abscissa='time' is not allowed"),
    (dict(cached=(0,), forecast_target="input"), (r"forecast_target='input' is not allowed: expected one of "
                                                  r"\['residual', 'output'\]")),
    (dict(cached=("2",)), "cached block '2' is a str: expected an integer block index 0..5"),
])
def test_bad_group_fields_are_named(kwargs, message):
    cached = kwargs.pop("cached")
    with pytest.raises(ValueError, match=message):
        StreamGroupConfig("blocks", 6, cached, 1, UniformSchedule(2), **kwargs)


def test_a_unit_schedule_that_does_not_fit_the_run_names_the_unit():
    units = (UnitConfig(0, 0, 2, StepListSchedule((9,))),)
    cache = _bound(CacheConfig((group(3, (0,), 1, UniformSchedule(2), units=units),)))
    with pytest.raises(ValueError, match=r"group 'blocks', unit 0..0: refresh step 9 is out of range for 5 steps"):
        cache.begin(5)


@pytest.mark.parametrize("content, message", [
    ("[1, 2]", "the profile is list"),
    ('{"format": "profilingdit-cache-profile", "version": 1, "groups": [3]}', "stream group is int 3"),
    ('{"format": "profilingdit-cache-profile", "version": 1, "groups": {}}', "groups={} is not allowed"),
    ('{"format": "profilingdit-cache-profile", "version": 1, "groups": [{"name": "blocks", "depth": 4, '
     '"cached_blocks": 2}]}', "cached_blocks=2 is not allowed: expected a list of block indices"),
    ('{"format": "profilingdit-cache-profile", "version": 1, "groups": [{"name": "blocks", "depth": 4, '
     '"cached_blocks": [1]}], "scores": {"blocks": 3}}', "scores of group 'blocks' are 3: expected a list"),
])
def test_profile_schema_errors_name_the_field(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        CacheProfile.load(str(path))


def test_a_directory_is_not_a_profile(tmp_path):
    with pytest.raises(ValueError, match="is a directory: expected a JSON profile file"):
        CacheProfile.load(str(tmp_path))


def test_command_line_overrides_replace_the_units_own_values():
    import argparse

    from common_cache import add_cache_args, cache_profile_from_args

    units = (UnitConfig(0, 11, 3, StepListSchedule((3, 8, 20)), 1),)
    profile = CacheProfile(CacheConfig((group(12, tuple(range(12)), 0, UniformSchedule(1), units=units),)))
    parser = argparse.ArgumentParser()
    add_cache_args(parser)

    def resolved(*argv):
        args = parser.parse_args(["--delta_cache", *argv])
        return cache_profile_from_args(args, profile, "test").config.groups[0]

    assert resolved().resolved_units() == units
    by_interval = resolved("--cache_interval", "4", "--cache_forecast_order", "2").resolved_units()[0]
    assert (by_interval.warmup_steps, by_interval.schedule, by_interval.forecast_order) == (3, UniformSchedule(4), 2)
    by_blocks = resolved("--cache_blocks", "0-3,8", "--cache_warmup", "6")
    assert by_blocks.units == () and [(u.first, u.last, u.warmup_steps) for u in by_blocks.resolved_units()] == [
        (0, 3, 6), (8, 8, 6)]


def test_two_state_streams_forecast_each_state_and_bf16_storage_stays_close():
    from cache_toys import ToyTwoStreamModel

    img = [torch.randn(2, 3, generator=torch.Generator().manual_seed(s)) for s in range(6)]
    txt = [torch.randn(2, 3, generator=torch.Generator().manual_seed(10 + s)) for s in range(6)]
    # The double span 0..2 (image and text state) runs on steps 0, 1, 2 and forecasts steps 3, 4, 5 from the
    # records of steps 1 and 2, each state on its own; the single stack always runs.
    config = CacheConfig((StreamGroupConfig("double", 3, (0, 1, 2), 2, UniformSchedule(4), 1),))
    outputs = {}
    for dtype in (None, torch.bfloat16):
        model, cache = ToyTwoStreamModel(3, 2), DeltaCache(config, delta_dtype=dtype)
        outputs[dtype] = list(_two_stream_run(model, cache, img, txt))
    model = ToyTwoStreamModel(3, 2)
    for step in (3, 4, 5):
        states = []
        for k, inputs in enumerate((img, txt)):
            d1, d2 = (plain_pair(model, img[s], txt[s])[k] - inputs[s] for s in (1, 2))
            states.append(inputs[step] + d2 + (d2 - d1) * (step - 2))
        expected = plain_loop(model.single_blocks, torch.cat(states, dim=1))
        torch.testing.assert_close(outputs[None][step], expected, rtol=0, atol=1e-6)
    for a, b in zip(outputs[None], outputs[torch.bfloat16]):
        torch.testing.assert_close(a, b, rtol=0, atol=0.05)


def _two_stream_run(model, cache, img, txt):
    attach_cache(model, cache)
    cache.begin(len(img))
    for i, (x, y) in enumerate(zip(img, txt)):
        with cache.step(i, "cond"):
            yield model(x, y)


def plain_pair(model, img, txt):
    for block in model.double_blocks:
        img, txt = block(img, txt)
    return img, txt
