"""Test helper: a tiny HunyuanVideo VAE checkpoint in the official layout (`vae/config.json`,
`vae/pytorch_model.pt`).

The config has the fields and spellings of the released `config.json`; the weights are seeded random tensors
with the official key names (taken from our model, whose keys the tests check against diffusers').
"""

import json
import os

import torch

TINY_VAE_CONFIG = {
    "_class_name": "AutoencoderKLCausal3D",
    "_diffusers_version": "0.4.2",
    "act_fn": "silu",
    "block_out_channels": [8, 8, 16, 16],
    "down_block_types": ["DownEncoderBlockCausal3D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "out_channels": 3,
    "sample_size": 32,
    "sample_tsize": 16,
    "up_block_types": ["UpDecoderBlockCausal3D"] * 4,
    "scaling_factor": 0.476986,
    "time_compression_ratio": 4,
    "mid_block_add_attention": True,
}


def tiny_vae_config(**overrides) -> dict:
    """A copy of `TINY_VAE_CONFIG` with `overrides` applied (e.g. `block_out_channels=[8, 8, 8, 8]`)."""
    config = json.loads(json.dumps(TINY_VAE_CONFIG))
    config.update(overrides)
    if "block_out_channels" in overrides:
        n = len(overrides["block_out_channels"])
        config["down_block_types"] = ["DownEncoderBlockCausal3D"] * n
        config["up_block_types"] = ["UpDecoderBlockCausal3D"] * n
    return config


def random_vae_state_dict(config: dict, seed: int = 0, scale: float = 0.1) -> dict:
    """Seeded random weights for `config`: GroupNorm scales 1 + N(0, scale^2), all else N(0, scale^2)."""
    from hyvideo.vae import AutoencoderKLCausal3D

    with torch.device("meta"):
        shapes = {k: v.shape for k, v in AutoencoderKLCausal3D.from_config(config).state_dict().items()}
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        noise = torch.randn(shape, generator=gen) * scale
        is_norm_scale = ("norm" in key.rsplit(".", 2)[-2]) and key.endswith(".weight")
        state[key] = 1.0 + noise if is_norm_scale else noise
    return state


def write_vae_checkpoint(root: str, config: dict | None = None, state_dict: dict | None = None, seed: int = 0,
                         layout: str = "plain") -> str:
    """Write `root/vae/config.json` and `root/vae/pytorch_model.pt`; return the `vae` folder.

    Args:
        root: the checkpoint folder (created if needed).
        config: the VAE config (default: `TINY_VAE_CONFIG`).
        state_dict: the weights (default: `random_vae_state_dict(config, seed)`).
        seed: seed for the random weights.
        layout: "plain" (a bare state dict), "state_dict" (wrapped as {"state_dict": ...}) or "vae_prefix"
            (keys prefixed with "vae.", plus an unrelated "loss." entry that the loader must drop).

    Returns:
        The path of the `vae` folder.
    """
    config = TINY_VAE_CONFIG if config is None else config
    state_dict = random_vae_state_dict(config, seed) if state_dict is None else state_dict
    if layout == "state_dict":
        payload = {"state_dict": state_dict}
    elif layout == "vae_prefix":
        payload = {f"vae.{k}": v for k, v in state_dict.items()}
        payload["loss.logvar"] = torch.zeros(())
    elif layout == "plain":
        payload = dict(state_dict)
    else:
        raise ValueError(f"layout={layout!r}; allowed: 'plain', 'state_dict', 'vae_prefix'")
    vae_dir = os.path.join(root, "vae")
    os.makedirs(vae_dir, exist_ok=True)
    with open(os.path.join(vae_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    torch.save(payload, os.path.join(vae_dir, "pytorch_model.pt"))
    return vae_dir
