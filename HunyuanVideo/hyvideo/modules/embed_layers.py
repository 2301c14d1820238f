"""Embedders of the HunyuanVideo transformer: 3D patches, sinusoidal timesteps, pooled-text projection.

References: Tencent/HunyuanVideo hyvideo/modules/embed_layers.py (key names and official numerics).
"""

import math

import torch
import torch.nn as nn


class PatchEmbed(nn.Module):
    """Conv3d patch embedding (kernel = stride = patch size); key `proj`."""

    def __init__(
        self,
        patch_size: list[int],
        in_channels: int,
        hidden_size: int,
        dtype: torch.dtype | None = None,
        device=None,
    ):
        super().__init__()
        patch = tuple(patch_size)
        self.proj = nn.Conv3d(
            in_channels, hidden_size, kernel_size=patch, stride=patch, bias=True, dtype=dtype, device=device
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, t, h, w] -> tokens [B, tt*th*tw, hidden], ordered t-major, then h, then w."""
        x = self.proj(x)  # [B, hidden, tt, th, tw]
        return x.flatten(2).transpose(1, 2)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [cos, sin] of a batch of (possibly fractional) timesteps, computed in fp32.

    Args:
        t: [B] timesteps (or guidance values).
        dim: embedding size (even).
        max_period: controls the lowest frequency.

    Returns:
        [B, dim] fp32 embedding, cosines first.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(0, half, dtype=torch.float32) / half).to(t.device)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedder(nn.Module):
    """Sinusoid(256) -> Linear -> SiLU -> Linear (keys `mlp.0`, `mlp.2`)."""

    def __init__(
        self,
        hidden_size: int,
        frequency_embedding_size: int = 256,
        dtype: torch.dtype | None = None,
        device=None,
    ):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size, bias=True, dtype=dtype, device=device),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, bias=True, dtype=dtype, device=device),
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """t [B] -> [B, hidden]."""
        t_freq = timestep_embedding(t, self.frequency_embedding_size).type(self.mlp[0].weight.dtype)
        return self.mlp(t_freq)


class TextProjection(nn.Module):
    """linear_1 -> SiLU -> linear_2: projects the masked mean of the text states in the token refiner."""

    def __init__(self, in_channels: int, hidden_size: int, dtype: torch.dtype | None = None, device=None):
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, hidden_size, bias=True, dtype=dtype, device=device)
        self.act_1 = nn.SiLU()
        self.linear_2 = nn.Linear(hidden_size, hidden_size, bias=True, dtype=dtype, device=device)

    def forward(self, caption: torch.Tensor) -> torch.Tensor:
        """caption [B, in_channels] -> [B, hidden]."""
        return self.linear_2(self.act_1(self.linear_1(caption)))
