"""Wan2.1 diffusion transformer (text-to-video and image-to-video) with the official state-dict keys.

References: Wan2.1 wan/modules/model.py (official numerics: float64 sinusoid and RoPE, fp32 residual stream;
the i2v parts: ``img_emb`` projection of the CLIP tokens, cross-attention with ``k_img``/``v_img``/``norm_k_img``,
the conditioning latent concatenated to the noise along channels).

Dtype regime of the official single-GPU run: fp32 weights under ``torch.autocast("cuda", torch.bfloat16)``.
Linear layers then run in bf16, but the time embedding, the modulation, the residual adds and the head run
in fp32 regions, norms upcast to fp32 and RoPE runs in float64, so the residual stream stays fp32 from the
first block on.

The block loop goes through :func:`common_cache.run_blocks`; with ``block_cache = None`` it is a plain loop.
Token preparation (:meth:`WanModel.patchify_and_pad`) and the output stage
(:meth:`WanModel.head_and_unpatchify`) are separate methods so that a sequence-parallel wrapper can shard
after the first and gather before the second.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn as nn

from common_cache import run_blocks, stack_input_unused
from common_cache.teacache import WAN_TIME_EMBEDDING, WAN_TIME_MODULATION

from .attention import attention

ROPE_MAX_POSITIONS = 1024  # rows of the RoPE table per axis, as upstream
ROPE_THETA = 10000.0
MODEL_TYPES = {"t2v": "t2v_cross_attn", "i2v": "i2v_cross_attn"}  # model_type -> cross-attention of its blocks


def fp32_autocast(device: torch.device):
    """Context in which the official code forces fp32 (``amp.autocast(dtype=torch.float32)``).

    On CUDA this is an fp32 autocast region: inside an outer bf16 autocast, Linear layers run in fp32
    again (and bf16 parameters, as under FSDP mixed precision, are upcast). Other devices do not support an
    fp32 autocast dtype; there autocast is switched off, which gives the same result for fp32 weights.
    """
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float32)
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def sinusoidal_embedding_1d(dim: int, position: torch.Tensor) -> torch.Tensor:
    """Sinusoidal timestep embedding ``[cos, sin]`` computed in float64.

    Args:
        dim: embedding width (even).
        position: timesteps ``[B]`` (any numeric dtype).

    Returns:
        ``[B, dim]`` float64.
    """
    half = dim // 2
    position = position.to(torch.float64)
    inv_freq = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=position.device) / half)
    angles = torch.outer(position, inv_freq)  # [B, half]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


def rope_params(max_positions: int, dim: int, theta: float = ROPE_THETA) -> torch.Tensor:
    """Complex rotations ``exp(i * pos * theta^(-2j/dim))`` for one axis.

    Args:
        max_positions: number of positions (table rows).
        dim: real width of this axis (even); the table has ``dim // 2`` complex columns.
        theta: RoPE base.

    Returns:
        ``[max_positions, dim // 2]`` complex128 on the CPU (explicitly, so that building the model on the
        meta device still gives a real table).
    """
    if dim % 2:
        raise ValueError(f"RoPE axis width must be even, got {dim}")
    exponents = torch.arange(0, dim, 2, dtype=torch.float64, device="cpu") / dim
    positions = torch.arange(max_positions, dtype=torch.float64, device="cpu")
    angles = torch.outer(positions, 1.0 / theta**exponents)
    return torch.polar(torch.ones_like(angles), angles)


def rope_axis_split(head_dim: int) -> tuple[int, int, int]:
    """Complex columns per axis (frame, height, width): ``[c - 2*(c//3), c//3, c//3]``, c = head_dim/2."""
    c = head_dim // 2
    return c - 2 * (c // 3), c // 3, c // 3


def build_rope_table(head_dim: int) -> torch.Tensor:
    """The concatenated (frame | height | width) table ``[1024, head_dim // 2]`` complex128."""
    return torch.cat([rope_params(ROPE_MAX_POSITIONS, 2 * cols) for cols in rope_axis_split(head_dim)], dim=1)


def rope_apply(
    x: torch.Tensor, grid_sizes: torch.Tensor, freqs: torch.Tensor, token_offset: int = 0
) -> torch.Tensor:
    """Rotates the first ``f*h*w`` tokens of every sample by its 3D position; padding tokens pass through.

    Args:
        x: queries or keys ``[B, L, N, D]``: tokens ``token_offset .. token_offset + L - 1`` of every sequence.
        grid_sizes: ``[B, 3]`` latent grid (frames, height, width) after patching.
        freqs: RoPE table ``[1024, D // 2]`` complex128 on the device of ``x``.
        token_offset: global index of the first token of ``x``: 0 for a whole sequence, the start of this
            process's chunk under sequence parallelism (rotations always follow global positions).

    Returns:
        ``[B, L, N, D]`` float32 (rotation in float64, as upstream).
    """
    heads, half = x.shape[2], x.shape[3] // 2
    table_f, table_h, table_w = freqs.split(rope_axis_split(2 * half), dim=1)
    rotated = []
    for i, (f, h, w) in enumerate(grid_sizes.tolist()):
        n = min(max(f * h * w - token_offset, 0), x.shape[1])  # tokens of x inside the grid
        pairs = torch.view_as_complex(x[i, :n].to(torch.float64).reshape(n, heads, half, 2))  # [n, N, D/2]
        position = torch.arange(token_offset, token_offset + n, device=freqs.device)  # global, (f, h, w) order
        angles = torch.cat(
            [table_f[position // (h * w)], table_h[position // w % h], table_w[position % w]], dim=-1
        ).unsqueeze(1)  # [n, 1, D/2]
        sample = torch.view_as_real(pairs * angles).flatten(2)  # [n, N, D] float64
        rotated.append(torch.cat([sample, x[i, n:].to(torch.float64)]))
    return torch.stack(rotated).float()


class WanRMSNorm(nn.Module):
    """RMSNorm over the last dim: normalise in fp32, cast back to the input dtype, scale by the weight."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


class WanLayerNorm(nn.LayerNorm):
    """LayerNorm in fp32, cast back to the input dtype (affine only where the checkpoint has weights)."""

    def __init__(self, dim: int, eps: float = 1e-6, elementwise_affine: bool = False):
        super().__init__(dim, eps=eps, elementwise_affine=elementwise_affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type_as(x)


class WanSelfAttention(nn.Module):
    """Self-attention with RMS-normalised q/k (across heads), 3D RoPE and padding keys masked out."""

    def __init__(
        self, dim: int, num_heads: int, window_size=(-1, -1), qk_norm: bool = True, eps: float = 1e-6
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.window_size = tuple(window_size)
        self.qk_norm = qk_norm
        self.eps = eps
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = WanRMSNorm(dim, eps=eps) if qk_norm else nn.Identity()
        self.norm_k = WanRMSNorm(dim, eps=eps) if qk_norm else nn.Identity()
        # Seams, swapped only through profilingdit.seams.Seams (undone together): the self-attention kernel (the
        # signature of `attention`; profiling wraps it to observe q and k, sequence parallelism replaces it), and
        # which chunk of x.shape[1] tokens of every sequence this process holds (RoPE uses global positions).
        self.attention_kernel = attention
        self.shard_index = 0

    def forward(self, x, seq_lens, grid_sizes, freqs):
        """
        Args:
            x: ``[B, L, C]`` modulated hidden states.
            seq_lens: ``[B]`` valid token count per sample (keys beyond it are ignored).
            grid_sizes: ``[B, 3]`` latent grid per sample.
            freqs: RoPE table ``[1024, head_dim // 2]`` complex128.

        Returns:
            ``[B, L, C]``.
        """
        b, s, n, d = *x.shape[:2], self.num_heads, self.head_dim
        q = self.norm_q(self.q(x)).view(b, s, n, d)  # [B, L, N, D]
        k = self.norm_k(self.k(x)).view(b, s, n, d)
        v = self.v(x).view(b, s, n, d)
        offset = self.shard_index * s
        q, k = rope_apply(q, grid_sizes, freqs, offset), rope_apply(k, grid_sizes, freqs, offset)  # fp32
        out = self.attention_kernel(q, k, v, k_lens=seq_lens, window_size=self.window_size)
        return self.o(out.flatten(2))  # [B, L, C]


class WanT2VCrossAttention(WanSelfAttention):
    """Cross-attention from video tokens to the 512 text tokens: no RoPE, and (as upstream) no text mask."""

    def forward(self, x, context, context_lens):
        """
        Args:
            x: ``[B, L, C]`` video tokens.
            context: ``[B, L_text, C]`` embedded text (zero-padded rows included).
            context_lens: ``[B]`` or None (None for text-to-video: every text row is a key).

        Returns:
            ``[B, L, C]``.
        """
        b, n, d = x.shape[0], self.num_heads, self.head_dim
        q = self.norm_q(self.q(x)).view(b, -1, n, d)  # [B, L, N, D]
        k = self.norm_k(self.k(context)).view(b, -1, n, d)  # [B, L_text, N, D]
        v = self.v(context).view(b, -1, n, d)
        return self.o(attention(q, k, v, k_lens=context_lens).flatten(2))  # [B, L, C]


class WanI2VCrossAttention(WanT2VCrossAttention):
    """Cross-attention of the i2v model: the text attention plus a second one over the CLIP image tokens.

    The image tokens come first in the context (``[image tokens | text_len text rows]``); they have their own key
    and value projections (``k_img``, ``v_img``, ``norm_k_img``) and share the query. The two attention outputs
    are summed before the output projection.
    """

    def __init__(self, dim: int, num_heads: int, window_size=(-1, -1), qk_norm: bool = True, eps: float = 1e-6,
                 text_len: int = 512):
        super().__init__(dim, num_heads, window_size, qk_norm, eps)
        self.text_len = text_len
        self.k_img = nn.Linear(dim, dim)
        self.v_img = nn.Linear(dim, dim)
        self.norm_k_img = WanRMSNorm(dim, eps=eps) if qk_norm else nn.Identity()

    def forward(self, x, context, context_lens):
        """
        Args:
            x: ``[B, L, C]`` video tokens.
            context: ``[B, L_img + text_len, C]``: the embedded image tokens, then the embedded text.
            context_lens: ``[B]`` valid text rows, or None (None upstream: every text row is a key).

        Returns:
            ``[B, L, C]``.
        """
        b, n, d = x.shape[0], self.num_heads, self.head_dim
        image_len = context.shape[1] - self.text_len
        if image_len < 1:
            raise ValueError(f"the i2v context has {context.shape[1]} rows: expected image tokens before the "
                             f"{self.text_len} text rows")
        context_img, context = context[:, :image_len], context[:, image_len:]
        q = self.norm_q(self.q(x)).view(b, -1, n, d)  # [B, L, N, D]
        k = self.norm_k(self.k(context)).view(b, -1, n, d)  # [B, text_len, N, D]
        v = self.v(context).view(b, -1, n, d)
        k_img = self.norm_k_img(self.k_img(context_img)).view(b, -1, n, d)  # [B, L_img, N, D]
        v_img = self.v_img(context_img).view(b, -1, n, d)
        image_out = attention(q, k_img, v_img, k_lens=None).flatten(2)  # [B, L, C]
        text_out = attention(q, k, v, k_lens=context_lens).flatten(2)
        return self.o(text_out + image_out)  # [B, L, C]


CROSS_ATTENTION_TYPES = {"t2v_cross_attn": WanT2VCrossAttention, "i2v_cross_attn": WanI2VCrossAttention}


class MLPProj(nn.Module):
    """``img_emb``: CLIP image tokens -> DiT width (LayerNorm, Linear, GELU, Linear, LayerNorm: ``proj.{0,1,3,4}``)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.proj = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, in_dim), nn.GELU(),
                                  nn.Linear(in_dim, out_dim), nn.LayerNorm(out_dim))

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """``[B, L_img, in_dim]`` -> ``[B, L_img, out_dim]``."""
        return self.proj(image_embeds)


class WanAttentionBlock(nn.Module):
    """adaLN block: modulated self-attention, cross-attention to the text, modulated GELU(tanh) MLP."""

    def __init__(
        self,
        cross_attn_type: str,
        dim: int,
        ffn_dim: int,
        num_heads: int,
        window_size=(-1, -1),
        qk_norm: bool = True,
        cross_attn_norm: bool = False,
        eps: float = 1e-6,
        text_len: int = 512,
    ):
        super().__init__()
        if cross_attn_type not in CROSS_ATTENTION_TYPES:
            raise ValueError(
                f"cross_attn_type {cross_attn_type!r} is not supported; allowed: {sorted(CROSS_ATTENTION_TYPES)}"
            )
        self.dim = dim
        self.ffn_dim = ffn_dim
        self.num_heads = num_heads
        self.norm1 = WanLayerNorm(dim, eps)
        self.self_attn = WanSelfAttention(dim, num_heads, window_size, qk_norm, eps)
        self.norm3 = WanLayerNorm(dim, eps, elementwise_affine=True) if cross_attn_norm else nn.Identity()
        if cross_attn_type == "i2v_cross_attn":
            self.cross_attn = WanI2VCrossAttention(dim, num_heads, (-1, -1), qk_norm, eps, text_len)
        else:
            self.cross_attn = WanT2VCrossAttention(dim, num_heads, (-1, -1), qk_norm, eps)
        self.norm2 = WanLayerNorm(dim, eps)
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(ffn_dim, dim)
        )
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(self, x, e, seq_lens, grid_sizes, freqs, context, context_lens):
        """
        Args:
            x: ``[B, L, C]`` hidden states (never modified in place).
            e: ``[B, 6, C]`` fp32 time projection.
            seq_lens: ``[B]`` valid token counts.
            grid_sizes: ``[B, 3]`` latent grids.
            freqs: RoPE table.
            context: ``[B, L_text, C]`` embedded text (i2v: the embedded image tokens first).
            context_lens: None (as upstream).

        Returns:
            ``[B, L, C]`` (fp32 whenever ``e`` is fp32).
        """
        with fp32_autocast(x.device):
            # 6 x [B, 1, C]
            shift1, scale1, gate1, shift2, scale2, gate2 = (self.modulation + e).chunk(6, dim=1)
        y = self.self_attn(self.norm1(x).float() * (1 + scale1) + shift1, seq_lens, grid_sizes, freqs)
        with fp32_autocast(x.device):
            x = x + y * gate1
        x = x + self.cross_attn(self.norm3(x), context, context_lens)
        y = self.ffn(self.norm2(x).float() * (1 + scale2) + shift2)
        with fp32_autocast(x.device):
            x = x + y * gate2
        return x


class Head(nn.Module):
    """Output layer: modulated LayerNorm and a Linear to ``prod(patch_size) * out_dim`` values per token."""

    def __init__(self, dim: int, out_dim: int, patch_size, eps: float = 1e-6):
        super().__init__()
        self.dim = dim
        self.out_dim = out_dim
        self.patch_size = tuple(patch_size)
        self.norm = WanLayerNorm(dim, eps)
        self.head = nn.Linear(dim, math.prod(self.patch_size) * out_dim)
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: ``[B, L, C]`` hidden states.
            e: ``[B, C]`` fp32 time embedding.

        Returns:
            ``[B, L, prod(patch_size) * out_dim]``.
        """
        with fp32_autocast(x.device):
            shift, scale = (self.modulation + e.unsqueeze(1)).chunk(2, dim=1)  # 2 x [B, 1, C]
            return self.head(self.norm(x) * (1 + scale) + shift)


class WanModel(nn.Module):
    """The Wan2.1 DiT; parameter names equal the official checkpoint keys (``t2v`` and ``i2v`` models)."""

    def __init__(
        self,
        model_type: str = "t2v",
        patch_size=(1, 2, 2),
        text_len: int = 512,
        in_dim: int = 16,
        dim: int = 2048,
        ffn_dim: int = 8192,
        freq_dim: int = 256,
        text_dim: int = 4096,
        out_dim: int = 16,
        num_heads: int = 16,
        num_layers: int = 32,
        window_size=(-1, -1),
        qk_norm: bool = True,
        cross_attn_norm: bool = True,
        eps: float = 1e-6,
        image_dim: int = 1280,
    ):
        """
        Args:
            model_type: ``"t2v"``, or ``"i2v"`` (image-to-video: ``in_dim`` 36 = noise 16 + mask 4 + image latent
                16, an ``img_emb`` projection and image key/values in every cross-attention).
            patch_size: (frames, height, width) patch of the Conv3d embedding.
            text_len: text tokens after zero-padding (512 for umT5).
            in_dim / out_dim: latent channels in and out.
            dim: hidden width; ``dim // num_heads`` must be even.
            ffn_dim: MLP hidden width.
            freq_dim: width of the sinusoidal timestep embedding.
            text_dim: width of the text-encoder output.
            num_heads / num_layers: attention heads per block, number of blocks.
            window_size: self-attention window ((-1, -1) = global).
            qk_norm: RMS-normalise queries and keys.
            cross_attn_norm: affine LayerNorm (``norm3``) before the cross-attention.
            eps: epsilon of every norm.
            image_dim: width of the CLIP image tokens (i2v; 1280 for ViT-H/14, not stored in the official
                config.json).
        """
        super().__init__()
        if model_type not in MODEL_TYPES:
            raise ValueError(f"model_type {model_type!r} is not supported; allowed: {list(MODEL_TYPES)}")
        if dim % num_heads or (dim // num_heads) % 2:
            raise ValueError(f"dim ({dim}) / num_heads ({num_heads}) must be an even integer head size")
        self.model_type = model_type
        self.patch_size = tuple(patch_size)
        self.text_len = text_len
        self.in_dim = in_dim
        self.dim = dim
        self.ffn_dim = ffn_dim
        self.freq_dim = freq_dim
        self.text_dim = text_dim
        self.out_dim = out_dim
        self.num_heads = num_heads
        self.num_layers = num_layers
        self.window_size = tuple(window_size)
        self.qk_norm = qk_norm
        self.cross_attn_norm = cross_attn_norm
        self.eps = eps
        self.image_dim = image_dim

        self.patch_embedding = nn.Conv3d(in_dim, dim, kernel_size=self.patch_size, stride=self.patch_size)
        self.text_embedding = nn.Sequential(
            nn.Linear(text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim)
        )
        self.time_embedding = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, dim * 6))
        self.blocks = nn.ModuleList(
            [
                WanAttentionBlock(
                    MODEL_TYPES[model_type], dim, ffn_dim, num_heads, window_size, qk_norm, cross_attn_norm, eps,
                    text_len,
                )
                for _ in range(num_layers)
            ]
        )
        if model_type == "i2v":
            self.img_emb = MLPProj(image_dim, dim)
        self.head = Head(dim, out_dim, self.patch_size, eps)
        # A plain attribute, not a buffer: it is not in the checkpoint, must stay complex128 whatever
        # .to(dtype) the model gets, and is moved to the compute device lazily in forward.
        self.freqs = build_rope_table(dim // num_heads)
        # Set by the cache machinery (common_cache); None runs every block.
        self.block_cache = None
        self.init_weights()

    def stream_group_depths(self) -> dict[str, int]:
        """Stream groups for common_cache: one group of ``num_layers`` blocks."""
        return {"blocks": len(self.blocks)}

    def forward(self, x, t, context, seq_len, clip_fea=None, y=None):
        """
        Args:
            x: list of B latents ``[in_dim, F, H, W]`` (sizes may differ).
            t: ``[B]`` timesteps.
            context: list of B text embeddings ``[L_i, text_dim]``, ``L_i <= text_len`` (trimmed, unpadded).
            seq_len: token count every sample is zero-padded to (>= the largest ``F*H*W / prod(patch_size)``).
            clip_fea: i2v only: CLIP image tokens ``[B, L_img, image_dim]`` (257 x 1280 for ViT-H/14).
            y: i2v only: list of B conditioning latents ``[in_dim - out_dim, F, H, W]`` (frame mask, then the
                VAE latent of the first frame followed by zeros), concatenated to ``x`` along channels.

        Returns:
            list of B fp32 tensors ``[out_dim, F, H, W]``.
        """
        x = self.condition_latents(x, clip_fea, y)  # B x [in_dim, F, H, W]
        e, e0 = self.embed_time(t)  # [B, C], [B, 6, C]
        if stack_input_unused(self.block_cache, "blocks"):
            # The cache returns the stack's forecast output on this step whatever its input: skip the patch and
            # text embeddings (the empty placeholder only tells it the device and dtype).
            weight = self.patch_embedding.weight
            tokens = run_blocks(self.block_cache, "blocks", self.blocks, weight.new_empty(len(x), 0, self.dim))
            return self.head_and_unpatchify(tokens, e, self.grid_sizes(x))
        tokens, seq_lens, grid_sizes = self.patchify_and_pad(x, seq_len)  # [B, seq_len, C]
        context = self.embed_text(context)  # [B, text_len, C]
        if clip_fea is not None:
            context = torch.cat([self.img_emb(clip_fea), context], dim=1)  # [B, L_img + text_len, C]
        tokens = run_blocks(
            self.block_cache,
            "blocks",
            self.blocks,
            tokens,
            # TeaCache's indicators; run_blocks never passes them to the blocks
            cache_signals={WAN_TIME_EMBEDDING: e, WAN_TIME_MODULATION: e0},
            e=e0,
            seq_lens=seq_lens,
            grid_sizes=grid_sizes,
            freqs=self.rope_table(tokens.device),
            context=context,
            context_lens=None,
        )
        return self.head_and_unpatchify(tokens, e, grid_sizes)

    def condition_latents(self, x: list[torch.Tensor], clip_fea, y) -> list[torch.Tensor]:
        """Checks the image conditioning against the model type; i2v: ``cat([x_i, y_i])`` along channels."""
        if self.model_type == "t2v":
            if clip_fea is not None or y is not None:
                raise ValueError("clip_fea and y are image-to-video inputs; this WanModel is text-to-video only")
            return x
        if clip_fea is None or y is None:
            raise ValueError("the i2v WanModel needs clip_fea (CLIP image tokens) and y (conditioning latents)")
        if len(y) != len(x) or clip_fea.shape[0] != len(x):
            raise ValueError(f"{len(x)} latents but {len(y)} conditioning latents and {clip_fea.shape[0]} images")
        return [torch.cat([u, v]) for u, v in zip(x, y)]

    def rope_table(self, device: torch.device) -> torch.Tensor:
        """The RoPE table on ``device`` (moved once and kept there)."""
        if self.freqs.device != device:
            self.freqs = self.freqs.to(device)
        return self.freqs

    def patchify_and_pad(self, x: list[torch.Tensor], seq_len: int):
        """Patch-embeds every latent and zero-pads its tokens to ``seq_len``.

        Args:
            x: list of B latents ``[in_dim, F, H, W]``.
            seq_len: padded token count.

        Returns:
            tokens ``[B, seq_len, C]``, seq_lens ``[B]`` (int64, CPU), grid_sizes ``[B, 3]`` (int64, CPU).
        """
        embedded = [self.patch_embedding(u.unsqueeze(0)) for u in x]  # B x [1, C, f, h, w]
        grid_sizes = self.grid_sizes(x)
        embedded = [u.flatten(2).transpose(1, 2) for u in embedded]  # B x [1, f*h*w, C]
        seq_lens = torch.tensor([u.size(1) for u in embedded], dtype=torch.long)
        if int(seq_lens.max()) > seq_len:
            raise ValueError(
                f"seq_len ({seq_len}) is smaller than the token count of a sample ({seq_lens.tolist()})"
            )
        tokens = torch.cat(
            [torch.cat([u, u.new_zeros(1, seq_len - u.size(1), u.size(2))], dim=1) for u in embedded]
        )  # [B, seq_len, C]
        return tokens, seq_lens, grid_sizes

    def grid_sizes(self, x: list[torch.Tensor]) -> torch.Tensor:
        """The token grid ``[B, 3]`` (int64, CPU) of each latent ``[C, F, H, W]``: ``(F, H, W) // patch_size``
        (the patch embedding's stride equals its kernel)."""
        return torch.tensor([[n // p for n, p in zip(u.shape[1:], self.patch_size)] for u in x], dtype=torch.long)

    def embed_time(self, t: torch.Tensor):
        """Timestep -> fp32 embedding ``e`` ``[B, C]`` and the block modulation input ``e0`` ``[B, 6, C]``."""
        device = self.patch_embedding.weight.device
        with fp32_autocast(device):
            e = self.time_embedding(sinusoidal_embedding_1d(self.freq_dim, t.to(device)).float())  # [B, C]
            e0 = self.time_projection(e).unflatten(1, (6, self.dim))  # [B, 6, C]
        return e, e0

    def embed_text(self, context: list[torch.Tensor]) -> torch.Tensor:
        """Zero-pads every text embedding to ``text_len`` rows and projects it: ``[B, text_len, C]``."""
        for u in context:
            if u.size(0) > self.text_len:
                raise ValueError(
                    f"a text context has {u.size(0)} tokens; at most text_len={self.text_len} allowed"
                )
        padded = torch.stack(
            [torch.cat([u, u.new_zeros(self.text_len - u.size(0), u.size(1))]) for u in context]
        )  # [B, text_len, text_dim]
        return self.text_embedding(padded)

    def head_and_unpatchify(self, tokens: torch.Tensor, e: torch.Tensor, grid_sizes: torch.Tensor):
        """Output head, then unpatchify each sample's valid tokens.

        Args:
            tokens: ``[B, L, C]`` hidden states leaving the last block.
            e: ``[B, C]`` fp32 time embedding.
            grid_sizes: ``[B, 3]`` latent grids.

        Returns:
            list of B fp32 tensors ``[out_dim, F, H, W]``.
        """
        out = self.head(tokens, e)  # [B, L, prod(patch) * out_dim]
        return [u.float() for u in self.unpatchify(out, grid_sizes)]

    def unpatchify(self, x: torch.Tensor, grid_sizes: torch.Tensor) -> list[torch.Tensor]:
        """Per-token outputs ordered (pt, ph, pw, c), channel fastest -> list of ``[out_dim, F, H, W]``."""
        c, (pt, ph, pw) = self.out_dim, self.patch_size
        videos = []
        for u, (f, h, w) in zip(x, grid_sizes.tolist()):
            u = u[: f * h * w].view(f, h, w, pt, ph, pw, c)
            u = u.permute(6, 0, 3, 1, 4, 2, 5)  # [c, f, pt, h, ph, w, pw]
            videos.append(u.reshape(c, f * pt, h * ph, w * pw))
        return videos

    @torch.no_grad()
    def init_weights(self) -> None:
        """Upstream initialisation: Xavier-uniform Linear/Conv weights, zero biases, N(0, 0.02) embedding
        MLPs, a zero output Linear; also resets norms and modulations (needed after ``to_empty``)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.LayerNorm, WanRMSNorm)) and module.weight is not None:
                nn.init.ones_(module.weight)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (WanAttentionBlock, Head)):
                module.modulation.copy_(torch.randn_like(module.modulation) / module.dim**0.5)
        nn.init.xavier_uniform_(self.patch_embedding.weight.flatten(1))
        nn.init.zeros_(self.patch_embedding.bias)
        for module in (*self.text_embedding, *self.time_embedding):
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
        nn.init.zeros_(self.head.head.weight)
