"""The profiler on a diffusers Wan or HunyuanVideo transformer or pipeline: the statistics our profilers record on
our models, so a user can profile any Wan-family or HunyuanVideo checkpoint they load with diffusers and build a
cache profile from it.

Capture points, all installed by :class:`DiffusersProfiling` for the duration of a ``with`` block and removed after
it (the transformer is then exactly as before):

* the :class:`~common_cache.profiling.ProfilingRecorder` is enabled like any policy (:func:`enable_cache`): on a
  pipeline the adapter drives ``begin`` / ``step`` from the scheduler and the ``cache_context`` names;
* every block's self-attention gets a probing processor: it hands the probe the queries and keys its attention
  gets (projection, q/k-norm, heads, RoPE, recomputed from the processor's inputs, so diffusers' own processor
  runs unchanged), then calls the original processor;
* a forward hook on the transformer takes each branch's velocity ``v`` and forms the clean estimate
  ``x0 = x_t - sigma * v`` (flow matching, ``sigma = t / num_train_timesteps``).

The per-block statistics are then the same numbers as on our ``WanModel`` with the same weights
(``tests/test_diffusers_profiling.py``), so :func:`common_cache.profiling.build_profile` makes the same profile.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from common_cache.adapters.api import disable_cache, enable_cache, enabled_policy
from common_cache.adapters.registry import diffusers_spec
from common_cache.profiling import ProfileStatistics, ProfilingRecorder, received_attention, split_frames
from common_cache.profiling.session import record_prompts
from profilingdit.seams import Seams


def _rotate(x: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    """Wan's RoPE on ``x`` [B, L, heads, d]: each channel pair (2i, 2i+1) is rotated by the angle whose cosine and
    sine diffusers stores at positions 2i and 2i+1 of ``freqs_cos`` / ``freqs_sin`` ([1, L, 1, d])."""
    pairs = x.unflatten(-1, (-1, 2))  # [B, L, heads, d/2, 2]
    real, imag = pairs[..., 0], pairs[..., 1]
    cos, sin = freqs_cos[..., 0::2], freqs_sin[..., 1::2]
    return torch.stack((real * cos - imag * sin, real * sin + imag * cos), dim=-1).flatten(-2).type_as(x)


def _heads(attention: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return x.unflatten(2, (attention.heads, -1))  # [B, L, C] -> [B, L, heads, d]


def _norm(norm: nn.Module | None, x: torch.Tensor) -> torch.Tensor:
    return x if norm is None else norm(x)


def _check_unfused(attention: nn.Module) -> None:
    if getattr(attention, "fused_projections", False):
        raise ValueError("profiling needs the unfused q/k/v projections: call transformer.unfuse_qkv() first")


def wan_queries_keys(attention: nn.Module, hidden_states: torch.Tensor, encoder_hidden_states, rotary_emb):
    """The queries and keys ([B, L, heads, d]) a diffusers ``WanAttention`` self-attention hands its kernel."""
    _check_unfused(attention)
    q = _heads(attention, attention.norm_q(attention.to_q(hidden_states)))  # Wan normalises before the split
    k = _heads(attention, attention.norm_k(attention.to_k(hidden_states)))
    if rotary_emb is not None:
        q, k = _rotate(q, *rotary_emb), _rotate(k, *rotary_emb)
    return q, k


def hunyuan_queries_keys(attention: nn.Module, hidden_states: torch.Tensor, encoder_hidden_states, rotary_emb):
    """The queries and keys ([B, L_img + L_txt, heads, d]) of a diffusers HunyuanVideo joint attention: the image
    tokens (``hidden_states``, RoPE applied) followed by the text tokens (their own projections in a double-stream
    block, the shared ones in a single-stream block)."""
    from diffusers.models.embeddings import apply_rotary_emb  # only reached with a diffusers model

    _check_unfused(attention)
    q = _norm(attention.norm_q, _heads(attention, attention.to_q(hidden_states)))
    k = _norm(attention.norm_k, _heads(attention, attention.to_k(hidden_states)))
    if rotary_emb is not None:
        q = apply_rotary_emb(q, rotary_emb, sequence_dim=1)
        k = apply_rotary_emb(k, rotary_emb, sequence_dim=1)
    if encoder_hidden_states is not None:
        double = attention.add_q_proj is not None
        to_q, to_k = (attention.add_q_proj, attention.add_k_proj) if double else (attention.to_q, attention.to_k)
        norm_q, norm_k = (attention.norm_added_q, attention.norm_added_k) if double else (attention.norm_q,
                                                                                            attention.norm_k)
        q = torch.cat([q, _norm(norm_q, _heads(attention, to_q(encoder_hidden_states)))], dim=1)
        k = torch.cat([k, _norm(norm_k, _heads(attention, to_k(encoder_hidden_states)))], dim=1)
    return q, k


@dataclass(frozen=True)
class ProbeSpec:
    """Where the profiler looks in one diffusers transformer class.

    Attributes:
        attention: per stack (the registry's order), the attribute of a block that holds its self-attention.
        queries_keys: ``(attention, hidden_states, encoder_hidden_states, rotary) -> (q, k)`` as the kernel gets
            them, image tokens first.
        patch: ``config -> (frames, height, width)`` patch size.
    """

    attention: tuple[str, ...]
    queries_keys: Callable
    patch: Callable[[Any], tuple[int, int, int]]


PROBES: dict[str, ProbeSpec] = {
    "WanTransformer3DModel": ProbeSpec(("attn1",), wan_queries_keys, lambda config: tuple(config.patch_size)),
    "HunyuanVideoTransformer3DModel": ProbeSpec(
        ("attn", "attn"), hunyuan_queries_keys, lambda config: (config.patch_size_t, config.patch_size,
                                                               config.patch_size)),
}


class _ProbingProcessor:
    """An attention processor that shows the probe the processor's inputs, then runs the original processor.

    Its signature names both models' rotary argument (Wan's ``rotary_emb``, HunyuanVideo's ``image_rotary_emb``):
    diffusers' ``Attention.forward`` drops keyword arguments its processor does not name.
    """

    def __init__(self, original: Any, probe: Callable) -> None:
        self.original = original
        self.probe = probe

    def __call__(self, attention: nn.Module, hidden_states: torch.Tensor, encoder_hidden_states=None,
                 attention_mask=None, rotary_emb=None, image_rotary_emb=None, **kwargs):
        rotary = rotary_emb if rotary_emb is not None else image_rotary_emb
        with torch.no_grad():
            self.probe(attention, hidden_states, encoder_hidden_states, rotary)
        return self.original(attention, hidden_states, encoder_hidden_states, attention_mask, rotary, **kwargs)


class DiffusersProfiling:
    """Context manager that profiles every generation of a diffusers pipeline (or transformer) run inside it.

    Args:
        target: a ``WanPipeline`` / ``WanImageToVideoPipeline`` / ``HunyuanVideoPipeline`` (steps and branches are
            driven automatically), or a bare transformer of :data:`PROBES` (drive ``recorder.begin`` /
            ``recorder.step`` yourself, as for a cache). It must have no cache enabled.
        recorder: collects the statistics (its ``combine`` should be ``wan.profiling.classifier_free_guidance(g)``
            with the pipeline's guidance scale when it runs two branches).
        num_train_timesteps: timestep -> sigma (Wan, HunyuanVideo: 1000).
        query_chunk / key_chunk: tile sizes of the received-attention computation.

    Raises:
        TypeError: the target's transformer is not one the probe knows (:data:`PROBES`).
    """

    def __init__(self, target: Any, recorder: ProfilingRecorder, num_train_timesteps: int = 1000,
                 query_chunk: int = 256, key_chunk: int | None = None) -> None:
        transformer = target if isinstance(target, nn.Module) else getattr(target, "transformer", None)
        spec = diffusers_spec(transformer) if isinstance(transformer, nn.Module) else None
        if spec is None or spec.class_name not in PROBES:
            raise TypeError(f"DiffusersProfiling: {type(target).__name__} is not supported: allowed a diffusers "
                            f"{' or '.join(PROBES)}, or a pipeline whose .transformer is one")
        self.target, self.transformer, self.recorder = target, transformer, recorder
        self.stacks, self.probe = spec.stacks, PROBES[spec.class_name]
        self.num_train_timesteps = num_train_timesteps
        self.query_chunk, self.key_chunk = query_chunk, key_chunk
        self._seams = Seams()
        self._grid: tuple[int, int, int] | None = None  # latent frames, height and width in tokens
        self._valid_text: int | None = None  # unpadded text tokens of the current call (None: all)

    def __enter__(self) -> DiffusersProfiling:
        """Enables the recorder, wraps every self-attention processor and hooks the transformer.

        Raises:
            ValueError: the target already has a cache enabled.
        """
        if enabled_policy(self.target) is not None:
            raise ValueError("DiffusersProfiling: the target already has a cache enabled: profile the uncached model")
        attentions = [getattr(blocks[i], name)  # index, not iterate: an enabled cache makes one stack call
                      for stack, name in zip(self.stacks, self.probe.attention)
                      for blocks in [getattr(self.transformer, stack.attribute)] for i in range(len(blocks))]
        enable_cache(self.target, self.recorder)
        for attention in attentions:
            self._seams.swap(attention, "processor", _ProbingProcessor(attention.processor, self._on_attention))
        self._seams.hook(self.transformer.register_forward_pre_hook(self._on_input, with_kwargs=True))
        # prepend: the prediction is recorded before the pipeline driver's own hook closes the step
        self._seams.hook(self.transformer.register_forward_hook(self._on_output, with_kwargs=True, prepend=True))
        return self

    def __exit__(self, *exc) -> None:
        self._seams.undo()
        disable_cache(self.target)

    # ----------------------------------------------------------------------------------------------------------

    @staticmethod
    def _latents_and_timestep(args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        latents = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        timestep = kwargs["timestep"] if "timestep" in kwargs else args[1]
        return latents, timestep

    def _on_input(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        latents, _ = self._latents_and_timestep(args, kwargs)
        if latents.shape[0] != 1:
            raise ValueError(f"profiling expects one video per transformer call, got a batch of {latents.shape[0]}: "
                             "use num_videos_per_prompt=1 and one prompt per call")
        p_t, p_h, p_w = self.probe.patch(module.config)
        _, _, frames, height, width = latents.shape
        self._grid = (frames // p_t, height // p_h, width // p_w)
        mask = kwargs.get("encoder_attention_mask")
        self._valid_text = None if mask is None else int(mask[0].sum())

    def _on_attention(self, attention: nn.Module, hidden_states: torch.Tensor, encoder_hidden_states, rotary) -> None:
        if self.recorder.current_block is None:
            return
        q, k = self.probe.queries_keys(attention, hidden_states, encoder_hidden_states, rotary)
        images = hidden_states.shape[1]
        keys = k.shape[1] if self._valid_text is None else images + self._valid_text
        received = received_attention(q, k, key_lens=[keys], query_lens=[images], query_chunk=self.query_chunk,
                                      key_chunk=self.key_chunk)  # [1, L]: image queries, image and valid text keys
        frames, height, width = self._grid
        self.recorder.record_attention(split_frames(received[0, :images], frames, height * width))  # [T, P]

    def _on_output(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        latents, timestep = self._latents_and_timestep(args, kwargs)
        sigma = float(timestep.reshape(-1)[0].double()) / self.num_train_timesteps
        velocity = (output[0] if isinstance(output, tuple) else output.sample)[0].float()  # [C, T, H, W]
        self.recorder.record_prediction(velocity, latents[0].float() - sigma * velocity)


def profile_pipeline(pipeline: Any, recorder: ProfilingRecorder, prompts: Sequence[Any],
                     call: Callable[[Any, Any, int], Any], base_seed: int = 0,
                     on_prompt_done: Callable[[int, ProfileStatistics], None] | None = None) -> ProfileStatistics:
    """Runs one generation per prompt with profiling on; prompt ``i`` gets seed ``base_seed + i``.

    Args:
        pipeline: a diffusers Wan pipeline.
        recorder: the recorder (may already hold statistics of earlier prompts).
        prompts: the profiling prompts (strings, or whatever ``call`` takes, e.g. prompt embeddings).
        call: ``call(pipeline, prompt, seed)`` runs one generation (the sizes, steps, guidance and generator are
            the caller's: every call must use the same number of steps).
        base_seed: seed of prompt 0.
        on_prompt_done: called after each prompt with its index and the statistics so far.

    Returns:
        The statistics over all prompts (give them to :func:`common_cache.profiling.build_profile`).
    """
    with DiffusersProfiling(pipeline, recorder):
        return record_prompts(recorder, prompts, lambda index: call(pipeline, prompts[index], base_seed + index),
                              on_prompt_done=on_prompt_done)
