"""Benchmark runner: prompts x seeds x cache modes on a Wan2.1 checkpoint (the tiny trained model by default).

Modes: ``full`` (no cache), ``delta`` (ProfilingDiT delta cache with ``--cache_profile`` or the task's default
profile; ``delta:NAME`` with a built-in profile by name, e.g. ``delta:t2v-tiny-4x``) and ``tea-<T>`` (TeaCache at
threshold T), run in one process on one loaded pipeline, interleaved per prompt and seed (full first), after
``--warmup`` unrecorded generations. Peer modes (``dfull``, ``fbc:<T>``, ``mag:<T>``, ``taylor:<N>``,
``taylorlite:<N>``, ``pab``, ``dbcache:<T>``, ``dbcache-ts:<T>``: see :mod:`profilingdit.bench.peers`) run diffusers'
``WanTransformer3DModel`` with the same weights in the same loop; their speedup and fidelity are against that
harness's own full run ``dfull`` (added when missing), and ``dfull`` records its PSNR against our ``full``.
Per run it records the denoising-loop latency and the whole generation's,
the speedup against full on the same prompt and seed, block calls computed/skipped (ideal speedup), the cache
buffers' peak and the process memory peak, PSNR/SSIM against the full run's frames (the uint8 frames that go into
the mp4, before encoding), prompt adherence when the tiny model's checker is available, and the output paths.
Each run is appended as one JSON line to ``<out_dir>/runs.jsonl``; runs already there are skipped (resumable).
Then the runs are summarised into ``summary.md`` (one row per mode) and a speed-vs-PSNR scatter ``speed_psnr.png``.

The command line is ``scripts/bench/runner.py``.
"""

from __future__ import annotations

import json
import math
import os
import re
import resource
import time
from dataclasses import dataclass

import numpy as np
import torch

from common_cache import CacheProfile, DeltaCache, attach_cache, detach_cache
from common_cache.teacache import TeaCache, load_coefficients, wan_teacache_config
from profilingdit.bench import peers
from profilingdit.metrics import video as video_metrics

DEFAULT_TASK = "t2v-tiny"
REFERENCE_MODES = ("full", "dfull")  # each harness's own full run: the reference of its other modes


@dataclass(frozen=True)
class Mode:
    """One benchmark mode: ``full``, ``delta``, ``teacache`` or a peer kind of :mod:`profilingdit.bench.peers`
    (with its threshold or interval)."""

    name: str
    kind: str
    threshold: float | None = None


def parse_modes(text: str, thresholds: list[float]) -> list[Mode]:
    """``"full,delta,tea"`` -> modes; ``tea`` expands to one mode per threshold, ``tea:0.1`` names one.

    Peer modes (``peers.parse_peer_mode``) need ``dfull``, their reference: it is added before the first peer
    mode when missing, and moved there when given later.

    Raises:
        ValueError: an unknown or malformed mode, ``tea`` without thresholds, or a duplicate.
    """
    modes = [Mode("full", "full")]
    for item in (s.strip() for s in text.split(",") if s.strip()):
        if item == "full":
            continue
        if item == "delta":
            modes.append(Mode("delta", "delta"))
        elif item.startswith("delta:"):  # a named profile: a built-in name or a path
            modes.append(Mode(f"delta:{item[6:]}", "delta"))
        elif item == "tea" or item.startswith("tea:"):
            values = thresholds if item == "tea" else [_float("modes", item[4:])]
            if not values:
                raise ValueError("--modes tea needs --teacache_thresh T [T ...] (or name one: tea:0.1)")
            modes += [Mode(f"tea-{t:g}", "teacache", t) for t in values]
        elif (peer := peers.parse_peer_mode(item)) is not None:
            modes.append(Mode(*peer))
        else:
            raise ValueError(f"--modes: {item!r} is not allowed: expected full, delta, delta:<profile>, tea, "
                             "tea:<threshold> or "
                             f"{peers.ALLOWED_TEXT}")
    names = [m.name for m in modes]
    if len(set(names)) != len(names):
        raise ValueError(f"--modes gives a mode twice: {names}")
    return _reference_first(modes)


def _reference_first(modes: list[Mode]) -> list[Mode]:
    """Puts ``dfull`` (added if missing) right before the first peer mode: peers are measured against it."""
    if not any(peers.is_peer(m.kind) and m.kind != "dfull" for m in modes):
        return modes
    rest = [m for m in modes if m.kind != "dfull"]
    first = next(k for k, m in enumerate(rest) if peers.is_peer(m.kind))
    return rest[:first] + [Mode("dfull", "dfull")] + rest[first:]


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


def resolve_profile(args, task: str, mode: Mode) -> CacheProfile:
    """The profile of a delta mode: ``delta:NAME`` a built-in name or a path; ``delta`` ``--cache_profile``, else
    the task's default one."""
    from wan.cache_profiles import default_profile, resolve_profile_path

    if mode.name.startswith("delta:"):
        return CacheProfile.load(resolve_profile_path(mode.name[6:]))
    if args.cache_profile:
        return CacheProfile.load(resolve_profile_path(args.cache_profile))
    profile = default_profile(task)
    if profile is None:
        raise ValueError(f"mode delta: there is no built-in cache profile for {task}: pass --cache_profile PATH")
    return profile


def teacache_settings(args, task: str) -> tuple[tuple[float, ...] | None, str]:
    """(coefficients or None for the task's published/uncalibrated ones, their source)."""
    if not args.teacache_coefficients:
        return None, ""
    indicator = "e0" if args.use_ret_steps else "e"
    return load_coefficients(args.teacache_coefficients, indicator), f"fitted ({args.teacache_coefficients})"


def make_cache(mode: Mode, profiles: dict[str, CacheProfile], task: str, args, coefficients, source):
    if mode.kind == "delta":
        return DeltaCache(profiles[mode.name].config)
    if mode.kind == "teacache":
        return TeaCache(wan_teacache_config(task, mode.threshold, args.use_ret_steps, coefficients, source))
    return None


# ------------------------------------------------------------------------------------------------- one run


def peak_rss_bytes() -> int:
    """The process's peak resident memory so far (Linux reports KiB); monotonic over the whole process."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def generate(pipeline, cache, prompt: str, seed: int, settings: dict, clock=None):
    """One generation with ``cache`` attached (None: full compute); ``clock`` (a ``peers.ForwardClock`` on
    the DiT) is reset first, so that it holds this generation's CPU seconds inside the DiT's forwards.

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
    if clock is not None:
        clock.reset()
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
    cpu: list[float]  # CPU seconds inside the DiT's forwards (empty without a clock)


def timed_generate(pipeline, make, prompt: str, seed: int, settings: dict, repeats: int, clock=None) -> Timed:
    """Runs one generation ``repeats`` times with a fresh cache from ``make()``; checks the frames are identical."""
    result = None
    for _ in range(repeats):
        cache = make()
        video, frames, report, peak = generate(pipeline, cache, prompt, seed, settings, clock)
        if result is None:
            result = Timed(video, frames, cache, peak, [], [], [])
        elif not np.array_equal(frames, result.frames):
            raise RuntimeError(f"a repeat of {prompt!r} (seed {seed}) gave different frames: nondeterministic run")
        result.latencies.append(report.denoise_seconds)
        result.totals.append(report.total_seconds)
        if clock is not None:
            result.cpu.append(clock.seconds)
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
    if timed.cpu:
        row["forward_cpu_s"] = float(np.median(timed.cpu))
    if cache is not None:
        stats = cache.stats
        row.update(computed_calls=stats.computed_calls, skipped_calls=stats.skipped_calls,
                   ideal_speedup=stats.ideal_speedup, cache_buffer_bytes=stats.peak_buffer_bytes)
        if mode.kind == "teacache":
            row.update(tag=cache.config.tag(), coefficients=cache.config.source,
                       computed_steps={b: cache.computed_steps(b) for b in cache.history})
        else:
            row["tag"] = cache.config.tag()
    if full is not None:
        metrics = video_metrics.compare(full_frames, frames, prompt)
        row.update(speedup=full["latency_s"] / latency, total_speedup=full["total_s"] / total,
                   psnr=metrics["psnr_video"], psnr_frame_mean=metrics["psnr"], ssim=metrics["ssim"])
        if "forward_cpu_s" in full and "forward_cpu_s" in row:
            row["cpu_speedup"] = full["forward_cpu_s"] / row["forward_cpu_s"]
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
    profiles = {m.name: resolve_profile(args, args.task, m) for m in modes if m.kind == "delta"}
    for profile in profiles.values():
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
    peer_kinds = [m.kind for m in modes if peers.is_peer(m.kind)]
    harness = peers.DiffusersHarness(pipeline, peer_kinds, args.out_dir, args.task) if peer_kinds else None
    clock = peers.ForwardClock(pipeline.model)
    for _ in range(args.warmup):
        generate(pipeline, None, prompts[0], args.seeds[0], settings)
        if harness is not None:
            harness.generate("dfull", None, prompts[0], args.seeds[0], settings)
    for prompt in prompts:
        for seed in args.seeds:
            # Our modes compare with full, the peers with the diffusers harness's full run dfull.
            refs = {name: _reference(runs, name, prompt, seed, settings["sampling_steps"])
                    for name in REFERENCE_MODES}
            for mode in modes:
                if (mode.name, prompt, seed, settings["sampling_steps"]) in done:
                    continue
                peer = peers.is_peer(mode.kind)
                if peer:
                    timed = harness.timed_generate(mode.kind, mode.threshold, prompt, seed, settings, args.repeats)
                else:
                    timed = timed_generate(pipeline, lambda: make_cache(mode, profiles, args.task, args, coefficients,
                                                                        source), prompt, seed, settings, args.repeats,
                                           clock)
                paths = save_outputs(args.out_dir, mode, prompt, seed, timed.video, timed.frames,
                                     pipeline.config.sample_fps)
                reference = None if mode.kind in refs else refs["dfull" if peer else "full"]
                ref, ref_frames = reference or (None, None)
                row = run_record(mode, prompt, seed, timed, ref, ref_frames, checker, paths, settings, model_calls)
                if peer:
                    row.update(peers.peer_fields(mode.kind, mode.threshold, timed.calls, harness.mag_ratios))
                if mode.kind == "dfull" and refs["full"][0] is not None:
                    row.update(peers.conversion_fields(*refs["full"], row, timed.frames, video_metrics.compare))
                append_run(jsonl, row)
                runs.append(row)
                if mode.kind in refs:
                    refs[mode.kind] = (row, timed.frames)
                print(_progress(row), flush=True)
    return runs


def _reference(runs: list[dict], name: str, prompt: str, seed: int, steps: int):
    """(the recorded run of reference mode ``name`` on this prompt and seed, its frames), or (None, None)."""
    row = next((r for r in runs if (r["mode"], r["prompt"], r["seed"], r["steps"]) == (name, prompt, seed, steps)),
               None)
    return (row, video_metrics.read_video(row["frames"])) if row else (None, None)


def _progress(row: dict) -> str:
    extra = f" speedup {row['speedup']:.2f}x PSNR {row['psnr']:.2f} SSIM {row['ssim']:.4f}" if "speedup" in row else ""
    if "cpu_speedup" in row:
        extra += f" CPU speedup {row['cpu_speedup']:.2f}x"
    if "conversion_psnr" in row:
        extra = (f" vs full: PSNR {row['conversion_psnr']:.2f} speed {row['speed_vs_full']:.2f}x CPU "
                 f"{row.get('cpu_vs_full', math.nan):.2f}x")
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
        reference = name in REFERENCE_MODES
        rows.append({
            "mode": name, "runs": len(group), "latency_s": _mean(r["latency_s"] for r in group),
            "reference": None if reference else group[0].get("reference", "full"),
            "speedup": _mean(r.get("speedup") for r in group) if not reference else 1.0,
            "cpu_speedup": _mean(r.get("cpu_speedup") for r in group) if not reference else 1.0,
            "ideal_speedup": _mean(r.get("ideal_speedup") for r in group) if name != "full" else 1.0,
            "psnr": _mean(r.get("psnr") for r in group), "ssim": _mean(r.get("ssim") for r in group),
            "cache_mib": _mean(r.get("cache_buffer_bytes") for r in group),
            "adherence": ({k: _mean(a[k] for a in adherence) for k in ("colour", "motion", "shape")}
                          if adherence else None),
        })
        if any("conversion_psnr" in r for r in group):  # dfull vs our full
            rows[-1]["conversion_psnr"] = _mean(r.get("conversion_psnr") for r in group)
            rows[-1]["conversion_ssim"] = _mean(r.get("conversion_ssim") for r in group)
            rows[-1]["speed_vs_full"] = _mean(r.get("speed_vs_full") for r in group)
            rows[-1]["cpu_vs_full"] = _mean(r.get("cpu_vs_full") for r in group)
        if rows[-1]["cache_mib"] is not None:
            rows[-1]["cache_mib"] /= 2**20
    return rows


def _f(value, fmt: str) -> str:
    if value is None:
        return "-"
    return "inf" if value == math.inf else format(value, fmt)


def markdown_table(summary: list[dict]) -> str:
    """The per-mode table: speedup and PSNR/SSIM against the mode's reference on the same prompt and seed (``full``
    for our modes, ``dfull`` for the diffusers peers; the references have none), then the conversion check."""
    lines = ["| mode | runs | latency (s) | speedup | CPU speedup | ideal (block calls) | PSNR (dB) | SSIM | "
             "adherence colour / motion / shape | cache buffers (MiB) | vs |", "|---" * 11 + "|"]
    for s in summary:
        a = s["adherence"]
        adherence = " / ".join(_f(a[k], ".2f") for k in ("colour", "motion", "shape")) if a else "-"
        speeds = " | ".join(f"{_f(s.get(key), '.2f')}x" for key in ("speedup", "cpu_speedup", "ideal_speedup"))
        lines.append(f"| {s['mode']} | {s['runs']} | {_f(s['latency_s'], '.3f')} | {speeds} | "
                     f"{_f(s['psnr'], '.2f')} | {_f(s['ssim'], '.4f')} | {adherence} | {_f(s['cache_mib'], '.3f')} | "
                     f"{s.get('reference') or '-'} |")
    for s in summary:
        if "conversion_psnr" in s:
            lines.append(f"\n{s['mode']} vs full (same weights in diffusers' transformer, same prompt and seed): "
                         f"PSNR {_f(s['conversion_psnr'], '.2f')} dB, SSIM {_f(s['conversion_ssim'], '.6f')}, "
                         f"full latency / {s['mode']} latency {_f(s['speed_vs_full'], '.3f')}, "
                         f"CPU {_f(s['cpu_vs_full'], '.3f')}")
    return "\n".join(lines) + "\n" + envelope_lines(summary) + envelope_lines(summary, "speedup")


def upper_envelope(points: list[tuple[float, float]], x: float) -> float | None:
    """The best PSNR the points reach at speedup ``x``: the upper concave hull of the (speedup, PSNR) points
    interpolated linearly at ``x``, and never below a point at least as fast as ``x`` (None without points)."""
    hull: list[tuple[float, float]] = []
    for p in sorted(set(points)):
        while len(hull) >= 2 and ((hull[-1][1] - hull[-2][1]) * (p[0] - hull[-2][0])
                                  <= (p[1] - hull[-2][1]) * (hull[-1][0] - hull[-2][0])):
            hull.pop()  # hull[-1] lies on or under the segment from hull[-2] to p
        hull.append(p)
    values = [y for px, y in points if px >= x]
    for (x1, y1), (x2, y2) in zip(hull, hull[1:]):
        if x1 <= x <= x2:
            values.append(y1 + (y2 - y1) * (x - x1) / (x2 - x1))
    return max(values) if values else None


def envelope_lines(summary: list[dict], key: str = "cpu_speedup") -> str:
    """For each of our cached modes: the peers' upper envelope at its speedup (``key``) and its margin over it."""
    peers = [(s[key], s["psnr"]) for s in summary if s.get("reference") == "dfull" or s["mode"].startswith("tea-")]
    peers = [(x, y) for x, y in peers if x is not None and y is not None and math.isfinite(y)]
    lines = [f"\n| our mode | {key} | PSNR (dB) | peers' upper envelope there (dB) | margin (dB) |",
             "|---|---|---|---|---|"]
    for s in summary:
        if s.get("reference") != "full" or s["mode"].startswith("tea-") or s[key] is None or s["psnr"] is None:
            continue
        envelope = upper_envelope(peers, s[key])
        margin = None if envelope is None else s["psnr"] - envelope
        lines.append(f"| {s['mode']} | {s[key]:.2f}x | {s['psnr']:.2f} | {_f(envelope, '.2f')} | {_f(margin, '+.2f')} |")
    return "\n".join(lines) + "\n"


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both speedup and PSNR, by increasing speedup."""
    front, best = [], -math.inf
    for x, y in sorted(points, key=lambda p: (-p[0], -p[1])):
        if y > best:
            front.append((x, y))
            best = y
    return front[::-1]


def scatter_plot(runs: list[dict], summary: list[dict], path: str, title: str, x: str = "speedup") -> None:
    """The speed/fidelity frontier: measured speedup (x; ``x="cpu_speedup"``: the CPU-time ratio) vs mean PSNR (y)
    of every mode, each labelled.

    Circles are our modes (against full), squares the diffusers peers (against dfull); one colour per method, faint
    dots are single runs (clipped to the frame of the means), and the dashed line joins the modes no other mode
    beats on both axes. Modes with an infinite mean PSNR (identical to their reference) are left out.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5.0), dpi=130)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    kinds = {r["mode"]: (r.get("kind", r["mode"]), r.get("harness")) for r in runs}
    families = list(dict.fromkeys(kinds[s["mode"]][0] for s in summary if s["mode"] not in REFERENCE_MODES))
    means = []
    for s in (s for s in summary if s["mode"] not in REFERENCE_MODES):
        kind, harness = kinds[s["mode"]]
        colour = colours[families.index(kind) % len(colours)]
        marker = "s" if harness == "diffusers" else "o"
        points = [(r[x], r["psnr"]) for r in runs if r["mode"] == s["mode"] and "psnr" in r and x in r
                  and math.isfinite(r["psnr"])]
        if points:
            ax.scatter(*zip(*points), s=6, alpha=0.15, color=colour, marker=marker, linewidths=0)
        if s["psnr"] is None or not math.isfinite(s["psnr"]) or s.get(x) is None:
            continue
        means.append((s[x], s["psnr"]))
        ax.scatter([s[x]], [s["psnr"]], s=55, color=colour, marker=marker, edgecolor="black", zorder=3)
        ax.annotate(s["mode"], (s[x], s["psnr"]), textcoords="offset points", xytext=(5, 3), fontsize=7)
    if means:  # frame the mode means; single runs far outside (timing outliers) are clipped
        xs, ys = zip(*means)
        ax.set_xlim(min(0.9, min(xs) - 0.1), max(xs) * 1.15 + 0.1)
        ax.set_ylim(min(ys) - 3.0, max(ys) + 3.0)
    front = pareto_front(means)
    if len(front) > 1:
        ax.plot(*zip(*front), color="black", lw=0.8, ls="--", zorder=2, label="frontier (mode means)")
    ax.scatter([], [], marker="o", color="grey", label="ours (WanModel) vs full")
    ax.scatter([], [], marker="s", color="grey", label="diffusers peers vs dfull")
    ax.axvline(1.0, color="grey", lw=0.8, ls=":")
    ax.set_xlabel({"speedup": "measured speedup of the denoising loop",
                   "cpu_speedup": "CPU-time speedup of the transformer forwards"}[x]
                  + " vs its harness's full run (same prompt and seed)")
    ax.set_ylabel("mean PSNR vs that full run (dB)")
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
    plot_path = plot_path or os.path.join(out_dir, "speed_psnr.png")
    scatter_plot(runs, summary, plot_path, title)
    if any("cpu_speedup" in r for r in runs):
        scatter_plot(runs, summary, os.path.splitext(plot_path)[0] + "_cpu.png", title + " (CPU time)", "cpu_speedup")
    return table
