"""Toy block stacks whose behaviour is known by hand, for the cache engine tests."""

from __future__ import annotations

import torch
from torch import nn

from common_cache import run_blocks

# The paper's lists (method.md section 2.3).
HUNYUAN_SINGLE_BACKGROUND = (0, 2, 4, 5, 6, 7, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 23, 25, 26, 27, 31, 33)
HUNYUAN_SINGLE_REFRESH = (6, 18, 26, 32, 38, 42, 46, 48)
HUNYUAN_DOUBLE_SPAN = tuple(range(6, 20))
WAN14B_CACHED = (0, 2, 3, 4, 5, 6, 7, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 25, 26, 27, 28, 29, 30, 31, 32, 37, 38)


class AffineBlock(nn.Module):
    """x -> tanh(x) * scale + shift + bias_from_kwarg: nonlinear, cheap, counts its calls."""

    def __init__(self, index: int):
        super().__init__()
        self.index = index
        self.scale = 1.0 + 0.1 * index
        self.shift = 0.01 * (index + 1)
        self.calls = 0

    def forward(self, x, bias=0.0):
        self.calls += 1
        return torch.tanh(x) * self.scale + self.shift + bias


class PairBlock(nn.Module):
    """(img, txt) -> (img + mean(txt), txt * 0.9 + index): a two-state block like HunyuanVideo's double blocks."""

    def __init__(self, index: int):
        super().__init__()
        self.index = index
        self.calls = 0

    def forward(self, img, txt, bias=0.0):
        self.calls += 1
        return torch.sin(img) + txt.mean() + bias, txt * 0.9 + 0.01 * self.index


class ToyModel(nn.Module):
    """A one-stack model (like Wan2.1) whose forward calls run_blocks."""

    def __init__(self, depth: int, block=AffineBlock):
        super().__init__()
        self.blocks = nn.ModuleList(block(i) for i in range(depth))
        self.block_cache = None

    def stream_group_depths(self) -> dict[str, int]:
        return {"blocks": len(self.blocks)}

    def forward(self, x, bias=0.0):
        return run_blocks(self.block_cache, "blocks", self.blocks, x, bias=bias)

    def calls(self) -> list[int]:
        return [b.calls for b in self.blocks]


class ToyTwoStreamModel(nn.Module):
    """A HunyuanVideo-shaped model: a double stack on (img, txt), then a single stack on the concatenation."""

    def __init__(self, n_double: int, n_single: int):
        super().__init__()
        self.double_blocks = nn.ModuleList(PairBlock(i) for i in range(n_double))
        self.single_blocks = nn.ModuleList(AffineBlock(i) for i in range(n_single))
        self.block_cache = None

    def stream_group_depths(self) -> dict[str, int]:
        return {"double": len(self.double_blocks), "single": len(self.single_blocks)}

    def forward(self, img, txt):
        img, txt = run_blocks(self.block_cache, "double", self.double_blocks, (img, txt))
        x = torch.cat([img, txt], dim=1)
        return run_blocks(self.block_cache, "single", self.single_blocks, x)


def plain_loop(blocks, x, **kwargs):
    for block in blocks:
        x = block(x, **kwargs)
    return x
