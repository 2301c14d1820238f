"""The profiled delta cache: the run-time policy behind :func:`common_cache.run_blocks`.

On warm-up and refresh steps every block runs; on refresh steps the residual ("delta" = output minus input) of
each cache unit is recorded. On reuse steps the computed (foreground) blocks run and each cache unit's stored delta
is added instead of running its block(s). Differences from the official release (method.md section 8), on purpose:

* state is kept per guidance branch and reset by :meth:`DeltaCache.begin` at the start of every generation;
* the stream is updated out of place (``h = h + delta``) and a reused unit returns the dtype its blocks returned
  when they ran, so an fp32 residual stream never becomes bf16;
* a span's input is captured at its first block (a span starting at block 0 works);
* the step after the warm-up always refreshes, and a reuse without a recorded delta raises instead of crashing.

Usage (the pipeline's side)::

    cache = DeltaCache(profile.config)
    attach_cache(model, cache)               # checks the depths, sets model.block_cache
    cache.begin(num_steps)                   # new generation: clears deltas and statistics
    for i, t in enumerate(timesteps):
        with cache.step(i, "cond"):
            v_cond = model(...)
        with cache.step(i, "uncond"):
            v_uncond = model(...)
    print(cache.stats.summary())
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from common_cache.config import CacheConfig
from common_cache.plan import GroupPlan, Op, StepKind, compile_group, step_kinds
from common_cache.runner import States, call_block
from common_cache.stats import CacheStats

Deltas = tuple[torch.Tensor, ...]  # one tensor per state of the stream (image and text for HunyuanVideo double)


@dataclass
class _BranchState:
    """Deltas of one (guidance branch, stream group) pair."""

    deltas: list[Deltas | None]
    out_dtypes: list[tuple[torch.dtype, ...] | None]
    last_step: int = -1
    nbytes: int = 0

    @classmethod
    def empty(cls, num_units: int) -> _BranchState:
        return cls([None] * num_units, [None] * num_units)


def _nbytes(tensors: Deltas) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


@dataclass
class _Context:
    step: int
    branch: str


class DeltaCache:
    """Block-selective delta caching for one model.

    Args:
        config: the cache configuration (from a profile and the command line).
        delta_dtype: store deltas in this dtype to save memory (e.g. ``torch.bfloat16``); None keeps the stream's
            dtype, which makes a reuse step exactly ``input + (out - in)`` of the last refresh.
        delta_device: store deltas on this device (e.g. ``"cpu"`` to free accelerator memory); None keeps them
            where they were computed.
    """

    def __init__(
        self,
        config: CacheConfig,
        delta_dtype: torch.dtype | None = None,
        delta_device: torch.device | str | None = None,
    ) -> None:
        self.config = config
        self.delta_dtype = delta_dtype
        self.delta_device = torch.device(delta_device) if delta_device is not None else None
        self.plans: dict[str, GroupPlan] = {g.name: compile_group(g) for g in config.groups}
        self.stats = CacheStats()
        self._model_depths: dict[str, int] | None = None
        self._kinds: dict[str, tuple[StepKind, ...]] = {}
        self._states: dict[tuple[str, str], _BranchState] = {}
        self._context: _Context | None = None

    # ----------------------------------------------------------------------------------------------------------
    # Set-up: bind to a model, start a generation, enter a step.

    def bind(self, model_depths: Mapping[str, int]) -> None:
        """Checks the config against the model's stream groups (see :func:`attach_cache`).

        Raises:
            ValueError: a cached group the model lacks, or a depth mismatch.
        """
        self.config.check_depths(model_depths)
        self._model_depths = dict(model_depths)

    def begin(self, num_steps: int) -> None:
        """Starts a generation of ``num_steps`` denoising steps: clears every delta and the statistics.

        Raises:
            ValueError: the schedule does not fit ``num_steps`` (warm-up too long, refresh step out of range).
        """
        if self._model_depths is None:
            raise RuntimeError("DeltaCache.begin() before bind(): attach the cache to a model with attach_cache()")
        self._kinds = {name: step_kinds(self.config.group(name), num_steps) for name in self.plans}
        self._states.clear()
        self.stats = CacheStats(num_steps=num_steps)
        for name, depth in self._model_depths.items():
            self.stats.add_group(name, depth)

    @contextmanager
    def step(self, index: int, branch: str = "cond") -> Iterator[None]:
        """Marks the model forwards inside the block as denoising step ``index`` of guidance ``branch``.

        Each branch (``cond``, ``uncond``, or a batched ``cond+uncond``) keeps its own deltas: guidance branches
        see different text conditioning, so their residuals differ and must never be shared.
        """
        if not self._kinds:
            raise RuntimeError("DeltaCache.step() before begin(num_steps): start the generation first")
        num_steps = self.stats.num_steps
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < num_steps:
            raise ValueError(f"step index={index!r} is out of range: allowed 0..{num_steps - 1}")
        if self._context is not None:
            raise RuntimeError(f"DeltaCache.step({index}) entered inside step({self._context.step}): steps do not nest")
        self._context = _Context(index, branch)
        if branch not in self.stats.branches:
            self.stats.branches.append(branch)
        try:
            yield
        finally:
            self._context = None

    # ----------------------------------------------------------------------------------------------------------
    # The entry point called by run_blocks.

    def run(self, group: str, blocks: Sequence[Callable], states: States, kwargs: dict) -> States:
        """Runs one block stack for the current step and branch (called by :func:`common_cache.run_blocks`)."""
        start = time.perf_counter()
        context = self._require_context(group, blocks)
        single = not isinstance(states, tuple)
        hs = (states,) if single else states
        plan = self.plans.get(group)
        kind = self._kinds[group][context.step] if plan is not None else StepKind.FULL
        block_seconds = 0.0
        if kind == StepKind.FULL:
            hs, block_seconds = self._run_full(blocks, hs, single, kwargs)
            self.stats.count(group, context.step, len(blocks), 0)
        else:
            state = self._branch_state(context, plan)
            if kind == StepKind.REFRESH:
                hs, block_seconds = self._run_refresh(plan, blocks, hs, single, kwargs, state)
            else:
                hs, block_seconds = self._run_reuse(plan, blocks, hs, single, kwargs, state, context)
        elapsed = time.perf_counter() - start
        self.stats.stack_seconds += elapsed
        self.stats.engine_seconds += elapsed - block_seconds
        return hs[0] if single else hs

    # ----------------------------------------------------------------------------------------------------------

    def _require_context(self, group: str, blocks: Sequence[Callable]) -> _Context:
        if self._context is None:
            raise RuntimeError(
                "a model with a DeltaCache attached was called outside cache.step(i, branch): the pipeline must "
                "call cache.begin(num_steps) once per generation and wrap every forward in cache.step(i, branch)"
            )
        if group not in self.stats.groups:
            raise RuntimeError(f"stream group '{group}' is unknown to the cache: bound groups {sorted(self.stats.groups)}")
        depth = self.stats.groups[group].depth
        if len(blocks) != depth:
            raise RuntimeError(f"stream group '{group}' got {len(blocks)} blocks, but the model was bound with {depth}")
        return self._context

    def _branch_state(self, context: _Context, plan: GroupPlan) -> _BranchState:
        key = (context.branch, plan.name)
        state = self._states.get(key)
        if state is None:
            state = self._states[key] = _BranchState.empty(len(plan.units))
        if context.step <= state.last_step:
            raise RuntimeError(
                f"stream group '{plan.name}' of branch '{context.branch}' ran step {context.step} after step "
                f"{state.last_step}: give each guidance branch its own name in cache.step(i, branch) and call "
                "cache.begin() for every new generation"
            )
        state.last_step = context.step
        return state

    @staticmethod
    def _call(block: Callable, hs: Deltas, single: bool, kwargs: dict) -> Deltas:
        out = call_block(block, hs[0] if single else hs, kwargs)
        return (out,) if single else tuple(out)

    def _run_full(self, blocks, hs, single, kwargs):
        start = time.perf_counter()
        for block in blocks:
            hs = self._call(block, hs, single, kwargs)
        return hs, time.perf_counter() - start

    def _run_refresh(self, plan, blocks, hs, single, kwargs, state):
        block_seconds, span_input = 0.0, None
        for op, index, unit in plan.refresh_ops:
            if op == Op.OPEN_SPAN:
                span_input = hs  # a reference is enough: blocks never modify their input in place
            start = time.perf_counter()
            out = self._call(blocks[index], hs, single, kwargs)
            block_seconds += time.perf_counter() - start
            if op == Op.RUN_RECORD:
                self._record(state, unit, out, hs)
            elif op == Op.CLOSE_SPAN:
                self._record(state, unit, out, span_input)
                span_input = None
            hs = out
        self.stats.count(plan.name, self._context.step, plan.depth, 0)
        return hs, block_seconds

    def _run_reuse(self, plan, blocks, hs, single, kwargs, state, context):
        block_seconds = 0.0
        for op, index, unit in plan.reuse_ops:
            if op == Op.RUN:
                start = time.perf_counter()
                hs = self._call(blocks[index], hs, single, kwargs)
                block_seconds += time.perf_counter() - start
            else:
                hs = self._add(state, unit, hs, plan, context)
        computed = len(plan.computed_blocks)
        self.stats.count(plan.name, context.step, computed, plan.depth - computed)
        return hs, block_seconds

    def _record(self, state: _BranchState, unit: int, out: Deltas, inp: Deltas) -> None:
        deltas = tuple(o - i for o, i in zip(out, inp))
        if self.delta_dtype is not None or self.delta_device is not None:
            deltas = tuple(d.to(device=self.delta_device or d.device, dtype=self.delta_dtype or d.dtype) for d in deltas)
        old = state.deltas[unit]
        state.nbytes += _nbytes(deltas) - (_nbytes(old) if old is not None else 0)
        state.deltas[unit] = deltas
        state.out_dtypes[unit] = tuple(o.dtype for o in out)
        self.stats.set_buffer_bytes(sum(s.nbytes for s in self._states.values()))

    def _add(self, state: _BranchState, unit: int, hs: Deltas, plan: GroupPlan, context: _Context) -> Deltas:
        deltas = state.deltas[unit]
        if deltas is None:
            u = plan.units[unit]
            raise RuntimeError(
                f"no delta recorded for blocks {u.first}..{u.last} of group '{plan.name}', branch "
                f"'{context.branch}', at step {context.step}: this branch did not run the last refresh step"
            )
        out = []
        for h, d, dtype in zip(hs, deltas, state.out_dtypes[unit]):
            # Out of place, and in the dtype the skipped blocks returned (fp32 stays fp32 even when the input of the
            # first cached block is bf16, e.g. Wan's patch embedding under autocast).
            summed = h + d.to(device=h.device, dtype=dtype, non_blocking=True)
            out.append(summed if summed.dtype == dtype else summed.to(dtype))
        return tuple(out)


def attach_cache(model: torch.nn.Module, cache: DeltaCache) -> None:
    """Attaches ``cache`` to a model whose forward calls :func:`common_cache.run_blocks`.

    The model must expose ``stream_group_depths() -> dict[str, int]`` and a ``block_cache`` attribute.

    Raises:
        ValueError: the cache config does not fit the model's stream groups or depths.
    """
    cache.bind(model.stream_group_depths())
    model.block_cache = cache


def detach_cache(model: torch.nn.Module) -> None:
    """Removes the cache: the model's block loops become plain loops again (bit-identical to no cache)."""
    model.block_cache = None
