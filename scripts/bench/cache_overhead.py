"""Overhead of the common_cache engine on a mid-size toy transformer stack (CPU, fp32).

Three modes on the same inputs, in one process, warm-up excluded, median of --repeats runs:

* plain:   the blocks in a plain loop (no cache attached);
* engine:  the DeltaCache attached with a schedule that never reuses (refresh every step): pure engine overhead;
* cached:  the DeltaCache on a schedule whose ideal speedup (block-call ratio) is 2.0x.

Targets (issue 2): engine overhead under 2 %; measured speedup of ``cached`` at least 95 % of the ideal one.

Usage: python scripts/bench/cache_overhead.py [--blocks 24 --width 256 --tokens 1024 --steps 12 --repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from common_cache import CacheConfig, DeltaCache, StreamGroupConfig, UniformSchedule, attach_cache, run_blocks


class ToyTransformerBlock(nn.Module):
    """Pre-norm self-attention + MLP block (the cost profile of a DiT block without conditioning)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(approximate="tanh"), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = nn.functional.scaled_dot_product_attention(q, k, v)  # [B, heads, N, C/heads]
        x = x + self.proj(attn.transpose(1, 2).reshape(b, n, c))
        return x + self.mlp(self.norm2(x))


class ToyStack(nn.Module):
    def __init__(self, depth: int, width: int, heads: int):
        super().__init__()
        self.blocks = nn.ModuleList(ToyTransformerBlock(width, heads) for _ in range(depth))
        self.block_cache = None

    def stream_group_depths(self) -> dict[str, int]:
        return {"blocks": len(self.blocks)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_blocks(self.block_cache, "blocks", self.blocks, x)


def generation(model: ToyStack, x: torch.Tensor, steps: int) -> tuple[float, float]:
    """One 'generation': ``steps`` forwards, each fed a slightly moved input. Returns (wall, CPU) seconds."""
    cache = model.block_cache
    start, cpu_start = time.perf_counter(), time.process_time()
    if cache is not None:
        cache.begin(steps)
    h = x
    for i in range(steps):
        if cache is None:
            out = model(h)
        else:
            with cache.step(i):
                out = model(h)
        h = x + 0.01 * out  # the next step's input depends on this step's output, as in a sampler
    return time.perf_counter() - start, time.process_time() - cpu_start


def cached_blocks_for_ideal_2x(depth: int, steps: int, warmup: int, interval: int) -> tuple[int, ...]:
    """The number of cached blocks that makes the block-call ratio exactly 2 (interleaved positions)."""
    full_steps = warmup + len(range(warmup, steps, interval))
    reuse_steps = steps - full_steps
    computed_on_reuse = (steps * depth / 2 - full_steps * depth) / reuse_steps
    if computed_on_reuse != int(computed_on_reuse) or computed_on_reuse < 1:
        raise SystemExit(f"no cached-block count gives exactly 2x for {steps} steps (warm-up {warmup}, interval {interval})")
    keep = int(computed_on_reuse)
    computed = {round(i * (depth - 1) / max(keep - 1, 1)) for i in range(keep)}  # spread, first and last kept
    return tuple(b for b in range(depth) if b not in computed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=24)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--interval", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = ToyStack(args.blocks, args.width, args.heads).eval()
    x = torch.randn(1, args.tokens, args.width)
    cached = cached_blocks_for_ideal_2x(args.blocks, args.steps, args.warmup, args.interval)
    configs = {
        "plain": None,
        "engine": StreamGroupConfig("blocks", args.blocks, cached, args.warmup, UniformSchedule(1)),
        "cached": StreamGroupConfig("blocks", args.blocks, cached, args.warmup, UniformSchedule(args.interval)),
    }
    caches = {name: DeltaCache(CacheConfig((g,))) if g else None for name, g in configs.items()}
    # Wall time, and this process's CPU time: on a machine shared with other jobs (like our 2-core one) the CPU
    # time of a single-threaded run (OMP_NUM_THREADS=1) is far less disturbed than the wall time.
    times: dict[str, list[float]] = {name: [] for name in configs}
    cpu_times: dict[str, list[float]] = {name: [] for name in configs}
    with torch.inference_mode():
        for repeat in range(args.repeats + 1):  # round 0 is the warm-up, excluded
            for name, cache in caches.items():  # interleaved so that machine noise hits every mode alike
                model.block_cache = None
                if cache is not None:
                    attach_cache(model, cache)
                seconds, cpu_seconds = generation(model, x, args.steps)
                if repeat > 0:
                    times[name].append(seconds)
                    cpu_times[name].append(cpu_seconds)

    ideal = caches["cached"].stats.ideal_speedup
    print(f"toy stack: {args.blocks} blocks, width {args.width}, {args.tokens} tokens, fp32, {args.steps} steps, "
          f"{torch.get_num_threads()} threads, median of {args.repeats} (warm-up excluded)")
    print(f"cached blocks ({len(cached)}): {list(cached)}; warm-up {args.warmup}; interval {args.interval}")
    for clock, samples in (("wall", times), ("cpu", cpu_times)):
        median = {name: statistics.median(values) for name, values in samples.items()}
        measured = median["plain"] / median["cached"]
        overhead = median["engine"] / median["plain"] - 1
        for name in configs:
            print(f"  [{clock}] {name:<7} {median[name]:8.3f} s   runs: {', '.join(f'{t:.3f}' for t in samples[name])}")
        print(f"[{clock}] engine overhead (engine vs plain): {overhead:+.2%}   (target < 2%)")
        print(f"[{clock}] cached speedup: measured {measured:.3f}x, ideal {ideal:.3f}x, "
              f"ratio {measured / ideal:.1%}   (target >= 95%)")
    print(f"engine-side time in the cached run: {caches['cached'].stats.engine_seconds * 1e3:.1f} ms "
          f"of {caches['cached'].stats.stack_seconds:.3f} s")


if __name__ == "__main__":
    main()
