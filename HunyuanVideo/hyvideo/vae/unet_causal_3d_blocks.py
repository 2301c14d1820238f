"""Building blocks of the HunyuanVideo causal 3D VAE: causal convolution, resnet, resampling, mid block.

References: HunyuanVideo hyvideo/vae/unet_causal_3d_blocks.py (official numerics and state-dict keys; the
diffusers `AutoencoderKLHunyuanVideo` uses the same key names).

Causality is in time only: every convolution pads the past with copies of the first frame (replicate
padding) and the future not at all, so output frame `f` depends on input frames `<= f`. The first frame is
special throughout: it is never downsampled or upsampled in time (`T -> 1 + (T - 1) / s` and back).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

RESNET_EPS = 1e-6


class CausalConv3d(nn.Module):
    """Conv3d with replicate padding: `k // 2` on both sides of H and W, `k - 1` frames before, none after.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: cubic kernel size.
        stride: int or (t, h, w) stride.
        bias: whether the convolution has a bias.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride=1, bias: bool = True):
        super().__init__()
        half = kernel_size // 2
        # F.pad order: (W left, W right, H top, H bottom, T front, T back)
        self.time_causal_padding = (half, half, half, half, kernel_size - 1, 0)
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size, stride=stride, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, self.time_causal_padding, mode="replicate")  # [B, C, T + k - 1, H + k - 1, W + k - 1]
        return self.conv(x)


class ResnetBlockCausal3D(nn.Module):
    """(GroupNorm -> SiLU -> CausalConv3d(3)) x 2 plus a residual (a 1x1x1 causal conv if channels change)."""

    def __init__(self, in_channels: int, out_channels: int, groups: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=RESNET_EPS, affine=True)
        self.conv1 = CausalConv3d(in_channels, out_channels, kernel_size=3)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=RESNET_EPS, affine=True)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = CausalConv3d(out_channels, out_channels, kernel_size=3)
        self.conv_shortcut = None
        if in_channels != out_channels:
            self.conv_shortcut = CausalConv3d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # [B, C_out, T, H, W]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        residual = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return residual + h


class DownsampleCausal3D(nn.Module):
    """A causal conv (k=3) with stride (t, 2, 2) or (1, 2, 2): `T -> 1 + (T - 1) // t`, `H -> H / 2`."""

    def __init__(self, channels: int, stride: tuple[int, int, int]):
        super().__init__()
        self.conv = CausalConv3d(channels, channels, kernel_size=3, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class UpsampleCausal3D(nn.Module):
    """Nearest upsampling (frame 0 in space only, the others by the full factor), then a causal conv."""

    def __init__(self, channels: int, factor: tuple[int, int, int]):
        super().__init__()
        self.factor = factor
        self.conv = CausalConv3d(channels, channels, kernel_size=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        if dtype == torch.bfloat16:  # nearest interpolation has no bf16 kernel everywhere (official upcast)
            x = x.float()
        first = F.interpolate(x[:, :, 0], scale_factor=self.factor[1:], mode="nearest")  # [B, C, 2H, 2W]
        first = first.unsqueeze(2)
        if x.shape[2] > 1:
            # [B, C, ft (T - 1), 2H, 2W]
            rest = F.interpolate(x[:, :, 1:].contiguous(), scale_factor=self.factor, mode="nearest")
            x = torch.cat([first, rest], dim=2)
        else:
            x = first
        return self.conv(x.to(dtype))


class CausalFrameAttention(nn.Module):
    """Single-head self-attention over all `T*H*W` positions with a frame-causal mask, plus a residual.

    Keys follow diffusers' `Attention` (`group_norm`, `to_q/k/v`, `to_out.0`); token `(f, y, x)` attends to
    every token of frames `<= f`.
    """

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, channels, eps=RESNET_EPS, affine=True)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        tokens = x.permute(0, 2, 3, 4, 1).reshape(b, t * h * w, c)  # [B, L, C], L ordered (f, y, x)
        normed = self.group_norm(tokens.transpose(1, 2)).transpose(1, 2)  # [B, L, C]
        q, k, v = (proj(normed).unsqueeze(1) for proj in (self.to_q, self.to_k, self.to_v))  # [B, 1, L, C]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=frame_causal_mask(t, h * w, x.device))
        out = self.to_out[0](out.squeeze(1)) + tokens  # [B, L, C]
        return out.reshape(b, t, h, w, c).permute(0, 4, 1, 2, 3)  # [B, C, T, H, W]


def frame_causal_mask(num_frames: int, tokens_per_frame: int, device) -> torch.Tensor:
    """Boolean [L, L] mask, True where the key's frame is not after the query's frame."""
    frame = torch.arange(num_frames, device=device).repeat_interleave(tokens_per_frame)  # [L]
    return frame[None, :] <= frame[:, None]


class UNetMidBlockCausal3D(nn.Module):
    """resnet -> (frame-causal attention) -> resnet at the lowest resolution."""

    def __init__(self, channels: int, groups: int, add_attention: bool = True, dropout: float = 0.0):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlockCausal3D(channels, channels, groups, dropout),
                                      ResnetBlockCausal3D(channels, channels, groups, dropout)])
        self.attentions = nn.ModuleList([CausalFrameAttention(channels, groups) if add_attention else None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x)
        if self.attentions[0] is not None:
            x = self.attentions[0](x)
        return self.resnets[1](x)


class DownEncoderBlockCausal3D(nn.Module):
    """`num_layers` resnets, then an optional strided causal conv."""

    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int, stride=None,
                 dropout: float = 0.0):
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlockCausal3D(in_channels if i == 0 else out_channels, out_channels, groups, dropout)
             for i in range(num_layers)])
        self.downsamplers = nn.ModuleList([DownsampleCausal3D(out_channels, stride)]) if stride else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
        return x


class UpDecoderBlockCausal3D(nn.Module):
    """`num_layers` resnets, then an optional nearest upsampler with a causal conv."""

    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int, factor=None,
                 dropout: float = 0.0):
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlockCausal3D(in_channels if i == 0 else out_channels, out_channels, groups, dropout)
             for i in range(num_layers)])
        self.upsamplers = nn.ModuleList([UpsampleCausal3D(out_channels, factor)]) if factor else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


def resample_factors(index: int, num_blocks: int, spatial_ratio: int, time_ratio: int):
    """(t, h, w) factor of the down/upsampler of block `index` (counted from the full resolution), or None.

    Spatial resampling happens in the first log2(spatial_ratio) blocks. With a time ratio of 4 the time
    resampling sits in the two blocks before the final one (blocks 1 and 2 of 4, as in the official model);
    with 8 it sits in the first three blocks.
    """
    spatial = index < int(math.log2(spatial_ratio))
    if time_ratio == 4:
        temporal = num_blocks - 1 - int(math.log2(time_ratio)) <= index < num_blocks - 1
    else:
        temporal = index < int(math.log2(time_ratio))
    if not (spatial or temporal):
        return None
    return (2 if temporal else 1, 2 if spatial else 1, 2 if spatial else 1)
