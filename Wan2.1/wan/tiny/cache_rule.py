"""A provisional cache profile for the tiny model, chosen by a documented measurement (until the profiler lands).

Not an upstream module. Rule ("delta-replacement sensitivity"): on a few *training* captions (never the held-out
evaluation prompts), generate the final latent with full compute, then once per block with only that block cached
(warm-up 6, refresh every 6 steps, the paper's Wan2.1 schedule). A block's score is the relative L2 change of the
decoded video, averaged over the prompts. The blocks with the lowest scores are cached: as many as the paper caches
on Wan2.1-14B in proportion (28 of 40 blocks -> 8 of 12). The profile is marked ``"provisional": true``: it
measures output sensitivity, not the paper's foreground attention ratio.
"""

from __future__ import annotations

import os

import torch

from common_cache import CacheConfig, CacheProfile, DeltaCache, StreamGroupConfig, UniformSchedule, attach_cache
from common_cache import detach_cache

from ..configs import WAN_CONFIGS
from . import data

TASK = "t2v-tiny"
PAPER_CACHED_FRACTION = 28 / 40  # Wan2.1-14B: 28 cached blocks of 40
WARMUP, INTERVAL = 6, 6


def uniform_group(depth: int, blocks, warmup: int = WARMUP, interval: int = INTERVAL) -> StreamGroupConfig:
    return StreamGroupConfig("blocks", depth, tuple(blocks), warmup, UniformSchedule(interval))


def generate_video(pipeline, prompt: str, seed: int, steps: int) -> torch.Tensor:
    """One generation with the task's sampling defaults: ``[3, F, H, W]`` in [-1, 1]."""
    config = pipeline.config
    video, _ = pipeline.generate(prompt, size=(64, 64), frame_num=config.frame_num, shift=config.sample_shift,
                                 sampling_steps=steps, guide_scale=5.0, seed=seed, progress=False)
    return video


def block_sensitivity(pipeline, prompts: list[str], steps: int = 50, seed: int = 0, warmup: int = WARMUP,
                      interval: int = INTERVAL) -> list[float]:
    """Per block: mean relative L2 change of the decoded video when only that block is cached."""
    depth = pipeline.model.num_layers
    scores = [0.0] * depth
    for index, prompt in enumerate(prompts):
        detach_cache(pipeline.model)
        reference = generate_video(pipeline, prompt, seed + index, steps)
        for block in range(depth):
            group = uniform_group(depth, [block], warmup, interval)
            attach_cache(pipeline.model, DeltaCache(CacheConfig((group,))))
            video = generate_video(pipeline, prompt, seed + index, steps)
            scores[block] += float((video - reference).norm() / reference.norm()) / len(prompts)
        detach_cache(pipeline.model)
    return scores


def choose_blocks(scores: list[float], fraction: float = PAPER_CACHED_FRACTION) -> list[int]:
    """The ``round(fraction * depth)`` blocks with the lowest scores, sorted."""
    count = round(fraction * len(scores))
    return sorted(sorted(range(len(scores)), key=lambda b: scores[b])[:count])


def write_provisional_profile(ckpt_dir: str, out_path: str, log=print, quick: bool = False) -> CacheProfile:
    """Measures block sensitivity with the checkpoint in ``ckpt_dir`` and writes the profile to ``out_path``."""
    from ..text2video import WanT2V

    pipeline = WanT2V(WAN_CONFIGS[TASK], ckpt_dir, device="cpu")
    prompts = [data.caption(data.sample_spec(0, i)) for i in range(1 if quick else 4)]
    steps = 8 if quick else 50
    warmup, interval = (2, 2) if quick else (WARMUP, INTERVAL)
    depth = pipeline.model.num_layers
    scores = block_sensitivity(pipeline, prompts, steps, warmup=warmup, interval=interval)
    blocks = choose_blocks(scores)
    log(f"profile: block sensitivity {[round(s, 4) for s in scores]} -> cached {blocks}")
    profile = CacheProfile(
        CacheConfig((uniform_group(depth, blocks),)),  # the paper's schedule, whatever the measurement used
        scores={"blocks": [round(s, 6) for s in scores]},
        metadata={
            "model": "Wan2.1-T2V-tiny",
            "provisional": True,
            "source": (
                "provisional: delta-replacement sensitivity (wan/tiny/cache_rule.py). Each block alone was "
                f"cached (warm-up {warmup}, interval {interval}, {steps} steps) on {len(prompts)} training "
                "captions; score = relative L2 change of the decoded video; the least sensitive "
                f"{len(blocks)} of {depth} blocks are cached (the paper's 28/40 fraction). Replace with a "
                "profiled list (foreground attention ratio) when the profiler exists."
            ),
            "prompts": prompts,
            "steps": steps,
            "size": "64*64",
            "frame_num": 17,
            "sample_shift": WAN_CONFIGS[TASK].sample_shift,
            "guide_scale": 5.0,
            "checkpoint": os.path.basename(os.path.normpath(ckpt_dir)),
        },
    )
    profile.save(out_path)
    return profile
