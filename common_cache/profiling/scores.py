"""Per-frame block statistics: which tokens are high-attention, and the foreground ratio R_attn.

Paper (method.md section 2.1 items 5-6): a token is *high-attention* when the attention it receives exceeds a
threshold (value not given); R_attn = |high and foreground| / |foreground|, per frame, averaged over frames.
Our threshold is relative to the frame: ``mean + k * std`` of the received attention of the frame's tokens
(default k = 0: above the frame's average), or the top fraction of the frame's tokens. Foreground weights may be
fractional (a token half covered by the mask counts half), which keeps small objects on coarse token grids.

A second, threshold-free statistic is recorded next to it: the *foreground lift*, the share of the frame's
received attention that lands on foreground tokens divided by the foreground's share of the tokens (1 = as much
as its area, > 1 = foreground-focused).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

_RULE = re.compile(r"^(?:mean(?:\+(?P<k>\d+(?:\.\d+)?)std)?|top(?P<q>0?\.\d+|1(?:\.0+)?))$")


@dataclass(frozen=True)
class HighAttentionRule:
    """Which tokens of a frame are high-attention.

    Attributes:
        kind: ``"std"``: received attention > frame mean + ``value`` * frame std; ``"top"``: the ``value``
            fraction of the frame's tokens with the most received attention (at least one token).
        value: k for ``"std"`` (>= 0), the fraction for ``"top"`` (0 < q <= 1).
    """

    kind: str = "std"
    value: float = 0.0

    def __post_init__(self) -> None:
        if self.kind == "std" and self.value >= 0:
            return
        if self.kind == "top" and 0 < self.value <= 1:
            return
        raise ValueError(
            f"high-attention rule kind={self.kind!r}, value={self.value!r} is not allowed: expected 'std' with "
            "value >= 0 or 'top' with 0 < value <= 1"
        )

    @classmethod
    def parse(cls, text: str) -> HighAttentionRule:
        """``"mean"``, ``"mean+1std"``, ``"mean+0.5std"`` or ``"top0.2"``."""
        match = _RULE.match(text.strip())
        if not match:
            raise ValueError(
                f"high-attention threshold {text!r} is not allowed: expected 'mean', 'mean+<k>std' or 'top<q>' "
                "(e.g. mean+1std, top0.2)"
            )
        if match.group("q") is not None:
            return cls("top", float(match.group("q")))
        return cls("std", float(match.group("k") or 0.0))

    def text(self) -> str:
        if self.kind == "top":
            return f"top{self.value:g}"
        return "mean" if self.value == 0 else f"mean+{self.value:g}std"

    def high(self, received: torch.Tensor) -> torch.Tensor:
        """Boolean ``[..., P]``: the high-attention tokens of each frame of ``received`` ``[..., P]``."""
        if self.kind == "std":
            mean = received.mean(dim=-1, keepdim=True)
            std = received.std(dim=-1, keepdim=True, unbiased=False)
            return received > mean + self.value * std
        count = max(1, round(self.value * received.shape[-1]))
        cut = received.topk(count, dim=-1).values[..., -1:]
        return received >= cut


def foreground_ratio(high: torch.Tensor, foreground: torch.Tensor) -> torch.Tensor:
    """R_attn per frame: the (weighted) share of foreground tokens that are high-attention.

    Args:
        high: ``[T, P]`` boolean high-attention tokens.
        foreground: ``[T, P]`` foreground weights in [0, 1].

    Returns:
        ``[T]`` float; NaN for frames without foreground.
    """
    weight = foreground.float()
    total = weight.sum(dim=-1)
    ratio = (high.float() * weight).sum(dim=-1) / total.clamp(min=1e-12)
    return torch.where(total > 0, ratio, torch.full_like(ratio, float("nan")))


def foreground_lift(received: torch.Tensor, foreground: torch.Tensor) -> torch.Tensor:
    """Per frame: (share of received attention on the foreground) / (foreground share of the tokens).

    Args:
        received: ``[T, P]`` received attention.
        foreground: ``[T, P]`` foreground weights in [0, 1].

    Returns:
        ``[T]`` float; NaN for frames without foreground (or without attention).
    """
    weight = foreground.float()
    area = weight.mean(dim=-1)
    share = (received * weight).sum(dim=-1) / received.sum(dim=-1).clamp(min=1e-30)
    lift = share / area.clamp(min=1e-12)
    return torch.where((area > 0) & (received.sum(dim=-1) > 0), lift, torch.full_like(lift, float("nan")))
