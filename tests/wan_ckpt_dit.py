"""Test helper: tiny random Wan2.1 DiTs and checkpoint folders in the official layout.

The folder layout is the one of the official Wan2.1 releases (diffusers ``ModelMixin``): ``config.json`` with
``_class_name``/``_diffusers_version`` and the constructor fields, plus either one
``diffusion_pytorch_model.safetensors`` or shards ``diffusion_pytorch_model-0000k-of-0000n.safetensors`` with
``diffusion_pytorch_model.safetensors.index.json``. :func:`write_random_wan_folder` writes a whole checkpoint
folder (DiT, T5, tokenizer, VAE) for a ``WAN_CONFIGS`` task, as ``generate.py --ckpt_dir`` loads it.
"""

from __future__ import annotations

import json
import os

import torch

from wan.configs import WAN_CONFIGS
from wan.modules.checkpoint import save_wan_weights
from wan.modules.model import WanModel
from wan_ckpt_text import build_tiny_tokenizer, write_t5_checkpoint, write_vae_checkpoint

# 2 heads of 16, 3 blocks; the official config.json stores only these fields (B.2), the rest are defaults.
TINY_CONFIG = {
    "model_type": "t2v",
    "dim": 32,
    "ffn_dim": 64,
    "freq_dim": 256,
    "in_dim": 16,
    "out_dim": 16,
    "num_heads": 2,
    "num_layers": 3,
    "eps": 1e-06,
    "text_len": 512,
    "text_dim": 32,
}


def random_tiny_wan(config: dict | None = None, seed: int = 0) -> WanModel:
    """A WanModel with random weights of a useful scale (norm weights near 1, the rest N(0, 0.1^2))."""
    generator = torch.Generator().manual_seed(seed)
    model = WanModel(**(config or TINY_CONFIG)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = 0.1 * torch.randn(param.shape, generator=generator)
            param.copy_(1.0 + noise if "norm" in name else noise)
    return model


def write_wan_checkpoint(folder: str, state_dict: dict, config: dict, num_shards: int = 1) -> None:
    """Writes ``config.json`` and the weights, as one file or ``num_shards`` shards with an index.

    Args:
        folder: target folder (created if needed).
        state_dict: official key -> tensor.
        config: constructor fields for ``config.json`` (after ``_class_name`` and ``_diffusers_version``).
        num_shards: 1 for a single safetensors file, more for the sharded layout.
    """
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
        json.dump({"_class_name": "WanModel", "_diffusers_version": "0.30.0", **config}, f, indent=2)
    save_wan_weights(folder, state_dict, num_shards)


def task_dit_config(task: str) -> dict:
    """The ``config.json`` constructor fields of the DiT of a ``WAN_CONFIGS`` task (text-to-video, 16 channels)."""
    cfg = WAN_CONFIGS[task]
    return {"model_type": "t2v", "dim": cfg.dim, "ffn_dim": cfg.ffn_dim, "freq_dim": cfg.freq_dim, "in_dim": 16,
            "out_dim": 16, "num_heads": cfg.num_heads, "num_layers": cfg.num_layers, "eps": cfg.eps,
            "text_len": cfg.text_len, "text_dim": cfg.text_dim}


def write_random_wan_folder(folder: str, task: str, seed: int = 0, weight_scale: float = 0.3,
                            config: dict | None = None) -> str:
    """Writes a checkpoint folder of random weights for ``task`` in the official layout.

    The DiT comes from :func:`random_tiny_wan` with every non-norm weight scaled by ``weight_scale``: at 0.3 the
    weights are ~N(0, 0.03^2), a smooth random velocity field like a trained model's (at 0.1 it changes chaotically
    from step to step and no cache or sampler could follow it). The T5 encoder (4 heads), the tokenizer and the VAE
    are the tiny ones of :mod:`wan_ckpt_text`, at the file names the task's config expects.

    Args:
        folder: target folder (created if needed).
        task: a ``WAN_CONFIGS`` key, e.g. ``"t2v-tiny"``.
        seed: seed of the DiT weights.
        weight_scale: factor on the non-norm DiT weights.
        config: the DiT config (default: the task's, :func:`task_dit_config`).

    Returns:
        ``folder``.
    """
    cfg = WAN_CONFIGS[task]
    config = config or task_dit_config(task)
    state_dict = {k: v if "norm" in k else weight_scale * v
                  for k, v in random_tiny_wan(config, seed=seed).state_dict().items()}
    write_wan_checkpoint(folder, state_dict, config)
    write_t5_checkpoint(os.path.join(folder, cfg.t5_checkpoint), dim=cfg.text_dim, dim_attn=cfg.text_dim, num_heads=4)
    build_tiny_tokenizer(os.path.join(folder, cfg.t5_tokenizer))
    write_vae_checkpoint(os.path.join(folder, cfg.vae_checkpoint))
    return folder


def tiny_inputs(config: dict | None = None, seed: int = 1):
    """Two latents of different sizes and two trimmed text contexts for a model built from ``config``.

    Returns:
        (latents, contexts, seq_len): ``[16, 3, 8, 12]`` (72 tokens) and ``[16, 2, 6, 8]`` (24 tokens);
        contexts of 5 and 9 tokens; seq_len 80 (so both samples carry padding).
    """
    config = config or TINY_CONFIG
    generator = torch.Generator().manual_seed(seed)
    latents = [torch.randn(config["in_dim"], *size, generator=generator) for size in ((3, 8, 12), (2, 6, 8))]
    contexts = [torch.randn(n, config["text_dim"], generator=generator) for n in (5, 9)]
    return latents, contexts, 80
