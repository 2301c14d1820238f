"""Does profiling pick good blocks? Acceptance measurements of the profiler on the tiny Wan2.1 model (CPU).

Subcommands (run from the repository root):

    python scripts/profile_wan_eval.py masks   --num_specs 6
        Mean IoU of the default mask provider (and its variants) against the data generator's ground-truth masks:
        (a) reconstruction: a rendered held-out video is encoded, noised to each sampler step's sigma and denoised
            once with its caption; the mask from the model's prediction is compared with the rendered masks;
        (b) generation: masks of a normal generation against the object pixels of the decoded video (the
            adherence checker's colour rule).
    python scripts/profile_wan_eval.py compare --profile Wan2.1/wan/cache_profiles/t2v-tiny.json --num_prompts 8
        PSNR against full compute, on held-out prompts, at equal computed block calls: the profile's cached list
        vs random lists of the same size, every contiguous span of that size, and the reverse choice (the most
        foreground-focused blocks); then the profile's refresh schedule vs a uniform interval with the same number
        of refreshes (and the other way round).

Results are printed as Markdown tables and written as JSON next to --out.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics as stats
import sys
import time

import numpy as np
import torch
from wan.cache_profiles import builtin_profile_path
from wan.configs import SIZE_CONFIGS, WAN_CONFIGS
from wan.profiling import classifier_free_guidance, profile_prompts
from wan.text2video import WanT2V
from wan.tiny.adherence import as_unit_video, colour_labels
from wan.tiny.data import caption, eval_specs, render, sample_spec, to_model_range
from wan.utils.fm_solvers_unipc import FlowUniPCMultistepScheduler

from common_cache import (
    CacheConfig,
    CacheProfile,
    DeltaCache,
    StepListSchedule,
    StreamGroupConfig,
    UniformSchedule,
    attach_cache,
    detach_cache,
    parse_int_list,
)
from common_cache.profiling import (
    PCAMaskProvider,
    ProfilingRecorder,
    StepView,
    mask_iou,
    pixel_to_latent_mask,
    pool_to_tokens,
    refresh_steps_from_change,
    split_blocks,
    uniform_refresh_count,
)
from profilingdit.metrics import video as video_metrics

TASK = "t2v-tiny"
PROFILING_PROMPT_SEED = 1234  # scripts/profile_wan.py's default t2v-tiny prompts (training split)
PROVIDERS = {
    "pca kmeans, clean estimate (default)": PCAMaskProvider("clean", "kmeans"),
    "pca otsu, clean estimate": PCAMaskProvider("clean", "otsu"),
    "pca kmeans, raw prediction": PCAMaskProvider("prediction", "kmeans"),
}


def load_pipeline(ckpt_dir: str | None) -> WanT2V:
    config = WAN_CONFIGS[TASK]
    return WanT2V(config=config, checkpoint_dir=ckpt_dir or config.default_ckpt_dir)


def sampling(args) -> dict:
    config = WAN_CONFIGS[TASK]
    return dict(size=SIZE_CONFIGS[config.default_size], frame_num=config.frame_num,
                shift=args.shift or config.sample_shift, sample_solver="unipc", sampling_steps=args.steps,
                guide_scale=args.guide_scale)


# ---------------------------------------------------------------------------------------------------------------
# masks


def ground_truth_latent(masks: np.ndarray, latent_shape) -> torch.Tensor:
    """Union of the objects' pixel masks -> foreground fractions on the latent grid [T, h, w]."""
    return pixel_to_latent_mask(torch.from_numpy(masks.any(axis=0)).float(), latent_shape, temporal_stride=4)


@torch.no_grad()
def reconstruction_ious(pipeline: WanT2V, args) -> dict:
    """(a): per provider, mean IoU over specs and steps (latent and token grid), per step too."""
    model, config = pipeline.model, WAN_CONFIGS[TASK]
    scheduler = FlowUniPCMultistepScheduler(num_train_timesteps=1000, shift=1)
    scheduler.set_timesteps(args.steps, shift=args.shift or config.sample_shift)
    sigmas = scheduler.sigmas[: args.steps].tolist()
    null = pipeline.text_encoder([config.sample_neg_prompt], torch.device("cpu"))
    results = {name: {"latent": [], "token": [], "by_step": {}} for name in [*PROVIDERS, "all foreground (baseline)"]}
    for index, spec in enumerate(eval_specs(args.num_specs)):
        video, masks = render(spec)
        x0 = pipeline.vae.encode([torch.from_numpy(to_model_range(video))])[0]  # [16, 5, 8, 8]
        truth = ground_truth_latent(masks, x0.shape[1:])
        context = pipeline.text_encoder([caption(spec)], torch.device("cpu"))
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(index))
        seq_len = x0.shape[1] * x0.shape[2] * x0.shape[3] // 4
        for step in range(0, args.steps, args.step_stride):
            sigma = sigmas[step]
            x_t = (1 - sigma) * x0 + sigma * noise
            t = torch.tensor([sigma * 1000.0])
            v_c = model([x_t], t=t, context=context, seq_len=seq_len)[0]
            v_u = model([x_t], t=t, context=null, seq_len=seq_len)[0]
            v = v_u + args.guide_scale * (v_c - v_u)
            view = StepView(step, args.steps, v, x_t - sigma * v)
            masks_by_name = {name: provider(view) for name, provider in PROVIDERS.items()}
            masks_by_name["all foreground (baseline)"] = torch.ones_like(truth)
            for name, mask in masks_by_name.items():
                add_iou(results[name], step, mask, truth)
    return summarise_ious(results, args.warmup)


def add_iou(store: dict, step: int, mask: torch.Tensor, truth: torch.Tensor) -> None:
    latent = mask_iou(mask, truth)
    token = mask_iou(pool_to_tokens(mask, (1, 2, 2)), pool_to_tokens(truth, (1, 2, 2)), threshold=None)
    store["latent"].append((step, latent))
    store["token"].append((step, token))
    store["by_step"].setdefault(step, []).append(latent)


def summarise_ious(results: dict, warmup: int) -> dict:
    summary = {}
    for name, store in results.items():
        summary[name] = {
            "latent_iou_all_steps": float(np.mean([v for _, v in store["latent"]])),
            "latent_iou_from_warmup": float(np.mean([v for s, v in store["latent"] if s >= warmup])),
            "token_iou_all_steps": float(np.mean([v for _, v in store["token"]])),
            "latent_iou_by_step": {int(s): round(float(np.mean(v)), 4) for s, v in sorted(store["by_step"].items())},
        }
    return summary


def generation_ious(pipeline: WanT2V, args, specs) -> dict:
    """(b): masks of each step of a generation vs the object pixels of the decoded video."""
    kwargs = sampling(args)
    out = {}
    for name, provider in PROVIDERS.items():
        recorder = ProfilingRecorder(provider, combine=classifier_free_guidance(args.guide_scale), keep_masks=True)
        ious, last = [], []
        for index, spec in enumerate(specs):
            videos = []
            original = pipeline.vae.decode

            def keep_decoded(zs, original=original):
                videos.append(original(zs))
                return videos[-1]

            pipeline.vae.decode = keep_decoded
            try:
                profile_prompts(pipeline, recorder, [caption(spec)], kwargs, base_seed=100 + index)
            finally:
                pipeline.vae.decode = original
            pixels = colour_labels(as_unit_video(videos[0][0])) >= 0  # [F, H, W]
            truth = pixel_to_latent_mask(torch.from_numpy(pixels).float(), recorder.masks[0].shape, 4)
            step_ious = [mask_iou(m, truth) for m in recorder.masks]
            ious += step_ious[args.warmup:]
            last.append(step_ious[-1])
            recorder.statistics = None
        out[name] = {"latent_iou_from_warmup": float(np.mean(ious)), "latent_iou_last_step": float(np.mean(last))}
    return out


def run_masks(args) -> dict:
    pipeline = load_pipeline(args.ckpt_dir)
    start = time.perf_counter()
    profiling_specs = [sample_spec(PROFILING_PROMPT_SEED, i) for i in range(args.num_specs)]
    result = {"reconstruction": reconstruction_ious(pipeline, args),
              "generation": generation_ious(pipeline, args, eval_specs(args.num_specs)),
              "generation_profiling_prompts": generation_ious(pipeline, args, profiling_specs)}
    result["seconds"] = round(time.perf_counter() - start, 1)
    print(f"\n| provider | reconstruction IoU (latent, all steps) | from step {args.warmup} | token soft IoU "
          f"(all steps) | generation IoU, held-out prompts (from step {args.warmup}) | last step | generation "
          f"IoU, profiling prompts (from step {args.warmup}) | last step |")
    print("|---|---|---|---|---|---|---|---|")
    nan = {"latent_iou_from_warmup": math.nan, "latent_iou_last_step": math.nan}
    for name, rec in result["reconstruction"].items():
        held = result["generation"].get(name, nan)
        train = result["generation_profiling_prompts"].get(name, nan)
        print(f"| {name} | {rec['latent_iou_all_steps']:.3f} | {rec['latent_iou_from_warmup']:.3f} | "
              f"{rec['token_iou_all_steps']:.3f} | {held['latent_iou_from_warmup']:.3f} | "
              f"{held['latent_iou_last_step']:.3f} | {train['latent_iou_from_warmup']:.3f} | "
              f"{train['latent_iou_last_step']:.3f} |")
    return result


# ---------------------------------------------------------------------------------------------------------------
# compare


def psnr(video: torch.Tensor, reference: torch.Tensor) -> float:
    """PSNR of two decoded videos ``[3, T, H, W]`` in [-1, 1], on their uint8 frames (the project's metrics tool)."""
    return video_metrics.psnr_video(*(video_metrics.as_uint8_video(as_unit_video(v)) for v in (reference, video)))


def generate(pipeline: WanT2V, prompt: str, seed: int, kwargs: dict, group: StreamGroupConfig | None):
    if group is not None:
        attach_cache(pipeline.model, DeltaCache(CacheConfig((group,))))
    try:
        video, _ = pipeline.generate(prompt, seed=seed, progress=False, offload_model=False, **kwargs)
    finally:
        detach_cache(pipeline.model)
    return video


def candidate_lists(profile: CacheProfile, args) -> dict[str, tuple[int, ...]]:
    group = profile.config.groups[0]
    depth, k = group.depth, len(group.cached_blocks)
    scores = np.asarray(profile.scores["blocks"], dtype=np.float64)
    rng = random.Random(args.seed)
    lists = {"profiled": group.cached_blocks,
             "reverse (most foreground-focused)": tuple(sorted(np.argsort(-scores, kind="stable")[:k].tolist()))}
    for stat, values in profile.metadata.get("profiler", {}).get("block_scores", {}).get("blocks", {}).items():
        lists[f"by {stat} (k lowest)"] = split_blocks(np.asarray(values, dtype=np.float64), cache_k=k)
    for path in args.extra_profile or []:
        extra = CacheProfile.load(path)
        settings = extra.metadata.get("profiler", {})
        rule = extra.metadata.get("high_attention", "?")
        label = f"profile {os.path.basename(path)} ({settings.get('statistic', '?')}, {rule})"
        lists[label] = extra.config.groups[0].cached_blocks
    for item in args.extra_list or []:
        name, _, text = item.partition("=")
        lists[name] = parse_int_list("extra_list", text)
    seen = {group.cached_blocks}
    while sum(name.startswith("random") for name in lists) < args.random_lists:
        candidate = tuple(sorted(rng.sample(range(depth), k)))
        if candidate not in seen:
            seen.add(candidate)
            lists[f"random {sum(n.startswith('random') for n in lists) + 1}"] = candidate
    for start in range(depth - k + 1):
        lists[f"span {start}..{start + k - 1}"] = tuple(range(start, start + k))
    return lists


def run_compare(args) -> dict:
    profile = CacheProfile.load(args.profile)
    group = profile.config.groups[0]
    pipeline = load_pipeline(args.ckpt_dir)
    kwargs = sampling(args)
    prompts = [caption(s) for s in eval_specs(args.num_prompts)]
    seeds = [1000 + i for i in range(len(prompts))]
    start = time.perf_counter()
    full = [generate(pipeline, p, s, kwargs, None) for p, s in zip(prompts, seeds)]
    warmup, interval = group.warmup_steps, args.interval
    uniform = UniformSchedule(interval)
    budget = uniform_refresh_count(interval, warmup, args.steps)
    curve = profile.metadata["profiler"]["step_change"]
    curve = np.asarray([np.nan if v is None else v for v in curve], dtype=np.float64)
    profiled_schedule = StepListSchedule(refresh_steps_from_change(curve, warmup, args.steps, budget))

    def mean_psnr(blocks, schedule) -> list[float]:
        config = StreamGroupConfig("blocks", group.depth, blocks, warmup, schedule)
        return [psnr(generate(pipeline, p, s, kwargs, config), f) for p, s, f in zip(prompts, seeds, full)]

    rows = {}
    for name, blocks in candidate_lists(profile, args).items():
        rows[name] = {"blocks": list(blocks), "psnr": mean_psnr(blocks, uniform)}
        print(f"{name:<40} {stats.mean(rows[name]['psnr']):7.3f} dB  {list(blocks)}", flush=True)
    schedules = {f"uniform interval {interval}": uniform, "profiled (step-change curve)": profiled_schedule}
    schedule_rows = {name: mean_psnr(group.cached_blocks, sch) for name, sch in schedules.items()}
    result = {"prompts": prompts, "seeds": seeds, "steps": args.steps, "warmup": warmup, "interval": interval,
              "refresh_budget": budget, "profiled_refresh_steps": list(profiled_schedule.steps),
              "uniform_refresh_steps": list(uniform.refresh_steps(warmup, args.steps)),
              "lists": rows, "schedules": schedule_rows, "seconds": round(time.perf_counter() - start, 1)}
    print_compare(result, len(group.cached_blocks), group.depth)
    return result


def print_compare(result: dict, k: int, depth: int) -> None:
    rows = result["lists"]
    mean = {name: stats.mean(row["psnr"]) for name, row in rows.items()}
    randoms = [v for n, v in mean.items() if n.startswith("random")]
    spans = {n: v for n, v in mean.items() if n.startswith("span")}
    print(f"\nPSNR vs full compute, {len(result['prompts'])} held-out prompts, {k} of {depth} blocks cached, "
          f"warm-up {result['warmup']}, uniform interval {result['interval']}, {result['steps']} steps")
    print("| cached list | mean PSNR (dB) |\n|---|---|")
    print(f"| profiled {rows['profiled']['blocks']} | {mean['profiled']:.2f} |")
    print(f"| random lists (mean of {len(randoms)}; min / max) | {stats.mean(randoms):.2f} "
          f"({min(randoms):.2f} / {max(randoms):.2f}) |")
    for name, value in spans.items():
        print(f"| contiguous {name} | {value:.2f} |")
    for name, row in rows.items():
        if not (name == "profiled" or name.startswith("random") or name.startswith("span")):
            print(f"| {name} {row['blocks']} | {mean[name]:.2f} |")
    print(f"\nrefresh schedules for the profiled list ({result['refresh_budget']} refreshes each)")
    print("| schedule | refresh steps | mean PSNR (dB) |\n|---|---|---|")
    steps = {"uniform": result["uniform_refresh_steps"], "profiled": result["profiled_refresh_steps"]}
    for name, values in result["schedules"].items():
        key = "uniform" if name.startswith("uniform") else "profiled"
        print(f"| {name} | {steps[key]} | {stats.mean(values):.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["masks", "compare"])
    parser.add_argument("--ckpt_dir", default=None)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--shift", type=float, default=None)
    parser.add_argument("--guide_scale", type=float, default=5.0)
    parser.add_argument("--warmup", type=int, default=6)
    parser.add_argument("--num_specs", type=int, default=6, help="masks: held-out videos")
    parser.add_argument("--step_stride", type=int, default=5, help="masks (a): every n-th sampler step")
    parser.add_argument("--profile", default=builtin_profile_path(TASK))
    parser.add_argument("--num_prompts", type=int, default=8, help="compare: held-out prompts")
    parser.add_argument("--random_lists", type=int, default=10)
    parser.add_argument("--interval", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--extra_profile", action="append", help="compare: also the cached list of this profile")
    parser.add_argument("--extra_list", action="append", help="compare: also NAME=0,1,2-5")
    parser.add_argument("--out", default=None, help="JSON results file")
    args = parser.parse_args()
    torch.manual_seed(0)
    result = run_masks(args) if args.command == "masks" else run_compare(args)
    result["command"] = "python scripts/profile_wan_eval.py " + " ".join(sys.argv[1:])
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
