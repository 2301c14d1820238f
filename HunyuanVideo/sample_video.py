"""HunyuanVideo text-to-video command line, with ProfilingDiT block caching (``--delta_cache``) or, as the peer
baseline, TeaCache (``--teacache-thresh T``; the two exclude each other).

References: Tencent/HunyuanVideo sample_video.py (flow: parse, load, predict, save with the official name).

    python3 sample_video.py --video-size 720 1280 --video-length 129 --infer-steps 50 --prompt "..." \
        --flow-reverse --use-cpu-offload --save-path ./results --seed 42 --delta_cache

Every check runs before anything is loaded, as far as the inputs allow: the arguments and their ranges, the output
folder and ``--cache-stats`` file (writable), the cache policy (one per run), the cache profile against the
official depths and the step count, and the presence of every checkpoint piece. Errors are logged and end the run
with exit code 2, with no output file written; Ctrl-C or SIGTERM ends it with 130 or 143 and no partial file.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
import time

from common_cache.command import RunPolicy, init_logging, policy_from_args, run_command, uncalibrated
from common_cache.teacache import hunyuan_teacache_config
from profilingdit.files import check_output_file, check_output_folder
from profilingdit.parallel import SequenceParallel, broadcast_object, quiet_other_ranks
from hyvideo.cache_profiles import builtin_profile
from hyvideo.config import parse_args
from hyvideo.modules.models import HUNYUAN_VIDEO_CONFIG
from hyvideo.parallel import init_parallel
from hyvideo.utils.file_utils import save_videos_grid, video_file_name

logger = logging.getLogger("sample_video")


def resolve_policy(args: argparse.Namespace) -> RunPolicy:
    """The run's cache policy (the delta cache, TeaCache or none). The profile is checked against the official
    depths of ``--model`` (unless ``--dit-config`` defines another architecture: then when it is attached) and the
    step count; TeaCache takes the published HunyuanVideo coefficients (indicator: the modulated input of the first
    double-stream block; first and last step forced), coefficients fitted for the weights
    (``teacache_coefficients.json`` next to ``--dit-weight``) or ``--teacache-coefficients``."""

    def teacache_config(thresh: float):
        config = hunyuan_teacache_config(thresh)
        if args.dit_config is None:
            return config
        return uncalibrated(config, f"the coefficients published for the official 720p model ({config.source}) on "
                                    f"the architecture of --dit-config {args.dit_config}: they are not calibrated "
                                    "for it")

    depths = None
    if args.dit_config is None:
        config = HUNYUAN_VIDEO_CONFIG[args.model]
        depths = {"double": config["mm_double_blocks_depth"], "single": config["mm_single_blocks_depth"]}
    return policy_from_args(
        args, what=f"--model {args.model}", num_steps=args.infer_steps, builtin=builtin_profile(args.model),
        teacache_config=teacache_config, depths=depths,
        weights_dir=os.path.dirname(args.dit_weight) if args.dit_weight else None, dash="-", logger=logger)


def save_samples(args: argparse.Namespace, outputs: dict) -> list[str]:
    """Writes each video with the official name into ``--save-path`` (``_{--save-path-suffix}``)."""
    save_path = args.save_path if args.save_path_suffix == "" else f"{args.save_path}_{args.save_path_suffix}"
    paths = []
    for sample, seed, prompt in zip(outputs["samples"], outputs["seeds"], outputs["prompts"]):
        path = save_videos_grid(sample[None], video_file_name(save_path, seed, prompt), fps=24)
        logger.info("Sample save to: %s", path)
        paths.append(path)
    return paths


def generate(args: argparse.Namespace, sp: SequenceParallel | None = None) -> list[str]:
    """Runs one generation; rank 0 writes the videos and returns their paths (other ranks: an empty list)."""
    rank = 0 if sp is None else sp.rank
    quiet_other_ranks(rank)
    logger.info("Generation job args: %s", args)
    if sp is not None:  # every rank must draw the same noise for the same prompt: rank 0's values win
        from hyvideo.inference import SEED_RANGE

        args.seed = random.randint(0, SEED_RANGE) if args.seed is None else args.seed
        args.seed, args.prompt, args.neg_prompt = broadcast_object((args.seed, args.prompt, args.neg_prompt))
    policy = resolve_policy(args)
    # hyvideo.inference pulls in diffusers and transformers (seconds): imported only once the checks have passed
    from hyvideo.inference import load_sampler

    start = time.perf_counter()
    sampler = load_sampler(args, policy, sp)
    load_seconds = time.perf_counter() - start
    outputs = sampler.predict(
        prompt=args.prompt, height=args.video_size[0], width=args.video_size[1], video_length=args.video_length,
        seed=args.seed, negative_prompt=args.neg_prompt, infer_steps=args.infer_steps, guidance_scale=args.cfg_scale,
        num_videos_per_prompt=args.num_videos, flow_shift=args.flow_shift, batch_size=args.batch_size,
        embedded_guidance_scale=args.embedded_cfg_scale, progress=rank == 0, decode=rank == 0)
    if rank != 0:
        return []
    paths = save_samples(args, outputs)
    report = outputs["report"]
    logger.info("time: %.1f s loading, %.1f s generating (%.1f s denoising %d steps, %.1f s decoding)",
                load_seconds, report.total_seconds, report.denoise_seconds, args.infer_steps, report.decode_seconds)
    policy.log_summary(logger, report, args.cache_stats)
    return paths


def check_output_args(args: argparse.Namespace) -> None:
    """The output folder (``--save-path``, with ``--save-path-suffix``; created if missing, so its nearest existing
    parent must be writable) and ``--cache-stats`` (a .json in a writable folder), before anything is loaded."""
    save_path = args.save_path if args.save_path_suffix == "" else f"{args.save_path}_{args.save_path_suffix}"
    if os.path.exists(save_path) and not os.path.isdir(save_path):
        raise ValueError(f"--save-path {save_path} is a file: expected a folder (created if missing)")
    check_output_folder("--save-path", save_path, create=True)
    if args.cache_stats is not None:
        check_output_file("--cache-stats", args.cache_stats, (".json",))


def main(argv: list[str] | None = None) -> int:
    init_logging()

    def run() -> None:
        args = parse_args(argv)  # checks every value on every rank before any process group exists
        check_output_args(args)
        generate(args, init_parallel(args))

    return run_command(run, logger)


if __name__ == "__main__":
    sys.exit(main())
