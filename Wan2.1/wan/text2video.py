"""Wan2.1 text-to-video pipeline: T5 -> flow-matching sampler over the DiT (two guidance branches) -> VAE.

References: Wan2.1 wan/text2video.py (WanT2V: loading, seeding, offload, sampling loop, CFG as two forward calls).

The DiT's block loop goes through ``common_cache.run_blocks``; this pipeline is the only code that knows the step
index and the guidance branch, so it brackets each forward with ``cache.step(i, branch)`` when a cache is attached.
On a CPU the whole pipeline runs in fp32 (bf16 matmuls are several times slower there); on CUDA it follows the
official regime (fp32 DiT weights under bf16 autocast, bf16 T5).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import os
import random
import sys
import time
import torch

from common_cache import step_context
from profilingdit.files import load_component
from profilingdit.timing import DenoiseTimer, GenerationReport

from .distributed import parallelize_wan_model
from .modules.checkpoint import check_weight_files, load_wan_model
from .modules.t5 import T5EncoderModel
from .modules.vae import WanVAE
from .utils.fm_solvers import FlowDPMSolverMultistepScheduler, get_sampling_sigmas, retrieve_timesteps
from .utils.fm_solvers_unipc import FlowUniPCMultistepScheduler

SAMPLE_SOLVERS = ("unipc", "dpm++")


def checkpoint_files(config, checkpoint_dir: str) -> dict[str, str]:
    """The files and folders a checkpoint folder must hold for ``config`` (name -> path); image-to-video configs
    add the CLIP image encoder."""
    files = {
        "DiT config": os.path.join(checkpoint_dir, "config.json"),
        "T5 encoder": os.path.join(checkpoint_dir, config.t5_checkpoint),
        "T5 tokenizer folder": os.path.join(checkpoint_dir, config.t5_tokenizer),
        "VAE": os.path.join(checkpoint_dir, config.vae_checkpoint),
    }
    if config.get("clip_checkpoint"):
        files["CLIP image encoder"] = os.path.join(checkpoint_dir, config.clip_checkpoint)
    return files


def check_checkpoint_dir(config, checkpoint_dir: str) -> None:
    """Fails before anything is loaded when a piece of the checkpoint folder is missing, or a DiT weight file is
    truncated.

    Raises:
        FileNotFoundError: listing every missing piece and the folder that was searched.
        ValueError: naming a truncated or damaged weight file.
    """
    if not os.path.isdir(checkpoint_dir):
        raise FileNotFoundError(f"--ckpt_dir {checkpoint_dir!r} is not a folder")
    missing = [f"{what} ({os.path.relpath(path, checkpoint_dir)})"
               for what, path in checkpoint_files(config, checkpoint_dir).items() if not os.path.exists(path)]
    weights = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json")
    if not any(os.path.isfile(os.path.join(checkpoint_dir, name)) for name in weights):
        missing.append(f"DiT weights ({' or '.join(weights)})")
    if missing:
        raise FileNotFoundError(f"checkpoint folder {os.path.abspath(checkpoint_dir)} is missing: {'; '.join(missing)}")
    check_weight_files(checkpoint_dir)  # headers against sizes: a truncated shard is named before any loading


class WanT2V:
    """Text-to-video generation with a Wan2.1 checkpoint folder.

    Args:
        config: the task config (``WAN_CONFIGS[task]``).
        checkpoint_dir: the official checkpoint folder.
        device_id: CUDA device index (ignored on a machine without CUDA).
        rank: process rank (only rank 0 decodes).
        t5_fsdp, dit_fsdp: FSDP weight sharding (not supported: refused).
        use_usp: sequence parallelism (Ulysses / ring) over the processes of ``sequence_parallel``.
        t5_cpu: keep the T5 encoder on the CPU.
        device: force a device (default: cuda:device_id when available, else cpu).
        sequence_parallel: the engine from ``wan.distributed.init_parallel`` (needed with ``use_usp``).
    """

    def __init__(self, config, checkpoint_dir: str, device_id: int = 0, rank: int = 0, t5_fsdp: bool = False,
                 dit_fsdp: bool = False, use_usp: bool = False, t5_cpu: bool = False,
                 device: torch.device | str | None = None, sequence_parallel=None):
        if t5_fsdp or dit_fsdp:
            raise ValueError("t5_fsdp and dit_fsdp (FSDP weight sharding) are not supported: every process holds "
                             "the whole model")
        if use_usp and sequence_parallel is None:
            raise ValueError("use_usp=True needs sequence_parallel, the engine from wan.distributed.init_parallel() "
                             "(run under torchrun)")
        self.config = config
        self.rank = rank
        self.t5_cpu = t5_cpu
        self.device = torch.device(device) if device is not None else (
            torch.device(f"cuda:{device_id}") if torch.cuda.is_available() else torch.device("cpu"))
        self.on_cpu = self.device.type == "cpu"
        self.num_train_timesteps = config.num_train_timesteps
        self.sample_neg_prompt = config.sample_neg_prompt
        self.vae_stride = config.vae_stride
        self.patch_size = config.patch_size
        check_checkpoint_dir(config, checkpoint_dir)

        # fp32 everywhere on a CPU; the official dtypes (bf16 T5 and autocast) on an accelerator.
        t5_dtype = torch.float32 if self.on_cpu else config.t5_dtype
        t5_path = os.path.join(checkpoint_dir, config.t5_checkpoint)
        self.text_encoder = load_component("T5 encoder", t5_path, lambda: T5EncoderModel(
            text_len=config.text_len, dtype=t5_dtype, device=torch.device("cpu"), checkpoint_path=t5_path,
            tokenizer_path=os.path.join(checkpoint_dir, config.t5_tokenizer)))
        vae_path = os.path.join(checkpoint_dir, config.vae_checkpoint)
        self.vae = load_component("VAE", vae_path, lambda: WanVAE(vae_pth=vae_path, device=self.device))
        logging.info("Creating WanModel from %s", checkpoint_dir)
        self.model = load_component("DiT weights", checkpoint_dir, lambda: load_wan_model(
            checkpoint_dir, device="cpu", expected_config=config)).requires_grad_(False)
        # The sequence-parallel seams of the DiT (None on one process); .undo() makes it a one-process model again.
        self.parallel_seams = parallelize_wan_model(self.model, sequence_parallel) if use_usp else None
        self.param_dtype = torch.float32 if self.on_cpu else config.param_dtype

    # ------------------------------------------------------------------------------------------------------------

    def _autocast(self):
        if self.on_cpu:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.param_dtype)

    def _encode_prompts(self, prompt: str, n_prompt: str, offload_model: bool):
        if self.t5_cpu or self.on_cpu:
            context = self.text_encoder([prompt], torch.device("cpu"))
            context_null = self.text_encoder([n_prompt], torch.device("cpu"))
            return [c.to(self.device) for c in context], [c.to(self.device) for c in context_null]
        self.text_encoder.model.to(self.device)
        context = self.text_encoder([prompt], self.device)
        context_null = self.text_encoder([n_prompt], self.device)
        if offload_model:
            self.text_encoder.model.cpu()
        return context, context_null

    def _scheduler(self, sample_solver: str, sampling_steps: int, shift: float):
        if sample_solver == "unipc":
            scheduler = FlowUniPCMultistepScheduler(num_train_timesteps=self.num_train_timesteps, shift=1)
            scheduler.set_timesteps(sampling_steps, device=self.device, shift=shift)
            return scheduler, scheduler.timesteps
        if sample_solver == "dpm++":
            scheduler = FlowDPMSolverMultistepScheduler(num_train_timesteps=self.num_train_timesteps, shift=1)
            timesteps, _ = retrieve_timesteps(scheduler, device=self.device,
                                              sigmas=get_sampling_sigmas(sampling_steps, shift))
            return scheduler, timesteps
        raise ValueError(f"sample_solver={sample_solver!r} is not allowed: expected one of {list(SAMPLE_SOLVERS)}")

    def latent_shape(self, size: tuple[int, int], frame_num: int) -> tuple[int, int, int, int]:
        """(C, t, h, w) of the latent for a (W, H) size and a frame count."""
        width, height = size
        z_dim = self.vae.model.z_dim
        return (z_dim, (frame_num - 1) // self.vae_stride[0] + 1, height // self.vae_stride[1],
                width // self.vae_stride[2])

    def generate(self, input_prompt: str, size: tuple[int, int] = (1280, 720), frame_num: int = 81,
                 shift: float = 5.0, sample_solver: str = "unipc", sampling_steps: int = 50,
                 guide_scale: float = 5.0, n_prompt: str = "", seed: int = -1, offload_model: bool = True,
                 progress: bool = True) -> tuple[torch.Tensor | None, GenerationReport]:
        """Generates one video.

        Args:
            input_prompt: the text prompt.
            size: (W, H) in pixels.
            frame_num: frames, 4n+1.
            shift: noise schedule shift.
            sample_solver: ``unipc`` or ``dpm++``.
            sampling_steps: denoising steps.
            guide_scale: classifier-free guidance scale.
            n_prompt: negative prompt ('' = the config's default negative prompt).
            seed: random seed (-1 = random).
            offload_model: move the DiT to the CPU after sampling (and the T5 after encoding) to save GPU memory.
            progress: show a progress bar.

        Returns:
            (video [3, F, H, W] in [-1, 1] on rank 0, else None; the generation report).
        """
        start = time.perf_counter()
        seed = seed if seed >= 0 else random.randint(0, sys.maxsize)
        report = GenerationReport(seeds=[seed])
        target_shape = self.latent_shape(size, frame_num)
        seq_len = math.ceil(target_shape[2] * target_shape[3] / (self.patch_size[1] * self.patch_size[2])
                            * target_shape[1])
        context, context_null = self._encode_prompts(input_prompt, n_prompt or self.sample_neg_prompt, offload_model)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        noise = torch.randn(*target_shape, dtype=torch.float32, device=self.device, generator=generator)
        latent = self._denoise(noise, {"context": context}, {"context": context_null}, seq_len, sample_solver,
                               sampling_steps, shift, guide_scale, generator, report, progress)
        del noise
        return self._decode(latent, offload_model, report, start), report

    def _denoise(self, noise: torch.Tensor, cond: dict, uncond: dict, seq_len: int, sample_solver: str,
                 sampling_steps: int, shift: float, guide_scale: float, generator: torch.Generator,
                 report: GenerationReport, progress: bool) -> torch.Tensor:
        """The sampling loop: per step a conditional and an unconditional forward (CFG as two branches, each in
        the cache's step context), then one solver step.

        Args:
            noise: the initial latent ``[C, t, h, w]``.
            cond, uncond: the model's keyword arguments of each branch besides x, t and seq_len (``context``; for
                image-to-video also ``clip_fea`` and ``y``).
            seq_len: padded token count.

        Returns:
            The final latent ``[C, t, h, w]``.
        """
        self.model.to(self.device)
        scheduler, timesteps = self._scheduler(sample_solver, sampling_steps, shift)
        cache = self.model.block_cache
        if cache is not None:  # the sigmas are the forecast abscissa of profiles that ask for it
            cache.begin(len(timesteps), sigmas=[float(t) / self.num_train_timesteps for t in timesteps])
        latent = noise
        timer = DenoiseTimer(report, cache, len(timesteps), self.device, progress and self.rank == 0)
        with self._autocast(), torch.no_grad():
            for index, t in enumerate(timesteps):
                timestep = torch.stack([t])
                with step_context(cache, index, "cond"):
                    noise_pred_cond = self.model([latent], t=timestep, seq_len=seq_len, **cond)[0]
                with step_context(cache, index, "uncond"):
                    noise_pred_uncond = self.model([latent], t=timestep, seq_len=seq_len, **uncond)[0]
                noise_pred = noise_pred_uncond + guide_scale * (noise_pred_cond - noise_pred_uncond)
                latent = scheduler.step(noise_pred.unsqueeze(0), t, latent.unsqueeze(0), return_dict=False,
                                        generator=generator)[0].squeeze(0)
                timer.step_done(index)
        timer.close()
        return latent

    def _decode(self, latent: torch.Tensor, offload_model: bool, report: GenerationReport,
                start: float) -> torch.Tensor | None:
        """Offloads the DiT if asked, decodes on rank 0 (``[3, F, H, W]`` in [-1, 1]; None elsewhere) and books the
        generation's total time (begun at ``start``, ``time.perf_counter``)."""
        if offload_model and not self.on_cpu:
            self.model.cpu()
            torch.cuda.empty_cache()
        decode_start = time.perf_counter()
        video = self.vae.decode([latent])[0] if self.rank == 0 else None
        report.decode_seconds = time.perf_counter() - decode_start
        if offload_model:
            gc.collect()
        report.total_seconds = time.perf_counter() - start
        return video
