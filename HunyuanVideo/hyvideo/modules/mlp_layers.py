"""MLPs of the HunyuanVideo transformer (key names `fc1`/`fc2` and `in_layer`/`out_layer` as upstream).

References: Tencent/HunyuanVideo hyvideo/modules/mlp_layers.py (key names and official numerics).
"""

from collections.abc import Callable

import torch
import torch.nn as nn

from .modulate_layers import modulate


class MLP(nn.Module):
    """fc1 -> activation -> fc2 (upstream's dropout and norm slots are inference no-ops without keys)."""

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        act_layer: Callable[[], nn.Module],
        dtype: torch.dtype | None = None,
        device=None,
    ):
        super().__init__()
        self.fc1 = nn.Linear(in_channels, hidden_channels, bias=True, dtype=dtype, device=device)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_channels, in_channels, bias=True, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, L, C] -> [B, L, C]."""
        return self.fc2(self.act(self.fc1(x)))


class MLPEmbedder(nn.Module):
    """in_layer -> SiLU -> out_layer: projects the pooled CLIP embedding onto the conditioning vector."""

    def __init__(self, in_dim: int, hidden_dim: int, dtype: torch.dtype | None = None, device=None):
        super().__init__()
        self.in_layer = nn.Linear(in_dim, hidden_dim, bias=True, dtype=dtype, device=device)
        self.silu = nn.SiLU()
        self.out_layer = nn.Linear(hidden_dim, hidden_dim, bias=True, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, in_dim] -> [B, hidden_dim]."""
        return self.out_layer(self.silu(self.in_layer(x)))


class FinalLayer(nn.Module):
    """Final adaLN layer: LayerNorm (no affine) -> modulate(shift, scale) -> Linear to patch pixels.

    `linear` is built without the model dtype (fp32), as upstream, which keeps it fp32 in a bf16 model.
    """

    def __init__(
        self,
        hidden_size: int,
        patch_size: list[int],
        out_channels: int,
        dtype: torch.dtype | None = None,
        device=None,
    ):
        super().__init__()
        factory = {"dtype": dtype, "device": device}
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6, **factory)
        out_features = patch_size[0] * patch_size[1] * patch_size[2] * out_channels
        self.linear = nn.Linear(hidden_size, out_features, bias=True, device=device)
        self.adaLN_modulation = nn.Sequential(
            nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size, bias=True, **factory)
        )

    def forward(self, x: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
        """x [B, L, C], vec [B, C] -> [B, L, pt*ph*pw*out_channels]."""
        shift, scale = self.adaLN_modulation(vec).chunk(2, dim=1)
        x = modulate(self.norm_final(x), shift=shift, scale=scale)
        # Upstream relies on autocast to reconcile a bf16 activation with the fp32 linear (and breaks with
        # --disable-autocast). Casting to the weight dtype changes nothing under autocast (the matmul runs in
        # the autocast dtype either way) and lets a bf16 model also run without autocast: a deliberate fix.
        return self.linear(x.to(self.linear.weight.dtype))
