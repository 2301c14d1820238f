"""Where each supported diffusers transformer keeps its block stacks, and where the cache signals come from.

One :class:`DiffusersModelSpec` per diffusers transformer class. A spec names the class (looked up by name along the
class's MRO, so common_cache never imports diffusers), its block stacks in forward order with our stream group names
and depths (so the block indices of our cache profiles apply unchanged), how many leading positional arguments of a
block call are the stream's states, and how the TeaCache indicators of our models are read off the diffusers
forward. Adding a model means adding a spec here (or calling :func:`register_diffusers_model`), nothing else.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from common_cache.runner import Signal
from common_cache.teacache import HUNYUAN_MODULATED_INPUT, WAN_TIME_EMBEDDING, WAN_TIME_MODULATION

# (blocks, states, rest of the block call's positional arguments, captured submodule outputs) -> named signals
SignalFn = Callable[[Sequence[Callable], tuple[torch.Tensor, ...], tuple[Any, ...], Mapping[str, Any]],
                    dict[str, Signal]]


@dataclass(frozen=True)
class StackSpec:
    """One block stack of a diffusers transformer.

    Attributes:
        attribute: the ``nn.ModuleList`` attribute of the transformer (``"blocks"``).
        group: our stream group name for it (``"blocks"``, ``"double"``, ``"single"``): profiles address it by this.
        num_states: how many leading positional arguments of a block call are the stream's states (1: a tensor,
            returned as a tensor; 2: an (image, text) pair, returned as a pair).
        signals: builds the cache signals handed to ``run_blocks`` with this stack (None: no signals). Only the
            first stack of a forward needs them (TeaCache decides once per forward).
    """

    attribute: str
    group: str
    num_states: int
    signals: SignalFn | None = None

    def __post_init__(self) -> None:
        if self.num_states not in (1, 2):
            raise ValueError(f"StackSpec {self.attribute!r}: num_states={self.num_states!r} is not allowed: 1 or 2")


@dataclass(frozen=True)
class DiffusersModelSpec:
    """A diffusers transformer class the cache can attach to.

    Attributes:
        class_name: the diffusers class name (``"WanTransformer3DModel"``).
        stacks: its block stacks in forward order.
        capture: names of submodules whose latest output the signals need (recorded by a forward hook while the
            cache is enabled), e.g. Wan's ``condition_embedder`` for the time embedding ``e``.
    """

    class_name: str
    stacks: tuple[StackSpec, ...]
    capture: tuple[str, ...] = ()

    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(stack.group for stack in self.stacks)


# ------------------------------------------------------------------------------------------------------------
# Cache signals: the same tensors our models hand to run_blocks (see WanModel.forward, HYVideoDiffusionTransformer).


def _wan_signals(blocks, states, rest, captured) -> dict[str, Signal]:
    """Wan2.1: ``e`` = the time embedding ([B, C], the first output of ``condition_embedder``) and ``e0`` = its
    6-way projection ([B, 6, C], the block call's ``temb``: rest = (encoder_hidden_states, temb, rotary_emb))."""
    return {WAN_TIME_EMBEDDING: captured["condition_embedder"][0], WAN_TIME_MODULATION: rest[1]}


def _hunyuan_modulated_input(block: torch.nn.Module, img: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
    # The first double block's AdaLayerNormZero output: LN(img) * (1 + scale1) + shift1, [B, N_img, C].
    return block.norm1(img, emb=temb)[0]


def _hunyuan_signals(blocks, states, rest, captured) -> dict[str, Signal]:
    """HunyuanVideo: ``modulated_input`` = the modulated image input of the first double block, computed only when
    a cache asks for it (rest = (temb, attention_mask, freqs_cis, ...))."""
    return {HUNYUAN_MODULATED_INPUT: functools.partial(_hunyuan_modulated_input, blocks[0], states[0], rest[0])}


WAN = DiffusersModelSpec(
    "WanTransformer3DModel",
    (StackSpec("blocks", "blocks", 1, _wan_signals),),
    capture=("condition_embedder",),
)
# diffusers' single-stream blocks take and return the (image, text) pair and concatenate inside; our single group
# carries the concatenation. The residuals are the same numbers split in two, so every policy acts identically.
HUNYUAN_VIDEO = DiffusersModelSpec(
    "HunyuanVideoTransformer3DModel",
    (StackSpec("transformer_blocks", "double", 2, _hunyuan_signals),
     StackSpec("single_transformer_blocks", "single", 2)),
)

DIFFUSERS_MODELS: dict[str, DiffusersModelSpec] = {spec.class_name: spec for spec in (WAN, HUNYUAN_VIDEO)}


def register_diffusers_model(spec: DiffusersModelSpec) -> None:
    """Adds (or replaces) the spec of a diffusers transformer class."""
    DIFFUSERS_MODELS[spec.class_name] = spec


def diffusers_spec(module: object) -> DiffusersModelSpec | None:
    """The spec of a diffusers transformer (matched by class name along its MRO), or None."""
    for cls in type(module).__mro__:
        if cls.__module__.startswith("diffusers") and cls.__name__ in DIFFUSERS_MODELS:
            return DIFFUSERS_MODELS[cls.__name__]
    return None
