"""Runs the block stacks of a diffusers transformer through a cache policy, without copying its forward.

The diffusers forwards loop ``for block in self.<stack>: states = block(states..., *args)``. While a cache is
enabled, each stack's ``nn.ModuleList`` is swapped for a :class:`CachedBlockList` that holds the very same block
modules (so ``state_dict`` keys, ``.to()``, ``parameters()`` and ``stack[i]`` are unchanged) but whose iteration
yields a single :class:`StackCall`: the forward's loop then makes one call, which hands the original blocks to
:func:`common_cache.run_blocks` and hence to the policy, exactly as our own models do. :meth:`DiffusersAdapter.remove`
puts the original lists back and removes the forward hooks that capture the cache signals (one
:class:`profilingdit.seams.Seams` holds every change).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from common_cache.adapters.registry import DiffusersModelSpec, StackSpec
from common_cache.runner import SIGNALS_KEYWORD, run_blocks
from profilingdit.seams import Seams


class _BlocksWithArgs(Sequence):
    """The stack's blocks, each called with the stream's states, then the forward's other positional arguments.

    The diffusers forwards pass everything positionally (HunyuanVideo even passes extras into ``*args``), so the
    arguments after the states cannot travel as ``run_blocks`` keywords; they are appended here instead.
    """

    def __init__(self, blocks: nn.ModuleList, rest: tuple[Any, ...]) -> None:
        self._blocks = blocks
        self._rest = rest

    def __len__(self) -> int:
        return len(self._blocks)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        block, rest = self._blocks[index], self._rest
        return lambda *states, **kwargs: block(*states, *rest, **kwargs)


class StackCall:
    """What the forward's block loop gets while a cache is enabled: one call that runs the whole stack.

    Args:
        adapter: the adapter holding the policy and the captured signals.
        spec: the stack.
        blocks: the original block list.
    """

    def __init__(self, adapter: DiffusersAdapter, spec: StackSpec, blocks: nn.ModuleList) -> None:
        self.adapter = adapter
        self.spec = spec
        self.blocks = blocks

    def __call__(self, *args: Any, **kwargs: Any):
        n = self.spec.num_states
        if len(args) < n:
            raise RuntimeError(f"stack '{self.spec.attribute}' was called with {len(args)} positional states, "
                               f"expected {n}: this diffusers version calls its blocks differently")
        states = args[0] if n == 1 else tuple(args[:n])
        rest = tuple(args[n:])
        blocks = _BlocksWithArgs(self.blocks, rest) if rest else self.blocks
        if self.spec.signals is not None:
            state_tuple = states if isinstance(states, tuple) else (states,)
            # The original blocks: a signal may call a block's submodule (HunyuanVideo's first norm1).
            kwargs[SIGNALS_KEYWORD] = self.spec.signals(self.blocks, state_tuple, rest, self.adapter.captured)
        return run_blocks(self.adapter.policy, self.spec.group, blocks, states, **kwargs)


class CachedBlockList(nn.ModuleList):
    """The original blocks under their original names; iterating yields the one :class:`StackCall`.

    Only iteration changes: ``len``, indexing, ``named_modules`` and ``state_dict`` see the original blocks.
    """

    def __init__(self, original: nn.ModuleList, call: StackCall) -> None:
        super().__init__(original)
        self.stack_call = call

    def __iter__(self):
        return iter((self.stack_call,))


class DiffusersAdapter:
    """Installs a policy on a diffusers transformer (see the module docstring); :meth:`remove` undoes everything.

    Args:
        transformer: the diffusers transformer.
        spec: its registry entry.
        policy: the cache policy (bound to the stacks' depths by :meth:`install`).
    """

    def __init__(self, transformer: nn.Module, spec: DiffusersModelSpec, policy) -> None:
        self.transformer = transformer
        self.spec = spec
        self.policy = policy
        self.captured: dict[str, Any] = {}
        self._seams = Seams()

    def depths(self) -> dict[str, int]:
        """Our stream group name -> number of blocks of each stack (what ``policy.bind`` checks)."""
        return {stack.group: len(self._stack(stack)) for stack in self.spec.stacks}

    def _stack(self, stack: StackSpec) -> nn.ModuleList:
        blocks = getattr(self.transformer, stack.attribute, None)
        if not isinstance(blocks, nn.ModuleList):
            raise TypeError(f"{type(self.transformer).__name__}.{stack.attribute} is {type(blocks).__name__}, not "
                            "an nn.ModuleList: this diffusers version lays its blocks out differently")
        return blocks

    def install(self) -> None:
        """Binds the policy to the stacks' depths, then swaps the block lists and adds the capture hooks.

        Raises:
            ValueError: the policy does not fit the model's stream groups (nothing is changed then).
        """
        self.policy.bind(self.depths())
        for stack in self.spec.stacks:
            original = self._stack(stack)
            cached = CachedBlockList(original, StackCall(self, stack, original))
            self._seams.swap(self.transformer, stack.attribute, cached)
        for name in self.spec.capture:
            module = self.transformer.get_submodule(name)
            self._seams.hook(module.register_forward_hook(self._capture_hook(name)))

    def _capture_hook(self, name: str) -> Callable:
        def hook(_module, _args, output):
            self.captured[name] = output

        return hook

    def remove(self) -> None:
        """Puts the original block lists back and removes the hooks (the model is as before :meth:`install`)."""
        self._seams.undo()
        self.captured.clear()
