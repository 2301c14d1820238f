"""CLIP ViT-H/14 image encoder of Wan2.1 image-to-video: the visual tower of open-clip XLM-RoBERTa-large ViT-H/14.

References: Wan2.1 wan/modules/clip.py (configuration, key names, preprocessing, and the output the DiT uses: the
tokens after the 31st of 32 blocks, no post-norm, no projection head).

The official file ``models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth`` holds the whole CLIP model: the
visual tower (``visual.*``), the XLM-RoBERTa text tower (``textual.*``) and ``log_scale``. Image-to-video only runs
the visual tower, so only it is built; its keys are loaded strictly (none missing, none unexpected, equal shapes),
and the other keys must be the text tower's.

Own code. The same weights give the same tokens as transformers' ``CLIPVisionModel`` (``hidden_states[-2]``) after
the key renaming in tests/wan_ckpt_image.py.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import attention

# Normalisation of the OpenAI CLIP family, applied to images in [0, 1].
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# clip_xlm_roberta_vit_h_14: the visual tower's configuration (the text tower is not built).
VIT_H_14 = dict(image_size=224, patch_size=14, dim=1280, mlp_ratio=4, out_dim=1024, num_heads=16, num_layers=32,
                eps=1e-5)
TEXT_TOWER_KEYS = ("textual.", "log_scale")  # prefixes of the keys of the unused text tower

logger = logging.getLogger(__name__)


class CLIPLayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 and cast back to the input dtype (as upstream)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type_as(x)


class CLIPSelfAttention(nn.Module):
    """Multi-head self-attention with a fused ``to_qkv`` projection (rows: q, k, v, each head-major)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.to_qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, L, C]`` -> ``[B, L, C]``."""
        b, s, c = x.shape
        q, k, v = self.to_qkv(x).view(b, s, 3, self.num_heads, self.head_dim).unbind(2)  # 3 x [B, L, N, D]
        return self.proj(attention(q, k, v).reshape(b, s, c))


class CLIPBlock(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))`` with an exact GELU MLP."""

    def __init__(self, dim: int, mlp_ratio: int, num_heads: int, eps: float):
        super().__init__()
        self.norm1 = CLIPLayerNorm(dim, eps=eps)
        self.attn = CLIPSelfAttention(dim, num_heads)
        self.norm2 = CLIPLayerNorm(dim, eps=eps)
        # keys mlp.0 and mlp.2; the official module has a parameter-free dropout at index 3
        self.mlp = nn.Sequential(nn.Linear(dim, dim * mlp_ratio), nn.GELU(), nn.Linear(dim * mlp_ratio, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """CLIP ViT with a class token, a learned position embedding and a pre-norm (keys of the official ``visual``).

    Args:
        image_size: input side in pixels (square).
        patch_size: patch side; ``(image_size / patch_size)^2 + 1`` tokens.
        dim: token width.
        mlp_ratio: MLP hidden width / dim.
        out_dim: width of the projection ``head`` (loaded, unused by image-to-video).
        num_heads, num_layers: attention heads, blocks.
        eps: LayerNorm epsilon.
    """

    def __init__(self, image_size: int = 224, patch_size: int = 14, dim: int = 1280, mlp_ratio: int = 4,
                 out_dim: int = 1024, num_heads: int = 16, num_layers: int = 32, eps: float = 1e-5):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size ({image_size}) must be a multiple of patch_size ({patch_size})")
        self.image_size = image_size
        self.num_tokens = (image_size // patch_size) ** 2 + 1
        self.patch_embedding = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size, bias=False)
        self.cls_embedding = nn.Parameter(torch.randn(1, 1, dim) / math.sqrt(dim))
        self.pos_embedding = nn.Parameter(torch.randn(1, self.num_tokens, dim) / math.sqrt(dim))
        self.pre_norm = CLIPLayerNorm(dim, eps=eps)
        self.transformer = nn.Sequential(*[CLIPBlock(dim, mlp_ratio, num_heads, eps) for _ in range(num_layers)])
        self.post_norm = CLIPLayerNorm(dim, eps=eps)
        self.head = nn.Parameter(torch.randn(dim, out_dim) / math.sqrt(dim))

    def forward(self, images: torch.Tensor, penultimate: bool = True) -> torch.Tensor:
        """
        Args:
            images: ``[B, 3, image_size, image_size]`` normalised pixels.
            penultimate: stop after the second-to-last block (what Wan2.1 i2v uses); else run every block.

        Returns:
            ``[B, num_tokens, dim]`` tokens (class token first), without the post-norm.
        """
        x = self.patch_embedding(images.to(self.patch_embedding.weight.dtype))  # [B, C, h, w]
        x = x.flatten(2).transpose(1, 2)  # [B, h*w, C]
        x = torch.cat([self.cls_embedding.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)  # [B, 1+h*w, C]
        x = self.pre_norm(x + self.pos_embedding.to(x.dtype))
        blocks = self.transformer[:-1] if penultimate else self.transformer
        return blocks(x)


class CLIPVisionEncoder(nn.Module):
    """Holds the visual tower under the official prefix ``visual``."""

    def __init__(self, **vision_config):
        super().__init__()
        self.visual = VisionTransformer(**vision_config)


def preprocess(videos: list[torch.Tensor], image_size: int) -> torch.Tensor:
    """Official CLIP preprocessing of Wan2.1: bicubic resize (no crop), [-1, 1] -> [0, 1], mean/std normalise.

    Args:
        videos: each ``[3, T, H, W]`` in [-1, 1] (image-to-video passes one ``[3, 1, H, W]`` image).
        image_size: the side the tower expects.

    Returns:
        ``[sum(T), 3, image_size, image_size]`` fp32.
    """
    frames = torch.cat([F.interpolate(u.transpose(0, 1).float(), size=(image_size, image_size), mode="bicubic",
                                      align_corners=False) for u in videos])  # [N, 3, S, S]
    mean = torch.tensor(CLIP_MEAN, device=frames.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=frames.device).view(1, 3, 1, 1)
    return (frames * 0.5 + 0.5 - mean) / std


def load_clip_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Reads the official CLIP ``.pth`` (a plain state dict of tensors)."""
    state_dict = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"{path} must hold a state dict, got {type(state_dict).__name__}")
    return dict(state_dict)


def visual_state_dict(model: CLIPVisionEncoder, state_dict: Mapping[str, torch.Tensor], path: str) -> dict:
    """The ``visual.*`` tensors of ``state_dict``, after strict checks against ``model``.

    Raises:
        ValueError: a visual key missing, a key that is neither visual nor the text tower's, a shape mismatch.
    """
    expected = model.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected and not key.startswith(TEXT_TOWER_KEYS)]
    wrong = [f"{key}: checkpoint {list(state_dict[key].shape)} vs model {list(value.shape)}"
             for key, value in expected.items() if key in state_dict and state_dict[key].shape != value.shape]
    if missing or unexpected or wrong:
        raise ValueError(f"CLIP checkpoint {path} does not match the CLIP visual encoder of this task: "
                         f"{len(missing)} missing key(s) {missing[:5]}, {len(unexpected)} unexpected key(s) "
                         f"{unexpected[:5]}, {len(wrong)} wrong shape(s) {wrong[:5]}")
    return {key: state_dict[key] for key in expected}


class CLIPModel:
    """The image encoder of the i2v pipeline (upstream name and call: ``clip.visual([image[:, None]])``).

    Args:
        dtype: compute dtype on an accelerator (the official ``clip_dtype`` is fp16); a CPU runs fp32.
        device: where the encoder runs.
        checkpoint_path: the official ``models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth``.
        tokenizer_path: the XLM-RoBERTa tokenizer folder of the text tower; unused (accepted for the upstream
            signature).
        vision_config: the visual tower's configuration (default :data:`VIT_H_14`).
    """

    def __init__(self, dtype: torch.dtype, device: torch.device | str, checkpoint_path: str,
                 tokenizer_path: str | None = None, vision_config: Mapping | None = None):
        self.device = torch.device(device)
        self.dtype = torch.float32 if self.device.type == "cpu" else dtype
        self.checkpoint_path = checkpoint_path
        self.tokenizer_path = tokenizer_path
        with torch.device("meta"):
            self.model = CLIPVisionEncoder(**dict(vision_config or VIT_H_14))
        logger.info("loading %s", os.path.basename(checkpoint_path))
        state_dict = visual_state_dict(self.model, load_clip_state_dict(checkpoint_path), checkpoint_path)
        state_dict = {key: value.to(self.device, self.dtype) for key, value in state_dict.items()}
        self.model.load_state_dict(state_dict, strict=True, assign=True)
        self.model.eval().requires_grad_(False)

    def visual(self, videos: list[torch.Tensor]) -> torch.Tensor:
        """Penultimate-block tokens ``[N, num_tokens, dim]`` of each frame of ``videos`` (each ``[3, T, H, W]``
        in [-1, 1]; image-to-video passes ``[image[:, None]]``)."""
        images = preprocess([u.to(self.device) for u in videos], self.model.visual.image_size)
        autocast = torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)
        with autocast, torch.no_grad():
            return self.model.visual(images, penultimate=True)
