"""Plan compilation: a stream group's cached block list and schedule become per-step, per-block actions.

Maximal runs of consecutive cached blocks become *cache units*: an isolated block keeps its own delta
(``out - in``); a span of two or more blocks keeps one delta from its input to its output, and its interior blocks
are skipped on reuse steps. The actions are precompiled into two op lists (refresh and reuse) so the hot loop does
no membership tests (method.md section 8 item 10).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from common_cache.config import StreamGroupConfig


class Op(IntEnum):
    """What the engine does at one position of a block stack."""

    RUN = 0  # run the block
    RUN_RECORD = 1  # run an isolated cached block and record delta = out - in
    OPEN_SPAN = 2  # keep the input of a span, then run its first block
    CLOSE_SPAN = 3  # run a span's last block and record delta = out - span input
    ADD = 4  # reuse: add the unit's stored delta instead of running its block(s)


class StepKind(IntEnum):
    """How a whole step treats a stream group."""

    FULL = 0  # run every block, record nothing (warm-up, or a refresh no reuse step needs)
    REFRESH = 1  # run every block and record the deltas
    REUSE = 2  # run the computed blocks and add the stored deltas


@dataclass(frozen=True)
class CacheUnit:
    """A run of consecutive cached blocks ``first..last`` (isolated when first == last)."""

    first: int
    last: int

    @property
    def is_span(self) -> bool:
        return self.last > self.first


@dataclass(frozen=True)
class GroupPlan:
    """The compiled actions of one stream group.

    Attributes:
        name: stream group name.
        depth: number of blocks.
        units: the cache units in block order.
        computed_blocks: blocks that run on reuse steps (foreground-focused blocks).
        refresh_ops: (op, block, unit) triples executed on refresh steps, one per block.
        reuse_ops: (op, block, unit) triples executed on reuse steps: one RUN per computed block, one ADD per unit.
    """

    name: str
    depth: int
    units: tuple[CacheUnit, ...]
    computed_blocks: tuple[int, ...]
    refresh_ops: tuple[tuple[Op, int, int], ...]
    reuse_ops: tuple[tuple[Op, int, int], ...]


def cache_units(cached_blocks: tuple[int, ...]) -> tuple[CacheUnit, ...]:
    """Splits a sorted block list into maximal runs of consecutive indices."""
    units: list[CacheUnit] = []
    for block in cached_blocks:
        if units and block == units[-1].last + 1:
            units[-1] = CacheUnit(units[-1].first, block)
        else:
            units.append(CacheUnit(block, block))
    return tuple(units)


def compile_group(group: StreamGroupConfig) -> GroupPlan:
    """Compiles a validated stream group into its op lists."""
    units = cache_units(group.cached_blocks)
    unit_of = {b: i for i, u in enumerate(units) for b in range(u.first, u.last + 1)}
    refresh_ops, reuse_ops = [], []
    for block in range(group.depth):
        index = unit_of.get(block)
        if index is None:
            refresh_ops.append((Op.RUN, block, -1))
            reuse_ops.append((Op.RUN, block, -1))
            continue
        unit = units[index]
        if not unit.is_span:
            refresh_ops.append((Op.RUN_RECORD, block, index))
        elif block == unit.first:
            refresh_ops.append((Op.OPEN_SPAN, block, index))
        elif block == unit.last:
            refresh_ops.append((Op.CLOSE_SPAN, block, index))
        else:
            refresh_ops.append((Op.RUN, block, index))
        if block == unit.last:
            reuse_ops.append((Op.ADD, block, index))
    computed = tuple(b for b in range(group.depth) if b not in unit_of)
    return GroupPlan(group.name, group.depth, units, computed, tuple(refresh_ops), tuple(reuse_ops))


def step_kinds(group: StreamGroupConfig, num_steps: int) -> tuple[StepKind, ...]:
    """Classifies every step of a run for one group.

    Warm-up steps are FULL. After the warm-up a step is REFRESH if the schedule lists it, else REUSE. A refresh
    that no later reuse step depends on (it is followed by another refresh or by the end) records nothing and is
    downgraded to FULL, so a schedule that refreshes every step costs nothing over the plain loop.
    """
    refresh = set(group.refresh_steps(num_steps))
    kinds = [StepKind.FULL] * num_steps
    for step in range(group.warmup_steps, num_steps):
        kinds[step] = StepKind.REFRESH if step in refresh else StepKind.REUSE
    needed = False  # does a reuse step follow before the next refresh?
    for step in range(num_steps - 1, -1, -1):
        if kinds[step] == StepKind.REUSE:
            needed = True
        elif kinds[step] == StepKind.REFRESH:
            if not needed:
                kinds[step] = StepKind.FULL
            needed = False
    return tuple(kinds)
