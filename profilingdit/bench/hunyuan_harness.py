"""The HunyuanVideo benchmarks' shared parts: a random transformer of the official architecture at any size, the
paper's profile scaled to its depths, and one timed denoising loop of the real pipeline
(``scripts/bench/hunyuan_cache.py``, ``scripts/bench/sp_cache.py``).
"""

from __future__ import annotations

import argparse
import time

import torch
from hyvideo.cache_profiles import builtin_profile
from hyvideo.diffusion.pipelines import HunyuanVideoPipeline, TextConditions
from hyvideo.modules import HYVideoDiffusionTransformer, get_rotary_pos_embed
from hyvideo.modules.models import HUNYUAN_VIDEO_CONFIG

from common_cache import CacheConfig, CacheProfile, StepListSchedule, StreamGroupConfig, UniformSchedule
from profilingdit.timing import GenerationReport

PAPER_STEPS = 50
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def rope_dims(head_dim: int) -> list[int]:
    """The official 16/56/56 split (t, h, w) of 128, scaled to ``head_dim`` (even entries summing to it)."""
    t = max(2, round(head_dim * 16 / 128 / 2) * 2)
    h = (head_dim - t) // 4 * 2
    return [t, h, head_dim - t - h]


def scaled_paper_profile(double: int, single: int, steps: int) -> CacheProfile:
    """The paper's HunyuanVideo profile scaled to other depths and step counts.

    Double stream: the span keeps starting 30 % into the stack (blocks 6..19 of 20). Single stream: 24/40 of the
    blocks cached; block j stands for the paper's blocks [40 j / single, 40 (j + 1) / single), and the blocks whose
    range holds the largest share of the paper's background list are cached. Steps: the paper's schedules when
    ``steps`` is 50, else the same steps scaled by ``steps / 50``.
    """
    paper = builtin_profile("HYVideo-T/2-cfgdistill").config
    start = min(round(6 / 20 * double), double - 1)
    background = set(paper.group("single").cached_blocks)

    def share(j: int) -> float:
        low, high = 40 * j / single, 40 * (j + 1) / single
        return sum(min(b + 1, high) - max(b, low) for b in background if b + 1 > low and b < high) / (high - low)

    count = round(24 / 40 * single)
    cached_single = sorted(sorted(range(single), key=lambda j: (-share(j), j))[:count])
    scale = steps / PAPER_STEPS
    warmup = max(1, round(6 * scale))
    interval = max(1, round(6 * scale))
    paper_list = paper.group("single").schedule.steps
    refresh = sorted({round(s * scale) for s in paper_list if warmup <= round(s * scale) < steps})
    groups = (StreamGroupConfig("double", double, tuple(range(start, double)), warmup, UniformSchedule(interval)),
              StreamGroupConfig("single", single, tuple(cached_single), warmup, StepListSchedule(tuple(refresh))))
    source = "paper profile scaled by profilingdit.bench.hunyuan_harness"
    return CacheProfile(CacheConfig(groups), metadata={"source": source})


def build_inputs(args: argparse.Namespace):
    """A random model (small weights: a smooth velocity field), noise, text conditions and RoPE tables."""
    torch.manual_seed(0)
    if args.official:
        sizes = dict(HUNYUAN_VIDEO_CONFIG["HYVideo-T/2-cfgdistill"], text_states_dim=4096, text_states_dim_2=768)
    else:
        sizes = dict(hidden_size=args.hidden, heads_num=args.heads, mm_double_blocks_depth=args.double,
                     mm_single_blocks_depth=args.single, rope_dim_list=rope_dims(args.hidden // args.heads),
                     guidance_embed=True, text_states_dim=64, text_states_dim_2=32)
    device = torch.device(args.device)
    with device:
        model = HYVideoDiffusionTransformer(**sizes).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" not in name:
                param.normal_(0.0, 0.02)
    model.to(DTYPES[args.precision])
    height, width = args.video_size
    latents = torch.randn(1, 16, (args.video_length - 1) // 4 + 1, height // 8, width // 8, device=device)
    mask = torch.zeros(1, args.text_len, dtype=torch.long, device=device)
    mask[:, : args.prompt_tokens] = 1
    text = TextConditions(torch.randn(1, args.text_len, sizes["text_states_dim"], device=device), mask,
                          torch.randn(1, sizes["text_states_dim_2"], device=device))
    freqs = get_rotary_pos_embed(args.video_length, height, width, model.rope_dim_list, model.patch_size)
    return model, latents, text, freqs


def timed_run(pipeline: HunyuanVideoPipeline, latents, text, freqs, steps: int) -> tuple[float, float, torch.Tensor, dict]:
    """One denoising loop: (wall seconds, this process's CPU seconds, final latents, extras).

    The CPU time of a single-threaded run (OMP_NUM_THREADS=1) is far less disturbed than the wall time when other
    jobs share the machine.
    """
    report = GenerationReport()
    synchronize = torch.cuda.synchronize if latents.is_cuda else (lambda: None)
    synchronize()
    cpu_start, start = time.process_time(), time.perf_counter()
    out = pipeline.denoise(latents, text, freqs, steps, embedded_guidance_scale=6.0, report=report, progress=False)
    synchronize()  # kernels are asynchronous on a GPU: the loop is over when they are
    seconds = time.perf_counter() - start
    return seconds, time.process_time() - cpu_start, out, {"measured_from_steps": report.measured_speedup()}
