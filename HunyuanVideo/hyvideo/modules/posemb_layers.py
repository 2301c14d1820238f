"""3D rotary position embedding (RoPE) of the HunyuanVideo transformer, real (cos, sin) form.

References: Tencent/HunyuanVideo hyvideo/modules/posemb_layers.py (official numerics: fp32 tables built on
the CPU, interleaved pairs) and hyvideo/inference.py `get_rotary_pos_embed` (latent size from pixel size).

The tables are built once per generation from the latent grid and passed to the transformer's forward, which
applies them to the image tokens only.
"""

from collections.abc import Sequence

import torch


def get_1d_rotary_pos_embed(
    dim: int, pos: torch.Tensor, theta: float = 256.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE tables of one axis.

    Args:
        dim: rotary dimensions of this axis (even).
        pos: [S] fp32 positions.
        theta: RoPE base.

    Returns:
        (cos, sin), each [S, dim] fp32, every frequency repeated twice (interleaved pairs).
    """
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))  # [dim/2]
    angles = torch.outer(pos, freqs)  # [S, dim/2]
    return angles.cos().repeat_interleave(2, dim=1), angles.sin().repeat_interleave(2, dim=1)


def get_nd_rotary_pos_embed(
    rope_dim_list: Sequence[int], sizes: Sequence[int], theta: float = 256.0, use_real: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE tables for an n-d token grid, concatenated over the axes.

    Equivalent to the official
    `get_nd_rotary_pos_embed(rope_dim_list, [tt, th, tw], theta=256, use_real=True)`.

    Args:
        rope_dim_list: rotary dimensions per axis, e.g. (16, 56, 56); they sum to the head dimension.
        sizes: grid size per axis in tokens, e.g. (tt, th, tw) = (t, h/2, w/2) of the latent.
        theta: RoPE base (the official `--rope-theta`, 256).
        use_real: only the real (cos, sin) form is implemented (the only one the transformer consumes).

    Returns:
        (cos, sin), each [prod(sizes), sum(rope_dim_list)] fp32, tokens in row-major grid order (t-major).
    """
    if not use_real:
        raise ValueError("use_real=False (complex tables) is not supported; allowed: use_real=True")
    if len(rope_dim_list) != len(sizes):
        raise ValueError(f"rope_dim_list={list(rope_dim_list)} needs one entry per grid axis {list(sizes)}")
    odd = [d for d in rope_dim_list if d % 2]
    if odd:
        raise ValueError(f"rope_dim_list={list(rope_dim_list)} must hold even dimensions only")
    axes = [torch.arange(size, dtype=torch.float32) for size in sizes]
    grid = torch.meshgrid(*axes, indexing="ij")  # n tensors [*sizes]
    tables = [get_1d_rotary_pos_embed(dim, g.reshape(-1), theta) for dim, g in zip(rope_dim_list, grid)]
    cos = torch.cat([c for c, _ in tables], dim=1)  # [N, sum(dims)]
    sin = torch.cat([s for _, s in tables], dim=1)
    return cos, sin


def latent_rope_sizes(
    video_length: int,
    height: int,
    width: int,
    patch_size: Sequence[int] = (1, 2, 2),
    time_compression: int = 4,
    spatial_compression: int = 8,
) -> list[int]:
    """Token-grid size (tt, th, tw) of a video in pixels, as upstream computes it for the RoPE tables.

    Latent size = ((T - 1) // time_compression + 1, H // spatial_compression, W // spatial_compression) for
    the "884" VAE; then divided (floor) by the patch size.
    """
    latent_frames = (video_length - 1) // time_compression + 1
    latent = [latent_frames, height // spatial_compression, width // spatial_compression]
    return [size // patch for size, patch in zip(latent, patch_size)]


def get_rotary_pos_embed(
    video_length: int,
    height: int,
    width: int,
    rope_dim_list: Sequence[int] = (16, 56, 56),
    patch_size: Sequence[int] = (1, 2, 2),
    theta: float = 256.0,
    time_compression: int = 4,
    spatial_compression: int = 8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE tables for a video of `video_length` frames of `height` x `width` pixels.

    Args:
        video_length: number of frames (4n+1 for the "884" VAE).
        height, width: pixel size (already aligned to 16).
        rope_dim_list: the transformer's rotary dimensions per axis (sum = head dim).
        patch_size: the transformer's (pt, ph, pw).
        theta: RoPE base (`--rope-theta`).
        time_compression, spatial_compression: VAE compression (4 and 8 for "884-16c-hy").

    Returns:
        (freqs_cos, freqs_sin), each [tt*th*tw, sum(rope_dim_list)] fp32 on the CPU.
    """
    sizes = latent_rope_sizes(video_length, height, width, patch_size, time_compression, spatial_compression)
    return get_nd_rotary_pos_embed(rope_dim_list, sizes, theta=theta, use_real=True)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Rotates adjacent pairs: (x0, x1) -> (-x1, x0) over the last dim of x [B, L, H, D] (fp32)."""
    x_real, x_imag = x.float().reshape(*x.shape[:-1], -1, 2).unbind(-1)  # each [B, L, H, D/2]
    return torch.stack([-x_imag, x_real], dim=-1).flatten(3)


def apply_rotary_emb(
    xq: torch.Tensor, xk: torch.Tensor, freqs_cis: tuple[torch.Tensor, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Applies RoPE to queries and keys [B, L, H, D] (sequence-first layout), computed in fp32 and cast back.

    Args:
        xq, xk: [B, L, H, D] image-token queries and keys.
        freqs_cis: (cos, sin), each [L, D].

    Returns:
        The rotated (xq, xk) in their input dtype.
    """
    cos, sin = (f.view(1, f.shape[0], 1, f.shape[1]) for f in freqs_cis)  # [1, L, 1, D]
    xq_out = (xq.float() * cos + rotate_half(xq.float()) * sin).type_as(xq)
    xk_out = (xk.float() * cos + rotate_half(xk.float()) * sin).type_as(xk)
    return xq_out, xk_out
