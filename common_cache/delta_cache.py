"""The profiled delta cache: the run-time policy behind :func:`common_cache.run_blocks`.

On warm-up and refresh steps every block runs; on refresh steps the residual ("delta" = output minus input) of
each cache unit is recorded. On reuse steps the computed (foreground) blocks run and each cache unit's residual is
added instead of running its block(s): with forecast order 0 the last recorded one (the paper), with order 1 or 2
the extrapolation of its last 2 or 3 records (finite differences over the step index or sigma, or a profile's
calibrated weights; fixed before the run). Every unit may have its own schedule and order (docs/caching.md). A
group with ``forecast_target: output`` records each unit's output instead, and a reuse step returns the forecast
output in place of the unit's blocks, whatever their input.
Differences from the official release (method.md section 8), on purpose:

* state is kept per guidance branch and reset by :meth:`DeltaCache.begin` at the start of every generation;
* the stream is updated out of place (``h = h + delta``) and a reused unit returns the dtype its blocks returned
  when they ran, so an fp32 residual stream never becomes bf16;
* a span's input is captured at its first block (a span starting at block 0 works);
* the step after the warm-up always refreshes, and a reuse without a recorded delta raises instead of crashing.

Usage (the pipeline's side)::

    cache = DeltaCache(profile.config)
    attach_cache(model, cache)               # checks the depths, sets model.block_cache
    cache.begin(num_steps, sigmas=sigmas)    # new generation: compiles the steps, clears deltas and statistics
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
from common_cache.plan import GroupPlan, Op, StepPlan, compile_group, compile_steps
from common_cache.policy import CachePolicy, StepContext
from common_cache.runner import States, call_block

Deltas = tuple[torch.Tensor, ...]  # one tensor per state of the stream (image and text for HunyuanVideo double)


@dataclass
class _BranchState:
    """Recorded residuals of one (guidance branch, stream group) pair: per unit, its most recent records (oldest
    first, at most forecast order + 1) and the dtypes its blocks returned."""

    history: list[list[Deltas]]
    out_dtypes: list[tuple[torch.dtype, ...] | None]
    last_step: int = -1
    nbytes: int = 0

    @classmethod
    def empty(cls, num_units: int) -> _BranchState:
        return cls([[] for _ in range(num_units)], [None] * num_units)


def _nbytes(tensors: Deltas) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


class DeltaCache(CachePolicy):
    """Block-selective residual caching with optional forecasting, for one model.

    The pipeline protocol (``bind``, ``begin``, ``step``) comes from :class:`common_cache.policy.CachePolicy`:
    ``bind`` checks the config against the model's stream groups, and ``begin`` compiles every step's actions for
    the run (each unit's schedule and forecast weights) and clears every residual and the statistics.

    Args:
        config: the cache configuration (from a profile and the command line).
        delta_dtype: store residuals in this dtype to save memory (e.g. ``torch.bfloat16``); None keeps the stream's
            dtype, which makes an order-0 reuse step exactly ``input + (out - in)`` of the last refresh.
        delta_device: store residuals on this device (e.g. ``"cpu"`` to free accelerator memory); None keeps them
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
        self._steps: dict[str, tuple[StepPlan, ...]] = {}
        self._states: dict[tuple[str, str], _BranchState] = {}  # (branch, group) -> residuals

    # ----------------------------------------------------------------------------------------------------------
    # Hooks of bind and begin.

    def _check_model(self, model_depths: Mapping[str, int]) -> None:
        """Raises ValueError for a cached group the model lacks, or a depth mismatch."""
        self.config.check_depths(model_depths)

    def _prepare(self, num_steps: int) -> None:
        """Compiles every step of the generation per group (the forecast abscissa: step index or sigma).

        Raises:
            ValueError: a schedule does not fit ``num_steps``; a group forecasts over sigma but ``begin`` got none.
        """
        self._steps = {}
        for name, plan in self.plans.items():
            group = self.config.group(name)
            positions = None
            if group.forecast_abscissa == "sigma" and group.max_forecast_order > 0:
                if self.sigmas is None:
                    raise ValueError(f"group '{name}' forecasts over sigma: the pipeline must pass the run's sigmas "
                                     "to cache.begin(num_steps, sigmas=...)")
                positions = self.sigmas
            self._steps[name] = compile_steps(group, plan, num_steps, positions)

    # ----------------------------------------------------------------------------------------------------------
    # The entry point called by run_blocks.

    def run(self, group: str, blocks: Sequence[Callable], states: States, kwargs: dict) -> States:
        """Runs one block stack for the current step and branch (called by :func:`common_cache.run_blocks`)."""
        start = time.perf_counter()
        context = self._require_context(group, blocks)
        single = not isinstance(states, tuple)
        hs = (states,) if single else states
        plan = self.plans.get(group)
        step = self._steps[group][context.step] if plan is not None else None
        if step is None or step.is_plain:
            hs, block_seconds = self._run_plain(blocks, hs, single, kwargs)
            self.stats.count(group, context.step, len(blocks), 0)
        else:
            state = self._branch_state(context, plan)
            hs, block_seconds = self._execute(step, plan, blocks, hs, single, kwargs, state, context)
            self.stats.count(group, context.step, step.computed, step.skipped)
        self._add_stack_time(start, block_seconds)
        return hs[0] if single else hs

    def replaces_stack(self, group: str) -> bool:
        """True when the current step returns ``group``'s forecast output without reading the stack's input (the
        group forecasts its units' outputs and one reused unit covers all its blocks); see
        :func:`common_cache.runner.stack_input_unused`. False outside ``step``."""
        plan = self.plans.get(group)
        if plan is None or not plan.forecasts_output or self._context is None:
            return False
        return self._steps[group][self._context.step].forecasts_whole_stack

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

    def _run_plain(self, blocks, hs, single, kwargs):
        start = time.perf_counter()
        for block in blocks:
            hs = self._call(block, hs, single, kwargs)
        return hs, time.perf_counter() - start

    def _execute(self, step: StepPlan, plan, blocks, hs, single, kwargs, state, context):
        """Runs one step's actions; returns the states and the seconds spent in block calls."""
        block_seconds, span_input = 0.0, None
        for op, index, unit, weights in step.ops:
            if op == Op.ADD:
                hs = self._add(state, unit, hs, weights, plan, context)
                continue
            if op == Op.OPEN_SPAN:
                span_input = hs  # a reference is enough: blocks never modify their input in place
            start = time.perf_counter()
            out = self._call(blocks[index], hs, single, kwargs)
            block_seconds += time.perf_counter() - start
            if op == Op.RUN_RECORD:
                self._record(state, plan, unit, out, hs)
            elif op == Op.CLOSE_SPAN:
                self._record(state, plan, unit, out, span_input)
                span_input = None
            hs = out
        return hs, block_seconds

    def _record(self, state: _BranchState, plan: GroupPlan, unit: int, out: Deltas, inp: Deltas) -> None:
        deltas = out if plan.forecasts_output else tuple(o - i for o, i in zip(out, inp))
        if self.delta_dtype is not None or self.delta_device is not None:
            deltas = tuple(d.to(device=self.delta_device or d.device, dtype=self.delta_dtype or d.dtype)
                           for d in deltas)
        if plan.forecasts_output:  # the output flows on to the next block: the record must not be the same tensor
            deltas = tuple(d.clone() if d is o else d for d, o in zip(deltas, out))
        history = state.history[unit]
        history.append(deltas)
        state.nbytes += _nbytes(deltas)
        if len(history) > plan.history_sizes[unit]:
            state.nbytes -= _nbytes(history.pop(0))
        state.out_dtypes[unit] = tuple(o.dtype for o in out)
        self.stats.set_buffer_bytes(sum(s.nbytes for s in self._states.values()))

    def _add(self, state: _BranchState, unit: int, hs: Deltas, weights, plan: GroupPlan,
             context: StepContext) -> Deltas:
        history = state.history[unit]
        if weights is None or len(history) < len(weights):
            u = plan.units[unit]
            raise RuntimeError(
                f"no delta recorded for blocks {u.first}..{u.last} of group '{plan.name}', branch "
                f"'{context.branch}', at step {context.step}: this branch did not run the unit's last refresh step"
            )
        records = history[-len(weights):]
        out = []
        for j, (h, dtype) in enumerate(zip(hs, state.out_dtypes[unit])):
            # Out of place, and in the dtype the skipped blocks returned (fp32 stays fp32 even when the input of the
            # first cached block is bf16, e.g. Wan's patch embedding under autocast).
            if weights == (1.0,):  # a copy: the stored record itself (bit-identical to the paper's order 0)
                forecast = records[0][j].to(device=h.device, dtype=dtype, non_blocking=True)
            else:  # a forecast (finite differences or calibrated weights), computed in the stream's dtype
                forecast = sum(w * r[j].to(device=h.device, dtype=dtype, non_blocking=True)
                               for w, r in zip(weights, records))
            if plan.forecasts_output:  # the forecast output is the result; never hand out the record itself
                result = forecast.clone() if forecast is records[0][j] else forecast
            else:
                result = h + forecast
            out.append(result if result.dtype == dtype else result.to(dtype))
        return tuple(out)
