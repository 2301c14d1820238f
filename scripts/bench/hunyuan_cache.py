"""Full vs cached denoising loop of a mid-size random HunyuanVideo transformer on the CPU: measured vs ideal speedup.

The model is the official architecture (double- then single-stream blocks, token refiner, 3D RoPE, guidance
embedding) at a reduced size: by default hidden 256 = 2 heads x 128 (the official head dim and RoPE split
16/56/56), 4 double + 8 single blocks, ~1k image tokens (9 frames of 256x352 -> 3 x 16 x 22 tokens) plus the
official 256 text tokens. The cache profile is the paper's, scaled to these depths (see `scaled_paper_profile`);
with 50 steps (the default) its step schedule is the paper's exactly.

Both loops run in one process through the real pipeline (`HunyuanVideoPipeline.denoise`) on the same noise and
conditions: one untimed warm-up run first, then full and cached runs alternate `--repeats` times; the report gives
the median loop time of each, their ratio (measured speedup) next to the ideal one (block calls), and how far the
cached latents are from the full ones.

    python scripts/bench/hunyuan_cache.py                       # defaults above, 50 steps, 3 repeats
    python scripts/bench/hunyuan_cache.py --steps 10 --repeats 1 --video-size 64 64 --video-length 5   # smoke test
    python scripts/bench/hunyuan_cache.py --official --device cuda --precision bf16 --video-size 544 960 \
        --video-length 33 --repeats 2      # the official HYVideo-T/2-cfgdistill size on a GPU (random weights)
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch
from hyvideo.diffusion.pipelines import HunyuanVideoPipeline
from hyvideo.diffusion.schedulers import FlowMatchDiscreteScheduler

from common_cache import DeltaCache, attach_cache, detach_cache
from profilingdit.bench.hunyuan_harness import (
    DTYPES,
    PAPER_STEPS,
    build_inputs,
    scaled_paper_profile,
    timed_run,
)
from profilingdit.files import write_json_atomic


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=256, help="Hidden size.")
    parser.add_argument("--heads", type=int, default=2, help="Attention heads (head dim = hidden / heads).")
    parser.add_argument("--double", type=int, default=4, help="Double-stream blocks.")
    parser.add_argument("--single", type=int, default=8, help="Single-stream blocks.")
    parser.add_argument("--video-size", type=int, nargs=2, default=(256, 352), metavar=("H", "W"))
    parser.add_argument("--video-length", type=int, default=9, help="Frames (4n+1).")
    parser.add_argument("--text-len", type=int, default=256, help="Text tokens (official: 256, right-padded).")
    parser.add_argument("--prompt-tokens", type=int, default=32, help="Valid (unpadded) text tokens.")
    parser.add_argument("--steps", type=int, default=PAPER_STEPS, help="Denoising steps.")
    parser.add_argument("--repeats", type=int, default=3, help="Timed full/cached pairs (median reported).")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's).")
    parser.add_argument("--json", type=str, default=None, help="Also write the results to this JSON file.")
    parser.add_argument("--official", action="store_true",
                        help="The official HYVideo-T/2-cfgdistill size (hidden 3072, 24 heads, 20 + 40 blocks, text "
                             "dims 4096/768) and the paper's profile; --hidden/--heads/--double/--single are ignored.")
    parser.add_argument("--device", default="cpu", help="cpu or cuda.")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                        help="DiT weights and autocast dtype (official GPU runs: bf16).")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, latents, text, freqs = build_inputs(args)
    depths = model.stream_group_depths()
    profile = scaled_paper_profile(depths["double"], depths["single"], args.steps)
    pipeline = HunyuanVideoPipeline(model, FlowMatchDiscreteScheduler(shift=7.0, reverse=True), device=args.device,
                                    dit_dtype=DTYPES[args.precision], autocast=args.precision != "fp32")
    print(f"model: hidden {model.hidden_size} ({model.heads_num} heads), {depths['double']} double + "
          f"{depths['single']} single blocks, {args.precision} on {args.device}; "
          f"{freqs[0].shape[0]} image + {args.text_len} text tokens; {args.steps} steps; torch threads "
          f"{torch.get_num_threads()}")
    for group in profile.config.groups:
        print(f"cache {group.name}: blocks {list(group.cached_blocks)}, warm-up {group.warmup_steps}, "
              f"refresh steps {list(group.refresh_steps(args.steps))}")
    cache = DeltaCache(profile.config)
    timed_run(pipeline, latents, text, freqs, min(args.steps, 3))  # warm-up, untimed
    full_times, cached_times, full_cpu, cached_cpu = [], [], [], []
    for _ in range(args.repeats):
        detach_cache(model)
        seconds, cpu, full, _ = timed_run(pipeline, latents, text, freqs, args.steps)
        full_times.append(seconds)
        full_cpu.append(cpu)
        attach_cache(model, cache)
        seconds, cpu, cached, extra = timed_run(pipeline, latents, text, freqs, args.steps)
        cached_times.append(seconds)
        cached_cpu.append(cpu)
    detach_cache(model)
    stats = cache.stats
    result = {
        "full_seconds": statistics.median(full_times), "cached_seconds": statistics.median(cached_times),
        "full_runs": full_times, "cached_runs": cached_times, "full_cpu_runs": full_cpu, "cached_cpu_runs": cached_cpu,
        "measured_speedup_cpu": statistics.median(full_cpu) / statistics.median(cached_cpu),
        "ideal_speedup": round(stats.ideal_speedup, 4), "computed_calls": stats.computed_calls,
        "total_calls": stats.total_calls, "peak_buffer_mib": stats.peak_buffer_bytes / 2**20,
        "engine_seconds": stats.engine_seconds, "latent_rel_l2": ((cached - full).norm() / full.norm()).item(),
        "profile": profile.to_dict(), "args": vars(args), **extra,
    }
    result["measured_speedup"] = result["full_seconds"] / result["cached_seconds"]
    print(f"full loop   {result['full_seconds']:.2f} s (median of {args.repeats}: "
          f"{', '.join(f'{t:.2f}' for t in full_times)})")
    print(f"cached loop {result['cached_seconds']:.2f} s (median of {args.repeats}: "
          f"{', '.join(f'{t:.2f}' for t in cached_times)})")
    print(f"CPU time: full {statistics.median(full_cpu):.2f} s, cached {statistics.median(cached_cpu):.2f} s "
          f"-> measured {result['measured_speedup_cpu']:.3f}x")
    print(f"speedup: measured {result['measured_speedup']:.3f}x, ideal {stats.ideal_speedup:.3f}x "
          f"({stats.computed_calls}/{stats.total_calls} block calls computed)")
    print(f"cache buffers peak {result['peak_buffer_mib']:.1f} MiB, engine time {stats.engine_seconds:.3f} s; "
          f"cached vs full latents: relative L2 {result['latent_rel_l2']:.2e}")
    if args.json:
        write_json_atomic(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
