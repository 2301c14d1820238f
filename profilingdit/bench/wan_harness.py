"""The Wan2.1 benchmarks' shared parts: a mid-size random DiT, the paper's 14B block list scaled to its depth, and
the pipeline's denoising loop without T5 and VAE (``scripts/bench/wan_cache.py``, ``gpu_cache.py``, ``sp_cache.py``).
"""

from __future__ import annotations

import contextlib
import time

import torch
from wan.modules.model import WanModel
from wan.utils.fm_solvers_unipc import FlowUniPCMultistepScheduler

WAN14B_COMPUTED = (1, 8, 9, 21, 22, 23, 24, 33, 34, 35, 36, 39)


def scaled_paper_blocks(depth: int) -> tuple[int, ...]:
    """The paper's 14B cached list scaled to ``depth`` blocks (computed blocks mapped proportionally)."""
    computed = {round(c * (depth - 1) / 39) for c in WAN14B_COMPUTED}
    return tuple(b for b in range(depth) if b not in computed)


def random_model(dim: int, heads: int, layers: int, text_dim: int) -> WanModel:
    """A ``WanModel`` of that size with :func:`small_random_weights_` (seed 0)."""
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
