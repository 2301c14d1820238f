"""TeaCache behind run_blocks: the rule by hand, per-branch state, residual reuse, signals, presets, CLI, models."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from cache_toys import AffineBlock, PairBlock, ToyModel
from common_cache import CacheConfig, DeltaCache, StreamGroupConfig, UniformSchedule, attach_cache, run_blocks
from common_cache.cli import add_cache_args, add_teacache_args, teacache_from_args
from common_cache.teacache import (
    PUBLISHED,
    UNCALIBRATED,
    TeaCache,
    TeaCacheConfig,
    hunyuan_teacache_config,
    preset_config,
    relative_l1,
    wan_teacache_config,
)
from scripts_loader import load_script


class SignalToy(ToyModel):
    """ToyModel whose forward hands an indicator to run_blocks (as Wan2.1 hands ``e``)."""

    def forward(self, x, indicator, bias=0.0):
        return run_blocks(self.block_cache, "blocks", self.blocks, x, cache_signals={"ind": indicator}, bias=bias)


class TwoStackToy(nn.Module):
    """Like HunyuanVideo: a two-state stack ("double"), a concatenation, then a one-state stack ("single")."""

    def __init__(self):
        super().__init__()
        self.double_blocks = nn.ModuleList(PairBlock(i) for i in range(2))
        self.single = nn.ModuleList(AffineBlock(i) for i in range(3))
        self.block_cache = None
        self.indicator_calls = 0

    def stream_group_depths(self):
        return {"double": 2, "single": 3}

    def _indicator(self, img):
        self.indicator_calls += 1
        return img * 2.0

    def forward(self, img, txt):
        img, txt = run_blocks(self.block_cache, "double", self.double_blocks, (img, txt),
                              cache_signals={"mod": lambda: self._indicator(img)})
        x = torch.cat((img, txt), 1)
        return run_blocks(self.block_cache, "single", self.single, x)


def run_steps(model, cache, indicators, branch="cond", x=None):
    """One generation: step i feeds indicator value ``indicators[i]``; returns the outputs."""
    x = torch.linspace(-1, 1, 6) if x is None else x
    cache.begin(len(indicators))
    outs = []
    for i, value in enumerate(indicators):
        with cache.step(i, branch):
            outs.append(model(x + 0.01 * i, torch.full((4,), float(value))))
    return outs


def config(threshold=0.25, coefficients=UNCALIBRATED, first=1, last=1):
    return TeaCacheConfig(threshold, coefficients, "ind", first, last)


# ------------------------------------------------------------------------------------------------ the rule


def test_decisions_follow_the_accumulated_relative_l1_by_hand():
    model = SignalToy(3)
    cache = TeaCache(config(threshold=0.25))
    attach_cache(model, cache)
    # d1 = 0.1 (acc 0.1, skip); d2 = 0.1/1.1 (acc 0.1909, skip); d3 = 0.2/1.2 (acc 0.3576, compute, reset);
    # d4 = 0.05/1.4 (acc 0.0357, skip); step 5 is the last: forced.
    run_steps(model, cache, [1.0, 1.1, 1.2, 1.4, 1.45, 1.45])
    assert cache.computed_steps("cond") == [0, 3, 5]
    records = cache.history["cond"]
    assert records[1].distance == pytest.approx(0.1, rel=1e-6)
    assert records[2].accumulated == pytest.approx(0.1 + 0.1 / 1.1, rel=1e-6)
    assert records[4].accumulated == pytest.approx(0.05 / 1.4, rel=1e-5)  # fp32 indicator
    assert [r.forced for r in records] == [True, False, False, False, False, True]
    assert cache.stats.groups["blocks"].computed == [3, 0, 0, 3, 0, 3]
    assert cache.stats.groups["blocks"].skipped == [0, 3, 3, 0, 3, 0]
    assert model.calls() == [3, 3, 3]
    assert cache.stats.ideal_speedup == 2.0


def test_polynomial_rescaling_matches_numpy_poly1d():
    coefficients = PUBLISHED["wan2.1-t2v-1.3B"].coefficients
    cfg = TeaCacheConfig(0.1, coefficients, "e")
    for d in (0.0, 0.003, 0.05, 0.2):
        assert cfg.rescale(d) == pytest.approx(float(np.poly1d(coefficients)(d)), rel=1e-12, abs=1e-12)


def test_skipped_forward_adds_the_residual_of_the_last_computed_one():
    model = SignalToy(3)
    cache = TeaCache(config(threshold=10.0))  # never reaches the threshold: only forced steps compute
    attach_cache(model, cache)
    x = torch.linspace(-1, 1, 6)
    outs = run_steps(model, cache, [1.0, 1.0, 1.0, 1.0], x=x)
    model.block_cache = None
    reference0 = model(x, torch.ones(4))
    residual = reference0 - x
    assert torch.equal(outs[0], reference0)
    for i in (1, 2):
        assert torch.equal(outs[i], (x + 0.01 * i) + residual)
    assert torch.equal(outs[3], model(x + 0.03, torch.ones(4)))  # the forced last step ran the blocks


def test_forced_first_and_last_steps_and_ret_steps_mode():
    model = SignalToy(2)
    cache = TeaCache(config(threshold=1e9, first=5, last=0))
    attach_cache(model, cache)
    run_steps(model, cache, [1.0] * 8)
    assert cache.computed_steps("cond") == [0, 1, 2, 3, 4]
    cache = TeaCache(config(threshold=1e9, first=1, last=2))
    attach_cache(model, cache)
    run_steps(model, cache, [1.0] * 8)
    assert cache.computed_steps("cond") == [0, 6, 7]


def test_threshold_zero_computes_every_step():
    model = SignalToy(2)
    cache = TeaCache(config(threshold=0.0))
    attach_cache(model, cache)
    run_steps(model, cache, [1.0, 1.0, 1.0, 1.0])
    assert cache.computed_steps("cond") == [0, 1, 2, 3]


def test_branches_keep_their_own_state():
    model = SignalToy(2)
    cache = TeaCache(config(threshold=0.25))
    attach_cache(model, cache)
    cache.begin(4)
    cond = [1.0, 1.0, 1.0, 1.0]  # no change: skips steps 1 and 2
    uncond = [1.0, 2.0, 4.0, 8.0]  # d = 1 every step: computes every step
    for i in range(4):
        for branch, values in (("cond", cond), ("uncond", uncond)):
            with cache.step(i, branch):
                model(torch.ones(3) * i, torch.full((2,), values[i]))
    assert cache.computed_steps("cond") == [0, 3]
    assert cache.computed_steps("uncond") == [0, 1, 2, 3]
    assert cache.stats.branches == ["cond", "uncond"]
    assert cache.stats.peak_buffer_bytes == 2 * 3 * 4  # one fp32 residual of 3 values per branch


def test_begin_resets_everything():
    model = SignalToy(2)
    cache = TeaCache(config(threshold=10.0))
    attach_cache(model, cache)
    run_steps(model, cache, [1.0, 1.0, 1.0])
    run_steps(model, cache, [1.0, 1.0, 1.0])
    assert cache.computed_steps("cond") == [0, 2]
    assert cache.stats.computed_calls == 4 and cache.stats.skipped_calls == 2


def test_two_stacks_decide_once_and_reuse_the_whole_stack_residual():
    model = TwoStackToy()
    cache = TeaCache(TeaCacheConfig(10.0, UNCALIBRATED, "mod", 1, 1))
    attach_cache(model, cache)
    img, txt = torch.linspace(-1, 1, 8).view(1, 4, 2), torch.linspace(0, 1, 6).view(1, 3, 2)
    cache.begin(3)
    outs = []
    for i in range(3):
        with cache.step(i, "cond"):
            outs.append(model(img + 0.1 * i, txt))
    model.block_cache = None
    full0 = model(img, txt)
    stack_residual = full0 - torch.cat((img, txt), 1)
    torch.testing.assert_close(outs[1], torch.cat((img + 0.1, txt), 1) + stack_residual, rtol=0, atol=1e-6)
    assert cache.computed_steps("cond") == [0, 2]
    assert cache.stats.groups["double"].skipped == [0, 2, 0] and cache.stats.groups["single"].skipped == [0, 3, 0]
    assert model.indicator_calls == 3  # once per cached forward (the lazy signal); the plain call never evaluates it


def test_plain_loop_and_delta_cache_never_evaluate_or_receive_signals():
    model = TwoStackToy()
    img, txt = torch.ones(1, 4, 2), torch.ones(1, 3, 2)
    model(img, txt)
    assert model.indicator_calls == 0
    toy = SignalToy(3)
    cache = DeltaCache(CacheConfig((StreamGroupConfig("blocks", 3, (1,), 1, UniformSchedule(2)),)))
    attach_cache(toy, cache)
    cache.begin(3)
    for i in range(3):
        with cache.step(i, "cond"):
            toy(torch.ones(4), torch.ones(2))  # AffineBlock.forward takes no cache_signals: it never got them
    assert cache.stats.skipped_calls == 1


# ------------------------------------------------------------------------------------------------ errors


def test_misuse_raises_with_the_fix():
    model = SignalToy(2)
    cache = TeaCache(config())
    with pytest.raises(RuntimeError, match="before bind"):
        cache.begin(3)
    attach_cache(model, cache)
    with pytest.raises(RuntimeError, match="before begin"):
        with cache.step(0):
            pass
    cache.begin(3)
    with pytest.raises(RuntimeError, match="outside cache.step"):
        model(torch.ones(2), torch.ones(2))
    with pytest.raises(ValueError, match="out of range: allowed 0..2"):
        with cache.step(3):
            pass
    plain = ToyModel(2)
    attach_cache(plain, cache)
    with cache.step(0), pytest.raises(RuntimeError, match=r"needs the indicator 'ind'.*cache_signals"):
        plain(torch.ones(2))


def test_indicator_shape_change_and_step_order_errors():
    model = SignalToy(2)
    cache = TeaCache(config())
    attach_cache(model, cache)
    cache.begin(4)
    with cache.step(1):
        model(torch.ones(2), torch.ones(2))
    with cache.step(0), pytest.raises(RuntimeError, match="ran step 0 after step 1"):
        model(torch.ones(2), torch.ones(2))
    with cache.step(2), pytest.raises(RuntimeError, match="changed shape"):
        model(torch.ones(2), torch.ones(3))


@pytest.mark.parametrize("kwargs, message", [
    ({"threshold": -0.1}, "threshold=-0.1"),
    ({"threshold": float("nan")}, "threshold=nan"),
    ({"coefficients": ()}, "coefficients"),
    ({"coefficients": (1.0, float("inf"))}, "coefficients"),
    ({"forced_first": 0}, "forced_first=0"),
    ({"forced_last": -1}, "forced_last=-1"),
])
def test_config_values_are_checked(kwargs, message):
    base = {"threshold": 0.1, "coefficients": (1.0, 0.0), "indicator": "e"}
    with pytest.raises(ValueError, match=message):
        TeaCacheConfig(**{**base, **kwargs})


def test_relative_l1_of_zero_previous_is_infinite():
    assert relative_l1(torch.ones(3), torch.zeros(3)) == math.inf
    assert relative_l1(torch.tensor([2.0, 2.0]), torch.tensor([1.0, -1.0])) == pytest.approx(2.0)


# ------------------------------------------------------------------------------------------------ presets


def test_wan_presets_follow_the_official_modes():
    default = wan_teacache_config("t2v-1.3B", 0.08)
    assert (default.indicator, default.forced_first, default.forced_last) == ("e", 1, 1)
    assert default.coefficients == (2396.76752, -1311.10545, 201.331979, -8.29855975, 0.137887774)
    ret = wan_teacache_config("t2v-14B", 0.2, use_ret_steps=True)
    assert (ret.indicator, ret.forced_first, ret.forced_last) == ("e0", 5, 0)
    assert ret.coefficients[0] == -303318.725
    tiny = wan_teacache_config("t2v-tiny", 0.1)
    assert tiny.coefficients == UNCALIBRATED and tiny.source.startswith("uncalibrated")
    fitted = wan_teacache_config("t2v-tiny", 0.1, coefficients=[1, 2, 3], source="fit.json")
    assert fitted.coefficients == (1.0, 2.0, 3.0) and fitted.source == "fit.json"
    hy = hunyuan_teacache_config(0.15)
    assert (hy.indicator, hy.forced_first, hy.forced_last, hy.coefficients[0]) == ("modulated_input", 1, 1, 733.226126)
    with pytest.raises(ValueError, match="no published TeaCache coefficients for 'wan2.1-t2v-5B'"):
        preset_config("wan2.1-t2v-5B", 0.1)


# ------------------------------------------------------------------------------------------------ CLI


def parse(argv, kebab=False):
    parser = argparse.ArgumentParser()
    add_cache_args(parser, kebab=kebab)
    add_teacache_args(parser, kebab=kebab, ret_steps=not kebab)
    return parser.parse_args(argv)


def wan_make(args):
    return lambda t: wan_teacache_config("t2v-1.3B", t, args.use_ret_steps)


def test_cli_builds_the_cache_and_reads_fitted_coefficients(tmp_path):
    args = parse(["--teacache_thresh", "0.08", "--use_ret_steps"])
    cache = teacache_from_args(args, wan_make(args))
    assert cache.config.threshold == 0.08 and cache.config.indicator == "e0"
    path = tmp_path / "fit.json"
    path.write_text(json.dumps({"format": "profilingdit-teacache-coefficients",
                                "fits": {"e0": {"coefficients": [3.0, 0.5]}}}))
    args = parse(["--teacache_thresh", "0.1", "--use_ret_steps", "--teacache_coefficients", str(path)])
    cache = teacache_from_args(args, wan_make(args))
    assert cache.config.coefficients == (3.0, 0.5) and str(path) in cache.config.source
    args = parse(["--teacache_thresh", "0.1", "--teacache_coefficients=-2.5,1,0"])
    assert teacache_from_args(args, wan_make(args)).config.coefficients == (-2.5, 1.0, 0.0)
    args = parse(["--teacache-thresh", "0.15"], kebab=True)
    assert teacache_from_args(args, hunyuan_teacache_config).config.indicator == "modulated_input"
    assert teacache_from_args(parse([]), hunyuan_teacache_config) is None


def test_cli_errors(tmp_path):
    args = parse(["--use_ret_steps"])
    with pytest.raises(ValueError, match="--use_ret_steps only act with TeaCache on: add --teacache_thresh"):
        teacache_from_args(args, wan_make(args))
    args = parse(["--teacache_thresh", "0.1", "--delta_cache"])
    with pytest.raises(ValueError, match="exclude each other"):
        teacache_from_args(args, wan_make(args))
    args = parse(["--teacache_thresh", "0.1", "--teacache_coefficients", "1,x"])
    with pytest.raises(ValueError, match="--teacache_coefficients='1,x' is not allowed"):
        teacache_from_args(args, wan_make(args))
    args = parse(["--teacache_thresh", "0.1", "--teacache_coefficients", str(tmp_path / "missing.json")])
    with pytest.raises(FileNotFoundError):
        teacache_from_args(args, wan_make(args))
    path = tmp_path / "e0only.json"
    path.write_text(json.dumps({"format": "profilingdit-teacache-coefficients", "fits": {"e0": {"coefficients": [1]}}}))
    args = parse(["--teacache_thresh", "0.1", "--teacache_coefficients", str(path)])
    with pytest.raises(ValueError, match="no fit for indicator 'e'"):
        teacache_from_args(args, wan_make(args))


# ------------------------------------------------------------------------------------------------ real models


def tiny_wan():
    from wan_ckpt_dit import random_tiny_wan

    return random_tiny_wan(seed=0)


def wan_inputs(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = [torch.randn(16, 1, 4, 4, generator=g)]
    context = [torch.randn(5, model.text_dim, generator=g)]
    return x, context


def test_uncached_wan_forward_is_bit_identical_to_a_plain_block_loop():
    model = tiny_wan()
    x, context = wan_inputs(model)
    t = torch.tensor([700.0])
    with torch.no_grad():
        out = model(x, t=t, context=context, seq_len=8)[0]
        tokens, seq_lens, grid_sizes = model.patchify_and_pad(x, 8)
        e, e0 = model.embed_time(t)
        ctx = model.embed_text(context)
        for block in model.blocks:
            tokens = block(tokens, e=e0, seq_lens=seq_lens, grid_sizes=grid_sizes,
                           freqs=model.rope_table(tokens.device), context=ctx, context_lens=None)
        reference = model.head_and_unpatchify(tokens, e, grid_sizes)[0]
    assert torch.equal(out, reference)


@pytest.mark.parametrize("ret", [False, True])
def test_wan_schedule_equals_the_rule_replayed_on_the_time_embedding(ret):
    """The skip pattern on a real WanModel equals the official rule replayed with numpy on e (or e0)."""
    model = tiny_wan()
    x, context = wan_inputs(model)
    # Random weights move e far more per step (relative L1 0.4-1.4) than a trained model does, so the published
    # polynomials would saturate; a linear one keeps both outcomes in play.
    cfg = wan_teacache_config("t2v-1.3B", 1.5 if not ret else 1.0, use_ret_steps=ret, coefficients=(1.0, 0.0))
    cache = TeaCache(cfg)
    attach_cache(model, cache)
    timesteps = torch.linspace(999, 20, 12)
    cache.begin(len(timesteps))
    with torch.no_grad():
        for i, t in enumerate(timesteps):
            with cache.step(i, "cond"):
                model(x, t=t[None], context=context, seq_len=8)
    embeddings = [model.embed_time(t[None])[1 if ret else 0].detach().numpy().astype(np.float64) for t in timesteps]
    expected, acc = [], 0.0
    for i, emb in enumerate(embeddings):
        if i < cfg.forced_first or i >= len(timesteps) - cfg.forced_last:
            expected.append(i)
            acc = 0.0
            continue
        prev = embeddings[i - 1]
        acc += np.poly1d(cfg.coefficients)(np.abs(emb - prev).mean() / np.abs(prev).mean())
        if acc >= cfg.threshold:
            expected.append(i)
            acc = 0.0
    assert cache.computed_steps("cond") == expected
    free = [i for i in range(len(timesteps)) if not cfg.is_forced(i, len(timesteps))]
    assert 0 < len(set(free) - set(expected)) < len(free)  # some free steps skipped, some computed


def test_hunyuan_indicator_is_the_modulated_input_of_the_first_double_block():
    from hy_ckpt_dit import make_tiny_dit
    from hyvideo.modules.posemb_layers import get_nd_rotary_pos_embed

    model = make_tiny_dit(seed=0, std=0.05)
    g = torch.Generator().manual_seed(1)
    cos, sin = get_nd_rotary_pos_embed(model.rope_dim_list, [1, 2, 2], theta=256.0)
    inputs = {"x": torch.randn(1, 16, 1, 4, 4, generator=g), "t": torch.tensor([900.0]),
              "text_states": torch.randn(1, 5, 32, generator=g), "text_mask": torch.ones(1, 5, dtype=torch.long),
              "text_states_2": torch.randn(1, 16, generator=g), "freqs_cos": cos, "freqs_sin": sin,
              "guidance": torch.tensor([6016.0])}
    with torch.no_grad():
        reference = model(**inputs, return_dict=False)
        cache = TeaCache(hunyuan_teacache_config(0.15))
        attach_cache(model, cache)
        cache.begin(2)
        with cache.step(0, "cond"):
            first = model(**inputs, return_dict=False)
        indicator = cache._states["cond"].previous
        block = model.double_blocks[0]
        vec = model.embed_conditions(inputs["t"], inputs["text_states_2"], inputs["guidance"])
        img = model.embed_image(inputs["x"])
        shift, scale = block.img_mod(vec).chunk(6, dim=-1)[:2]
        expected = block.img_norm1(img) * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)
        with cache.step(1, "cond"):
            model(**inputs, return_dict=False)  # the last step: forced
    assert torch.equal(first, reference)
    torch.testing.assert_close(indicator, expected, rtol=0, atol=1e-6)
    assert cache.stats.groups["double"].computed == [2, 2] and cache.stats.groups["single"].computed == [2, 2]
    # A middle step under a huge threshold skips both stacks and still returns a prediction of the right shape.
    cache = TeaCache(hunyuan_teacache_config(1e9))
    attach_cache(model, cache)
    cache.begin(3)
    with torch.no_grad():
        outs = []
        for i in range(3):
            with cache.step(i, "cond"):
                outs.append(model(**inputs, return_dict=False))
    assert cache.stats.groups["double"].skipped == [0, 2, 0] and cache.stats.groups["single"].skipped == [0, 2, 0]
    # Same input every step: the reused residual reproduces the computed output (up to rounding).
    torch.testing.assert_close(outs[1], reference, rtol=0, atol=1e-5)


def test_generate_prefers_coefficients_fitted_for_the_checkpoint(tmp_path):
    """generate.py: without --teacache_coefficients, <ckpt_dir>/teacache_coefficients.json (fit_teacache.py's
    output kept with the weights) replaces the uncalibrated rule; an explicit flag still wins."""
    generate = load_script("Wan2.1/generate.py")

    fitted = tmp_path / "teacache_coefficients.json"
    fitted.write_text(json.dumps({"format": "profilingdit-teacache-coefficients",
                                  "fits": {"e": {"coefficients": [2.0, 0.25]}}}))
    args = generate._parse_args(["--task", "t2v-tiny", "--ckpt_dir", str(tmp_path), "--teacache_thresh", "0.1"])
    cache = generate.resolve_policy(args).policy
    assert cache.config.coefficients == (2.0, 0.25) and str(fitted) in cache.config.source
    args = generate._parse_args(["--task", "t2v-tiny", "--ckpt_dir", str(tmp_path), "--teacache_thresh", "0.1",
                                 "--teacache_coefficients", "1,0"])
    assert generate.resolve_policy(args).policy.config.coefficients == (1.0, 0.0)
    fitted.unlink()
    args = generate._parse_args(["--task", "t2v-tiny", "--ckpt_dir", str(tmp_path), "--teacache_thresh", "0.1"])
    assert generate.resolve_policy(args).policy.config.source.startswith("uncalibrated")
    args = generate._parse_args(["--task", "t2v-tiny", "--ckpt_dir", str(tmp_path)])
    assert generate.resolve_policy(args).policy is None
