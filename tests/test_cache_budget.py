"""Budgeted profiles (common_cache.profiling.budget): the residual recorder, the closed-form errors, the exact
searches against brute force, and scripts/profile_wan.py --target_speedup on a random tiny checkpoint."""

import itertools

import numpy as np
import pytest
import torch
from cache_toys import ToyModel, plain_loop
from test_profiling_wan import ckpt_dir, cli_args, load_cli  # noqa: F401 (fixture)

from common_cache import CacheConfig, CacheProfile, DeltaCache, attach_cache, detach_cache
from common_cache.profiling.budget import (
    DAMPINGS,
    STACK,
    STACK_OUTPUT,
    STEP_WEIGHT_POWERS,
    ResidualTrajectories,
    UnitChoice,
    UnitTables,
    allocate,
    best_schedules,
    copy_errors,
    forecast_error,
    linear_errors,
    search_budget,
    step_weights_from_sigmas,
    unit_from_steps,
)


def random_walk_gram(num_steps=9, width=20, seed=0):
    walk = np.cumsum(np.random.default_rng(seed).normal(size=(num_steps, width)), axis=0)  # [n, width]
    return walk, walk @ walk.T


def test_closed_form_errors_equal_the_direct_ones():
    walk, gram = random_walk_gram()
    copy, linear = copy_errors(gram), linear_errors(gram)
    assert copy[2, 7] == pytest.approx(np.linalg.norm(walk[2] - walk[7]))
    direct = walk[4] + (walk[4] - walk[1]) * (7 - 4) / (4 - 1) - walk[7]
    assert linear[1, 4, 7] == pytest.approx(np.linalg.norm(direct))
    assert forecast_error(gram, [1, 4], 7, 1) == pytest.approx(np.linalg.norm(direct))
    assert linear[4, 4, 7] > 1e29  # no forecast from a repeated record


@pytest.mark.parametrize("order", [0, 1])
def test_best_schedules_are_the_brute_force_optimum(order):
    _, gram = random_walk_gram()
    tables = UnitTables.from_grams([gram], np.linspace(1.0, 2.0, 9))
    curve = best_schedules(tables, max_order=order)
    for count, choice in enumerate(curve, start=1):
        brute = min(tables.schedule_error((0, *rest), k) for k in range(order + 1)
                    for rest in itertools.combinations(range(1, 9), count - 1))
        assert choice.order <= order and choice.computed[0] == 0 and len(choice.computed) == count
        assert choice.error == pytest.approx(brute, rel=1e-9, abs=1e-9)
        assert tables.schedule_error(choice.computed, choice.order) == pytest.approx(choice.error, rel=1e-9, abs=1e-9)
    assert curve[-1].error == 0.0


def test_allocate_is_the_exact_knapsack():
    rng = np.random.default_rng(1)
    curves = [[UnitChoice(float(e), tuple(range(c)), 0) for c, e in enumerate(sorted(rng.random(5))[::-1], 1)]
              for _ in range(3)]
    sizes, budget = [1, 2, 3], 14
    best = min((sum(curves[u][c - 1].error for u, c in enumerate(counts)), counts)
               for counts in itertools.product(range(1, 6), repeat=3)
               if sum(c * s for c, s in zip(counts, sizes)) <= budget)
    chosen = allocate(curves, sizes, budget)
    assert tuple(len(c.computed) for c in chosen) == best[1]
    with pytest.raises(ValueError, match="below one computed step per unit"):
        allocate(curves, sizes, 5)


def test_a_unit_built_from_steps_runs_exactly_on_them():
    computed = (0, 1, 2, 5, 9, 10)
    unit = unit_from_steps(1, 2, computed, 1)
    assert unit.warmup_steps == 2
    from common_cache import StreamGroupConfig, UniformSchedule

    config = CacheConfig((StreamGroupConfig("blocks", 4, (1, 2), 0, UniformSchedule(1), units=(unit,)),))
    model, cache = ToyModel(4), DeltaCache(config)
    attach_cache(model, cache)
    cache.begin(12)
    for i in range(12):
        with cache.step(i, "cond"):
            model(torch.randn(3))
    assert [i for i, s in enumerate(cache.stats.groups["blocks"].skipped) if s == 0] == list(computed)


def test_recorder_keeps_the_gram_matrices_of_every_block_and_the_stack():
    model, recorder = ToyModel(3), ResidualTrajectories()
    attach_cache(model, recorder)
    xs = [torch.randn(2, 4) for _ in range(5)]
    for _ in range(2):  # two generations (prompts)
        recorder.begin(5)
        for i, x in enumerate(xs):
            with recorder.step(i, "cond"):
                out = model(x)
            assert torch.equal(out, plain_loop(model.blocks, x))  # the recorder never changes the output
    recorder.end()
    detach_cache(model)
    block1 = torch.stack([plain_loop(model.blocks[:2], x) - plain_loop(model.blocks[:1], x) for x in xs]).reshape(5, -1)
    stack = torch.stack([plain_loop(model.blocks, x) - x for x in xs]).reshape(5, -1)
    assert len(recorder.grams[("blocks", 1)]) == 2
    np.testing.assert_allclose(recorder.grams[("blocks", 1)][0], (block1 @ block1.T).double().numpy(), rtol=1e-6)
    np.testing.assert_allclose(recorder.grams[("blocks", STACK)][1], (stack @ stack.T).double().numpy(), rtol=1e-6)
    outputs = torch.stack([plain_loop(model.blocks, x) for x in xs]).reshape(5, -1)
    np.testing.assert_allclose(recorder.grams[("blocks", STACK_OUTPUT)][0], (outputs @ outputs.T).double().numpy(),
                               rtol=1e-6)


def test_search_meets_the_budget_and_refuses_bad_targets():
    grams = {("blocks", STACK): [random_walk_gram(10, seed=s)[1] for s in range(2)]}
    grams.update({("blocks", b): [random_walk_gram(10, seed=10 + b)[1]] for b in range(4)})
    sigmas = np.linspace(1.0, 0.1, 10)
    for layout, units in (("stack", 1), ("blocks", None)):
        groups, summary = search_budget(grams, {"blocks": 4}, sigmas, 3.0, layout=layout)
        cache = DeltaCache(CacheConfig(tuple(groups)))
        cache.bind({"blocks": 4})
        cache.begin(10)
        plan_calls = sum(s.computed for s in cache._steps["blocks"])
        assert plan_calls == summary["computed_block_calls_per_branch"] <= 40 / 3.0
        if units:
            assert len(groups[0].units) == units
    weights = step_weights_from_sigmas(sigmas)
    assert weights[-1] == pytest.approx(0.1) and weights[0] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="target_speedup=0.5 is not allowed"):
        search_budget(grams, {"blocks": 4}, sigmas, 0.5)
    with pytest.raises(ValueError, match="layout='rows' is not allowed"):
        search_budget(grams, {"blocks": 4}, sigmas, 2.0, layout="rows")
    with pytest.raises(ValueError, match="forecast_target='output' is not allowed with layout='blocks'"):
        search_budget(grams, {"blocks": 4}, sigmas, 2.0, layout="blocks", forecast_target="output")
    # output: the stack's output Gram decides, and the group says what its units forecast
    grams[("blocks", STACK_OUTPUT)] = [random_walk_gram(10, seed=7)[1]]
    groups, summary = search_budget(grams, {"blocks": 4}, sigmas, 3.0, forecast_target="output")
    tables = UnitTables.from_grams(grams[("blocks", STACK_OUTPUT)], weights)
    assert groups[0].forecast_target == "output" and summary["forecast_target"] == "output"
    assert summary["predicted_error"] == pytest.approx(best_schedules(tables)[2].error, rel=1e-6)  # 3 of 10 steps


def test_cli_target_speedup_writes_a_measured_profile(ckpt_dir, tmp_path):  # noqa: F811
    out = str(tmp_path / "budget.json")
    args = cli_args(ckpt_dir, out, "--target_speedup", "2.5")
    assert load_cli().main(args) == 0
    profile = CacheProfile.load(out)
    group = profile.config.groups[0]
    assert group.cached_blocks == tuple(range(12)) and len(group.units) == 1
    meta = profile.metadata
    assert meta["budget"]["computed_block_calls_per_branch"] <= 8 * 12 / 2.5
    assert meta["measured_on_profiling_prompts"]["ideal_speedup"] >= 2.5
    assert meta["measured_on_profiling_prompts"]["prompts"] == 2 and meta["source"] == "profiler (budgeted)"
    # auto damping and step weights: every candidate measured on the profiling prompts, the best pair kept
    scores = meta["budget"]["damping_psnr_on_profiling_prompts"]
    assert list(scores) == [str(d) for d in DAMPINGS]
    assert scores[str(meta["budget"]["forecast_damping"])] == max(scores.values())
    by_power = meta["budget"]["step_weight_power_psnr_on_profiling_prompts"]
    assert list(by_power) == [str(p) for p in STEP_WEIGHT_POWERS]
    assert by_power[str(meta["budget"]["step_weight_power"])] == scores
    measured = [v for power in by_power.values() if "same_steps_as" not in power for v in power.values()]
    assert max(measured) == max(scores.values())
    for power in by_power.values():  # a power that chose the same steps as an earlier one points to it
        assert "same_steps_as" not in power or "same_steps_as" not in by_power[power["same_steps_as"]]


def test_cli_fixed_step_weights_and_damping_skip_the_closed_loop(ckpt_dir, tmp_path):  # noqa: F811
    out = str(tmp_path / "budget.json")
    args = cli_args(ckpt_dir, out, "--target_speedup", "2.5", "--step_weight_power", "0", "--forecast_damping", "0.8")
    assert load_cli().main(args) == 0
    budget = CacheProfile.load(out).metadata["budget"]
    assert budget["step_weight_power"] == 0.0 and budget["forecast_damping"] == 0.8
    assert budget["step_weights"] == "(sigma_s - sigma_(s+1))^0"
    assert "damping_psnr_on_profiling_prompts" not in budget
    assert "step_weight_power_psnr_on_profiling_prompts" not in budget


def test_step_weight_powers_reweight_the_search():
    sigmas = np.array([1.0, 0.99, 0.97, 0.9, 0.7, 0.4, 0.2, 0.1])
    sizes = np.array([0.01, 0.02, 0.07, 0.2, 0.3, 0.2, 0.1, 0.1])
    np.testing.assert_allclose(step_weights_from_sigmas(sigmas), sizes)
    np.testing.assert_allclose(step_weights_from_sigmas(sigmas, 0.5), np.sqrt(sizes))
    np.testing.assert_allclose(step_weights_from_sigmas(sigmas, 0.0), np.ones(8))
    np.testing.assert_allclose(step_weights_from_sigmas(sigmas, -0.5), 1 / np.sqrt(sizes))
    # the search minimises the predicted error under the weights of its power
    grams = {("blocks", STACK): [random_walk_gram(8, seed=s)[1] for s in range(2)]}
    for power in (1.0, 0.0, -0.5):
        groups, summary = search_budget(grams, {"blocks": 4}, sigmas, 2.0, max_order=1, step_weight_power=power)
        tables = UnitTables.from_grams(grams[("blocks", STACK)], step_weights_from_sigmas(sigmas, power))
        expected = best_schedules(tables, max_order=1)[3]  # 16 block calls of 32: four computed steps
        assert summary["step_weight_power"] == power
        assert summary["predicted_error"] == pytest.approx(expected.error, rel=1e-6)
        cache = DeltaCache(CacheConfig(tuple(groups)))
        cache.bind({"blocks": 4})
        cache.begin(8)
        computed = [step for step, plan in enumerate(cache._steps["blocks"]) if plan.computed]
        assert tuple(computed) == expected.computed


@pytest.mark.parametrize("extra, message", [
    (["--target_speedup", "0.9"], "--target_speedup 0.9 is not allowed"),
    (["--target_speedup", "2", "--max_forecast_order", "3"], "--max_forecast_order 3 is not allowed"),
    (["--target_speedup", "2", "--forecast_damping", "soft"], "--forecast_damping 'soft' is not allowed: expected "
                                                              "auto or a number in (0, 2]"),
    (["--target_speedup", "2", "--step_weight_power", "3"], ("--step_weight_power '3' is not allowed: expected "
                                                               "auto or a number in [-2, 2]")),
])
def test_cli_budget_flags_are_checked_before_loading(ckpt_dir, tmp_path, caplog, extra, message):  # noqa: F811
    assert load_cli().main(cli_args(ckpt_dir, str(tmp_path / "p.json"), *extra)) == 2
    assert message in caplog.text and "Creating WanModel" not in caplog.text
    assert not list(tmp_path.iterdir())
