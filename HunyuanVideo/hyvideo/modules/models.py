"""HunyuanVideo diffusion transformer `HYVideoDiffusionTransformer` (double- then single-stream DiT).

References: Tencent/HunyuanVideo hyvideo/modules/models.py (official keys, numerics and config registry).

The model holds exactly the official 856 state-dict keys (official-models.md A.4), so official checkpoints
load with `strict=True`. Numerics follow A.5 op by op; the dtype regime is upstream's: parameters in the model
dtype (bf16 officially) except `final_layer.linear` (fp32), the caller wrapping the forward in
`torch.autocast` on GPU.

The block stacks run through `common_cache.run_blocks`, which is a plain loop while `block_cache` is None.
"""

import functools

import torch
import torch.nn as nn

from common_cache import run_blocks
from common_cache.teacache import HUNYUAN_MODULATED_INPUT

from .activation_layers import get_activation_layer
from .attention import TextSegments, attention, check_attention_backend
from .embed_layers import PatchEmbed, TimestepEmbedder
from .mlp_layers import MLP, FinalLayer, MLPEmbedder
from .modulate_layers import ModulateDiT, apply_gate, modulate
from .norm_layers import qk_norm_layer
from .posemb_layers import apply_rotary_emb
from .token_refiner import SingleTokenRefiner

# Official transformer configs (`--model`); every other constructor argument keeps its default.
HUNYUAN_VIDEO_CONFIG = {
    "HYVideo-T/2": {
        "mm_double_blocks_depth": 20,
        "mm_single_blocks_depth": 40,
        "rope_dim_list": [16, 56, 56],
        "hidden_size": 3072,
        "heads_num": 24,
        "mlp_width_ratio": 4,
        "guidance_embed": False,
    },
    "HYVideo-T/2-cfgdistill": {
        "mm_double_blocks_depth": 20,
        "mm_single_blocks_depth": 40,
        "rope_dim_list": [16, 56, 56],
        "hidden_size": 3072,
        "heads_num": 24,
        "mlp_width_ratio": 4,
        "guidance_embed": True,
    },
}


def official_config(model_name: str) -> dict:
    """Full constructor arguments of an official model: the registry entry over the official defaults
    (patch [1, 2, 2], 16 latent channels in and out, qkv bias, RMS qk-norm, text dims 4096 / 768).

    Args:
        model_name: a key of `HUNYUAN_VIDEO_CONFIG` (`--model`).

    Returns:
        Keyword arguments for `HYVideoDiffusionTransformer` (without dtype / device).
    """
    if model_name not in HUNYUAN_VIDEO_CONFIG:
        raise ValueError(f"--model: {model_name!r} is not supported; allowed: {sorted(HUNYUAN_VIDEO_CONFIG)}")
    defaults = {
        "patch_size": [1, 2, 2], "in_channels": 16, "out_channels": 16, "qkv_bias": True, "qk_norm": True,
        "text_states_dim": 4096, "text_states_dim_2": 768,
    }  # fmt: skip
    return {**defaults, **HUNYUAN_VIDEO_CONFIG[model_name]}


def split_qkv(qkv: torch.Tensor, heads_num: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fused projection [B, L, 3*H*D] -> q, k, v, each [B, L, H, D] (rows ordered (3, heads, head_dim))."""
    return qkv.unflatten(2, (3, heads_num, -1)).unbind(2)


class MMDoubleStreamBlock(nn.Module):
    """Double-stream block: image and text keep separate weights and meet in one joint attention."""

    def __init__(
        self,
        hidden_size: int,
        heads_num: int,
        mlp_width_ratio: float,
        qk_norm: bool = True,
        qkv_bias: bool = False,
        dtype: torch.dtype | None = None,
        device=None,
    ):
        super().__init__()
        factory = {"dtype": dtype, "device": device}
        self.heads_num = heads_num
        self.attention_kernel = attention  # the seam: (q, k, v, segments) -> [B, L, C] (see attention.py)
        head_dim = hidden_size // heads_num
        mlp_hidden = int(hidden_size * mlp_width_ratio)
        gelu_tanh = get_activation_layer("gelu_tanh")

        self.img_mod = ModulateDiT(hidden_size, factor=6, **factory)
        self.img_norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6, **factory)
        self.img_attn_qkv = nn.Linear(hidden_size, hidden_size * 3, bias=qkv_bias, **factory)
        self.img_attn_q_norm = qk_norm_layer(head_dim, qk_norm, **factory)
        self.img_attn_k_norm = qk_norm_layer(head_dim, qk_norm, **factory)
        self.img_attn_proj = nn.Linear(hidden_size, hidden_size, bias=qkv_bias, **factory)
        self.img_norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6, **factory)
        self.img_mlp = MLP(hidden_size, mlp_hidden, gelu_tanh, **factory)

        self.txt_mod = ModulateDiT(hidden_size, factor=6, **factory)
        self.txt_norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6, **factory)
        self.txt_attn_qkv = nn.Linear(hidden_size, hidden_size * 3, bias=qkv_bias, **factory)
        self.txt_attn_q_norm = qk_norm_layer(head_dim, qk_norm, **factory)
        self.txt_attn_k_norm = qk_norm_layer(head_dim, qk_norm, **factory)
        self.txt_attn_proj = nn.Linear(hidden_size, hidden_size, bias=qkv_bias, **factory)
        self.txt_norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6, **factory)
        self.txt_mlp = MLP(hidden_size, mlp_hidden, gelu_tanh, **factory)

    def forward(
        self,
        img: torch.Tensor,
        txt: torch.Tensor,
        vec: torch.Tensor,
        segments: TextSegments,
        freqs_cis: tuple[torch.Tensor, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One double-stream block.

        Args:
            img: [B, N_img, C] image tokens.
            txt: [B, N_txt, C] text tokens.
            vec: [B, C] conditioning vector.
            segments: text layout for the two-segment attention.
            freqs_cis: RoPE (cos, sin), each [N_img, D].

        Returns:
            (img [B, N_img, C], txt [B, N_txt, C]).
        """
        # Each: shift1, scale1, gate1, shift2, scale2, gate2 ([B, C] apiece).
        img_mods = self.img_mod(vec).chunk(6, dim=-1)
        txt_mods = self.txt_mod(vec).chunk(6, dim=-1)
        img_q, img_k, img_v = _modulated_qkv(
            img, img_mods, self.img_norm1, self.img_attn_qkv, self.img_attn_q_norm, self.img_attn_k_norm,
            self.heads_num,
        )  # fmt: skip
        img_q, img_k = apply_rotary_emb(img_q, img_k, freqs_cis)  # RoPE on image tokens only
        txt_q, txt_k, txt_v = _modulated_qkv(
            txt, txt_mods, self.txt_norm1, self.txt_attn_qkv, self.txt_attn_q_norm, self.txt_attn_k_norm,
            self.heads_num,
        )  # fmt: skip
        q = torch.cat((img_q, txt_q), dim=1)  # [B, N_img + N_txt, H, D], image first
        k = torch.cat((img_k, txt_k), dim=1)
        v = torch.cat((img_v, txt_v), dim=1)
        attn = self.attention_kernel(q, k, v, segments)  # [B, N_img + N_txt, C]
        img_attn, txt_attn = attn[:, : img.shape[1]], attn[:, img.shape[1] :]
        img = _gated_residuals(img, img_attn, img_mods, self.img_attn_proj, self.img_norm2, self.img_mlp)
        txt = _gated_residuals(txt, txt_attn, txt_mods, self.txt_attn_proj, self.txt_norm2, self.txt_mlp)
        return img, txt

    def modulated_image_input(self, img: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
        """TeaCache's indicator: the image tokens after norm1 and the first shift/scale. [B, N_img, C]."""
        shift1, scale1 = self.img_mod(vec).chunk(6, dim=-1)[:2]
        return modulate(self.img_norm1(img), shift=shift1, scale=scale1)


def _modulated_qkv(x, mods, norm1, qkv_proj, q_norm, k_norm, heads_num: int):
    """Modulated pre-norm -> fused qkv -> q/k RMSNorm, cast back to v's dtype.

    x [B, L, C] -> q, k, v, each [B, L, H, D].
    """
    shift1, scale1 = mods[0], mods[1]
    q, k, v = split_qkv(qkv_proj(modulate(norm1(x), shift=shift1, scale=scale1)), heads_num)
    return q_norm(q).to(v), k_norm(k).to(v), v


def _gated_residuals(x, attn, mods, attn_proj, norm2, mlp) -> torch.Tensor:
    """x + gate1 * proj(attn), then + gate2 * MLP(modulated LN). x, attn [B, L, C] -> [B, L, C]."""
    _, _, gate1, shift2, scale2, gate2 = mods
    x = x + apply_gate(attn_proj(attn), gate=gate1)
    return x + apply_gate(mlp(modulate(norm2(x), shift=shift2, scale=scale2)), gate=gate2)


class MMSingleStreamBlock(nn.Module):
    """Single-stream block over [image ; text]: parallel attention and MLP branches (fused linear1/2)."""

    def __init__(
        self,
        hidden_size: int,
        heads_num: int,
        mlp_width_ratio: float = 4.0,
        qk_norm: bool = True,
        dtype: torch.dtype | None = None,
        device=None,
    ):
        super().__init__()
        factory = {"dtype": dtype, "device": device}
        self.hidden_size = hidden_size
        self.heads_num = heads_num
        self.attention_kernel = attention  # the seam: (q, k, v, segments) -> [B, L, C] (see attention.py)
        head_dim = hidden_size // heads_num
        self.mlp_hidden_dim = int(hidden_size * mlp_width_ratio)
        # linear1 rows: [q ‖ k ‖ v ‖ mlp-in]; linear2 input: [attention ‖ GELU(mlp)].
        self.linear1 = nn.Linear(hidden_size, hidden_size * 3 + self.mlp_hidden_dim, **factory)
        self.linear2 = nn.Linear(hidden_size + self.mlp_hidden_dim, hidden_size, **factory)
        self.q_norm = qk_norm_layer(head_dim, qk_norm, **factory)
        self.k_norm = qk_norm_layer(head_dim, qk_norm, **factory)
        self.pre_norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6, **factory)
        self.mlp_act = get_activation_layer("gelu_tanh")()
        self.modulation = ModulateDiT(hidden_size, factor=3, **factory)

    def forward(
        self,
        x: torch.Tensor,
        vec: torch.Tensor,
        segments: TextSegments,
        freqs_cis: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        """One single-stream block.

        Args:
            x: [B, N_img + N_txt, C] joint tokens, image first.
            vec: [B, C] conditioning vector.
            segments: text layout (its `txt_len` separates image and text).
            freqs_cis: RoPE (cos, sin), each [N_img, D].

        Returns:
            [B, N_img + N_txt, C].
        """
        mod_shift, mod_scale, mod_gate = self.modulation(vec).chunk(3, dim=-1)  # each [B, C]
        x_mod = modulate(self.pre_norm(x), shift=mod_shift, scale=mod_scale)
        qkv, mlp = torch.split(self.linear1(x_mod), [3 * self.hidden_size, self.mlp_hidden_dim], dim=-1)
        q, k, v = split_qkv(qkv, self.heads_num)  # each [B, L, H, D]
        q = self.q_norm(q).to(v)
        k = self.k_norm(k).to(v)
        txt_len = segments.txt_len
        # RoPE on the image tokens only.
        img_q, img_k = apply_rotary_emb(q[:, :-txt_len], k[:, :-txt_len], freqs_cis)
        q = torch.cat((img_q, q[:, -txt_len:]), dim=1)
        k = torch.cat((img_k, k[:, -txt_len:]), dim=1)
        attn = self.attention_kernel(q, k, v, segments)  # [B, L, C]
        output = self.linear2(torch.cat((attn, self.mlp_act(mlp)), 2))
        return x + apply_gate(output, gate=mod_gate)


class HYVideoDiffusionTransformer(nn.Module):
    """HunyuanVideo transformer backbone (official configs: `HUNYUAN_VIDEO_CONFIG`).

    Args:
        patch_size: (pt, ph, pw) of the Conv3d patch embedding.
        in_channels: latent channels (16).
        out_channels: predicted channels (defaults to `in_channels`).
        hidden_size: model width (3072).
        heads_num: attention heads (24); head_dim = hidden_size / heads_num.
        mlp_width_ratio: MLP hidden size / hidden_size in the double and single blocks (the token
            refiner always uses 4).
        mm_double_blocks_depth: number of double-stream blocks (20).
        mm_single_blocks_depth: number of single-stream blocks (40).
        rope_dim_list: rotary dims per (t, h, w) axis; must sum to head_dim.
        qkv_bias: bias of the double blocks' qkv and attention-output linears (the refiner's always have one).
        qk_norm: RMSNorm over head_dim on q and k in the double and single blocks.
        guidance_embed: adds `guidance_in` (the cfg-distilled model).
        text_states_dim: LLM hidden size (4096).
        text_states_dim_2: pooled CLIP size (768).
        dtype: parameter dtype (bf16 officially); `final_layer.linear` always stays fp32.
        device: parameter device ("meta" builds without memory).
    """

    def __init__(
        self,
        patch_size: tuple[int, int, int] | list[int] = (1, 2, 2),
        in_channels: int = 16,
        out_channels: int | None = None,
        hidden_size: int = 3072,
        heads_num: int = 24,
        mlp_width_ratio: float = 4.0,
        mm_double_blocks_depth: int = 20,
        mm_single_blocks_depth: int = 40,
        rope_dim_list: tuple[int, ...] | list[int] = (16, 56, 56),
        qkv_bias: bool = True,
        qk_norm: bool = True,
        guidance_embed: bool = False,
        text_states_dim: int = 4096,
        text_states_dim_2: int = 768,
        dtype: torch.dtype | None = None,
        device=None,
    ):
        super().__init__()
        _check_shape_args(patch_size, hidden_size, heads_num, rope_dim_list)
        self.patch_size = list(patch_size)
        self.in_channels = in_channels
        self.out_channels = in_channels if out_channels is None else out_channels
        self.hidden_size = hidden_size
        self.heads_num = heads_num
        self.rope_dim_list = list(rope_dim_list)
        self.guidance_embed = guidance_embed
        self.config = {
            "patch_size": self.patch_size, "in_channels": in_channels, "out_channels": self.out_channels,
            "hidden_size": hidden_size, "heads_num": heads_num, "mlp_width_ratio": mlp_width_ratio,
            "mm_double_blocks_depth": mm_double_blocks_depth,
            "mm_single_blocks_depth": mm_single_blocks_depth,
            "rope_dim_list": self.rope_dim_list, "qkv_bias": qkv_bias, "qk_norm": qk_norm,
            "guidance_embed": guidance_embed, "text_states_dim": text_states_dim,
            "text_states_dim_2": text_states_dim_2,
        }  # fmt: skip
        factory = {"dtype": dtype, "device": device}

        self.img_in = PatchEmbed(self.patch_size, in_channels, hidden_size, **factory)
        self.txt_in = SingleTokenRefiner(text_states_dim, hidden_size, heads_num, **factory)
        self.time_in = TimestepEmbedder(hidden_size, **factory)
        self.vector_in = MLPEmbedder(text_states_dim_2, hidden_size, **factory)
        self.guidance_in = TimestepEmbedder(hidden_size, **factory) if guidance_embed else None
        self.double_blocks = nn.ModuleList(
            MMDoubleStreamBlock(hidden_size, heads_num, mlp_width_ratio, qk_norm, qkv_bias, **factory)
            for _ in range(mm_double_blocks_depth)
        )
        self.single_blocks = nn.ModuleList(
            MMSingleStreamBlock(hidden_size, heads_num, mlp_width_ratio, qk_norm, **factory)
            for _ in range(mm_single_blocks_depth)
        )
        self.final_layer = FinalLayer(hidden_size, self.patch_size, self.out_channels, **factory)
        # Attached by the common_cache machinery (a plain attribute, not a module: it holds no weights).
        # None = the block stacks run as plain loops, bit-identical to the uncached model.
        self.block_cache = None

    def stream_group_depths(self) -> dict[str, int]:
        """Stream group name -> number of blocks, for the cache engine."""
        return {"double": len(self.double_blocks), "single": len(self.single_blocks)}

    def set_attention_backend(self, backend: str) -> None:
        """Selects the joint-attention kernel of every block: "auto", "flash" or "sdpa"."""
        check_attention_backend(backend)
        kernel = attention if backend == "auto" else functools.partial(attention, backend=backend)
        for block in [*self.double_blocks, *self.single_blocks]:
            block.attention_kernel = kernel

    def token_grid(self, x: torch.Tensor) -> tuple[int, int, int]:
        """(tt, th, tw) token grid of a latent x [B, C, t, h, w]."""
        _, _, t, h, w = x.shape
        return t // self.patch_size[0], h // self.patch_size[1], w // self.patch_size[2]

    def embed_image(self, x: torch.Tensor) -> torch.Tensor:
        """Latent [B, C, t, h, w] -> image tokens [B, tt*th*tw, hidden].

        Sequence-parallel seam: a parallel wrapper shards the image tokens here.
        """
        return self.img_in(x)

    def embed_conditions(
        self, t: torch.Tensor, text_states_2: torch.Tensor, guidance: torch.Tensor | None
    ) -> torch.Tensor:
        """Conditioning vector [B, hidden] = time + pooled text (+ guidance), summed in upstream's order."""
        vec = self.time_in(t)
        vec = vec + self.vector_in(text_states_2)
        if self.guidance_embed:
            if guidance is None:
                raise ValueError("guidance is None, but this model has guidance_embed=True: pass it [B]")
            vec = vec + self.guidance_in(guidance)
        return vec

    def unpatchify(self, x: torch.Tensor, tt: int, th: int, tw: int) -> torch.Tensor:
        """Tokens [B, tt*th*tw, C*pt*ph*pw] -> latent [B, C, tt*pt, th*ph, tw*pw].

        The channel is the slowest of the per-token outputs. Sequence-parallel seam: a parallel wrapper
        gathers the image tokens before this.
        """
        pt, ph, pw = self.patch_size
        if x.shape[1] != tt * th * tw:
            raise ValueError(f"unpatchify got {x.shape[1]} tokens for a {tt}x{th}x{tw} grid")
        x = x.reshape(x.shape[0], tt, th, tw, self.out_channels, pt, ph, pw)
        x = x.permute(0, 4, 1, 5, 2, 6, 3, 7)  # [B, C, tt, pt, th, ph, tw, pw]
        return x.reshape(x.shape[0], self.out_channels, tt * pt, th * ph, tw * pw)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        text_states: torch.Tensor,
        text_mask: torch.Tensor | None = None,
        text_states_2: torch.Tensor | None = None,
        freqs_cos: torch.Tensor | None = None,
        freqs_sin: torch.Tensor | None = None,
        guidance: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> dict[str, torch.Tensor] | torch.Tensor:
        """Predicts the flow velocity.

        Args:
            x: [B, C_in, t, h, w] latent.
            t: [B] timesteps in [0, 1000].
            text_states: [B, N_txt, text_states_dim] LLM states.
            text_mask: [B, N_txt] 0/1, right-padded (None = all valid).
            text_states_2: [B, text_states_dim_2] pooled CLIP embedding.
            freqs_cos, freqs_sin: RoPE tables [tt*th*tw, head_dim] (`get_rotary_pos_embed`).
            guidance: [B] embedded guidance (cfg-distilled model), e.g. 6016.0.
            return_dict: return {"x": out} as upstream, else the tensor.

        Returns:
            {"x": [B, C_out, t, h, w]} or the tensor itself.
        """
        tt, th, tw = self.token_grid(x)
        vec = self.embed_conditions(t, text_states_2, guidance)  # [B, C]
        img = self.embed_image(x)  # [B, N_img, C]
        txt = self.txt_in(text_states, t, text_mask)  # [B, N_txt, C]
        kwargs = {
            "vec": vec,
            "segments": TextSegments.from_mask(text_mask, txt.shape[0], txt.shape[1]),
            "freqs_cis": self._rope_tables(freqs_cos, freqs_sin, img),
        }
        # TeaCache's indicator, computed only by a cache that asks for it (run_blocks never passes it to the blocks).
        modulated = functools.partial(self.double_blocks[0].modulated_image_input, img, vec)
        signals = {HUNYUAN_MODULATED_INPUT: modulated}
        img, txt = run_blocks(self.block_cache, "double", self.double_blocks, (img, txt), cache_signals=signals,
                              **kwargs)
        x = torch.cat((img, txt), 1)  # [B, N_img + N_txt, C]
        x = run_blocks(self.block_cache, "single", self.single_blocks, x, **kwargs)
        img = x[:, : img.shape[1]]  # [B, N_img, C]
        out = self.unpatchify(self.final_layer(img, vec), tt, th, tw)  # [B, C_out, t, h, w]
        return {"x": out} if return_dict else out

    def _rope_tables(self, freqs_cos, freqs_sin, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Checks the RoPE tables against the image tokens; moves them to the tokens' device (dtype kept)."""
        if freqs_cos is None or freqs_sin is None:
            raise ValueError("freqs_cos and freqs_sin are required: build them with get_rotary_pos_embed()")
        expected = (img.shape[1], self.hidden_size // self.heads_num)
        for name, table in (("freqs_cos", freqs_cos), ("freqs_sin", freqs_sin)):
            if tuple(table.shape) != expected:
                raise ValueError(
                    f"{name} has shape {tuple(table.shape)}; expected [image tokens, head_dim] = {expected}"
                )
        return freqs_cos.to(img.device), freqs_sin.to(img.device)


def _check_shape_args(patch_size, hidden_size: int, heads_num: int, rope_dim_list) -> None:
    if len(patch_size) != 3:
        raise ValueError(f"patch_size={list(patch_size)} must have 3 entries (pt, ph, pw)")
    if hidden_size % heads_num != 0:
        raise ValueError(f"hidden_size={hidden_size} must be divisible by heads_num={heads_num}")
    head_dim = hidden_size // heads_num
    if sum(rope_dim_list) != head_dim:
        raise ValueError(f"rope_dim_list={list(rope_dim_list)} must sum to head_dim={head_dim}")
