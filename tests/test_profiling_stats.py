"""The model-agnostic profiler (common_cache.profiling): statistics against dense references, exact arithmetic of
scores and decisions, masks, statistics round trips, figures and error messages."""

from __future__ import annotations

import itertools
import json
import math
import os

import numpy as np
import pytest
import torch

from common_cache import CacheProfile
from common_cache.profiling import (
    HighAttentionRule,
    MaskVideoProvider,
    PCAMaskProvider,
    ProfileSettings,
    ProfileStatistics,
    ProfilingRecorder,
    SAM2MaskProvider,
    StepView,
    build_profile,
    foreground_lift,
    foreground_ratio,
    mask_iou,
    pixel_to_latent_mask,
    plot_heatmap,
    plot_step_change,
    pool_to_tokens,
    received_attention,
    refresh_steps_from_change,
    schedule_drift,
    split_blocks,
    split_frames,
)


def dense_received(q, k, key_lens, query_lens):
    """Reference: the full softmax matrix per sample and head, column mean over the valid queries."""
    out = torch.zeros(q.shape[0], k.shape[1], dtype=torch.float64)
    for b in range(q.shape[0]):
        nq, nk = int(query_lens[b]), int(key_lens[b])
        logits = torch.einsum("qhd,khd->hqk", q[b, :nq].double(), k[b, :nk].double()) / math.sqrt(q.shape[-1])
        probs = torch.softmax(logits, dim=-1)  # [H, nq, nk]
        out[b, :nk] = probs.mean(dim=(0, 1))
    return out


@pytest.mark.parametrize("query_chunk, key_chunk", [(7, None), (5, 6), (64, 64), (1, 1)])
def test_chunked_received_attention_equals_the_dense_reference(query_chunk, key_chunk):
    q = 2.0 * torch.randn(2, 23, 3, 8)
    k = 2.0 * torch.randn(2, 23, 3, 8)
    key_lens, query_lens = torch.tensor([23, 17]), torch.tensor([20, 17])
    got = received_attention(q, k, key_lens, query_lens, query_chunk=query_chunk, key_chunk=key_chunk)
    want = dense_received(q, k, key_lens, query_lens)
    assert (got.double() - want).abs().max().item() < 1e-6
    assert got[1, 17:].abs().max().item() == 0.0  # padding keys receive nothing
    assert torch.allclose(got.sum(dim=1), torch.ones(2), atol=1e-5)  # a distribution over the valid keys


def test_automatic_key_chunk_bounds_the_tile_and_keeps_the_result():
    q, k = torch.randn(1, 50, 2, 4), torch.randn(1, 50, 2, 4)
    tiled = received_attention(q, k, query_chunk=8, max_tile_elements=2 * 8 * 7)  # forces key chunks of 7
    whole = received_attention(q, k, query_chunk=8)
    assert (tiled - whole).abs().max().item() < 1e-6


def test_received_attention_rejects_bad_input():
    q = torch.randn(1, 4, 2, 8)
    with pytest.raises(ValueError, match="must be \\[B, L, H, D\\]"):
        received_attention(q[0], q[0])
    with pytest.raises(ValueError, match="key_lens=\\[5\\]"):
        received_attention(q, q, key_lens=[5])
    with pytest.raises(ValueError, match="query_chunk=0"):
        received_attention(q, q, query_chunk=0)


def test_split_frames_is_frame_major():
    values = torch.arange(14.0)
    frames = split_frames(values, 3, 4)
    assert frames.shape == (3, 4) and frames[1].tolist() == [4.0, 5.0, 6.0, 7.0]
    with pytest.raises(ValueError, match="cannot hold"):
        split_frames(values, 4, 4)


def test_high_attention_rules_and_their_parsing():
    received = torch.tensor([[1.0, 2.0, 3.0, 10.0]])
    assert HighAttentionRule.parse("mean").high(received).tolist() == [[False, False, False, True]]
    assert HighAttentionRule.parse("top0.5").high(received).tolist() == [[False, False, True, True]]
    std_rule = HighAttentionRule.parse("mean+0.5std")
    assert (std_rule.kind, std_rule.value, std_rule.text()) == ("std", 0.5, "mean+0.5std")
    for bad in ("median", "top2", "mean+xstd"):
        with pytest.raises(ValueError, match="high-attention threshold"):
            HighAttentionRule.parse(bad)


def test_foreground_ratio_and_lift_exact_arithmetic():
    high = torch.tensor([[True, False, True, False], [False, False, False, False]])
    fg = torch.tensor([[1.0, 1.0, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0]])
    ratio = foreground_ratio(high, fg)
    assert ratio[0].item() == pytest.approx(1.5 / 2.5) and math.isnan(ratio[1].item())
    received = torch.tensor([[0.4, 0.1, 0.2, 0.3], [0.25, 0.25, 0.25, 0.25]])
    lift = foreground_lift(received, fg)
    # share on the foreground = (0.4 + 0.1 + 0.1) / 1.0, area = 2.5 / 4
    assert lift[0].item() == pytest.approx(0.6 / 0.625) and math.isnan(lift[1].item())


def test_split_blocks_rules():
    scores = [0.5, 0.2, 0.9, 0.2, 0.4]
    assert split_blocks(scores, cache_k=2) == (1, 3)
    assert split_blocks(scores, cache_k=3) == (1, 3, 4)
    assert split_blocks(scores, tau=0.45) == (1, 3, 4)
    assert split_blocks(scores) == (1, 3, 4)  # below the mean 0.44
    with pytest.raises(ValueError, match="cache_k=5 is not allowed: expected an integer in 1..4"):
        split_blocks(scores, cache_k=5)
    with pytest.raises(ValueError, match="not both"):
        split_blocks(scores, cache_k=1, tau=0.3)
    with pytest.raises(ValueError, match="no block has a score below"):
        split_blocks(scores, tau=0.1)


def brute_force_refresh(curve, warmup, steps, budget):
    best = None
    for rest in itertools.combinations(range(warmup + 1, steps), budget - 1):
        refresh = (warmup, *rest)
        cost = schedule_drift(curve, refresh, warmup, steps)
        if best is None or cost < best[0] - 1e-12:
            best = (cost, refresh)
    return best


@pytest.mark.parametrize("budget", [1, 2, 3, 4])
def test_refresh_schedule_is_the_exact_optimum(budget):
    rng = np.random.default_rng(budget)
    curve = np.concatenate([[np.nan], rng.uniform(0.1, 1.0, 13)])
    steps = refresh_steps_from_change(curve, 2, 14, budget)
    assert steps[0] == 2 and len(steps) == budget
    cost, _ = brute_force_refresh(curve, 2, 14, budget)
    assert schedule_drift(curve, steps, 2, 14) == pytest.approx(cost, abs=1e-12)


def test_refresh_schedule_follows_the_curve():
    flat = refresh_steps_from_change(np.ones(50), 6, 50, 8)
    assert np.diff(flat).max() - np.diff(flat).min() <= 1  # constant change: (near) uniform
    u_shape = np.array([(s - 28) ** 2 / 400 + 0.05 for s in range(50)])
    steps = refresh_steps_from_change(u_shape, 6, 50, 8)
    gaps = np.diff(list(steps) + [50])
    assert gaps[0] < gaps[3] and gaps[-1] < gaps[3]  # dense where the prediction changes fast
    assert refresh_steps_from_change(u_shape, 6, 50, 100) == tuple(range(6, 50))
    with pytest.raises(ValueError, match="refresh budget=0"):
        refresh_steps_from_change(u_shape, 6, 50, 0)
    with pytest.raises(ValueError, match="one per step"):
        refresh_steps_from_change(u_shape[:10], 6, 50, 3)


def moving_square_latent(frames=4, size=16, channels=8, seed=0):
    """A clean latent: a textured background and a distinct square that moves one pixel per frame."""
    generator = torch.Generator().manual_seed(seed)
    latent = 0.3 * torch.randn(channels, frames, size, size, generator=generator)
    colour = torch.linspace(-2, 2, channels)[:, None, None]
    mask = torch.zeros(frames, size, size)
    for t in range(frames):
        latent[:, t, 5 : 10, 4 + t : 9 + t] += colour
        mask[t, 5:10, 4 + t : 9 + t] = 1.0
    return latent, mask


@pytest.mark.parametrize("method", ["kmeans", "otsu"])
def test_pca_provider_finds_a_moving_object(method):
    latent, truth = moving_square_latent()
    view = StepView(3, 10, prediction=torch.randn_like(latent), clean_estimate=latent)
    mask = PCAMaskProvider(source="clean", method=method)(view)
    assert mask.shape == truth.shape and mask_iou(mask, truth) > 0.95
    inverted = PCAMaskProvider(source="clean", method=method)(StepView(3, 10, latent, -latent))
    assert mask_iou(inverted, truth) > 0.95  # the border rule, not the sign, picks the foreground


def test_pca_provider_rejects_unknown_options():
    with pytest.raises(ValueError, match="source='noise'"):
        PCAMaskProvider(source="noise")
    with pytest.raises(ValueError, match="method='sam'"):
        PCAMaskProvider(method="sam")


def test_pool_to_tokens_modes():
    mask = torch.zeros(1, 4, 4)
    mask[0, 0, 0] = 1.0
    mask[0, 2:4, 2:4] = 1.0
    mask[0, 0, 2:4] = 1.0
    assert pool_to_tokens(mask, (1, 2, 2)).tolist() == [[[0.25, 0.5], [0.0, 1.0]]]
    assert pool_to_tokens(mask, (1, 2, 2), "majority").tolist() == [[[0.0, 1.0], [0.0, 1.0]]]
    assert pool_to_tokens(mask, (1, 2, 2), "any").tolist() == [[[1.0, 1.0], [0.0, 1.0]]]
    with pytest.raises(ValueError, match="mask pooling='max'"):
        pool_to_tokens(mask, (1, 2, 2), "max")


def test_pixel_masks_follow_the_causal_vae_frame_groups():
    pixel = torch.zeros(9, 8, 8)
    pixel[0] = 1.0
    pixel[1:3, :4] = 1.0  # half of group 1's frames, top half of the image
    latent = pixel_to_latent_mask(pixel, (3, 2, 2), temporal_stride=4)
    assert latent[0].tolist() == [[1.0, 1.0], [1.0, 1.0]]
    assert latent[1].tolist() == [[0.5, 0.5], [0.0, 0.0]]
    assert latent[2].abs().sum().item() == 0.0
    with pytest.raises(ValueError, match="mask video has 7 frames: expected 3"):
        pixel_to_latent_mask(torch.zeros(7, 8, 8), (3, 2, 2))


def test_mask_video_provider_reads_npy_and_checks_files(tmp_path):
    path = tmp_path / "mask.npy"
    np.save(path, np.ones((5, 16, 16), dtype=bool))
    provider = MaskVideoProvider([str(path)])
    mask = provider(StepView(0, 4, prediction=torch.zeros(16, 2, 4, 4)))
    assert mask.shape == (2, 4, 4) and mask.min().item() == 1.0
    with pytest.raises(ValueError, match="prompt 1 has no mask video"):
        provider(StepView(0, 4, prediction=torch.zeros(16, 2, 4, 4), prompt_index=1))
    with pytest.raises(FileNotFoundError, match="mask video not found"):
        MaskVideoProvider([str(tmp_path / "missing.npy")])


def test_sam2_provider_explains_what_is_missing():
    with pytest.raises(ValueError, match="'sam2' is not installed"):
        SAM2MaskProvider("sam2.pt", "configs/sam2.1/sam2.1_hiera_t.yaml")


def filled_statistics():
    stats = ProfileStatistics(num_steps=4, depths={"blocks": 3})
    for step in range(4):
        for block in range(3):
            stats.add_block("blocks", block, step, {"r_attn": np.array([0.1 * block + 0.01 * step, np.nan]),
                                                    "lift": np.array([1.0 + block, 1.0])})
        if step:
            stats.add_change(step, float(step))
    stats.prompts.append("a prompt")
    return stats


def test_statistics_aggregate_and_round_trip_through_json():
    stats = filled_statistics()
    assert stats.heatmap("blocks")[2, 3] == pytest.approx(0.23)
    assert stats.block_scores("blocks", first_step=2).tolist() == pytest.approx([0.025, 0.125, 0.225])
    assert stats.block_scores("blocks", "lift").tolist() == pytest.approx([1.0, 1.5, 2.0])
    again = ProfileStatistics.from_dict(json.loads(json.dumps(stats.to_dict())))
    assert np.array_equal(again.heatmap("blocks"), stats.heatmap("blocks"))
    assert np.allclose(again.change_curve()[1:], [1, 2, 3]) and math.isnan(again.change_curve()[0])
    with pytest.raises(ValueError, match="statistic 'bogus'"):
        stats.heatmap("blocks", "bogus")
    with pytest.raises(ValueError, match="first_step=4"):
        stats.block_scores("blocks", first_step=4)


def test_build_profile_writes_a_loadable_profile(tmp_path):
    stats = filled_statistics()
    profile = build_profile(stats, ProfileSettings(cache_k=2, warmup_steps=1, refresh_budget=2), {"model": "toy"})
    group = profile.config.groups[0]
    assert group.cached_blocks == (0, 1) and group.warmup_steps == 1
    assert group.refresh_steps(4) == (1, 3)  # the curve grows: the second refresh goes late
    path = profile.save(str(tmp_path / "profile.json"))
    loaded = CacheProfile.load(path)
    assert loaded.metadata["source"] == "profiler" and loaded.metadata["prompts"] == ["a prompt"]
    assert loaded.scores["blocks"] == pytest.approx([0.02, 0.12, 0.22])  # steps >= warm-up (1..3)


def test_figures_are_written_as_png_without_leftovers(tmp_path):
    stats = filled_statistics()
    heat = plot_heatmap(stats.heatmap("blocks"), str(tmp_path / "f_heatmap.png"), cached_blocks=(0,), title="t")
    curve = plot_step_change(stats.change_curve(), str(tmp_path / "f_change.png"), {"profile": (1, 3)}, 1)
    for path in (heat, curve):
        with open(path, "rb") as handle:
            assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    assert sorted(os.listdir(tmp_path)) == ["f_change.png", "f_heatmap.png"]


def test_soft_iou_of_fractional_masks():
    a, b = torch.tensor([1.0, 0.5, 0.0]), torch.tensor([0.5, 0.5, 0.5])
    assert mask_iou(a, b, threshold=None) == pytest.approx((0.5 + 0.5) / (1.0 + 0.5 + 0.5))
    assert mask_iou(a, b) == pytest.approx(2 / 3)  # binarised at 0.5: {0, 1} vs {0, 1, 2}


class ToyModel(torch.nn.Module):
    """Two 'blocks' that report a fixed received-attention vector (4 tokens, 1 frame) when asked."""

    def __init__(self):
        super().__init__()
        self.block_cache = None

    def stream_group_depths(self):
        return {"blocks": 2}

    def forward(self, x):
        from common_cache import run_blocks

        def block(h, index):
            if self.block_cache.current_block is not None:
                self.block_cache.record_attention(torch.tensor([[0.1, 0.2, 0.3, 0.4]]) * (index + 1))
            return h + 1

        x = run_blocks(self.block_cache, "blocks", [lambda h: block(h, 0), lambda h: block(h, 1)], x)
        self.block_cache.record_prediction(x[None, None].expand(2, 1, 2, 2))
        return x


class OnesMask:
    name = "ones"

    def __call__(self, view):
        mask = torch.zeros(1, 2, 2)
        mask[0, 1, 1] = 1.0  # token 3 (the highest attention) is the foreground
        return mask


def test_recorder_records_every_nth_step_and_the_step_change():
    from common_cache import attach_cache

    model = ToyModel()
    recorder = ProfilingRecorder(OnesMask(), patch_size=(1, 1, 1), attention_every=2)
    attach_cache(model, recorder)
    recorder.begin(3)
    x = torch.zeros(2, 2)
    for step in range(3):
        with recorder.step(step, "cond"):
            x = model(x)
    statistics = recorder.end()
    heat = statistics.heatmap("blocks")
    assert heat[:, 0].tolist() == [1.0, 1.0] and np.isnan(heat[:, 1]).all() and heat[:, 2].tolist() == [1.0, 1.0]
    assert statistics.change_curve()[1:].tolist() == [2.0, 2.0]  # the prediction grows by 2 per step
    delta = statistics.heatmap("blocks", "delta_change")  # every block adds 1: its residual never changes
    assert np.isnan(delta[:, 0]).all() and delta[:, 1:].tolist() == [[0.0, 0.0], [0.0, 0.0]]
    assert recorder.stats.computed_calls == 6 and recorder.stats.skipped_calls == 0
    with pytest.raises(RuntimeError, match=r"ProfilingRecorder attached was called outside cache.step\(i, branch\)"):
        model(x)


class ScalingModel(torch.nn.Module):
    """Three blocks h -> (1 + w_j) h (residual w_j h), so a reused residual's error is computable by hand; block 1
    asks whether it is being recorded (it must not be while the recorder replays the stack)."""

    WEIGHTS = (0.5, -0.25, 2.0)

    def __init__(self):
        super().__init__()
        self.block_cache = None
        self.recorded_calls = 0

    def stream_group_depths(self):
        return {"blocks": 3}

    def forward(self, x):
        from common_cache import run_blocks

        def block(h, w):
            if self.block_cache.current_block is not None:
                self.recorded_calls += 1
            return h + w * h

        blocks = [lambda h, w=w: block(h, w) for w in self.WEIGHTS]
        x = run_blocks(self.block_cache, "blocks", blocks, x)
        self.block_cache.record_prediction(x[None, None].expand(2, 1, 2, 2))
        return x


def test_reuse_error_is_the_stack_error_of_caching_one_block():
    from common_cache import attach_cache

    model = ScalingModel()
    recorder = ProfilingRecorder(OnesMask(), patch_size=(1, 1, 1), sketch_width=0, reuse_interval=3, reuse_start=1)
    attach_cache(model, recorder)
    recorder.begin(6)
    inputs = [torch.full((2, 2), float(v)) for v in (7.0, 1.0, 2.0, 4.0, 3.0, 5.0)]
    for step, x in enumerate(inputs):
        with recorder.step(step, "cond"):
            model(x)
    statistics = recorder.end()
    w = ScalingModel.WEIGHTS
    gain = [(1 + w[1]) * (1 + w[2]), 1 + w[2], 1.0]  # what the blocks after b do to an error

    def expected(anchor, step, b):
        before = float(np.prod([1 + v for v in w[:b]]))  # block b's input = before * x
        error = abs(w[b] * before * (anchor - step)) * gain[b]  # |old residual - new residual| through the rest
        contribution = abs(float(np.prod([1 + v for v in w])) - 1) * abs(step)
        return error / contribution

    heat = statistics.heatmap("blocks", "reuse_error")
    # anchors at steps 1 and 4 (start 1, interval 3); measured at 2, 3 (anchor 1) and 5 (anchor 4); nothing else
    assert np.isnan(heat[:, [0, 1, 4]]).all()
    for step, anchor in ((2, 1.0), (3, 1.0), (5, 3.0)):
        value = inputs[step][0, 0].item()
        assert heat[:, step] == pytest.approx([expected(anchor, value, b) for b in range(3)], rel=1e-6)
    assert recorder.stats.computed_calls == 18  # the replays are not counted as model calls
    assert model.recorded_calls == 18  # and the model never sees them as recorded blocks
    thin = ProfilingRecorder(OnesMask(), patch_size=(1, 1, 1), sketch_width=0, reuse_interval=3, reuse_every=2)
    thin.bind({"blocks": 3})
    assert [thin._reuse_role("blocks", s) for s in range(7)] == ["anchor", None, "measure", "anchor", None,
                                                                 "measure", "anchor"]
    with pytest.raises(ValueError, match="reuse_every=0 is not allowed"):
        ProfilingRecorder(OnesMask(), reuse_interval=3, reuse_every=0)
