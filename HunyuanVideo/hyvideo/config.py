"""Command line of HunyuanVideo's ``sample_video.py``: every official flag and default, plus the cache groups.

References: Tencent/HunyuanVideo hyvideo/config.py (argument groups, flag names, defaults, `sanity_check_args`).

Deliberate differences to upstream (each one a crash or a silent surprise there; docs/hunyuanvideo.md lists them):

* ``--latent-channels`` is an ``int`` (upstream declares ``type=str``, so passing it at all made the channel check
  fail with ``16 != "16"``).
* ``--dit-weight`` defaults to ``<model base>/hunyuan-video-t2v-720p/transformers/mp_rank_00_model_states.pt``,
  which is upstream's literal default when the model base is the default ``ckpts``.
* ``--dit-config PATH`` (new): the transformer's architecture comes from the checkpoint's shapes plus this JSON
  file (``rope_dim_list`` and any other field the weights cannot tell) instead of ``--model``.
* :func:`sanity_check_args` also checks what upstream only discovered by crashing (or silently rounded): the size
  (two positive values, divisible by 16), the frame count (4n+1), steps, counts, the process layout (torchrun).
* ``--teacache-thresh T`` (new, also ``--teacache_thresh``): TeaCache, the peer baseline. TeaCache4HunyuanVideo has
  no such flag (its threshold, 0.15, is edited in the script); off unless given.
"""

from __future__ import annotations

import argparse
import math
import re

from common_cache import add_cache_args
from common_cache.cli import add_teacache_args

from .constants import PRECISIONS, PROMPT_TEMPLATE
from .modules.models import HUNYUAN_VIDEO_CONFIG
from .parallel import check_parallel_args

VAE_PATTERN = r"\d{2,3}-\d{1,2}c-\w+"
TEXT_ENCODERS = ("clipL", "llm")
# H and W must be multiples of the VAE's spatial compression (8) times the transformer's patch size (2).
SIZE_MULTIPLE = 16


def parse_args(argv: list[str] | None = None, namespace: argparse.Namespace | None = None) -> argparse.Namespace:
    """Parses the command line and runs :func:`sanity_check_args`.

    Raises:
        ValueError: a value the official checks (or ours) refuse; the message names the flag and what is allowed.
    """
    parser = argparse.ArgumentParser(description="HunyuanVideo inference script")
    add_network_args(parser)
    add_extra_models_args(parser)
    add_denoise_schedule_args(parser)
    add_inference_args(parser)
    add_parallel_args(parser)
    add_cache_args(parser, kebab=True)
    add_teacache_args(parser, kebab=True, ret_steps=False)  # no published ret-steps mode for HunyuanVideo
    args = parser.parse_args(argv, namespace=namespace)
    return sanity_check_args(args)


def add_network_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    group = parser.add_argument_group(title="HunyuanVideo network args")
    group.add_argument("--model", type=str, default="HYVideo-T/2-cfgdistill", choices=list(HUNYUAN_VIDEO_CONFIG),
                       help="The transformer configuration (official checkpoints).")
    group.add_argument("--latent-channels", type=int, default=16,
                       help="Latent channels of the DiT; must equal the VAE's channel count (the 16 of '884-16c-hy').")
    group.add_argument("--precision", type=str, default="bf16", choices=sorted(PRECISIONS),
                       help="DiT parameter and autocast dtype on CUDA (a CPU run is fp32 throughout).")
    group.add_argument("--rope-theta", type=int, default=256, help="Theta used in the RoPE.")
    return parser


def add_extra_models_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    group = parser.add_argument_group(title="Extra models args, including vae, text encoders and tokenizers")
    group.add_argument("--vae", type=str, default="884-16c-hy",
                       help="Name of the VAE model ('884-16c-hy': 4x temporal, 8x8 spatial, 16 channels).")
    group.add_argument("--vae-precision", type=str, default="fp16", choices=sorted(PRECISIONS),
                       help="Precision mode for the VAE model (CUDA).")
    group.add_argument("--vae-tiling", action="store_true", help="Enable tiling for the VAE model.")
    parser.set_defaults(vae_tiling=True)  # as upstream: always on
    group.add_argument("--text-encoder", type=str, default="llm", choices=list(TEXT_ENCODERS),
                       help="Name of the text encoder model.")
    group.add_argument("--text-encoder-precision", type=str, default="fp16", choices=sorted(PRECISIONS),
                       help="Precision mode for the text encoder model (CUDA).")
    group.add_argument("--text-states-dim", type=int, default=4096, help="Dimension of the text encoder hidden states.")
    group.add_argument("--text-len", type=int, default=256, help="Maximum length of the text input.")
    group.add_argument("--tokenizer", type=str, default="llm", choices=list(TEXT_ENCODERS),
                       help="Name of the tokenizer model.")
    group.add_argument("--prompt-template", type=str, default="dit-llm-encode", choices=list(PROMPT_TEMPLATE),
                       help="Image prompt template for the decoder-only text encoder model.")
    group.add_argument("--prompt-template-video", type=str, default="dit-llm-encode-video",
                       choices=list(PROMPT_TEMPLATE), help="Video prompt template for the decoder-only text encoder.")
    group.add_argument("--hidden-state-skip-layer", type=int, default=2,
                       help="Skip layer for the hidden states: use hidden_states[-(skip + 1)].")
    group.add_argument("--apply-final-norm", action="store_true",
                       help="Apply the final normalization layer to the skipped hidden state.")
    group.add_argument("--text-encoder-2", type=str, default="clipL", choices=list(TEXT_ENCODERS),
                       help="Name of the second text encoder model.")
    group.add_argument("--text-encoder-precision-2", type=str, default="fp16", choices=sorted(PRECISIONS),
                       help="Precision mode for the second text encoder model (CUDA).")
    group.add_argument("--text-states-dim-2", type=int, default=768,
                       help="Dimension of the second text encoder's pooled output.")
    group.add_argument("--tokenizer-2", type=str, default="clipL", choices=list(TEXT_ENCODERS),
                       help="Name of the second tokenizer model.")
    group.add_argument("--text-len-2", type=int, default=77, help="Maximum length of the second text input.")
    return parser


def add_denoise_schedule_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    group = parser.add_argument_group(title="Denoise schedule args")
    group.add_argument("--denoise-type", type=str, default="flow", help="Denoise type (only 'flow').")
    group.add_argument("--flow-shift", type=float, default=7.0, help="Shift factor of the flow-matching schedule.")
    group.add_argument("--flow-reverse", action="store_true",
                       help="Sample from t=1 (noise) to t=0. Pass it: every official script does.")
    group.add_argument("--flow-solver", type=str, default="euler", help="Solver for flow matching (only 'euler').")
    group.add_argument("--use-linear-quadratic-schedule", action="store_true",
                       help="Parsed for compatibility; unused in inference (as upstream).")
    group.add_argument("--linear-schedule-end", type=int, default=25,
                       help="Parsed for compatibility; unused in inference (as upstream).")
    return parser


def add_inference_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    group = parser.add_argument_group(title="Inference args")
    group.add_argument("--model-base", type=str, default="ckpts",
                       help="Root of the checkpoints (the MODEL_BASE environment variable wins when set, as upstream).")
    group.add_argument("--dit-weight", type=str, default=None,
                       help="DiT checkpoint file or folder (default: <model base>/hunyuan-video-t2v-720p/"
                            "transformers/mp_rank_00_model_states.pt).")
    group.add_argument("--dit-config", type=str, default=None, metavar="PATH",
                       help="JSON with the DiT fields the weights cannot tell (rope_dim_list, ...): the checkpoint's "
                            "shapes then define the architecture instead of --model (non-official checkpoints).")
    group.add_argument("--model-resolution", type=str, default="540p", choices=["540p", "720p"],
                       help="Parsed for compatibility; unused (the default --dit-weight is the 720p checkpoint).")
    group.add_argument("--load-key", type=str, default="module",
                       help="Key of the weights in a DeepSpeed-style checkpoint ('module' or 'ema').")
    group.add_argument("--use-cpu-offload", action="store_true",
                       help="Keep the text encoders and the VAE in CPU memory; their layers visit the GPU in turn.")
    group.add_argument("--batch-size", type=int, default=1, help="Batch size for inference (only 1).")
    group.add_argument("--infer-steps", type=int, default=50, help="Number of denoising steps for inference.")
    group.add_argument("--disable-autocast", action="store_true",
                       help="Disable autocast for the denoising loop and the VAE decoding (CUDA).")
    group.add_argument("--save-path", type=str, default="./results", help="Folder for the generated videos.")
    group.add_argument("--save-path-suffix", type=str, default="",
                       help="Suffix for the folder: the videos go to '{save_path}_{suffix}' when non-empty.")
    group.add_argument("--name-suffix", type=str, default="", help="Suffix for the file names (unused, as upstream).")
    group.add_argument("--num-videos", type=int, default=1, help="Number of videos to generate for the prompt.")
    group.add_argument("--video-size", type=int, nargs="+", default=(720, 1280),
                       help="Video size for inference: two values, height and width (multiples of 16).")
    group.add_argument("--video-length", type=int, default=129, help="Frames of the video: 4n+1.")
    group.add_argument("--prompt", type=str, default=None, help="Prompt for sampling during evaluation.")
    group.add_argument("--seed-type", type=str, default="auto", choices=["file", "random", "fixed", "auto"],
                       help="Parsed for compatibility; unused (as upstream).")
    group.add_argument("--seed", type=int, default=None,
                       help="Seed of the first video (video i uses seed + i); none: a random seed per video.")
    group.add_argument("--neg-prompt", type=str, default=None,
                       help="Negative prompt (used only with --cfg-scale > 1).")
    group.add_argument("--cfg-scale", type=float, default=1.0,
                       help="Classifier-free guidance scale; above 1 runs the negative prompt too.")
    group.add_argument("--embedded-cfg-scale", type=float, default=6.0,
                       help="Embedded guidance scale of the guidance-distilled model.")
    group.add_argument("--use-fp8", action="store_true", help="fp8 weights (not supported by this version).")
    group.add_argument("--reproduce", action="store_true", help="Parsed for compatibility; changes nothing.")
    return parser


def add_parallel_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    group = parser.add_argument_group(title="Parallel args")
    group.add_argument("--ulysses-degree", type=int, default=1,
                       help="Ulysses degree (sequence parallelism under torchrun; divides the head count).")
    group.add_argument("--ring-degree", type=int, default=1,
                       help="Ring degree (ulysses x ring = the number of torchrun processes).")
    return parser


def sanity_check_args(args: argparse.Namespace) -> argparse.Namespace:
    """The official checks (VAE name, latent channels) and ours, in that order; returns ``args``.

    Raises:
        ValueError: naming the flag, the value and what is allowed.
    """
    if not re.fullmatch(VAE_PATTERN, args.vae):
        raise ValueError(f"Invalid VAE model: --vae {args.vae}. Must be in the format of '{VAE_PATTERN}' "
                         "(e.g. 884-16c-hy)")
    vae_channels = int(args.vae.split("-")[1][:-1])
    if args.latent_channels is None:
        args.latent_channels = vae_channels
    if vae_channels != args.latent_channels:
        raise ValueError(f"Latent channels (--latent-channels {args.latent_channels}) must match the VAE channels "
                         f"({vae_channels} in --vae {args.vae}).")
    if args.prompt is None:
        raise ValueError('--prompt is required: the text to generate the video from, e.g. --prompt "A cat walks on '
                         'the grass, realistic style."')
    _check_video_size(args.video_size)
    args.video_size = tuple(args.video_size)
    if args.video_length < 1 or (args.video_length - 1) % 4:
        raise ValueError(f"--video-length {args.video_length} is not allowed: expected 4n+1 (1, 5, 9, ..., 129)")
    for flag, value in (("--infer-steps", args.infer_steps), ("--num-videos", args.num_videos),
                        ("--text-len", args.text_len), ("--text-len-2", args.text_len_2)):
        if value < 1:
            raise ValueError(f"{flag} {value} is not allowed: expected an integer >= 1")
    _check_numbers(args)
    _check_choice("--denoise-type", args.denoise_type, ("flow",))
    _check_choice("--flow-solver", args.flow_solver, ("euler",))
    if args.text_encoder != "llm":
        raise ValueError(f"--text-encoder {args.text_encoder} is not allowed: the DiT reads token states, which only "
                         "'llm' gives ('clipL' gives a pooled vector and belongs to --text-encoder-2)")
    if args.hidden_state_skip_layer is not None and args.hidden_state_skip_layer < 0:
        raise ValueError(f"--hidden-state-skip-layer {args.hidden_state_skip_layer} is not allowed: expected >= 0")
    _check_teacache_thresh(args.teacache_thresh)
    _check_process_layout(args)
    return args


MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes 0..2^64-1


def _check_numbers(args: argparse.Namespace) -> None:
    """Ranges of the numeric sampling flags (upstream passed them on and failed, or sampled NaN, much later)."""
    if not (math.isfinite(args.flow_shift) and args.flow_shift > 0):
        raise ValueError(f"--flow-shift {args.flow_shift} is not allowed: expected a finite number > 0")
    if args.rope_theta < 1:
        raise ValueError(f"--rope-theta {args.rope_theta} is not allowed: expected an integer >= 1 (official: 256)")
    for flag, value in (("--cfg-scale", args.cfg_scale), ("--embedded-cfg-scale", args.embedded_cfg_scale)):
        if not math.isfinite(value):
            raise ValueError(f"{flag} {value} is not allowed: expected a finite number")
    if args.seed is not None and not 0 <= args.seed <= MAX_SEED - (args.num_videos - 1):
        raise ValueError(f"--seed {args.seed} is not allowed: expected 0..{MAX_SEED - (args.num_videos - 1)} (video i "
                         "uses seed + i, and a seed is a 64-bit unsigned integer); omit it for a random seed")


def _check_teacache_thresh(thresh: float | None) -> None:
    if thresh is not None and not (math.isfinite(thresh) and thresh >= 0):
        raise ValueError(f"--teacache-thresh {thresh} is not allowed: expected a finite number >= 0 (0 computes "
                         "every step; TeaCache4HunyuanVideo uses 0.1 or 0.15)")


def _check_video_size(video_size) -> None:
    if len(video_size) != 2:
        raise ValueError(f"--video-size {' '.join(map(str, video_size))} is not allowed: expected two values, "
                         "height and width (e.g. --video-size 720 1280)")
    height, width = video_size
    if height <= 0 or width <= 0:
        raise ValueError(f"--video-size {height} {width} is not allowed: height and width must be positive")
    if height % SIZE_MULTIPLE or width % SIZE_MULTIPLE:
        round_up = [-(-v // SIZE_MULTIPLE) * SIZE_MULTIPLE for v in (height, width)]
        raise ValueError(
            f"--video-size {height} {width} is not allowed: height and width must be multiples of {SIZE_MULTIPLE} "
            f"(8x VAE compression x 2 patch size), e.g. --video-size {round_up[0]} {round_up[1]} (upstream rounds "
            "up silently)")


def _check_choice(flag: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{flag} {value} is not supported: allowed {', '.join(allowed)}")


def _check_process_layout(args: argparse.Namespace) -> None:
    check_parallel_args(args)  # against torchrun's WORLD_SIZE, on every rank before any process group exists
    if args.batch_size != 1:
        raise ValueError(f"--batch-size {args.batch_size} is not allowed: only 1 (one prompt per run; upstream "
                         "crashes on other values). Use --num-videos N for several videos of the prompt")
    if args.use_fp8:
        raise ValueError("--use-fp8 is not supported by this re-implementation: use the bf16 checkpoint "
                         "(mp_rank_00_model_states.pt) without --use-fp8")
