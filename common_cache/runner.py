"""The one entry point a transformer forward calls for each of its block stacks.

A model forward hands a stack of blocks to :func:`run_blocks` together with the hidden state(s) and the keyword
arguments every block of the stack takes. Without a cache attached this is a plain loop, so the uncached model is
bit-identical to one that loops over its blocks itself. With a cache attached, the cache decides per step and block
whether to run the block, skip it, or add a stored residual.

A forward may also hand the cache named *signals* (``cache_signals={"e": e}``): tensors, or zero-argument callables
that compute one on demand, that a policy such as TeaCache needs to decide. They are never passed to the blocks,
and with no cache (or a cache that takes no signals) a callable is never called.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch

# A stream carries one hidden state (Wan blocks, HunyuanVideo single-stream blocks) or a tuple of them
# (HunyuanVideo double-stream blocks: image and text state).
States = torch.Tensor | tuple[torch.Tensor, ...]
# A cache signal: a tensor, or a zero-argument callable returning one (evaluated only by a cache that uses it).
Signal = torch.Tensor | Callable[[], torch.Tensor]
SIGNALS_KEYWORD = "cache_signals"  # reserved keyword of run_blocks: never forwarded to the blocks


class StackRunner(Protocol):
    """What a cache attached to a model must provide: one call per block stack and forward."""

    def run(self, group: str, blocks: Sequence[Callable[..., Any]], states: States, kwargs: dict) -> States: ...


class SignalReceiver(Protocol):
    """Optional for a cache: receives the forward's signals before :meth:`StackRunner.run` of the same group."""

    def receive_signals(self, group: str, signals: dict[str, Signal]) -> None: ...


class StackForecaster(Protocol):
    """Optional for a cache: tells a forward whether it will read a stack's input on the current step."""

    def replaces_stack(self, group: str) -> bool: ...


def stack_input_unused(cache: StackRunner | None, group: str) -> bool:
    """True when the attached cache returns stream group ``group``'s forecast output on the current forward without
    reading the stack's input (one unit that forecasts its output covers the whole stack, on a reuse step).

    The forward may then skip computing that input (e.g. the patch and text embeddings) and hand
    :func:`run_blocks` an empty placeholder on the right device and dtype; the blocks' keyword arguments are
    not needed either. With no cache, or a cache without ``replaces_stack`` (see :class:`StackForecaster`), this is
    False.
    """
    replaces = getattr(cache, "replaces_stack", None)
    return replaces is not None and replaces(group)


def call_block(block: Callable[..., Any], states: States, kwargs: dict) -> States:
    """Calls one block: a tuple of states is passed positionally, a single tensor as the first argument."""
    if isinstance(states, tuple):
        return block(*states, **kwargs)
    return block(states, **kwargs)


def run_blocks(
    cache: StackRunner | None,
    group: str,
    blocks: Sequence[Callable[..., Any]],
    states: States,
    **kwargs: Any,
) -> States:
    """Runs a stack of blocks, through the attached cache if there is one.

    Args:
        cache: the cache attached to the model (``model.block_cache``) or None for the plain loop.
        group: the stream group name of this stack (Wan: ``"blocks"``; HunyuanVideo: ``"double"``, ``"single"``).
        blocks: the blocks in execution order (usually an ``nn.ModuleList``).
        states: the hidden state entering the first block, or a tuple of states for multi-stream blocks. Each block
            returns the same structure.
        **kwargs: arguments passed unchanged to every block (conditioning, RoPE tables, lengths, ...), except the
            reserved ``cache_signals``: a dict of named signals for the cache (see :class:`SignalReceiver`).

    Returns:
        The state(s) leaving the last block.
    """
    signals = kwargs.pop(SIGNALS_KEYWORD, None)
    if cache is None:
        for block in blocks:
            states = call_block(block, states, kwargs)
        return states
    if signals and hasattr(cache, "receive_signals"):
        cache.receive_signals(group, signals)
    return cache.run(group, blocks, states, kwargs)


def step_context(cache, index: int, branch: str):
    """``cache.step(index, branch)`` when a cache is attached, else a no-op context (for pipelines)."""
    return cache.step(index, branch) if cache is not None else contextlib.nullcontext()
