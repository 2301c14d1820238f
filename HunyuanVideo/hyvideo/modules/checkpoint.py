"""Loading the HunyuanVideo transformer from an official checkpoint file or folder.

References: Tencent/HunyuanVideo hyvideo/inference.py `load_state_dict` (file/folder rules, `--load-key`).

Where the weights are (official-models.md A.2):

* a file whose top level has "module" or "ema" is DeepSpeed-style: the weights are ``sd[load_key]``;
  any other file is a bare state dict;
* a folder holding ``pytorch_model_*.pt`` files: ``pytorch_model_{load_key}.pt``, a bare state dict;
* otherwise a folder holding ``*_model_states.pt`` files: the first of them in sorted order
  (``mp_rank_00_model_states.pt``), DeepSpeed-style.

Which hyper-parameters (the rule). Everything the weights determine is read from their shapes:

* hidden size, in channels and patch size: the `img_in.proj` Conv3d weight [hidden, in, pt, ph, pw];
* out channels: `final_layer.linear` rows / (pt * ph * pw);
* block depths: highest `double_blocks.N` / `single_blocks.N` index + 1;
* head_dim: length of a q-norm weight, hence heads = hidden / head_dim;
* mlp ratio: `img_mlp.fc1` rows (or `linear2` inputs - hidden) / hidden;
* text dims: inputs of `txt_in.input_embedder` and `vector_in.in_layer`;
* qkv bias, qk-norm, guidance: presence of `img_attn_qkv.bias`, q-norm weights, `guidance_in.*`.

When `model_name` names an official config, each of these must equal that config (`official_config`: the
registry entry plus the official patch size, channels, biases and text dims) or the override given for it,
else ValueError naming the field; `rope_dim_list` (not in the weights) comes from the config. With
`model_name=None` the shapes alone decide, `config_overrides` entries must agree with them, and
`rope_dim_list` must be given in `config_overrides` (and `heads_num` when the checkpoint has no q/k norms).
"""

import logging
import pickle
import re
from pathlib import Path

import torch

from .models import HYVideoDiffusionTransformer, official_config

logger = logging.getLogger(__name__)

DEEPSPEED_KEYS = ("module", "ema")
CONFIG_FIELDS = (
    "patch_size", "in_channels", "out_channels", "hidden_size", "heads_num", "mlp_width_ratio",
    "mm_double_blocks_depth", "mm_single_blocks_depth", "rope_dim_list", "qkv_bias", "qk_norm",
    "guidance_embed", "text_states_dim", "text_states_dim_2",
)  # fmt: skip


def load_hunyuan_transformer(
    dit_weight: str | Path,
    load_key: str = "module",
    model_name: str | None = "HYVideo-T/2-cfgdistill",
    config_overrides: dict | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.bfloat16,
) -> HYVideoDiffusionTransformer:
    """Builds the transformer from a checkpoint and loads its weights strictly.

    Args:
        dit_weight: checkpoint file or folder (`--dit-weight`).
        load_key: top-level key of a DeepSpeed-style file, "module" or "ema" (`--load-key`).
        model_name: official config to check the checkpoint against (`--model`), or None to take the
            config from the checkpoint's shapes alone.
        config_overrides: constructor arguments the weights cannot tell (e.g. `rope_dim_list`), or that
            replace entries of the named config (e.g. `text_states_dim`).
        device: where the model is returned.
        dtype: parameter dtype (`--precision`); `final_layer.linear` stays fp32 as upstream.

    Returns:
        The model in eval mode.
    """
    path = resolve_checkpoint_path(dit_weight, load_key)
    state_dict = read_state_dict(path, load_key)
    config = resolve_config(state_dict, model_name, config_overrides)
    model = HYVideoDiffusionTransformer(**config, device="meta")
    check_keys(model, state_dict, path)
    # Built on "meta", the model adopts the checkpoint tensors (no second full-size copy); then it is cast as
    # upstream's model is (parameters in `dtype`, final_layer.linear in fp32).
    model.load_state_dict(state_dict, strict=True, assign=True)
    model.to(dtype)
    model.final_layer.linear.float()
    return model.to(device).eval()


def resolve_checkpoint_path(dit_weight: str | Path, load_key: str) -> Path:
    """The checkpoint file that `dit_weight` designates (a file, or a folder per the module docstring)."""
    path = Path(dit_weight)
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"--dit-weight: no file or folder at {path}")
    bare = sorted(path.glob("pytorch_model_*.pt"))
    if bare:
        wanted = path / f"pytorch_model_{load_key}.pt"
        if not wanted.is_file():
            found = [p.name for p in bare]
            raise FileNotFoundError(
                f"--dit-weight: {wanted.name} (load_key={load_key!r}) not in {path}; found {found}"
            )
        return wanted
    deepspeed = sorted(path.glob("*_model_states.pt"))
    if not deepspeed:
        found = sorted(p.name for p in path.glob("*.pt"))
        raise FileNotFoundError(
            f"--dit-weight: no '*_model_states.pt' or 'pytorch_model_*.pt' checkpoint in {path} "
            f"(.pt files: {found})"
        )
    if len(deepspeed) > 1:
        logger.warning("Several *_model_states.pt files in %s; using %s", path, deepspeed[0].name)
    return deepspeed[0]


def read_state_dict(path: Path, load_key: str) -> dict[str, torch.Tensor]:
    """Loads a checkpoint file (weights only) and returns its bare state dict."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=_is_zip(path))
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"--dit-weight: {path} holds objects other than tensors and containers ({err})"
        ) from err
    if not isinstance(checkpoint, dict):
        kind = type(checkpoint).__name__
        raise ValueError(f"--dit-weight: {path} holds a {kind}, expected a dict of tensors")
    if any(key in checkpoint for key in DEEPSPEED_KEYS):
        if load_key not in checkpoint:
            raise ValueError(
                f"--load-key: {load_key!r} is not a top-level key of {path}; "
                f"its keys are {sorted(checkpoint)}"
            )
        checkpoint = checkpoint[load_key]
    not_tensors = [k for k, v in checkpoint.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ValueError(f"--dit-weight: {path} is not a state dict; non-tensor entries: {not_tensors[:5]}")
    return checkpoint


def _is_zip(path: Path) -> bool:
    """torch.save's default (zip) format can be memory-mapped; the legacy format cannot."""
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def check_keys(model: torch.nn.Module, state_dict: dict, path: Path) -> None:
    """Raises ValueError naming a few missing / unexpected keys (a strict load would list all 856)."""
    expected, found = set(model.state_dict()), set(state_dict)
    missing, unexpected = sorted(expected - found), sorted(found - expected)
    if missing or unexpected:
        raise ValueError(
            f"--dit-weight: {path} does not match the transformer: {len(missing)} missing keys "
            f"(e.g. {missing[:5]}), {len(unexpected)} unexpected keys (e.g. {unexpected[:5]})"
        )


def resolve_config(state_dict: dict, model_name: str | None, config_overrides: dict | None) -> dict:
    """Constructor arguments for a checkpoint, per the rule in the module docstring."""
    overrides = dict(config_overrides or {})
    unknown = sorted(set(overrides) - set(CONFIG_FIELDS))
    if unknown:
        raise ValueError(f"config_overrides: unknown fields {unknown}; allowed: {list(CONFIG_FIELDS)}")
    declared = overrides if model_name is None else {**official_config(model_name), **overrides}
    inferred = infer_config(state_dict, heads_num=declared.get("heads_num"))
    source = f"model {model_name!r}" if model_name else "config_overrides"
    for field, value in inferred.items():
        if field in declared and _normalize(declared[field]) != _normalize(value):
            raise ValueError(f"{field}: the checkpoint has {value!r} but {source} says {declared[field]!r}")
    if "rope_dim_list" not in declared:
        head_dim = inferred["hidden_size"] // inferred["heads_num"]
        raise ValueError(
            "rope_dim_list cannot be read from a checkpoint: pass config_overrides={'rope_dim_list': [...]} "
            f"(summing to head_dim={head_dim}) or an official model_name"
        )
    return {**inferred, **declared}


def _normalize(value):
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else value


def infer_config(state_dict: dict, heads_num: int | None = None) -> dict:
    """Reads every hyper-parameter that the weights determine from their shapes.

    Args:
        state_dict: official-key state dict.
        heads_num: needed only when the checkpoint has no q/k-norm weights (head_dim is read from them).

    Returns:
        Constructor arguments (all but `rope_dim_list`).
    """
    _require(state_dict, "img_in.proj.weight", "final_layer.linear.weight", "txt_in.input_embedder.weight",
             "vector_in.in_layer.weight")  # fmt: skip
    hidden, in_channels, *patch = state_dict["img_in.proj.weight"].shape
    depths = {group: _block_count(state_dict, group) for group in ("double_blocks", "single_blocks")}
    head_dim = _head_dim(state_dict)
    if head_dim is None and heads_num is None:
        raise ValueError("heads_num: the checkpoint has no q/k-norm weights to read head_dim from; pass it")
    return {
        "patch_size": list(patch),
        "in_channels": in_channels,
        "out_channels": state_dict["final_layer.linear.weight"].shape[0] // (patch[0] * patch[1] * patch[2]),
        "hidden_size": hidden,
        "heads_num": hidden // head_dim if head_dim else heads_num,
        "mlp_width_ratio": _mlp_ratio(state_dict, hidden),
        "mm_double_blocks_depth": depths["double_blocks"],
        "mm_single_blocks_depth": depths["single_blocks"],
        # Without double blocks the flag has no weights to act on; keep the official default.
        "qkv_bias": "double_blocks.0.img_attn_qkv.bias" in state_dict if depths["double_blocks"] else True,
        "qk_norm": head_dim is not None,
        "guidance_embed": any(k.startswith("guidance_in.") for k in state_dict),
        "text_states_dim": state_dict["txt_in.input_embedder.weight"].shape[1],
        "text_states_dim_2": state_dict["vector_in.in_layer.weight"].shape[1],
    }


def _require(state_dict: dict, *keys: str) -> None:
    missing = [k for k in keys if k not in state_dict]
    if missing:
        raise ValueError(f"--dit-weight: not a HunyuanVideo transformer checkpoint; missing keys {missing}")


def _block_count(state_dict: dict, group: str) -> int:
    pattern = re.compile(rf"{group}\.(\d+)\.")
    indices = [int(m.group(1)) for k in state_dict if (m := pattern.match(k))]
    return max(indices) + 1 if indices else 0


def _head_dim(state_dict: dict) -> int | None:
    for key in ("double_blocks.0.img_attn_q_norm.weight", "single_blocks.0.q_norm.weight"):
        if key in state_dict:
            return state_dict[key].shape[0]
    return None


def _mlp_ratio(state_dict: dict, hidden: int) -> float | int:
    if "double_blocks.0.img_mlp.fc1.weight" in state_dict:
        mlp_hidden = state_dict["double_blocks.0.img_mlp.fc1.weight"].shape[0]
    elif "single_blocks.0.linear2.weight" in state_dict:
        mlp_hidden = state_dict["single_blocks.0.linear2.weight"].shape[1] - hidden
    else:
        return 4  # no blocks at all: the ratio is irrelevant
    ratio = mlp_hidden / hidden
    return int(ratio) if ratio.is_integer() else ratio
