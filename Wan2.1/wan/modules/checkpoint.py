"""Loads a Wan2.1 DiT checkpoint folder in the official (diffusers ``ModelMixin``) layout.

References: Wan2.1 wan/text2video.py (``WanModel.from_pretrained(checkpoint_dir)``) and the diffusers sharded
safetensors layout.

Layout::

    config.json                                             # constructor arguments ("_" keys ignored)
    diffusion_pytorch_model.safetensors                     # single file (1.3B), or
    diffusion_pytorch_model.safetensors.index.json          # {"weight_map": {key: shard file}} (14B)
    diffusion_pytorch_model-0000k-of-0000n.safetensors

When both a single file and an index are present, the index wins (as in diffusers). The model is built on
the meta device and the loaded tensors are assigned to it (``load_state_dict(assign=True)``): a random
initialisation of 1.4 B / 14 B parameters would cost tens of seconds and a second copy of the weights in
memory, only to be overwritten. Tensors are read one at a time straight onto the target device and dtype.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
from collections.abc import Mapping

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .model import WanModel

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
WEIGHTS_INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"

# Fields a task config (wan.configs) and the checkpoint's config.json must agree on.
ARCHITECTURE_FIELDS = (
    "model_type", "patch_size", "text_len", "in_dim", "dim", "ffn_dim", "freq_dim", "text_dim", "out_dim",
    "num_heads", "num_layers", "window_size", "qk_norm", "cross_attn_norm", "eps", "image_dim",
)  # fmt: skip
_MAX_NAMED = 5  # keys named in an error message

logger = logging.getLogger(__name__)


def load_wan_model(
    ckpt_dir: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    expected_config: Mapping | None = None,
) -> WanModel:
    """Builds a :class:`WanModel` from a checkpoint folder (strict: all keys, none extra, equal shapes).

    Args:
        ckpt_dir: folder with ``config.json`` and the safetensors weights (single file or shards + index).
        device: device the parameters are loaded onto.
        dtype: parameter dtype (official single-GPU inference keeps fp32 and runs under bf16 autocast).
        expected_config: a task config (e.g. ``WAN_CONFIGS["t2v-1.3B"]``); the architecture fields it has must
            equal the checkpoint's.

    Returns:
        The model in eval mode.

    Raises:
        FileNotFoundError: the folder, ``config.json``, the weights or a shard listed in the index is missing.
        ValueError: invalid config, a config that disagrees with ``expected_config``, or missing,
            unexpected or wrongly shaped tensors.
    """
    ckpt_dir = os.fspath(ckpt_dir)
    config = read_model_config(ckpt_dir)
    if expected_config is not None:
        check_config_matches(config, expected_config, ckpt_dir)
    with torch.device("meta"):
        model = WanModel(**config)
    state_dict = read_state_dict(ckpt_dir, torch.device(device), dtype)
    _check_state_dict(model, state_dict, ckpt_dir)
    model.load_state_dict(state_dict, strict=True, assign=True)
    return model.eval()


def read_model_config(ckpt_dir: str) -> dict:
    """Reads ``config.json`` as WanModel keyword arguments (``_``-prefixed and unknown keys are dropped)."""
    if not os.path.isdir(ckpt_dir):
        raise FileNotFoundError(f"checkpoint folder {ckpt_dir!r} does not exist")
    path = os.path.join(ckpt_dir, CONFIG_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{CONFIG_NAME} is missing in checkpoint folder {ckpt_dir!r}")
    with open(path, encoding="utf-8") as f:
        raw = json.load(f)
    if not isinstance(raw, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(raw).__name__}")
    accepted = set(inspect.signature(WanModel.__init__).parameters) - {"self"}
    config = {}
    for key, value in raw.items():
        if key.startswith("_"):
            continue
        if key not in accepted:
            logger.warning("ignoring unknown field %r in %s", key, path)
            continue
        config[key] = tuple(value) if isinstance(value, list) else value
    return config


def effective_config(config: Mapping) -> dict:
    """The architecture fields of a WanModel built from ``config`` (constructor defaults filled in)."""
    defaults = {
        name: param.default
        for name, param in inspect.signature(WanModel.__init__).parameters.items()
        if name in ARCHITECTURE_FIELDS
    }
    return {name: _normalise(config.get(name, defaults[name])) for name in ARCHITECTURE_FIELDS}


def check_config_matches(config: Mapping, expected_config: Mapping, ckpt_dir: str) -> None:
    """Raises ValueError naming every architecture field where ``config`` differs from ``expected_config``."""
    actual = effective_config(config)
    problems = [
        f"{name}={actual[name]!r} (expected {_normalise(expected_config[name])!r})"
        for name in ARCHITECTURE_FIELDS
        if name in expected_config and actual[name] != _normalise(expected_config[name])
    ]
    if problems:
        raise ValueError(
            f"{CONFIG_NAME} in {ckpt_dir!r} does not match the task config: " + ", ".join(problems)
        )


def save_wan_weights(ckpt_dir: str, state_dict: Mapping[str, torch.Tensor], num_shards: int = 1) -> None:
    """Writes DiT weights in the layout :func:`weight_files` reads: one ``diffusion_pytorch_model.safetensors``,
    or ``num_shards`` shards of about equal size plus the index (the 14B layout). Files of the other layout in the
    folder are removed, so that an old file can never shadow the new weights.

    Args:
        ckpt_dir: existing checkpoint folder.
        state_dict: official key -> tensor (saved as they are: dtype and values unchanged).
        num_shards: 1 for a single file, more for the sharded layout.
    """
    if num_shards < 1:
        raise ValueError(f"num_shards={num_shards} is not allowed: expected >= 1")
    for name in os.listdir(ckpt_dir):
        if name in (WEIGHTS_NAME, WEIGHTS_INDEX_NAME) or (name.startswith("diffusion_pytorch_model-")
                                                          and name.endswith(".safetensors")):
            os.remove(os.path.join(ckpt_dir, name))
    tensors = {key: value.detach().contiguous() for key, value in state_dict.items()}
    metadata = {"format": "pt"}
    if num_shards == 1:
        save_file(tensors, os.path.join(ckpt_dir, WEIGHTS_NAME), metadata=metadata)
        return
    sizes = {key: t.numel() * t.element_size() for key, t in tensors.items()}
    total, done, weight_map = sum(sizes.values()), 0, {}
    for key in tensors:  # shard i takes the keys whose bytes start in its equal share of the total
        weight_map[key] = f"diffusion_pytorch_model-{min(done * num_shards // total, num_shards - 1) + 1:05d}" \
                          f"-of-{num_shards:05d}.safetensors"
        done += sizes[key]
    for name in sorted(set(weight_map.values())):
        save_file({k: tensors[k] for k, shard in weight_map.items() if shard == name}, os.path.join(ckpt_dir, name),
                  metadata=metadata)
    with open(os.path.join(ckpt_dir, WEIGHTS_INDEX_NAME), "w", encoding="utf-8") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)


def weight_files(ckpt_dir: str) -> list[str]:
    """Paths of the safetensors files to read: the shards named in the index, or the single file."""
    index_path = os.path.join(ckpt_dir, WEIGHTS_INDEX_NAME)
    if os.path.isfile(index_path):
        with open(index_path, encoding="utf-8") as f:
            weight_map = json.load(f).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index_path} has no 'weight_map' object mapping tensor names to shard files")
        shards = sorted(set(weight_map.values()))
        missing = [name for name in shards if not os.path.isfile(os.path.join(ckpt_dir, name))]
        if missing:
            raise FileNotFoundError(
                f"shard file(s) {missing} listed in {WEIGHTS_INDEX_NAME} are missing "
                f"in checkpoint folder {ckpt_dir!r}"
            )
        return [os.path.join(ckpt_dir, name) for name in shards]
    single = os.path.join(ckpt_dir, WEIGHTS_NAME)
    if os.path.isfile(single):
        return [single]
    raise FileNotFoundError(
        f"no DiT weights in checkpoint folder {ckpt_dir!r}: "
        f"expected {WEIGHTS_NAME} or {WEIGHTS_INDEX_NAME} with its shards"
    )


def check_weight_files(ckpt_dir: str) -> list[str]:
    """Checks every weight file's safetensors header against its size, before anything is loaded (milliseconds:
    only the headers are read), so that a truncated or damaged shard is named by its file.

    Returns:
        The weight files (:func:`weight_files`).

    Raises:
        FileNotFoundError: missing weights or shards.
        ValueError: naming the file that is truncated or has no valid safetensors header.
    """
    paths = weight_files(ckpt_dir)
    for path in paths:
        size = os.path.getsize(path)
        with open(path, "rb") as handle:
            head = handle.read(8)
            length = int.from_bytes(head, "little") if len(head) == 8 else -1
            try:
                if not 0 < length <= size - 8:
                    raise ValueError("no header")
                header = json.loads(handle.read(length))
                end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
            except (ValueError, KeyError, TypeError, IndexError, AttributeError):
                raise ValueError(f"weight file {path} is not a valid safetensors file (damaged or truncated: "
                                 f"{size} bytes); copy or download it again") from None
        if size < 8 + length + end:
            raise ValueError(f"weight file {path} is truncated: {size} bytes, its header describes "
                             f"{8 + length + end}; copy or download it again")
    return paths


def read_state_dict(ckpt_dir: str, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Reads every tensor of the checkpoint onto ``device`` in ``dtype`` (floating tensors only are cast).

    Raises:
        ValueError: a tensor in two files, or a file that cannot be read (named).
    """
    state_dict: dict[str, torch.Tensor] = {}
    for path in check_weight_files(ckpt_dir):
        try:
            with safe_open(path, framework="pt", device=str(device)) as f:
                for key in f.keys():
                    if key in state_dict:
                        raise ValueError(f"tensor {key!r} appears in more than one weight file in {ckpt_dir!r}")
                    tensor = f.get_tensor(key)
                    state_dict[key] = tensor.to(dtype) if tensor.is_floating_point() else tensor
        except (ValueError, FileNotFoundError):
            raise
        except Exception as err:  # safetensors' own error types for damaged files
            raise ValueError(f"weight file {path} could not be read (damaged or truncated?): {err}") from err
    return state_dict


def _check_state_dict(model: WanModel, state_dict: Mapping[str, torch.Tensor], ckpt_dir: str) -> None:
    """Clear messages for what ``load_state_dict(strict=True)`` would reject."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    if missing or unexpected:
        raise ValueError(
            f"checkpoint in {ckpt_dir!r} does not match WanModel built from its {CONFIG_NAME}: "
            f"{len(missing)} missing key(s) {_first(missing)}, "
            f"{len(unexpected)} unexpected key(s) {_first(unexpected)}"
        )
    wrong = [
        f"{key}: checkpoint {list(state_dict[key].shape)} vs model {list(value.shape)}"
        for key, value in expected.items()
        if state_dict[key].shape != value.shape
    ]
    if wrong:
        raise ValueError(
            f"checkpoint in {ckpt_dir!r} has {len(wrong)} tensor(s) whose shape disagrees with "
            f"its {CONFIG_NAME}: "
            + "; ".join(wrong[:_MAX_NAMED])
        )


def _first(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_NAMED])
    return f"[{shown}{', ...' if len(keys) > _MAX_NAMED else ''}]"


def _normalise(value):
    return tuple(value) if isinstance(value, list) else value
