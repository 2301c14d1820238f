"""Wan2.1 causal 3D video VAE (``WanVAE_``) with the official state-dict keys, and its encode/decode wrapper.

References: Wan2.1 wan/modules/vae.py (official numerics: zero-padded causal convs with a 2-frame feature
cache, chunked encode of 1, 4, 4, ... frames, decode one latent frame at a time, the "Rep" rule of the
temporal upsampler, L2-normalize RMS norm with gamma, single-head mid attention, latent mean/std).

Checkpoint ``Wan2.1_VAE.pth``: a plain fp32 state dict of 194 tensors (layout: official-models.md B.7).
``infer_vae_config`` reads the architecture (base dim, latent channels, channel multipliers, residual blocks
per level, temporal downsampling) from the key names and shapes, so a locally trained tiny VAE loads the same
way.

Latent statistics: ``WAN_LATENTS_MEAN`` / ``WAN_LATENTS_STD`` belong to the official 16-channel latent. A VAE
trained elsewhere has its own: pass them as ``WanVAE(latents_mean=..., latents_std=...)`` (one value per
latent channel); a VAE whose latent does not have 16 channels must pass them.
"""

from __future__ import annotations

import os
import re

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "WAN_LATENTS_MEAN", "WAN_LATENTS_STD", "WAN_VAE_CONFIG", "WanVAE_", "WanVAE", "infer_vae_config",
    "load_vae_state_dict", "build_wan_vae",
]

CACHE_T = 2  # frames every causal conv remembers from the previous chunk

WAN_LATENTS_MEAN = [
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
]
WAN_LATENTS_STD = [
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
]

# Size preset of the official VAE (Wan2.1 wan/modules/vae.py: _video_vae).
WAN_VAE_CONFIG = dict(dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                      temperal_downsample=[False, True, True])


class _Rep:
    """Cache marker of a temporal upsampler that has seen only the first chunk (its time conv was skipped)."""


REP = _Rep()


class FeatureCache:
    """Per-conv memory of the last frames of the previous chunk, visited in the same order on every chunk."""

    def __init__(self):
        self.slots: list = []
        self.pos = 0

    def start_chunk(self) -> None:
        """Rewinds to the first conv; call before each chunk."""
        self.pos = 0

    def next_slot(self) -> int:
        """Index of the next conv's slot (created empty on the first chunk)."""
        if self.pos == len(self.slots):
            self.slots.append(None)
        self.pos += 1
        return self.pos - 1


class CausalConv3d(nn.Conv3d):
    """Conv3d padded with zeros: symmetric in H and W, ``2 * pad_t`` frames in front in time, none behind."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        pad_t, pad_h, pad_w = self.padding
        self._causal_padding = (pad_w, pad_w, pad_h, pad_h, 2 * pad_t, 0)
        self.padding = (0, 0, 0)

    def forward(self, x: torch.Tensor, cache_x: torch.Tensor | None = None) -> torch.Tensor:
        padding = list(self._causal_padding)
        if cache_x is not None and padding[4] > 0:
            # Cached frames of the previous chunk replace that many zero frames in front.
            x = torch.cat([cache_x.to(x.device), x], dim=2)
            padding[4] -= cache_x.shape[2]
        return super().forward(F.pad(x, padding))


def cached_conv(conv: CausalConv3d, x: torch.Tensor, cache: FeatureCache | None) -> torch.Tensor:
    """Runs a causal conv on one chunk, feeding it the cached frames and remembering the last ``CACHE_T``."""
    if cache is None:
        return conv(x)
    slot = cache.next_slot()
    previous = cache.slots[slot]
    remembered = x[:, :, -CACHE_T:].clone()
    if remembered.shape[2] < CACHE_T and previous is not None:
        # A 1-frame chunk: keep the newest frame of the previous chunk as well.
        remembered = torch.cat([previous[:, :, -1:].to(remembered.device), remembered], dim=2)
    out = conv(x, previous)
    cache.slots[slot] = remembered
    return out


class RMS_norm(nn.Module):
    """``F.normalize`` over channels times ``sqrt(C)`` times a per-channel ``gamma`` (no bias)."""

    def __init__(self, dim: int, images: bool = True):
        super().__init__()
        shape = (dim, 1, 1) if images else (dim, 1, 1, 1)
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) * self.scale * self.gamma


class Upsample2x(nn.Module):
    """Nearest-exact ×2 spatial upsampling computed in fp32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x.float(), scale_factor=(2.0, 2.0), mode="nearest-exact").type_as(x)


def _per_frame(fn, x: torch.Tensor) -> torch.Tensor:
    """Applies a 2D module to every frame: [B, C, T, H, W] -> [B*T, C, H, W] -> back."""
    b, c, t, h, w = x.shape
    y = fn(x.transpose(1, 2).reshape(b * t, c, h, w))  # [B*T, C', H', W']
    return y.reshape(b, t, *y.shape[1:]).transpose(1, 2)  # [B, C', T, H', W']


class Resample(nn.Module):
    """Spatial x2 up/down sampling, optionally with a causal temporal x2 (``upsample3d``/``downsample3d``)."""

    MODES = ("upsample2d", "upsample3d", "downsample2d", "downsample3d")

    def __init__(self, dim: int, mode: str):
        super().__init__()
        if mode not in self.MODES:
            raise ValueError(f"mode={mode!r}; allowed: {self.MODES}")
        self.mode = mode
        if mode.startswith("upsample"):
            self.resample = nn.Sequential(Upsample2x(), nn.Conv2d(dim, dim // 2, 3, padding=1))
        else:
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=(2, 2)))
        if mode == "upsample3d":
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        elif mode == "downsample3d":
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1), padding=(0, 0, 0))

    def forward(self, x: torch.Tensor, cache: FeatureCache | None = None) -> torch.Tensor:
        if self.mode == "upsample3d" and cache is not None:
            x = self._upsample_time(x, cache)
        x = _per_frame(self.resample, x)
        if self.mode == "downsample3d" and cache is not None:
            x = self._downsample_time(x, cache)
        return x

    def _upsample_time(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        """Doubles the frames of a chunk; the very first chunk (the first latent frame) is not doubled."""
        slot = cache.next_slot()
        previous = cache.slots[slot]
        if previous is None:
            cache.slots[slot] = REP
            return x
        remembered = x[:, :, -CACHE_T:].clone()
        if remembered.shape[2] < CACHE_T:
            front = torch.zeros_like(remembered) if previous is REP else previous[:, :, -1:].to(x.device)
            remembered = torch.cat([front, remembered], dim=2)
        # After the first chunk the time conv runs zero-padded; from then on with the cached frames.
        x = self.time_conv(x) if previous is REP else self.time_conv(x, previous)  # [B, 2C, T, H, W]
        cache.slots[slot] = remembered
        b, c2, t, h, w = x.shape
        x = x.reshape(b, 2, c2 // 2, t, h, w)
        x = torch.stack((x[:, 0], x[:, 1]), dim=3)  # [B, C, T, 2, H, W]: the two halves become frame pairs
        return x.reshape(b, c2 // 2, t * 2, h, w)

    def _downsample_time(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        """Halves the frames: stride-2 conv over (last frame of the previous chunk, this chunk)."""
        slot = cache.next_slot()
        previous = cache.slots[slot]
        if previous is None:  # the first (1-frame) chunk only fills the cache
            cache.slots[slot] = x.clone()
            return x
        remembered = x[:, :, -1:].clone()
        x = self.time_conv(torch.cat([previous[:, :, -1:], x], dim=2))
        cache.slots[slot] = remembered
        return x


class ResidualBlock(nn.Module):
    """``shortcut(x) + [RMS, SiLU, CConv3, RMS, SiLU, Dropout, CConv3](x)``; keys ``residual.{0,2,3,6}``."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.0):
        super().__init__()
        self.residual = nn.Sequential(
            RMS_norm(in_dim, images=False), nn.SiLU(), CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMS_norm(out_dim, images=False), nn.SiLU(), nn.Dropout(dropout),
            CausalConv3d(out_dim, out_dim, 3, padding=1),
        )
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, cache: FeatureCache | None = None) -> torch.Tensor:
        h = self.shortcut(x)
        for layer in self.residual:
            x = cached_conv(layer, x, cache) if isinstance(layer, CausalConv3d) else layer(x)
        return x + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over the H*W positions of each frame (mid block only)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = RMS_norm(dim)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)
        nn.init.zeros_(self.proj.weight)  # official init: the block starts as the identity

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape  # n = B*T frames
        qkv = self.to_qkv(self.norm(x)).reshape(n, 1, c * 3, h * w).permute(0, 1, 3, 2).contiguous()
        q, k, v = qkv.chunk(3, dim=-1)  # [N, 1, HW, C] each
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.squeeze(1).permute(0, 2, 1).reshape(n, c, h, w)
        return self.proj(out)

    def forward(self, x: torch.Tensor, cache: FeatureCache | None = None) -> torch.Tensor:
        return _per_frame(self._attend, x) + x


def _run(layer: nn.Module, x: torch.Tensor, cache: FeatureCache | None) -> torch.Tensor:
    """Calls a stage layer, passing the cache to the layers that keep one."""
    if isinstance(layer, CausalConv3d):
        return cached_conv(layer, x, cache)
    if isinstance(layer, (ResidualBlock, AttentionBlock, Resample)):
        return layer(x, cache)
    return layer(x)


def _mid_block(dim: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        ResidualBlock(dim, dim, dropout), AttentionBlock(dim), ResidualBlock(dim, dim, dropout)
    )


def _head(dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(RMS_norm(dim, images=False), nn.SiLU(), CausalConv3d(dim, out_dim, 3, padding=1))


class Encoder3d(nn.Module):
    """Video [B, 3, T, H, W] -> (mu, log_var) stacked [B, z_dim, t, h, w] (z_dim = 2 * latent channels)."""

    def __init__(self, dim=128, z_dim=4, dim_mult=(1, 2, 4, 4), num_res_blocks=2,
                 temperal_downsample=(True, True, False), dropout=0.0):
        super().__init__()
        dims = [dim * m for m in [1, *dim_mult]]
        self.conv1 = CausalConv3d(3, dims[0], 3, padding=1)
        layers = []
        for level, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(num_res_blocks):
                layers.append(ResidualBlock(in_dim, out_dim, dropout))
                in_dim = out_dim
            if level != len(dim_mult) - 1:
                mode = "downsample3d" if temperal_downsample[level] else "downsample2d"
                layers.append(Resample(out_dim, mode))
        self.downsamples = nn.Sequential(*layers)
        self.middle = _mid_block(dims[-1], dropout)
        self.head = _head(dims[-1], z_dim)

    def forward(self, x: torch.Tensor, cache: FeatureCache | None = None) -> torch.Tensor:
        x = cached_conv(self.conv1, x, cache)
        for layer in [*self.downsamples, *self.middle, *self.head]:
            x = _run(layer, x, cache)
        return x


class Decoder3d(nn.Module):
    """Latent [B, z_dim, t, h, w] -> video [B, 3, T, H, W]; each upsampler halves the channels it receives."""

    def __init__(self, dim=128, z_dim=4, dim_mult=(1, 2, 4, 4), num_res_blocks=2,
                 temperal_upsample=(False, True, True), dropout=0.0):
        super().__init__()
        dims = [dim * m for m in [dim_mult[-1], *dim_mult[::-1]]]
        self.conv1 = CausalConv3d(z_dim, dims[0], 3, padding=1)
        self.middle = _mid_block(dims[0], dropout)
        layers = []
        for level, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            if level > 0:
                in_dim = in_dim // 2  # the previous upsampler's conv halved the channels
            for _ in range(num_res_blocks + 1):
                layers.append(ResidualBlock(in_dim, out_dim, dropout))
                in_dim = out_dim
            if level != len(dim_mult) - 1:
                mode = "upsample3d" if temperal_upsample[level] else "upsample2d"
                layers.append(Resample(out_dim, mode))
        self.upsamples = nn.Sequential(*layers)
        self.head = _head(dims[-1], 3)

    def forward(self, x: torch.Tensor, cache: FeatureCache | None = None) -> torch.Tensor:
        x = cached_conv(self.conv1, x, cache)
        for layer in [*self.middle, *self.upsamples, *self.head]:
            x = _run(layer, x, cache)
        return x


class WanVAE_(nn.Module):
    """The Wan2.1 video VAE: encoder, quant convs ``conv1``/``conv2``, decoder; chunked causal processing."""

    def __init__(self, dim=128, z_dim=4, dim_mult=(1, 2, 4, 4), num_res_blocks=2,
                 temperal_downsample=(True, True, False), dropout=0.0):
        super().__init__()
        self.z_dim = z_dim
        self.temperal_downsample = list(temperal_downsample)
        self.temperal_upsample = self.temperal_downsample[::-1]
        self.encoder = Encoder3d(dim, z_dim * 2, dim_mult, num_res_blocks, self.temperal_downsample, dropout)
        self.conv1 = CausalConv3d(z_dim * 2, z_dim * 2, 1)
        self.conv2 = CausalConv3d(z_dim, z_dim, 1)
        self.decoder = Decoder3d(dim, z_dim, dim_mult, num_res_blocks, self.temperal_upsample, dropout)

    def _stats(self, values) -> torch.Tensor:
        return values.view(1, self.z_dim, 1, 1, 1) if isinstance(values, torch.Tensor) else values

    def encode_moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, 3, T, H, W], T = 1 + 4k. Returns the raw posterior (mu, log_var), each [B, z, 1+k, h, w]."""
        cache = FeatureCache()
        chunks = [x[:, :, :1]] + [x[:, :, 1 + 4 * i:5 + 4 * i] for i in range((x.shape[2] - 1) // 4)]
        outs = []
        for chunk in chunks:  # 1, 4, 4, ... frames, each giving one latent frame
            cache.start_chunk()
            outs.append(self.encoder(chunk, cache))
        mu, log_var = self.conv1(torch.cat(outs, dim=2)).chunk(2, dim=1)
        return mu, log_var

    def decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, z_dim, t, h, w] un-normalised. Returns the video [B, 3, 1 + 4(t-1), H, W] (not clamped)."""
        x = self.conv2(z)
        cache = FeatureCache()
        outs = []
        for i in range(z.shape[2]):  # one latent frame at a time
            cache.start_chunk()
            outs.append(self.decoder(x[:, :, i:i + 1], cache))
        return torch.cat(outs, dim=2)

    def encode(self, x: torch.Tensor, scale) -> torch.Tensor:
        """x [B, 3, T, H, W]; scale = (mean, 1/std). Returns the normalised ``(mu - mean) * (1/std)``."""
        mu, _ = self.encode_moments(x)
        return (mu - self._stats(scale[0])) * self._stats(scale[1])

    def decode(self, z: torch.Tensor, scale) -> torch.Tensor:
        """z [B, z_dim, t, h, w] normalised; scale = (mean, 1/std). Decodes ``z / (1/std) + mean``."""
        return self.decode_raw(z / self._stats(scale[1]) + self._stats(scale[0]))


# ------------------------------------------------------------------------------------------------------------
# Loading


def load_vae_state_dict(vae_pth: str) -> dict[str, torch.Tensor]:
    """Reads a VAE ``.pth`` (a plain state dict of tensors) onto the CPU."""
    if not vae_pth or not os.path.isfile(vae_pth):
        raise FileNotFoundError(
            f"VAE checkpoint not found: {vae_pth!r} (expected the plain state-dict file Wan2.1_VAE.pth "
            "inside the checkpoint folder)"
        )
    state_dict = torch.load(vae_pth, map_location="cpu", weights_only=True)
    if not isinstance(state_dict, dict):
        raise ValueError(f"VAE checkpoint {vae_pth!r} holds a {type(state_dict).__name__}, not a state dict")
    return state_dict


def _residual_out_dims(state_dict: dict, prefix: str) -> dict[int, int]:
    """{layer index: output channels} of the residual blocks under ``prefix`` (``encoder.downsamples``)."""
    pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.residual\.6\.weight$")
    return {int(m.group(1)): state_dict[key].shape[0] for key in state_dict if (m := pattern.match(key))}


def infer_vae_config(state_dict: dict[str, torch.Tensor]) -> dict:
    """Reads the VAE architecture from key names and shapes.

    Returns:
        keyword arguments of ``WanVAE_``: dim, z_dim, dim_mult, num_res_blocks, temperal_downsample.
    """
    for key in ("encoder.conv1.weight", "conv2.weight"):
        if key not in state_dict:
            raise ValueError(f"VAE state dict is missing the key {key!r}, needed to infer the VAE size")
    dim = state_dict["encoder.conv1.weight"].shape[0]
    z_dim = state_dict["conv2.weight"].shape[0]
    residual = _residual_out_dims(state_dict, "encoder.downsamples")
    resample = sorted({int(m.group(1)) for key in state_dict
                       if (m := re.match(r"encoder\.downsamples\.(\d+)\.resample\.1\.weight$", key))})
    if not residual:
        raise ValueError("VAE state dict has no 'encoder.downsamples.N.residual.*' keys")
    num_res_blocks = resample[0] if resample else len(residual)
    # Levels are num_res_blocks residual blocks, each followed by a resample except the last level.
    starts = range(0, max(residual) + 1, num_res_blocks + 1)
    dim_mult = [residual.get(start, dim) // dim for start in starts]
    temperal_downsample = [f"encoder.downsamples.{i}.time_conv.weight" in state_dict for i in resample]
    return dict(dim=dim, z_dim=z_dim, dim_mult=dim_mult, num_res_blocks=num_res_blocks,
                temperal_downsample=temperal_downsample)


def _check_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Raises ValueError naming the first missing, unexpected or wrongly shaped key."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in state_dict]
    if missing:
        raise ValueError(f"VAE state dict is missing {len(missing)} key(s), first {missing[0]!r}")
    unexpected = [key for key in state_dict if key not in expected]
    if unexpected:
        raise ValueError(f"VAE state dict has {len(unexpected)} unexpected key(s), first {unexpected[0]!r}")
    for key, tensor in expected.items():
        if tuple(state_dict[key].shape) != tuple(tensor.shape):
            raise ValueError(f"VAE state dict key {key!r} has shape {tuple(state_dict[key].shape)}, expected "
                             f"{tuple(tensor.shape)} for the inferred architecture")


def build_wan_vae(state_dict: dict[str, torch.Tensor], device: torch.device | str = "cpu") -> WanVAE_:
    """Builds the VAE that fits ``state_dict`` (architecture inferred), loads it strictly in its dtype."""
    config = infer_vae_config(state_dict)
    try:
        with torch.device("meta"):
            model = WanVAE_(**config)
    except (IndexError, ValueError, RuntimeError) as error:
        raise ValueError(
            f"VAE state dict describes no valid WanVAE_ architecture ({config}): {error}"
        ) from error
    _check_state_dict(model, state_dict)
    model.load_state_dict(state_dict, assign=True)
    return model.to(device).eval().requires_grad_(False)


# ------------------------------------------------------------------------------------------------------------
# Wrapper (Wan2.1 WanVAE)


def _stat_tensor(values, name: str, z_dim: int, dtype, device) -> torch.Tensor:
    tensor = torch.as_tensor(values, dtype=dtype, device=device).flatten()
    if tensor.numel() != z_dim:
        raise ValueError(f"{name} has {tensor.numel()} values; the VAE latent has z_dim={z_dim} channels")
    return tensor


class WanVAE:
    """Encodes videos to normalised latents and decodes them back.

    Args:
        z_dim: latent channels the caller expects (16 for the official VAE); must match the checkpoint.
        vae_pth: path of the VAE state dict (``Wan2.1_VAE.pth``).
        dtype: compute dtype; fp32 runs plainly, a half dtype runs under autocast (weights stay fp32).
        device: where the VAE runs.
        latents_mean, latents_std: per-channel latent statistics; default: the official ones (16 channels).
            Pass the statistics of a differently trained VAE here.
    """

    def __init__(self, z_dim: int = 16, vae_pth: str = "cache/vae_step_411000.pth",
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                 latents_mean=None, latents_std=None):
        self.dtype = dtype
        self.device = torch.device(device)
        self.model = build_wan_vae(load_vae_state_dict(vae_pth), device=self.device)
        if self.model.z_dim != z_dim:
            raise ValueError(
                f"z_dim={z_dim} but the VAE checkpoint {vae_pth!r} has a {self.model.z_dim}-channel latent"
            )
        if (latents_mean is None or latents_std is None) and z_dim != len(WAN_LATENTS_MEAN):
            raise ValueError(
                f"latents_mean and latents_std are required for a z_dim={z_dim} VAE "
                f"(the official statistics have {len(WAN_LATENTS_MEAN)} channels)"
            )
        self.mean = _stat_tensor(WAN_LATENTS_MEAN if latents_mean is None else latents_mean, "latents_mean",
                                 z_dim, dtype, self.device)
        self.std = _stat_tensor(WAN_LATENTS_STD if latents_std is None else latents_std, "latents_std",
                                z_dim, dtype, self.device)
        self.scale = [self.mean, 1.0 / self.std]

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)

    def encode(self, videos: list[torch.Tensor]) -> list[torch.Tensor]:
        """videos: each [3, T, H, W] in [-1, 1] with T = 1 + 4k. Returns latents [z_dim, 1 + k, H/8, W/8]."""
        for index, video in enumerate(videos):
            if video.ndim != 4 or video.shape[0] != 3 or (video.shape[1] - 1) % 4 != 0:
                raise ValueError(f"videos[{index}] has shape {tuple(video.shape)}; expected [3, T, H, W] "
                                 "with T = 1 + 4k frames")
        with self._autocast():
            return [self.model.encode(u.unsqueeze(0), self.scale).float().squeeze(0) for u in videos]

    def decode(self, zs: list[torch.Tensor]) -> list[torch.Tensor]:
        """zs: each [z_dim, t, h, w]. Returns videos [3, 1 + 4(t-1), 8h, 8w] clamped to [-1, 1]."""
        for index, z in enumerate(zs):
            if z.ndim != 4 or z.shape[0] != self.model.z_dim:
                raise ValueError(
                    f"zs[{index}] has shape {tuple(z.shape)}; expected [{self.model.z_dim}, t, h, w]"
                )
        with self._autocast():
            return [
                self.model.decode(u.unsqueeze(0), self.scale).float().clamp_(-1, 1).squeeze(0) for u in zs
            ]
