"""Prompt adherence of the tiny Wan2.1 model on held-out prompts, without and with ``--delta_cache``.

For each of ``--num_prompts`` held-out evaluation prompts (wan/tiny/data.py: caption combinations never seen in
training) and seed ``--base_seed + i``, one process generates the video with full compute and with the built-in
cache profile (or ``--cache_profile``), interleaved; the adherence checker (wan/tiny/adherence.py) scores both
against the caption. Reported: colour / motion / shape accuracy of each mode, PSNR and SSIM of the cached video
against the full-compute one (same seed), the ideal speedup (block-call ratio) and the measured speedup of the
denoising loop (sum of full-compute loop times / sum of cached loop times, first prompt excluded as warm-up).
The pipeline is ``wan.text2video.WanT2V``, the same code path as ``generate.py --task t2v-tiny``.

Usage (from the repository root):

    python -m wan.tiny.evaluate [--num_prompts 60] [--json out.json] [--sheet docs/images/tiny_contact_sheet.png]
    python -m wan.tiny.evaluate --reference    # the checker on the generator's ground truth and on VAE round trips
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

from common_cache import CacheProfile, DeltaCache, attach_cache, detach_cache
from profilingdit.files import write_json_atomic
from profilingdit.metrics import video as video_metrics

from ..cache_profiles import builtin_profile_path
from ..configs import WAN_CONFIGS
from ..text2video import WanT2V
from . import adherence, data, sheet

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the checkout
TASK = "t2v-tiny"


def fidelity(cached: np.ndarray, full: np.ndarray, name: str) -> dict[str, float]:
    """PSNR (from the whole video's MSE) and SSIM of the cached video against the full one, on the uint8 frames
    that go into the mp4, by the project's metrics tool (as scripts/bench/runner.py reports them)."""
    metrics = video_metrics.compare(video_metrics.as_uint8_video(full), video_metrics.as_uint8_video(cached), name)
    return {"psnr": metrics["psnr_video"], "ssim": metrics["ssim"]}


def generate(pipeline: WanT2V, prompt: str, seed: int, steps: int, guide_scale: float):
    config = pipeline.config
    video, report = pipeline.generate(prompt, size=(64, 64), frame_num=config.frame_num, shift=config.sample_shift,
                                      sampling_steps=steps, guide_scale=guide_scale, seed=seed, progress=False)
    return adherence.as_unit_video(video), report


def evaluate(args: argparse.Namespace) -> dict:
    config = WAN_CONFIGS[TASK]
    steps = args.sample_steps or config.sample_steps
    pipeline = WanT2V(config, args.ckpt_dir, device="cpu")
    profile = CacheProfile.load(args.cache_profile or builtin_profile_path(TASK))
    profile.config.check_depths(pipeline.model.stream_group_depths())
    specs = data.eval_specs(args.num_prompts, args.prompt_seed)
    rows, full_scores, cached_scores, examples = [], [], [], []
    for index, spec in enumerate(specs):
        prompt, seed = data.caption(spec), args.base_seed + index
        detach_cache(pipeline.model)
        full, full_report = generate(pipeline, prompt, seed, steps, args.sample_guide_scale)
        cache = DeltaCache(profile.config)
        attach_cache(pipeline.model, cache)
        cached, cached_report = generate(pipeline, prompt, seed, steps, args.sample_guide_scale)
        detach_cache(pipeline.model)
        full_scores.append(adherence.score_caption(full, prompt))
        cached_scores.append(adherence.score_caption(cached, prompt))
        rows.append({
            "prompt": prompt, "seed": seed, "full_seconds": full_report.denoise_seconds,
            "cached_seconds": cached_report.denoise_seconds, "ideal_speedup": cache.stats.ideal_speedup,
            **fidelity(cached, full, prompt),
            "full": _score_dict(full_scores[-1]), "cached": _score_dict(cached_scores[-1]),
        })
        if index < args.sheet_rows:
            examples.append((prompt, full, cached))
        print(f"[{index + 1}/{len(specs)}] {prompt} | full {_short(full_scores[-1])} | cached "
              f"{_short(cached_scores[-1])} | psnr {rows[-1]['psnr']:.2f} ssim {rows[-1]['ssim']:.4f}", flush=True)
    timed = rows[1:] if len(rows) > 1 else rows  # the first prompt pays one-off warm-up costs
    result = {
        "task": TASK, "ckpt_dir": os.path.relpath(args.ckpt_dir, ROOT), "num_prompts": len(rows), "steps": steps,
        "shift": config.sample_shift, "guide_scale": args.sample_guide_scale, "profile": profile.config.tag(),
        "cached_blocks": list(profile.config.groups[0].cached_blocks), "threads": torch.get_num_threads(),
        "full": adherence.summarise(full_scores), "cached": adherence.summarise(cached_scores),
        "psnr_mean": float(np.mean([r["psnr"] for r in rows])), "ssim_mean": float(np.mean([r["ssim"] for r in rows])),
        "ideal_speedup": float(np.mean([r["ideal_speedup"] for r in rows])),
        "measured_speedup": sum(r["full_seconds"] for r in timed) / sum(r["cached_seconds"] for r in timed),
        "rows": rows,
    }
    if args.sheet:
        _write_sheet(args.sheet, examples)
    return result


def _score_dict(score: adherence.AdherenceScore) -> dict:
    found = [{"colour": o.colour, "motion": o.motion, "shape": o.shape, "pixels": o.pixels} for o in score.found]
    return {"colour": score.colour_correct, "motion": score.motion_correct, "shape": score.shape_correct,
            "found": found[:3]}


def _short(score: adherence.AdherenceScore) -> str:
    top = score.found[0] if score.found else None
    seen = f"{top.colour}/{top.shape}/{top.motion}" if top else "nothing"
    return f"c{score.colour_correct:.0f} m{score.motion_correct:.0f} s{score.shape_correct:.0f} ({seen})"


def _write_sheet(path: str, examples) -> None:
    videos, labels = [], []
    for prompt, full, cached in examples:
        videos += [full, cached]
        labels += [prompt, "same seed, --delta_cache"]
    image = sheet.contact_sheet(videos, labels, frames=(0, 4, 8, 12, 16), scale=2, label_width=220)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    sheet.save_png(image, path)


def reference_scores(args: argparse.Namespace) -> dict:
    """The checker's ceiling: scores of the generator's own videos and of their VAE round trips."""
    config = WAN_CONFIGS[TASK]
    pipeline = WanT2V(config, args.ckpt_dir, device="cpu")
    specs = data.eval_specs(args.num_prompts, args.prompt_seed)
    truth, recon = [], []
    for spec in specs:
        video, _ = data.render(spec)
        prompt = data.caption(spec)
        truth.append(adherence.score_caption(video, prompt))
        x = torch.from_numpy(data.to_model_range(video))
        with torch.no_grad():
            round_trip = pipeline.vae.decode(pipeline.vae.encode([x]))[0]
        recon.append(adherence.score_caption(round_trip, prompt))
    return {"ground_truth": adherence.summarise(truth), "vae_round_trip": adherence.summarise(recon)}


def markdown_table(result: dict) -> str:
    full, cached = result["full"], result["cached"]
    lines = [
        "| mode | colour | motion | shape | PSNR vs full (dB) | SSIM vs full | ideal speedup | measured speedup |",
        "|---|---|---|---|---|---|---|---|",
        f"| full compute | {full['colour']:.1%} | {full['motion']:.1%} | {full['shape']:.1%} | – | – | 1.00x | 1.00x |",
        f"| --delta_cache | {cached['colour']:.1%} | {cached['motion']:.1%} | {cached['shape']:.1%} | "
        f"{result['psnr_mean']:.2f} | {result['ssim_mean']:.4f} | {result['ideal_speedup']:.2f}x | "
        f"{result['measured_speedup']:.2f}x |",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    config = WAN_CONFIGS[TASK]
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt_dir", default=config.default_ckpt_dir)
    parser.add_argument("--num_prompts", type=int, default=60)
    parser.add_argument("--prompt_seed", type=int, default=20250, help="seed of the evaluation prompt list")
    parser.add_argument("--base_seed", type=int, default=0, help="prompt i is generated with seed base_seed + i")
    parser.add_argument("--sample_steps", type=int, default=None, help="default: the task's (50)")
    parser.add_argument("--sample_guide_scale", type=float, default=5.0)
    parser.add_argument("--cache_profile", default=None, help="default: the built-in t2v-tiny profile")
    parser.add_argument("--json", default=None, help="write the full results here")
    parser.add_argument("--sheet", default=None, help="write a contact sheet PNG of the first prompts here")
    parser.add_argument("--sheet_rows", type=int, default=6, help="prompts shown on the contact sheet")
    parser.add_argument("--reference", action="store_true", help="score ground truth and VAE round trips instead")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core CPU)")
    args = parser.parse_args(argv)
    if args.num_prompts < 1:
        parser.error(f"--num_prompts {args.num_prompts}: expected >= 1")
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    start = time.time()
    if args.reference:
        result = reference_scores(args)
        print(json.dumps(result, indent=2))
    else:
        result = evaluate(args)
        print(markdown_table(result))
        print(f"{result['num_prompts']} held-out prompts, {result['steps']} steps, profile {result['profile']} "
              f"(cached blocks {result['cached_blocks']}), {time.time() - start:.0f} s")
    if args.json:
        write_json_atomic(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
