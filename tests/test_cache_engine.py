"""The run-time engine on toy block stacks: exact cache arithmetic, call counts, branches, resets, dtypes."""

import time

import pytest
import torch

from cache_toys import (
    HUNYUAN_DOUBLE_SPAN,
    HUNYUAN_SINGLE_BACKGROUND,
    HUNYUAN_SINGLE_REFRESH,
    WAN14B_CACHED,
    AffineBlock,
    ToyModel,
    ToyTwoStreamModel,
    plain_loop,
)
from common_cache import (
    CacheConfig,
    DeltaCache,
    StepListSchedule,
    StreamGroupConfig,
    UniformSchedule,
    attach_cache,
    cache_units,
    detach_cache,
    run_blocks,
)


def blocks_config(depth, cached, warmup=1, schedule=None):
    group = StreamGroupConfig("blocks", depth, cached, warmup, schedule or UniformSchedule(3))
    return CacheConfig((group,))


def cached_model(depth, cached, warmup=1, schedule=None, **cache_kwargs):
    model = ToyModel(depth)
    cache = DeltaCache(blocks_config(depth, cached, warmup, schedule), **cache_kwargs)
    attach_cache(model, cache)
    return model, cache


def step_inputs(num_steps, shape=(2, 5)):
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(shape, generator=gen) for _ in range(num_steps)]


def generate(model, cache, inputs, branch="cond"):
    cache.begin(len(inputs))
    outs = []
    for i, x in enumerate(inputs):
        with cache.step(i, branch):
            outs.append(model(x))
    return outs


# ------------------------------------------------------------------------------------------------ equivalence


def test_no_cache_is_a_plain_loop_bit_identical():
    model = ToyModel(6)
    x = torch.randn(3, 4)
    assert torch.equal(run_blocks(None, "blocks", model.blocks, x, bias=0.5), plain_loop(model.blocks, x, bias=0.5))


def test_refresh_every_step_is_bit_identical_to_no_cache():
    inputs = step_inputs(8)
    model, cache = cached_model(6, (0, 2, 3, 4), warmup=2, schedule=UniformSchedule(1))
    cached = generate(model, cache, inputs)
    detach_cache(model)
    for x, y in zip(inputs, cached):
        assert torch.equal(model(x), y)
    assert cache.stats.skipped_calls == 0
    assert cache.stats.peak_buffer_bytes == 0  # refreshes that no reuse step needs record nothing


def test_reuse_step_is_input_plus_stored_delta_exactly():
    # depth 6; isolated unit {1}, span {3,4,5}; warm-up 1, refresh at 1, reuse at 2.
    inputs = step_inputs(3)
    model, cache = cached_model(6, (1, 3, 4, 5), warmup=1, schedule=UniformSchedule(5))
    outs = generate(model, cache, inputs)
    blocks = model.blocks
    # Expected by hand: deltas recorded at step 1 ...
    h = inputs[1]
    h0 = blocks[0](h)
    h1 = blocks[1](h0)
    delta1 = h1 - h0
    h2 = blocks[2](h1)
    span_out = blocks[5](blocks[4](blocks[3](h2)))
    delta_span = span_out - h2
    # ... and applied at step 2: blocks 0 and 2 run, 1 and 3..5 are replaced by their deltas.
    x = inputs[2]
    expected = blocks[2](blocks[0](x) + delta1) + delta_span
    assert torch.equal(outs[2], expected)


def test_span_interior_blocks_are_not_called_on_reuse_steps():
    inputs = step_inputs(4)
    model, cache = cached_model(6, (1, 3, 4, 5), warmup=1, schedule=UniformSchedule(10))
    generate(model, cache, inputs)
    # steps 0 (warm-up) and 1 (refresh) run all 6 blocks; steps 2 and 3 run only blocks 0 and 2.
    assert model.calls() == [4, 2, 4, 2, 2, 2]
    assert cache.stats.groups["blocks"].computed == [6, 6, 2, 2]
    assert cache.stats.groups["blocks"].skipped == [0, 0, 4, 4]


def test_span_starting_at_block_zero_works():
    # The official code takes a span's input from block first-1 = -1 and crashes (method.md 8.3).
    inputs = step_inputs(3)
    model, cache = cached_model(4, (0, 1, 2), warmup=1, schedule=UniformSchedule(5))
    outs = generate(model, cache, inputs)
    delta = plain_loop(model.blocks[:3], inputs[1]) - inputs[1]
    assert torch.equal(outs[2], model.blocks[3](inputs[2] + delta))


# ------------------------------------------------------------------------------------------------ the paper's numbers


def test_paper_lists_compile_to_the_official_units():
    single = cache_units(HUNYUAN_SINGLE_BACKGROUND)
    assert [(u.first, u.last) for u in single] == [
        (0, 0), (2, 2), (4, 7), (10, 21), (23, 23), (25, 27), (31, 31), (33, 33)
    ]
    wan = cache_units(WAN14B_CACHED)
    assert [(u.first, u.last) for u in wan] == [(0, 0), (2, 7), (10, 20), (25, 32), (37, 38)]


def test_call_count_arithmetic_gives_1_84x_for_hunyuanvideo():
    model = ToyTwoStreamModel(20, 40)
    double = StreamGroupConfig("double", 20, HUNYUAN_DOUBLE_SPAN, 6, UniformSchedule(6))
    single = StreamGroupConfig("single", 40, HUNYUAN_SINGLE_BACKGROUND, 6, StepListSchedule(HUNYUAN_SINGLE_REFRESH))
    cache = DeltaCache(CacheConfig((double, single)))
    attach_cache(model, cache)
    cache.begin(50)
    img, txt = torch.randn(1, 4, 3), torch.randn(1, 2, 3)
    for i in range(50):
        with cache.step(i, "cond"):  # the distilled model: one forward per step
            model(img, txt)
    stats = cache.stats
    assert stats.total_calls == 3000
    # 6x60 warm-up + double 8x20 + 36x6 + single 8x40 + 36x16 (method.md 3.7)
    assert stats.computed_calls == 6 * 60 + 8 * 20 + 36 * 6 + 8 * 40 + 36 * 16 == 1632
    assert sum(b.calls for b in model.double_blocks) + sum(b.calls for b in model.single_blocks) == 1632
    assert round(stats.ideal_speedup, 2) == 1.84


def test_call_count_arithmetic_gives_2_016x_for_wan14b_with_two_branches():
    model, cache = cached_model(40, WAN14B_CACHED, warmup=6, schedule=UniformSchedule(6))
    cache.begin(50)
    x = torch.randn(1, 3)
    for i in range(50):
        for branch in ("cond", "uncond"):
            with cache.step(i, branch):
                model(x)
    stats = cache.stats
    assert stats.total_calls == 4000
    assert stats.computed_calls == 6 * 80 + 8 * 80 + 36 * 2 * 12 == 1984 == sum(model.calls())
    assert round(stats.ideal_speedup, 3) == 2.016
    assert stats.branches == ["cond", "uncond"]


# ------------------------------------------------------------------------------------------------ branches and resets


def test_branches_never_share_deltas():
    cond_in, uncond_in = step_inputs(3), [x * -2.0 for x in step_inputs(3)]
    model, cache = cached_model(5, (1, 2), warmup=1, schedule=UniformSchedule(5))
    cache.begin(3)
    outs = {}
    for i in range(3):
        for branch, inputs in (("cond", cond_in), ("uncond", uncond_in)):
            with cache.step(i, branch):
                outs[branch, i] = model(inputs[i])
    # Each branch alone gives the same results as when they are interleaved.
    for branch, inputs in (("cond", cond_in), ("uncond", uncond_in)):
        solo_model, solo_cache = cached_model(5, (1, 2), warmup=1, schedule=UniformSchedule(5))
        solo = generate(solo_model, solo_cache, inputs, branch)
        assert torch.equal(solo[2], outs[branch, 2])
    assert not torch.equal(outs["cond", 2], outs["uncond", 2])


def test_batched_branches_equal_separate_branches():
    cond_in, uncond_in = step_inputs(3, (1, 5)), [x + 1.0 for x in step_inputs(3, (1, 5))]
    model, cache = cached_model(5, (0, 2, 3), warmup=1, schedule=UniformSchedule(5))
    batched = generate(model, cache, [torch.cat([c, u]) for c, u in zip(cond_in, uncond_in)], "cond+uncond")
    cond = generate(model, cache, cond_in, "cond")
    uncond = generate(model, cache, uncond_in, "uncond")
    torch.testing.assert_close(batched[2], torch.cat([cond[2], uncond[2]]), rtol=0, atol=1e-6)


def test_begin_resets_deltas_between_generations():
    inputs = step_inputs(4)
    model, cache = cached_model(5, (1, 2, 3), warmup=1, schedule=UniformSchedule(2))
    first = generate(model, cache, inputs)
    generate(model, cache, [x * 3 for x in inputs])  # a different generation in between
    again = generate(model, cache, inputs)
    for a, b in zip(first, again):
        assert torch.equal(a, b)
    assert cache.stats.computed_calls == 5 + 5 + 2 + 5  # statistics are per generation


def test_a_branch_that_missed_the_refresh_is_an_error_not_a_crash():
    model, cache = cached_model(4, (1,), warmup=1, schedule=UniformSchedule(5))
    cache.begin(3)
    x = torch.randn(2)
    for i in range(2):
        with cache.step(i, "cond"):
            model(x)
    with cache.step(2, "uncond"), pytest.raises(RuntimeError, match="no delta recorded for blocks 1..1 of group 'blocks', branch 'uncond', at step 2"):
        model(x)


# ------------------------------------------------------------------------------------------------ dtypes and storage


class CastUpBlock(torch.nn.Module):
    """Returns fp32 from any input, like Wan's blocks whose residual adds run under fp32 autocast."""

    def forward(self, x):
        return x.float() * 1.5 + 0.25


def test_reuse_keeps_the_dtype_the_blocks_return():
    blocks = torch.nn.ModuleList([CastUpBlock(), CastUpBlock(), CastUpBlock()])
    cache = DeltaCache(blocks_config(3, (0, 1), warmup=1, schedule=UniformSchedule(5)))
    cache.bind({"blocks": 3})
    cache.begin(3)
    x = torch.randn(4, dtype=torch.float64).to(torch.bfloat16)  # the stream enters in bf16
    outs = []
    for i in range(3):
        with cache.step(i):
            outs.append(run_blocks(cache, "blocks", blocks, x))
    assert all(o.dtype == torch.float32 for o in outs)
    # the official in-place add would have produced bf16 here (method.md 8.4); ours equals the full computation
    torch.testing.assert_close(outs[2], outs[1], rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_low_precision_and_cpu_storage_keep_the_stream_dtype(dtype):
    inputs = [x.to(dtype) for x in step_inputs(3)]
    model, exact_cache = cached_model(5, (1, 2), warmup=1, schedule=UniformSchedule(5))
    exact = generate(model, exact_cache, inputs)
    model, cache = cached_model(5, (1, 2), warmup=1, schedule=UniformSchedule(5),
                                delta_dtype=torch.bfloat16, delta_device="cpu")
    low = generate(model, cache, inputs)
    assert low[2].dtype == dtype
    torch.testing.assert_close(low[2], exact[2], rtol=0, atol=2e-2)
    assert not torch.equal(low[2], exact[2])
    # one delta of 2x5 bf16 values
    assert cache.stats.peak_buffer_bytes == 10 * 2
    assert exact_cache.stats.peak_buffer_bytes == 10 * torch.tensor([], dtype=dtype).element_size()


def test_buffer_bytes_count_every_unit_and_branch():
    model, cache = cached_model(6, (0, 2, 3, 5), warmup=1, schedule=UniformSchedule(5))
    cache.begin(3)
    x = torch.randn(2, 8)
    for i in range(3):
        for branch in ("cond", "uncond"):
            with cache.step(i, branch):
                model(x)
    assert len(cache.plans["blocks"].units) == 3
    assert cache.stats.peak_buffer_bytes == 3 * 2 * x.numel() * 4


# ------------------------------------------------------------------------------------------------ two streams


def test_tuple_states_each_get_their_own_delta():
    model = ToyTwoStreamModel(4, 3)
    double = StreamGroupConfig("double", 4, (1, 2), 1, UniformSchedule(5))
    cache = DeltaCache(CacheConfig((double,)))  # the single stream is not cached: it runs every block
    attach_cache(model, cache)
    cache.begin(3)
    gen = torch.Generator().manual_seed(3)
    imgs = [torch.randn(1, 4, 2, generator=gen) for _ in range(3)]
    txts = [torch.randn(1, 2, 2, generator=gen) for _ in range(3)]
    outs = []
    for i in range(3):
        with cache.step(i):
            outs.append(model(imgs[i], txts[i]))
    b = model.double_blocks
    i1, t1 = b[0](imgs[1], txts[1])
    i3, t3 = b[2](*b[1](i1, t1))
    d_img, d_txt = i3 - i1, t3 - t1
    i0, t0 = b[0](imgs[2], txts[2])
    img, txt = b[3](i0 + d_img, t0 + d_txt)
    expected = plain_loop(model.single_blocks, torch.cat([img, txt], dim=1))
    assert torch.equal(outs[2], expected)
    assert cache.stats.groups["single"].skipped == [0, 0, 0]
    assert cache.stats.groups["double"].skipped == [0, 0, 2]


# ------------------------------------------------------------------------------------------------ misuse


def test_misuse_raises_clear_errors():
    model = ToyModel(4)
    cache = DeltaCache(blocks_config(4, (1,)))
    with pytest.raises(RuntimeError, match=r"begin\(\) before bind\(\)"):
        cache.begin(5)
    with pytest.raises(ValueError, match="made for depth 4, but the model has 5 blocks"):
        attach_cache(ToyModel(5), cache)
    attach_cache(model, cache)
    with pytest.raises(RuntimeError, match=r"step\(\) before begin"):
        with cache.step(0):
            pass
    cache.begin(5)
    with pytest.raises(RuntimeError, match=r"called outside cache.step\(i, branch\)"):
        model(torch.randn(2))
    with pytest.raises(ValueError, match=r"step index=5 is out of range: allowed 0..4"):
        with cache.step(5):
            pass
    for i in range(2):
        with cache.step(i):
            model(torch.randn(2))
    with cache.step(1), pytest.raises(RuntimeError, match="ran step 1 after step 1"):
        model(torch.randn(2))
    with cache.step(2), pytest.raises(RuntimeError, match="got 3 blocks, but the model was bound with 4"):
        run_blocks(cache, "blocks", model.blocks[:3], torch.randn(2))


def test_stats_summary_and_json():
    model, cache = cached_model(6, (1, 2, 3), warmup=1, schedule=UniformSchedule(2))
    generate(model, cache, step_inputs(5))
    data = cache.stats.to_dict()
    assert data["computed_calls"] == 6 + 6 + 3 + 6 + 3 and data["total_calls"] == 30
    assert data["groups"]["blocks"]["skipped"] == [0, 0, 3, 0, 3]
    assert data["ideal_speedup"] == round(30 / 24, 4)
    text = cache.stats.summary()
    assert "block calls: 24 computed, 6 skipped of 30 (20.0% saved); ideal speedup 1.250x" in text


class SleepBlock(AffineBlock):
    """An AffineBlock that takes a known time: 5 ms per call."""

    def forward(self, x, bias=0.0):
        time.sleep(0.005)
        return super().forward(x, bias)


def test_stack_time_includes_the_blocks_and_engine_time_excludes_them():
    model = ToyModel(6, block=SleepBlock)
    cache = DeltaCache(blocks_config(6, (1, 2, 3), warmup=1, schedule=UniformSchedule(2)))
    attach_cache(model, cache)
    generate(model, cache, step_inputs(5))
    block_seconds = cache.stats.computed_calls * 0.005  # 24 calls that sleep 5 ms each, at least
    assert cache.stats.computed_calls == 24 and cache.stats.stack_seconds >= block_seconds
    # the engine's own work on these tiny tensors is far below the blocks' 120 ms; counting block time as engine
    # time, or not counting the blocks at all, breaks one of the two bounds
    assert 0 < cache.stats.engine_seconds < 0.5 * block_seconds
