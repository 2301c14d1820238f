"""Loading HunyuanVideo from a checkpoint folder and sampling videos: `HunyuanVideoSampler`.

References: Tencent/HunyuanVideo hyvideo/inference.py (`Inference.from_pretrained`, `HunyuanVideoSampler.predict`:
component paths, precisions, text-encoder lengths, seeds, RoPE from the latent size, CPU offload).

Where the pieces are (official layout, A.2): with ``root`` = the ``MODEL_BASE`` environment variable when set (as
upstream), else ``--model-base``:

    root/hunyuan-video-t2v-720p/transformers/mp_rank_00_model_states.pt   (default --dit-weight)
    root/hunyuan-video-t2v-720p/vae/{config.json, pytorch_model.pt}
    root/text_encoder/      LLM + tokenizer
    root/text_encoder_2/    CLIP + tokenizer

Every piece is checked before anything is loaded (:func:`check_checkpoint_pieces`). Precisions: on CUDA the
official ones (`--precision` DiT under autocast, `--text-encoder-precision*`, `--vae-precision`); on a CPU fp32
throughout, whatever the flags say (bf16 matmuls are several times slower there).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from profilingdit.files import load_component

from .constants import NEGATIVE_PROMPT, PRECISION_TO_TYPE, PROMPT_TEMPLATE
from .diffusion.pipelines import HunyuanVideoPipeline
from .diffusion.schedulers import FlowMatchDiscreteScheduler
from .modules.checkpoint import CONFIG_FIELDS, load_hunyuan_transformer, resolve_checkpoint_path
from .modules.posemb_layers import get_rotary_pos_embed
from .parallel import parallelize_transformer
from .text_encoder import MODEL_FILES, TOKENIZER_FILES, TextEncoder, llm_max_length
from .vae import load_vae

if TYPE_CHECKING:
    from common_cache.command import RunPolicy
    from profilingdit.parallel import SequenceParallel

logger = logging.getLogger(__name__)

VAE_SUBFOLDERS = {"884-16c-hy": os.path.join("hunyuan-video-t2v-720p", "vae")}
TEXT_ENCODER_SUBFOLDERS = {"llm": "text_encoder", "clipL": "text_encoder_2"}
DEFAULT_DIT_WEIGHT = os.path.join("hunyuan-video-t2v-720p", "transformers", "mp_rank_00_model_states.pt")
SEED_RANGE = 1_000_000


# -------------------------------------------------------------------------------------------------------------
# Paths and checks (nothing is loaded here)


def model_base(args: argparse.Namespace) -> str:
    """The checkpoint root: ``$MODEL_BASE`` when set (upstream reads it for the VAE and text encoders), else
    ``--model-base`` (upstream used ``./ckpts`` then, whatever ``--model-base`` said)."""
    env = os.environ.get("MODEL_BASE")
    if env and os.path.abspath(env) != os.path.abspath(args.model_base) and args.model_base != "ckpts":
        logger.warning("MODEL_BASE=%s overrides --model-base %s (as upstream)", env, args.model_base)
    return env or args.model_base


def component_paths(args: argparse.Namespace, root: str) -> dict[str, str]:
    """Where each component is read from: ``dit_weight``, ``vae``, ``text_encoder``, ``text_encoder_2``."""
    if args.vae not in VAE_SUBFOLDERS:
        raise ValueError(f"--vae {args.vae}: no checkpoint folder is known for it; allowed {sorted(VAE_SUBFOLDERS)}")
    return {
        "dit_weight": args.dit_weight or os.path.join(root, DEFAULT_DIT_WEIGHT),
        "vae": os.path.join(root, VAE_SUBFOLDERS[args.vae]),
        "text_encoder": os.path.join(root, TEXT_ENCODER_SUBFOLDERS[args.text_encoder]),
        "text_encoder_2": os.path.join(root, TEXT_ENCODER_SUBFOLDERS[args.text_encoder_2]),
    }


def check_checkpoint_pieces(args: argparse.Namespace, root: str) -> dict[str, str]:
    """Fails before anything is loaded when a piece is missing; returns :func:`component_paths`.

    Raises:
        FileNotFoundError: one message listing every missing piece and where it was looked for.
    """
    paths = component_paths(args, root)
    missing = []
    try:
        resolve_checkpoint_path(paths["dit_weight"], args.load_key)
    except FileNotFoundError as err:
        missing.append(f"DiT weights ({str(err).removeprefix('--dit-weight: ')})")
    if args.dit_config is not None and not os.path.isfile(args.dit_config):
        missing.append(f"DiT config (--dit-config {os.path.abspath(args.dit_config)})")
    for what, path in (("VAE config", os.path.join(paths["vae"], "config.json")),
                       ("VAE weights", os.path.join(paths["vae"], "pytorch_model.pt"))):
        if not os.path.isfile(path):
            missing.append(f"{what} ({os.path.abspath(path)})")
    for key, what in (("text_encoder", "LLM text encoder"), ("text_encoder_2", "CLIP text encoder")):
        folder = os.path.abspath(paths[key])
        if not any(os.path.isfile(os.path.join(folder, name)) for name in MODEL_FILES):
            missing.append(f"{what} ({os.path.join(folder, MODEL_FILES[0])})")
        if not any(os.path.isfile(os.path.join(folder, name)) for name in TOKENIZER_FILES):
            missing.append(f"{what} tokenizer (one of {', '.join(TOKENIZER_FILES)} in {folder})")
    if missing:
        raise FileNotFoundError(f"checkpoint pieces missing under the model base {os.path.abspath(root)} "
                                f"(MODEL_BASE or --model-base): {'; '.join(missing)}")
    return paths


@dataclass(frozen=True)
class RunPrecisions:
    """Component dtypes and autocast switches of a run (see the module docstring)."""

    dit: torch.dtype
    text: torch.dtype
    text_2: torch.dtype
    vae: torch.dtype
    autocast: bool
    vae_autocast: bool

    @classmethod
    def from_args(cls, args: argparse.Namespace, device: torch.device) -> RunPrecisions:
        """Official precisions on CUDA, fp32 everywhere on a CPU.

        Raises:
            ValueError: ``--disable-autocast`` with a bf16/fp16 DiT on CUDA (upstream crashes there: its
                ``final_layer.linear`` stays fp32).
        """
        if device.type == "cpu":
            return cls(torch.float32, torch.float32, torch.float32, torch.float32, False, False)
        dit = PRECISION_TO_TYPE[args.precision]
        if args.disable_autocast and dit != torch.float32:
            raise ValueError(f"--disable-autocast with --precision {args.precision} is not supported (the DiT's "
                             "final layer is fp32 and needs autocast): drop --disable-autocast or use --precision fp32")
        vae = PRECISION_TO_TYPE[args.vae_precision]
        text, text_2 = PRECISION_TO_TYPE[args.text_encoder_precision], PRECISION_TO_TYPE[args.text_encoder_precision_2]
        return cls(dit, text, text_2, vae, autocast=dit != torch.float32 and not args.disable_autocast,
                   vae_autocast=vae != torch.float32 and not args.disable_autocast)


def read_dit_config(path: str) -> dict:
    """Reads a ``--dit-config`` JSON: the transformer fields the weights cannot tell (``rope_dim_list``...).

    Raises:
        ValueError: not a JSON object, unknown fields, or no ``rope_dim_list``.
    """
    try:
        with open(path) as handle:
            config = json.load(handle)
    except json.JSONDecodeError as err:
        raise ValueError(f"--dit-config {path} is not valid JSON: {err}") from None
    if not isinstance(config, dict):
        raise ValueError(f"--dit-config {path} must hold a JSON object, got {type(config).__name__}")
    unknown = sorted(set(config) - set(CONFIG_FIELDS))
    if unknown:
        raise ValueError(f"--dit-config {path}: unknown fields {unknown}; allowed {list(CONFIG_FIELDS)}")
    if "rope_dim_list" not in config:
        raise ValueError(f"--dit-config {path} lacks 'rope_dim_list' (per (t, h, w) axis, summing to the head dim)")
    return config


def load_transformer(args: argparse.Namespace, dit_weight: str, device: torch.device,
                     dtype: torch.dtype) -> torch.nn.Module:
    """The DiT from ``dit_weight``: checked against ``--model`` (official path), or defined by the checkpoint's
    shapes plus ``--dit-config``.

    Raises:
        ValueError: the checkpoint does not fit ``--model`` (the message names the field and points to
            ``--dit-config``), or a bad ``--dit-config``.
    """
    if args.dit_config is not None:
        config = read_dit_config(args.dit_config)
        return load_component("DiT weights", dit_weight, lambda: load_hunyuan_transformer(
            dit_weight, args.load_key, model_name=None, config_overrides=config, device=device, dtype=dtype))
    # As upstream, the latent channels and text dims come from the flags; the rest from the --model config.
    overrides = {"in_channels": args.latent_channels, "out_channels": args.latent_channels,
                 "text_states_dim": args.text_states_dim, "text_states_dim_2": args.text_states_dim_2}
    try:
        return load_component("DiT weights", dit_weight, lambda: load_hunyuan_transformer(
            dit_weight, args.load_key, model_name=args.model, config_overrides=overrides, device=device, dtype=dtype))
    except ValueError as err:
        if "the checkpoint has" not in str(err):
            raise
        raise ValueError(f"--dit-weight {dit_weight} does not fit --model {args.model}: {err}. A checkpoint of "
                         "another architecture needs --dit-config PATH (see docs/hunyuanvideo.md)") from None


def _offload(modules: list[torch.nn.Module], device: torch.device) -> None:
    """Upstream's sequential CPU offload: weights stay in CPU memory and visit ``device`` layer by layer."""
    from accelerate import cpu_offload

    for module in modules:
        cpu_offload(module, execution_device=device, offload_buffers=len(module._parameters) > 0)


# -------------------------------------------------------------------------------------------------------------
# The sampler


class HunyuanVideoSampler:
    """Loaded components plus :meth:`predict` (build it with :meth:`from_pretrained`).

    Args:
        args: the parsed command line.
        pipeline: the denoising pipeline over the loaded components.
        device: the execution device.
    """

    def __init__(self, args: argparse.Namespace, pipeline: HunyuanVideoPipeline, device: torch.device):
        self.args = args
        self.pipeline = pipeline
        self.model = pipeline.transformer
        self.device = device

    @classmethod
    def from_pretrained(cls, pretrained_model_path: str, args: argparse.Namespace,
                        device: torch.device | str | None = None,
                        transformer: torch.nn.Module | None = None) -> HunyuanVideoSampler:
        """Checks every checkpoint piece, then loads the DiT, the VAE and both text encoders.

        Args:
            pretrained_model_path: the checkpoint root (see :func:`model_base`).
            args: the parsed command line.
            device: default CUDA when available, else the CPU.
            transformer: an already loaded DiT (e.g. with a cache attached), else it is loaded here.

        Raises:
            FileNotFoundError: missing pieces (all listed).
            ValueError: pieces that do not fit together (shapes, channels, text dims).
        """
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        paths = check_checkpoint_pieces(args, pretrained_model_path)
        precisions = RunPrecisions.from_args(args, device)
        if transformer is None:
            transformer = load_transformer(args, paths["dit_weight"], device, precisions.dit)
        offload = args.use_cpu_offload and device.type == "cuda"
        component_device = torch.device("cpu") if offload else device
        vae = load_component("VAE", paths["vae"], lambda: load_vae(
            args.vae, _precision_name(precisions.vae), vae_path=paths["vae"], logger=logger,
            device=component_device)[0])
        text_encoder, text_encoder_2 = _load_text_encoders(args, paths, precisions, component_device)
        check_components_fit(transformer, vae, text_encoder, text_encoder_2)
        if offload:
            _offload([text_encoder.model, text_encoder_2.model, vae], device)
        elif args.use_cpu_offload:
            logger.info("--use-cpu-offload: nothing to offload on the CPU (no effect)")
        scheduler = FlowMatchDiscreteScheduler(shift=args.flow_shift, reverse=args.flow_reverse,
                                               solver=args.flow_solver)
        pipeline = HunyuanVideoPipeline(transformer, scheduler, vae, text_encoder, text_encoder_2, device,
                                        dit_dtype=precisions.dit, autocast=precisions.autocast,
                                        vae_dtype=precisions.vae, vae_autocast=precisions.vae_autocast,
                                        vae_tiling=args.vae_tiling)
        logger.info("DiT config: %s", transformer.config)
        return cls(args, pipeline, device)

    def get_rotary_pos_embed(self, video_length: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE tables [image tokens, head_dim] for a video size (official `--rope-theta`)."""
        config = self.pipeline.vae.config
        return get_rotary_pos_embed(video_length, height, width, self.model.rope_dim_list, self.model.patch_size,
                                    theta=self.args.rope_theta, time_compression=config.time_compression_ratio,
                                    spatial_compression=config.spatial_compression_ratio)

    def predict(self, prompt: str, height: int = 192, width: int = 336, video_length: int = 129,
                seed: int | None = None, negative_prompt: str | None = None, infer_steps: int = 50,
                guidance_scale: float = 6.0, flow_shift: float = 5.0, embedded_guidance_scale: float | None = None,
                batch_size: int = 1, num_videos_per_prompt: int = 1, progress: bool = True,
                decode: bool = True) -> dict:
        """Generates ``num_videos_per_prompt`` videos of one prompt.

        Args:
            prompt: the text (stripped, as upstream).
            height, width: pixels, multiples of 16.
            video_length: frames, 4n+1.
            seed: seed of the first video (video i uses seed + i); None: a random seed per video.
            negative_prompt: used when ``guidance_scale`` > 1 (default: the official negative prompt).
            infer_steps: denoising steps.
            guidance_scale: real CFG scale (1 = off).
            flow_shift: schedule shift.
            embedded_guidance_scale: guidance-embedding scale (6.0 for the distilled model).
            batch_size: prompts per run (only 1).
            num_videos_per_prompt: videos, generated as one batch.
            progress: show the progress bar.
            decode: run the VAE (False on sequence-parallel ranks other than 0; "samples" is then None).

        Returns:
            {"samples": [N, 3, T, H, W] in [0, 1], "seeds": N ints, "prompts": N strings (one per video),
             "size": (H, W, T), "report": the GenerationReport}.
        """
        if not isinstance(prompt, str):
            raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
        if batch_size != 1:
            raise ValueError(f"batch_size={batch_size} is not allowed: only 1 (use num_videos_per_prompt)")
        self._check_size(height, width, video_length)
        count = batch_size * num_videos_per_prompt
        seeds = ([random.randint(0, SEED_RANGE) for _ in range(count)] if seed is None
                 else [seed + i for _ in range(batch_size) for i in range(num_videos_per_prompt)])
        generators = [torch.Generator(self.device).manual_seed(s) for s in seeds]
        prompts = [prompt.strip()]
        negative = [(negative_prompt or NEGATIVE_PROMPT).strip()]
        self.pipeline.scheduler = FlowMatchDiscreteScheduler(shift=flow_shift, reverse=self.args.flow_reverse,
                                                             solver=self.args.flow_solver)
        freqs_cis = self.get_rotary_pos_embed(video_length, height, width)
        logger.info("sampling: %dx%d (HxW), %d frames, %d steps, seeds %s, %d image tokens, flow shift %s, "
                    "cfg %s, embedded cfg %s, prompt %r", height, width, video_length, infer_steps, seeds,
                    freqs_cis[0].shape[0], flow_shift, guidance_scale, embedded_guidance_scale, prompts[0])
        samples, report = self.pipeline(
            prompts, height, width, video_length, infer_steps, generators, freqs_cis, guidance_scale=guidance_scale,
            negative_prompt=negative, num_videos_per_prompt=num_videos_per_prompt,
            embedded_guidance_scale=embedded_guidance_scale, data_type="video" if video_length > 1 else "image",
            progress=progress, decode=decode)
        report.seeds = seeds
        return {"samples": samples, "seeds": seeds, "prompts": prompts * count,
                "size": (height, width, video_length), "report": report}

    def _check_size(self, height: int, width: int, video_length: int) -> None:
        spatial = self.pipeline.vae.config.spatial_compression_ratio
        multiple_h, multiple_w = spatial * self.model.patch_size[1], spatial * self.model.patch_size[2]
        if height <= 0 or width <= 0 or height % multiple_h or width % multiple_w:
            raise ValueError(f"video size {height}x{width} (HxW) is not allowed: height a positive multiple of "
                             f"{multiple_h}, width of {multiple_w} (VAE compression x patch size)")
        temporal = self.pipeline.vae.config.time_compression_ratio
        if video_length < 1 or (video_length - 1) % temporal:
            raise ValueError(f"video_length={video_length} is not allowed: expected {temporal}n+1")


def _precision_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in PRECISION_TO_TYPE.items()}[dtype]


def _load_text_encoders(args: argparse.Namespace, paths: dict, precisions: RunPrecisions,
                        device: torch.device) -> tuple[TextEncoder, TextEncoder]:
    template = PROMPT_TEMPLATE[args.prompt_template] if args.prompt_template else None
    template_video = PROMPT_TEMPLATE[args.prompt_template_video] if args.prompt_template_video else None
    text_encoder = load_component("LLM text encoder", paths["text_encoder"], lambda: TextEncoder(
        text_encoder_type=args.text_encoder, max_length=llm_max_length(args.text_len, template_video, template),
        text_encoder_precision=_precision_name(precisions.text), text_encoder_path=paths["text_encoder"],
        tokenizer_type=args.tokenizer, prompt_template=template, prompt_template_video=template_video,
        hidden_state_skip_layer=args.hidden_state_skip_layer, apply_final_norm=args.apply_final_norm,
        reproduce=args.reproduce, logger=logger, device=device))
    text_encoder_2 = load_component("CLIP text encoder", paths["text_encoder_2"], lambda: TextEncoder(
        text_encoder_type=args.text_encoder_2, max_length=args.text_len_2,
        text_encoder_precision=_precision_name(precisions.text_2), text_encoder_path=paths["text_encoder_2"],
        tokenizer_type=args.tokenizer_2, reproduce=args.reproduce, logger=logger, device=device))
    return text_encoder, text_encoder_2


def check_components_fit(transformer, vae, text_encoder: TextEncoder, text_encoder_2: TextEncoder) -> None:
    """Raises ValueError when the loaded pieces cannot work together (channels, text widths)."""
    config = transformer.config
    pairs = [("VAE latent channels", vae.config.latent_channels, "DiT in_channels", config["in_channels"]),
             (f"LLM hidden size ({text_encoder.model_path})", text_encoder.model.config.hidden_size,
              "DiT text_states_dim", config["text_states_dim"]),
             (f"CLIP hidden size ({text_encoder_2.model_path})", text_encoder_2.model.config.hidden_size,
              "DiT text_states_dim_2", config["text_states_dim_2"])]
    for what, value, other, expected in pairs:
        if value != expected:
            raise ValueError(f"the checkpoint pieces do not fit together: {what} is {value}, but the {other} is "
                             f"{expected}")


def load_sampler(args: argparse.Namespace, policy: RunPolicy | None = None,
                 sp: SequenceParallel | None = None) -> HunyuanVideoSampler:
    """Checks the checkpoint pieces, loads the DiT (sequence-parallel under torchrun, with the run's cache
    ``policy`` attached), then the other components: the sampler of ``sample_video.py`` and of the profiler
    (``scripts/profile_hunyuan.py``).

    Args:
        args: ``sample_video.py``'s parsed flags.
        policy: the run's cache policy (``common_cache.command.RunPolicy``), or None.
        sp: the sequence-parallel engine under torchrun, or None.
    """
    root = model_base(args)
    paths = check_checkpoint_pieces(args, root)
    device = sp.device if sp is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precisions = RunPrecisions.from_args(args, device)
    if device.type == "cpu":
        logger.info("running on the CPU: every component in fp32 (--precision %s, --text-encoder-precision %s, "
                    "--vae-precision %s apply on CUDA only)", args.precision, args.text_encoder_precision,
                    args.vae_precision)
    transformer = load_transformer(args, paths["dit_weight"], device, precisions.dit)
    if sp is not None:
        parallelize_transformer(transformer, sp)  # refuses a head count the Ulysses degree does not divide
    if policy is not None:
        policy.attach(transformer, logger)  # refuses a profile made for another depth
    return HunyuanVideoSampler.from_pretrained(root, args, device=device, transformer=transformer)
