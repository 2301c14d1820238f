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
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "Wan2.1"))
sys.path.insert(0, os.path.join(ROOT, "scripts"))  # profile_common, also when this file is loaded by path

from tqdm import tqdm  # noqa: E402

from common_cache.profiling import (  # noqa: E402
    ProfileStatistics,
    ProfilingRecorder,
    build_profile,
    plot_heatmap,
)
from profile_common import (  # noqa: E402
    add_decision_args,
    add_mask_args,
    check_decision_flags,
    cli_main,
    load_partial,
    make_mask_provider,
    make_settings,
    plot_refresh_schedules,
    profile_or_resume_later,
    run_metadata,
    write_json_atomic,
)
from profile_common import resolve_prompts as resolve_prompt_flags  # noqa: E402
from profile_common import run_key as resume_key  # noqa: E402
from wan.configs import SIZE_CONFIGS, SUPPORTED_SIZES, WAN_CONFIGS  # noqa: E402
from wan.profiling import classifier_free_guidance, profile_prompts  # noqa: E402
from wan.text2video import SAMPLE_SOLVERS  # noqa: E402

MODEL_NAMES = {"t2v-14B": "Wan2.1-T2V-14B", "t2v-1.3B": "Wan2.1-T2V-1.3B", "t2v-tiny": "Wan2.1-T2V-tiny"}
RESUME_KEYS = ("task", "size", "frame_num", "sample_solver", "sample_steps", "sample_shift", "sample_guide_scale",
               "base_seed", "prompts", "mask_provider", "mask_source", "mask_method", "mask_videos", "mask_pooling",
               "threshold", "attention_every", "reuse_every", "interval", "warmup")
TINY_PROMPT_SEED = 1234  # training-split captions of wan/tiny/data.py (evaluation uses the held-out split)


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
    prompts = parser.add_argument_group("profiling prompts")
    prompts.add_argument("--prompt", action="append", default=None, help="A profiling prompt (repeatable).")
    prompts.add_argument("--prompt_file", default=None, help="A text file with one prompt per line.")
    prompts.add_argument("--num_prompts", type=int, default=None,
                         help="Use the first N prompts (t2v-tiny without prompts: N training captions, default 8).")
    add_mask_args(parser)
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
    args.size = args.size or config.get("default_size", "1280*720")
    args.frame_num = args.frame_num or config.get("frame_num", 81)
    args.sample_steps = args.sample_steps or config.get("sample_steps", 50)
    args.sample_shift = args.sample_shift or config.get("sample_shift", 5.0)
    if args.size not in SUPPORTED_SIZES[args.task]:
        raise ValueError(
            f"--size {args.size} is not supported by task {args.task}: allowed {SUPPORTED_SIZES[args.task]}"
        )
    if args.frame_num < 1 or (args.frame_num - 1) % 4:
        raise ValueError(f"--frame_num {args.frame_num} is not allowed: expected 4n+1")
    check_decision_flags(args, args.sample_steps, "_", check_cache_k=lambda a: check_cache_k(a, config.num_layers))
    args.prompts = resolve_prompts(args)
    args.out = args.out or os.path.abspath(f"cache_profile_{args.task}.json")
    if not os.path.isdir(os.path.dirname(os.path.abspath(args.out))):
        raise ValueError(f"--out {args.out}: its folder does not exist")
    args.figures = args.figures or os.path.splitext(args.out)[0]


def check_cache_k(args: argparse.Namespace, depth: int) -> None:
    if args.cache_k is not None and not 1 <= args.cache_k < depth:
        raise ValueError(
            f"--cache_k {args.cache_k} is not allowed: expected 1..{depth - 1} (the model has {depth} blocks)"
        )


def resolve_prompts(args: argparse.Namespace) -> list[str]:
    return resolve_prompt_flags(args, "_", defaults=tiny_prompts if args.task == "t2v-tiny" else None)


def tiny_prompts(count: int | None) -> list[str]:
    from wan.tiny.data import caption, sample_spec

    return [caption(sample_spec(TINY_PROMPT_SEED, i)) for i in range(count or 8)]


def run_key(args: argparse.Namespace) -> dict:
    """What must match for --resume to continue a partial run."""
    return resume_key(args, RESUME_KEYS)


def run(args: argparse.Namespace, argv: list[str]) -> int:
    from wan.text2video import WanT2V

    mask_provider = make_mask_provider(args, WAN_CONFIGS[args.task].vae_stride[0])
    partial = args.out + ".partial.json"
    statistics = load_partial(args, partial, run_key(args))
    config = WAN_CONFIGS[args.task]
    start = time.perf_counter()
    pipeline = WanT2V(config=config, checkpoint_dir=args.ckpt_dir, t5_cpu=args.t5_cpu)
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

    generate_kwargs = dict(size=SIZE_CONFIGS[args.size], frame_num=args.frame_num, shift=args.sample_shift,
                           sample_solver=args.sample_solver, sampling_steps=args.sample_steps,
                           guide_scale=args.sample_guide_scale)
    return profile_or_resume_later(
        lambda: profile_prompts(pipeline, recorder, args.prompts, generate_kwargs, args.base_seed, saved, done,
                                query_chunk=args.query_chunk),
        bar, recorder, partial, len(args.prompts),
        lambda statistics: write_outputs(args, statistics, argv, time.perf_counter() - start))


def write_outputs(args: argparse.Namespace, statistics: ProfileStatistics, argv: list[str], seconds: float) -> None:
    config = WAN_CONFIGS[args.task]
    metadata = {
        "model": MODEL_NAMES.get(args.task, args.task), "task": args.task, "depth": config.num_layers,
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
