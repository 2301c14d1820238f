"""Benchmark runner: prompts x seeds x cache modes on a Wan2.1 checkpoint (the tiny trained model by default).

Command line of :mod:`profilingdit.bench.runner` (modes, records and summaries are described there).

    python scripts/bench/runner.py --out_dir bench/tiny --num_prompts 20 --seeds 42 \
        --modes full,delta,tea --teacache_thresh 0.05 0.1 0.2 --teacache_coefficients fit.json \
        --cache_profile profile.json
    python scripts/bench/runner.py --out_dir bench/peers --modes full,delta,dfull,fbc:0.1,mag:0.1,taylorlite:3,pab,\
dbcache-ts:0.2
    python scripts/bench/runner.py --out_dir bench/tiny --summarize_only --plot docs/images/tiny_speed_psnr.png
"""

from __future__ import annotations

import argparse
import os
import sys

from profilingdit.bench.runner import DEFAULT_TASK, read_runs, run_benchmark, write_summary


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default=DEFAULT_TASK, help="Wan2.1 task (default: the tiny model).")
    parser.add_argument("--ckpt_dir", default=None, help="Checkpoint folder (default: the task's).")
    parser.add_argument("--prompts", default=None, help="Prompt file, one per line (default: held-out captions).")
    parser.add_argument("--num_prompts", type=int, default=20, help="Held-out captions to use without --prompts.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--modes", default="full,delta,tea",
                        help="Comma list of full, delta, tea, tea:<T> and the diffusers peers dfull, fbc:<T>, mag:<T>, "
                             "taylor:<N>, taylorlite:<N>, pab, dbcache:<T>, dbcache-ts:<T> "
                             "(profilingdit/bench/peers.py).")
    parser.add_argument("--teacache_thresh", type=float, nargs="*", default=None, help="Thresholds for mode tea.")
    parser.add_argument("--teacache_coefficients", default=None, help="scripts/fit_teacache.py JSON.")
    parser.add_argument("--use_ret_steps", action="store_true", help="TeaCache on e0, first 5 steps forced.")
    parser.add_argument("--cache_profile", default=None, help="Delta cache profile (default: the built-in one).")
    parser.add_argument("--size", default=None)
    parser.add_argument("--frame_num", type=int, default=None)
    parser.add_argument("--sample_steps", type=int, default=None)
    parser.add_argument("--sample_shift", type=float, default=None)
    parser.add_argument("--sample_solver", default="unipc")
    parser.add_argument("--sample_guide_scale", type=float, default=5.0)
    parser.add_argument("--warmup", type=int, default=1, help="Unrecorded full generations first.")
    parser.add_argument("--repeats", type=int, default=1, help="Timed runs per (mode, prompt, seed); median kept.")
    parser.add_argument("--out_dir", default="bench_out")
    parser.add_argument("--plot", default=None, help="Scatter PNG path (default: <out_dir>/speed_psnr.png).")
    parser.add_argument("--title", default=None, help="Plot title.")
    parser.add_argument("--summarize_only", action="store_true", help="Only rebuild the table and plot.")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.summarize_only:
            runs = read_runs(os.path.join(args.out_dir, "runs.jsonl"))
            if not runs:
                raise FileNotFoundError(f"no runs in {args.out_dir}/runs.jsonl")
        else:
            runs = run_benchmark(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    pairs = len({(r["prompt"], r["seed"]) for r in runs})
    title = args.title or f"{args.task}: speed vs fidelity ({pairs} prompt-seed pairs)"
    print(write_summary(runs, args.out_dir, args.plot, title), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
