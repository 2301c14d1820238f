"""Does the cache keep its speedup under sequence parallelism? Cached/full loop time, one process vs N (CPU, gloo).

The denoising loops are the ones of scripts/bench/wan_cache.py (Wan2.1: UniPC, two guidance branches, the paper's
14B block list scaled to the depth, warm-up 6, refresh every 6 steps) and scripts/bench/hunyuan_cache.py
(HunyuanVideo: the pipeline's Euler loop, the paper's profile scaled to the depths), on the same random mid-size
models. Each configuration runs in its own launch, one after the other:

1. one process: full and cached loops alternate (``--repeats`` pairs after an untimed warm-up);
2. ``torchrun --nproc_per_node=N``, Ulysses U x ring R = N: the same, every rank on its shard of the sequence.

Every process runs ``OMP_NUM_THREADS`` threads (default 1), so the N-process run uses N times the cores of the
one-process run; the ratios compare each launch with itself. Reported per launch: the median loop times, the
cached/full ratio and speedup, and how much of the one-process speedup the parallel run keeps (target: at least
90 %). Run it on a quiet machine (the timings are wall times; the defaults take about 6 minutes).

    python scripts/bench/sp_cache.py                                   # Wan2.1, 2 processes, ring 2
    python scripts/bench/sp_cache.py --model hunyuan --ulysses 2 --ring 1
    python scripts/bench/sp_cache.py --steps 12 --repeats 1 --dim 64 --layers 8 --latent 16 3 8 8  # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from common_cache import attach_cache, detach_cache
from profilingdit.parallel import LaunchEnv, ParallelDegrees, init_sequence_parallel, shutdown

TARGET_RETENTION = 0.90


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["wan", "hunyuan"], default="wan")
    parser.add_argument("--ulysses", type=int, default=1, help="Ulysses degree of the parallel run.")
    parser.add_argument("--ring", type=int, default=2, help="Ring degree of the parallel run (U x R processes).")
    parser.add_argument("--steps", type=int, default=50, help="Denoising steps.")
    parser.add_argument("--repeats", type=int, default=3, help="Timed full/cached pairs per launch (median).")
    parser.add_argument("--dim", type=int, default=256, help="Hidden size (Wan dim / HunyuanVideo hidden).")
    parser.add_argument("--heads", type=int, default=4, help="Attention heads (divisible by --ulysses).")
    parser.add_argument("--layers", type=int, default=12,
                        help="Wan blocks; HunyuanVideo: single-stream blocks (double-stream: a third of it).")
    parser.add_argument("--latent", type=int, nargs=4, default=[16, 3, 24, 40], metavar=("C", "T", "H", "W"),
                        help="Latent shape (Wan: tokens = T*H*W/4; HunyuanVideo: H, W in latent pixels).")
    parser.add_argument("--json", type=str, default=None, help="Also write the results to this JSON file.")
    parser.add_argument("--worker", type=str, default=None, help=argparse.SUPPRESS)  # internal: result path
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------------------------
# One launch (a single process, or every rank of a torchrun)


def _wan_setup(args):
    """A loop closure over a random Wan2.1 DiT, and the DeltaCache it is timed with."""
    from common_cache import CacheConfig, DeltaCache, StreamGroupConfig, UniformSchedule
    from profilingdit.bench.wan_harness import denoise, random_model, scaled_paper_blocks

    model = random_model(args.dim, args.heads, args.layers, text_dim=args.dim)
    group = StreamGroupConfig("blocks", args.layers, scaled_paper_blocks(args.layers), 6, UniformSchedule(6))
    return model, DeltaCache(CacheConfig((group,))), lambda steps: denoise(model, args.latent, steps)[0]


def _hunyuan_setup(args):
    """A loop closure over a random HunyuanVideo DiT (through its pipeline), and the DeltaCache."""
    from hyvideo.diffusion.pipelines import HunyuanVideoPipeline
    from hyvideo.diffusion.schedulers import FlowMatchDiscreteScheduler

    from common_cache import DeltaCache
    from profilingdit.bench.hunyuan_harness import build_inputs, scaled_paper_profile, timed_run

    _, _, height, width = args.latent
    shape = argparse.Namespace(hidden=args.dim, heads=args.heads, double=max(1, args.layers // 3),
                               single=args.layers, video_size=(height * 8, width * 8),
                               video_length=(args.latent[1] - 1) * 4 + 1, text_len=256, prompt_tokens=32)
    model, latents, text, freqs = build_inputs(shape)
    pipeline = HunyuanVideoPipeline(model, FlowMatchDiscreteScheduler(shift=7.0, reverse=True))
    profile = scaled_paper_profile(shape.double, shape.single, args.steps)
    return model, DeltaCache(profile.config), lambda steps: timed_run(pipeline, latents, text, freqs, steps)[0]


def _timed(loop, steps: int, parallel: bool) -> float:
    if parallel:
        torch.distributed.barrier()  # every rank starts together; the loop's collectives keep them together
    start = time.perf_counter()
    loop(steps)
    if parallel:
        torch.distributed.barrier()
    return time.perf_counter() - start


def run_worker(args) -> None:
    """Times full and cached loops in this launch; rank 0 writes the JSON result to ``args.worker``."""
    env = LaunchEnv.from_environ()
    sp = init_sequence_parallel(ParallelDegrees(args.ulysses, args.ring), env) if env.world_size > 1 else None
    model, cache, loop = (_wan_setup if args.model == "wan" else _hunyuan_setup)(args)
    if sp is not None:
        if args.model == "wan":
            from wan.distributed import parallelize_wan_model

            parallelize_wan_model(model, sp)
        else:
            from hyvideo.parallel import parallelize_transformer

            parallelize_transformer(model, sp)
    times = {"full": [], "cached": []}
    with torch.inference_mode():
        _timed(loop, min(args.steps, 3), sp is not None)  # warm-up, untimed
        for _ in range(args.repeats):
            for mode in times:
                if mode == "full":
                    detach_cache(model)
                else:
                    attach_cache(model, cache)
                times[mode].append(_timed(loop, args.steps, sp is not None))
    buffers = [cache.stats.peak_buffer_bytes]
    if sp is not None:
        buffers = [None] * env.world_size
        torch.distributed.all_gather_object(buffers, cache.stats.peak_buffer_bytes)
    if env.rank == 0:
        full, cached = statistics.median(times["full"]), statistics.median(times["cached"])
        result = {"processes": env.world_size, "full_runs": times["full"], "cached_runs": times["cached"],
                  "full_seconds": full, "cached_seconds": cached, "ratio": cached / full, "speedup": full / cached,
                  "ideal_speedup": cache.stats.ideal_speedup, "peak_buffer_bytes_per_rank": buffers}
        with open(args.worker, "w") as handle:
            json.dump(result, handle)
    shutdown()


# ---------------------------------------------------------------------------------------------------------------
# The two launches and the report


def _launch(argv: list[str], processes: int, out: str) -> dict:
    env = {"OMP_NUM_THREADS": "1", **os.environ}  # the caller's thread count wins; torchrun's default is 1 too
    launcher = [sys.executable] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    subprocess.run([*launcher, os.path.abspath(__file__), *argv, "--worker", out], env=env, check=True)
    with open(out) as handle:
        return json.load(handle)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        run_worker(args)
        return 0
    degrees = ParallelDegrees(args.ulysses, args.ring)
    if degrees.size < 2 or args.heads % args.ulysses:
        raise SystemExit(f"--ulysses {args.ulysses} x --ring {args.ring} must be >= 2 processes and --ulysses must "
                         f"divide --heads {args.heads}")
    common = ["--model", args.model, "--steps", str(args.steps), "--repeats", str(args.repeats), "--dim",
              str(args.dim), "--heads", str(args.heads), "--layers", str(args.layers), "--latent",
              *map(str, args.latent), "--ulysses", str(args.ulysses), "--ring", str(args.ring)]
    with tempfile.TemporaryDirectory() as folder:
        single = _launch(common, 1, os.path.join(folder, "single.json"))
        parallel = _launch(common, degrees.size, os.path.join(folder, "parallel.json"))
    retention = parallel["speedup"] / single["speedup"]
    print(f"{args.model}: dim {args.dim}, {args.heads} heads, layers {args.layers}, latent {args.latent}, "
          f"{args.steps} steps, median of {args.repeats}, {os.environ.get('OMP_NUM_THREADS', '1')} thread(s) per "
          "process")
    print(f"{'launch':<22}{'full s':>9}{'cached s':>10}{'cached/full':>13}{'speedup':>9}{'ideal':>8}")
    for name, r in (("1 process", single), (f"{degrees.size} processes {degrees.tag()}", parallel)):
        print(f"{name:<22}{r['full_seconds']:>9.2f}{r['cached_seconds']:>10.2f}{r['ratio']:>13.3f}"
              f"{r['speedup']:>8.3f}x{r['ideal_speedup']:>7.3f}x")
    print(f"cache buffers per rank: {single['peak_buffer_bytes_per_rank'][0] / 2**20:.2f} MiB on 1 process, "
          f"{[round(b / 2**20, 2) for b in parallel['peak_buffer_bytes_per_rank']]} MiB under {degrees.tag()}")
    verdict = "meets" if retention >= TARGET_RETENTION else "misses"
    print(f"the parallel run keeps {retention:.1%} of the one-process cache speedup ({verdict} the "
          f"{TARGET_RETENTION:.0%} target)")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"args": vars(args), "single": single, "parallel": parallel, "retention": retention}, handle,
                      indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
