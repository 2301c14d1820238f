"""`AutoencoderKLCausal3D`: the HunyuanVideo causal 3D VAE with the official spatial and temporal tiling.

References: HunyuanVideo hyvideo/vae/autoencoder_kl_causal_3d.py (official config fields, tile sizes,
tiling order).

Tile sizes come from the config as in the official model: `sample_size` (256) is the pixel tile, the latent
tile is `sample_size / 2 ** (len(block_out_channels) - 1)` (32); `sample_tsize` (64) is the frame tile, the
latent frame tile `sample_tsize // time_compression_ratio` (16); the overlap factor is 0.25.
Decoding with tiling on: more than 16 latent frames -> temporal tiles of 17 latent frames every 12 (each
spatially tiled when wider or taller than 32), else larger than 32 latent pixels -> spatial tiles of 32 every
24. Encoding mirrors it in pixel units (tiles of 256 px every 192, 65 frames every 48).
"""

import dataclasses
import warnings

import torch
from torch import nn

from .tiling import tiled_spatial, tiled_temporal
from .vae import DecoderCausal3D, DiagonalGaussianDistribution, EncoderCausal3D

DOWN_BLOCK_TYPE = "DownEncoderBlockCausal3D"
UP_BLOCK_TYPE = "UpDecoderBlockCausal3D"
# Config keys that the official class accepts but that change nothing here.
_IGNORED_KEYS = {"down_block_types", "up_block_types", "force_upcast"}
TILE_OVERLAP_FACTOR = 0.25


@dataclasses.dataclass
class CausalVAEConfig:
    """Fields of `vae/config.json` (defaults: the released HunyuanVideo VAE)."""

    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 16
    block_out_channels: tuple = (128, 256, 512, 512)
    layers_per_block: int = 2
    norm_num_groups: int = 32
    act_fn: str = "silu"
    sample_size: int = 256
    sample_tsize: int = 64
    scaling_factor: float = 0.476986
    time_compression_ratio: int = 4
    spatial_compression_ratio: int = 8
    mid_block_add_attention: bool = True

    @classmethod
    def from_dict(cls, config: dict, source: str = "config") -> "CausalVAEConfig":
        """Build from a `config.json` dict: `_`-prefixed and block-type keys are checked or ignored.

        Args:
            config: the parsed JSON.
            source: where it came from, for error messages.

        Returns:
            The validated config.
        """
        fields = {f.name for f in dataclasses.fields(cls)}
        for key, allowed in (("down_block_types", DOWN_BLOCK_TYPE), ("up_block_types", UP_BLOCK_TYPE)):
            bad = [t for t in config.get(key, []) if t != allowed]
            if bad:
                raise ValueError(f"{source}: {key} contains {bad}; only {allowed!r} is supported")
        known = fields | _IGNORED_KEYS
        unknown = sorted(k for k in config if k not in known and not k.startswith("_"))
        if unknown:
            warnings.warn(f"{source}: ignoring unknown VAE config keys {unknown}")
        out = cls(**{k: v for k, v in config.items() if k in fields})
        out.validate(source)
        return out

    def __post_init__(self):
        self.block_out_channels = tuple(self.block_out_channels)
        if isinstance(self.sample_size, (list, tuple)):  # the official class accepts [H, W]; tiles are square
            self.sample_size = int(self.sample_size[0])

    def validate(self, source: str = "config") -> None:
        """Raise ValueError naming the field, the value and what is allowed."""
        if self.time_compression_ratio not in (4, 8):
            raise ValueError(f"{source}: time_compression_ratio={self.time_compression_ratio}; "
                             f"allowed: 4 or 8")
        ratio = self.spatial_compression_ratio
        if ratio < 1 or ratio & (ratio - 1):
            raise ValueError(f"{source}: spatial_compression_ratio={ratio}; must be a power of two")
        if self.act_fn not in ("silu", "swish"):
            raise ValueError(f"{source}: act_fn={self.act_fn!r}; allowed: 'silu' (or its alias 'swish')")
        if not self.block_out_channels or any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError(f"{source}: block_out_channels={list(self.block_out_channels)} must be "
                             f"non-empty multiples of norm_num_groups={self.norm_num_groups}")
        if self.layers_per_block < 1:
            raise ValueError(f"{source}: layers_per_block={self.layers_per_block}; must be >= 1")


class AutoencoderKLCausal3D(nn.Module):
    """Causal 3D VAE: `encode(video) -> posterior`, `decode(latent) -> video`, optional official tiling.

    State-dict keys are the official ones (`encoder.*`, `decoder.*`, `quant_conv.*`, `post_quant_conv.*`).
    Scaling by `config.scaling_factor` is the caller's job (the pipeline divides latents by it before
    decoding).

    Args:
        config: the VAE config.
    """

    def __init__(self, config: CausalVAEConfig):
        super().__init__()
        config.validate()
        self.config = config
        shape = dict(block_out_channels=config.block_out_channels, layers_per_block=config.layers_per_block,
                     norm_num_groups=config.norm_num_groups,
                     time_compression_ratio=config.time_compression_ratio,
                     spatial_compression_ratio=config.spatial_compression_ratio,
                     mid_block_add_attention=config.mid_block_add_attention)
        self.encoder = EncoderCausal3D(config.in_channels, config.latent_channels, **shape)
        self.decoder = DecoderCausal3D(config.latent_channels, config.out_channels, **shape)
        self.quant_conv = nn.Conv3d(2 * config.latent_channels, 2 * config.latent_channels, kernel_size=1)
        self.post_quant_conv = nn.Conv3d(config.latent_channels, config.latent_channels, kernel_size=1)

        self.use_spatial_tiling = False
        self.use_temporal_tiling = False
        self.tile_sample_min_size = config.sample_size
        self.tile_latent_min_size = int(config.sample_size / 2 ** (len(config.block_out_channels) - 1))
        self.tile_sample_min_tsize = config.sample_tsize
        self.tile_latent_min_tsize = config.sample_tsize // config.time_compression_ratio
        self.tile_overlap_factor = TILE_OVERLAP_FACTOR

    @classmethod
    def from_config(cls, config: dict, source: str = "config", **overrides) -> "AutoencoderKLCausal3D":
        """Build from a `config.json` dict (`source` names it in errors), with field overrides."""
        return cls(CausalVAEConfig.from_dict({**config, **overrides}, source))

    @property
    def dtype(self) -> torch.dtype:
        return self.post_quant_conv.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.post_quant_conv.weight.device

    # ---- tiling switches (official names) ----
    def enable_tiling(self, use_tiling: bool = True) -> None:
        """Turn spatial and temporal tiling on (what `sample_video.py` always does) or off."""
        self.use_spatial_tiling = use_tiling
        self.use_temporal_tiling = use_tiling

    def disable_tiling(self) -> None:
        self.enable_tiling(False)

    def enable_spatial_tiling(self, use_tiling: bool = True) -> None:
        self.use_spatial_tiling = use_tiling

    def enable_temporal_tiling(self, use_tiling: bool = True) -> None:
        self.use_temporal_tiling = use_tiling

    # ---- encode ----
    def encode(self, x: torch.Tensor) -> DiagonalGaussianDistribution:
        """Encode a video [B, C, T, H, W] (values in [-1, 1], T = 1 + 4k) into its posterior.

        Returns:
            The diagonal Gaussian posterior over latents [B, latent, 1 + (T - 1) / 4, H / 8, W / 8].
        """
        if x.ndim != 5:
            raise ValueError(f"video must be [B, C, T, H, W], got shape {tuple(x.shape)}")
        if self.use_temporal_tiling and x.shape[2] > self.tile_sample_min_tsize:
            moments = self._temporal_tiled_moments(x)
        elif self._spatially_tiled(x, self.tile_sample_min_size):
            moments = self._spatial_tiled_moments(x)
        else:
            moments = self._moments(x)
        return DiagonalGaussianDistribution(moments)

    def _moments(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(x))  # [B, 2 * latent, t, h, w]

    def _spatial_tiled_moments(self, x: torch.Tensor) -> torch.Tensor:
        blend_extent = int(self.tile_latent_min_size * self.tile_overlap_factor)
        return tiled_spatial(self._moments, x, tile=self.tile_sample_min_size,
                             stride=int(self.tile_sample_min_size * (1 - self.tile_overlap_factor)),
                             blend_extent=blend_extent, keep=self.tile_latent_min_size - blend_extent)

    def _temporal_tiled_moments(self, x: torch.Tensor) -> torch.Tensor:
        def window(tile):
            if self._spatially_tiled(tile, self.tile_sample_min_size):
                return self._spatial_tiled_moments(tile)
            return self._moments(tile)

        blend_extent = int(self.tile_latent_min_tsize * self.tile_overlap_factor)
        return tiled_temporal(window, x, tile=self.tile_sample_min_tsize,
                              stride=int(self.tile_sample_min_tsize * (1 - self.tile_overlap_factor)),
                              blend_extent=blend_extent, keep=self.tile_latent_min_tsize - blend_extent)

    # ---- decode ----
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Decode unscaled latents [B, latent, t, h, w] into a video [B, C, 1 + 4 (t - 1), 8 h, 8 w].

        Returns:
            The video, roughly in [-1, 1] (not clamped).
        """
        if z.ndim != 5:
            raise ValueError(f"latent must be [B, C, t, h, w], got shape {tuple(z.shape)}")
        if self.use_temporal_tiling and z.shape[2] > self.tile_latent_min_tsize:
            return self._temporal_tiled_decode(z)
        if self._spatially_tiled(z, self.tile_latent_min_size):
            return self._spatial_tiled_decode(z)
        return self._decode_tile(z)

    def _decode_tile(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z))  # [B, C, T, H, W]

    def _spatial_tiled_decode(self, z: torch.Tensor) -> torch.Tensor:
        blend_extent = int(self.tile_sample_min_size * self.tile_overlap_factor)
        return tiled_spatial(self._decode_tile, z, tile=self.tile_latent_min_size,
                             stride=int(self.tile_latent_min_size * (1 - self.tile_overlap_factor)),
                             blend_extent=blend_extent, keep=self.tile_sample_min_size - blend_extent)

    def _temporal_tiled_decode(self, z: torch.Tensor) -> torch.Tensor:
        def window(tile):
            if self._spatially_tiled(tile, self.tile_latent_min_size):
                return self._spatial_tiled_decode(tile)
            return self._decode_tile(tile)

        blend_extent = int(self.tile_sample_min_tsize * self.tile_overlap_factor)
        return tiled_temporal(window, z, tile=self.tile_latent_min_tsize,
                              stride=int(self.tile_latent_min_tsize * (1 - self.tile_overlap_factor)),
                              blend_extent=blend_extent, keep=self.tile_sample_min_tsize - blend_extent)

    def _spatially_tiled(self, x: torch.Tensor, tile: int) -> bool:
        return self.use_spatial_tiling and (x.shape[-1] > tile or x.shape[-2] > tile)
