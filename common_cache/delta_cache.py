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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from common_cache.config import CacheConfig
from common_cache.plan import GroupPlan, Op, StepKind, compile_group, step_kinds
from common_cache.policy import CachePolicy, StepContext
from common_cache.runner import States, call_block

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


class DeltaCache(CachePolicy):
    """Block-selective delta caching for one model.

    The pipeline protocol (``bind``, ``begin``, ``step``) comes from :class:`common_cache.policy.CachePolicy`:
    ``bind`` checks the config against the model's stream groups, and ``begin`` checks that the schedule fits the
    generation and clears every delta and the statistics.

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
        super().__init__()
        self._kinds: dict[str, tuple[StepKind, ...]] = {}
        self._states: dict[tuple[str, str], _BranchState] = {}  # (branch, group) -> deltas

    # ----------------------------------------------------------------------------------------------------------
    # Hooks of bind and begin.

    def _check_model(self, model_depths: Mapping[str, int]) -> None:
        """Raises ValueError for a cached group the model lacks, or a depth mismatch."""
        self.config.check_depths(model_depths)

    def _prepare(self, num_steps: int) -> None:
        """Classifies every step of the generation per group.

        Raises:
            ValueError: the schedule does not fit ``num_steps`` (warm-up too long, refresh step out of range).
        """
        self._kinds = {name: step_kinds(self.config.group(name), num_steps) for name in self.plans}

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
        self._add_stack_time(start, block_seconds)
        return hs[0] if single else hs

    # ----------------------------------------------------------------------------------------------------------

    def _branch_state(self, context: StepContext, plan: GroupPlan) -> _BranchState:
        key = (context.branch, plan.name)
        state = self._states.get(key)
        if state is None:
            state = self._states[key] = _BranchState.empty(len(plan.units))
        self._check_order(f"stream group '{plan.name}' of branch '{context.branch}'", context.step, state.last_step)
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
            deltas = tuple(d.to(device=self.delta_device or d.device, dtype=self.delta_dtype or d.dtype)
                           for d in deltas)
        old = state.deltas[unit]
        state.nbytes += _nbytes(deltas) - (_nbytes(old) if old is not None else 0)
        state.deltas[unit] = deltas
        state.out_dtypes[unit] = tuple(o.dtype for o in out)
        self.stats.set_buffer_bytes(sum(s.nbytes for s in self._states.values()))

    def _add(self, state: _BranchState, unit: int, hs: Deltas, plan: GroupPlan, context: StepContext) -> Deltas:
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
