"""The HunyuanVideo profiling adapter (attention-backend seam): outputs unchanged, joint text handled as documented,
exact R_attn against a dense recomputation, batched guidance combined like the pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hy_ckpt_dit import make_tiny_dit
from hyvideo.modules import get_nd_rotary_pos_embed
from hyvideo.modules.attention import attention
from hyvideo.profiling import HunyuanProfiling

from common_cache.profiling import HighAttentionRule, ProfilingRecorder, foreground_ratio, pool_to_tokens


def inputs(model, batch=1, valid=6, txt_len=10, frames=3, size=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(batch, txt_len, dtype=torch.long)
    mask[:, :valid] = 1
    cos, sin = get_nd_rotary_pos_embed(model.rope_dim_list, [frames, size // 2, size // 2], theta=256.0)
    x = torch.randn(1, 16, frames, size, size, generator=g).repeat(batch, 1, 1, 1, 1)
    return {"x": x, "t": torch.tensor([600.0] * batch),
            "text_states": torch.randn(batch, txt_len, model.config["text_states_dim"], generator=g),
            "text_mask": mask, "text_states_2": torch.randn(batch, model.config["text_states_dim_2"], generator=g),
            "freqs_cos": cos, "freqs_sin": sin, "guidance": torch.tensor([6016.0] * batch)}


class FixedMask:
    name = "fixed"

    def __init__(self, mask):
        self.mask, self.views = mask, []

    def __call__(self, view):
        self.views.append(view)
        return self.mask


class SpyProfiling(HunyuanProfiling):
    """Keeps the queries and keys of single-stream block 0."""

    captured: dict = {}

    def _record(self, q, k, segments):
        if self.recorder.current_block == ("single", 0):
            self.captured.update(q=q.clone(), k=k.clone(), segments=segments)
        super()._record(q, k, segments)


def dense_image_received(q, k, n_img, valid):
    """Softmax over image + valid text keys, mean over image queries and heads, image keys only."""
    logits = torch.einsum("qhd,khd->hqk", q[0, :n_img].double(), k[0, : n_img + valid].double())
    probs = torch.softmax(logits / q.shape[-1] ** 0.5, dim=-1)
    return probs.mean(dim=(0, 1))[:n_img]


def test_profiling_keeps_outputs_and_scores_image_tokens_of_the_joint_attention():
    model = make_tiny_dit()
    kwargs = inputs(model)
    with torch.no_grad():
        reference = model(**kwargs)["x"]
    mask = torch.zeros(3, 8, 8)
    mask[:, 2:6, 2:6] = 1.0
    recorder = ProfilingRecorder(FixedMask(mask))
    with SpyProfiling(model, recorder), torch.no_grad():
        recorder.begin(1)
        with recorder.step(0, "cond"):
            profiled = model(**kwargs)["x"]
        statistics = recorder.end()
    assert torch.equal(profiled, reference)
    assert model.block_cache is None and not model._forward_hooks and not model._forward_pre_hooks
    assert all(b.attention_kernel is attention for b in [*model.double_blocks, *model.single_blocks])  # undone
    captured = SpyProfiling.captured
    n_img = 3 * 4 * 4
    assert captured["q"].shape[1] == n_img + 10 and captured["segments"].valid_lens == (6,)
    frames = dense_image_received(captured["q"], captured["k"], n_img, 6).float().reshape(3, 16)
    weights = pool_to_tokens(mask, (1, 2, 2)).flatten(1)
    expected = foreground_ratio(HighAttentionRule().high(frames), weights).mean().item()
    assert statistics.heatmap("single")[0, 0] == pytest.approx(expected, abs=1e-6)
    assert np.isfinite(statistics.heatmap("double")[:, 0]).all()


def test_batched_guidance_is_combined_like_the_pipeline():
    model = make_tiny_dit()
    kwargs = inputs(model, batch=2)
    kwargs["text_states"][0] = 0.0  # a different (negative-prompt) condition in the uncond half
    with torch.no_grad():
        velocity = model(**kwargs)["x"]
    provider = FixedMask(torch.ones(3, 8, 8))
    recorder = ProfilingRecorder(provider, groups=("single",))
    with HunyuanProfiling(model, recorder, guidance_scale=3.0), torch.no_grad():
        recorder.begin(1)
        with recorder.step(0, "cond+uncond"):
            model(**kwargs)
        statistics = recorder.end()
    view = provider.views[0]
    assert torch.allclose(view.prediction, velocity[0] + 3.0 * (velocity[1] - velocity[0]), atol=1e-6)
    assert torch.allclose(view.clean_estimate, kwargs["x"][0] - 0.6 * view.prediction, atol=1e-5)
    assert set(statistics.depths) == {"single"}
