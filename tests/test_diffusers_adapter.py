"""enable_cache / disable_cache on diffusers transformers: the same numbers as our models, a clean undo, separate
guidance branches and clear errors.

Each equivalence test runs one small classifier-free-guidance sampling loop (8 steps, cond + uncond per step) on
our transformer and on its diffusers twin (same random weights), each under its own instance of the same policy,
driving ``begin`` / ``step`` by hand as a pipeline does, and compares every step's guided prediction.
"""

import pytest
import torch
from diffusers_twins import (
    delta,
    hunyuan_inputs,
    hunyuan_pair,
    hunyuan_step,
    tiny_wan_pipeline,
    wan_inputs,
    wan_pair,
    wan_step,
)
from torch import nn

from common_cache import disable_cache, enable_cache, step_context
from common_cache.adapters import enabled_policy
from common_cache.teacache import UNCALIBRATED, TeaCache, TeaCacheConfig

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 8
GUIDANCE = 3.0
TIMESTEPS = torch.linspace(900.0, 100.0, STEPS).tolist()
SIGMAS = [t / 1000 for t in TIMESTEPS]


WAN_POLICIES = {
    "full": lambda: None,
    "delta": lambda: delta({"blocks": (4, (1, 2))}),
    "forecast": lambda: delta({"blocks": (4, (1, 2))}, order=1),
    # Uncalibrated relative L1 of the indicator is ~0.7-1.4 per step here: these thresholds skip every 2nd step.
    "teacache": lambda: TeaCache(TeaCacheConfig(1.5, UNCALIBRATED, "e")),
    "teacache-e0": lambda: TeaCache(TeaCacheConfig(1.2, UNCALIBRATED, "e0")),
}
HY_GROUPS = {"double": (3, (1, 2)), "single": (3, (0, 1))}
HY_POLICIES = {
    "full": lambda: None,
    "delta": lambda: delta(HY_GROUPS),
    "forecast": lambda: delta(HY_GROUPS, order=1),
    "teacache": lambda: TeaCache(TeaCacheConfig(0.5, UNCALIBRATED, "modulated_input")),  # distances ~0.3-0.45
}


def sample(predict, latent: torch.Tensor, policy) -> torch.Tensor:
    """Euler-like CFG loop; returns the guided prediction of every step, [STEPS, *latent.shape]."""
    if policy is not None:
        policy.begin(STEPS, sigmas=SIGMAS)
    x, guided = latent.clone(), []
    for i, t in enumerate(TIMESTEPS):
        preds = {}
        for branch in ("cond", "uncond"):
            with step_context(policy, i, branch):
                preds[branch] = predict(x, t, branch)
        v = preds["uncond"] + GUIDANCE * (preds["cond"] - preds["uncond"])
        guided.append(v)
        x = x - 0.1 * v
    return torch.stack(guided)


def run_pair(ours, twin, make_policy, predict, latent):
    """Guided predictions and policies of both implementations under fresh instances of one policy."""
    results = []
    for model in (ours, twin):
        policy = make_policy()
        if policy is not None:
            enable_cache(model, policy)
        try:
            results.append((sample(lambda x, t, b, m=model: predict(m, x, t, b), latent, policy), policy))
        finally:
            disable_cache(model)
    return results


def check_equivalent(results, full):
    (ours, policy_a), (twin, policy_b) = results
    torch.testing.assert_close(twin, ours, atol=1e-5, rtol=1e-5)
    if policy_a is None:
        return
    assert policy_a.stats.computed_calls == policy_b.stats.computed_calls
    assert policy_a.stats.skipped_calls == policy_b.stats.skipped_calls > 0  # the policy really skipped blocks
    assert (twin - full).abs().max() > 1e-3  # ... and that changed the result


# ----------------------------------------------------------------------------------------------------- (a) equivalence


@pytest.fixture(scope="module")
def wan():
    ours, twin = wan_pair()
    latent, texts = wan_inputs()
    return ours, twin, latent, texts


@pytest.mark.parametrize("name", list(WAN_POLICIES))
def test_wan_twin_matches_our_model_under_every_policy(wan, name):
    ours, twin, latent, texts = wan
    predict = lambda m, x, t, b: wan_step(m, x, t, texts[b])
    full = sample(lambda x, t, b: wan_step(ours, x, t, texts[b]), latent, None)
    check_equivalent(run_pair(ours, twin, WAN_POLICIES[name], predict, latent), full)


@pytest.fixture(scope="module")
def hunyuan():
    ours, twin = hunyuan_pair()
    latent, texts, rope = hunyuan_inputs(ours)
    return ours, twin, latent, texts, rope


@pytest.mark.parametrize("name", list(HY_POLICIES))
def test_hunyuan_twin_matches_our_model_under_every_policy(hunyuan, name):
    ours, twin, latent, texts, rope = hunyuan
    predict = lambda m, x, t, b: hunyuan_step(m, x, t, texts[b], rope)
    full = sample(lambda x, t, b: hunyuan_step(ours, x, t, texts[b], rope), latent, None)
    check_equivalent(run_pair(ours, twin, HY_POLICIES[name], predict, latent), full)


# ----------------------------------------------------------------------------------------------------- (b) disable


def module_names(model: nn.Module) -> list[tuple[str, str]]:
    return [(name, type(module).__name__) for name, module in model.named_modules()]


def hooks_of(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("kind", ["wan", "hunyuan"])
def test_disable_restores_the_model_exactly(wan, hunyuan, kind):
    if kind == "wan":
        _, twin, latent, texts = wan
        predict = lambda x, t, b: wan_step(twin, x, t, texts[b])
        policy = delta({"blocks": (4, (1, 2))}, order=1)
        stacks = ("blocks",)
    else:
        _, twin, latent, texts, rope = hunyuan
        predict = lambda x, t, b: hunyuan_step(twin, x, t, texts[b], rope)
        policy = delta(HY_GROUPS, order=1)
        stacks = ("transformer_blocks", "single_transformer_blocks")
    lists = {name: getattr(twin, name) for name in stacks}
    keys, names, hooks = list(twin.state_dict()), module_names(twin), hooks_of(twin)
    reference = sample(predict, latent, None)

    enable_cache(twin, policy)
    assert enabled_policy(twin) is policy
    assert list(twin.state_dict()) == keys  # the blocks keep their names while the cache is on
    cached = sample(predict, latent, policy)
    assert (cached - reference).abs().max() > 1e-3
    assert disable_cache(twin) is policy

    assert all(getattr(twin, name) is original for name, original in lists.items())
    assert list(twin.state_dict()) == keys and module_names(twin) == names and hooks_of(twin) == hooks
    assert "cache_context" not in vars(twin) and enabled_policy(twin) is None
    assert torch.equal(sample(predict, latent, None), reference)  # bit-identical to never having enabled it


def test_enable_and_disable_on_our_models(wan):
    ours = wan[0]
    policy = delta({"blocks": (4, (1, 2))})
    assert enable_cache(ours, policy) is policy and ours.block_cache is policy
    with pytest.raises(RuntimeError, match="WanModel already has a cache \\(DeltaCache\\): call disable_cache"):
        enable_cache(ours, TeaCache(TeaCacheConfig(0.1, UNCALIBRATED, "e")))
    assert disable_cache(ours) is policy and ours.block_cache is None
    assert disable_cache(ours) is None  # no cache: a no-op


# ----------------------------------------------------------------------------------------------------- (c) branches


def test_guidance_branches_never_share_state(wan):
    """With the latents fixed in advance, the cond predictions of a cond+uncond run equal those of a cond-only run:
    if the uncond forward (run after cond) overwrote cond's residuals, the reuse steps of cond would differ."""
    _, twin, latent, texts = wan
    latents = [latent * (1.0 - 0.1 * i) for i in range(STEPS)]

    def cond_predictions(branches):
        policy = enable_cache(twin, delta({"blocks": (4, (0, 1, 2, 3))}, order=1))
        policy.begin(STEPS, sigmas=SIGMAS)
        out = []
        try:
            for i, t in enumerate(TIMESTEPS):
                for branch in branches:
                    with policy.step(i, branch):
                        prediction = wan_step(twin, latents[i], t, texts[branch])
                    if branch == "cond":
                        out.append(prediction)
        finally:
            disable_cache(twin)
        assert policy.stats.skipped_calls > 0
        return torch.stack(out)

    both, alone = cond_predictions(("cond", "uncond")), cond_predictions(("cond",))
    assert torch.equal(both, alone)


# ----------------------------------------------------------------------------------------------------- (e) errors


def test_bad_targets_are_refused_with_the_type_and_what_is_allowed(wan):
    policy = delta({"blocks": (4, (1, 2))})
    for target, name in ((nn.Linear(2, 2), "Linear"), (object(), "object"), ("pipe", "str")):
        with pytest.raises(TypeError, match=f"target {name} is not supported: allowed one of our transformers "
                                            "\\(WanModel, HYVideoDiffusionTransformer\\), a diffusers transformer "
                                            "\\(HunyuanVideoTransformer3DModel, WanTransformer3DModel\\)"):
            enable_cache(target, policy)

    class FakePipeline:
        transformer = nn.Linear(2, 2)

    with pytest.raises(TypeError, match="target FakePipeline with transformer Linear is not supported"):
        enable_cache(FakePipeline(), policy)


def test_bad_policies_are_refused(wan):
    twin = wan[1]
    for policy, name in (("delta", "str"), (None, "NoneType"), (nn.Linear(2, 2), "Linear")):
        with pytest.raises(TypeError, match=f"policy {name} is not a cache policy \\(it lacks .*allowed a "
                                            "common_cache.CachePolicy such as DeltaCache or TeaCache"):
            enable_cache(twin, policy)
    assert hooks_of(twin) == 0 and enabled_policy(twin) is None


def test_a_policy_that_does_not_fit_changes_nothing(wan):
    twin = wan[1]
    blocks = twin.blocks
    with pytest.raises(ValueError, match="depth"):
        enable_cache(twin, delta({"blocks": (40, (1, 2))}))  # a 40-block profile on the 4-block model
    with pytest.raises(ValueError, match="double"):
        enable_cache(twin, delta(HY_GROUPS))  # a HunyuanVideo profile on Wan
    assert twin.blocks is blocks and hooks_of(twin) == 0 and enabled_policy(twin) is None


def test_enabling_twice_and_sharing_a_policy_are_refused(wan, hunyuan):
    ours, twin = wan[0], wan[1]
    policy = enable_cache(twin, delta({"blocks": (4, (1, 2))}))
    try:
        with pytest.raises(RuntimeError, match="WanTransformer3DModel already has a cache \\(DeltaCache\\)"):
            enable_cache(twin, delta({"blocks": (4, (1, 2))}))
        with pytest.raises(RuntimeError, match="this DeltaCache already serves a WanTransformer3DModel"):
            enable_cache(ours, policy)
        assert ours.block_cache is None
    finally:
        disable_cache(twin)
    assert disable_cache(twin) is None  # no cache: a no-op


def test_pipeline_and_transformer_are_kept_apart():
    pipe = tiny_wan_pipeline(num_layers=4)
    policy = enable_cache(pipe, delta({"blocks": (4, (1, 2))}))
    with pytest.raises(RuntimeError, match="already has a cache"):
        enable_cache(pipe.transformer, delta({"blocks": (4, (1, 2))}))
    with pytest.raises(ValueError, match="enabled on the WanPipeline, not on this WanTransformer3DModel"):
        disable_cache(pipe.transformer)
    assert disable_cache(pipe) is policy


def test_two_stage_pipelines_are_refused():
    pipe = tiny_wan_pipeline(num_layers=4)
    pipe.transformer_2 = pipe.transformer  # as a Wan2.2 pipeline holds its low-noise expert
    with pytest.raises(ValueError, match="WanPipeline has a transformer_2 .*allowed: pipelines with a single"):
        enable_cache(pipe, delta({"blocks": (4, (1, 2))}))
    assert hooks_of(pipe.transformer) == 0
