"""What the budgeted profile buys: allocations of one block-call budget compared on fidelity (PSNR vs full).

At an equal number of block calls (so an equal ideal speedup), on held-out prompts of the tiny model:

* ``budgeted``: the shipped budgeted profile's steps (all blocks as one unit, refresh steps chosen by the search),
  with finite differences; ``budgeted, as shipped`` adds the profile's calibrated weights when it has them, and
  ``budgeted, as shipped, residual`` is that profile forecasting the stack's residual when it forecasts its output;
* ``uniform``: all blocks as one unit, the same number of computed steps spread evenly over the run (what the
  profile forecasts: its output or its residual);
* ``paper``: the paper's binary split (the R_attn profile's cached blocks, the others always computed), its cached
  blocks refreshed on evenly spread steps so that the calls match (only where the budget allows it);
* ``random-<seed>``: a random binary split with as many cached blocks as the paper's, otherwise like ``paper``;

each with forecasting on (order 1) and off (order 0, the paper's copy). Speed is not measured here: the block
calls are equal by construction; docs/benchmarks.md gives the measured speedups of the shipped profiles.

    python scripts/bench/allocation.py --profile t2v-tiny-2x --num_prompts 24 --json allocation_2x.json
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import numpy as np
from tqdm import tqdm

from common_cache import CacheConfig, CacheProfile, DeltaCache, StepListSchedule, StreamGroupConfig
from common_cache.profiling.budget import video_psnr
from profilingdit.files import write_json_atomic

TASK = "t2v-tiny"


def spread(count: int, num_steps: int) -> tuple[int, ...]:
    """``count`` steps spread evenly over ``0..num_steps-1`` (step 0 first)."""
    return tuple(sorted({int(round(x)) for x in np.linspace(0, num_steps - 1, count)}))


def binary_split(cached: tuple[int, ...], depth: int, budget: int, num_steps: int, order: int):
    """The cached blocks refreshed on evenly spread steps so that the block calls do not exceed ``budget``; None
    when the always-computed blocks alone exceed it."""
    computed_blocks = depth - len(cached)
    count = (budget - computed_blocks * num_steps) // len(cached)
    if count < 2:
        return None
    steps = spread(count, num_steps)  # starts at step 0, the warm-up's refresh
    return StreamGroupConfig("blocks", depth, cached, 0, StepListSchedule(steps[1:]), order)


def allocations(budgeted: StreamGroupConfig, paper_blocks: tuple[int, ...], num_steps: int,
                random_seeds: int) -> dict[str, StreamGroupConfig]:
    """Every compared allocation at the budgeted profile's block-call budget (forecasting on and off)."""
    unit = budgeted.resolved_units()[0]
    depth = budgeted.depth
    steps = (tuple(range(unit.warmup_steps)) + unit.schedule.refresh_steps(unit.warmup_steps, num_steps))
    budget = len(steps) * depth
    rng = np.random.default_rng(0)
    splits = {"paper": paper_blocks}
    for seed in range(random_seeds):
        splits[f"random-{seed}"] = tuple(sorted(rng.choice(depth, size=len(paper_blocks), replace=False).tolist()))
    # A profile with calibrated weights (a damped slope) also runs as shipped; "budgeted" is its steps with plain
    # finite differences.
    modes = {"budgeted, as shipped": budgeted} if unit.forecast_weights is not None else {}
    if budgeted.forecast_target == "output":
        modes["budgeted, as shipped, residual"] = dataclasses.replace(budgeted, forecast_target="residual")
    target = budgeted.forecast_target
    for order in (1, 0):
        suffix = "" if order else " (copy)"
        everything = tuple(range(depth))
        modes["budgeted" + suffix] = StreamGroupConfig("blocks", depth, everything, 0,
                                                       StepListSchedule(steps[1:]), order, forecast_target=target)
        even = spread(len(steps), num_steps)
        modes["uniform" + suffix] = StreamGroupConfig("blocks", depth, everything, 0, StepListSchedule(even[1:]),
                                                      order, forecast_target=target)
        for name, cached in splits.items():
            group = binary_split(cached, depth, budget, num_steps, order)
            if group is not None:
                modes[name + suffix] = group
    return modes


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="t2v-tiny-2x", help="Budgeted profile: a built-in name or a path.")
    parser.add_argument("--paper_profile", default="t2v-tiny", help="Profile whose cached blocks are the paper split.")
    parser.add_argument("--num_prompts", type=int, default=24, help="Held-out captions (prompt i uses seed i).")
    parser.add_argument("--random_seeds", type=int, default=3, help="Random binary splits.")
    parser.add_argument("--json", required=True, help="Output JSON.")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from wan.cache_profiles import resolve_profile_path
    from wan.configs import WAN_CONFIGS
    from wan.profiling import run_with_cache
    from wan.text2video import WanT2V

    from profilingdit.bench.runner import default_prompts, generation_settings

    if args.num_prompts < 1 or args.random_seeds < 0:
        raise SystemExit("--num_prompts must be >= 1 and --random_seeds >= 0")
    budgeted = CacheProfile.load(resolve_profile_path(args.profile)).config.groups[0]
    paper = CacheProfile.load(resolve_profile_path(args.paper_profile)).config.groups[0]
    config = WAN_CONFIGS[TASK]
    pipeline = WanT2V(config, config.default_ckpt_dir)
    settings = generation_settings(pipeline, argparse.Namespace(size=None, frame_num=None, sample_shift=None,
                                                                sample_steps=None, sample_solver="unipc",
                                                                sample_guide_scale=5.0))
    kwargs = {k: v for k, v in settings.items() if k not in ("offload_model", "progress")}
    modes = allocations(budgeted, paper.cached_blocks, settings["sampling_steps"], args.random_seeds)
    prompts = default_prompts(args.num_prompts)
    results = {name: [] for name in modes}
    calls = {}
    for index, prompt in enumerate(tqdm(prompts, desc="prompts")):
        full, _ = run_with_cache(pipeline, None, prompt, index, kwargs)
        for name, group in modes.items():
            cache = DeltaCache(CacheConfig((group,)))
            frames, _ = run_with_cache(pipeline, cache, prompt, index, kwargs)
            results[name].append(video_psnr(full, frames))
            calls[name] = cache.stats.computed_calls
    summary = {name: {"psnr_mean": float(np.mean(v)), "psnr_min": float(np.min(v)), "computed_calls": calls[name],
                      "ideal_speedup": 2 * settings["sampling_steps"] * budgeted.depth / calls[name]}
               for name, v in results.items()}
    write_json_atomic(args.json, {"profile": args.profile, "prompts": prompts, "summary": summary,
                                  "groups": {n: g.to_dict() for n, g in modes.items()}})
    for name, row in summary.items():
        print(f"| {name} | {row['computed_calls']} | {row['ideal_speedup']:.2f}x | {row['psnr_mean']:.2f} | "
              f"{row['psnr_min']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
