"""Test helper: tiny random Wan2.1 image-to-video checkpoints in the official layout, and test images.

* :func:`random_clip_state_dict` writes the keys of the official CLIP file
  (``models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth``: ``visual.*``, ``textual.*``, ``log_scale``), with a
  few text-tower tensors standing in for the XLM-RoBERTa tower that image-to-video never runs.
* :func:`clip_to_transformers` renames the visual keys to transformers' ``CLIPVisionModelWithProjection`` (fused
  ``to_qkv`` split into q/k/v, the ``[dim, out]`` head transposed into ``visual_projection``).
* :func:`write_random_i2v_folder` writes a whole i2v checkpoint folder (DiT config.json + safetensors with
  ``model_type`` i2v and ``in_dim`` 36, T5, tokenizer, VAE, CLIP) for a ``WAN_CONFIGS`` i2v task.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image
from wan_ckpt_dit import write_random_wan_folder

from wan.configs import WAN_CONFIGS

TINY_CLIP = dict(image_size=32, patch_size=8, dim=64, mlp_ratio=4, out_dim=32, num_heads=4, num_layers=3, eps=1e-5)


def clip_official_shapes(image_size, patch_size, dim, mlp_ratio, out_dim, num_heads, num_layers, eps=1e-5) -> dict:
    """Key -> shape of the visual tower of the official CLIP file (independent of the model code)."""
    tokens = (image_size // patch_size) ** 2 + 1
    shapes = {"visual.patch_embedding.weight": (dim, 3, patch_size, patch_size), "visual.cls_embedding": (1, 1, dim),
              "visual.pos_embedding": (1, tokens, dim), "visual.pre_norm.weight": (dim,),
              "visual.pre_norm.bias": (dim,), "visual.post_norm.weight": (dim,), "visual.post_norm.bias": (dim,),
              "visual.head": (dim, out_dim)}
    for i in range(num_layers):
        p = f"visual.transformer.{i}."
        shapes.update({p + "norm1.weight": (dim,), p + "norm1.bias": (dim,), p + "attn.to_qkv.weight": (3 * dim, dim),
                       p + "attn.to_qkv.bias": (3 * dim,), p + "attn.proj.weight": (dim, dim),
                       p + "attn.proj.bias": (dim,), p + "norm2.weight": (dim,), p + "norm2.bias": (dim,),
                       p + "mlp.0.weight": (dim * mlp_ratio, dim), p + "mlp.0.bias": (dim * mlp_ratio,),
                       p + "mlp.2.weight": (dim, dim * mlp_ratio), p + "mlp.2.bias": (dim,)})
    return shapes


def random_clip_state_dict(config: dict | None = None, seed: int = 0, text_tower: bool = True) -> dict:
    """Random official CLIP weights (norm weights near 1, the rest N(0, 0.1^2)); plus text-tower stand-ins."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in clip_official_shapes(**(config or TINY_CLIP)).items():
        noise = 0.1 * torch.randn(shape, generator=generator)
        state[key] = 1.0 + noise if "norm" in key and key.endswith("weight") else noise
    if text_tower:
        state.update({"textual.token_embedding.weight": torch.randn(10, 8, generator=generator),
                      "textual.head.0.weight": torch.randn(8, 8, generator=generator),
                      "log_scale": torch.tensor(4.6052)})
    return state


def write_clip_checkpoint(path: str, config: dict | None = None, seed: int = 0) -> str:
    torch.save(random_clip_state_dict(config, seed), path)
    return path


def clip_to_transformers(state_dict: dict) -> dict:
    """Official ``visual.*`` keys -> transformers ``CLIPVisionModelWithProjection`` keys (text keys dropped)."""
    out = {}
    for key, value in state_dict.items():
        if not key.startswith("visual."):
            continue
        name = key[len("visual."):]
        if name.startswith("transformer."):
            _, index, rest = name.split(".", 2)
            p = f"vision_model.encoder.layers.{index}."
            if rest.startswith("attn.to_qkv."):
                for part, chunk in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                    out[p + f"self_attn.{part}.{rest.rsplit('.', 1)[1]}"] = chunk
                continue
            rest = (rest.replace("norm1.", "layer_norm1.").replace("norm2.", "layer_norm2.")
                    .replace("attn.proj.", "self_attn.out_proj.").replace("mlp.0.", "mlp.fc1.")
                    .replace("mlp.2.", "mlp.fc2."))
            out[p + rest] = value
        elif name == "cls_embedding":
            out["vision_model.embeddings.class_embedding"] = value.flatten()
        elif name == "pos_embedding":
            out["vision_model.embeddings.position_embedding.weight"] = value[0]
        elif name == "patch_embedding.weight":
            out["vision_model.embeddings.patch_embedding.weight"] = value
        elif name == "head":
            out["visual_projection.weight"] = value.t()
        else:
            norm = {"pre_norm": "vision_model.pre_layrnorm", "post_norm": "vision_model.post_layernorm"}
            module, param = name.split(".")
            out[f"{norm[module]}.{param}"] = value
    return out


def i2v_dit_config(task: str) -> dict:
    """The ``config.json`` constructor fields of the DiT of an i2v ``WAN_CONFIGS`` task."""
    cfg = WAN_CONFIGS[task]
    return {"model_type": "i2v", "dim": cfg.dim, "ffn_dim": cfg.ffn_dim, "freq_dim": cfg.freq_dim, "in_dim": 36,
            "out_dim": 16, "num_heads": cfg.num_heads, "num_layers": cfg.num_layers, "eps": cfg.eps,
            "text_len": cfg.text_len, "text_dim": cfg.text_dim, "image_dim": cfg.image_dim}


def write_random_i2v_folder(folder: str, task: str = "i2v-tiny", seed: int = 0, weight_scale: float = 0.3) -> str:
    """Writes an i2v checkpoint folder of random weights in the official layout (see the module docstring);
    the DiT's non-norm weights are scaled by ``weight_scale`` (a smooth velocity field, as in wan_ckpt_dit)."""
    cfg = WAN_CONFIGS[task]
    write_random_wan_folder(folder, task, seed, weight_scale, i2v_dit_config(task))
    write_clip_checkpoint(os.path.join(folder, cfg.clip_checkpoint), cfg.clip_vision, seed=seed + 1)
    return folder


def make_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth RGB test image: colour gradients plus a bright disc at a seed-dependent place."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    cx, cy, r = rng.uniform(0.3, 0.7) * width, rng.uniform(0.3, 0.7) * height, 0.2 * min(width, height)
    disc = ((x - cx) ** 2 + (y - cy) ** 2 < r**2).astype(np.float32)
    base = rng.uniform(0, 1, size=3)
    pixels = np.stack([base[0] * x / width, base[1] * y / height, base[2] * (1 - x / width)], axis=-1)
    pixels = np.clip(pixels * 0.6 + disc[..., None] * 0.4, 0, 1)
    return Image.fromarray((pixels * 255).astype(np.uint8), "RGB")
