"""Budgeted profiles: every block gets its own refresh steps and forecast order under a block-call budget.

The paper splits the blocks into an always-computed and a cached set that share one schedule. With residual
forecasting that is not the best use of a compute budget: a block whose residual moves smoothly can be refreshed
rarely, one whose residual bends needs more refreshes, and where in the trajectory the refreshes go matters. The
search here decides all of it from what the full model does on the profiling prompts:

1. :class:`ResidualTrajectories` runs every block in full (a policy behind ``run_blocks``) and keeps, per block,
   guidance branch and prompt, the Gram matrix ``G[s, t] = <r_s, r_t>`` of the block's residuals ``r_s = out - in``
   over the steps (on a fixed random subset of at most ``max_elements`` entries, so that real model sizes fit), and
   the Gram matrix of each whole stack's outputs.
2. From a Gram matrix the error of every possible reuse follows in closed form: a reuse at step s that forecasts
   from records at steps i < j (order 1, finite difference over the step index) adds ``a r_j + b r_i`` instead of
   ``r_s``, an error of ``|a r_j + b r_i - r_s|``, a quadratic form in G (order 0: ``|r_j - r_s|``). Each error is
   weighted by a power p of the sampler's step size, ``(sigma_s - sigma_{s+1})^p`` (p = 1: how much of the velocity
   error reaches the latent), and summed over branches and prompts: the *predicted error* of a schedule. A unit
   that forecasts its output instead of its residual (the default of the ``stack`` layout, docs/caching.md) uses
   the same algebra on the output Gram matrix.
3. :func:`best_schedules` finds, per block and per count c of computed steps, the computed steps of minimal
   predicted error (exact dynamic programming over the last one or two computed steps, O(n^3) per count), for
   order 0 and order 1; order 2 is then tried on the chosen steps and kept where it predicts less.
4. :func:`allocate` splits the budget ``depth * n / target_speedup`` block calls between the units (exact knapsack
   over their error curves), and :func:`budgeted_group` turns the result into a stream group whose units carry
   their own warm-up, refresh list and order (neighbouring units with the same steps and order share a span).

Two unit layouts are searched the same way (:func:`search_budget`): ``stack`` (the default) makes each stream group
one unit whose residual is the whole stack's (all its blocks refresh together; the budget is split between the
groups), ``blocks`` gives every block its own steps. On the tiny model ``stack`` won by a wide margin at an equal
budget (docs/profiling.md): independent per-block schedules refresh a block from inputs that upstream forecasts
have already moved, an effect the per-block error model cannot see.

5. :func:`choose_damping` then fixes, in closed loop, how far each order-1 forecast trusts its slope: the slope
   of the last two records is scaled by a damping gamma (1 = the finite difference) chosen from :data:`DAMPINGS`
   by the PSNR it gives on the profiling prompts, and stored as the units' calibrated ``forecast_weights``.
   :func:`budgeted_profile` does this for the search's result under every power p of :data:`STEP_WEIGHT_POWERS`
   and keeps the best (p, gamma): the early steps decide the video's layout although their step sizes are the
   smallest, and how much weight they deserve differs between budgets.
   Steps far from their records bend away from the straight line; the open-loop error model cannot weigh that
   against the drift of a cached trajectory, a few real runs can.

The error model ignores that a reuse also changes the inputs of later blocks and steps; the profiler therefore runs
the chosen profile on the profiling prompts and records the error it actually measures in the profile's metadata.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from common_cache.config import FORECAST_TARGETS, CacheConfig, StreamGroupConfig, UnitConfig
from common_cache.plan import lagrange_weights
from common_cache.policy import CachePolicy
from common_cache.runner import States, call_block
from common_cache.schedule import StepListSchedule, UniformSchedule


STACK = -1  # the block index under which the whole stack's residual (last output - first input) is kept
STACK_OUTPUT = -2  # ... and the whole stack's output (what a unit forecasting its output records)


class ResidualTrajectories(CachePolicy):
    """Runs every block in full and accumulates, per (group, block), the Gram matrices of its residuals.

    Args:
        max_elements: residual entries kept per block and step (a fixed random subset, the same every step).
        seed: seed of that subset.

    Attributes:
        grams: ``(group, block) -> list of [n, n] float64 Gram matrices``, one per (prompt, branch); block
            :data:`STACK` is the whole stack as one unit.
    """

    def __init__(self, max_elements: int = 1 << 16, seed: int = 0) -> None:
        super().__init__()
        self.max_elements = max_elements
        self.seed = seed
        self.grams: dict[tuple[str, int], list[np.ndarray]] = {}
        self._subsets: dict[int, torch.Tensor] = {}

    def _check_model(self, model_depths: Mapping[str, int]) -> None:
        """Any model: every block of every group is recorded."""

    def _prepare(self, num_steps: int) -> None:
        """Adds the previous generation's matrices, if any, before the branch states are cleared."""
        self.end()

    def run(self, group: str, blocks: Sequence[Callable], states: States, kwargs: dict) -> States:
        context = self._require_context(group, blocks)
        first = self._flatten(states)
        for index, block in enumerate(blocks):
            out = call_block(block, states, kwargs)
            self._keep(context.branch, group, index, self._flatten(out) - self._flatten(states))
            states = out
        last = self._flatten(states)
        self._keep(context.branch, group, STACK, last - first)
        self._keep(context.branch, group, STACK_OUTPUT, last)
        self.stats.count(group, context.step, len(blocks), 0)
        return states

    def _keep(self, branch: str, group: str, block: int, residual: torch.Tensor) -> None:
        self._states.setdefault((branch, group, block), []).append(residual.double().cpu())

    def _flatten(self, states: States) -> torch.Tensor:
        flat = torch.cat([s.reshape(-1) for s in states]) if isinstance(states, tuple) else states.reshape(-1)
        if flat.numel() <= self.max_elements:
            return flat
        subset = self._subsets.get(flat.numel())
        if subset is None:
            generator = torch.Generator().manual_seed(self.seed)
            subset = torch.randperm(flat.numel(), generator=generator)[: self.max_elements].sort().values
            self._subsets[flat.numel()] = subset
        return flat[subset.to(flat.device)]

    def end(self) -> None:
        """Turns the finished generation's residuals into Gram matrices (called by ``begin``; call it after the
        last generation)."""
        for (branch, group, block), trajectory in self._states.items():
            if len(trajectory) != self.stats.num_steps:
                raise RuntimeError(f"block {block} of group '{group}', branch '{branch}' ran {len(trajectory)} of "
                                   f"{self.stats.num_steps} steps: a generation must run every step")
            matrix = torch.stack(trajectory)  # [n, elements]
            self.grams.setdefault((group, block), []).append((matrix @ matrix.T).numpy())
        self._states.clear()


# ------------------------------------------------------------------------------------------------ error tables

_INVALID = 1e30  # the error of an impossible forecast (finite, so that cumulative sums never give inf - inf)


def copy_errors(gram: np.ndarray) -> np.ndarray:
    """``E[j, s] = |r_j - r_s|`` for every record j and step s (order 0)."""
    diag = np.diag(gram)
    return np.sqrt(np.maximum(diag[:, None] + diag[None, :] - 2 * gram, 0.0))


def linear_errors(gram: np.ndarray) -> np.ndarray:
    """``E[i, j, s] = |r_j + (s - j) (r_j - r_i) / (j - i) - r_s|`` for i < j (order 1 over the step index);
    entries with i >= j are a huge finite value (sums over them stay finite and are never chosen)."""
    n = gram.shape[0]
    i, j, s = np.meshgrid(np.arange(n), np.arange(n), np.arange(n), indexing="ij")
    valid = i < j
    ratio = np.where(valid, (s - j) / np.where(valid, j - i, 1), 0.0)
    a, b = 1.0 + ratio, -ratio  # forecast = a r_j + b r_i
    diag = np.diag(gram)
    se = (a * a * diag[j] + b * b * diag[i] + diag[s] + 2 * a * b * gram[i, j] - 2 * a * gram[j, s]
          - 2 * b * gram[i, s])
    return np.where(valid, np.sqrt(np.maximum(se, 0.0)), _INVALID)


def forecast_error(gram: np.ndarray, records: Sequence[int], step: int, order: int) -> float:
    """The error of one reuse at ``step`` from the last ``order + 1`` of ``records`` (Lagrange over the step
    index), from the Gram matrix."""
    used = list(records)[-(order + 1):]
    weights = np.zeros(gram.shape[0])
    for w, r in zip(lagrange_weights(used, step), used):
        weights[r] += w
    weights[step] -= 1.0
    return float(np.sqrt(max(weights @ gram @ weights, 0.0)))


@dataclass(frozen=True)
class UnitTables:
    """The summed, step-weighted error tables of one unit (a block or a whole stack), over prompts and branches."""

    copy: np.ndarray  # [n, n]: copy from j at s
    linear: np.ndarray  # [n, n, n]: forecast from (i, j) at s
    grams: tuple[np.ndarray, ...]
    step_weights: np.ndarray  # [n]

    @classmethod
    def from_grams(cls, grams: Sequence[np.ndarray], step_weights: np.ndarray) -> UnitTables:
        copy = sum(copy_errors(g) for g in grams) * step_weights[None, :]
        linear = sum(linear_errors(g) for g in grams) * step_weights[None, None, :]
        return cls(copy, linear, tuple(grams), step_weights)

    def schedule_error(self, computed: Sequence[int], order: int) -> float:
        """Predicted error of the reuse steps of a schedule (computed steps sorted, step 0 first)."""
        n, done, total = len(self.step_weights), set(computed), 0.0
        records: list[int] = []
        for step in range(n):
            if step in done:
                records.append(step)
            elif records:
                total += self.step_weights[step] * sum(forecast_error(g, records, step, order) for g in self.grams)
        return total


# Exponents p of the step weights ``(sigma_s - sigma_{s+1})^p`` tried in closed loop (1.0 first: it wins ties).
# p = 1 weighs a velocity error by how much of it reaches the latent; smaller p give the early steps, where the
# sampler's steps are small but a wrong velocity can change which layout the video settles on, more weight.
STEP_WEIGHT_POWERS = (1.0, 0.5, 0.0, -0.5)


def step_weights_from_sigmas(sigmas: Sequence[float], power: float = 1.0) -> np.ndarray:
    """The sampler's step sizes ``sigma_s - sigma_{s+1}`` (the last step goes to 0), raised to ``power``."""
    values = np.asarray(list(sigmas) + [0.0], dtype=np.float64)
    sizes = np.abs(values[:-1] - values[1:])
    if power == 1.0:
        return sizes
    return np.maximum(sizes, 1e-12) ** power


# ------------------------------------------------------------------------------------------------ the search


def _window_sums(table: np.ndarray) -> np.ndarray:
    """``S[..., j, k] = sum_{s=j+1}^{k-1} table[..., j, s]``: the cost of the reuse steps between two computed steps
    j < k (+inf where k <= j)."""
    n = table.shape[-1]
    cumulative = np.concatenate([np.zeros(table.shape[:-1] + (1,)), np.cumsum(table, axis=-1)], axis=-1)
    after_j = np.take_along_axis(cumulative, np.minimum(np.arange(n) + 1, n)[:, None] + np.zeros(
        table.shape[:-2] + (n, 1), dtype=np.int64), axis=-1)  # [..., j, 1]: sum of s <= j
    sums = np.maximum(cumulative[..., :n] - after_j, 0.0)
    later = np.arange(n)[None, :] > np.arange(n)[:, None]  # k > j
    return np.where(later, sums, np.inf)


def _best_order0(copy: np.ndarray) -> list[tuple[float, tuple[int, ...]]]:
    """Per count c = 1..n: (predicted error, computed steps) of the best order-0 schedule."""
    n = copy.shape[0]
    between = _window_sums(copy)  # [j, k]
    tail = np.array([copy[j, j + 1:].sum() for j in range(n)])
    value = np.full(n, np.inf)
    value[0] = 0.0
    parents: list[np.ndarray] = []
    results = [(float(tail[0]), (0,))]
    for _ in range(1, n):
        candidates = value[:, None] + between  # [j, k]
        parent = np.argmin(candidates, axis=0)
        value = candidates[parent, np.arange(n)]
        parents.append(parent)
        last = int(np.argmin(value + tail))
        steps = [last]
        for back in reversed(parents):
            steps.append(int(back[steps[-1]]))
        results.append((float(value[last] + tail[last]), tuple(reversed(steps))))
    return results


def _best_order1(copy: np.ndarray, linear: np.ndarray) -> list[tuple[float, tuple[int, ...]]]:
    """Per count c = 1..n: (predicted error, computed steps) of the best order-1 schedule (the reuse steps before
    the second computed step can only copy)."""
    n = copy.shape[0]
    between1 = _window_sums(linear)  # [i, j, k]
    tail1 = np.array([[linear[i, j, j + 1:].sum() if i < j else _INVALID for j in range(n)] for i in range(n)])
    copy_between = _window_sums(copy)
    results = [(float(copy[0, 1:].sum()), (0,))]
    value = np.full((n, n), np.inf)  # [i, j]: last two computed steps
    value[0, 1:] = copy_between[0, 1:]
    parents: list[np.ndarray] = []
    for count in range(2, n + 1):
        total = value + tail1
        i, j = np.unravel_index(int(np.argmin(total)), total.shape)
        steps = [int(j), int(i)]
        for back in reversed(parents):
            steps.append(int(back[steps[-1], steps[-2]]))
        results.append((float(total[i, j]), tuple(reversed(steps))))
        if count == n:
            break
        candidates = value[:, :, None] + between1  # [i, j, k]
        parent = np.argmin(candidates, axis=0)  # [j, k]
        value = np.take_along_axis(candidates, parent[None], axis=0)[0]
        parents.append(parent)
    return results


@dataclass(frozen=True)
class UnitChoice:
    """One unit's best schedule at one count of computed steps."""

    error: float
    computed: tuple[int, ...]
    order: int


def best_schedules(tables: UnitTables, max_order: int = 2) -> list[UnitChoice]:
    """Per count c = 1..n of computed steps, the unit's schedule and forecast order of least predicted error."""
    choices = []
    order1 = _best_order1(tables.copy, tables.linear) if max_order >= 1 else None
    for count, (error0, steps0) in enumerate(_best_order0(tables.copy), start=1):
        best = UnitChoice(error0, steps0, 0)
        if order1 is not None and order1[count - 1][0] < best.error:
            best = UnitChoice(order1[count - 1][0], order1[count - 1][1], 1)
        if max_order >= 2 and count >= 3 and count < len(tables.step_weights):
            error2 = tables.schedule_error(best.computed, 2)
            if error2 < best.error:
                best = UnitChoice(error2, best.computed, 2)
        choices.append(best)
    return choices


def allocate(curves: Sequence[Sequence[UnitChoice]], sizes: Sequence[int], budget: int) -> list[UnitChoice]:
    """Chooses one entry per unit (its count of computed steps) minimising the summed predicted error with at most
    ``budget`` block calls per branch in total, a unit of ``size`` blocks costing ``size`` calls per computed step
    (exact knapsack).

    Raises:
        ValueError: the budget is below one computed step per unit (step 0 always runs).
    """
    if budget < sum(sizes):
        raise ValueError(f"a budget of {budget} block calls is below one computed step per unit ({sum(sizes)}): "
                         "lower the target speedup")
    best = np.full(budget + 1, np.inf)
    best[0] = 0.0
    picks = []
    for curve, size in zip(curves, sizes):
        new = np.full(budget + 1, np.inf)
        pick = np.zeros(budget + 1, dtype=np.int64)
        for count, choice in enumerate(curve, start=1):
            cost = count * size
            if cost > budget:
                break
            shifted = np.full(budget + 1, np.inf)
            shifted[cost:] = best[: budget + 1 - cost] + choice.error
            better = shifted < new
            new[better], pick[better] = shifted[better], count
        best = new
        picks.append(pick)
    spent = int(np.argmin(best))
    chosen = []
    for curve, size, pick in zip(reversed(curves), reversed(sizes), reversed(picks)):
        count = int(pick[spent])
        chosen.append(curve[count - 1])
        spent -= count * size
    return list(reversed(chosen))


def unit_from_steps(first: int, last: int, computed: Sequence[int], order: int) -> UnitConfig:
    """The unit whose blocks run exactly on ``computed`` (step 0 first): the initial run of consecutive steps ends
    with the warm-up's refresh, the other steps form the refresh list."""
    warmup = 0
    while warmup + 1 < len(computed) and computed[warmup + 1] == warmup + 1:
        warmup += 1
    return UnitConfig(first, last, warmup, StepListSchedule(tuple(computed[warmup:])), order)


def budgeted_group(name: str, depth: int, units: Sequence[tuple[int, int, UnitChoice]], num_steps: int,
                   forecast_target: str = "residual") -> StreamGroupConfig | None:
    """The stream group of per-unit choices ``(first, last, choice)``: units computed on every step are left out,
    neighbours with the same steps and order share a span. None when nothing is cached."""
    merged: list[tuple[int, int, UnitChoice]] = []
    for first, last, choice in units:
        if len(choice.computed) == num_steps:
            continue
        if merged and merged[-1][1] == first - 1 and merged[-1][2] == choice:
            merged[-1] = (merged[-1][0], last, choice)
        else:
            merged.append((first, last, choice))
    if not merged:
        return None
    configs = tuple(unit_from_steps(first, last, c.computed, c.order) for first, last, c in merged)
    cached = [b for first, last, _ in merged for b in range(first, last + 1)]
    # Every unit has its own warm-up and steps; the group's own (a refresh on every step) is never used.
    return StreamGroupConfig(name, depth, cached, warmup_steps=0, schedule=UniformSchedule(1),
                             forecast_target=forecast_target, units=configs)


LAYOUTS = ("stack", "blocks")


def search_budget(grams: Mapping[tuple[str, int], Sequence[np.ndarray]], depths: Mapping[str, int],
                  sigmas: Sequence[float], target_speedup: float, max_order: int = 2, layout: str = "stack",
                  step_weight_power: float = 1.0, forecast_target: str = "residual"
                  ) -> tuple[list[StreamGroupConfig], dict]:
    """The budgeted stream groups for an ideal speedup of at least ``target_speedup``.

    Args:
        grams: from :class:`ResidualTrajectories`.
        depths: blocks per stream group.
        sigmas: the sampler's sigma per step (step weights).
        target_speedup: full block calls over computed block calls.
        max_order: highest forecast order to consider.
        layout: ``stack``: each group is one unit (all its blocks refresh together; the budget is split between
            the groups); ``blocks``: every block is its own unit with its own steps and order.
        step_weight_power: p of the step weights ``(sigma_s - sigma_{s+1})^p`` of the predicted error.
        forecast_target: ``residual`` or ``output`` (what the units forecast; ``output`` only with the ``stack``
            layout: the errors then come from the Gram matrices of the stack's outputs).

    Returns:
        (groups, a summary: budget, predicted error, per-unit counts and orders).

    Raises:
        ValueError: ``target_speedup`` < 1, an unknown layout or target, or a budget below one step per unit.
    """
    if not (isinstance(target_speedup, (int, float)) and target_speedup >= 1.0):
        raise ValueError(f"target_speedup={target_speedup!r} is not allowed: expected a number >= 1")
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r} is not allowed: expected one of {list(LAYOUTS)}")
    if forecast_target not in FORECAST_TARGETS:
        raise ValueError(f"forecast_target={forecast_target!r} is not allowed: expected one of "
                         f"{list(FORECAST_TARGETS)}")
    if forecast_target == "output" and layout != "stack":
        raise ValueError(f"forecast_target='output' is not allowed with layout={layout!r}: expected the 'stack' "
                         "layout (only the whole stack's outputs are recorded)")
    weights = step_weights_from_sigmas(sigmas, step_weight_power)
    num_steps = len(weights)
    if layout == "stack":
        key = STACK_OUTPUT if forecast_target == "output" else STACK
        units = [(group, 0, depth - 1, key) for group, depth in depths.items()]
    else:
        units = [(group, b, b, b) for group, depth in depths.items() for b in range(depth)]
    curves = [best_schedules(UnitTables.from_grams(grams[(group, key)], weights), max_order)
              for group, _, _, key in units]
    sizes = [last - first + 1 for _, first, last, _ in units]
    budget = int(np.floor(num_steps * sum(depths.values()) / target_speedup + 1e-9))
    chosen = allocate(curves, sizes, budget)
    groups = []
    for group, depth in depths.items():
        picks = [(first, last, c) for (g, first, last, _), c in zip(units, chosen) if g == group]
        config = budgeted_group(group, depth, picks, num_steps, forecast_target)
        if config is not None:
            groups.append(config)
    if not groups:
        raise ValueError(f"target_speedup={target_speedup} leaves every block computed on every step: expected a "
                         "target above 1")
    summary = {
        "target_speedup": target_speedup, "layout": layout, "max_forecast_order": max_order,
        "forecast_target": forecast_target,
        "step_weights": f"(sigma_s - sigma_(s+1))^{step_weight_power:g}", "step_weight_power": step_weight_power,
        "budget_block_calls_per_branch": budget,
        "computed_block_calls_per_branch": sum(len(c.computed) * n for c, n in zip(chosen, sizes)),
        "predicted_error": round(float(sum(c.error for c in chosen)), 6),
        "units": {f"{g}:{first}-{last}": {"computed_steps": len(c.computed), "order": c.order}
                  for (g, first, last, _), c in zip(units, chosen)},
    }
    return groups, summary


# ------------------------------------------------------------------------------------------------ the profiler's run


def video_psnr(reference: np.ndarray, test: np.ndarray) -> float:
    """PSNR (dB) of two uint8 videos over all their pixels (inf when identical)."""
    mse = float(np.mean((reference.astype(np.float64) - test.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


# Slope scales tried by :func:`choose_damping` (1.0 first: finite differences win ties).
DAMPINGS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)


def damped_weights(unit: UnitConfig, num_steps: int, damping: float) -> tuple[tuple[int, tuple[float, ...]], ...]:
    """The calibrated weights of a resolved order-1 unit whose forecast slope is scaled by ``damping``: a reuse at
    step s after records i < j adds ``r_j + damping (s - j) / (j - i) (r_j - r_i)`` (weights oldest first); the
    reuse steps after a single record copy it."""
    computed = set(range(unit.warmup_steps)) | set(unit.schedule.refresh_steps(unit.warmup_steps, num_steps))
    records, weights = [], []
    for step in range(num_steps):
        if step in computed:
            records.append(step)
        elif len(records) == 1:
            weights.append((step, (1.0,)))
        elif records:
            i, j = records[-2:]
            slope = damping * (step - j) / (j - i)
            weights.append((step, (-slope, 1.0 + slope)))
    return tuple(weights)


def with_damping(config: CacheConfig, num_steps: int, damping: float) -> CacheConfig:
    """``config`` with every explicit order-1 unit's forecast slope scaled by ``damping`` (1.0: unchanged). The
    weights are over the step index, the abscissa of every budgeted profile."""
    if damping == 1.0:
        return config
    groups = []
    for group in config.groups:
        units = tuple(
            replace(unit, forecast_weights=damped_weights(group.resolved_unit(unit), num_steps, damping))
            if group.resolved_unit(unit).forecast_order == 1 else unit for unit in group.units)
        groups.append(replace(group, units=units))
    return CacheConfig(tuple(groups))


def choose_damping(config: CacheConfig, run: Callable, prompts: Sequence[str], seeds: Sequence[int],
                   references: Sequence[np.ndarray], num_steps: int, dampings: Sequence[float] = DAMPINGS,
                   progress: Callable[[int], None] | None = None) -> tuple[float, dict[str, float]]:
    """The damping of :data:`DAMPINGS` whose config gives the highest mean PSNR on the profiling prompts.

    Args:
        config: the searched config (order-1 units get damped; others are left as they are).
        run, prompts, seeds, references: as for :func:`measure_profile`.
        num_steps: steps of the run.
        dampings: the candidates (the first wins ties).
        progress: called after each generation.

    Returns:
        (the chosen damping, the mean PSNR of every candidate keyed by its value as text).
    """
    from common_cache.delta_cache import DeltaCache

    scores: dict[str, float] = {}
    best, best_psnr = dampings[0], -np.inf
    for damping in dampings:
        damped = with_damping(config, num_steps, damping)
        psnrs = []
        for prompt, seed, reference in zip(prompts, seeds, references):
            psnrs.append(min(video_psnr(reference, run(DeltaCache(damped), prompt, seed)[0]), 100.0))
            if progress is not None:
                progress(1)
        scores[str(damping)] = round(float(np.mean(psnrs)), 3)
        if scores[str(damping)] > best_psnr:
            best, best_psnr = damping, scores[str(damping)]
    return best, scores


def measure_profile(config, run: Callable, prompts: Sequence[str], seeds: Sequence[int],
                    references: Sequence[np.ndarray], progress: Callable[[int], None] | None = None) -> dict:
    """Runs a cache config on the profiling prompts against their full-compute videos.

    Args:
        config: the :class:`~common_cache.CacheConfig` to check.
        run: ``run(cache or None, prompt, seed) -> (uint8 frames, denoising seconds)``.
        prompts, seeds: the profiling prompts and their seeds.
        references: the full-compute frames of each prompt.
        progress: called after each prompt.

    Returns:
        The measured figures: mean / min PSNR, the measured speedup (median of the per-prompt ratios, full and
        cached timed back to back), the ideal speedup.
    """
    from common_cache.delta_cache import DeltaCache

    psnrs, ratios, ideal = [], [], None
    for index, (prompt, seed) in enumerate(zip(prompts, seeds)):
        _, full_seconds = run(None, prompt, seed)
        cache = DeltaCache(config)
        frames, cached_seconds = run(cache, prompt, seed)
        psnrs.append(video_psnr(references[index], frames))
        ratios.append(full_seconds / cached_seconds)
        ideal = cache.stats.ideal_speedup
        if progress is not None:
            progress(index)
    finite = [p for p in psnrs if np.isfinite(p)]
    return {"psnr_mean": round(float(np.mean(finite)), 3) if finite else None,
            "psnr_min": round(float(np.min(finite)), 3) if finite else None,
            "measured_speedup": round(float(np.median(ratios)), 3), "ideal_speedup": round(float(ideal), 4),
            "prompts": len(prompts)}


def choose_search(searches: Sequence[tuple[list[StreamGroupConfig], dict]], powers: Sequence[float],
                  dampings: Sequence[float], run: Callable, prompts: Sequence[str], seeds: Sequence[int],
                  references: Sequence[np.ndarray], num_steps: int,
                  progress: Callable[[int], None] | None = None) -> tuple[int, dict[str, dict]]:
    """The closed-loop choice between the searches made with each step-weight power: each distinct result gets its
    damping from :func:`choose_damping` (stored in its summary), and the one of best mean PSNR wins (ties: the
    earlier power).

    Returns:
        (the index of the chosen search, per power its dampings' mean PSNRs or the power whose steps it repeats).
    """
    best, best_psnr, tried, seen = 0, -np.inf, {}, {}
    for index, (groups, search) in enumerate(searches):
        config = CacheConfig(tuple(groups))
        if config in seen:  # another power chose the same steps: already measured
            tried[str(powers[index])] = {"same_steps_as": str(powers[seen[config]])}
            if progress is not None:
                progress(len(prompts) * len(dampings))
            continue
        seen[config] = index
        search["forecast_damping"], scores = choose_damping(config, run, prompts, seeds, references, num_steps,
                                                            dampings, progress)
        search["damping_psnr_on_profiling_prompts"] = tried[str(powers[index])] = scores
        if scores[str(search["forecast_damping"])] > best_psnr:
            best, best_psnr = index, scores[str(search["forecast_damping"])]
    return best, tried


def budgeted_profile(generate: Callable, prompts: Sequence[str], seeds: Sequence[int], depths: Mapping[str, int],
                     target_speedup: float, max_order: int = 2, layout: str = "stack", max_elements: int = 1 << 16,
                     progress: Callable[[int], None] | None = None, damping: float | None = None,
                     step_weight_power: float | None = None, forecast_target: str | None = None):
    """The profiler's budgeted run, for any model: residual trajectories of full-compute generations, the search,
    the forecast damping, then the chosen config measured against those generations.

    Args:
        generate: ``generate(policy or None, prompt, seed) -> (uint8 frames, denoising seconds)`` with the policy
            attached to the model for that generation.
        prompts, seeds: the profiling prompts and their seeds (never the evaluation ones).
        depths: the model's stream groups.
        target_speedup, max_order, layout: see :func:`search_budget`.
        max_elements: residual entries kept per block and step.
        progress: called with the number of generations just finished.
        damping: the forecast slope scale; None chooses it from :data:`DAMPINGS` on the profiling prompts
            (:func:`choose_damping`, one generation per prompt and candidate).
        step_weight_power: p of the search's step weights; None searches with every p of
            :data:`STEP_WEIGHT_POWERS` and keeps, with its damping, the one whose profile is closest to full compute
            on the profiling prompts.
        forecast_target: what the units forecast (see :func:`search_budget`); None: ``output`` with the stack
            layout (measured better, docs/profiling.md), ``residual`` with the blocks layout.

    Returns:
        (the :class:`~common_cache.CacheConfig`, the search summary (with the damping, the step weights and, when
        several were tried, every candidate's mean PSNR), the measured figures of :func:`measure_profile`).
    """
    recorder = ResidualTrajectories(max_elements=max_elements)
    references = []
    for prompt, seed in zip(prompts, seeds):
        references.append(generate(recorder, prompt, seed)[0])
        if progress is not None:
            progress(1)
    recorder.end()
    num_steps = len(recorder.sigmas)
    if forecast_target is None:
        forecast_target = "output" if layout == "stack" else "residual"
    powers = STEP_WEIGHT_POWERS if step_weight_power is None else (step_weight_power,)
    dampings = DAMPINGS if damping is None else (damping,)
    searches = [search_budget(recorder.grams, depths, recorder.sigmas, target_speedup, max_order, layout, power,
                              forecast_target) for power in powers]
    best, tried = 0, {}
    if len(powers) * len(dampings) > 1:
        best, tried = choose_search(searches, powers, dampings, generate, prompts, seeds, references, num_steps,
                                    progress)
    groups, search = searches[best]
    search.setdefault("forecast_damping", dampings[0])
    if len(powers) > 1:
        search["step_weight_power_psnr_on_profiling_prompts"] = tried
    config = with_damping(CacheConfig(tuple(groups)), num_steps, search["forecast_damping"])
    measured = measure_profile(config, generate, prompts, seeds, references,
                               None if progress is None else lambda _: progress(2))
    return config, search, measured
