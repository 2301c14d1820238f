"""Benchmark runner: prompts x seeds x cache modes on a Wan2.1 checkpoint (the tiny trained model by default).

Modes: ``full`` (no cache), ``delta`` (ProfilingDiT delta cache with a profile) and ``tea-<T>`` (TeaCache at
threshold T), run in one process on one loaded pipeline, interleaved per prompt and seed (full first), after
``--warmup`` unrecorded generations. Per run it records the denoising-loop latency and the whole generation's,
the speedup against full on the same prompt and seed, block calls computed/skipped (ideal speedup), the cache
buffers' peak and the process memory peak, PSNR/SSIM against the full run's frames (the uint8 frames that go into
the mp4, before encoding), prompt adherence when the tiny model's checker is available, and the output paths.
Each run is appended as one JSON line to ``<out_dir>/runs.jsonl``; runs already there are skipped (resumable).
Then the runs are summarised into ``summary.md`` (one row per mode) and a speed-vs-PSNR scatter ``speed_psnr.png``.

    python scripts/bench_runner.py --out_dir bench/tiny --num_prompts 20 --seeds 42 \
        --modes full,delta,tea --teacache_thresh 0.05 0.1 0.2 --teacache_coefficients fit.json \
        --cache_profile profile.json
    python scripts/bench_runner.py --out_dir bench/tiny --summarize_only --plot docs/images/tiny_speed_psnr.png
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

SCRIPTS = os.path.dirname(os.path.abspath(__file__))
WAN_DIR = os.path.join(os.path.dirname(SCRIPTS), "Wan2.1")
for path in (SCRIPTS, WAN_DIR):
    if path not in sys.path:
        sys.path.insert(0, path)

import video_metrics  # noqa: E402
from common_cache import CacheProfile, DeltaCache, attach_cache, detach_cache  # noqa: E402
from common_cache.teacache import TeaCache, load_coefficients, wan_teacache_config  # noqa: E402

DEFAULT_TASK = "t2v-tiny"


@dataclass(frozen=True)
class Mode:
    """One benchmark mode: ``full``, ``delta`` or ``teacache`` (with its threshold)."""

    name: str
    kind: str
    threshold: float | None = None


def parse_modes(text: str, thresholds: list[float]) -> list[Mode]:
    """``"full,delta,tea"`` -> modes; ``tea`` expands to one mode per threshold, ``tea:0.1`` names one.

    Raises:
        ValueError: an unknown mode, ``tea`` without thresholds, or a duplicate.
    """
    modes = [Mode("full", "full")]
    for item in (s.strip() for s in text.split(",") if s.strip()):
        if item == "full":
            continue
        if item == "delta":
            modes.append(Mode("delta", "delta"))
        elif item == "tea" or item.startswith("tea:"):
            values = thresholds if item == "tea" else [_float("modes", item[4:])]
            if not values:
                raise ValueError("--modes tea needs --teacache_thresh T [T ...] (or name one: tea:0.1)")
            modes += [Mode(f"tea-{t:g}", "teacache", t) for t in values]
        else:
            raise ValueError(f"--modes: {item!r} is not allowed: expected full, delta, tea or tea:<threshold>")
    names = [m.name for m in modes]
    if len(set(names)) != len(names):
        raise ValueError(f"--modes gives a mode twice: {names}")
    return modes


def _float(field: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"--{field}: {text!r} is not a number") from None


def default_prompts(count: int) -> list[str]:
    """Held-out captions of the tiny model (combinations never seen in training)."""
    from wan.tiny.data import caption, eval_specs

    return [caption(spec) for spec in eval_specs(count)]


def read_prompts(path: str) -> list[str]:
    """One prompt per non-empty line."""
    with open(path, encoding="utf-8") as handle:
        prompts = [line.strip() for line in handle if line.strip()]
    if not prompts:
        raise ValueError(f"--prompts {path} holds no prompt (one per line expected)")
    return prompts


def slug(prompt: str, limit: int = 60) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", prompt).strip("_")[:limit] or "prompt"


def load_pipeline(task: str, ckpt_dir: str | None):
    """The Wan2.1 pipeline of ``task`` from ``ckpt_dir`` (default: the task's default folder)."""
    from wan.configs import WAN_CONFIGS
    from wan.text2video import WanT2V

    if task not in WAN_CONFIGS:
        raise ValueError(f"--task {task!r} is not allowed: expected one of {sorted(WAN_CONFIGS)}")
    config = WAN_CONFIGS[task]
    ckpt_dir = ckpt_dir or config.get("default_ckpt_dir")
    if ckpt_dir is None:
        raise ValueError(f"--ckpt_dir is required for --task {task}")
    return WanT2V(config=config, checkpoint_dir=ckpt_dir), ckpt_dir


def generation_settings(pipeline, args) -> dict:
    """Keyword arguments of ``WanT2V.generate`` from the task's defaults and the flags."""
    from wan.configs import SIZE_CONFIGS

    config = pipeline.config
    return {"size": SIZE_CONFIGS[args.size or config.get("default_size", "1280*720")],
            "frame_num": args.frame_num or config.get("frame_num", 81),
            "shift": args.sample_shift or config.get("sample_shift", 5.0),
            "sampling_steps": args.sample_steps or config.get("sample_steps", 50),
            "sample_solver": args.sample_solver, "guide_scale": args.sample_guide_scale,
            "offload_model": False, "progress": False}


# ------------------------------------------------------------------------------------------------- caches


def resolve_profile(args, task: str) -> CacheProfile:
    """The delta cache profile: ``--cache_profile``, else the task's built-in one."""
    if args.cache_profile:
        return CacheProfile.load(args.cache_profile)
    from wan.cache_profiles import builtin_profile

    profile = builtin_profile(task)
    if profile is None:
        raise ValueError(f"mode delta: there is no built-in cache profile for {task}: pass --cache_profile PATH")
    return profile


def teacache_settings(args, task: str) -> tuple[tuple[float, ...] | None, str]:
    """(coefficients or None for the task's published/uncalibrated ones, their source)."""
    if not args.teacache_coefficients:
        return None, ""
    indicator = "e0" if args.use_ret_steps else "e"
    return load_coefficients(args.teacache_coefficients, indicator), f"fitted ({args.teacache_coefficients})"


def make_cache(mode: Mode, profile: CacheProfile | None, task: str, args, coefficients, source):
    if mode.kind == "delta":
        return DeltaCache(profile.config)
    if mode.kind == "teacache":
        return TeaCache(wan_teacache_config(task, mode.threshold, args.use_ret_steps, coefficients, source))
    return None


# ------------------------------------------------------------------------------------------------- one run


def peak_rss_bytes() -> int:
    """The process's peak resident memory so far (Linux reports KiB); monotonic over the whole process."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def generate(pipeline, cache, prompt: str, seed: int, settings: dict):
    """One generation with ``cache`` attached (None: full compute).

    Returns:
        (video [3, F, H, W] in [-1, 1], its uint8 frames [F, H, W, 3] as generate.py writes them, report, peak
        accelerator memory in bytes or None on a CPU).
    """
    from wan.utils.utils import video_to_frames

    detach_cache(pipeline.model)
    if cache is not None:
        attach_cache(pipeline.model, cache)
    if pipeline.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(pipeline.device)
    video, report = pipeline.generate(prompt, seed=seed, **settings)
    peak = torch.cuda.max_memory_allocated(pipeline.device) if pipeline.device.type == "cuda" else None
    detach_cache(pipeline.model)
    return video, video_to_frames(video[None]), report, peak


def adherence_checker():
    """The tiny model's prompt-adherence checker (``wan.tiny.adherence.score_caption``), or None."""
    try:
        from wan.tiny.adherence import score_caption
    except ImportError:
        return None
    return score_caption


def save_outputs(out_dir: str, mode: Mode, prompt: str, seed: int, video: torch.Tensor, frames: np.ndarray,
                 fps: int) -> tuple[str, str]:
    """Writes the mp4 as generate.py does (for viewing / VBench) and the exact uint8 frames (.npz, for metrics)."""
    from wan.utils.utils import cache_video

    name = f"{slug(prompt)}-s{seed}"
    video_dir, frame_dir = (os.path.join(out_dir, kind, mode.name) for kind in ("videos", "frames"))
    os.makedirs(video_dir, exist_ok=True)
    os.makedirs(frame_dir, exist_ok=True)
    video_path, frame_path = os.path.join(video_dir, name + ".mp4"), os.path.join(frame_dir, name + ".npz")
    cache_video(video[None], video_path, fps=fps, normalize=True, value_range=(-1, 1))
    tmp = frame_path + ".tmp.npz"
    np.savez_compressed(tmp, frames=frames)
    os.replace(tmp, frame_path)
    return video_path, frame_path


@dataclass
class Timed:
    """What the repeats of one (mode, prompt, seed) produced: the first run's outputs, every run's timings."""

    video: torch.Tensor
    frames: np.ndarray
    cache: object
    peak: int | None
    latencies: list[float]
    totals: list[float]


def timed_generate(pipeline, make, prompt: str, seed: int, settings: dict, repeats: int) -> Timed:
    """Runs one generation ``repeats`` times with a fresh cache from ``make()``; checks the frames are identical."""
    result = None
    for _ in range(repeats):
        cache = make()
        video, frames, report, peak = generate(pipeline, cache, prompt, seed, settings)
        if result is None:
            result = Timed(video, frames, cache, peak, [], [])
        elif not np.array_equal(frames, result.frames):
            raise RuntimeError(f"a repeat of {prompt!r} (seed {seed}) gave different frames: nondeterministic run")
        result.latencies.append(report.denoise_seconds)
        result.totals.append(report.total_seconds)
    return result


def run_record(mode: Mode, prompt: str, seed: int, timed: Timed, full: dict | None, full_frames, checker, paths,
               settings: dict, model_calls: int) -> dict:
    """The JSON line of one run (latencies: the median over the repeats)."""
    steps, frames, cache = settings["sampling_steps"], timed.frames, timed.cache
    latency, total = float(np.median(timed.latencies)), float(np.median(timed.totals))
    row = {"mode": mode.name, "kind": mode.kind, "threshold": mode.threshold, "prompt": prompt, "seed": seed,
           "steps": steps, "latency_s": latency, "total_s": total, "latency_runs": timed.latencies,
           "video": paths[0], "frames": paths[1], "peak_memory_bytes": timed.peak, "peak_rss_bytes": peak_rss_bytes(),
           "computed_calls": model_calls, "skipped_calls": 0, "ideal_speedup": 1.0,
           "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if cache is not None:
        stats = cache.stats
        row.update(computed_calls=stats.computed_calls, skipped_calls=stats.skipped_calls,
                   ideal_speedup=stats.ideal_speedup, cache_buffer_bytes=stats.peak_buffer_bytes)
        if isinstance(cache, TeaCache):
            row.update(tag=cache.config.tag(), coefficients=cache.config.source,
                       computed_steps={b: cache.computed_steps(b) for b in cache.history})
        else:
            row["tag"] = cache.config.tag()
    if full is not None:
        metrics = video_metrics.compare(full_frames, frames, prompt)
        row.update(speedup=full["latency_s"] / latency, total_speedup=full["total_s"] / total,
                   psnr=metrics["psnr_video"], psnr_frame_mean=metrics["psnr"], ssim=metrics["ssim"])
    if checker is not None:
        score = checker(frames, prompt)
        row["adherence"] = {"colour": score.colour_correct, "motion": score.motion_correct,
                            "shape": score.shape_correct}
    return row


def read_runs(path: str) -> list[dict]:
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def append_run(path: str, row: dict) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def run_benchmark(args) -> list[dict]:
    """Runs every missing (prompt, seed, mode) and returns all runs of the JSONL file."""
    prompts = read_prompts(args.prompts) if args.prompts else default_prompts(args.num_prompts)
    modes = parse_modes(args.modes, args.teacache_thresh or [])
    pipeline, _ = load_pipeline(args.task, args.ckpt_dir)
    profile = resolve_profile(args, args.task) if any(m.kind == "delta" for m in modes) else None
    if profile is not None:
        profile.config.check_depths(pipeline.model.stream_group_depths())
    coefficients, source = teacache_settings(args, args.task)
    settings = generation_settings(pipeline, args)
    os.makedirs(args.out_dir, exist_ok=True)
    jsonl = os.path.join(args.out_dir, "runs.jsonl")
    runs = read_runs(jsonl)
    done = {(r["mode"], r["prompt"], r["seed"], r["steps"]) for r in runs}
    checker = adherence_checker()
    # Two forwards (cond, uncond) per step, every block of every group.
    model_calls = 2 * settings["sampling_steps"] * sum(pipeline.model.stream_group_depths().values())
    for _ in range(args.warmup):
        generate(pipeline, None, prompts[0], args.seeds[0], settings)
    for prompt in prompts:
        for seed in args.seeds:
            full = next((r for r in runs if (r["mode"], r["prompt"], r["seed"], r["steps"])
                         == ("full", prompt, seed, settings["sampling_steps"])), None)
            full_frames = video_metrics.read_video(full["frames"]) if full else None
            for mode in modes:
                if (mode.name, prompt, seed, settings["sampling_steps"]) in done:
                    continue
                timed = timed_generate(pipeline, lambda: make_cache(mode, profile, args.task, args, coefficients,
                                                                    source), prompt, seed, settings, args.repeats)
                paths = save_outputs(args.out_dir, mode, prompt, seed, timed.video, timed.frames,
                                     pipeline.config.sample_fps)
                row = run_record(mode, prompt, seed, timed, full, full_frames, checker, paths, settings, model_calls)
                append_run(jsonl, row)
                runs.append(row)
                if mode.kind == "full":
                    full, full_frames = row, timed.frames
                print(_progress(row), flush=True)
    return runs


def _progress(row: dict) -> str:
    extra = f" speedup {row['speedup']:.2f}x PSNR {row['psnr']:.2f} SSIM {row['ssim']:.4f}" if "speedup" in row else ""
    return f"[{row['mode']}] seed {row['seed']} {row['latency_s']:.2f} s{extra} | {row['prompt']}"


# ------------------------------------------------------------------------------------------------- summary


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def summarise(runs: list[dict]) -> list[dict]:
    """One row per mode (in order of first appearance): means over its runs."""
    order = list(dict.fromkeys(r["mode"] for r in runs))
    rows = []
    for name in order:
        group = [r for r in runs if r["mode"] == name]
        adherence = [r["adherence"] for r in group if "adherence" in r]
        rows.append({
            "mode": name, "runs": len(group), "latency_s": _mean(r["latency_s"] for r in group),
            "speedup": _mean(r.get("speedup") for r in group) if name != "full" else 1.0,
            "ideal_speedup": _mean(r.get("ideal_speedup") for r in group) if name != "full" else 1.0,
            "psnr": _mean(r.get("psnr") for r in group), "ssim": _mean(r.get("ssim") for r in group),
            "cache_mib": _mean(r.get("cache_buffer_bytes") for r in group),
            "adherence": ({k: _mean(a[k] for a in adherence) for k in ("colour", "motion", "shape")}
                          if adherence else None),
        })
        if rows[-1]["cache_mib"] is not None:
            rows[-1]["cache_mib"] /= 2**20
    return rows


def _f(value, fmt: str) -> str:
    if value is None:
        return "-"
    return "inf" if value == math.inf else format(value, fmt)


def markdown_table(summary: list[dict]) -> str:
    """The per-mode table (PSNR/SSIM against full on the same prompt and seed; full has none)."""
    lines = ["| mode | runs | latency (s) | speedup | ideal (block calls) | PSNR (dB) | SSIM | "
             "adherence colour / motion / shape | cache buffers (MiB) |", "|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        a = s["adherence"]
        adherence = " / ".join(_f(a[k], ".2f") for k in ("colour", "motion", "shape")) if a else "-"
        lines.append(f"| {s['mode']} | {s['runs']} | {_f(s['latency_s'], '.3f')} | {_f(s['speedup'], '.2f')}x | "
                     f"{_f(s['ideal_speedup'], '.2f')}x | {_f(s['psnr'], '.2f')} | {_f(s['ssim'], '.4f')} | "
                     f"{adherence} | {_f(s['cache_mib'], '.3f')} |")
    return "\n".join(lines) + "\n"


def scatter_plot(runs: list[dict], summary: list[dict], path: str, title: str) -> None:
    """Speedup (x) vs PSNR (y): one faint point per run, one labelled marker per mode mean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=120)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, s in enumerate(s for s in summary if s["mode"] != "full"):
        colour = colours[k % len(colours)]
        points = [(r["speedup"], r["psnr"]) for r in runs if r["mode"] == s["mode"] and "psnr" in r
                  and math.isfinite(r["psnr"])]
        if points:
            ax.scatter(*zip(*points), s=10, alpha=0.25, color=colour)
        if s["psnr"] is not None and math.isfinite(s["psnr"]):
            ax.scatter([s["speedup"]], [s["psnr"]], s=70, color=colour, edgecolor="black", label=s["mode"], zorder=3)
            ax.annotate(s["mode"], (s["speedup"], s["psnr"]), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.axvline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("speedup of the denoising loop vs full (same prompt and seed)")
    ax.set_ylabel("PSNR vs full (dB)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


def write_summary(runs: list[dict], out_dir: str, plot_path: str | None, title: str) -> str:
    summary = summarise(runs)
    table = markdown_table(summary)
    with open(os.path.join(out_dir, "summary.md"), "w", encoding="utf-8") as handle:
        handle.write(table)
    with open(os.path.join(out_dir, "summary.json"), "w", encoding="utf-8") as handle:
        json.dump(summary, handle, indent=2)
    scatter_plot(runs, summary, plot_path or os.path.join(out_dir, "speed_psnr.png"), title)
    return table


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default=DEFAULT_TASK, help="Wan2.1 task (default: the tiny model).")
    parser.add_argument("--ckpt_dir", default=None, help="Checkpoint folder (default: the task's).")
    parser.add_argument("--prompts", default=None, help="Prompt file, one per line (default: held-out captions).")
    parser.add_argument("--num_prompts", type=int, default=20, help="Held-out captions to use without --prompts.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--modes", default="full,delta,tea", help="Comma list of full, delta, tea, tea:<T>.")
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
