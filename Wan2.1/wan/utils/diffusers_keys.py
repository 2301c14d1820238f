"""Official Wan2.1 DiT keys <-> diffusers ``WanTransformer3DModel`` keys, and the matching diffusers config.

References: diffusers scripts/convert_wan_to_diffusers.py (the renaming rules, text-to-video and i2v parts).

Both model types need only renames (no splits or concatenations). The rules are written per module path,
so a key no rule covers raises instead of passing through silently. Official ``norm3`` (the affine
LayerNorm before the cross-attention) is diffusers ``norm2``, and official ``norm2`` (parameter-free) is
diffusers ``norm3``.
"""

from __future__ import annotations

from collections.abc import Mapping

# Top-level module paths (official -> diffusers).
_TOP_LEVEL = {
    "patch_embedding": "patch_embedding",
    "text_embedding.0": "condition_embedder.text_embedder.linear_1",
    "text_embedding.2": "condition_embedder.text_embedder.linear_2",
    "time_embedding.0": "condition_embedder.time_embedder.linear_1",
    "time_embedding.2": "condition_embedder.time_embedder.linear_2",
    "time_projection.1": "condition_embedder.time_proj",
    "head.head": "proj_out",
    # i2v: the CLIP-token projection
    "img_emb.proj.0": "condition_embedder.image_embedder.norm1",
    "img_emb.proj.1": "condition_embedder.image_embedder.ff.net.0.proj",
    "img_emb.proj.3": "condition_embedder.image_embedder.ff.net.2",
    "img_emb.proj.4": "condition_embedder.image_embedder.norm2",
}
# Bare parameters (not module.weight/bias).
_TOP_LEVEL_PARAMS = {"head.modulation": "scale_shift_table"}
_BLOCK_PARAMS = {"modulation": "scale_shift_table"}

# Module paths inside ``blocks.N`` (official -> diffusers).
_IN_BLOCK = {
    "self_attn.q": "attn1.to_q",
    "self_attn.k": "attn1.to_k",
    "self_attn.v": "attn1.to_v",
    "self_attn.o": "attn1.to_out.0",
    "self_attn.norm_q": "attn1.norm_q",
    "self_attn.norm_k": "attn1.norm_k",
    "cross_attn.q": "attn2.to_q",
    "cross_attn.k": "attn2.to_k",
    "cross_attn.v": "attn2.to_v",
    "cross_attn.o": "attn2.to_out.0",
    "cross_attn.norm_q": "attn2.norm_q",
    "cross_attn.norm_k": "attn2.norm_k",
    "cross_attn.k_img": "attn2.add_k_proj",  # i2v: image keys / values
    "cross_attn.v_img": "attn2.add_v_proj",
    "cross_attn.norm_k_img": "attn2.norm_added_k",
    "norm1": "norm1",
    "norm2": "norm3",
    "norm3": "norm2",
    "ffn.0": "ffn.net.0.proj",
    "ffn.2": "ffn.net.2",
}


def _invert(table: Mapping[str, str]) -> dict[str, str]:
    return {new: old for old, new in table.items()}


def _rename(key: str, top: Mapping, top_params: Mapping, in_block: Mapping, block_params: Mapping) -> str:
    if key in top_params:
        return top_params[key]
    parts = key.split(".")
    if parts[0] == "blocks" and len(parts) >= 3 and parts[1].isdigit():
        prefix, rest = f"blocks.{parts[1]}.", ".".join(parts[2:])
        if rest in block_params:
            return prefix + block_params[rest]
        module, _, param = rest.rpartition(".")
        if module in in_block:
            return f"{prefix}{in_block[module]}.{param}"
    else:
        module, _, param = key.rpartition(".")
        if module in top:
            return f"{top[module]}.{param}"
    raise ValueError(f"no rename rule for key {key!r}")


def official_to_diffusers_key(key: str) -> str:
    """Renames one official WanModel key (e.g. ``blocks.3.self_attn.q.weight``) to its diffusers name.

    Raises:
        ValueError: the key is not a (t2v or i2v) WanModel key.
    """
    return _rename(key, _TOP_LEVEL, _TOP_LEVEL_PARAMS, _IN_BLOCK, _BLOCK_PARAMS)


def diffusers_to_official_key(key: str) -> str:
    """Inverse of :func:`official_to_diffusers_key`."""
    return _rename(
        key, _invert(_TOP_LEVEL), _invert(_TOP_LEVEL_PARAMS), _invert(_IN_BLOCK), _invert(_BLOCK_PARAMS)
    )


def official_to_diffusers(state_dict: Mapping) -> dict:
    """Renames every key of an official state dict (tensors are shared, not copied)."""
    return {official_to_diffusers_key(key): value for key, value in state_dict.items()}


def diffusers_to_official(state_dict: Mapping) -> dict:
    """Renames every key of a diffusers ``WanTransformer3DModel`` state dict to the official names."""
    return {diffusers_to_official_key(key): value for key, value in state_dict.items()}


def diffusers_config(
    dim: int,
    num_heads: int,
    ffn_dim: int,
    num_layers: int,
    in_dim: int = 16,
    out_dim: int = 16,
    freq_dim: int = 256,
    text_dim: int = 4096,
    patch_size=(1, 2, 2),
    qk_norm: bool = True,
    cross_attn_norm: bool = True,
    eps: float = 1e-6,
    model_type: str = "t2v",
    image_dim: int = 1280,
    **_ignored,
) -> dict:
    """Keyword arguments for a ``diffusers.WanTransformer3DModel`` equal to an official t2v or i2v config.

    i2v adds ``image_dim`` (the CLIP token width) and ``added_kv_proj_dim = dim`` (the image key/value
    projections). Extra official fields (``text_len``, ``window_size``) are accepted and ignored.
    """
    image = {"image_dim": image_dim, "added_kv_proj_dim": dim} if model_type == "i2v" else {}
    return {
        **image,
        "patch_size": tuple(patch_size),
        "num_attention_heads": num_heads,
        "attention_head_dim": dim // num_heads,
        "in_channels": in_dim,
        "out_channels": out_dim,
        "text_dim": text_dim,
        "freq_dim": freq_dim,
        "ffn_dim": ffn_dim,
        "num_layers": num_layers,
        "cross_attn_norm": cross_attn_norm,
        "qk_norm": "rms_norm_across_heads" if qk_norm else None,
        "eps": eps,
    }
