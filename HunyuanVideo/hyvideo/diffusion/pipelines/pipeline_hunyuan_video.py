"""HunyuanVideo text-to-video pipeline: two text encoders -> flow-matching Euler loop over the DiT -> causal 3D VAE.

References: Tencent/HunyuanVideo hyvideo/diffusion/pipelines/pipeline_hunyuan_video.py (official numerics: prompt
encoding, latent shape and dtype, embedded guidance, real CFG as one batched forward, the scheduler step, VAE
scaling and output range).

The DiT's block loops go through ``common_cache.run_blocks``; this loop is the only code that knows the step index
and the guidance branch, so it wraps each forward in ``cache.step(i, branch)`` when a cache is attached. The
branch is ``"cond"``, or ``"cond+uncond"`` for the batched CFG forward (its deltas carry the batch of two).

Dtypes follow the caller's settings: on CUDA the official regime (latents drawn in the text-encoder dtype, DiT
under autocast in ``dit_dtype``, guidance built in ``dit_dtype`` (6.0 -> 6016.0 in bf16), VAE decode under
autocast in ``vae_dtype``); on a CPU everything is fp32 and autocast is off.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch

from common_cache import step_context
from profilingdit.timing import DenoiseTimer, GenerationReport

CFG_BRANCH = "cond+uncond"


@dataclass
class TextConditions:
    """Encoded prompts as the DiT takes them.

    Attributes:
        states: [B, L, D] LLM token states (template cropped).
        mask: [B, L] 0/1 attention mask of the states.
        pooled: [B, D2] pooled CLIP output.
    """

    states: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor

    @staticmethod
    def cat(first: TextConditions, second: TextConditions) -> TextConditions:
        """Batch-concatenates two conditions (CFG: ``cat(uncond, cond)`` as upstream)."""
        return TextConditions(torch.cat([first.states, second.states]), torch.cat([first.mask, second.mask]),
                              torch.cat([first.pooled, second.pooled]))


class HunyuanVideoPipeline:
    """Text-to-video sampling with loaded HunyuanVideo components.

    Args:
        transformer: the DiT (`HYVideoDiffusionTransformer`), on ``device``.
        scheduler: a `FlowMatchDiscreteScheduler`.
        vae: the causal 3D VAE (may be offloaded with accelerate hooks); None for latent output only.
        text_encoder: the LLM `TextEncoder` (None when conditions are passed in).
        text_encoder_2: the CLIP `TextEncoder`.
        device: the execution device.
        dit_dtype: the DiT's compute dtype (guidance is built in it; autocast dtype on CUDA).
        autocast: run the DiT under autocast(``dit_dtype``).
        vae_dtype: the VAE's compute dtype.
        vae_autocast: run the VAE decode under autocast(``vae_dtype``).
        vae_tiling: decode with the official tiling.
    """

    def __init__(self, transformer, scheduler, vae=None, text_encoder=None, text_encoder_2=None,
                 device: torch.device | str = "cpu", dit_dtype: torch.dtype = torch.float32, autocast: bool = False,
                 vae_dtype: torch.dtype = torch.float32, vae_autocast: bool = False, vae_tiling: bool = True):
        self.transformer = transformer
        self.scheduler = scheduler
        self.vae = vae
        self.text_encoder = text_encoder
        self.text_encoder_2 = text_encoder_2
        self.device = torch.device(device)
        self.dit_dtype = dit_dtype
        self.autocast = autocast
        self.vae_dtype = vae_dtype
        self.vae_autocast = vae_autocast
        self.vae_tiling = vae_tiling

    # ---------------------------------------------------------------------------------------------------------
    # Prompts and latents

    @torch.no_grad()
    def encode_prompt(self, prompt: list[str], num_videos_per_prompt: int = 1,
                      data_type: str = "video") -> TextConditions:
        """Encodes prompts with both text encoders and repeats them per video.

        Returns:
            Conditions with batch ``len(prompt) * num_videos_per_prompt``, in the text-encoder dtype.
        """
        llm = self.text_encoder.encode(self.text_encoder.text2tokens(prompt, data_type), data_type=data_type,
                                       device=self.device)
        clip = self.text_encoder_2.encode(self.text_encoder_2.text2tokens(prompt, data_type), data_type=data_type,
                                          device=self.device)
        states = llm.hidden_state.to(self.text_encoder.dtype)  # [B, L, D]
        pooled = clip.hidden_state.to(self.text_encoder_2.dtype)  # [B, D2]
        mask = llm.attention_mask  # [B, L]
        repeat = num_videos_per_prompt
        return TextConditions(states.repeat_interleave(repeat, 0), mask.repeat_interleave(repeat, 0),
                              pooled.repeat_interleave(repeat, 0))

    def latent_shape(self, batch: int, video_length: int, height: int, width: int) -> tuple[int, ...]:
        """[B, C, (T - 1) / 4 + 1, H / 8, W / 8] for the '884' VAE (ratios from the VAE's config)."""
        config = self.vae.config if self.vae is not None else None
        spatial = config.spatial_compression_ratio if config else 8
        temporal = config.time_compression_ratio if config else 4
        channels = self.transformer.in_channels
        return (batch, channels, (video_length - 1) // temporal + 1, height // spatial, width // spatial)

    def prepare_latents(self, shape: tuple[int, ...], dtype: torch.dtype,
                        generators: list[torch.Generator]) -> torch.Tensor:
        """Initial noise: video i drawn on its own from ``generators[i]`` (diffusers' ``randn_tensor`` rule)."""
        if len(generators) != shape[0]:
            raise ValueError(f"{len(generators)} generators for a batch of {shape[0]} videos: one per video")
        return torch.cat([torch.randn((1, *shape[1:]), generator=g, device=self.device, dtype=dtype)
                          for g in generators])

    # ---------------------------------------------------------------------------------------------------------
    # Denoising

    def _dit_autocast(self):
        if not self.autocast:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dit_dtype)

    @torch.no_grad()
    def denoise(self, latents: torch.Tensor, text: TextConditions, freqs_cis: tuple[torch.Tensor, torch.Tensor],
                num_inference_steps: int, guidance_scale: float = 1.0, uncond: TextConditions | None = None,
                embedded_guidance_scale: float | None = None, report: GenerationReport | None = None,
                progress: bool = True) -> torch.Tensor:
        """The flow-matching loop.

        Args:
            latents: [B, C, t, h, w] initial noise.
            text: conditions of the prompt (batch B).
            freqs_cis: RoPE (cos, sin) tables [image tokens, head_dim].
            num_inference_steps: steps.
            guidance_scale: real CFG scale; above 1 each step runs one batched forward over ``cat(uncond, cond)``.
            uncond: conditions of the negative prompt (needed with CFG).
            embedded_guidance_scale: fed to the guidance embedding as ``scale * 1000`` (in ``dit_dtype``).
            report: filled with step times and full steps.
            progress: show a progress bar (with the cache savings when a cache is attached).

        Returns:
            [B, C, t, h, w] fp32 latents at sigma 0.
        """
        do_cfg = guidance_scale > 1
        if do_cfg:
            if uncond is None:
                raise ValueError(f"guidance_scale={guidance_scale} > 1 needs the negative prompt's conditions")
            text = TextConditions.cat(uncond, text)
        report = report if report is not None else GenerationReport()
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        timesteps = self.scheduler.timesteps
        batch = latents.shape[0] * (2 if do_cfg else 1)
        guidance = None
        if embedded_guidance_scale is not None:
            guidance = torch.tensor([embedded_guidance_scale] * batch, dtype=torch.float32, device=self.device)
            guidance = guidance.to(self.dit_dtype) * 1000.0  # bf16: 6.0 -> 6016.0, as upstream
        freqs_cos, freqs_sin = (f.to(self.device) for f in freqs_cis)
        cache = self.transformer.block_cache
        if cache is not None:  # the sigmas are the forecast abscissa of profiles that ask for it
            cache.begin(len(timesteps), sigmas=self.scheduler.sigmas[:-1].tolist())
        branch = CFG_BRANCH if do_cfg else "cond"
        timer = DenoiseTimer(report, cache, len(timesteps), self.device, progress)
        for index, t in enumerate(timesteps):
            model_input = torch.cat([latents] * 2) if do_cfg else latents
            with step_context(cache, index, branch), self._dit_autocast():
                noise_pred = self.transformer(
                    model_input, t.repeat(batch), text_states=text.states, text_mask=text.mask,
                    text_states_2=text.pooled, freqs_cos=freqs_cos, freqs_sin=freqs_sin, guidance=guidance,
                    return_dict=True)["x"]
            if do_cfg:
                noise_uncond, noise_cond = noise_pred.chunk(2)
                noise_pred = noise_uncond + guidance_scale * (noise_cond - noise_uncond)
            latents = self.scheduler.step(noise_pred, t, latents, return_dict=False)[0]
            timer.step_done(index)
        timer.close()
        return latents

    # ---------------------------------------------------------------------------------------------------------
    # Decoding and the whole call

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> video [B, 3, T, H, W] in [0, 1], fp32 on the CPU (upstream's scaling and range)."""
        latents = latents / self.vae.config.scaling_factor  # the HunyuanVideo VAE has no shift factor
        self.vae.enable_tiling(self.vae_tiling)
        if self.vae_autocast:
            with torch.autocast(device_type=self.device.type, dtype=self.vae_dtype):
                video = self.vae.decode(latents)
        else:
            # Without autocast the latents must match the weights (upstream crashes here with fp16 weights).
            video = self.vae.decode(latents.to(self.vae_dtype))
        return (video / 2 + 0.5).clamp(0, 1).cpu().float()

    def __call__(self, prompt: list[str], height: int, width: int, video_length: int, num_inference_steps: int,
                 generators: list[torch.Generator], freqs_cis: tuple[torch.Tensor, torch.Tensor],
                 guidance_scale: float = 1.0, negative_prompt: list[str] | None = None, num_videos_per_prompt: int = 1,
                 embedded_guidance_scale: float | None = None, data_type: str = "video",
                 progress: bool = True, decode: bool = True) -> tuple[torch.Tensor | None, GenerationReport]:
        """Generates ``len(prompt) * num_videos_per_prompt`` videos.

        ``decode=False`` skips the VAE (sequence-parallel ranks other than 0: rank 0 decodes and writes).

        Returns:
            (videos [N, 3, T, H, W] in [0, 1] on the CPU, or None without ``decode``; the generation report).
        """
        start = time.perf_counter()
        report = GenerationReport()
        text = self.encode_prompt(prompt, num_videos_per_prompt, data_type)
        uncond = None
        if guidance_scale > 1:
            uncond = self.encode_prompt(negative_prompt, num_videos_per_prompt, data_type)
        shape = self.latent_shape(text.states.shape[0], video_length, height, width)
        # Upstream draws the noise in the prompt embeddings' dtype (fp16 on CUDA); the scheduler works in fp32.
        latents = self.prepare_latents(shape, text.states.dtype, generators)
        latents = self.denoise(latents, text, freqs_cis, num_inference_steps, guidance_scale, uncond,
                               embedded_guidance_scale, report, progress)
        decode_start = time.perf_counter()
        video = self.decode(latents) if decode else None
        report.decode_seconds = time.perf_counter() - decode_start
        report.total_seconds = time.perf_counter() - start
        return video, report
