"""Attention entry point of the Wan2.1 DiT: flash-attn varlen on CUDA when installed, torch SDPA otherwise.

References: Wan2.1 wan/modules/attention.py (flash_attention: varlen packing, key lengths, bf16 inputs).

The official DiT always calls flash-attn (FA3 if importable, else FA2) with packed variable-length
sequences: every query row is computed, and keys/values beyond ``k_lens[b]`` are dropped. The SDPA path
reproduces that with a boolean key mask, so padded query rows are still computed (the model never uses
their values).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

try:  # FlashAttention 3 (Hopper); optional
    import flash_attn_interface as _flash_attn_3
except ImportError:
    _flash_attn_3 = None

try:  # FlashAttention 2; optional
    import flash_attn as _flash_attn_2
except ImportError:
    _flash_attn_2 = None

HALF_DTYPES = (torch.float16, torch.bfloat16)


def flash_attention_available(device: torch.device) -> bool:
    """Whether a flash-attn package is importable and ``device`` is a CUDA device."""
    return device.type == "cuda" and (_flash_attn_3 is not None or _flash_attn_2 is not None)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_lens: torch.Tensor | None = None,
    window_size: tuple[int, int] = (-1, -1),
    dtype: torch.dtype = torch.bfloat16,
    use_flash: bool | None = None,
) -> torch.Tensor:
    """Multi-head attention over ``[B, L, heads, head_dim]`` tensors, ignoring keys at or after ``k_lens``.

    Args:
        q: queries ``[B, Lq, N, D]``.
        k: keys ``[B, Lk, N, D]``.
        v: values ``[B, Lk, N, D]``.
        k_lens: valid key count per sample ``[B]`` (any device), or None when every key is valid.
        window_size: flash-attn local window ``(left, right)``; ``(-1, -1)`` is global attention (the only
            value the SDPA path supports, and the only one any text-to-video config uses).
        dtype: half dtype the flash path casts fp32 inputs to (flash-attn computes in fp16/bf16 only).
        use_flash: True forces flash-attn, False forces SDPA, None picks flash-attn when available for
            ``q.device``.

    Returns:
        ``[B, Lq, N, D]`` in the dtype of ``q``.
    """
    if use_flash is None:
        use_flash = flash_attention_available(q.device)
    if use_flash:
        if not flash_attention_available(q.device):
            raise ValueError(f"use_flash=True needs flash-attn and a CUDA tensor; q is on {q.device}")
        return _flash_varlen(q, k, v, k_lens, window_size, dtype)
    return _sdpa(q, k, v, k_lens, window_size)


def _key_mask(
    k_lens: torch.Tensor | None, batch: int, len_k: int, device: torch.device
) -> torch.Tensor | None:
    """Boolean mask ``[B, 1, 1, Lk]`` (True = attend), or None when every key is valid."""
    if k_lens is None:
        return None
    k_lens = k_lens.to(device=device, dtype=torch.long)
    if k_lens.shape != (batch,):
        raise ValueError(f"k_lens must have shape ({batch},), got {tuple(k_lens.shape)}")
    if bool((k_lens >= len_k).all()):
        return None  # no padding: let SDPA pick its fastest kernel
    return (torch.arange(len_k, device=device)[None, :] < k_lens[:, None])[:, None, None, :]


def _common_dtype(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.dtype:
    """A half dtype if any input is half (as flash-attn computes in half precision), else the dtype of q."""
    for tensor in (v, q, k):
        if tensor.dtype in HALF_DTYPES:
            return tensor.dtype
    return q.dtype


def _sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_lens: torch.Tensor | None,
    window_size: tuple[int, int],
) -> torch.Tensor:
    if tuple(window_size) != (-1, -1):
        raise ValueError(
            f"window_size {tuple(window_size)} needs flash-attn; the SDPA path supports only (-1, -1)"
        )
    batch, len_k = k.shape[0], k.shape[1]
    mask = _key_mask(k_lens, batch, len_k, q.device)
    compute = _common_dtype(q, k, v)
    # SDPA wants [B, N, L, D]
    out = F.scaled_dot_product_attention(
        q.to(compute).transpose(1, 2),
        k.to(compute).transpose(1, 2),
        v.to(compute).transpose(1, 2),
        attn_mask=mask,
    )
    return out.transpose(1, 2).to(q.dtype)  # [B, Lq, N, D]


def _flash_varlen(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_lens: torch.Tensor | None,
    window_size: tuple[int, int],
    dtype: torch.dtype,
) -> torch.Tensor:
    """Packs the batch as flash-attn varlen sequences like the official code (all queries, valid keys)."""
    if dtype not in HALF_DTYPES:
        raise ValueError(f"flash-attn dtype must be one of {HALF_DTYPES}, got {dtype}")
    batch, len_q, len_k, out_dtype = q.shape[0], q.shape[1], k.shape[1], q.dtype

    def half(x: torch.Tensor) -> torch.Tensor:
        return x if x.dtype in HALF_DTYPES else x.to(dtype)

    q_lens = torch.full((batch,), len_q, dtype=torch.int32, device=q.device)
    packed_q = half(q.flatten(0, 1))  # [B*Lq, N, D]
    if k_lens is None:
        k_lens = torch.full((batch,), len_k, dtype=torch.int32, device=q.device)
        packed_k, packed_v = half(k.flatten(0, 1)), half(v.flatten(0, 1))
    else:
        lens = k_lens.tolist()
        packed_k = half(torch.cat([u[:n] for u, n in zip(k, lens)]))  # [sum(k_lens), N, D]
        packed_v = half(torch.cat([u[:n] for u, n in zip(v, lens)]))
        k_lens = k_lens.to(device=q.device, dtype=torch.int32)
    packed_q, packed_k = packed_q.to(packed_v.dtype), packed_k.to(packed_v.dtype)
    cu_q = torch.cat([q_lens.new_zeros(1), q_lens]).cumsum(0, dtype=torch.int32)
    cu_k = torch.cat([k_lens.new_zeros(1), k_lens]).cumsum(0, dtype=torch.int32)
    if _flash_attn_3 is not None:
        out = _flash_attn_3.flash_attn_varlen_func(
            q=packed_q, k=packed_k, v=packed_v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k,
            seqused_q=None, seqused_k=None, max_seqlen_q=len_q, max_seqlen_k=len_k,
            softmax_scale=None, causal=False, deterministic=False,
        )
        out = out[0] if isinstance(out, tuple) else out
    else:
        out = _flash_attn_2.flash_attn_varlen_func(
            q=packed_q, k=packed_k, v=packed_v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k,
            max_seqlen_q=len_q, max_seqlen_k=len_k, dropout_p=0.0, softmax_scale=None,
            causal=False, window_size=tuple(window_size), deterministic=False,
        )
    return out.unflatten(0, (batch, len_q)).to(out_dtype)  # [B, Lq, N, D]
