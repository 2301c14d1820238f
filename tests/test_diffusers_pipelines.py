"""enable_cache on whole diffusers pipelines: WanPipeline, WanImageToVideoPipeline and HunyuanVideoPipeline with
tiny random parts run end to end under built-in profiles (with the profiles' block-call counts) and under TeaCache,
with separate state per guidance branch, and are bit-identical again after disable_cache."""

import itertools

import pytest
import torch
from diffusers_twins import (
    HY_TEXT_LEN,
    WAN_TEXT_LEN,
    delta,
    random_image,
    tiny_hunyuan_pipeline,
    tiny_wan_i2v_pipeline,
    tiny_wan_pipeline,
)
from hyvideo.cache_profiles import builtin_profile as hunyuan_profile
from wan.cache_profiles import builtin_profile as wan_profile
from wan_ckpt_dit import TINY_CONFIG

from common_cache import DeltaCache, disable_cache, enable_cache
from common_cache.teacache import UNCALIBRATED, TeaCache, TeaCacheConfig, relative_l1

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 50  # the profiles' step count


def expected_calls(config, num_steps: int, branches: int) -> int:
    """Computed block calls of a generation, from the profile alone: every block on warm-up and refresh steps, the
    uncached blocks on the others (each unit refreshes on its group's schedule here)."""
    total = 0
    for group in config.groups:
        refresh = set(group.refresh_steps(num_steps))
        for step in range(num_steps):
            full = step < group.warmup_steps or step in refresh
            total += group.depth if full else group.depth - len(group.cached_blocks)
    return total * branches


def wan_texts() -> torch.Tensor:
    """Cond and uncond prompt embeddings, [2, 1, WAN_TEXT_LEN, text_dim]."""
    return torch.randn(2, 1, WAN_TEXT_LEN, TINY_CONFIG["text_dim"], generator=torch.Generator().manual_seed(0))


def wan_call(pipe, steps=STEPS, **kwargs):
    text = wan_texts()
    return pipe(prompt_embeds=text[0], negative_prompt_embeds=text[1], height=64, width=64, num_frames=5,
                num_inference_steps=steps, guidance_scale=5.0, output_type="latent",
                generator=torch.Generator().manual_seed(1), **kwargs).frames


@pytest.fixture(scope="module")
def wan_pipe():
    return tiny_wan_pipeline(num_layers=40)


def test_wan_pipeline_runs_the_paper_profile(wan_pipe):
    profile = wan_profile("t2v-14B")
    reference = wan_call(wan_pipe)
    cache = enable_cache(wan_pipe, DeltaCache(profile.config))
    cached = wan_call(wan_pipe)
    assert disable_cache(wan_pipe) is cache

    stats = cache.stats
    assert stats.num_steps == STEPS and stats.branches == ["cond", "uncond"]
    assert stats.total_calls == 2 * STEPS * 40
    assert stats.computed_calls == expected_calls(profile.config, STEPS, branches=2) == 1984
    assert stats.ideal_speedup == pytest.approx(profile.metadata["ideal_speedup_50_steps"], abs=1e-3)  # 2.016x
    assert cache.sigmas == pytest.approx(wan_pipe.scheduler.sigmas[:STEPS].tolist())
    assert 0 < (cached - reference).abs().max() < 0.5 * reference.abs().max()
    assert torch.equal(wan_call(wan_pipe), reference)  # disabled: bit-identical again


def test_every_generation_begins_anew_and_a_scheduler_swap_is_followed(wan_pipe):
    profile = wan_profile("t2v-14B")
    cache = enable_cache(wan_pipe, DeltaCache(profile.config))
    try:
        first = wan_call(wan_pipe)
        assert torch.equal(wan_call(wan_pipe), first)  # no state carried over from the first generation
        wan_pipe.scheduler = type(wan_pipe.scheduler).from_config(wan_pipe.scheduler.config, flow_shift=5.0)
        wan_call(wan_pipe, steps=40)
        assert cache.stats.num_steps == 40 and cache.stats.total_calls == 2 * 40 * 40
    finally:
        disable_cache(wan_pipe)


def test_a_pipeline_without_cache_contexts_gets_a_clear_error(wan_pipe):
    """Two calls of one step outside cache_context would share the branch 'cond': refused, not mixed."""
    pipe = wan_pipe
    enable_cache(pipe, DeltaCache(wan_profile("t2v-14B").config))
    try:
        pipe.scheduler.set_timesteps(STEPS)
        t = pipe.scheduler.timesteps[0].expand(1)
        x, text = torch.randn(1, 16, 2, 8, 8), torch.randn(1, WAN_TEXT_LEN, TINY_CONFIG["text_dim"])
        with torch.no_grad():
            pipe.transformer(x, t, text)
            with pytest.raises(RuntimeError, match="timestep .* on branch 'cond', which is not a step of the "
                                                   "scheduler's timesteps after step 0"):
                pipe.transformer(x, t, text)
    finally:
        disable_cache(pipe)


def hunyuan_call(pipe, steps=STEPS, **kwargs):
    g = torch.Generator().manual_seed(0)
    return pipe(prompt_embeds=torch.randn(1, HY_TEXT_LEN, 32, generator=g),
                pooled_prompt_embeds=torch.randn(1, 16, generator=g),
                prompt_attention_mask=torch.ones(1, HY_TEXT_LEN, dtype=torch.long), height=64, width=64,
                num_frames=5, num_inference_steps=steps, output_type="latent",
                generator=torch.Generator().manual_seed(1), **kwargs).frames


def test_hunyuan_pipeline_runs_the_paper_profile():
    pipe = tiny_hunyuan_pipeline(double=20, single=40)
    profile = hunyuan_profile("HYVideo-T/2-cfgdistill")
    reference = hunyuan_call(pipe)
    cache = enable_cache(pipe, DeltaCache(profile.config))
    cached = hunyuan_call(pipe)
    disable_cache(pipe)

    stats = cache.stats
    assert stats.branches == ["cond"]  # the guidance-distilled model: one forward per step
    assert stats.total_calls == STEPS * 60 == 3000
    assert stats.computed_calls == expected_calls(profile.config, STEPS, branches=1) == 1632
    assert stats.ideal_speedup == pytest.approx(3000 / 1632)  # 1.84x
    assert 0 < (cached - reference).abs().max() < 0.5 * reference.abs().max()
    assert torch.equal(hunyuan_call(pipe), reference)


# ----------------------------------------------------------------------------------------------------------- i2v


def test_wan_i2v_pipeline_runs_a_profile_on_both_branches():
    """WanImageToVideoPipeline (tiny VAE and CLIP, 12-block i2v transformer) under the i2v-tiny profile."""
    pipe = tiny_wan_i2v_pipeline(num_layers=12)
    profile = wan_profile("i2v-tiny")
    call = lambda: wan_call(pipe, image=random_image())
    reference = call()
    cache = enable_cache(pipe, DeltaCache(profile.config))
    cached = call()
    assert disable_cache(pipe) is cache

    stats = cache.stats
    assert stats.num_steps == STEPS and stats.branches == ["cond", "uncond"]
    assert stats.total_calls == 2 * STEPS * 12
    assert stats.computed_calls == expected_calls(profile.config, STEPS, branches=2)
    assert 0 < (cached - reference).abs().max() < 0.5 * reference.abs().max()
    assert torch.equal(call(), reference)  # disabled: bit-identical to the run that never had a cache


# ----------------------------------------------------------------------------------------------------- TeaCache

TEA_STEPS = 20
TEA_THRESHOLD = 1.5  # the uncalibrated distances of the time embedding are ~0.5-1.4 per step here


def expected_teacache_steps(distances: list[float], threshold: float) -> list[int]:
    """The steps TeaCache computes for one branch's indicator distances: the first and last always, the others once
    the accumulated distance since the last computed step reaches the threshold."""
    computed, accumulated = [0], 0.0
    for step in range(1, len(distances) + 1):
        accumulated += distances[step - 1]
        if step == len(distances) or accumulated >= threshold:
            computed.append(step)
            accumulated = 0.0
    return computed


def time_embedding_distances(pipe, steps: int) -> list[float]:
    """Relative L1 between consecutive time embeddings ``e`` of the schedule, computed apart from the cache."""
    pipe.scheduler.set_timesteps(steps)
    text = wan_texts()[0]
    with torch.no_grad():
        e = [pipe.transformer.condition_embedder(t.expand(1), text)[0] for t in pipe.scheduler.timesteps]
    return [relative_l1(current, previous) for previous, current in itertools.pairwise(e)]


def test_teacache_through_a_wan_pipeline():
    """The adapter feeds TeaCache the time embedding; each guidance branch decides on its own accumulator (the
    branches see the same timesteps, so both follow the rule on the same distances: a shared state would give the
    uncond call distance 0 against cond's indicator of the same step); threshold 0 computes every step."""
    pipe = tiny_wan_pipeline(num_layers=4)
    reference = wan_call(pipe, steps=TEA_STEPS)
    distances = time_embedding_distances(pipe, TEA_STEPS)
    expected = expected_teacache_steps(distances, TEA_THRESHOLD)
    assert 2 < len(expected) < TEA_STEPS  # the threshold skips some steps, not all

    cache = enable_cache(pipe, TeaCache(TeaCacheConfig(TEA_THRESHOLD, UNCALIBRATED, "e")))
    cached = wan_call(pipe, steps=TEA_STEPS)
    disable_cache(pipe)
    for branch in ("cond", "uncond"):
        recorded = [r.distance for r in cache.history[branch]]
        assert recorded[0] is None and recorded[1:] == pytest.approx(distances, rel=1e-5)
        assert cache.computed_steps(branch) == expected
    assert cache.stats.branches == ["cond", "uncond"]
    assert cache.stats.computed_calls == 4 * 2 * len(expected)
    assert cache.stats.skipped_calls == 4 * 2 * (TEA_STEPS - len(expected))
    assert 0 < (cached - reference).abs().max() < 0.5 * reference.abs().max()

    exact = enable_cache(pipe, TeaCache(TeaCacheConfig(0.0, UNCALIBRATED, "e")))
    try:
        assert torch.equal(wan_call(pipe, steps=TEA_STEPS), reference)
    finally:
        disable_cache(pipe)
    assert exact.computed_steps("cond") == exact.computed_steps("uncond") == list(range(TEA_STEPS))
    assert exact.stats.skipped_calls == 0
    assert torch.equal(wan_call(pipe, steps=TEA_STEPS), reference)


# ---------------------------------------------------------------------------------------- HunyuanVideo true CFG

CFG_STEPS = 12
HY_CFG_GROUPS = {"double": (3, (1, 2)), "single": (3, (0, 1))}


def test_hunyuan_true_cfg_keeps_a_state_per_branch():
    """true_cfg_scale > 1 with negative embeddings adds an uncond forward per step: twice the block calls, and the
    cond predictions are those of a cond-only run. The latents are pinned to a fixed sequence (callback), so both
    runs feed the cond branch the same inputs; uncond state leaking into cond would change cond's reused steps."""
    pipe = tiny_hunyuan_pipeline(double=3, single=3)
    g = torch.Generator().manual_seed(2)
    pinned = [torch.randn(1, 16, 2, 8, 8, generator=g) * (1 - 0.05 * i) for i in range(CFG_STEPS + 1)]
    negative = {"negative_prompt_embeds": torch.randn(1, HY_TEXT_LEN, 32, generator=g),
                "negative_pooled_prompt_embeds": torch.randn(1, 16, generator=g),
                "negative_prompt_attention_mask": torch.ones(1, HY_TEXT_LEN, dtype=torch.long)}
    config = delta(HY_CFG_GROUPS).config

    def predictions(**kwargs):
        """(cache, the transformer's predictions in call order)."""
        outputs = []
        cache = enable_cache(pipe, DeltaCache(config))
        handle = pipe.transformer.register_forward_hook(lambda m, a, out: outputs.append(out[0]))
        try:
            hunyuan_call(pipe, steps=CFG_STEPS, latents=pinned[0],
                         callback_on_step_end=lambda p, i, t, kw: {"latents": pinned[i + 1]}, **kwargs)
        finally:
            handle.remove()
            disable_cache(pipe)
        return cache, outputs

    alone, cond_only = predictions()
    both, calls = predictions(true_cfg_scale=4.0, **negative)
    assert alone.stats.branches == ["cond"] and both.stats.branches == ["cond", "uncond"]
    assert alone.stats.computed_calls == expected_calls(config, CFG_STEPS, branches=1) < CFG_STEPS * 6
    assert both.stats.computed_calls == expected_calls(config, CFG_STEPS, branches=2) == 2 * alone.stats.computed_calls
    assert both.stats.total_calls == 2 * CFG_STEPS * 6
    assert len(calls) == 2 * CFG_STEPS
    assert torch.equal(torch.stack(calls[0::2]), torch.stack(cond_only))
    assert (calls[1] - calls[0]).abs().max() > 0  # the uncond forward really ran on the negative prompt
