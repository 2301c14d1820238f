"""The Wan2.1 profiling adapter and scripts/profile_wan.py.

* The profiler's kernel wrapper is a pure observer: with the default kernel the self-attention is bit-identical to
  the formulation without the seam, and a model profiled inside ``WanProfiling`` gives bit-identical outputs and is
  restored after (the original kernel, no hooks).
* Recorded R_attn equals a dense recomputation from the exact queries/keys the kernel got.
* The CLI profiles a random tiny checkpoint folder (official layout, written here) through the real pipeline and
  writes a profile that the cache accepts, plus the figures; interrupted runs resume; bad input fails clearly.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from scripts_loader import load_script
from wan.configs import WAN_CONFIGS
from wan.modules.attention import attention
from wan.modules.model import rope_apply
from wan.profiling import WanProfiling, classifier_free_guidance
from wan_ckpt_dit import TINY_CONFIG, random_tiny_wan, tiny_inputs, write_random_wan_folder

from common_cache import CacheProfile
from common_cache.profiling import (
    HighAttentionRule,
    ProfilingRecorder,
    foreground_ratio,
    pool_to_tokens,
    received_attention,
    split_frames,
)

TASK = "t2v-tiny"


def self_attention_without_seam(module, x, seq_lens, grid_sizes, freqs):
    """WanSelfAttention.forward as written before the kernel seam existed (one expression, no named q/k)."""
    b, s, n, d = *x.shape[:2], module.num_heads, module.head_dim
    q = module.norm_q(module.q(x)).view(b, s, n, d)
    k = module.norm_k(module.k(x)).view(b, s, n, d)
    v = module.v(x).view(b, s, n, d)
    out = attention(rope_apply(q, grid_sizes, freqs), rope_apply(k, grid_sizes, freqs), v, k_lens=seq_lens,
                    window_size=module.window_size)
    return module.o(out.flatten(2))


def test_self_attention_with_the_default_kernel_is_bit_identical():
    model = random_tiny_wan()
    module = model.blocks[0].self_attn
    assert module.attention_kernel is attention
    x = torch.randn(2, 80, TINY_CONFIG["dim"])
    seq_lens, grid_sizes = torch.tensor([72, 24]), torch.tensor([[3, 4, 6], [2, 3, 4]])
    freqs = model.rope_table(x.device)
    assert torch.equal(module(x, seq_lens, grid_sizes, freqs), self_attention_without_seam(module, x, seq_lens,
                                                                                          grid_sizes, freqs))


class FixedMask:
    """A mask provider returning one fixed latent mask (so R_attn can be recomputed by hand)."""

    name = "fixed"

    def __init__(self, mask):
        self.mask = mask

    def __call__(self, view):
        return self.mask


def test_profiling_observes_without_changing_outputs_and_records_exact_ratios():
    model = random_tiny_wan()
    latents, contexts, seq_len = tiny_inputs()
    latent, context = latents[0], contexts[0]  # [16, 3, 8, 12] -> grid 3 x 4 x 6
    t = torch.tensor([700])
    with torch.no_grad():
        reference = model([latent], t=t, context=[context], seq_len=seq_len)[0]
    mask = torch.zeros(3, 8, 12)
    mask[:, 2:6, 4:10] = 1.0
    recorder = ProfilingRecorder(FixedMask(mask), rule=HighAttentionRule.parse("mean"))
    captured = {}
    with WanProfiling(model, recorder) as profiling, torch.no_grad():
        observing = model.blocks[1].self_attn.attention_kernel  # the profiler's wrapper of the kernel

        def spy(q, k, v, k_lens=None, **kwargs):
            captured.update(q=q.clone(), k=k.clone(), seq_lens=k_lens.clone())
            return observing(q, k, v, k_lens=k_lens, **kwargs)

        model.blocks[1].self_attn.attention_kernel = spy
        recorder.begin(1)
        with recorder.step(0, "cond"):
            profiled = model([latent], t=t, context=[context], seq_len=seq_len)[0]
        statistics = recorder.end()
        assert profiling.model is model
    assert torch.equal(profiled, reference)
    assert model.block_cache is None and not model._forward_hooks
    assert all(block.self_attn.attention_kernel is attention for block in model.blocks)  # the seams undone
    with torch.no_grad():
        assert torch.equal(model([latent], t=t, context=[context], seq_len=seq_len)[0], reference)
    received = received_attention(captured["q"], captured["k"], captured["seq_lens"], captured["seq_lens"],
                                  query_chunk=10**6)
    frames = split_frames(received[0], 3, 24)
    weights = pool_to_tokens(mask, (1, 2, 2)).flatten(1)
    expected = foreground_ratio(HighAttentionRule.parse("mean").high(frames), weights).mean().item()
    assert statistics.heatmap("blocks")[1, 0] == pytest.approx(expected, abs=1e-6)
    assert np.isfinite(statistics.heatmap("blocks")[:, 0]).all()


def test_guidance_combination_matches_the_sampler():
    cond, uncond = torch.randn(2, 3), torch.randn(2, 3)
    guided, clean = classifier_free_guidance(5.0)({"cond": (cond, cond + 1), "uncond": (uncond, uncond + 1)})
    assert torch.equal(guided, uncond + 5.0 * (cond - uncond))
    assert torch.allclose(clean, guided + 1)


# ---------------------------------------------------------------------------------------------------------------
# The command line on a random checkpoint folder


def load_cli():
    return load_script("scripts/profile_wan.py")


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory) -> str:
    """Random weights of the t2v-tiny architecture in the official layout (small: a smooth velocity field)."""
    return write_random_wan_folder(str(tmp_path_factory.mktemp("Wan2.1-T2V-tiny-random")), TASK)


def cli_args(ckpt_dir: str, out: str, *extra: str) -> list[str]:
    return ["--task", TASK, "--ckpt_dir", ckpt_dir, "--prompt", "a red circle moves up", "--prompt",
            "a blue square bounces", "--sample_steps", "8", "--warmup", "2", "--interval", "3", "--out", out, *extra]


def test_cli_writes_a_profile_the_cache_accepts_and_figures(ckpt_dir, tmp_path):
    out = str(tmp_path / "tiny.json")
    assert load_cli().main(cli_args(ckpt_dir, out, "--cache_k", "7", "--refresh_budget", "auto")) == 0
    profile = CacheProfile.load(out)
    profile.config.check_depths({"blocks": WAN_CONFIGS[TASK].num_layers})
    group = profile.config.groups[0]
    assert len(group.cached_blocks) == 7 and group.warmup_steps == 2
    assert len(group.refresh_steps(8)) == 2  # auto: as many as the uniform interval 3 from step 2 (2, 5)
    meta = profile.metadata
    assert meta["source"] == "profiler" and meta["prompts"] == ["a red circle moves up", "a blue square bounces"]
    assert meta["steps"] == 8 and meta["command"].startswith("python scripts/profile_wan.py --task t2v-tiny")
    assert all(isinstance(s, float) for s in profile.scores["blocks"])
    assert sorted(os.listdir(tmp_path)) == ["tiny.json", "tiny_heatmap.png", "tiny_step_change.png"]


def test_cli_resumes_from_finished_prompts_and_refuses_other_settings(ckpt_dir, tmp_path):
    cli = load_cli()
    out = str(tmp_path / "tiny.json")
    args = cli.parse_args(cli_args(ckpt_dir, out, "--resume"))
    cli.validate(args)
    one_prompt = cli.ProfileStatistics(8, {"blocks": WAN_CONFIGS[TASK].num_layers})
    one_prompt.prompts.append(args.prompts[0])
    cli.write_json_atomic({"run": cli.run_key(args), "statistics": one_prompt.to_dict()}, out + ".partial.json")
    assert cli.main(cli_args(ckpt_dir, out, "--resume")) == 0
    profile = CacheProfile.load(out)
    assert profile.metadata["prompts"] == args.prompts and not os.path.exists(out + ".partial.json")
    # prompt 0 was taken from the partial file (empty statistics), so only prompt 1 contributed records
    cli.write_json_atomic({"run": {**cli.run_key(args), "base_seed": 9}, "statistics": one_prompt.to_dict()},
                          out + ".partial.json")
    assert cli.main(cli_args(ckpt_dir, out, "--resume")) == 2


@pytest.mark.parametrize("extra, message", [
    (["--cache_k", "12"], "--cache_k 12 is not allowed: expected 1..11"),
    (["--mask_provider", "sam2"], "needs --sam2_checkpoint"),
    (["--mask_provider", "video", "--mask_videos", "a.npy"], "has 1 files for 2 prompts"),
    (["--threshold", "median"], "high-attention threshold 'median'"),
    (["--refresh_budget", "x"], "--refresh_budget x is not allowed"),
    (["--warmup", "8"], "--warmup 8 is not allowed: expected 0..7"),
])
def test_cli_rejects_bad_input_before_loading(ckpt_dir, tmp_path, caplog, extra, message):
    out = str(tmp_path / "tiny.json")
    assert load_cli().main(cli_args(ckpt_dir, out, *extra)) == 2
    assert message in caplog.text
    assert os.listdir(tmp_path) == []


def test_an_interrupt_keeps_whole_prompts_and_writes_no_profile(ckpt_dir, tmp_path, monkeypatch):
    """Ctrl-C right after the first prompt was saved: the partial file holds that prompt, no profile exists."""
    cli = load_cli()
    out = str(tmp_path / "tiny.json")
    argv = cli_args(ckpt_dir, out)
    args = cli.parse_args(argv)
    cli.validate(args)
    real_write = cli.write_json_atomic

    def write_then_interrupt(data, path):
        real_write(data, path)
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "write_json_atomic", write_then_interrupt)
    assert cli.run(args, argv) == 130
    with open(out + ".partial.json") as handle:
        data = json.load(handle)
    assert data["statistics"]["prompts"] == [args.prompts[0]] and not os.path.exists(out)
    assert sorted(os.listdir(tmp_path)) == ["tiny.json.partial.json"]
