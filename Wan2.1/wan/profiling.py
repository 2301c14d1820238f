"""Wan2.1 adapter of the ProfilingDiT profiler: where the statistics are captured, and a prompt loop.

Not an upstream module (the official release has no profiling code, method.md section 0).

Capture points, all installed by :class:`WanProfiling` through one :class:`profilingdit.seams.Seams` for the
duration of a ``with`` block and undone after it (outside it the model is untouched):

* ``WanSelfAttention.attention_kernel`` of every block is wrapped: the wrapper sees the queries and keys the
  kernel gets (after q/k-norm and RoPE), computes the attention each token receives from them chunk-wise
  (:func:`common_cache.profiling.received_attention`) over the valid (unpadded) tokens, splits it into latent
  frames, then calls the kernel it wraps;
* a forward pre-hook on :class:`WanModel` reads each sample's token grid, and a forward hook takes each branch's
  velocity prediction v and forms the clean estimate ``x0 = x_t - sigma * v`` (flow matching,
  ``sigma = t / num_train_timesteps``).
* The :class:`ProfilingRecorder` is attached as the model's block cache, so :meth:`WanT2V.generate` (unchanged)
  tells it the step index and guidance branch; the branches are combined with classifier-free guidance exactly as
  the sampler does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from common_cache import attach_cache, detach_cache
from common_cache.profiling import ProfileStatistics, ProfilingRecorder, received_attention, split_frames
from common_cache.profiling.session import ModelProfiling, record_prompts

from .modules.model import WanModel


def classifier_free_guidance(guide_scale: float):
    """Combines the ``cond``/``uncond`` branch outputs as :meth:`WanT2V.generate` does: u + g (c - u)."""

    def combine(outputs):
        if set(outputs) == {"cond"} or set(outputs) == {"uncond"}:
            return next(iter(outputs.values()))
        if set(outputs) != {"cond", "uncond"}:
            raise RuntimeError(f"expected the branches cond and uncond, got {sorted(outputs)}")
        (cond, cond_clean), (uncond, uncond_clean) = outputs["cond"], outputs["uncond"]
        guided = uncond + guide_scale * (cond - uncond)
        clean = None if cond_clean is None else uncond_clean + guide_scale * (cond_clean - uncond_clean)
        return guided, clean

    return combine


class WanProfiling(ModelProfiling):
    """Context manager that profiles every generation of ``model`` run inside it (see
    :class:`common_cache.profiling.session.ModelProfiling`).

    Args:
        model: the DiT (``pipeline.model``); it must have no cache attached.
        recorder: collects the statistics (its ``combine`` should be :func:`classifier_free_guidance`).
        num_train_timesteps: timestep -> sigma (Wan: 1000).
        query_chunk / key_chunk: tile sizes of the received-attention computation.
    """

    def __init__(self, model: WanModel, recorder: ProfilingRecorder, num_train_timesteps: int = 1000,
                 query_chunk: int = 256, key_chunk: int | None = None):
        super().__init__(model, recorder, num_train_timesteps, query_chunk, key_chunk)
        self._grid_sizes: list[tuple[int, int, int]] = []  # the current forward's token grid per sample

    def _kernel_owners(self) -> list[torch.nn.Module]:
        return [block.self_attn for block in self.model.blocks]

    def _observing(self, kernel: Callable) -> Callable:
        """``kernel`` preceded by the received-attention measurement of its queries and keys."""

        def observe_then_attend(q, k, v, k_lens=None, **kwargs):
            self._on_attention(q, k, k_lens)
            return kernel(q, k, v, k_lens=k_lens, **kwargs)

        return observe_then_attend

    def _on_input(self, module, args, kwargs):
        latents = args[0] if args else kwargs["x"]
        p_t, p_h, p_w = module.patch_size
        self._grid_sizes = [(u.shape[1] // p_t, u.shape[2] // p_h, u.shape[3] // p_w) for u in latents]

    def _on_attention(self, q: torch.Tensor, k: torch.Tensor, seq_lens: torch.Tensor):
        if self.recorder.current_block is None:
            return
        with torch.no_grad():
            received = received_attention(q, k, key_lens=seq_lens, query_lens=seq_lens,
                                          query_chunk=self.query_chunk, key_chunk=self.key_chunk)  # [B, L]
        per_sample = []
        for b, (f, h, w) in enumerate(self._grid_sizes):
            per_sample.append(split_frames(received[b], f, h * w))  # [T, P]
        if any(s.shape != per_sample[0].shape for s in per_sample):
            raise ValueError("profiling needs every sample of a batch to have the same latent grid")
        self.recorder.record_attention(torch.stack(per_sample).mean(dim=0))

    def _on_output(self, module, args, kwargs, output):
        latents = args[0] if args else kwargs["x"]
        t = kwargs["t"] if "t" in kwargs else args[1]
        if len(latents) != 1:
            raise ValueError(
                f"profiling expects one latent per forward (as WanT2V.generate calls it), got {len(latents)}"
            )
        sigma = t.reshape(-1)[0].double().item() / self.num_train_timesteps
        prediction = output[0].float()  # [C, T, H, W] velocity
        clean = latents[0].float() - sigma * prediction
        self.recorder.record_prediction(prediction, clean)


def profile_prompts(
    pipeline,
    recorder: ProfilingRecorder,
    prompts: Sequence[str],
    generate_kwargs: dict,
    base_seed: int = 0,
    on_prompt_done: Callable[[int, ProfileStatistics], None] | None = None,
    skip: int = 0,
    query_chunk: int = 256,
) -> ProfileStatistics:
    """Generates one video per prompt with profiling on; seeds are ``base_seed + prompt index``.

    Args:
        pipeline: a :class:`wan.text2video.WanT2V`.
        recorder: the recorder (may already hold statistics of earlier prompts, when resuming).
        prompts: all profiling prompts.
        generate_kwargs: size, frame_num, shift, sample_solver, sampling_steps, guide_scale, n_prompt, ...
        base_seed: seed of prompt 0.
        on_prompt_done: called after each prompt with its index and the statistics so far (e.g. to save them).
        skip: prompts already profiled (resume): they are not run again.
        query_chunk: query rows per tile of the received-attention computation.

    Returns:
        The statistics over all prompts.
    """
    def generate(index: int) -> None:
        pipeline.generate(prompts[index], seed=base_seed + index, progress=False, offload_model=False,
                          **generate_kwargs)

    with WanProfiling(pipeline.model, recorder, pipeline.num_train_timesteps, query_chunk=query_chunk):
        return record_prompts(recorder, prompts, generate, skip, on_prompt_done)


# ---------------------------------------------------------------------------------------------------------------
# Budgeted profiles (common_cache.profiling.budget.budgeted_profile): one generation with any policy attached.


def run_with_cache(pipeline, cache, prompt: str, seed: int, generate_kwargs: dict):
    """One generation with ``cache`` (any policy: a cache, the residual recorder; None: full compute) attached:
    (uint8 frames ``[F, H, W, 3]``, denoising seconds)."""
    from .utils.utils import video_to_frames

    detach_cache(pipeline.model)
    if cache is not None:
        attach_cache(pipeline.model, cache)
    try:
        video, report = pipeline.generate(prompt, seed=seed, progress=False, offload_model=False, **generate_kwargs)
    finally:
        detach_cache(pipeline.model)
    return video_to_frames(video[None]), report.denoise_seconds
