"""Attention each key token *receives*, computed chunk-wise without ever materialising the N x N matrix.

The paper's per-token score (Eq. 5, read as a column mean, method.md section 2.1 item 3) is

    a_j = 1 / (H * Nq) * sum_heads sum_queries softmax_j(q . k_j * scale)

for every key token j. Each query row's softmax needs its log-sum-exp over all valid keys; with it, the
probabilities of a block of rows can be formed one (query chunk x key chunk) tile at a time and summed over the
rows. Peak memory is ``heads * query_chunk * key_chunk`` floats instead of ``heads * N * N``: at HunyuanVideo's
118,800 image tokens the dense matrix would hold 1.4e10 entries per head.

When all keys fit one tile (``heads * query_chunk * Lk`` below ``max_tile_elements``) each query chunk needs one
pass; otherwise the log-sum-exp is built over key chunks first (online, ``logaddexp``), then the probabilities are
summed in a second pass over the same key chunks.
"""

from __future__ import annotations

import math

import torch

DEFAULT_QUERY_CHUNK = 256
DEFAULT_MAX_TILE_ELEMENTS = 1 << 24  # 16 Mi floats = 64 MiB per logits tile in fp32


def received_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    key_lens: torch.Tensor | list[int] | None = None,
    query_lens: torch.Tensor | list[int] | None = None,
    scale: float | None = None,
    query_chunk: int = DEFAULT_QUERY_CHUNK,
    key_chunk: int | None = None,
    max_tile_elements: int = DEFAULT_MAX_TILE_ELEMENTS,
) -> torch.Tensor:
    """Mean attention probability each key receives, over the valid queries and all heads.

    Args:
        q: queries ``[B, Lq, H, D]`` (after q-norm and RoPE: exactly what the attention kernel gets).
        k: keys ``[B, Lk, H, D]``.
        key_lens: per sample, how many leading keys are valid (the softmax runs over them only, as in the model);
            None = all ``Lk``.
        query_lens: per sample, how many leading queries are averaged (e.g. the image tokens of a joint
            [image ; text] sequence, or the unpadded tokens); None = all ``Lq``.
        scale: logit scale; None = ``1 / sqrt(D)`` (the kernels' default).
        query_chunk: query rows per tile.
        key_chunk: keys per tile; None picks all keys when the tile fits ``max_tile_elements``, else the largest
            chunk that does.
        max_tile_elements: bound on ``H * query_chunk * key_chunk`` when ``key_chunk`` is None.

    Returns:
        ``[B, Lk]`` float32; entries at or after ``key_lens[b]`` are 0. Each row sums to 1 (over valid keys).

    Raises:
        ValueError: mismatched shapes, lengths out of range, or non-positive chunk sizes.
    """
    _check_inputs(q, k, query_chunk, key_chunk)
    batch, len_q, heads, dim = q.shape
    len_k = k.shape[1]
    key_lens = _lengths("key_lens", key_lens, batch, len_k)
    query_lens = _lengths("query_lens", query_lens, batch, len_q)
    scale = 1.0 / math.sqrt(dim) if scale is None else float(scale)
    out = torch.zeros(batch, len_k, dtype=torch.float32, device=q.device)
    for b in range(batch):
        n_q, n_k = query_lens[b], key_lens[b]
        if n_q == 0 or n_k == 0:
            continue
        qb = q[b, :n_q].transpose(0, 1).float() * scale  # [H, n_q, D]
        kb = k[b, :n_k].transpose(0, 1).float()  # [H, n_k, D]
        chunk_k = key_chunk or max(1, min(n_k, max_tile_elements // (heads * min(query_chunk, n_q))))
        total = _received_one_sample(qb, kb, query_chunk, chunk_k)  # [n_k]
        out[b, :n_k] = total / (heads * n_q)
    return out


def _received_one_sample(qb: torch.Tensor, kb: torch.Tensor, query_chunk: int, key_chunk: int) -> torch.Tensor:
    """Sum over heads and query rows of the softmax probabilities, per key. qb [H, n_q, D], kb [H, n_k, D]."""
    n_q, n_k = qb.shape[1], kb.shape[1]
    total = torch.zeros(n_k, dtype=torch.float32, device=qb.device)
    for q0 in range(0, n_q, query_chunk):
        rows = qb[:, q0 : q0 + query_chunk]  # [H, cq, D]
        if key_chunk >= n_k:  # one pass: the whole row is in the tile
            logits = rows @ kb.transpose(1, 2)  # [H, cq, n_k]
            probs = torch.exp(logits - torch.logsumexp(logits, dim=-1, keepdim=True))
            total += probs.sum(dim=(0, 1))
            continue
        lse = torch.full(rows.shape[:2] + (1,), -math.inf, dtype=torch.float32, device=qb.device)  # [H, cq, 1]
        for k0 in range(0, n_k, key_chunk):
            logits = rows @ kb[:, k0 : k0 + key_chunk].transpose(1, 2)  # [H, cq, ck]
            lse = torch.logaddexp(lse, torch.logsumexp(logits, dim=-1, keepdim=True))
        for k0 in range(0, n_k, key_chunk):
            logits = rows @ kb[:, k0 : k0 + key_chunk].transpose(1, 2)
            total[k0 : k0 + key_chunk] += torch.exp(logits - lse).sum(dim=(0, 1))
    return total


def _check_inputs(q: torch.Tensor, k: torch.Tensor, query_chunk: int, key_chunk: int | None) -> None:
    if q.dim() != 4 or k.dim() != 4:
        raise ValueError(f"q and k must be [B, L, H, D]; got shapes {tuple(q.shape)} and {tuple(k.shape)}")
    if q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must agree in batch, heads and head size")
    if query_chunk < 1:
        raise ValueError(f"query_chunk={query_chunk} is not allowed: expected an integer >= 1")
    if key_chunk is not None and key_chunk < 1:
        raise ValueError(f"key_chunk={key_chunk} is not allowed: expected None or an integer >= 1")


def _lengths(field: str, lens, batch: int, limit: int) -> list[int]:
    if lens is None:
        return [limit] * batch
    values = [int(v) for v in (lens.tolist() if isinstance(lens, torch.Tensor) else lens)]
    if len(values) != batch or any(not 0 <= v <= limit for v in values):
        raise ValueError(f"{field}={values} is not allowed: expected {batch} values in 0..{limit}")
    return values


def split_frames(received: torch.Tensor, frames: int, tokens_per_frame: int) -> torch.Tensor:
    """Cuts the first ``frames * tokens_per_frame`` entries of a per-token vector into frames.

    Tokens are ordered frame-major (frame, height, width) in both models.

    Args:
        received: ``[..., L]`` per-token values with ``L >= frames * tokens_per_frame``.
        frames: latent frames of the token grid.
        tokens_per_frame: tokens of one frame (grid height x width).

    Returns:
        ``[..., frames, tokens_per_frame]``.
    """
    needed = frames * tokens_per_frame
    if received.shape[-1] < needed:
        raise ValueError(f"{received.shape[-1]} tokens cannot hold {frames} frames of {tokens_per_frame} tokens")
    return received[..., :needed].unflatten(-1, (frames, tokens_per_frame))
