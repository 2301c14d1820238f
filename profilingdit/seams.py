"""The one way this project changes a model from the outside: swap attributes of its modules, add hooks, undo all.

Profiling (``wan.profiling``, ``hyvideo.profiling``, ``common_cache.adapters.profiling``), sequence parallelism
(``wan.distributed``, ``hyvideo.parallel``) and the diffusers cache adapter change a model only through a
:class:`Seams`: they replace a module's seam attributes (``attention_kernel`` of an attention module, an instance
method such as ``patchify_and_pad``, a diffusers attention ``processor`` or block list) and register forward hooks,
and :meth:`Seams.undo` restores everything in reverse order, so the model is exactly as before (same attributes and
submodules, no hooks, bit-identical outputs).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

_MISSING = object()


def _own_value(owner: Any, name: str) -> Any:
    """What ``owner`` itself holds under ``name`` (an instance attribute, or a submodule, parameter or buffer of an
    ``nn.Module``), or ``_MISSING`` when the name comes from its class (a method: undo deletes the shadowing)."""
    if name in vars(owner):
        return vars(owner)[name]
    if isinstance(owner, nn.Module):
        for store in (owner._modules, owner._parameters, owner._buffers):
            if name in store:
                return store[name]
    return _MISSING


class Seams:
    """Attribute swaps and hooks installed on modules, undone together (usable as a context manager)."""

    def __init__(self) -> None:
        self._undo: list[Callable[[], None]] = []

    def swap(self, owner: Any, name: str, value: Any) -> Any:
        """Sets ``owner.name = value``; returns what ``owner.name`` was (the class's method when not shadowed).

        Raises:
            AttributeError: ``owner`` has no attribute ``name`` (a seam must exist before it is swapped).
        """
        previous = getattr(owner, name)  # raises for a misspelt seam
        own = _own_value(owner, name)
        setattr(owner, name, value)
        if own is _MISSING:
            self._undo.append(lambda: delattr(owner, name))
        else:
            self._undo.append(lambda: setattr(owner, name, own))
        return previous

    def hook(self, handle: torch.utils.hooks.RemovableHandle) -> None:
        """Keeps a hook handle (from ``register_forward_hook`` and the like) so :meth:`undo` removes it."""
        self._undo.append(handle.remove)

    def undo(self) -> None:
        """Restores every swapped attribute and removes every hook, last change first; a second call does nothing."""
        while self._undo:
            self._undo.pop()()

    def __len__(self) -> int:
        return len(self._undo)

    def __enter__(self) -> Seams:
        return self

    def __exit__(self, *exc) -> None:
        self.undo()
