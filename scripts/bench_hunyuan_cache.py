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

    python scripts/bench_hunyuan_cache.py                       # defaults above, 50 steps, 3 repeats
    python scripts/bench_hunyuan_cache.py --steps 10 --repeats 1 --video-size 64 64 --video-length 5   # smoke test
    python scripts/bench_hunyuan_cache.py --official --device cuda --precision bf16 --video-size 544 960 \
        --video-length 33 --repeats 2      # the official HYVideo-T/2-cfgdistill size on a GPU (random weights)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "HunyuanVideo"))

from common_cache import (CacheConfig, CacheProfile, DeltaCache, StepListSchedule, StreamGroupConfig,  # noqa: E402
                          UniformSchedule, attach_cache, detach_cache)
from hyvideo.cache_profiles import builtin_profile  # noqa: E402
from profilingdit.timing import GenerationReport  # noqa: E402
from hyvideo.diffusion.pipelines import HunyuanVideoPipeline, TextConditions  # noqa: E402
from hyvideo.diffusion.schedulers import FlowMatchDiscreteScheduler  # noqa: E402
from hyvideo.modules import HYVideoDiffusionTransformer, get_rotary_pos_embed  # noqa: E402
from hyvideo.modules.models import HUNYUAN_VIDEO_CONFIG  # noqa: E402

PAPER_STEPS = 50
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


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


def rope_dims(head_dim: int) -> list[int]:
    """The official 16/56/56 split (t, h, w) of 128, scaled to ``head_dim`` (even entries summing to it)."""
    t = max(2, round(head_dim * 16 / 128 / 2) * 2)
    h = (head_dim - t) // 4 * 2
    return [t, h, head_dim - t - h]


def scaled_paper_profile(double: int, single: int, steps: int) -> CacheProfile:
    """The paper's HunyuanVideo profile scaled to other depths and step counts.

    Double stream: the span keeps starting 30 % into the stack (blocks 6..19 of 20). Single stream: 24/40 of the
    blocks cached; block j stands for the paper's blocks [40 j / single, 40 (j + 1) / single), and the blocks whose
    range holds the largest share of the paper's background list are cached. Steps: the paper's schedules when
    ``steps`` is 50, else the same steps scaled by ``steps / 50``.
    """
    paper = builtin_profile("HYVideo-T/2-cfgdistill").config
    start = min(round(6 / 20 * double), double - 1)
    background = set(paper.group("single").cached_blocks)

    def share(j: int) -> float:
        low, high = 40 * j / single, 40 * (j + 1) / single
        return sum(min(b + 1, high) - max(b, low) for b in background if b + 1 > low and b < high) / (high - low)

    count = round(24 / 40 * single)
    cached_single = sorted(sorted(range(single), key=lambda j: (-share(j), j))[:count])
    scale = steps / PAPER_STEPS
    warmup = max(1, round(6 * scale))
    interval = max(1, round(6 * scale))
    paper_list = paper.group("single").schedule.steps
    refresh = sorted({round(s * scale) for s in paper_list if warmup <= round(s * scale) < steps})
    groups = (StreamGroupConfig("double", double, tuple(range(start, double)), warmup, UniformSchedule(interval)),
              StreamGroupConfig("single", single, tuple(cached_single), warmup, StepListSchedule(tuple(refresh))))
    return CacheProfile(CacheConfig(groups), metadata={"source": "paper profile scaled by bench_hunyuan_cache.py"})


def build_inputs(args: argparse.Namespace):
    """A random model (small weights: a smooth velocity field), noise, text conditions and RoPE tables."""
    torch.manual_seed(0)
    if args.official:
        sizes = dict(HUNYUAN_VIDEO_CONFIG["HYVideo-T/2-cfgdistill"], text_states_dim=4096, text_states_dim_2=768)
    else:
        sizes = dict(hidden_size=args.hidden, heads_num=args.heads, mm_double_blocks_depth=args.double,
                     mm_single_blocks_depth=args.single, rope_dim_list=rope_dims(args.hidden // args.heads),
                     guidance_embed=True, text_states_dim=64, text_states_dim_2=32)
    device = torch.device(args.device)
    with device:
        model = HYVideoDiffusionTransformer(**sizes).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" not in name:
                param.normal_(0.0, 0.02)
    model.to(DTYPES[args.precision])
    height, width = args.video_size
    latents = torch.randn(1, 16, (args.video_length - 1) // 4 + 1, height // 8, width // 8, device=device)
    mask = torch.zeros(1, args.text_len, dtype=torch.long, device=device)
    mask[:, : args.prompt_tokens] = 1
    text = TextConditions(torch.randn(1, args.text_len, sizes["text_states_dim"], device=device), mask,
                          torch.randn(1, sizes["text_states_dim_2"], device=device))
    freqs = get_rotary_pos_embed(args.video_length, height, width, model.rope_dim_list, model.patch_size)
    return model, latents, text, freqs


def timed_run(pipeline: HunyuanVideoPipeline, latents, text, freqs, steps: int) -> tuple[float, float, torch.Tensor, dict]:
    """One denoising loop: (wall seconds, this process's CPU seconds, final latents, extras).

    The CPU time of a single-threaded run (OMP_NUM_THREADS=1) is far less disturbed than the wall time when other
    jobs share the machine.
    """
    report = GenerationReport()
    synchronize = torch.cuda.synchronize if latents.is_cuda else (lambda: None)
    synchronize()
    cpu_start, start = time.process_time(), time.perf_counter()
    out = pipeline.denoise(latents, text, freqs, steps, embedded_guidance_scale=6.0, report=report, progress=False)
    synchronize()  # kernels are asynchronous on a GPU: the loop is over when they are
    seconds = time.perf_counter() - start
    return seconds, time.process_time() - cpu_start, out, {"measured_from_steps": report.measured_speedup()}


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
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
