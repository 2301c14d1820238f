"""Profile HunyuanVideo text-to-video and write a cache profile (JSON) plus figures.

Generates one video per profiling prompt with the pipeline of ``sample_video.py`` (both text encoders, the
flow-matching sampler, embedded or real guidance; no VAE decode), measures in every double- and single-stream
block and step the attention each image token receives and the foreground ratio R_attn against foreground masks
taken from the model's own prediction, and the step-to-step change of the prediction. From these it picks the
background-focused blocks of each profiled stack and a refresh schedule, and writes a profile that
``sample_video.py --cache-profile`` reads. Method and options: docs/profiling.md.

    python scripts/profile_hunyuan.py --model-base ckpts --video-size 720 1280 --video-length 129 --infer-steps 50 \
        --flow-reverse --seed 42 --prompt-file prompts.txt --cache-k double:14 --cache-k single:24 \
        --refresh-budget auto --out hunyuan-720p.profiled.json
    python scripts/profile_hunyuan.py ... --groups single --cache-k 24 --out single.json   # the paper's setting

Sampling flags are ``sample_video.py``'s, with its defaults; prompt i runs with seed ``--seed + i`` (without
``--seed`` a random base seed is drawn, written to the metadata and kept by ``--resume``). One process only:
sequence parallelism would show each rank only a shard of the image tokens.

Safe to interrupt: finished prompts are kept in ``<out>.partial.json`` (``--resume`` continues from it) and every
output file is written under a temporary name and renamed.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import shlex
import sys
import time

import torch
from hyvideo.config import (
    add_denoise_schedule_args,
    add_extra_models_args,
    add_inference_args,
    add_network_args,
    add_parallel_args,
    sanity_check_args,
)
from hyvideo.inference import SEED_RANGE, component_paths, load_sampler, model_base
from hyvideo.modules.models import HUNYUAN_VIDEO_CONFIG
from hyvideo.profiling import HunyuanProfiling
from tqdm import tqdm

from common_cache.profiling import (
    ProfileStatistics,
    ProfilingRecorder,
    build_profile,
    plot_heatmap,
)
from common_cache.profiling.budget import budgeted_profile
from common_cache.profiling.session import record_prompts
from profilingdit.profiling_cli import (
    add_budget_args,
    add_decision_args,
    add_mask_args,
    budget_generations,
    check_budget_args,
    check_decision_flags,
    check_mask_flags,
    check_output_paths,
    check_seed_range,
    cli_main,
    make_mask_provider,
    make_settings,
    plot_refresh_schedules,
    profile_or_resume_later,
    read_partial,
    resolve_prompts,
    run_key,
    run_metadata,
    save_budgeted_profile,
    write_json_atomic,
)

GROUPS = ("double", "single")
RESUME_KEYS = ("model", "dit_weight", "dit_config", "load_key", "precision", "rope_theta", "text_len", "video_size",
               "video_length", "infer_steps", "flow_shift", "flow_reverse", "flow_solver", "embedded_cfg_scale",
               "cfg_scale", "neg_prompt", "seed", "prompts", "groups", "mask_provider", "mask_source", "mask_method",
               "mask_videos", "mask_pooling", "threshold", "attention_every", "reuse_every", "interval", "warmup")
NO_PROMPT_HINT = " (HunyuanVideo has no built-in prompt set: give your own, e.g. --prompt-file prompts.txt)"


# ---------------------------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """``sample_video.py``'s flags (kebab-case, same defaults; ``--prompt`` becomes repeatable) plus profiling."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], conflict_handler="resolve")
    for add in (add_network_args, add_extra_models_args, add_denoise_schedule_args, add_inference_args,
                add_parallel_args):
        add(parser)
    prompts = parser.add_argument_group("profiling prompts")
    prompts.add_argument("--seed", type=int, default=None,
                         help="Seed of prompt 0 (prompt i uses seed + i); none: a random base seed, kept by --resume.")
    prompts.add_argument("--prompt", action="append", default=None, help="A profiling prompt (repeatable).")
    prompts.add_argument("--prompt-file", default=None, help="A text file with one prompt per line.")
    prompts.add_argument("--num-prompts", type=int, default=None, help="Use the first N prompts.")
    add_mask_args(parser, "-")
    add_budget_args(parser, "-")
    cache_k = dict(action="append", default=None, metavar="K|GROUP:K",
                   help="Cache this many blocks: one integer for every profiled group, or GROUP:K (repeat the flag "
                        "per group; a group without K is split at its mean score).")
    decide = add_decision_args(parser, cache_k, "./cache_profile_hunyuan.json", "-")
    decide.add_argument("--groups", default=",".join(GROUPS),
                        help="Stream groups to profile, comma-separated: double,single (default) or single (the "
                             "paper's setting; the double-stream blocks then stay uncached).")
    return parser.parse_args(argv)


def validate(args: argparse.Namespace) -> None:
    """Checks every value before anything is loaded and fills the derived ones (``prompts``, ``groups``,
    ``cache_k``, ``refresh_budget``, ``rule``, ``out``, ``figures``). With ``--dit-config`` the depths are only known
    once the DiT is loaded: ``--cache-k`` is then checked against them before the first generation."""
    check_single_process(args)
    args.groups = parse_groups(args.groups)
    args.prompts = resolve_prompts(args, "-", missing_hint=NO_PROMPT_HINT)
    check_sampling_flags(args)
    args.cache_k = parse_cache_k(args.cache_k, args.groups)
    depths = official_depths(args)
    check_decision_flags(args, args.infer_steps, "-",
                         check_cache_k=None if depths is None else lambda a: check_cache_k(a, depths))
    if args.score_from_step is not None and not 0 <= args.score_from_step < args.infer_steps:
        raise ValueError(f"--score-from-step {args.score_from_step} is not allowed: expected "
                         f"0..{args.infer_steps - 1}")
    if args.query_chunk < 1:
        raise ValueError(f"--query-chunk {args.query_chunk} is not allowed: expected an integer >= 1")
    check_seed_range(args.seed, len(args.prompts), "--seed")
    check_budget_args(args, args.infer_steps, "-")
    check_mask_flags(args, "-")
    args.out = args.out or os.path.abspath("cache_profile_hunyuan.json")
    args.figures = args.figures or os.path.splitext(args.out)[0]
    check_output_paths(args)
    if not args.flow_reverse:
        logging.warning("profiling without --flow-reverse: every official script passes it, and the clean-latent "
                        "estimate of the masks assumes sampling from noise (t=1) to data (t=0)")


def check_single_process(args: argparse.Namespace) -> None:
    for name, value in (("--ulysses-degree", args.ulysses_degree), ("--ring-degree", args.ring_degree)):
        if value != 1:
            raise ValueError(f"{name} {value} is not allowed: profiling runs in one process (under sequence "
                             "parallelism each rank sees only a shard of the image tokens); use 1")
    if args.num_videos != 1:
        raise ValueError(f"--num-videos {args.num_videos} is not allowed: profiling generates one video per prompt "
                         "(give more prompts instead)")


def parse_groups(text: str) -> tuple[str, ...]:
    groups = tuple(dict.fromkeys(g.strip() for g in text.split(",") if g.strip()))
    unknown = [g for g in groups if g not in GROUPS]
    if not groups or unknown:
        raise ValueError(f"--groups {text} is not allowed: expected stream groups from {', '.join(GROUPS)} "
                         "(comma-separated, e.g. double,single or single)")
    return groups


def check_sampling_flags(args: argparse.Namespace) -> None:
    """``sample_video.py``'s own checks (``hyvideo.config.sanity_check_args``) on the sampling flags; its required
    single ``--prompt`` is our list of profiling prompts, checked by :func:`resolve_prompts`."""
    checked = sanity_check_args(argparse.Namespace(**{**vars(args), "prompt": args.prompts[0],
                                                      "teacache_thresh": None}))
    args.video_size, args.latent_channels = checked.video_size, checked.latent_channels


def parse_cache_k(values: list[str] | None, groups: tuple[str, ...]) -> int | dict[str, int] | None:
    """``--cache-k`` values: None, one integer for every group, or ``GROUP:K`` per group -> {group: K}."""
    if not values:
        return None
    if len(values) == 1 and ":" not in values[0]:
        if not values[0].isdigit():
            raise ValueError(f"--cache-k {values[0]} is not allowed: expected an integer, or GROUP:K per group "
                             "(e.g. --cache-k double:14 --cache-k single:24)")
        return int(values[0])
    per_group: dict[str, int] = {}
    for value in values:
        group, _, k = value.partition(":")
        if group not in groups or group in per_group or not k.isdigit():
            why = (f"{group!r} is not a profiled group (--groups {','.join(groups)})" if group not in groups else
                   f"group {group!r} is given twice" if group in per_group else "expected GROUP:K with an integer K")
            raise ValueError(f"--cache-k {value} is not allowed: {why}; give one integer for every group or GROUP:K "
                             "per group (e.g. --cache-k double:14 --cache-k single:24)")
        per_group[group] = int(k)
    return per_group


def official_depths(args: argparse.Namespace) -> dict[str, int] | None:
    """Blocks per stream group of ``--model``; None with ``--dit-config`` (the checkpoint defines them)."""
    if args.dit_config is not None:
        return None
    config = HUNYUAN_VIDEO_CONFIG[args.model]
    return {"double": config["mm_double_blocks_depth"], "single": config["mm_single_blocks_depth"]}


def check_cache_k(args: argparse.Namespace, depths: dict[str, int]) -> None:
    """Every group's K must leave at least one block computed."""
    for group in args.groups:
        k = args.cache_k.get(group) if isinstance(args.cache_k, dict) else args.cache_k
        if k is not None and not 1 <= k < depths[group]:
            shown = f"{group}:{k}" if isinstance(args.cache_k, dict) else str(k)
            raise ValueError(f"--cache-k {shown} is not allowed for group '{group}': expected 1..{depths[group] - 1} "
                             f"(the model has {depths[group]} {group}-stream blocks)")


# ---------------------------------------------------------------------------------------------------------------
# Profiling


def run(args: argparse.Namespace, argv: list[str]) -> int:
    """Loads the pipeline, profiles the prompts not done yet (saving after each) and writes the outputs."""
    if args.target_speedup is not None:
        return run_budgeted(args, argv)
    partial = args.out + ".partial.json"
    key = run_key(args, RESUME_KEYS)
    data = read_partial(args, partial, key)
    statistics = None if data is None else ProfileStatistics.from_dict(data["statistics"])
    args.base_seed = data["seed"] if data else draw_seed(args.seed)
    start = time.perf_counter()
    sampler = load_sampler(args, None)
    depths = sampler.model.stream_group_depths()
    if args.dit_config is not None:
        check_cache_k(args, depths)
    recorder = make_recorder(args, sampler)
    recorder.statistics = statistics
    done = len(statistics.prompts) if statistics else 0
    if done:
        logging.info("--resume: %d of %d prompts are done (%s)", done, len(args.prompts), partial)
    bar = tqdm(total=len(args.prompts), initial=done, desc="profiling prompts", unit="prompt")

    def saved(stats: ProfileStatistics) -> None:
        write_json_atomic({"run": key, "seed": args.base_seed, "statistics": stats.to_dict()}, partial)
        bar.update(1)

    return profile_or_resume_later(
        lambda: profile_prompts(args, sampler, recorder, done, saved), bar, recorder, partial, len(args.prompts),
        lambda statistics: write_outputs(args, statistics, depths, argv, time.perf_counter() - start))


def run_budgeted(args: argparse.Namespace, argv: list[str]) -> int:
    """``--target-speedup``: residual trajectories of the full model, the budgeted search, then the chosen profile
    run on the profiling prompts (docs/profiling.md, "Budgeted profiles")."""
    from common_cache import attach_cache, detach_cache

    start = time.perf_counter()
    args.base_seed = draw_seed(args.seed)
    sampler = load_sampler(args, None)
    seeds = [args.base_seed + i for i in range(len(args.prompts))]

    def generate(policy, prompt: str, seed: int):
        detach_cache(sampler.model)
        if policy is not None:
            attach_cache(sampler.model, policy)
        try:
            out = sampler.predict(
                prompt=prompt, height=args.video_size[0], width=args.video_size[1], video_length=args.video_length,
                seed=seed, negative_prompt=args.neg_prompt, infer_steps=args.infer_steps,
                guidance_scale=args.cfg_scale, flow_shift=args.flow_shift,
                embedded_guidance_scale=args.embedded_cfg_scale, progress=False)
        finally:
            detach_cache(sampler.model)
        video = out["samples"][0].permute(1, 2, 3, 0)  # [T, H, W, 3] in [0, 1]
        return (video * 255).round().clamp(0, 255).to(torch.uint8).numpy(), out["report"].denoise_seconds

    bar = tqdm(total=budget_generations(args), desc="budgeted profile (trajectories, closed-loop choice, check)",
               unit="video")
    config, search, measured = budgeted_profile(
        generate, args.prompts, seeds, sampler.model.stream_group_depths(), args.target_speedup,
        args.max_forecast_order, args.budget_layout, args.residual_elements, bar.update, args.damping,
        args.power, args.forecast_target)
    bar.close()
    facts = {"model": model_name(args), "depths": sampler.model.stream_group_depths(),
             "video_size": list(args.video_size), "video_length": args.video_length, "steps": args.infer_steps,
             "flow_shift": args.flow_shift, "flow_reverse": args.flow_reverse,
             "embedded_cfg_scale": args.embedded_cfg_scale, "cfg_scale": args.cfg_scale}
    save_budgeted_profile(args.out, config, search, measured, facts, args.prompts, seeds,
                          "python scripts/profile_hunyuan.py " + shlex.join(argv), time.perf_counter() - start)
    return 0


def draw_seed(seed: int | None) -> int:
    """``--seed``, or without it a random base seed (logged; the partial file keeps it for ``--resume``)."""
    if seed is not None:
        return seed
    seed = random.randint(0, SEED_RANGE)
    logging.info("no --seed: prompt i runs with seed %d + i", seed)
    return seed


def make_recorder(args: argparse.Namespace, sampler) -> ProfilingRecorder:
    """The statistics collector of the profiled groups; the adapter hands it one (guided) prediction per step."""
    mask_provider = make_mask_provider(args, sampler.pipeline.vae.config.time_compression_ratio, "-")
    return ProfilingRecorder(mask_provider, patch_size=sampler.model.patch_size, rule=args.rule,
                             pooling=args.mask_pooling, groups=args.groups, attention_every=args.attention_every,
                             reuse_interval=args.interval if args.reuse_every else 0, reuse_start=args.warmup,
                             reuse_every=max(1, args.reuse_every))


def profile_prompts(args: argparse.Namespace, sampler, recorder: ProfilingRecorder, skip: int,
                    on_prompt_done) -> ProfileStatistics:
    """Generates prompts ``skip..`` (latents only) inside :class:`HunyuanProfiling`; ``on_prompt_done`` gets the
    statistics after each prompt."""
    def generate(index: int) -> None:
        sampler.predict(
            prompt=args.prompts[index], height=args.video_size[0], width=args.video_size[1],
            video_length=args.video_length, seed=args.base_seed + index, negative_prompt=args.neg_prompt,
            infer_steps=args.infer_steps, guidance_scale=args.cfg_scale, flow_shift=args.flow_shift,
            embedded_guidance_scale=args.embedded_cfg_scale, progress=False, decode=False)

    with HunyuanProfiling(sampler.model, recorder, guidance_scale=args.cfg_scale, query_chunk=args.query_chunk):
        return record_prompts(recorder, args.prompts, generate, skip,
                              lambda index, statistics: on_prompt_done(statistics))


# ---------------------------------------------------------------------------------------------------------------
# Outputs


def model_name(args: argparse.Namespace) -> str:
    if args.dit_config is None:
        return f"HunyuanVideo-T2V-720p ({args.model})"
    return f"HunyuanVideo DiT (--dit-config {os.path.basename(args.dit_config)})"


def write_outputs(args: argparse.Namespace, statistics: ProfileStatistics, depths: dict[str, int], argv: list[str],
                  seconds: float) -> None:
    """The profile JSON, one heatmap per profiled group and the step-change curve."""
    metadata = {
        "model": model_name(args),
        "dit_weight": component_paths(args, model_base(args))["dit_weight"],
        "dit_config": args.dit_config,
        "depths": dict(depths), "groups": list(args.groups), "video_size": list(args.video_size),
        "video_length": args.video_length, "flow_shift": args.flow_shift, "flow_reverse": args.flow_reverse,
        "embedded_cfg_scale": args.embedded_cfg_scale, "cfg_scale": args.cfg_scale,
        **run_metadata(args, "profile_hunyuan.py", argv, seconds),
    }
    profile = build_profile(statistics, make_settings(args), metadata)
    profile.save(args.out)
    for group in profile.config.groups:
        plot_heatmap(statistics.heatmap(group.name, args.statistic), f"{args.figures}_heatmap_{group.name}.png",
                     group.cached_blocks, label=args.statistic,
                     title=f"{metadata['model']}, {group.name}-stream blocks: {args.statistic} per block and step "
                           f"({len(args.prompts)} prompts)")
        logging.info("%s: cached blocks %s of %d; refresh steps %s", group.name, list(group.cached_blocks),
                     group.depth, list(group.refresh_steps(statistics.num_steps)))
        logging.info("%s: %s per block: %s", group.name, args.statistic, profile.scores[group.name])
    refresh = profile.config.groups[0].refresh_steps(statistics.num_steps)  # one schedule for every group
    plot_refresh_schedules(statistics, refresh, args, args.figures + "_step_change.png",
                           title=f"{metadata['model']}: step-to-step change of the guided prediction")
    logging.info("wrote %s, %s_heatmap_{%s}.png, %s_step_change.png (%.1f s)", args.out, args.figures,
                 ",".join(args.groups), args.figures, seconds)


def main(argv: list[str] | None = None) -> int:
    return cli_main(parse_args, validate, run, argv)


if __name__ == "__main__":
    sys.exit(main())
