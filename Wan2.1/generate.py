"""Wan2.1 text-to-video and image-to-video command line, with ProfilingDiT block caching (``--delta_cache``).

References: Wan2.1 generate.py (flags, defaults, checks, output naming). The t2v and i2v tasks.

    python generate.py --task t2v-14B --size 832*480 --frame_num 81 --ckpt_dir ./Wan2.1-T2V-14B \
        --prompt "..." --delta_cache
    python generate.py --task i2v-14B --size 832*480 --ckpt_dir ./Wan2.1-I2V-14B-480P --image first_frame.jpg \
        --prompt "..." --delta_cache
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import random
import sys

from common_cache import add_cache_args
from common_cache.cli import add_teacache_args
from common_cache.command import RunPolicy, init_logging, policy_from_args, run_command
from common_cache.teacache import wan_teacache_config
from profilingdit.files import check_output_file, check_output_folder
from profilingdit.parallel import SequenceParallel, broadcast_object, quiet_other_ranks
from wan.cache_profiles import default_profile, resolve_profile_path
from wan.configs import SIZE_CONFIGS, SUPPORTED_SIZES, WAN_CONFIGS
from wan.configs import MAX_AREA_CONFIGS, is_image_task
from wan.distributed import check_parallel_args, init_parallel
from wan.image2video import WanI2V, latent_grid, load_image
from wan.text2video import SAMPLE_SOLVERS, WanT2V
from wan.modules.model import ROPE_MAX_POSITIONS
from wan.utils.utils import VIDEO_EXTENSIONS, cache_video, default_save_file, str2bool

EXAMPLE_PROMPT = {
    "t2v-1.3B": "Two anthropomorphic cats in comfy boxing gear and bright gloves fight intensely on a spotlighted stage.",
    "t2v-14B": "Two anthropomorphic cats in comfy boxing gear and bright gloves fight intensely on a spotlighted stage.",
    "i2v-14B": "Summer beach vacation style, a white cat wearing sunglasses sits on a surfboard. The fluffy-furred feline "
               "gazes directly at the camera with a relaxed expression. Blurred beach scenery forms the background "
               "featuring crystal-clear waters, distant green hills, and a blue sky dotted with white clouds. The cat "
               "assumes a naturally relaxed posture, as if savoring the sea breeze and warm sunlight. A close-up shot "
               "highlights the feline's intricate details and the refreshing atmosphere of the seaside.",
}


def _parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Generate a video from a text prompt with Wan2.1")
    parser.add_argument("--task", type=str, default="t2v-14B", choices=list(WAN_CONFIGS), help="The task to run.")
    parser.add_argument("--size", type=str, default=None, choices=list(SIZE_CONFIGS),
                        help="The area (width*height) of the generated video (default 1280*720, or the "
                             "task's own default size).")
    parser.add_argument("--frame_num", type=int, default=None, help="Frames to sample, 4n+1 (default 81).")
    parser.add_argument("--ckpt_dir", type=str, default=None, help="The path to the checkpoint directory.")
    parser.add_argument("--offload_model", type=str2bool, default=None,
                        help="Offload the model to the CPU after each forward to reduce GPU memory "
                             "(default: True on one process).")
    parser.add_argument("--ulysses_size", type=int, default=1, help="Ulysses sequence-parallel degree.")
    parser.add_argument("--ring_size", type=int, default=1, help="Ring attention sequence-parallel degree.")
    parser.add_argument("--t5_fsdp", action="store_true", default=False, help="Use FSDP for the T5.")
    parser.add_argument("--t5_cpu", action="store_true", default=False, help="Keep the T5 on the CPU.")
    parser.add_argument("--dit_fsdp", action="store_true", default=False, help="Use FSDP for the DiT.")
    parser.add_argument("--save_file", type=str, default=None, help="The file to save the generated video to.")
    parser.add_argument("--prompt", type=str, default=None, help="The prompt to generate the video from.")
    parser.add_argument("--use_prompt_extend", action="store_true", default=False,
                        help="Extend the prompt with an LLM (not available in this re-implementation).")
    parser.add_argument("--prompt_extend_method", type=str, default="local_qwen", choices=["dashscope", "local_qwen"])
    parser.add_argument("--prompt_extend_model", type=str, default=None)
    parser.add_argument("--prompt_extend_target_lang", type=str, default="zh", choices=["zh", "en"])
    parser.add_argument("--base_seed", type=int, default=-1, help="The seed (-1: random).")
    parser.add_argument("--image", type=str, default=None,
                        help="The image to generate the video from (image-to-video tasks; required there).")
    parser.add_argument("--sample_solver", type=str, default="unipc", choices=list(SAMPLE_SOLVERS),
                        help="The solver used to sample.")
    parser.add_argument("--sample_steps", type=int, default=None, help="The sampling steps (default 50; 40 for i2v).")
    parser.add_argument("--sample_shift", type=float, default=None,
                        help="Noise schedule shift (default 5.0; 3.0 for i2v at 832*480 and 480*832).")
    parser.add_argument("--sample_guide_scale", type=float, default=5.0, help="Classifier-free guidance scale.")
    add_cache_args(parser)
    add_teacache_args(parser)
    return parser.parse_args(argv)


def _validate_args(args: argparse.Namespace) -> None:
    """Fills the task-dependent defaults and checks every value before anything is loaded (official checks first)."""
    config = WAN_CONFIGS[args.task]
    if args.ckpt_dir is None:
        default = config.get("default_ckpt_dir")
        if default is None:
            raise ValueError(f"--ckpt_dir is required for --task {args.task}: the folder of the official checkpoint")
        args.ckpt_dir = default
    args.size = config.get("default_size", "1280*720") if args.size is None else args.size
    _fill_image_task_defaults(args, config)
    args.sample_steps = config.get("sample_steps", 50) if args.sample_steps is None else args.sample_steps
    args.sample_shift = config.get("sample_shift", 5.0) if args.sample_shift is None else args.sample_shift
    args.frame_num = config.get("frame_num", 81) if args.frame_num is None else args.frame_num
    _check_numbers(args, config)
    args.base_seed = args.base_seed if args.base_seed >= 0 else random.randint(0, sys.maxsize)
    if args.size not in SUPPORTED_SIZES[args.task]:
        raise ValueError(f"--size {args.size} is not supported by task {args.task}: allowed "
                         f"{', '.join(SUPPORTED_SIZES[args.task])}")
    if args.frame_num < 1 or (args.frame_num - 1) % 4:
        raise ValueError(f"--frame_num {args.frame_num} is not allowed: expected 4n+1 (e.g. 5, 9, ..., 81)")
    if args.sample_steps < 1:
        raise ValueError(f"--sample_steps {args.sample_steps} is not allowed: expected an integer >= 1")
    if not args.sample_shift > 0:
        raise ValueError(f"--sample_shift {args.sample_shift} is not allowed: expected a number > 0")
    check_parallel_args(args, config.num_heads)  # on every rank, before any process group exists
    if args.use_prompt_extend:
        raise ValueError("--use_prompt_extend is not available: it needs Qwen weights or the DashScope service; "
                         "pass an already extended --prompt instead")
    _check_image_args(args, config)
    _check_outputs(args)


MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes 0..2^64-1


def _check_numbers(args: argparse.Namespace, config) -> None:
    """Upper bounds and finiteness of the numeric flags (upstream only failed on them after loading the model)."""
    max_frames = (ROPE_MAX_POSITIONS - 1) * config.vae_stride[0] + 1  # one RoPE row per latent frame
    if args.frame_num > max_frames:
        raise ValueError(f"--frame_num {args.frame_num} is not allowed: at most {max_frames} (4n+1; the DiT's RoPE "
                         f"table has {ROPE_MAX_POSITIONS} rows, one per latent frame of {config.vae_stride[0]} frames)")
    if args.base_seed > MAX_SEED:
        raise ValueError(f"--base_seed {args.base_seed} is not allowed: expected 0..{MAX_SEED} (a 64-bit unsigned "
                         "integer), or -1 for a random seed")
    for flag, value in (("--sample_shift", args.sample_shift), ("--sample_guide_scale", args.sample_guide_scale)):
        if not math.isfinite(value):
            raise ValueError(f"{flag} {value} is not allowed: expected a finite number")


def _check_outputs(args: argparse.Namespace) -> None:
    """Every output path can be written (an existing, writable folder; an allowed extension) before any loading."""
    if args.save_file is not None:
        check_output_file("--save_file", args.save_file, VIDEO_EXTENSIONS)
    else:  # the default name goes to the current folder
        check_output_folder("--save_file", os.getcwd(), "(default: the current folder)")
    if args.cache_stats is not None:
        check_output_file("--cache_stats", args.cache_stats, (".json",))


SIZES_480P = ("832*480", "480*832")


def _fill_image_task_defaults(args: argparse.Namespace, config) -> None:
    """The i2v default shift, as upstream: 3.0 at the 480P sizes (the task config's ``sample_shift_480p``)."""
    if args.sample_shift is None and args.size in SIZES_480P and config.get("sample_shift_480p") is not None:
        args.sample_shift = config.sample_shift_480p


def _check_image_args(args: argparse.Namespace, config) -> None:
    """``--image`` belongs to the image-to-video tasks, which require it; the file must be a readable image that
    fits the ``--size`` area. Checked before any model loads (upstream ignored ``--image`` in text-to-video and
    fell back to its example image, which is not shipped here)."""
    image_tasks = [task for task in WAN_CONFIGS if is_image_task(task)]
    if not is_image_task(args.task):
        if args.image is not None:
            raise ValueError(f"--image is only used by the image-to-video tasks ({', '.join(image_tasks)}); task "
                             f"{args.task} generates from the prompt alone: drop --image, or pick an i2v --task")
        return
    if args.image is None:
        raise ValueError(f"--image is required for task {args.task}: the image the video starts from (PNG, JPEG, ...)")
    image = load_image(args.image)
    latent_grid(image.height, image.width, MAX_AREA_CONFIGS[args.size], config.vae_stride, config.patch_size)


def _teacache_resolution(args: argparse.Namespace) -> str | None:
    """Which published i2v TeaCache coefficients apply: TeaCache's rule, '480P' or '720P' in the checkpoint folder's
    name; without either there, the resolution of ``--size``. None for the other tasks."""
    if not is_image_task(args.task):
        return None
    name = os.path.basename(os.path.normpath(args.ckpt_dir))
    named = [resolution for resolution in ("480P", "720P") if resolution in name]
    return named[0] if named else ("480P" if args.size in SIZES_480P else "720P")


def _pipeline_class(task: str):
    return WanI2V if is_image_task(task) else WanT2V


def _sample(args: argparse.Namespace, pipeline: WanT2V, prompt: str, offload_model: bool):
    """The pipeline call of the task: text-to-video at ``--size``; image-to-video from ``--image``, within the
    ``--size`` area and with the image's aspect ratio."""
    options = dict(frame_num=args.frame_num, shift=args.sample_shift, sample_solver=args.sample_solver,
                   sampling_steps=args.sample_steps, guide_scale=args.sample_guide_scale, seed=args.base_seed,
                   offload_model=offload_model)
    if not is_image_task(args.task):
        return pipeline.generate(prompt, size=SIZE_CONFIGS[args.size], **options)
    image, max_area = load_image(args.image), MAX_AREA_CONFIGS[args.size]
    logging.info("Input image: %s (%dx%d); video size %dx%d", args.image, image.width, image.height,
                 *pipeline.output_size(image, max_area))
    return pipeline.generate(prompt, image, max_area=max_area, **options)


def resolve_policy(args: argparse.Namespace) -> RunPolicy:
    """The run's cache policy (the delta cache, TeaCache or none), checked against the task before any loading."""
    return policy_from_args(
        args, what=f"task {args.task}", num_steps=args.sample_steps, builtin=default_profile(args.task),
        teacache_config=lambda thresh: wan_teacache_config(args.task, thresh, args.use_ret_steps,
                                                           resolution=_teacache_resolution(args)),
        depths={"blocks": WAN_CONFIGS[args.task].num_layers}, weights_dir=args.ckpt_dir,
        resolve_profile=resolve_profile_path)


def generate(args: argparse.Namespace, sp: SequenceParallel | None = None) -> str | None:
    """Runs one generation; rank 0 writes the video and returns its path (other ranks return None)."""
    rank = 0 if sp is None else sp.rank
    quiet_other_ranks(rank)
    config = WAN_CONFIGS[args.task]
    logging.info("Generation job args: %s", args)
    logging.info("Generation model config: %s", config)
    prompt = args.prompt if args.prompt is not None else EXAMPLE_PROMPT.get(args.task, "")
    args.base_seed, prompt = broadcast_object((args.base_seed, prompt))  # torchrun: rank 0's seed and prompt
    offload_model = (sp is None) if args.offload_model is None else args.offload_model
    policy = resolve_policy(args)
    pipeline = _pipeline_class(args.task)(
        config=config, checkpoint_dir=args.ckpt_dir, rank=rank, t5_cpu=args.t5_cpu, use_usp=sp is not None,
        device=None if sp is None else sp.device, sequence_parallel=sp)
    policy.attach(pipeline.model, logging.getLogger())
    logging.info("Generating video ...")
    video, report = _sample(args, pipeline, prompt, offload_model)
    if rank != 0:
        return None
    save_file = args.save_file or default_save_file(args.task, args.size, args.ulysses_size, args.ring_size, prompt)
    logging.info("Saving generated video to %s", save_file)
    cache_video(video[None], save_file=save_file, fps=config.sample_fps, nrow=1, normalize=True, value_range=(-1, 1))
    logging.info("time: %.1f s in total, %.1f s denoising (%d steps), %.1f s decoding", report.total_seconds,
                 report.denoise_seconds, args.sample_steps, report.decode_seconds)
    policy.log_summary(logging.getLogger(), report, args.cache_stats)
    logging.info("Finished.")
    return save_file


def main(argv: list[str] | None = None) -> int:
    init_logging()
    args = _parse_args(argv)

    def run() -> None:
        _validate_args(args)
        generate(args, init_parallel(args))

    return run_command(run, logging.getLogger())


if __name__ == "__main__":
    sys.exit(main())
