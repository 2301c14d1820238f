"""Full compute vs --delta_cache on a real-size Wan2.1 DiT on a GPU: measured next to ideal speedup, and memory.

The denoising loop is the pipeline's (flow UniPC, the task's shift, classifier-free guidance as two forwards, each
its own cache branch, bf16 autocast over fp32 weights as `generate.py` runs on CUDA); T5 and the VAE are left out
because the cache does not touch them. The weights are random (small, so the velocity field stays smooth): speed
and memory depend on the shapes, not on the values. The cache profiles are the task's built-in one or those
named by ``--cache_profile``; a whole-stack profile of another depth (the tiny model's budgeted ``t2v-tiny-3x``:
all blocks one unit, refreshed on its steps, forecast with its weights) is applied to every block of the task's
model, so the budgeted policy's speed is measured at the real size. All modes run in one process, interleaved,
after an unrecorded warm-up run of a few steps; the median of ``--repeats`` is reported.

Usage (from the repository root, on a CUDA machine):

    python scripts/bench/gpu_cache.py --task t2v-1.3B --size 832*480 --frame_num 81 --repeats 2 --json out.json
    python scripts/bench/gpu_cache.py --cache_profile t2v-1.3B t2v-tiny-3x t2v-tiny-4x --json budgeted.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics

import torch
from wan.cache_profiles import builtin_profile_path, resolve_profile_path
from wan.configs import SIZE_CONFIGS, WAN_CONFIGS
from wan.modules.model import WanModel

from common_cache import CacheConfig, CacheProfile, DeltaCache, attach_cache, detach_cache
from profilingdit.bench.wan_harness import denoise, small_random_weights_

PROMPT_TOKENS, NULL_TOKENS = 24, 12  # valid text tokens of the two branches (the rest of text_len is padding)


def random_model(task: str, device: torch.device) -> WanModel:
    """The task's DiT with small random weights, fp32 on ``device``."""
    config = WAN_CONFIGS[task]
    torch.manual_seed(0)
    with torch.device(device):
        model = WanModel(patch_size=config.patch_size, text_len=config.text_len, dim=config.dim,
                         ffn_dim=config.ffn_dim, freq_dim=config.freq_dim, text_dim=config.get("text_dim", 4096),
                         num_heads=config.num_heads, num_layers=config.num_layers, eps=config.eps)
    return small_random_weights_(model)


def on_depth(config: CacheConfig, depth: int) -> CacheConfig:
    """``config`` for a ``blocks`` stack of ``depth`` blocks: unchanged when the depths agree; a whole-stack profile
    of another depth (one unit over all its blocks) keeps its steps, order and weights over all ``depth`` blocks.

    Raises:
        SystemExit: the depths differ and the profile is not one whole-stack unit.
    """
    group = config.group("blocks")
    if group.depth == depth:
        return config
    units = group.resolved_units()
    if len(units) != 1 or (units[0].first, units[0].last) != (0, group.depth - 1):
        raise SystemExit(f"--cache_profile: a profile of depth {group.depth} with units "
                         f"{[(u.first, u.last) for u in units]} does not fit a {depth}-block model: only a "
                         "whole-stack profile (one unit over all blocks) is applied at another depth")
    unit = dataclasses.replace(units[0], first=0, last=depth - 1)  # resolved: also a profile without units
    return CacheConfig((dataclasses.replace(group, depth=depth, cached_blocks=tuple(range(depth)), units=(unit,)),))


def run_mode(model: WanModel, cache: DeltaCache | None, latent_shape, steps: int, shift: float,
             device: torch.device, stop_after: int | None = None) -> tuple[float, torch.Tensor, int]:
    """One generation in one mode (its first ``stop_after`` steps only, for a warm-up); returns (seconds, final
    latent, peak allocated bytes)."""
    detach_cache(model)
    if cache is not None:
        attach_cache(model, cache)
    on_gpu = device.type == "cuda"
    if on_gpu:
        torch.cuda.reset_peak_memory_stats(device)
    seconds, _, latent = denoise(model, latent_shape, steps, shift=shift, device=device,
                                 context_tokens=(PROMPT_TOKENS, NULL_TOKENS), stop_after=stop_after)
    return seconds, latent, torch.cuda.max_memory_allocated(device) if on_gpu else 0


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="t2v-1.3B", choices=["t2v-1.3B", "t2v-14B"])
    parser.add_argument("--size", default="832*480", choices=list(SIZE_CONFIGS))
    parser.add_argument("--frame_num", type=int, default=81)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup_steps", type=int, default=8,
                        help="steps of the unrecorded warm-up run per mode (its first steps; more than the profile's warm-up)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--cache_profile", nargs="+", default=None,
                        help="profiles to compare (built-in names or paths; default: the task's built-in profile)")
    parser.add_argument("--device", default="cuda", help="cuda (the benchmark) or cpu (a smoke test of the script)")
    parser.add_argument("--json", default=None)
    return parser.parse_args(argv)


def load_modes(args: argparse.Namespace, depth: int) -> dict[str, CacheConfig | None]:
    """Mode name -> cache config (None: full compute), every profile fitted to the model's depth."""
    modes: dict[str, CacheConfig | None] = {"full": None}
    for name in args.cache_profile or [builtin_profile_path(args.task)]:
        modes[os.path.basename(name).removesuffix(".json")] = on_depth(
            CacheProfile.load(resolve_profile_path(name)).config, depth)
    return modes


def main(argv=None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("scripts/bench/gpu_cache.py --device cuda needs a CUDA device (use "
                         "scripts/bench/wan_cache.py on a CPU)")
    config = WAN_CONFIGS[args.task]
    width, height = SIZE_CONFIGS[args.size]
    latent_shape = (16, (args.frame_num - 1) // 4 + 1, height // 8, width // 8)
    modes = load_modes(args, config.num_layers)
    model = random_model(args.task, device)
    shift = config.get("sample_shift", 5.0)

    def cache_of(mode: str) -> DeltaCache | None:
        return None if modes[mode] is None else DeltaCache(modes[mode])

    for mode in modes:  # warm-up: kernels, allocator, autotuning
        run_mode(model, cache_of(mode), latent_shape, args.steps, shift, device, stop_after=args.warmup_steps)
    times = {mode: [] for mode in modes}
    peaks, latents, caches = {}, {}, {}
    for _ in range(args.repeats):
        for mode in modes:
            caches[mode] = cache_of(mode)
            seconds, latents[mode], peaks[mode] = run_mode(model, caches[mode], latent_shape, args.steps, shift,
                                                           device)
            times[mode].append(seconds)
            print(f"{mode}: {seconds:.2f} s", flush=True)
    full = statistics.median(times["full"])
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "task": args.task, "size": args.size, "frame_num": args.frame_num,
        "tokens": latent_shape[1] * latent_shape[2] * latent_shape[3] // 4, "steps": args.steps,
        "full_s": full, "times_s": times["full"], "full_peak_gib": peaks["full"] / 2**30, "modes": {},
    }
    for mode, cache in caches.items():
        if cache is None:
            continue
        cached = statistics.median(times[mode])
        result["modes"][mode] = {
            "profile": modes[mode].tag(), "times_s": times[mode], "cached_s": cached,
            "measured_speedup": full / cached, "ideal_speedup": cache.stats.ideal_speedup,
            "peak_gib": peaks[mode] / 2**30, "cache_buffers_gib": cache.stats.peak_buffer_bytes / 2**30,
            "final_latent_rel_err": ((latents[mode] - latents["full"]).norm() / latents["full"].norm()).item(),
        }
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
