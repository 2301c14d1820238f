"""LPIPS (AlexNet, v0.1) without torchvision: own AlexNet feature stack + the shipped linear heads.

References: Zhang et al., "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric" (CVPR 2018) and the
lpips package v0.1 (``LPIPS(net='alex')``): input scaling, taps after the five ReLUs, unit-normalised channels,
squared differences weighted by 1x1 linear heads, spatial mean, sum over layers. Own code.

The backbone is torchvision's ImageNet AlexNet; its weights cannot be downloaded here, so the user passes the file
(``alexnet-owt-7be5be79.pth``, keys ``features.{0,3,6,8,10}.{weight,bias}``) with ``--lpips-weights``. The linear heads
(``lin{0..4}.model.1.weight``, 6 KB) ship inside torchmetrics and the lpips package; ``--lpips-heads`` overrides.
Not verified against the lpips package on this machine (it needs torchvision); see docs/evaluation.md.
"""

from __future__ import annotations

import glob
import os

import numpy as np
import torch
from torch import nn

# (in, out, kernel, stride, padding) of the five convolutions; max-pool (3, 2) after the first two ReLUs.
ALEX_CONVS = ((3, 64, 11, 4, 2), (64, 192, 5, 1, 2), (192, 384, 3, 1, 1), (384, 256, 3, 1, 1), (256, 256, 3, 1, 1))
ALEX_KEYS = (0, 3, 6, 8, 10)  # torchvision's index of each convolution in `features`
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)


def shipped_heads_path() -> str | None:
    """The LPIPS AlexNet heads shipped with torchmetrics (or the lpips package), if either is installed."""
    import importlib.util

    shipped = (("torchmetrics", "functional/image/lpips_models/alex.pth"), ("lpips", "weights/v0.1/alex.pth"))
    for package, pattern in shipped:
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.submodule_search_locations:
            found = glob.glob(os.path.join(list(spec.submodule_search_locations)[0], pattern))
            if found:
                return found[0]
    return None


class LpipsAlex(nn.Module):
    """LPIPS distance with an AlexNet backbone.

    Args:
        backbone_path: torchvision AlexNet weights (``features.*`` keys; ``classifier.*`` are ignored).
        heads_path: the LPIPS linear heads; None uses the ones shipped with torchmetrics/lpips.

    Raises:
        FileNotFoundError: a weight file is missing.
        ValueError: a weight file lacks a key or has a wrong shape.
    """

    def __init__(self, backbone_path: str, heads_path: str | None = None) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(i, o, k, s, p) for i, o, k, s, p in ALEX_CONVS)
        self.heads = nn.ParameterList(nn.Parameter(torch.zeros(1, o, 1, 1)) for _, o, *_ in ALEX_CONVS)
        heads_path = heads_path or shipped_heads_path()
        if heads_path is None:
            raise FileNotFoundError("LPIPS linear heads not found: install torchmetrics or pass --lpips-heads PATH")
        backbone = _load(backbone_path, "LPIPS backbone (--lpips-weights)")
        heads = _load(heads_path, "LPIPS heads (--lpips-heads)")
        with torch.no_grad():
            for conv, index in zip(self.convs, ALEX_KEYS):
                conv.weight.copy_(_get(backbone, f"features.{index}.weight", conv.weight.shape, backbone_path))
                conv.bias.copy_(_get(backbone, f"features.{index}.bias", conv.bias.shape, backbone_path))
            for k, head in enumerate(self.heads):
                head.copy_(_get(heads, f"lin{k}.model.1.weight", head.shape, heads_path))
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1))
        self.eval().requires_grad_(False)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x [N, 3, H, W] in [-1, 1] -> the five ReLU outputs."""
        h = (x - self.shift) / self.scale
        taps = []
        for k, conv in enumerate(self.convs):
            if k in (1, 2):
                h = nn.functional.max_pool2d(h, kernel_size=3, stride=2)
            h = torch.relu(conv(h))
            taps.append(h)
        return taps

    @torch.no_grad()
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Distance per image pair: a, b [N, 3, H, W] in [-1, 1] -> [N]."""
        total = torch.zeros(a.shape[0], dtype=torch.float32, device=a.device)
        for fa, fb, head in zip(self.features(a), self.features(b), self.heads):
            diff = (_unit(fa) - _unit(fb)) ** 2  # [N, C, h, w]
            total += (diff * head).sum(dim=1).mean(dim=(1, 2))
        return total

    def frames(self, ref: np.ndarray, test: np.ndarray, batch: int = 16) -> np.ndarray:
        """Per-frame distance of two uint8 videos [F, H, W, 3]."""
        out = []
        for start in range(0, len(ref), batch):
            a, b = (torch.from_numpy(v[start:start + batch]).permute(0, 3, 1, 2).float() / 127.5 - 1
                    for v in (ref, test))
            out.append(self(a, b).numpy())
        return np.concatenate(out).astype(np.float64)


def _unit(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


def _load(path: str, what: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what}: no file at {path}")
    data = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(data, dict):
        raise ValueError(f"{what}: {path} is not a state dict")
    return data


def _get(state: dict, key: str, shape: torch.Size, path: str) -> torch.Tensor:
    if key not in state:
        raise ValueError(f"{path} has no key {key!r} (expected torchvision AlexNet / LPIPS v0.1 keys)")
    if tuple(state[key].shape) != tuple(shape):
        raise ValueError(f"{path}: {key} has shape {tuple(state[key].shape)}, expected {tuple(shape)}")
    return state[key]
