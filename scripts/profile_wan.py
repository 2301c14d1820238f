"""Profile a Wan2.1 text-to-video model and write a cache profile (JSON) plus figures.

Generates one video per profiling prompt with the real pipeline (T5, sampler, two guidance branches), measures in
every block and step the attention each image token receives and the foreground ratio R_attn against foreground
masks taken from the model's own prediction, and the step-to-step change of the prediction. From these it picks
the background-focused blocks to cache and a refresh schedule, and writes a profile that ``generate.py
--cache_profile`` reads. Method and options: docs/profiling.md.

    python scripts/profile_wan.py --task t2v-tiny --num_prompts 8 --out Wan2.1/wan/cache_profiles/t2v-tiny.json
    python scripts/profile_wan.py --task t2v-1.3B --ckpt_dir ./Wan2.1-T2V-1.3B --size 832*480 \
        --prompt_file prompts.txt --cache_k 20 --refresh_budget 8 --out t2v-1.3B.json

Safe to interrupt: finished prompts are kept in ``<out>.partial.json`` (``--resume`` continues from it) and every
output file is written under a temporary name and renamed.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import shlex
import sys
import time

from tqdm import tqdm
from wan.configs import MAX_AREA_CONFIGS, SIZE_CONFIGS, SUPPORTED_SIZES, WAN_CONFIGS, is_image_task
from wan.modules.model import ROPE_MAX_POSITIONS
from wan.profiling import (
    classifier_free_guidance,
    profile_prompts,
    run_with_cache,
)
from wan.text2video import SAMPLE_SOLVERS

from common_cache.profiling import (
    ProfileStatistics,
    ProfilingRecorder,
    build_profile,
    plot_heatmap,
)
from common_cache.profiling.budget import budgeted_profile
from profilingdit.profiling_cli import (
    add_budget_args,
    add_decision_args,
    add_mask_args,
    budget_generations,
    check_budget_args,
    check_decision_flags,
    check_output_paths,
    check_seed_range,
    cli_main,
    load_partial,
    make_mask_provider,
    make_settings,
    plot_refresh_schedules,
    profile_or_resume_later,
    run_metadata,
    save_budgeted_profile,
    write_json_atomic,
)
from profilingdit.profiling_cli import resolve_prompts as resolve_prompt_flags
from profilingdit.profiling_cli import run_key as resume_key

MODEL_NAMES = {"t2v-14B": "Wan2.1-T2V-14B", "t2v-1.3B": "Wan2.1-T2V-1.3B", "t2v-tiny": "Wan2.1-T2V-tiny",
               "i2v-14B": "Wan2.1-I2V-14B"}
RESUME_KEYS = ("task", "image", "size", "frame_num", "sample_solver", "sample_steps", "sample_shift",
               "sample_guide_scale", "base_seed", "prompts", "mask_provider", "mask_source", "mask_method",
               "mask_videos", "mask_pooling", "threshold", "attention_every", "reuse_every", "interval", "warmup")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    run = parser.add_argument_group("model and sampling (generate.py's flags and defaults)")
    run.add_argument("--task", default="t2v-tiny", choices=list(WAN_CONFIGS))
    run.add_argument("--ckpt_dir", default=None, help="Checkpoint folder (default: the task's, if it has one).")
    run.add_argument("--size", default=None, choices=list(SIZE_CONFIGS))
    run.add_argument("--frame_num", type=int, default=None)
    run.add_argument("--sample_solver", default="unipc", choices=list(SAMPLE_SOLVERS))
    run.add_argument("--sample_steps", type=int, default=None)
    run.add_argument("--sample_shift", type=float, default=None)
    run.add_argument("--sample_guide_scale", type=float, default=5.0)
    run.add_argument("--base_seed", type=int, default=0, help="Seed of prompt i is base_seed + i.")
    run.add_argument("--t5_cpu", action="store_true")
    run.add_argument("--image", default=None,
                     help="i2v tasks (required there): the first frame of every profiling video; --size is its area.")
    prompts = parser.add_argument_group("profiling prompts")
    prompts.add_argument("--prompt", action="append", default=None, help="A profiling prompt (repeatable).")
    prompts.add_argument("--prompt_file", default=None, help="A text file with one prompt per line.")
    prompts.add_argument("--num_prompts", type=int, default=None,
                         help="Use the first N prompts (t2v-tiny without prompts: N training captions, default 8).")
    add_mask_args(parser)
    add_budget_args(parser)
    add_decision_args(parser, dict(type=int, default=None, help="Cache this many blocks (compute budget)."),
                      "./cache_profile_<task>.json")
    return parser.parse_args(argv)


def validate(args: argparse.Namespace) -> None:
    """Fills task defaults and checks every value before anything is loaded."""
    config = WAN_CONFIGS[args.task]
    if args.ckpt_dir is None:
        if config.get("default_ckpt_dir") is None:
            raise ValueError(f"--ckpt_dir is required for --task {args.task}")
        args.ckpt_dir = config.default_ckpt_dir
    # "is None", not "or": an explicit 0 must be refused below, not replaced by the default
    args.size = config.get("default_size", "1280*720") if args.size is None else args.size
    args.frame_num = config.get("frame_num", 81) if args.frame_num is None else args.frame_num
    args.sample_steps = config.get("sample_steps", 50) if args.sample_steps is None else args.sample_steps
    if args.sample_shift is None and args.size in ("832*480", "480*832") and config.get("sample_shift_480p"):
        args.sample_shift = config.sample_shift_480p  # i2v at 480P, as generate.py
    args.sample_shift = config.get("sample_shift", 5.0) if args.sample_shift is None else args.sample_shift
    if args.size not in SUPPORTED_SIZES[args.task]:
        raise ValueError(
            f"--size {args.size} is not supported by task {args.task}: allowed {SUPPORTED_SIZES[args.task]}"
        )
    check_image(args)
    check_sampling_numbers(args, config)
    check_decision_flags(args, args.sample_steps, "_", check_cache_k=lambda a: check_cache_k(a, config.num_layers))
    check_budget_args(args, args.sample_steps)
    args.prompts = resolve_prompts(args)
    check_seed_range(args.base_seed, len(args.prompts), "--base_seed")
    args.out = args.out or os.path.abspath(f"cache_profile_{args.task}.json")
    args.figures = args.figures or os.path.splitext(args.out)[0]
    check_output_paths(args)


def check_sampling_numbers(args: argparse.Namespace, config) -> None:
    """generate.py's ranges for the sampling flags, and the profiler's own (before the decision flags, which are
    checked against ``--sample_steps``)."""
    max_frames = (ROPE_MAX_POSITIONS - 1) * config.vae_stride[0] + 1  # one RoPE row per latent frame
    if args.frame_num < 1 or (args.frame_num - 1) % 4 or args.frame_num > max_frames:
        raise ValueError(f"--frame_num {args.frame_num} is not allowed: expected 4n+1 in 1..{max_frames}")
    if args.sample_steps < 1:
        raise ValueError(f"--sample_steps {args.sample_steps} is not allowed: expected an integer >= 1")
    if not (math.isfinite(args.sample_shift) and args.sample_shift > 0):
        raise ValueError(f"--sample_shift {args.sample_shift} is not allowed: expected a finite number > 0")
    if not math.isfinite(args.sample_guide_scale):
        raise ValueError(f"--sample_guide_scale {args.sample_guide_scale} is not allowed: expected a finite number")
    if args.query_chunk < 1:
        raise ValueError(f"--query_chunk {args.query_chunk} is not allowed: expected an integer >= 1")
    if args.score_from_step is not None and not 0 <= args.score_from_step < args.sample_steps:
        raise ValueError(f"--score_from_step {args.score_from_step} is not allowed: expected "
                         f"0..{args.sample_steps - 1}")


def check_image(args: argparse.Namespace) -> None:
    """``--image``: required by the i2v tasks (a readable image), refused by the others."""
    from wan.image2video import load_image

    if not is_image_task(args.task):
        if args.image is not None:
            raise ValueError(f"--image is only used by the image-to-video tasks; task {args.task} is text-to-video")
        return
    if args.image is None:
        raise ValueError(f"--image is required for task {args.task}: the first frame of the profiling videos")
    load_image(args.image)


def sampling_kwargs(args: argparse.Namespace) -> dict:
    """The pipeline's generate() arguments besides prompt and seed (i2v: the image and its maximum area)."""
    kwargs = dict(frame_num=args.frame_num, shift=args.sample_shift, sample_solver=args.sample_solver,
                  sampling_steps=args.sample_steps, guide_scale=args.sample_guide_scale)
    if not is_image_task(args.task):
        return dict(size=SIZE_CONFIGS[args.size], **kwargs)
    from wan.image2video import load_image

    return dict(img=load_image(args.image), max_area=MAX_AREA_CONFIGS[args.size], **kwargs)


def check_cache_k(args: argparse.Namespace, depth: int) -> None:
    if args.cache_k is not None and not 1 <= args.cache_k < depth:
        raise ValueError(
            f"--cache_k {args.cache_k} is not allowed: expected 1..{depth - 1} (the model has {depth} blocks)"
        )


def resolve_prompts(args: argparse.Namespace) -> list[str]:
    from wan.tiny.data import profiling_prompts

    return resolve_prompt_flags(args, "_", defaults=profiling_prompts if args.task == "t2v-tiny" else None)


def run_key(args: argparse.Namespace) -> dict:
    """What must match for --resume to continue a partial run."""
    return resume_key(args, RESUME_KEYS)


def run(args: argparse.Namespace, argv: list[str]) -> int:
    from wan.image2video import WanI2V
    from wan.text2video import WanT2V

    if args.target_speedup is not None:
        pipeline = (WanI2V if is_image_task(args.task) else WanT2V)(config=WAN_CONFIGS[args.task],
                                                                    checkpoint_dir=args.ckpt_dir, t5_cpu=args.t5_cpu)
        return run_budgeted(args, argv, pipeline)
    mask_provider = make_mask_provider(args, WAN_CONFIGS[args.task].vae_stride[0])
    partial = args.out + ".partial.json"
    statistics = load_partial(args, partial, run_key(args))
    config = WAN_CONFIGS[args.task]
    start = time.perf_counter()
    pipeline = (WanI2V if is_image_task(args.task) else WanT2V)(config=config, checkpoint_dir=args.ckpt_dir,
                                                                t5_cpu=args.t5_cpu)
    recorder = ProfilingRecorder(mask_provider, patch_size=config.patch_size, rule=args.rule,
                                 pooling=args.mask_pooling, combine=classifier_free_guidance(args.sample_guide_scale),
                                 attention_every=args.attention_every,
                                 reuse_interval=args.interval if args.reuse_every else 0, reuse_start=args.warmup,
                                 reuse_every=max(1, args.reuse_every))
    recorder.statistics = statistics
    done = len(statistics.prompts) if statistics else 0
    bar = tqdm(total=len(args.prompts), initial=done, desc="profiling prompts", unit="prompt")

    def saved(index: int, stats: ProfileStatistics) -> None:
        write_json_atomic({"run": run_key(args), "statistics": stats.to_dict()}, partial)
        bar.update(1)

    generate_kwargs = sampling_kwargs(args)
    return profile_or_resume_later(
        lambda: profile_prompts(pipeline, recorder, args.prompts, generate_kwargs, args.base_seed, saved, done,
                                query_chunk=args.query_chunk),
        bar, recorder, partial, len(args.prompts),
        lambda statistics: write_outputs(args, statistics, argv, time.perf_counter() - start))


def run_budgeted(args: argparse.Namespace, argv: list[str], pipeline) -> int:
    """``--target_speedup``: residual trajectories of the full model, the budgeted search, then the chosen profile
    run on the profiling prompts (docs/profiling.md, "Budgeted profiles")."""
    start = time.perf_counter()
    kwargs = sampling_kwargs(args)
    seeds = [args.base_seed + i for i in range(len(args.prompts))]
    bar = tqdm(total=budget_generations(args), desc="budgeted profile (trajectories, closed-loop choice, check)",
               unit="video")
    config, search, measured = budgeted_profile(
        lambda policy, prompt, seed: run_with_cache(pipeline, policy, prompt, seed, kwargs), args.prompts, seeds,
        pipeline.model.stream_group_depths(), args.target_speedup, args.max_forecast_order, args.budget_layout,
        args.residual_elements, bar.update, args.damping, args.power, args.forecast_target)
    bar.close()
    facts = {"model": MODEL_NAMES.get(args.task, args.task), "task": args.task,
             "depth": WAN_CONFIGS[args.task].num_layers, "size": args.size, "frame_num": args.frame_num,
             "sample_solver": args.sample_solver, "sample_shift": args.sample_shift,
             "sample_guide_scale": args.sample_guide_scale, "steps": args.sample_steps}
    save_budgeted_profile(args.out, config, search, measured, facts, args.prompts, seeds,
                          "python scripts/profile_wan.py " + shlex.join(argv), time.perf_counter() - start)
    return 0


def write_outputs(args: argparse.Namespace, statistics: ProfileStatistics, argv: list[str], seconds: float) -> None:
    config = WAN_CONFIGS[args.task]
    metadata = {
        "model": MODEL_NAMES.get(args.task, args.task), "task": args.task, "depth": config.num_layers,
        **({"image": args.image} if args.image is not None else {}),
        "size": args.size, "frame_num": args.frame_num, "sample_solver": args.sample_solver,
        "sample_shift": args.sample_shift, "sample_guide_scale": args.sample_guide_scale,
        **run_metadata(args, "profile_wan.py", argv, seconds),
    }
    profile = build_profile(statistics, make_settings(args), metadata)
    profile.save(args.out)
    group = profile.config.groups[0]
    refresh = group.refresh_steps(statistics.num_steps)
    plot_heatmap(statistics.heatmap("blocks", args.statistic), args.figures + "_heatmap.png", group.cached_blocks,
                 title=f"{metadata['model']}: {args.statistic} per block and step ({len(args.prompts)} prompts)")
    plot_refresh_schedules(statistics, refresh, args, args.figures + "_step_change.png",
                           title=f"{metadata['model']}: step-to-step change of the guided prediction")
    logging.info("cached blocks %s of %d; refresh steps %s", list(group.cached_blocks), group.depth, list(refresh))
    logging.info("%s per block: %s", args.statistic, [round(s, 3) for s in profile.scores["blocks"]])
    logging.info("wrote %s, %s_heatmap.png, %s_step_change.png (%.1f s)", args.out, args.figures, args.figures,
                 seconds)


def main(argv: list[str] | None = None) -> int:
    return cli_main(parse_args, validate, run, argv)


if __name__ == "__main__":
    sys.exit(main())
