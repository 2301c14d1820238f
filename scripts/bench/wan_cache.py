"""Full compute vs --delta_cache on a mid-size random Wan2.1 DiT (CPU, fp32): measured next to ideal speedup.

The denoising loop is the pipeline's (UniPC, shift 5, two guidance branches as two forwards, each in its own cache
branch); T5 and VAE are left out because the cache does not touch them. The cache profile is the paper's Wan2.1-14B
configuration scaled to the model's depth: the 14B list's always-computed blocks c are mapped to round(c*(D-1)/39),
every other block is cached; warm-up 6, refresh every 6 steps. Both modes run in one process, interleaved,
warm-up run excluded, median of --repeats.

Usage (from the repository root): python scripts/bench/wan_cache.py [--dim 256 --layers 16 --steps 50 --repeats 3]
"""

from __future__ import annotations

import argparse
import statistics

import torch

from common_cache import CacheConfig, DeltaCache, StreamGroupConfig, UniformSchedule, attach_cache
from profilingdit.bench.wan_harness import denoise, random_model, scaled_paper_blocks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--latent", type=int, nargs=4, default=[16, 3, 30, 52], metavar=("C", "T", "H", "W"))
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    model = random_model(args.dim, args.heads, args.layers, text_dim=args.dim)
    cached_blocks = scaled_paper_blocks(args.layers)
    cache = DeltaCache(CacheConfig((StreamGroupConfig("blocks", args.layers, cached_blocks, 6, UniformSchedule(6)),)))
    # Wall time, and this process's CPU time (far less disturbed by other jobs on a shared machine when the run is
    # single-threaded: OMP_NUM_THREADS=1).
    times: dict[str, list[float]] = {"full": [], "cached": []}
    cpu_times: dict[str, list[float]] = {"full": [], "cached": []}
    latents = {}
    with torch.inference_mode():
        for repeat in range(args.repeats + 1):  # round 0 is the warm-up, excluded
            for mode in times:
                model.block_cache = None
                if mode == "cached":
                    attach_cache(model, cache)
                seconds, cpu_seconds, latents[mode] = denoise(model, args.latent, args.steps)
                if repeat:
                    times[mode].append(seconds)
                    cpu_times[mode].append(cpu_seconds)
    tokens = args.latent[1] * args.latent[2] * args.latent[3] // 4
    rel_err = ((latents["cached"] - latents["full"]).norm() / latents["full"].norm()).item()
    print(f"WanModel dim {args.dim} ({args.heads} heads), {args.layers} blocks, {tokens} tokens, fp32, "
          f"{args.steps} UniPC steps x 2 branches, {torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"cached blocks ({len(cached_blocks)} of {args.layers}): {list(cached_blocks)}; warm-up 6, interval 6")
    for clock, samples in (("wall", times), ("cpu", cpu_times)):
        full, cached = statistics.median(samples["full"]), statistics.median(samples["cached"])
        for mode in samples:
            print(f"  [{clock}] {mode:<6} {statistics.median(samples[mode]):8.2f} s   runs: "
                  f"{', '.join(f'{t:.2f}' for t in samples[mode])}")
        print(f"[{clock}] speedup: measured {full / cached:.3f}x, ideal {cache.stats.ideal_speedup:.3f}x "
              f"({full / cached / cache.stats.ideal_speedup:.1%} of ideal)")
    print(f"final-latent relative error cached vs full: {rel_err:.2e}")
    print(f"cache buffers: peak {cache.stats.peak_buffer_bytes / 2**20:.1f} MiB (both branches)")


if __name__ == "__main__":
    main()
