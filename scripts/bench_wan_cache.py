"""Full compute vs --delta_cache on a mid-size random Wan2.1 DiT (CPU, fp32): measured next to ideal speedup.

The denoising loop is the pipeline's (UniPC, shift 5, two guidance branches as two forwards, each in its own cache
branch); T5 and VAE are left out because the cache does not touch them. The cache profile is the paper's Wan2.1-14B
configuration scaled to the model's depth: the 14B list's always-computed blocks c are mapped to round(c*(D-1)/39),
every other block is cached; warm-up 6, refresh every 6 steps. Both modes run in one process, interleaved,
warm-up run excluded, median of --repeats.

Usage (from the repository root): python scripts/bench_wan_cache.py [--dim 256 --layers 16 --steps 50 --repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "Wan2.1"))

from common_cache import CacheConfig, DeltaCache, StreamGroupConfig, UniformSchedule, attach_cache  # noqa: E402
from wan.modules.model import WanModel  # noqa: E402
from wan.utils.fm_solvers_unipc import FlowUniPCMultistepScheduler  # noqa: E402

WAN14B_COMPUTED = (1, 8, 9, 21, 22, 23, 24, 33, 34, 35, 36, 39)


def scaled_paper_blocks(depth: int) -> tuple[int, ...]:
    """The paper's 14B cached list scaled to ``depth`` blocks (computed blocks mapped proportionally)."""
    computed = {round(c * (depth - 1) / 39) for c in WAN14B_COMPUTED}
    return tuple(b for b in range(depth) if b not in computed)


def random_model(dim: int, heads: int, layers: int, text_dim: int) -> WanModel:
    torch.manual_seed(0)
    model = WanModel(dim=dim, ffn_dim=4 * dim, num_heads=heads, num_layers=layers, text_dim=text_dim, text_len=512)
    return small_random_weights_(model)


def small_random_weights_(model: WanModel) -> WanModel:
    """Small random weights (a smooth velocity field), in place; returns the model in eval mode, frozen."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(1.0 + 0.03 * torch.randn_like(param) if "norm" in name else 0.03 * torch.randn_like(param))
    return model.eval().requires_grad_(False)


def denoise(model: WanModel, latent_shape, steps: int, seed: int = 0, shift: float = 5.0,
            device: torch.device = torch.device("cpu"), context_tokens: tuple[int, int] = (24, 4),
            stop_after: int | None = None) -> tuple[float, float, torch.Tensor]:
    """One generation's denoising loop (the pipeline's, with CFG 5). On a GPU it runs under bf16 autocast, as
    generate.py does there, and the clock waits for the kernels. ``stop_after`` ends the loop after that many of
    the ``steps`` steps (a warm-up: a cache still compiles the whole run). Returns (wall s, CPU s, final latent)."""
    generator = torch.Generator(device=device).manual_seed(seed)
    latent = torch.randn(*latent_shape, generator=generator, device=device)
    context = [torch.randn(context_tokens[0], model.text_dim, generator=generator, device=device)]
    context_null = [torch.randn(context_tokens[1], model.text_dim, generator=generator, device=device)]
    seq_len = latent_shape[1] * latent_shape[2] * latent_shape[3] // 4
    scheduler = FlowUniPCMultistepScheduler(shift=1)
    scheduler.set_timesteps(steps, device=device, shift=shift)
    on_gpu = device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if on_gpu else contextlib.nullcontext()
    synchronize = (lambda: torch.cuda.synchronize(device)) if on_gpu else (lambda: None)
    cache = model.block_cache
    synchronize()
    start, cpu_start = time.perf_counter(), time.process_time()
    if cache is not None:
        cache.begin(steps)
    with autocast:
        for index, t in enumerate(scheduler.timesteps[:stop_after]):
            timestep = torch.stack([t])
            preds = []
            for branch, ctx in (("cond", context), ("uncond", context_null)):
                if cache is None:
                    preds.append(model([latent], t=timestep, context=ctx, seq_len=seq_len)[0])
                else:
                    with cache.step(index, branch):
                        preds.append(model([latent], t=timestep, context=ctx, seq_len=seq_len)[0])
            guided = preds[1] + 5.0 * (preds[0] - preds[1])
            latent = scheduler.step(guided[None], t, latent[None], return_dict=False)[0][0]
    synchronize()
    return time.perf_counter() - start, time.process_time() - cpu_start, latent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--latent", type=int, nargs=4, default=[16, 3, 30, 52], metavar=("C", "T", "H", "W"))
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    model = random_model(args.dim, args.heads, args.layers, text_dim=args.dim)
    cached_blocks = scaled_paper_blocks(args.layers)
    cache = DeltaCache(CacheConfig((StreamGroupConfig("blocks", args.layers, cached_blocks, 6, UniformSchedule(6)),)))
    # Wall time, and this process's CPU time (far less disturbed by other jobs on a shared machine when the run is
    # single-threaded: OMP_NUM_THREADS=1).
    times: dict[str, list[float]] = {"full": [], "cached": []}
    cpu_times: dict[str, list[float]] = {"full": [], "cached": []}
    latents = {}
    with torch.inference_mode():
        for repeat in range(args.repeats + 1):  # round 0 is the warm-up, excluded
            for mode in times:
                model.block_cache = None
                if mode == "cached":
                    attach_cache(model, cache)
                seconds, cpu_seconds, latents[mode] = denoise(model, args.latent, args.steps)
                if repeat:
                    times[mode].append(seconds)
                    cpu_times[mode].append(cpu_seconds)
    tokens = args.latent[1] * args.latent[2] * args.latent[3] // 4
    rel_err = ((latents["cached"] - latents["full"]).norm() / latents["full"].norm()).item()
    print(f"WanModel dim {args.dim} ({args.heads} heads), {args.layers} blocks, {tokens} tokens, fp32, "
          f"{args.steps} UniPC steps x 2 branches, {torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"cached blocks ({len(cached_blocks)} of {args.layers}): {list(cached_blocks)}; warm-up 6, interval 6")
    for clock, samples in (("wall", times), ("cpu", cpu_times)):
        full, cached = statistics.median(samples["full"]), statistics.median(samples["cached"])
        for mode in samples:
            print(f"  [{clock}] {mode:<6} {statistics.median(samples[mode]):8.2f} s   runs: "
                  f"{', '.join(f'{t:.2f}' for t in samples[mode])}")
        print(f"[{clock}] speedup: measured {full / cached:.3f}x, ideal {cache.stats.ideal_speedup:.3f}x "
              f"({full / cached / cache.stats.ideal_speedup:.1%} of ideal)")
    print(f"final-latent relative error cached vs full: {rel_err:.2e}")
    print(f"cache buffers: peak {cache.stats.peak_buffer_bytes / 2**20:.1f} MiB (both branches)")


if __name__ == "__main__":
    main()
