"""What every run-time cache policy shares: the pipeline protocol (bind, begin, step) and its bookkeeping.

A policy (:class:`common_cache.DeltaCache`, :class:`common_cache.teacache.TeaCache`) subclasses
:class:`CachePolicy` and adds its decision in ``run`` (see :class:`common_cache.runner.StackRunner`). The base class
keeps the model's stream groups, the statistics of the generation, the per-branch state and the (step, branch)
context of the forward being run, and checks that the pipeline drives them in order::

    attach_cache(model, cache)      # cache.bind(model.stream_group_depths())
    cache.begin(num_steps, sigmas)  # once per generation (sigmas: optional)
    with cache.step(i, branch):     # around every model forward
        model(...)                  # -> run_blocks -> cache.run(group, blocks, states, kwargs)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from common_cache.stats import CacheStats


@dataclass
class StepContext:
    """The denoising step and guidance branch of the forward being run (set by :meth:`CachePolicy.step`)."""

    step: int
    branch: str


class CachePolicy:
    """Base class of the run-time cache policies behind :func:`common_cache.run_blocks`.

    A subclass implements ``run`` and the hooks :meth:`_check_model` (called by :meth:`bind`) and :meth:`_prepare`
    (called by :meth:`begin`); it may set ``context_type`` to a :class:`StepContext` subclass with more per-forward
    fields, and keeps its per-branch state in ``self._states`` (keys of its choice; cleared by :meth:`begin`).

    Attributes:
        stats: statistics of the current generation (replaced by :meth:`begin`).
    """

    context_type: type[StepContext] = StepContext

    def __init__(self) -> None:
        self.stats = CacheStats()
        self._model_depths: dict[str, int] | None = None
        self._states: dict[Any, Any] = {}
        self._context: StepContext | None = None
        self.sigmas: list[float] | None = None

    # ----------------------------------------------------------------------------------------------------------
    # The pipeline protocol.

    def bind(self, model_depths: Mapping[str, int]) -> None:
        """Checks the model's stream groups against the policy and remembers them (see :func:`attach_cache`).

        Args:
            model_depths: stream group name -> number of blocks (``model.stream_group_depths()``).

        Raises:
            ValueError: the model's stream groups do not fit the policy (see the subclass's ``_check_model``).
        """
        self._check_model(model_depths)
        self._model_depths = dict(model_depths)

    def begin(self, num_steps: int, sigmas: Sequence[float] | None = None) -> None:
        """Starts a generation of ``num_steps`` denoising steps: clears every branch's state and the statistics.

        Args:
            num_steps: denoising steps of the generation.
            sigmas: the sampler's noise level at every step (optional; a policy that forecasts over sigma needs it).

        Raises:
            RuntimeError: the cache is not bound to a model yet.
            ValueError: ``num_steps`` does not fit the policy (see the subclass's ``_prepare``).
        """
        if self._model_depths is None:
            raise RuntimeError(
                f"{self._name}.begin() before bind(): attach the cache to a model with attach_cache()"
            )
        if sigmas is not None and len(sigmas) != num_steps:
            raise ValueError(f"sigmas has {len(sigmas)} entries: expected one per step ({num_steps})")
        self.sigmas = None if sigmas is None else [float(s) for s in sigmas]
        self._prepare(num_steps)
        self._states.clear()
        self.stats = CacheStats(num_steps=num_steps)
        for name, depth in self._model_depths.items():
            self.stats.add_group(name, depth)

    @contextmanager
    def step(self, index: int, branch: str = "cond") -> Iterator[None]:
        """Marks the model forwards inside the block as denoising step ``index`` of guidance ``branch``.

        Each branch (``cond``, ``uncond``, or a batched ``cond+uncond``) keeps its own state: guidance branches
        see different text conditioning, so their residuals differ and must never be shared.

        Raises:
            RuntimeError: before :meth:`begin`, or inside another step.
            ValueError: ``index`` is not a step of the generation.
        """
        if self.stats.num_steps == 0:
            raise RuntimeError(f"{self._name}.step() before begin(num_steps): start the generation first")
        num_steps = self.stats.num_steps
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < num_steps:
            raise ValueError(f"step index={index!r} is out of range: allowed 0..{num_steps - 1}")
        if self._context is not None:
            raise RuntimeError(
                f"{self._name}.step({index}) entered inside step({self._context.step}): steps do not nest"
            )
        self._context = self.context_type(index, branch)
        if branch not in self.stats.branches:
            self.stats.branches.append(branch)
        try:
            yield
        finally:
            self._context = None

    # ----------------------------------------------------------------------------------------------------------
    # Hooks of the subclasses.

    def _check_model(self, model_depths: Mapping[str, int]) -> None:
        """Raises ValueError when the model's stream groups do not fit the policy."""
        raise NotImplementedError

    def _prepare(self, num_steps: int) -> None:
        """Checks ``num_steps`` and resets the policy's own per-generation state (before the branch states)."""
        raise NotImplementedError

    # ----------------------------------------------------------------------------------------------------------
    # Checks and accounting for ``run``.

    @property
    def _name(self) -> str:
        return type(self).__name__

    def _require_context(self, group: str, blocks: Sequence[Callable]) -> StepContext:
        """The context of the current forward, after checking that ``group`` and its depth are the bound ones."""
        if self._context is None:
            raise RuntimeError(
                f"a model with a {self._name} attached was called outside cache.step(i, branch): the pipeline must "
                "call cache.begin(num_steps) once per generation and wrap every forward in cache.step(i, branch)"
            )
        if group not in self.stats.groups:
            raise RuntimeError(
                f"stream group '{group}' is unknown to the cache: bound groups {sorted(self.stats.groups)}"
            )
        depth = self.stats.groups[group].depth
        if len(blocks) != depth:
            raise RuntimeError(
                f"stream group '{group}' got {len(blocks)} blocks, but the model was bound with {depth}"
            )
        return self._context

    @staticmethod
    def _check_order(subject: str, step: int, last_step: int) -> None:
        """Raises when ``subject`` (a branch, or a group of a branch) runs a step that is not after its last one."""
        if step <= last_step:
            raise RuntimeError(
                f"{subject} ran step {step} after step {last_step}: give each guidance branch its own name in "
                "cache.step(i, branch) and call cache.begin() for every new generation"
            )

    def _add_stack_time(self, start: float, block_seconds: float) -> None:
        """Books one ``run`` call begun at ``start`` (``time.perf_counter``), ``block_seconds`` of it in blocks."""
        elapsed = time.perf_counter() - start
        self.stats.stack_seconds += elapsed
        self.stats.engine_seconds += elapsed - block_seconds


def attach_cache(model: torch.nn.Module, cache: CachePolicy) -> None:
    """Attaches ``cache`` (any policy: a delta cache, TeaCache, a recorder) to a model whose forward calls
    :func:`common_cache.run_blocks`.

    The model must expose ``stream_group_depths() -> dict[str, int]`` and a ``block_cache`` attribute.

    Raises:
        ValueError: the cache config does not fit the model's stream groups or depths.
    """
    cache.bind(model.stream_group_depths())
    model.block_cache = cache


def detach_cache(model: torch.nn.Module) -> None:
    """Removes the cache: the model's block loops become plain loops again (bit-identical to no cache)."""
    model.block_cache = None
