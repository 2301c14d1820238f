"""Sequence parallelism for the Wan2.1 DiT through its seams: shard after patchify, gather after the head.

References: Wan2.1 wan/distributed/xdit_context_parallel.py (what the official USP path splits and gathers: the
padded token axis, RoPE at global positions, self-attention through USP, cross-attention local). Own code: no
forward and no RoPE is copied; the model's own methods run, three seams are swapped.

On every rank the model runs its own forward unchanged. :func:`parallelize_wan_model` swaps, through one
:class:`profilingdit.seams.Seams` that it returns (``undo()`` makes the model a one-process model again),

1. ``patchify_and_pad``: the padded token sequence ``[B, seq_len, C]`` is padded further to a multiple of the world
   size and cut into equal chunks; rank r keeps chunk r (the first block's input);
2. each block's ``self_attn.attention_kernel`` for :func:`usp_self_attention`, and ``self_attn.shard_index`` for
   the rank, so that RoPE rotates the local tokens by their global positions;
3. ``unpatchify``: the head's per-token outputs are gathered from every rank (after the head: the head is per
   token, and its output is narrower than the hidden state) before the original unpatchify.

Cross-attention keeps local queries against the whole (replicated) text, so it needs no change. Image-to-video
needs none either, as upstream: the conditioning latent is concatenated to the noise before patchify (so its tokens
are split with the video's), and the CLIP image tokens are part of the replicated context. The time
embedding and the text are computed on every rank, so the cache's signals and decisions agree across ranks.

Unlike the official path (which lets the zero-padded tokens attend as keys), padding keys are masked, so the result
equals the one-process result up to float rounding.
"""

from __future__ import annotations

import torch

from profilingdit.parallel import SequenceParallel, check_heads
from profilingdit.seams import Seams

from ..modules.model import WanModel


def parallelize_wan_model(model: WanModel, sp: SequenceParallel, flag: str = "--ulysses_size") -> Seams:
    """Makes ``model`` run its blocks on this rank's chunk of every sequence (see the module docstring).

    Args:
        model: the DiT, identical on every rank.
        sp: the engine from :func:`profilingdit.parallel.init_sequence_parallel`.
        flag: the command line's name of the Ulysses degree (for the messages).

    Returns:
        The swapped seams: ``undo()`` restores the one-process model exactly.

    Raises:
        ValueError: the head count is not divisible by the Ulysses degree; a local attention window.
    """
    check_heads(sp.degrees, model.num_heads, flag)
    if model.window_size != (-1, -1):
        raise ValueError(f"window_size {model.window_size} (local attention) cannot run sequence-parallel: only "
                         "(-1, -1)")
    patchify_and_pad, unpatchify = model.patchify_and_pad, model.unpatchify

    def patchify_and_shard(x: list[torch.Tensor], seq_len: int):
        tokens, seq_lens, grid_sizes = patchify_and_pad(x, seq_len)  # [B, seq_len, C]
        return sp.shard(tokens, dim=1), seq_lens, grid_sizes  # [B, ceil(seq_len / W), C]; lengths stay global

    def gather_and_unpatchify(x: torch.Tensor, grid_sizes: torch.Tensor) -> list[torch.Tensor]:
        return unpatchify(sp.gather(x, dim=1), grid_sizes)  # unpatchify keeps each sample's f*h*w tokens

    def kernel(q, k, v, k_lens=None, window_size=(-1, -1), **_):
        return usp_self_attention(sp, q, k, v, k_lens=k_lens, window_size=window_size)

    seams = Seams()
    seams.swap(model, "patchify_and_pad", patchify_and_shard)
    seams.swap(model, "unpatchify", gather_and_unpatchify)
    for block in model.blocks:
        seams.swap(block.self_attn, "attention_kernel", kernel)
        seams.swap(block.self_attn, "shard_index", sp.rank)
    return seams


def usp_self_attention(sp: SequenceParallel, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       k_lens: torch.Tensor | None = None, window_size=(-1, -1)) -> torch.Tensor:
    """Self-attention of this rank's chunk over the whole sequence, with the semantics of ``attention()``.

    Args:
        sp: the engine.
        q, k, v: ``[B, L_local, N, D]``: chunk ``sp.rank`` of every (padded) sequence.
        k_lens: ``[B]`` valid tokens of every whole sequence (keys at or after it are ignored), or None.
        window_size: only ``(-1, -1)``.

    Returns:
        ``[B, L_local, N, D]`` in the dtype of ``q``.
    """
    if tuple(window_size) != (-1, -1):
        raise ValueError(f"window_size {tuple(window_size)} is not supported under sequence parallelism")
    local = q.shape[1]
    key_valid = None
    # The lengths are the same on every rank, so every rank takes the same branch.
    if k_lens is not None and bool((k_lens < local * sp.world_size).any()):
        key_valid = sp.local_positions(local, q.device)[None, :] < k_lens.to(q.device)[:, None]  # [B, L_local]
    return sp.attention(q, k, v, key_valid=key_valid)
