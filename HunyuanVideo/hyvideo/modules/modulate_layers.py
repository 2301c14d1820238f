"""adaLN modulation: the SiLU -> Linear projection of the conditioning vector and the two helpers using it.

References: Tencent/HunyuanVideo hyvideo/modules/modulate_layers.py (key names and official numerics).
"""

import torch
import torch.nn as nn


class ModulateDiT(nn.Module):
    """Projects the conditioning vector to `factor` modulation chunks: Linear(SiLU(vec)) (key `linear`)."""

    def __init__(self, hidden_size: int, factor: int, dtype: torch.dtype | None = None, device=None):
        super().__init__()
        self.act = nn.SiLU()
        self.linear = nn.Linear(hidden_size, factor * hidden_size, bias=True, dtype=dtype, device=device)

    def forward(self, vec: torch.Tensor) -> torch.Tensor:
        """vec [B, C] -> [B, factor * C]."""
        return self.linear(self.act(vec))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x [B, L, C] * (1 + scale [B, C]) + shift [B, C]."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def apply_gate(x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """x [B, L, C] * gate [B, C]."""
    return x * gate.unsqueeze(1)
