"""Full compute vs --delta_cache on a real-size Wan2.1 DiT on a GPU: measured next to ideal speedup, and memory.

The denoising loop is the pipeline's (flow UniPC, the task's shift, classifier-free guidance as two forwards, each
its own cache branch, bf16 autocast over fp32 weights as `generate.py` runs on CUDA); T5 and the VAE are left out
because the cache does not touch them. The weights are random (small, so the velocity field stays smooth): speed
and memory depend on the shapes, not on the values. The cache profile is the task's built-in one (or
``--cache_profile``). Both modes run in one process, interleaved, after an unrecorded warm-up run of a few steps;
the median of ``--repeats`` is reported.

Usage (from the repository root, on a CUDA machine):

    python scripts/bench_gpu_cache.py --task t2v-1.3B --size 832*480 --frame_num 81 --repeats 2 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import torch

SCRIPTS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(SCRIPTS), "Wan2.1"))
sys.path.insert(0, SCRIPTS)

from common_cache import CacheProfile, DeltaCache, attach_cache, detach_cache  # noqa: E402
from wan.cache_profiles import builtin_profile_path  # noqa: E402
from wan.configs import SIZE_CONFIGS, WAN_CONFIGS  # noqa: E402
from wan.modules.model import WanModel  # noqa: E402
from bench_wan_cache import denoise, small_random_weights_  # noqa: E402

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


def run_mode(model: WanModel, cache: DeltaCache | None, latent_shape, steps: int, shift: float,
             device: torch.device) -> tuple[float, torch.Tensor, int]:
    """One generation in one mode; returns (seconds, final latent, peak allocated bytes)."""
    detach_cache(model)
    if cache is not None:
        attach_cache(model, cache)
    torch.cuda.reset_peak_memory_stats(device)
    seconds, _, latent = denoise(model, latent_shape, steps, shift=shift, device=device,
                                 context_tokens=(PROMPT_TOKENS, NULL_TOKENS))
    return seconds, latent, torch.cuda.max_memory_allocated(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="t2v-1.3B", choices=["t2v-1.3B", "t2v-14B"])
    parser.add_argument("--size", default="832*480", choices=list(SIZE_CONFIGS))
    parser.add_argument("--frame_num", type=int, default=81)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup_steps", type=int, default=8,
                        help="steps of the unrecorded warm-up run per mode (more than the profile's warm-up)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--cache_profile", default=None, help="default: the task's built-in profile")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu_cache.py needs a CUDA device (use bench_wan_cache.py on a CPU)")
    device = torch.device("cuda")
    config = WAN_CONFIGS[args.task]
    width, height = SIZE_CONFIGS[args.size]
    latent_shape = (16, (args.frame_num - 1) // 4 + 1, height // 8, width // 8)
    profile = CacheProfile.load(args.cache_profile or builtin_profile_path(args.task))
    model = random_model(args.task, device)
    shift = config.get("sample_shift", 5.0)
    for mode in ("full", "cached"):  # warm-up: kernels, allocator, autotuning
        run_mode(model, DeltaCache(profile.config) if mode == "cached" else None, latent_shape, args.warmup_steps,
                 shift, device)
    times, peaks, latents, cache = {"full": [], "cached": []}, {}, {}, None
    for _ in range(args.repeats):
        for mode in times:
            cache = DeltaCache(profile.config) if mode == "cached" else None
            seconds, latents[mode], peaks[mode] = run_mode(model, cache, latent_shape, args.steps, shift, device)
            times[mode].append(seconds)
            print(f"{mode}: {seconds:.2f} s", flush=True)
    full, cached = statistics.median(times["full"]), statistics.median(times["cached"])
    tokens = latent_shape[1] * latent_shape[2] * latent_shape[3] // 4
    result = {
        "device": torch.cuda.get_device_name(device), "torch": torch.__version__, "task": args.task,
        "size": args.size, "frame_num": args.frame_num, "tokens": tokens, "steps": args.steps,
        "profile": profile.config.tag(), "times_s": times, "full_s": full, "cached_s": cached,
        "measured_speedup": full / cached, "ideal_speedup": cache.stats.ideal_speedup,
        "peak_gib": {m: v / 2**30 for m, v in peaks.items()},
        "cache_buffers_gib": cache.stats.peak_buffer_bytes / 2**30,
        "final_latent_rel_err": ((latents["cached"] - latents["full"]).norm() / latents["full"].norm()).item(),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
