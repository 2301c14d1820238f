"""HunyuanVideo causal 3D VAE and its loader for `vae/config.json` + `vae/pytorch_model.pt`.

References: HunyuanVideo hyvideo/vae/__init__.py (`load_vae` signature, return value, checkpoint unwrapping).
"""

import json
import os
import re

import torch

from ..constants import PRECISION_TO_TYPE, VAE_PATH
from .autoencoder_kl_causal_3d import AutoencoderKLCausal3D, CausalVAEConfig
from .vae import DiagonalGaussianDistribution

__all__ = ["AutoencoderKLCausal3D", "CausalVAEConfig", "DiagonalGaussianDistribution", "load_vae",
           "parse_vae_type"]

VAE_TYPE_PATTERN = r"\d{2,3}-\d{1,2}c-\w+"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "pytorch_model.pt"


def parse_vae_type(vae_type: str) -> int:
    """Check a VAE type such as `884-16c-hy` and return its latent channel count (16).

    Raises:
        ValueError: when it does not match `\\d{2,3}-\\d{1,2}c-\\w+` or is not a 3D (3-digit) VAE.
    """
    if not isinstance(vae_type, str) or not re.fullmatch(VAE_TYPE_PATTERN, vae_type):
        raise ValueError(f"vae_type={vae_type!r} is invalid; it must match '{VAE_TYPE_PATTERN}' "
                         f"(e.g. '884-16c-hy')")
    compression, channels, _ = vae_type.split("-", 2)
    if len(compression) != 3:
        raise ValueError(f"vae_type={vae_type!r}: only 3D VAEs ('???-*', e.g. '884-16c-hy') are supported")
    return int(channels[:-1])


def load_vae(vae_type: str, vae_precision: str | None = None, sample_size=None, vae_path: str | None = None,
             logger=None, device=None):
    """Build the causal 3D VAE from `vae_path/config.json` and load `vae_path/pytorch_model.pt` strictly.

    Args:
        vae_type: e.g. `884-16c-hy`; its channel count must equal the config's `latent_channels`.
        vae_precision: `fp32`, `fp16`, `bf16` or None (keep the fp32 weights).
        sample_size: overrides the config's `sample_size` (the pixel tile size).
        vae_path: the VAE folder; defaults to `VAE_PATH[vae_type]`.
        logger: optional logger for progress messages.
        device: where to move the model.

    Returns:
        (vae, vae_path, spatial_compression_ratio, time_compression_ratio); the model is in eval mode and
        needs no grads.

    Raises:
        ValueError: bad vae_type / precision / config, channel mismatch, or state-dict keys that do not match.
        FileNotFoundError: a missing folder, config or weights file.
    """
    latent_channels = parse_vae_type(vae_type)
    if vae_precision is not None and vae_precision not in PRECISION_TO_TYPE:
        raise ValueError(f"vae_precision={vae_precision!r} is invalid; allowed: {sorted(PRECISION_TO_TYPE)} "
                         f"or None")
    vae_path = _default_vae_path(vae_type) if vae_path is None else str(vae_path)
    if logger is not None:
        logger.info(f"Loading 3D VAE model ({vae_type}) from: {vae_path}")
    config = read_vae_config(vae_path)
    if sample_size:
        config["sample_size"] = sample_size
    config_file = os.path.join(vae_path, CONFIG_NAME)
    with torch.device("meta"):  # no random init of ~250 M parameters: the checkpoint is assigned below
        vae = AutoencoderKLCausal3D.from_config(config, source=config_file)
    if vae.config.latent_channels != latent_channels:
        raise ValueError(f"vae_type={vae_type!r} says {latent_channels} latent channels but {config_file} "
                         f"has latent_channels={vae.config.latent_channels}")
    _load_strict(vae, read_vae_state_dict(vae_path), os.path.join(vae_path, WEIGHTS_NAME))
    if vae_precision is not None:
        vae = vae.to(dtype=PRECISION_TO_TYPE[vae_precision])
    vae.requires_grad_(False)
    if logger is not None:
        logger.info(f"VAE to dtype: {vae.dtype}")
    if device is not None:
        vae = vae.to(device)
    vae.eval()
    return vae, vae_path, vae.config.spatial_compression_ratio, vae.config.time_compression_ratio


def _default_vae_path(vae_type: str) -> str:
    if vae_type not in VAE_PATH:
        raise ValueError(f"vae_type={vae_type!r} has no default folder (known: {sorted(VAE_PATH)}); "
                         f"pass vae_path")
    return VAE_PATH[vae_type]


def read_vae_config(vae_path: str) -> dict:
    """Read `vae_path/config.json` (FileNotFoundError naming what is missing and where)."""
    if not os.path.isdir(vae_path):
        raise FileNotFoundError(f"VAE folder not found: {vae_path} "
                                f"(expected {CONFIG_NAME} and {WEIGHTS_NAME} in it)")
    config_file = os.path.join(vae_path, CONFIG_NAME)
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"VAE config not found: {config_file}")
    try:
        with open(config_file) as f:
            config = json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"VAE config {config_file} is not valid JSON: {err}") from err
    if not isinstance(config, dict):
        raise ValueError(f"VAE config {config_file} must hold a JSON object, got {type(config).__name__}")
    return config


def read_vae_state_dict(vae_path: str) -> dict:
    """Read `vae_path/pytorch_model.pt`.

    A `state_dict` entry is unwrapped; when any key starts with `vae.`, only those keys are kept, unprefixed.
    """
    weights_file = os.path.join(vae_path, WEIGHTS_NAME)
    if not os.path.isfile(weights_file):
        raise FileNotFoundError(f"VAE weights not found: {weights_file}")
    ckpt = torch.load(weights_file, map_location="cpu", weights_only=True)
    if isinstance(ckpt, dict) and "state_dict" in ckpt:
        ckpt = ckpt["state_dict"]
    if not isinstance(ckpt, dict):
        raise ValueError(f"VAE weights {weights_file} must hold a state dict, got {type(ckpt).__name__}")
    not_tensors = [k for k, v in ckpt.items() if not torch.is_tensor(v)]
    if not_tensors:
        raise ValueError(f"VAE weights {weights_file}: entries {not_tensors[:8]} are not tensors")
    if any(k.startswith("vae.") for k in ckpt):
        ckpt = {k[len("vae."):]: v for k, v in ckpt.items() if k.startswith("vae.")}
    return ckpt


def _load_strict(vae: AutoencoderKLCausal3D, state_dict: dict, source: str) -> None:
    """Strict load (assigning the tensors), with missing / unexpected / mis-shaped keys listed first."""
    expected = vae.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    shapes = sorted(f"{k}: {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
                    for k, v in expected.items() if k in state_dict and state_dict[k].shape != v.shape)
    problems = [f"{label} ({len(keys)}): {keys[:8]}{' ...' if len(keys) > 8 else ''}"
                for label, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                    ("shape mismatches", shapes)) if keys]
    if problems:
        raise ValueError(f"VAE weights {source} do not match the config: " + "; ".join(problems))
    # fp32 parameters whatever the stored dtype, as when loading into a freshly built model.
    state_dict = {k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()}
    vae.load_state_dict(state_dict, strict=True, assign=True)
