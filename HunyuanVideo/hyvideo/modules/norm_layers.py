"""RMSNorm with the official HunyuanVideo numerics (used as q/k norm over the head dimension).

References: Tencent/HunyuanVideo hyvideo/modules/norm_layers.py (official numerics).
"""

import torch
import torch.nn as nn


class RMSNorm(nn.Module):
    """RMS normalization over the last dimension.

    The statistics are computed in fp32 and the result is cast back to the input dtype *before* the multiply
    by the learnable weight, as upstream does; under bf16 the weight multiply therefore happens in bf16.
    """

    def __init__(self, dim: int, eps: float = 1e-6, dtype: torch.dtype | None = None, device=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, dtype=dtype, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalizes `x` [..., dim] and returns a tensor of the same shape and dtype."""
        x_float = x.float()
        normed = x_float * torch.rsqrt(x_float.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


def qk_norm_layer(head_dim: int, enabled: bool, dtype=None, device=None) -> nn.Module:
    """Builds the q/k norm of an attention layer: RMSNorm(head_dim, eps 1e-6) or Identity when disabled."""
    if not enabled:
        return nn.Identity()
    return RMSNorm(head_dim, eps=1e-6, dtype=dtype, device=device)
