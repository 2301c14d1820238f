"""The profiler on diffusers Wan: the same statistics as on our WanModel with the same weights, a profile built from
a WanPipeline run, and a transformer left exactly as before."""

import numpy as np
import pytest
import torch
from diffusers_twins import (
    HY_TEXT_LEN,
    WAN_TEXT_LEN,
    hunyuan_inputs,
    hunyuan_pair,
    hunyuan_step,
    tiny_hunyuan_pipeline,
    tiny_wan_pipeline,
    wan_inputs,
    wan_pair,
    wan_step,
)
from hyvideo.profiling import HunyuanProfiling
from wan.profiling import WanProfiling, classifier_free_guidance
from wan_ckpt_dit import TINY_CONFIG

from common_cache import (
    CacheConfig,
    DeltaCache,
    StreamGroupConfig,
    UniformSchedule,
    disable_cache,
    enable_cache,
)
from common_cache.adapters.profiling import DiffusersProfiling, profile_pipeline
from common_cache.profiling import (
    STATISTICS,
    PCAMaskProvider,
    ProfileSettings,
    ProfilingRecorder,
    build_profile,
)

pytestmark = pytest.mark.usefixtures("one_thread")
TIMESTEPS = (999.0, 800.0, 600.0, 400.0, 200.0, 100.0)
GUIDE = 5.0


class CapturingRecorder(ProfilingRecorder):
    """Also keeps every received-attention map it is given (the scores are ratios: they hide a uniform error)."""

    def __init__(self):
        super().__init__(PCAMaskProvider(), combine=classifier_free_guidance(GUIDE), reuse_interval=2, reuse_start=1)
        self.received = []

    def record_attention(self, received):
        self.received.append(received.clone())
        super().record_attention(received)


def recorder() -> CapturingRecorder:
    return CapturingRecorder()


def assert_same_attention(got: CapturingRecorder, expected: CapturingRecorder) -> None:
    assert len(got.received) == len(expected.received) > 0
    for a, b in zip(got.received, expected.received):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def sample(model, recorder_, latent, texts):
    """A guided Euler loop over TIMESTEPS with the recorder driven by hand (cond, then uncond, per step)."""
    recorder_.begin(len(TIMESTEPS))
    for i, t in enumerate(TIMESTEPS):
        out = {}
        for branch in ("cond", "uncond"):
            with recorder_.step(i, branch):
                out[branch] = wan_step(model, latent, t, texts[branch])
        guided = out["uncond"] + GUIDE * (out["cond"] - out["uncond"])
        next_t = TIMESTEPS[i + 1] if i + 1 < len(TIMESTEPS) else 0.0
        latent = latent + (next_t - t) / 1000.0 * guided
    return recorder_.end()


def test_statistics_equal_our_models():
    ours, twin = wan_pair(num_layers=4)
    latent, texts = wan_inputs()
    ours_recorder, twin_recorder = recorder(), recorder()
    with WanProfiling(ours, ours_recorder, query_chunk=8):
        expected = sample(ours, ours_recorder, latent, texts)
    with DiffusersProfiling(twin, twin_recorder, query_chunk=8):
        got = sample(twin, twin_recorder, latent, texts)
    assert_same_attention(twin_recorder, ours_recorder)
    compared = 0
    for stat in STATISTICS:
        for group in ("blocks",):
            assert np.array_equal(got.counts[stat][group], expected.counts[stat][group]), stat
            if expected.counts[stat][group].sum():
                np.testing.assert_allclose(got.sums[stat][group], expected.sums[stat][group], rtol=1e-4, atol=1e-6)
                compared += 1
    assert compared == len(STATISTICS)  # attention, lift, delta change and reuse error were all recorded
    np.testing.assert_allclose(got.change_sum, expected.change_sum, rtol=1e-4)


def test_profiling_leaves_the_transformer_as_before():
    _, twin = wan_pair(num_layers=2)
    latent, texts = wan_inputs()
    processors = [block.attn1.processor for block in twin.blocks]
    before = wan_step(twin, latent, 500.0, texts["cond"])
    with DiffusersProfiling(twin, recorder()):
        # (while a cache is enabled, iterating the block list yields one stack call: index it instead)
        assert all(twin.blocks[i].attn1.processor is not p for i, p in enumerate(processors))
    assert [block.attn1.processor for block in twin.blocks] == processors
    assert not twin._forward_hooks and not twin._forward_pre_hooks
    assert torch.equal(wan_step(twin, latent, 500.0, texts["cond"]), before)


def test_a_profile_from_a_wan_pipeline_runs_on_it():
    pipe = tiny_wan_pipeline(num_layers=12)
    steps = 8

    def call(pipeline, prompt, seed):
        cond, uncond = prompt
        return pipeline(prompt_embeds=cond, negative_prompt_embeds=uncond, height=64, width=64, num_frames=5,
                        num_inference_steps=steps, guidance_scale=GUIDE, output_type="latent",
                        generator=torch.Generator().manual_seed(seed)).frames

    g = torch.Generator().manual_seed(3)
    prompts = [tuple(torch.randn(1, WAN_TEXT_LEN, TINY_CONFIG["text_dim"], generator=g) for _ in range(2))
               for _ in range(2)]
    statistics = profile_pipeline(pipe, recorder(), prompts, call, base_seed=10)
    assert statistics.num_steps == steps and statistics.prompts == ["prompt 0", "prompt 1"]
    assert statistics.counts["r_attn"]["blocks"].shape == (12, steps)
    assert (statistics.counts["r_attn"]["blocks"] == 2 * 2).all()  # 2 prompts x 2 branches on every block and step
    profile = build_profile(statistics, ProfileSettings(cache_k=6, warmup_steps=2, interval=2), {"model": "tiny"})
    (group,) = profile.config.groups
    assert group.depth == 12 and len(group.cached_blocks) == 6

    reference = call(pipe, prompts[0], 0)
    cache = enable_cache(pipe, DeltaCache(profile.config))
    call(pipe, prompts[0], 0)
    disable_cache(pipe)
    # 8 steps x 2 branches x 12 blocks; the 6 cached blocks run on warm-up steps 0, 1 and refresh steps 2, 4, 6
    assert cache.stats.total_calls == 192 and cache.stats.computed_calls == 192 - 6 * 2 * 3
    assert torch.equal(call(pipe, prompts[0], 0), reference)


def test_a_hunyuan_pipeline_profiles_both_stream_groups():
    pipe = tiny_hunyuan_pipeline(double=2, single=3)

    def call(pipeline, prompt, seed):
        return pipeline(prompt_embeds=prompt[0], pooled_prompt_embeds=prompt[1],
                        prompt_attention_mask=torch.ones(1, HY_TEXT_LEN, dtype=torch.long), height=64, width=64,
                        num_frames=5, num_inference_steps=4, output_type="latent",
                        generator=torch.Generator().manual_seed(seed)).frames

    g = torch.Generator().manual_seed(4)
    prompt = (torch.randn(1, HY_TEXT_LEN, 32, generator=g), torch.randn(1, 16, generator=g))
    # The guidance-distilled pipeline runs one branch: the recorder takes its prediction as it is.
    statistics = profile_pipeline(pipe, ProfilingRecorder(PCAMaskProvider()), [prompt], call)
    assert statistics.depths == {"double": 2, "single": 3}
    assert (statistics.counts["r_attn"]["double"] == 1).all() and (statistics.counts["r_attn"]["single"] == 1).all()
    assert np.isfinite(statistics.change_sum[1:]).all() and statistics.change_count[1:].tolist() == [1, 1, 1]


def test_unsupported_targets_and_cached_models_are_refused():
    with pytest.raises(TypeError, match="int is not supported: allowed a diffusers WanTransformer3DModel or "
                                        "HunyuanVideoTransformer3DModel"):
        DiffusersProfiling(3, recorder())
    _, twin = wan_pair(num_layers=2)
    enable_cache(twin, DeltaCache(CacheConfig((StreamGroupConfig("blocks", 2, (1,), 1, UniformSchedule(2)),))))
    with pytest.raises(ValueError, match="already has a cache enabled: profile the uncached model"), \
            DiffusersProfiling(twin, recorder()):
        pass
    disable_cache(twin)


def hunyuan_sample(model, recorder_, latent, texts, rope):
    recorder_.begin(len(TIMESTEPS))
    for i, t in enumerate(TIMESTEPS):
        out = {}
        for branch in ("cond", "uncond"):
            with recorder_.step(i, branch):
                out[branch] = hunyuan_step(model, latent, t, texts[branch], rope)
        guided = out["uncond"] + GUIDE * (out["cond"] - out["uncond"])
        next_t = TIMESTEPS[i + 1] if i + 1 < len(TIMESTEPS) else 0.0
        latent = latent + (next_t - t) / 1000.0 * guided
    return recorder_.end()


@pytest.mark.parametrize("padded", [False, True])
def test_hunyuan_statistics_equal_our_models(padded):
    ours, twin = hunyuan_pair(double=2, single=2)
    latent, texts, rope = hunyuan_inputs(ours)
    statistics = STATISTICS
    if padded:  # two padded text tokens in the uncond branch: their keys must take no attention
        texts["uncond"][1][:, 4:] = 0
        # The padded tokens' own states differ between the implementations (nothing reads them), and the residual
        # statistics include the text stream: only the attention statistics are comparable then.
        statistics = ("r_attn", "lift")
    ours_recorder, twin_recorder = recorder(), recorder()
    with HunyuanProfiling(ours, ours_recorder, query_chunk=8):
        expected = hunyuan_sample(ours, ours_recorder, latent, texts, rope)
    with DiffusersProfiling(twin, twin_recorder, query_chunk=8):
        got = hunyuan_sample(twin, twin_recorder, latent, texts, rope)
    assert_same_attention(twin_recorder, ours_recorder)
    for stat in statistics:
        for group in ("double", "single"):
            assert np.array_equal(got.counts[stat][group], expected.counts[stat][group]), (stat, group)
            assert expected.counts[stat][group].sum() > 0, (stat, group)
            np.testing.assert_allclose(got.sums[stat][group], expected.sums[stat][group], rtol=1e-4, atol=1e-6,
                                       err_msg=f"{stat} {group}")
    np.testing.assert_allclose(got.change_sum, expected.change_sum, rtol=1e-4)
