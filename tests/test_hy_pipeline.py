"""HunyuanVideo pipeline pieces in-process: the built-in cache profile's arithmetic on a 20 + 40 block DiT, real CFG
as one batched forward, the embedded guidance value, per-video noise, CPU-offload hooks, and the video writer."""

from __future__ import annotations

import json
import os
from datetime import datetime

import pytest
import torch
from hy_ckpt_dit import make_tiny_dit, write_dit_checkpoint
from hy_ckpt_text import write_text_encoders
from hy_ckpt_vae import tiny_vae_config, write_vae_checkpoint

from common_cache import CacheConfig, DeltaCache, StreamGroupConfig, UniformSchedule, attach_cache, detach_cache
from hyvideo.cache_profiles import builtin_profile
from hyvideo.config import parse_args
from profilingdit.timing import GenerationReport
from hyvideo.diffusion.pipelines import HunyuanVideoPipeline, TextConditions
from hyvideo.diffusion.schedulers import FlowMatchDiscreteScheduler
from hyvideo.inference import HunyuanVideoSampler, _offload
from hyvideo.modules.posemb_layers import get_rotary_pos_embed
from hyvideo.utils import file_utils

pytestmark = pytest.mark.usefixtures("one_thread")


def text_conditions(batch: int, valid: tuple[int, ...], seed: int = 0, length: int = 6) -> TextConditions:
    gen = torch.Generator().manual_seed(seed)
    mask = torch.zeros(batch, length, dtype=torch.long)
    for b, n in enumerate(valid):
        mask[b, :n] = 1
    return TextConditions(torch.randn(batch, length, 32, generator=gen), mask, torch.randn(batch, 16, generator=gen))


def pipeline_for(model, **kwargs) -> HunyuanVideoPipeline:
    return HunyuanVideoPipeline(model, FlowMatchDiscreteScheduler(shift=7.0, reverse=True), **kwargs)


def rope(model, frames: int = 5, height: int = 32, width: int = 32):
    return get_rotary_pos_embed(frames, height, width, model.rope_dim_list, model.patch_size)


def test_builtin_profile_gives_the_papers_1_84x_on_the_official_depths():
    model = make_tiny_dit(std=0.02, mm_double_blocks_depth=20, mm_single_blocks_depth=40)
    profile = builtin_profile("HYVideo-T/2-cfgdistill")
    attach_cache(model, DeltaCache(profile.config))
    pipeline = pipeline_for(model)
    latents = torch.randn(1, 16, 1, 2, 2)
    report = GenerationReport()
    pipeline.denoise(latents, text_conditions(1, (4,)), rope(model, 1, 16, 16), 50, embedded_guidance_scale=6.0,
                     report=report, progress=False)
    stats = model.block_cache.stats
    assert (stats.total_calls, stats.computed_calls) == (3000, 1632)  # method.md 3.7
    assert round(stats.ideal_speedup, 2) == 1.84
    # Steps with no skipped call: the warm-up and the steps where both groups refresh (6, 18, 42, 48).
    assert report.full_steps == [0, 1, 2, 3, 4, 5, 6, 18, 42, 48]
    assert stats.branches == ["cond"]


def test_cfg_is_one_batched_forward_equal_to_two_separate_ones():
    model = make_tiny_dit(std=0.05)
    text, uncond = text_conditions(1, (4,), seed=1), text_conditions(1, (2,), seed=2)
    freqs = rope(model)
    latents = torch.randn(1, 16, 2, 4, 4)
    pipeline = pipeline_for(model)
    out = pipeline.denoise(latents, text, freqs, 4, 3.0, uncond, embedded_guidance_scale=6.0, progress=False)
    # Reference: two forwards per step, combined as upstream (uncond + s * (cond - uncond)).
    scheduler = FlowMatchDiscreteScheduler(shift=7.0, reverse=True)
    scheduler.set_timesteps(4)
    x, g = latents, torch.tensor([6000.0])
    with torch.no_grad():
        for t in scheduler.timesteps:
            v = [model(x, t[None], c.states, c.mask, c.pooled, *freqs, g, return_dict=False) for c in (uncond, text)]
            x = scheduler.step(v[0] + 3.0 * (v[1] - v[0]), t, x, return_dict=False)[0]
    print("CFG batched vs separate max abs diff", (out - x).abs().max().item())
    assert torch.allclose(out, x, atol=1e-5, rtol=0)
    # With a cache the batched forward is one branch whose deltas hold both halves.
    # Single-stream block 1 cached, warm-up 1, refresh on 1 and 3, reuse on step 2.
    attach_cache(model, DeltaCache(CacheConfig((StreamGroupConfig("single", 2, (1,), 1, UniformSchedule(2)),))))
    pipeline.denoise(latents, text, freqs, 4, 3.0, uncond, embedded_guidance_scale=6.0, progress=False)
    stats = model.block_cache.stats
    assert stats.branches == ["cond+uncond"] and stats.groups["single"].skipped == [0, 0, 1, 0]
    detach_cache(model)


class SpyTransformer(torch.nn.Module):
    """Records the forward inputs; predicts zero velocity."""

    in_channels, block_cache = 16, None

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x, t, text_states, text_mask, text_states_2, freqs_cos, freqs_sin, guidance, return_dict=True):
        self.calls.append({"x": x, "t": t, "states": text_states, "guidance": guidance})
        return {"x": torch.zeros_like(x)}


@pytest.mark.parametrize("dtype, value", [(torch.bfloat16, 6016.0), (torch.float32, 6000.0)])
def test_embedded_guidance_is_scale_times_1000_in_the_dit_dtype(dtype, value):
    spy = SpyTransformer()
    text, uncond = text_conditions(1, (3,), seed=1), text_conditions(1, (2,), seed=2)
    pipeline_for(spy, dit_dtype=dtype).denoise(torch.randn(1, 16, 1, 2, 2), text, (torch.zeros(1, 4),) * 2, 2,
                                               guidance_scale=2.0, uncond=uncond, embedded_guidance_scale=6.0,
                                               progress=False)
    call = spy.calls[0]
    assert call["guidance"].dtype == dtype and call["guidance"].tolist() == [value, value]
    assert call["t"].tolist() == [1000.0, 1000.0]
    assert torch.equal(call["states"], torch.cat([uncond.states, text.states]))  # cat(uncond, cond) as upstream


def test_each_video_draws_its_noise_from_its_own_generator():
    pipeline = pipeline_for(SpyTransformer())
    shape = pipeline.latent_shape(2, 9, 32, 48)
    assert shape == (2, 16, 3, 4, 6)
    latents = pipeline.prepare_latents(shape, torch.float32, [torch.Generator().manual_seed(s) for s in (5, 6)])
    alone = torch.randn((1, *shape[1:]), generator=torch.Generator().manual_seed(6))
    assert torch.equal(latents[1:], alone)


@pytest.fixture(scope="module")
def sampler(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("ckpts"))
    model = make_tiny_dit(std=0.03)
    transformers = os.path.join(root, "hunyuan-video-t2v-720p", "transformers")
    write_dit_checkpoint(transformers, model.state_dict())
    with open(os.path.join(transformers, "config.json"), "w") as handle:
        json.dump({"rope_dim_list": model.rope_dim_list}, handle)
    write_vae_checkpoint(os.path.join(root, "hunyuan-video-t2v-720p"), config=tiny_vae_config(latent_channels=16))
    write_text_encoders(root, llm_hidden_size=32, clip_hidden_size=16)
    args = parse_args(["--model-base", root, "--dit-config", os.path.join(transformers, "config.json"),
                       "--prompt", "x", "--flow-reverse", "--use-cpu-offload"])
    return HunyuanVideoSampler.from_pretrained(root, args, device="cpu")


def test_sequential_offload_hooks_give_the_same_video(sampler):
    kwargs = dict(prompt="A cat walks on the grass", height=32, width=32, video_length=5, seed=3, infer_steps=2,
                  guidance_scale=2.0, embedded_guidance_scale=6.0, flow_shift=7.0, progress=False)
    plain = sampler.predict(**kwargs)
    pipeline = sampler.pipeline
    _offload([pipeline.text_encoder.model, pipeline.text_encoder_2.model, pipeline.vae], torch.device("cpu"))
    offloaded = sampler.predict(**kwargs)
    assert plain["samples"].shape == (1, 3, 5, 32, 32)
    assert torch.equal(plain["samples"], offloaded["samples"])
    assert plain["seeds"] == [3] and plain["prompts"] == ["A cat walks on the grass"]


def test_predict_checks_the_size_against_the_loaded_model(sampler):
    with pytest.raises(ValueError, match="video size 24x32 .* height a positive multiple of 16"):
        sampler.predict("x", height=24, width=32, video_length=5, infer_steps=1)
    with pytest.raises(ValueError, match="video_length=6 is not allowed: expected 4n\\+1"):
        sampler.predict("x", height=32, width=32, video_length=6, infer_steps=1)


def test_video_name_grid_and_atomic_write(tmp_path, monkeypatch):
    name = file_utils.video_file_name("out", 42, "a/b " + "x" * 120, now=datetime(2025, 1, 2, 3, 4, 5))
    assert name == "out/2025-01-02-03:04:05_seed42_ab " + "x" * 96 + ".mp4"  # prompt[:100], then '/' removed
    unsafe = file_utils.video_file_name("out", 1, 'a "b"\n*?|', now=datetime(2025, 1, 2, 3, 4, 5))
    assert unsafe == "out/2025-01-02-03:04:05_seed1_a _b_____.mp4"  # spaces kept as upstream; the rest made safe
    images = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    grid = file_utils.make_grid(images, nrow=1)
    assert grid.shape == (3, 10, 6) and torch.equal(grid[:, 2:4, 2:4], images[0]) and grid[:, :2].abs().sum() == 0
    assert torch.equal(file_utils.make_grid(images[:1]), images[0])
    frames = file_utils.videos_to_frames(torch.full((1, 3, 2, 4, 4), 0.999))
    assert len(frames) == 2 and frames[0].shape == (4, 4, 3) and frames[0].max() == 254  # truncation

    target = tmp_path / "video.mp4"
    target.write_bytes(b"old")

    def failing_writer(path, frames, **kwargs):
        open(path, "wb").write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(file_utils.imageio, "mimsave", failing_writer)
    with pytest.raises(OSError, match="disk full"):
        file_utils.save_videos_grid(torch.rand(1, 3, 5, 16, 16), str(target))
    assert os.listdir(tmp_path) == ["video.mp4"] and target.read_bytes() == b"old"
