"""Packages the trained tiny model in the official Wan2.1 checkpoint layout, folding the VAE's latent statistics.

Not an upstream module; the layout is Wan2.1's (official-models.md B.3):

    config.json                               WanModel arguments (text_len and text_dim included)
    diffusion_pytorch_model-0000k-of-00002.safetensors + .safetensors.index.json
                                              DiT, fp32, in shards of at most 8 MB (the 14B layout; one
                                              diffusion_pytorch_model.safetensors when it fits in one)
    models_t5_umt5-xxl-enc-bf16.pth           umT5 encoder state dict, bf16
    Wan2.1_VAE.pth                            VAE state dict, fp32
    google/umt5-xxl/                          tokenizer files

Folding. The pipeline normalises latents with the official 16-channel statistics (M, S):
``z = (mu' - M) * (1/S)`` and decodes ``conv2(z / (1/S) + M)``. Our VAE has its own statistics (m, s), so the
encoder's quant conv (``conv1``, mu half) is rescaled to output ``mu' = (mu - m) * S/s + M`` and the decoder's
quant conv (``conv2``) to read ``mu = (mu' - M) * s/S + m``. Then ``z = (mu - m) / s`` exactly as if the VAE had
been normalised with its own statistics, and decoding inverts it. The log-variance half of ``conv1`` is
shifted by ``2 log(S/s)`` so that the posterior stays consistent (inference uses only the mean).
"""

from __future__ import annotations

import json
import os
import shutil

import torch

from ..modules.checkpoint import save_wan_weights
from ..modules.vae import WAN_LATENTS_MEAN, WAN_LATENTS_STD

CONFIG_NAME = "config.json"
MAX_SHARD_BYTES = 8 * 2**20  # small files for the repository that ships the model
T5_NAME = "models_t5_umt5-xxl-enc-bf16.pth"
VAE_NAME = "Wan2.1_VAE.pth"
TOKENIZER_DIR = os.path.join("google", "umt5-xxl")


def fold_latent_stats(vae_state: dict[str, torch.Tensor], mean, std) -> dict[str, torch.Tensor]:
    """Returns a copy of a VAE state dict whose quant convs map its own latent statistics onto the official ones.

    Args:
        vae_state: state dict of a ``WanVAE_`` with a 16-channel latent.
        mean, std: the VAE's own per-channel latent mean and std (of the encoder's mu), 16 values each.

    Returns:
        The folded state dict (fp32 for the two quant convs, other tensors shared with the input).
    """
    m = torch.as_tensor(mean, dtype=torch.float64).flatten()
    s = torch.as_tensor(std, dtype=torch.float64).flatten()
    big_m = torch.tensor(WAN_LATENTS_MEAN, dtype=torch.float64)
    big_s = torch.tensor(WAN_LATENTS_STD, dtype=torch.float64)
    z = big_m.numel()
    if m.numel() != z or s.numel() != z or bool((s <= 0).any()):
        raise ValueError(f"mean/std must have {z} values with std > 0 (the official latent has {z} channels)")
    gain = big_s / s  # per latent channel
    folded = dict(vae_state)

    w1, b1 = vae_state["conv1.weight"].double(), vae_state["conv1.bias"].double()  # [2z, 2z, 1, 1, 1], [2z]
    w1, b1 = w1.clone(), b1.clone()
    w1[:z] *= gain.view(z, 1, 1, 1, 1)
    b1[:z] = (b1[:z] - m) * gain + big_m
    b1[z:] += 2 * torch.log(gain)
    folded["conv1.weight"], folded["conv1.bias"] = w1.float(), b1.float()

    w2, b2 = vae_state["conv2.weight"].double(), vae_state["conv2.bias"].double()  # [z, z, 1, 1, 1], [z]
    # conv2(x) with x = (x' - M) / gain + m  ==  (w2 / gain) x' + b2 + w2 (m - M / gain)
    offset = m - big_m / gain
    folded["conv2.bias"] = (b2 + w2.flatten(1) @ offset).float()
    folded["conv2.weight"] = (w2 / gain.view(1, z, 1, 1, 1)).float()
    return folded


def dit_config_json(dit_config: dict) -> dict:
    """The ``config.json`` of the DiT: the diffusers class markers plus the WanModel arguments."""
    return {"_class_name": "WanModel", "_diffusers_version": "0.30.0", **dit_config}


def export_checkpoint(out_dir: str, dit_config: dict, dit_state: dict, t5_state: dict, vae_state: dict,
                      latent_mean, latent_std, tokenizer_dir: str) -> None:
    """Writes the official layout into ``out_dir`` (files are replaced; other files there are left alone).

    Args:
        out_dir: checkpoint folder (created if missing).
        dit_config: WanModel keyword arguments.
        dit_state / t5_state / vae_state: trained weights (the VAE not yet folded).
        latent_mean / latent_std: the VAE's own latent statistics, folded into its quant convs.
        tokenizer_dir: the SentencePiece tokenizer folder to copy to ``google/umt5-xxl``.
    """
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, CONFIG_NAME), "w") as handle:
        json.dump(dit_config_json(dit_config), handle, indent=2)
        handle.write("\n")
    dit_state = {k: v.float().contiguous() for k, v in dit_state.items()}
    dit_bytes = sum(v.numel() * v.element_size() for v in dit_state.values())
    save_wan_weights(out_dir, dit_state, num_shards=-(-dit_bytes // MAX_SHARD_BYTES))
    torch.save({k: v.to(torch.bfloat16) for k, v in t5_state.items()}, os.path.join(out_dir, T5_NAME))
    folded = fold_latent_stats(vae_state, latent_mean, latent_std)
    torch.save({k: v.float().contiguous() for k, v in folded.items()}, os.path.join(out_dir, VAE_NAME))
    target = os.path.join(out_dir, TOKENIZER_DIR)
    if os.path.isdir(target):
        shutil.rmtree(target)
    shutil.copytree(tokenizer_dir, target)
