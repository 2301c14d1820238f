"""Overlapping-tile evaluation with linear cross-fades, in space (H, W) and in time (causal).

References: HunyuanVideo hyvideo/vae/autoencoder_kl_causal_3d.py (official tile walk, blend ramps and crops).

The same walk serves decoding (latent tiles in, pixel tiles out) and encoding (pixel tiles in, moment tiles
out); only the sizes differ. Each tile is cross-faded with its already blended neighbour above/left (or
before in time), exactly as the official in-place blending does, then cropped to the output stride.
"""

from typing import Callable

import torch

TileFn = Callable[[torch.Tensor], torch.Tensor]


def blend(prev: torch.Tensor, cur: torch.Tensor, extent: int, dim: int) -> torch.Tensor:
    """Cross-fade the first `extent` slices of `cur` with the last `extent` slices of `prev` along `dim`.

    Slice k (0 <= k < extent) becomes `prev[-extent + k] * (1 - k / extent) + cur[k] * (k / extent)`; the
    extent is clipped to both sizes. Python-float weights, one slice at a time, keep the official rounding in
    fp16/bf16.

    Args:
        prev: the neighbouring tile that comes first along `dim`.
        cur: the tile to blend (not modified).
        extent: overlap length in output units.
        dim: the axis to blend along.

    Returns:
        A blended copy of `cur`.
    """
    extent = min(prev.shape[dim], cur.shape[dim], extent)
    if extent <= 0:
        return cur
    out = cur.clone()
    for k in range(extent):
        weight = k / extent
        out.select(dim, k).copy_(prev.select(dim, k - extent) * (1 - weight) + cur.select(dim, k) * weight)
    return out


def tiled_spatial(fn: TileFn, x: torch.Tensor, tile: int, stride: int, blend_extent: int,
                  keep: int) -> torch.Tensor:
    """Apply `fn` to overlapping `tile x tile` windows of `x` [..., H, W] and stitch the outputs.

    Args:
        fn: maps an input tile to an output tile (may change the spatial scale).
        x: input [B, C, T, H, W].
        tile: input tile size (H and W).
        stride: input step between tiles.
        blend_extent: output overlap that is cross-faded.
        keep: output size kept of each tile (the output stride).

    Returns:
        The stitched output [B, C', T', H', W'].
    """
    height, width = x.shape[-2:]
    rows, prev_row = [], None
    for i in range(0, height, stride):
        row = []
        for j in range(0, width, stride):
            out = fn(x[..., i:i + tile, j:j + tile])  # [B, C', T', tile', tile']
            if prev_row is not None:
                out = blend(prev_row[len(row)], out, blend_extent, dim=-2)
            if row:
                out = blend(row[-1], out, blend_extent, dim=-1)
            row.append(out)
        rows.append(torch.cat([out[..., :keep, :keep] for out in row], dim=-1))
        prev_row = row
    return torch.cat(rows, dim=-2)


def tiled_temporal(fn: TileFn, x: torch.Tensor, tile: int, stride: int, blend_extent: int,
                   keep: int) -> torch.Tensor:
    """Apply `fn` to overlapping windows of `tile + 1` frames of `x` and stitch the outputs in time.

    Every window after the first starts on a frame that the previous window already produced; since the causal
    model treats a window's first frame specially, its first output frame is dropped. The first window keeps
    `keep + 1` output frames, the others `keep`.

    Args:
        fn: maps an input window [B, C, T, H, W] to an output window (may change the time scale).
        x: input [B, C, T, H, W].
        tile: window length minus one (input units).
        stride: input step between windows.
        blend_extent: output frames cross-faded with the previous window.
        keep: output frames kept of each window after the first.

    Returns:
        The stitched output [B, C', T', H', W'].
    """
    pieces, prev = [], None
    for i in range(0, x.shape[2], stride):
        out = fn(x[:, :, i:i + tile + 1])  # [B, C', T', H', W']
        if prev is None:
            pieces.append(out[:, :, :keep + 1])
        else:
            out = blend(prev, out[:, :, 1:], blend_extent, dim=2)
            pieces.append(out[:, :, :keep])
        prev = out
    return torch.cat(pieces, dim=2)
