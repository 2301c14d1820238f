"""Token refiner (`txt_in`): refines the LLM text states with timestep-conditioned self-attention blocks.

References: Tencent/HunyuanVideo hyvideo/modules/token_refiner.py (key names and official numerics).
"""

import torch
import torch.nn as nn

from .attention import refiner_attention, refiner_mask
from .embed_layers import TextProjection, TimestepEmbedder
from .mlp_layers import MLP
from .modulate_layers import apply_gate

REFINER_DEPTH = 2  # hard-coded upstream
REFINER_MLP_RATIO = 4.0  # upstream default, independent of the transformer's mlp_width_ratio


class IndividualTokenRefinerBlock(nn.Module):
    """Gated pre-norm self-attention + SiLU MLP over the text tokens (no qk-norm, no RoPE, qkv bias on)."""

    def __init__(self, hidden_size: int, heads_num: int, dtype: torch.dtype | None = None, device=None):
        super().__init__()
        factory = {"dtype": dtype, "device": device}
        self.heads_num = heads_num
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=True, eps=1e-6, **factory)
        self.self_attn_qkv = nn.Linear(hidden_size, hidden_size * 3, bias=True, **factory)
        self.self_attn_proj = nn.Linear(hidden_size, hidden_size, bias=True, **factory)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=True, eps=1e-6, **factory)
        self.mlp = MLP(hidden_size, int(hidden_size * REFINER_MLP_RATIO), nn.SiLU, **factory)
        self.adaLN_modulation = nn.Sequential(
            nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size, bias=True, **factory)
        )

    def forward(self, x: torch.Tensor, c: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        """x [B, L, C], c [B, C], attn_mask [B, 1, L, L] bool -> [B, L, C]."""
        gate_msa, gate_mlp = self.adaLN_modulation(c).chunk(2, dim=1)
        qkv = self.self_attn_qkv(self.norm1(x))  # [B, L, 3C]
        q, k, v = qkv.unflatten(2, (3, self.heads_num, -1)).unbind(2)  # each [B, L, H, D]
        attn = refiner_attention(q, k, v, attn_mask)  # [B, L, C]
        x = x + apply_gate(self.self_attn_proj(attn), gate_msa)
        return x + apply_gate(self.mlp(self.norm2(x)), gate_mlp)


class IndividualTokenRefiner(nn.Module):
    """A stack of refiner blocks sharing one attention mask (key `blocks`)."""

    def __init__(
        self, hidden_size: int, heads_num: int, depth: int, dtype: torch.dtype | None = None, device=None
    ):
        super().__init__()
        self.blocks = nn.ModuleList(
            IndividualTokenRefinerBlock(hidden_size, heads_num, dtype=dtype, device=device)
            for _ in range(depth)
        )

    def forward(self, x: torch.Tensor, c: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """x [B, L, C], c [B, C], mask [B, L] (None = all valid) -> [B, L, C]."""
        attn_mask = None if mask is None else refiner_mask(mask.to(x.device))
        for block in self.blocks:
            x = block(x, c, attn_mask)
        return x


class SingleTokenRefiner(nn.Module):
    """`txt_in`: token projection, conditioning from (timestep, masked text mean), then the refiner stack."""

    def __init__(
        self,
        in_channels: int,
        hidden_size: int,
        heads_num: int,
        dtype: torch.dtype | None = None,
        device=None,
    ):
        super().__init__()
        factory = {"dtype": dtype, "device": device}
        self.input_embedder = nn.Linear(in_channels, hidden_size, bias=True, **factory)
        self.t_embedder = TimestepEmbedder(hidden_size, **factory)
        self.c_embedder = TextProjection(in_channels, hidden_size, **factory)
        self.individual_token_refiner = IndividualTokenRefiner(
            hidden_size, heads_num, REFINER_DEPTH, **factory
        )

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Refines the text states.

        Args:
            x: [B, L, in_channels] text states.
            t: [B] timesteps.
            mask: [B, L] 0/1 text mask, or None (plain mean, full attention).

        Returns:
            [B, L, hidden] refined text tokens.
        """
        timestep_aware = self.t_embedder(t)  # [B, C]
        if mask is None:
            context = x.mean(dim=1)
        else:
            mask_float = mask.float().unsqueeze(-1)  # [B, L, 1]; the masked mean is computed in fp32
            context = (x * mask_float).sum(dim=1) / mask_float.sum(dim=1)  # [B, in_channels]
        c = timestep_aware + self.c_embedder(context)  # [B, C]
        x = self.input_embedder(x)  # [B, L, C]
        return self.individual_token_refiner(x, c, mask)
