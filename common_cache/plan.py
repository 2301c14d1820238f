"""Plan compilation: a stream group's cache units and schedules become per-step, per-block actions.

A *cache unit* is a run of blocks that shares one residual: an isolated block keeps ``out - in``; a span of two or
more blocks keeps one residual from its input to its output, and its interior blocks are skipped on reuse steps.
Without explicit units, the maximal runs of consecutive cached blocks are the units. Every unit has its own warm-up,
refresh schedule and forecast order (by default the group's), so a step may refresh some units and reuse others.

Everything is decided before the first step (:func:`compile_steps`): one op list per step, with the forecast
weights of every reuse already computed (finite differences, or a profile's calibrated weights), so the hot loop
does no membership tests and nothing depends on the data (method.md section 8 item 10; every rank of a
sequence-parallel run compiles the same lists).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

from common_cache.config import StreamGroupConfig, UnitConfig, block_runs, unit_refresh_steps


class Op(IntEnum):
    """What the engine does at one position of a block stack."""

    RUN = 0  # run the block
    RUN_RECORD = 1  # run an isolated cached block and record delta = out - in
    OPEN_SPAN = 2  # keep the input of a span, then run its first block
    CLOSE_SPAN = 3  # run a span's last block and record delta = out - span input
    ADD = 4  # reuse: add the unit's forecast residual (or return its forecast output) instead of running its blocks


class StepKind(IntEnum):
    """How one step treats one cache unit."""

    FULL = 0  # run its blocks, record nothing (warm-up, or a refresh no reuse step needs)
    REFRESH = 1  # run its blocks and record the residual
    REUSE = 2  # add the forecast residual instead of running its blocks


@dataclass(frozen=True)
class CacheUnit:
    """A run of consecutive cached blocks ``first..last`` (isolated when first == last)."""

    first: int
    last: int

    @property
    def is_span(self) -> bool:
        return self.last > self.first


# One action: (op, block index, unit index or -1, forecast weights of an ADD (oldest record first) or None).
Action = tuple[Op, int, int, tuple[float, ...] | None]


@dataclass(frozen=True)
class StepPlan:
    """The compiled actions of one stream group on one step.

    Attributes:
        ops: the actions in block order.
        computed: blocks that run.
        skipped: blocks replaced by a unit's residual.
    """

    ops: tuple[Action, ...]
    computed: int
    skipped: int

    @property
    def is_plain(self) -> bool:
        """True when every block runs and nothing is recorded (the plain loop)."""
        return all(op == Op.RUN for op, _, _, _ in self.ops)

    @property
    def forecasts_whole_stack(self) -> bool:
        """True when one reused unit covers every block: the step's only action is that unit's forecast."""
        return self.computed == 0 and len(self.ops) == 1


@dataclass(frozen=True)
class GroupPlan:
    """The static part of a stream group's plan.

    Attributes:
        name: stream group name.
        depth: number of blocks.
        units: the cache units in block order.
        unit_configs: each unit's resolved warm-up, schedule and forecast order.
        computed_blocks: blocks that no unit covers (they run on every step: the foreground-focused blocks).
        forecasts_output: units record their output and a reuse returns its forecast (else: residuals, added to
            the input).
    """

    name: str
    depth: int
    units: tuple[CacheUnit, ...]
    unit_configs: tuple[UnitConfig, ...]
    computed_blocks: tuple[int, ...]
    forecasts_output: bool = False

    @property
    def history_sizes(self) -> tuple[int, ...]:
        """How many recorded residuals each unit keeps: its forecast order + 1."""
        return tuple(u.forecast_order + 1 for u in self.unit_configs)


def cache_units(cached_blocks: tuple[int, ...]) -> tuple[CacheUnit, ...]:
    """Splits a sorted block list into maximal runs of consecutive indices."""
    return tuple(CacheUnit(u.first, u.last) for u in block_runs(cached_blocks))


def compile_group(group: StreamGroupConfig) -> GroupPlan:
    """The static plan of a validated stream group (units and the blocks that always run)."""
    configs = group.resolved_units()
    units = tuple(CacheUnit(u.first, u.last) for u in configs)
    covered = {b for u in units for b in range(u.first, u.last + 1)}
    computed = tuple(b for b in range(group.depth) if b not in covered)
    return GroupPlan(group.name, group.depth, units, configs, computed, group.forecast_target == "output")


def unit_step_kinds(where: str, unit: UnitConfig, num_steps: int) -> tuple[StepKind, ...]:
    """Classifies every step of a run for one resolved unit.

    The unit runs on its warm-up and refresh steps and is reused on the others. A step on which it runs records its
    residual only when a later reuse step's forecast needs that record, i.e. when it is among the last
    ``forecast_order + 1`` run steps before some reuse step; otherwise it is FULL (records nothing). With order 0 this
    records exactly the last refresh before each run of reuse steps, so a schedule that refreshes every step costs
    nothing over the plain loop.
    """
    refresh = set(unit_refresh_steps(where, unit, num_steps))
    runs = [step < unit.warmup_steps or step in refresh for step in range(num_steps)]
    kinds = [StepKind.FULL if run else StepKind.REUSE for run in runs]
    runs_before_reuse = None  # run steps seen (going backwards) since the nearest later reuse step
    for step in range(num_steps - 1, -1, -1):
        if not runs[step]:
            runs_before_reuse = 0
        elif runs_before_reuse is not None:
            if runs_before_reuse <= unit.forecast_order:
                kinds[step] = StepKind.REFRESH
            runs_before_reuse += 1
    return tuple(kinds)


def step_kinds(group: StreamGroupConfig, num_steps: int) -> tuple[StepKind, ...]:
    """Classifies every step of a run for the group's own warm-up, schedule and forecast order."""
    unit = UnitConfig(0, 0, group.warmup_steps, group.schedule, group.forecast_order)
    return unit_step_kinds(f"group '{group.name}'", unit, num_steps)


def lagrange_weights(nodes: Sequence[float], x: float) -> tuple[float, ...]:
    """Weights ``w`` with ``p(x) = sum_i w_i f(nodes_i)`` for the polynomial through the points (extrapolation).

    One node gives ``(1.0,)`` (a copy); two give the linear extrapolation of the finite difference; three the
    quadratic one.

    Raises:
        ValueError: two nodes coincide.
    """
    if len(set(nodes)) != len(nodes):
        raise ValueError(f"forecast nodes {list(nodes)} repeat a value: the abscissa must differ between records")
    weights = []
    for i, xi in enumerate(nodes):
        w = 1.0
        for j, xj in enumerate(nodes):
            if j != i:
                w *= (x - xj) / (xi - xj)
        weights.append(w)
    return tuple(weights)


def _unit_actions(block: int, index: int, unit: CacheUnit, kind: StepKind, weights) -> list[Action]:
    """The action (or none, inside a reused span) of one cached block."""
    if kind == StepKind.FULL:
        return [(Op.RUN, block, index, None)]
    if kind == StepKind.REUSE:
        return [(Op.ADD, block, index, weights)] if block == unit.last else []
    if not unit.is_span:
        return [(Op.RUN_RECORD, block, index, None)]
    if block == unit.first:
        return [(Op.OPEN_SPAN, block, index, None)]
    return [(Op.CLOSE_SPAN if block == unit.last else Op.RUN, block, index, None)]


def compile_steps(group: StreamGroupConfig, plan: GroupPlan, num_steps: int,
                  positions: Sequence[float] | None = None) -> tuple[StepPlan, ...]:
    """Compiles every step of a run of ``num_steps`` steps into its op list.

    Args:
        group: the validated stream group.
        plan: its static plan (:func:`compile_group`).
        num_steps: steps of the run.
        positions: the forecast abscissa of every step (e.g. the sampler's sigmas); None uses the step index.

    Raises:
        ValueError: a schedule does not fit ``num_steps``, or ``positions`` has the wrong length or repeats a value
            that a forecast uses.
    """
    if positions is not None and len(positions) != num_steps:
        raise ValueError(f"positions has {len(positions)} entries: expected one per step ({num_steps})")
    xs = list(range(num_steps)) if positions is None else [float(p) for p in positions]
    kinds, weights = [], []
    for index, unit in enumerate(plan.unit_configs):
        where = f"group '{group.name}', unit {unit.first}..{unit.last}"
        unit_kinds = unit_step_kinds(where, unit, num_steps)
        kinds.append(unit_kinds)
        weights.append(_forecast_weights(where, unit, unit_kinds, xs))
    unit_of = {b: i for i, u in enumerate(plan.units) for b in range(u.first, u.last + 1)}
    steps = []
    for step in range(num_steps):
        ops: list[Action] = []
        for block in range(plan.depth):
            index = unit_of.get(block)
            if index is None:
                ops.append((Op.RUN, block, -1, None))
            else:
                ops += _unit_actions(block, index, plan.units[index], kinds[index][step], weights[index].get(step))
        computed = sum(op != Op.ADD for op, _, _, _ in ops)
        steps.append(StepPlan(tuple(ops), computed, plan.depth - computed))
    return tuple(steps)


def _forecast_weights(where: str, unit: UnitConfig, kinds: Sequence[StepKind],
                      xs: Sequence[float]) -> dict[int, tuple[float, ...]]:
    """Per reuse step, the weights of the unit's most recent records (up to ``order + 1`` of them; fewer right
    after the first refresh, where only a lower order is possible): its calibrated ``forecast_weights`` when it has
    them, else the Lagrange weights over ``xs``.

    Raises:
        ValueError: calibrated weights that miss a reuse step, name another step, or have the wrong length.
    """
    records: list[int] = []
    weights = {}
    for step, kind in enumerate(kinds):
        if kind == StepKind.REFRESH:
            records.append(step)
        elif kind == StepKind.REUSE and records:
            used = records[-(unit.forecast_order + 1):]
            weights[step] = lagrange_weights([xs[s] for s in used], xs[step])
    if unit.forecast_weights is None:
        return weights
    calibrated = dict(unit.forecast_weights)
    if set(calibrated) != set(weights):
        raise ValueError(f"{where}: forecast_weights are given for the steps {sorted(calibrated)} but the unit "
                         f"reuses on the steps {sorted(weights)}: expected one entry per reuse step")
    for step, values in calibrated.items():
        if len(values) != len(weights[step]):
            raise ValueError(f"{where}: forecast_weights at step {step} has {len(values)} weights: the forecast "
                             f"there uses {len(weights[step])} records")
    return calibrated
