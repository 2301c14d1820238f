"""Training-time speed-up: a batched RoPE that gives bit-identical results when every sample has the same grid.

References: Wan2.1 wan/modules/model.py (rope_apply numerics: float64 complex rotation, padding copied through).

``wan.modules.model.rope_apply`` loops over the samples of a batch (samples may have different grids), and
autograd then builds one full-size zero tensor per sample and block in the backward pass; on a CPU that
dominates a training step of the tiny model. During training every sample has the same grid and no padding, so
the rotation can be applied to the whole batch at once. :func:`batched_rope` installs that version for the
duration of a ``with`` block (the model file itself is untouched) and falls back to the original whenever the
grids differ or tokens are padded.
"""

from __future__ import annotations

import contextlib

import torch

from ..modules import model as wan_model

_original_rope_apply = wan_model.rope_apply


def rope_apply_batched(x: torch.Tensor, grid_sizes: torch.Tensor, freqs: torch.Tensor,
                       token_offset: int = 0) -> torch.Tensor:
    """Same contract and numbers as ``wan.modules.model.rope_apply``; one batched rotation when it can."""
    grids = grid_sizes.tolist()
    f, h, w = grids[0]
    n = f * h * w
    if any(g != grids[0] for g in grids) or n != x.shape[1] or token_offset:
        return _original_rope_apply(x, grid_sizes, freqs, token_offset)
    b, heads, half = x.shape[0], x.shape[2], x.shape[3] // 2
    table_f, table_h, table_w = freqs.split(wan_model.rope_axis_split(2 * half), dim=1)
    angles = torch.cat(
        [
            table_f[:f].view(f, 1, 1, -1).expand(f, h, w, -1),
            table_h[:h].view(1, h, 1, -1).expand(f, h, w, -1),
            table_w[:w].view(1, 1, w, -1).expand(f, h, w, -1),
        ],
        dim=-1,
    ).reshape(1, n, 1, half)  # [1, n, 1, D/2]
    pairs = torch.view_as_complex(x.to(torch.float64).reshape(b, n, heads, half, 2))  # [B, n, N, D/2]
    return torch.view_as_real(pairs * angles).flatten(3).float()  # [B, n, N, D]


@contextlib.contextmanager
def batched_rope():
    """Installs :func:`rope_apply_batched` as the DiT's RoPE inside the ``with`` block."""
    wan_model.rope_apply = rope_apply_batched
    try:
        yield
    finally:
        wan_model.rope_apply = _original_rope_apply
