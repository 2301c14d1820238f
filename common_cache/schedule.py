"""Refresh schedules: on which denoising steps a cached block stack runs in full and records fresh deltas.

After ``warmup_steps`` full steps the trajectory is split into *refresh* steps (every block runs, deltas are
recorded) and *reuse* steps (cached blocks are replaced by their stored delta). A schedule only names the refresh
steps; the first step after the warm-up is always a refresh, because no delta exists before it (the official code
crashes when its list does not start there, method.md section 8 item 5).

Three schedules, looked up by ``kind`` in :data:`SCHEDULES`:

* ``uniform``: every ``interval`` steps from the end of the warm-up (Delta-DiT; the paper's Wan2.1 setting).
* ``list``: an explicit list of refresh steps (the paper's HunyuanVideo single-stream list 6,18,26,32,38,42,46,48).
* ``linear``: the paper's Eq. 15 as a generator: the interval shrinks linearly from ``max_interval`` to
  ``min_interval`` over the steps after the warm-up, rounded down to a multiple of ``granularity``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar


def check_int(field: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{field}={value!r} is not allowed: expected an integer >= {minimum}")


@dataclass(frozen=True)
class UniformSchedule:
    """Refresh every ``interval`` steps, starting at the first step after the warm-up.

    Attributes:
        interval: distance between two refresh steps (1 = refresh on every step, i.e. never reuse).
    """

    interval: int
    kind: ClassVar[str] = "uniform"

    def __post_init__(self) -> None:
        check_int("interval", self.interval, 1)

    def refresh_steps(self, warmup_steps: int, num_steps: int) -> tuple[int, ...]:
        """Returns the sorted refresh steps in ``[warmup_steps, num_steps)``."""
        return tuple(range(warmup_steps, num_steps, self.interval))

    def to_dict(self) -> dict:
        return {"kind": self.kind, "interval": self.interval}

    def short(self) -> str:
        return f"i{self.interval}"


@dataclass(frozen=True)
class StepListSchedule:
    """Refresh on an explicit list of steps (the warm-up's end is added if missing).

    Attributes:
        steps: refresh step indices (0-based denoising loop counters), strictly increasing, no duplicates.
    """

    steps: tuple[int, ...]
    kind: ClassVar[str] = "list"

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", tuple(self.steps))
        for step in self.steps:
            check_int("refresh step", step, 0)
        duplicates = sorted({s for s in self.steps if self.steps.count(s) > 1})
        if duplicates:
            raise ValueError(f"refresh steps {list(self.steps)} contain duplicates {duplicates}: each step once")
        object.__setattr__(self, "steps", tuple(sorted(self.steps)))

    def refresh_steps(self, warmup_steps: int, num_steps: int) -> tuple[int, ...]:
        """Returns the listed steps plus the warm-up's end, after checking they fit the run.

        Raises:
            ValueError: a step lies inside the warm-up or beyond the last step.
        """
        for step in self.steps:
            if step < warmup_steps:
                raise ValueError(
                    f"refresh step {step} lies inside the warm-up (steps 0..{warmup_steps - 1} always run in full): "
                    f"allowed refresh steps are {warmup_steps}..{num_steps - 1}"
                )
            if step >= num_steps:
                raise ValueError(
                    f"refresh step {step} is out of range for {num_steps} steps: allowed {warmup_steps}..{num_steps - 1}"
                )
        return tuple(sorted({warmup_steps, *self.steps})) if warmup_steps < num_steps else ()

    def to_dict(self) -> dict:
        return {"kind": self.kind, "steps": list(self.steps)}

    def short(self) -> str:
        return f"l{len(self.steps)}"


@dataclass(frozen=True)
class LinearSchedule:
    """The paper's Eq. 15: T_s = Tmax - (Tmax - Tmin) (s - s0) / (S - s0), rounded down to ``granularity``.

    Starting at the warm-up's end s0, the next refresh is T_s steps after the current one s. With Tmax 12,
    Tmin 2, granularity 2, s0 6 and S 50 this gives 6, 18, 26, 32, 38, 42, 44, 46, 48: close to, but not the same
    as, the hand-made list of the official code (6, 18, 26, 32, 38, 42, 46, 48).

    Attributes:
        max_interval: Tmax, the interval right after the warm-up.
        min_interval: Tmin, the interval at the last step.
        granularity: intervals are rounded down to a multiple of this (never below 1).
    """

    max_interval: int
    min_interval: int
    granularity: int = 2
    kind: ClassVar[str] = "linear"

    def __post_init__(self) -> None:
        check_int("min_interval", self.min_interval, 1)
        check_int("max_interval", self.max_interval, self.min_interval)
        check_int("granularity", self.granularity, 1)

    def interval_at(self, step: int, warmup_steps: int, num_steps: int) -> int:
        """The rounded interval T_s that follows a refresh at ``step``."""
        span = max(num_steps - warmup_steps, 1)
        raw = self.max_interval - (self.max_interval - self.min_interval) * (step - warmup_steps) / span
        return max(1, math.floor(raw / self.granularity) * self.granularity)

    def refresh_steps(self, warmup_steps: int, num_steps: int) -> tuple[int, ...]:
        steps, step = [], warmup_steps
        while step < num_steps:
            steps.append(step)
            step += self.interval_at(step, warmup_steps, num_steps)
        return tuple(steps)

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "max_interval": self.max_interval,
            "min_interval": self.min_interval,
            "granularity": self.granularity,
        }

    def short(self) -> str:
        return f"t{self.max_interval}-{self.min_interval}"


Schedule = UniformSchedule | StepListSchedule | LinearSchedule

SCHEDULES: dict[str, type] = {cls.kind: cls for cls in (UniformSchedule, StepListSchedule, LinearSchedule)}


def schedule_from_dict(data: dict) -> Schedule:
    """Builds a schedule from its JSON form ``{"kind": ..., <fields>}``.

    Raises:
        ValueError: unknown kind or fields.
    """
    if not isinstance(data, dict) or "kind" not in data:
        raise ValueError(f"schedule={data!r} is not allowed: expected an object with a 'kind' in {sorted(SCHEDULES)}")
    fields = dict(data)
    kind = fields.pop("kind")
    if kind not in SCHEDULES:
        raise ValueError(f"schedule kind={kind!r} is not allowed: expected one of {sorted(SCHEDULES)}")
    try:
        return SCHEDULES[kind](**fields)
    except TypeError as err:
        raise ValueError(f"schedule of kind {kind!r} has bad fields {sorted(fields)}: {err}") from None
