"""Test helper: tiny random Wan2.1 DiTs and checkpoint folders in the official layout.

The folder layout is the one of the official Wan2.1 releases (diffusers ``ModelMixin``): ``config.json`` with
``_class_name``/``_diffusers_version`` and the constructor fields, plus either one
``diffusion_pytorch_model.safetensors`` or shards ``diffusion_pytorch_model-0000k-of-0000n.safetensors`` with
``diffusion_pytorch_model.safetensors.index.json``.
"""

from __future__ import annotations

import json
import os

import torch
from safetensors.torch import save_file

from wan.modules.model import WanModel

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
    tensors = {key: value.detach().contiguous() for key, value in state_dict.items()}
    metadata = {"format": "pt"}
    if num_shards == 1:
        save_file(tensors, os.path.join(folder, "diffusion_pytorch_model.safetensors"), metadata=metadata)
        return
    keys = list(tensors)
    per_shard = -(-len(keys) // num_shards)
    weight_map = {}
    for index in range(num_shards):
        name = f"diffusion_pytorch_model-{index + 1:05d}-of-{num_shards:05d}.safetensors"
        shard_keys = keys[index * per_shard : (index + 1) * per_shard]
        save_file({key: tensors[key] for key in shard_keys}, os.path.join(folder, name), metadata=metadata)
        weight_map.update({key: name for key in shard_keys})
    total_size = sum(t.numel() * t.element_size() for t in tensors.values())
    index_path = os.path.join(folder, "diffusion_pytorch_model.safetensors.index.json")
    with open(index_path, "w", encoding="utf-8") as f:
        json.dump({"metadata": {"total_size": total_size}, "weight_map": weight_map}, f, indent=2)


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
