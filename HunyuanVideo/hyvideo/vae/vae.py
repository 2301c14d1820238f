"""Encoder, decoder and diagonal Gaussian posterior of the HunyuanVideo causal 3D VAE.

References: HunyuanVideo hyvideo/vae/vae.py (official structure, numerics and state-dict keys).
"""

import torch
from torch import nn

from .unet_causal_3d_blocks import (
    RESNET_EPS,
    CausalConv3d,
    DownEncoderBlockCausal3D,
    UNetMidBlockCausal3D,
    UpDecoderBlockCausal3D,
    resample_factors,
)


class EncoderCausal3D(nn.Module):
    """Video [B, 3, T, H, W] -> moments [B, 2 * latent, 1 + (T - 1) / t_ratio, H / s_ratio, W / s_ratio].

    Args:
        in_channels: video channels.
        latent_channels: latent channels (the output has twice as many: mean and log-variance).
        block_out_channels: channels of each down block.
        layers_per_block: resnets per down block.
        norm_num_groups: GroupNorm groups everywhere.
        time_compression_ratio: 4 or 8.
        spatial_compression_ratio: a power of two.
        mid_block_add_attention: whether the mid block has its frame-causal attention.
    """

    def __init__(self, in_channels, latent_channels, block_out_channels, layers_per_block, norm_num_groups,
                 time_compression_ratio, spatial_compression_ratio, mid_block_add_attention=True,
                 dropout=0.0):
        super().__init__()
        channels = list(block_out_channels)
        self.conv_in = CausalConv3d(in_channels, channels[0], kernel_size=3)
        self.down_blocks = nn.ModuleList()
        for i, out_ch in enumerate(channels):
            stride = resample_factors(i, len(channels), spatial_compression_ratio, time_compression_ratio)
            in_ch = channels[max(i - 1, 0)]
            self.down_blocks.append(
                DownEncoderBlockCausal3D(in_ch, out_ch, layers_per_block, norm_num_groups, stride, dropout))
        self.mid_block = UNetMidBlockCausal3D(channels[-1], norm_num_groups, mid_block_add_attention, dropout)
        self.conv_norm_out = nn.GroupNorm(norm_num_groups, channels[-1], eps=RESNET_EPS)
        self.conv_act = nn.SiLU()
        self.conv_out = CausalConv3d(channels[-1], 2 * latent_channels, kernel_size=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5:
            raise ValueError(f"video must be [B, C, T, H, W], got shape {tuple(x.shape)}")
        h = self.conv_in(x)  # [B, C0, T, H, W]
        for block in self.down_blocks:
            h = block(h)
        h = self.mid_block(h)  # [B, C_last, t, h, w]
        return self.conv_out(self.conv_act(self.conv_norm_out(h)))  # [B, 2 * latent, t, h, w]


class DecoderCausal3D(nn.Module):
    """Latent [B, latent, t, h, w] -> video [B, 3, 1 + (t - 1) * t_ratio, h * s_ratio, w * s_ratio].

    Args: as `EncoderCausal3D`; every up block has `layers_per_block + 1` resnets.
    """

    def __init__(self, latent_channels, out_channels, block_out_channels, layers_per_block, norm_num_groups,
                 time_compression_ratio, spatial_compression_ratio, mid_block_add_attention=True,
                 dropout=0.0):
        super().__init__()
        channels = list(reversed(block_out_channels))
        self.conv_in = CausalConv3d(latent_channels, channels[0], kernel_size=3)
        self.mid_block = UNetMidBlockCausal3D(channels[0], norm_num_groups, mid_block_add_attention, dropout)
        self.up_blocks = nn.ModuleList()
        for i, out_ch in enumerate(channels):
            factor = resample_factors(i, len(channels), spatial_compression_ratio, time_compression_ratio)
            in_ch = channels[max(i - 1, 0)]
            self.up_blocks.append(
                UpDecoderBlockCausal3D(in_ch, out_ch, layers_per_block + 1, norm_num_groups, factor, dropout))
        self.conv_norm_out = nn.GroupNorm(norm_num_groups, channels[-1], eps=RESNET_EPS)
        self.conv_act = nn.SiLU()
        self.conv_out = CausalConv3d(channels[-1], out_channels, kernel_size=3)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.ndim != 5:
            raise ValueError(f"latent must be [B, C, t, h, w], got shape {tuple(z.shape)}")
        h = self.mid_block(self.conv_in(z))  # [B, C_last, t, h, w]
        h = h.to(self.up_blocks[0].resnets[0].norm1.weight.dtype)  # official: the up blocks' dtype rules
        for block in self.up_blocks:
            h = block(h)
        return self.conv_out(self.conv_act(self.conv_norm_out(h)))  # [B, 3, T, H, W]


class DiagonalGaussianDistribution:
    """Posterior N(mean, exp(logvar)) from moments split on the channel dim; logvar clamped to [-30, 20].

    Args:
        parameters: [B, 2 * C, ...] moments (mean first, then log-variance).
        deterministic: if True, std and var are zero (sampling returns the mean).
    """

    def __init__(self, parameters: torch.Tensor, deterministic: bool = False):
        self.parameters = parameters
        self.mean, logvar = torch.chunk(parameters, 2, dim=1)
        self.logvar = torch.clamp(logvar, -30.0, 20.0)
        self.deterministic = deterministic
        if deterministic:
            self.std = self.var = torch.zeros_like(self.mean)
        else:
            self.std = torch.exp(0.5 * self.logvar)
            self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """mean + std * eps; eps is drawn on the generator's device (CPU generators work for GPU moments)."""
        device = self.parameters.device
        noise_device = generator.device if generator is not None else device
        noise = torch.randn(self.mean.shape, generator=generator, device=noise_device,
                            dtype=self.parameters.dtype)
        return self.mean + self.std * noise.to(device)

    def mode(self) -> torch.Tensor:
        """The mean (what decoding uses)."""
        return self.mean
