"""TeaCache on HunyuanVideo: the indicator the DiT hands over, and sample_video.py's --teacache-thresh end to end.

The end-to-end runs use the tiny official-layout tree of test_hy_sample_video.py (DiT 3 double + 6 single blocks,
8 steps), built by its fixture. With TeaCache's first and last steps forced, a threshold no accumulated distance
reaches computes steps 0 and 7 only; threshold 0 computes every step (the published polynomial is positive for
every real distance) and must give the uncached video bit for bit.
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest
import torch
from hy_ckpt_dit import make_tiny_dit
from test_hy_sample_video import (  # noqa: F401 (ckpts, full_video: fixtures)
    DOUBLE,
    SINGLE,
    STEPS,
    ckpts,
    cli_args,
    full_video,
    read_frames,
    run_cli,
    run_main,
    videos_in,
)

from common_cache import attach_cache, call_block
from common_cache.teacache import PUBLISHED, TeaCache, hunyuan_teacache_config
from hyvideo.modules.posemb_layers import get_nd_rotary_pos_embed

FORCED_FIRST, FORCED_LAST = 1, 1  # TeaCache4HunyuanVideo: the first and the last step always compute
FORCED_STEPS = list(range(FORCED_FIRST)) + list(range(STEPS - FORCED_LAST, STEPS))  # [0, 7]


class SignalCapture:
    """A stand-in cache that keeps the signals the model hands to run_blocks and runs every block."""

    def __init__(self):
        self.signals = {}

    def receive_signals(self, group, signals):
        self.signals[group] = dict(signals)

    def run(self, group, blocks, states, kwargs):
        for block in blocks:
            states = call_block(block, states, kwargs)
        return states


def dit_inputs(model) -> dict:
    g = torch.Generator().manual_seed(1)
    cos, sin = get_nd_rotary_pos_embed(model.rope_dim_list, [1, 2, 3], theta=256.0)
    return {"x": torch.randn(1, 16, 1, 4, 6, generator=g), "t": torch.tensor([900.0]),
            "text_states": torch.randn(1, 5, 32, generator=g),
            "text_mask": torch.tensor([[1, 1, 1, 0, 0]]), "text_states_2": torch.randn(1, 16, generator=g),
            "freqs_cos": cos, "freqs_sin": sin, "guidance": torch.tensor([6016.0])}


def test_indicator_is_the_modulated_input_of_the_first_double_block_exactly():
    model = make_tiny_dit(seed=3, std=0.1, mm_double_blocks_depth=2, mm_single_blocks_depth=2)
    inputs = dit_inputs(model)
    capture = SignalCapture()
    model.block_cache = capture  # a plain attribute: the signal channel needs no bind()
    with torch.no_grad():
        model(**inputs, return_dict=False)
        assert list(capture.signals) == ["double"]  # handed to the first stack only
        handed = capture.signals["double"]
        assert list(handed) == [hunyuan_teacache_config(0.1).indicator] == ["modulated_input"]
        indicator = handed["modulated_input"]()  # a callable: evaluated only by a cache that asks for it
        # By hand from the first double block's own modules: LayerNorm, then shift1/scale1 of its img_mod.
        block = model.double_blocks[0]
        vec = model.embed_conditions(inputs["t"], inputs["text_states_2"], inputs["guidance"])  # [1, C]
        img = model.embed_image(inputs["x"])  # [1, 6, C]: the image tokens entering the first double block
        shift1, scale1 = block.img_mod.linear(torch.nn.functional.silu(vec)).chunk(6, dim=-1)[:2]
        expected = block.img_norm1(img) * (1 + scale1[:, None, :]) + shift1[:, None, :]  # [1, 6, C]
    assert indicator.shape == (1, 6, 64)
    assert torch.equal(indicator, expected)
    # TeaCache keeps exactly this tensor as the branch's previous indicator.
    cache = TeaCache(hunyuan_teacache_config(0.1))
    attach_cache(model, cache)
    cache.begin(1)
    with torch.no_grad(), cache.step(0, "cond"):
        model(**inputs, return_dict=False)
    assert torch.equal(cache._states["cond"].previous, expected)


def test_published_hunyuan_settings():
    config = hunyuan_teacache_config(0.15)
    assert config.coefficients == (733.226126, -401.131952, 67.5869174, -3.14987800, 0.0961237896)
    assert (config.forced_first, config.forced_last) == (FORCED_FIRST, FORCED_LAST)
    assert "TeaCache4HunyuanVideo" in config.source and PUBLISHED["hunyuanvideo-t2v"].indicator == "modulated_input"
    # No real root: poly(d) > 0 for every distance, so threshold 0 computes every step.
    assert np.all(np.abs(np.roots(config.coefficients).imag) > 0) and config.rescale(0.0) > 0


# ---------------------------------------------------------------------------------------------------------------
# sample_video.py end to end. The bit-exact comparison runs as a subprocess like the uncached video it is compared
# with (same interpreter settings); the others call sample_video.main in-process to save interpreter starts.


def teacache_argv(ckpts: str, folder, threshold: str, *extra: str) -> list[str]:
    return cli_args(ckpts, str(folder / "results"), "--teacache-thresh", threshold, "--cache-stats",
                    str(folder / "stats.json"), *extra)


def outputs(folder) -> tuple[dict, np.ndarray]:
    """The statistics JSON and the frames of the one video a run wrote into ``folder``."""
    (path,) = videos_in(str(folder / "results")).values()
    return json.loads((folder / "stats.json").read_text()), read_frames(path)


def test_huge_threshold_computes_the_forced_steps_only(ckpts, full_video, tmp_path, caplog, monkeypatch):
    caplog.set_level(logging.INFO)  # the summary is logged at INFO
    code, log = run_main(caplog, monkeypatch, teacache_argv(ckpts, tmp_path, "1e9"))
    assert code == 0, log
    stats, frames = outputs(tmp_path)
    assert FORCED_STEPS == [0, 7]
    assert stats["policy"] == "teacache" and stats["branches"] == ["cond"]
    assert stats["computed_steps"] == {"cond": FORCED_STEPS}
    assert stats["computed_calls"] == len(FORCED_STEPS) * (DOUBLE + SINGLE) == 18
    assert stats["groups"]["double"]["skipped"] == [0] + [DOUBLE] * 6 + [0]
    assert stats["groups"]["single"]["skipped"] == [0] + [SINGLE] * 6 + [0]
    assert stats["teacache"]["coefficients"][0] == 733.226126 and stats["teacache"]["threshold"] == 1e9
    assert "TeaCache branch cond computed steps [0, 7]" in log
    assert "not calibrated for it" in log  # published coefficients on a --dit-config architecture: warned
    assert frames.shape == (5, 32, 48, 3) and not np.array_equal(frames, read_frames(full_video))


def test_threshold_zero_computes_every_step_and_equals_the_uncached_video(ckpts, full_video, tmp_path):
    result = run_cli(*teacache_argv(ckpts, tmp_path, "0"))
    assert result.returncode == 0, result.stdout + result.stderr
    stats, frames = outputs(tmp_path)
    assert stats["computed_steps"] == {"cond": list(range(STEPS))}
    assert stats["computed_calls"] == STEPS * (DOUBLE + SINGLE)
    assert all(d is not None and d > 0 for d in stats["distances"]["cond"][1:])  # the indicator moved every step
    assert np.array_equal(frames, read_frames(full_video))


def test_real_cfg_is_one_batched_forward_and_one_cache_branch(ckpts, tmp_path, caplog, monkeypatch):
    # 3 steps: 0 and 2 forced, 1 skipped; the batched cond+uncond forward is one branch with one decision.
    argv = teacache_argv(ckpts, tmp_path, "1e9", "--cfg-scale", "2.0", "--infer-steps", "3")
    code, log = run_main(caplog, monkeypatch, argv)
    assert code == 0, log
    stats, frames = outputs(tmp_path)
    assert stats["branches"] == ["cond+uncond"]
    assert stats["computed_steps"] == {"cond+uncond": [0, 2]}
    assert stats["computed_calls"] == 2 * (DOUBLE + SINGLE)  # one call per block and step: the batch of two
    assert frames.shape == (5, 32, 48, 3)


# ---------------------------------------------------------------------------------------------------------------
# In-process: refused before anything is loaded or written.


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--teacache-thresh", "0.1", "--delta_cache"],
         "--teacache-thresh and --delta_cache/--cache-profile exclude each other: one cache policy per run"),
        (["--teacache_thresh", "0.1", "--delta-cache"], "--teacache-thresh and --delta_cache/--cache-profile exclude"),
        (["--teacache-thresh", "0.1", "--cache-profile", "p.json"], "exclude each other"),
        (["--teacache-thresh", "-0.5"], "--teacache-thresh -0.5 is not allowed: expected a finite number >= 0"),
        (["--teacache-thresh", "nan"], "--teacache-thresh nan is not allowed: expected a finite number >= 0"),
        (["--teacache-thresh", "0.1", "--use_ret_steps"],
         "--use_ret_steps is not available for this model: TeaCache's ret-steps mode"),
        (["--teacache-coefficients", "1,2"], "--teacache-coefficients only act with TeaCache on: add --teacache-thresh"),
    ],
)
def test_bad_teacache_arguments_fail_clearly_and_write_nothing(ckpts, tmp_path, caplog, monkeypatch, extra,
                                                               message):
    code, log = run_main(caplog, monkeypatch, cli_args(ckpts, str(tmp_path / "out"), *extra))
    assert code == 2
    assert message in log
    assert os.listdir(tmp_path) == []


def test_both_spellings_of_the_threshold_parse():
    from hyvideo.config import parse_args

    assert parse_args(["--prompt", "x", "--teacache-thresh", "0.15"]).teacache_thresh == 0.15
    assert parse_args(["--prompt", "x", "--teacache_thresh", "0.1"]).teacache_thresh == 0.1
    assert parse_args(["--prompt", "x"]).teacache_thresh is None  # off unless given
