"""Key conversion between the official HunyuanVideo transformer and diffusers' HunyuanVideo transformer.

References: diffusers scripts/convert_hunyuan_video_to_diffusers.py (the mapping, as spelled out in
official-models.md C.1); target class `HunyuanVideoTransformer3DModel`.

Every official parameter belongs to one module; each rule maps that module to one or more diffusers modules,
with a tensor operation applied to both `weight` and `bias` (and any other parameter of the module):

* rename: the same tensor under a new name;
* qkv: a fused [3C, ...] projection split into three equal parts (q, k, v);
* linear1: the single blocks' fused projection split into [C, C, C, rest] with C the real hidden size (the
  upstream script hard-codes 3072, which breaks tiny configs);
* swap: the final modulation, stored as (shift, scale) officially and as (scale, shift) in diffusers.

The reverse conversion concatenates the parts in the same order and swaps the halves back, so the two
directions are exact inverses.
"""

import re

import torch

RENAME, QKV, LINEAR1, SWAP = "rename", "qkv", "linear1", "swap"

_REFINER = "txt_in.individual_token_refiner.blocks.{i}"
_DIFF_REFINER = "context_embedder.token_refiner.refiner_blocks.{i}"
_QKV = ("attn.to_q", "attn.to_k", "attn.to_v")

# (official module, diffusers module(s), op). "{i}" stands for a block index.
RULES = [
    ("img_in.proj", ["x_embedder.proj"], RENAME),
    ("time_in.mlp.0", ["time_text_embed.timestep_embedder.linear_1"], RENAME),
    ("time_in.mlp.2", ["time_text_embed.timestep_embedder.linear_2"], RENAME),
    ("guidance_in.mlp.0", ["time_text_embed.guidance_embedder.linear_1"], RENAME),
    ("guidance_in.mlp.2", ["time_text_embed.guidance_embedder.linear_2"], RENAME),
    ("vector_in.in_layer", ["time_text_embed.text_embedder.linear_1"], RENAME),
    ("vector_in.out_layer", ["time_text_embed.text_embedder.linear_2"], RENAME),
    ("txt_in.input_embedder", ["context_embedder.proj_in"], RENAME),
    ("txt_in.t_embedder.mlp.0", ["context_embedder.time_text_embed.timestep_embedder.linear_1"], RENAME),
    ("txt_in.t_embedder.mlp.2", ["context_embedder.time_text_embed.timestep_embedder.linear_2"], RENAME),
    ("txt_in.c_embedder.linear_1", ["context_embedder.time_text_embed.text_embedder.linear_1"], RENAME),
    ("txt_in.c_embedder.linear_2", ["context_embedder.time_text_embed.text_embedder.linear_2"], RENAME),
    (f"{_REFINER}.norm1", [f"{_DIFF_REFINER}.norm1"], RENAME),
    (f"{_REFINER}.norm2", [f"{_DIFF_REFINER}.norm2"], RENAME),
    (f"{_REFINER}.self_attn_qkv", [f"{_DIFF_REFINER}.{name}" for name in _QKV], QKV),
    (f"{_REFINER}.self_attn_proj", [f"{_DIFF_REFINER}.attn.to_out.0"], RENAME),
    (f"{_REFINER}.mlp.fc1", [f"{_DIFF_REFINER}.ff.net.0.proj"], RENAME),
    (f"{_REFINER}.mlp.fc2", [f"{_DIFF_REFINER}.ff.net.2"], RENAME),
    (f"{_REFINER}.adaLN_modulation.1", [f"{_DIFF_REFINER}.norm_out.linear"], RENAME),
    ("double_blocks.{i}.img_mod.linear", ["transformer_blocks.{i}.norm1.linear"], RENAME),
    ("double_blocks.{i}.txt_mod.linear", ["transformer_blocks.{i}.norm1_context.linear"], RENAME),
    ("double_blocks.{i}.img_attn_qkv", [f"transformer_blocks.{{i}}.{name}" for name in _QKV], QKV),
    (
        "double_blocks.{i}.txt_attn_qkv",
        [f"transformer_blocks.{{i}}.attn.{name}" for name in ("add_q_proj", "add_k_proj", "add_v_proj")],
        QKV,
    ),
    ("double_blocks.{i}.img_attn_q_norm", ["transformer_blocks.{i}.attn.norm_q"], RENAME),
    ("double_blocks.{i}.img_attn_k_norm", ["transformer_blocks.{i}.attn.norm_k"], RENAME),
    ("double_blocks.{i}.txt_attn_q_norm", ["transformer_blocks.{i}.attn.norm_added_q"], RENAME),
    ("double_blocks.{i}.txt_attn_k_norm", ["transformer_blocks.{i}.attn.norm_added_k"], RENAME),
    ("double_blocks.{i}.img_attn_proj", ["transformer_blocks.{i}.attn.to_out.0"], RENAME),
    ("double_blocks.{i}.txt_attn_proj", ["transformer_blocks.{i}.attn.to_add_out"], RENAME),
    ("double_blocks.{i}.img_mlp.fc1", ["transformer_blocks.{i}.ff.net.0.proj"], RENAME),
    ("double_blocks.{i}.img_mlp.fc2", ["transformer_blocks.{i}.ff.net.2"], RENAME),
    ("double_blocks.{i}.txt_mlp.fc1", ["transformer_blocks.{i}.ff_context.net.0.proj"], RENAME),
    ("double_blocks.{i}.txt_mlp.fc2", ["transformer_blocks.{i}.ff_context.net.2"], RENAME),
    (
        "single_blocks.{i}.linear1",
        [f"single_transformer_blocks.{{i}}.{name}" for name in (*_QKV, "proj_mlp")],
        LINEAR1,
    ),
    ("single_blocks.{i}.linear2", ["single_transformer_blocks.{i}.proj_out"], RENAME),
    ("single_blocks.{i}.q_norm", ["single_transformer_blocks.{i}.attn.norm_q"], RENAME),
    ("single_blocks.{i}.k_norm", ["single_transformer_blocks.{i}.attn.norm_k"], RENAME),
    ("single_blocks.{i}.modulation.linear", ["single_transformer_blocks.{i}.norm.linear"], RENAME),
    ("final_layer.linear", ["proj_out"], RENAME),
    ("final_layer.adaLN_modulation.1", ["norm_out.linear"], SWAP),
]


def _template_regex(template: str) -> re.Pattern:
    """'double_blocks.{i}.img_mod.linear' -> regex matching '<that>.<param>' with groups i and param."""
    body = re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)")
    return re.compile(rf"{body}\.(?P<param>\w+)")


# (regex, rule) for official keys; (regex, (part index, rule)) for diffusers keys.
_OFFICIAL_PATTERNS = [(_template_regex(rule[0]), rule) for rule in RULES]
_DIFFUSERS_PATTERNS = [
    (_template_regex(target), (index, (official, diffusers, op)))
    for official, diffusers, op in RULES
    for index, target in enumerate(diffusers)
]


def _fill(template: str, match: re.Match) -> str:
    """The full key for `template` with the block index and parameter name of `match`."""
    index = match.groupdict().get("i")
    name = template.replace("{i}", index) if index is not None else template
    return f"{name}.{match.group('param')}"


def _split(tensor: torch.Tensor, op: str, hidden_size: int) -> list[torch.Tensor]:
    if op == QKV:
        return list(tensor.chunk(3, dim=0))
    if op == LINEAR1:
        rest = tensor.shape[0] - 3 * hidden_size
        return list(tensor.split([hidden_size, hidden_size, hidden_size, rest], dim=0))
    if op == SWAP:
        first, second = tensor.chunk(2, dim=0)
        return [torch.cat([second, first], dim=0)]
    return [tensor]


def _merge(parts: list[torch.Tensor], op: str) -> torch.Tensor:
    if op == SWAP:
        return _split(parts[0], SWAP, 0)[0]  # swapping halves is its own inverse
    return torch.cat(parts, dim=0) if len(parts) > 1 else parts[0]


def official_to_diffusers(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Converts an official-key state dict to diffusers `HunyuanVideoTransformer3DModel` keys.

    Args:
        state_dict: official keys (e.g. `HYVideoDiffusionTransformer.state_dict()`).

    Returns:
        A new dict with diffusers keys (split tensors are views of the inputs).
    """
    hidden_size = state_dict["img_in.proj.weight"].shape[0]
    converted = {}
    for key, tensor in state_dict.items():
        match, (_, diffusers, op) = _find(_OFFICIAL_PATTERNS, key, "official_to_diffusers")
        for target, part in zip(diffusers, _split(tensor, op, hidden_size)):
            converted[_fill(target, match)] = part
    return converted


def diffusers_to_official(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Converts a diffusers `HunyuanVideoTransformer3DModel` state dict back to official keys.

    Args:
        state_dict: diffusers keys.

    Returns:
        A new dict with official keys (q, k, v (and mlp) concatenated, final modulation halves swapped back).
    """
    groups: dict[str, tuple[str, list]] = {}
    for key, tensor in state_dict.items():
        match, (index, (official, diffusers, op)) = _find(_DIFFUSERS_PATTERNS, key, "diffusers_to_official")
        _, parts = groups.setdefault(_fill(official, match), (op, [None] * len(diffusers)))
        parts[index] = tensor
    converted = {}
    for key, (op, parts) in groups.items():
        if any(part is None for part in parts):
            raise ValueError(f"diffusers_to_official: {key} is split in diffusers and some parts are missing")
        converted[key] = _merge(parts, op)
    return converted


def _find(patterns, key: str, direction: str):
    """(match, payload) of the first pattern matching the whole key."""
    for regex, payload in patterns:
        match = regex.fullmatch(key)
        if match:
            return match, payload
    raise ValueError(f"{direction}: no conversion rule for key {key!r}")


def diffusers_config(config: dict) -> dict:
    """diffusers `HunyuanVideoTransformer3DModel` constructor arguments for an official config (C.1).

    Args:
        config: `HYVideoDiffusionTransformer` constructor arguments (e.g. `model.config`).

    Returns:
        Keyword arguments for `HunyuanVideoTransformer3DModel` (RoPE theta 256 as `--rope-theta`'s default).
    """
    patch_t, patch_h, patch_w = config["patch_size"]
    if patch_h != patch_w:
        raise ValueError(f"patch_size={config['patch_size']}: diffusers needs equal spatial patch sizes")
    return {
        "in_channels": config["in_channels"],
        "out_channels": config["out_channels"],
        "num_attention_heads": config["heads_num"],
        "attention_head_dim": config["hidden_size"] // config["heads_num"],
        "num_layers": config["mm_double_blocks_depth"],
        "num_single_layers": config["mm_single_blocks_depth"],
        "num_refiner_layers": 2,
        "mlp_ratio": float(config["mlp_width_ratio"]),
        "patch_size": patch_h,
        "patch_size_t": patch_t,
        "qk_norm": "rms_norm",
        "guidance_embeds": config["guidance_embed"],
        "text_embed_dim": config["text_states_dim"],
        "pooled_projection_dim": config["text_states_dim_2"],
        "rope_theta": 256.0,
        "rope_axes_dim": tuple(config["rope_dim_list"]),
    }
