"""Aggregated profiling statistics per (group, block, step), and the step-change curve.

Statistics: ``r_attn`` (the paper's foreground ratio), ``lift`` (foreground share of the received attention over
the foreground's area) and ``delta_change`` (how much a block's residual changed since the previous step, relative to
the block's input: what a cache that reuses it would get wrong) and ``reuse_error`` (the error at the end of the
block stack when the block alone reuses its residual from the last anchor step, relative to the stack's contribution).

Every record is one (prompt, guidance branch, block, step) and holds the frame average of a per-frame statistic;
the arrays keep sums and counts so that prompts can be added one at a time and an interrupted run can resume
from the saved sums (:meth:`ProfileStatistics.to_dict` / :meth:`ProfileStatistics.from_dict`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

STATISTICS = ("r_attn", "lift", "delta_change", "reuse_error")


@dataclass
class ProfileStatistics:
    """Sums and counts of the profiling statistics over prompts, guidance branches and frames.

    Attributes:
        num_steps: denoising steps of every profiled generation.
        depths: blocks per stream group.
        sums / counts: per statistic (``r_attn``, ``lift``, ``delta_change``) and group, ``[depth, num_steps]`` arrays.
        change_sum / change_count: the step-change curve: mean absolute change of the prediction from step s-1 to
            step s, summed over prompts (entry 0 is unused).
        prompts: the prompts added so far (in order).
    """

    num_steps: int
    depths: dict[str, int]
    sums: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    counts: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    change_sum: np.ndarray | None = None
    change_count: np.ndarray | None = None
    prompts: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.num_steps < 1:
            raise ValueError(f"num_steps={self.num_steps} is not allowed: expected >= 1")
        for stat in STATISTICS:
            for store in (self.sums, self.counts):
                store.setdefault(stat, {})
                for name, depth in self.depths.items():
                    store[stat].setdefault(name, np.zeros((depth, self.num_steps)))
        if self.change_sum is None:
            self.change_sum = np.zeros(self.num_steps)
        if self.change_count is None:
            self.change_count = np.zeros(self.num_steps)

    def add_block(self, group: str, block: int, step: int, values: Mapping[str, np.ndarray]) -> None:
        """Adds one record: per statistic, the per-frame values (NaN frames are left out of the frame mean)."""
        for stat, frames in values.items():
            frames = np.asarray(frames, dtype=np.float64)
            valid = frames[~np.isnan(frames)]
            if valid.size:
                self.sums[stat][group][block, step] += valid.mean()
                self.counts[stat][group][block, step] += 1

    def add_change(self, step: int, value: float) -> None:
        """Adds one prompt's mean absolute prediction change from step ``step - 1`` to ``step``."""
        self.change_sum[step] += value
        self.change_count[step] += 1

    def heatmap(self, group: str, stat: str = "r_attn") -> np.ndarray:
        """Mean statistic per (block, step), ``[depth, num_steps]``; NaN where nothing was recorded."""
        self._check(group, stat)
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.sums[stat][group] / self.counts[stat][group]

    def block_scores(self, group: str, stat: str = "r_attn", first_step: int = 0) -> np.ndarray:
        """Per block, the mean over steps ``>= first_step`` of the per-step means, ``[depth]``.

        Raises:
            ValueError: ``first_step`` out of range, or no record at all for a block in that range.
        """
        if not 0 <= first_step < self.num_steps:
            raise ValueError(f"first_step={first_step} is not allowed: expected 0..{self.num_steps - 1}")
        per_step = self.heatmap(group, stat)[:, first_step:]
        empty = [b for b in range(per_step.shape[0]) if np.isnan(per_step[b]).all()]
        if empty:
            raise ValueError(f"group '{group}': no {stat} recorded for blocks {empty} from step {first_step} on")
        return np.nanmean(per_step, axis=1)

    def recorded(self, group: str, stat: str) -> bool:
        """Whether any record of ``stat`` exists for ``group``."""
        self._check(group, stat)
        return bool(self.counts[stat][group].any())

    def change_curve(self) -> np.ndarray:
        """Mean absolute prediction change per step ``[num_steps]`` (NaN at step 0 and where unrecorded)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            curve = self.change_sum / self.change_count
        curve[self.change_count == 0] = math.nan
        return curve

    def _check(self, group: str, stat: str) -> None:
        if stat not in STATISTICS:
            raise ValueError(f"statistic {stat!r} is not allowed: expected one of {STATISTICS}")
        if group not in self.depths:
            raise ValueError(f"group {group!r} was not profiled: profiled groups {sorted(self.depths)}")

    def to_dict(self) -> dict:
        """A JSON-serialisable form (lists of floats) for resuming."""
        return {
            "num_steps": self.num_steps,
            "depths": dict(self.depths),
            "sums": {s: {g: a.tolist() for g, a in v.items()} for s, v in self.sums.items()},
            "counts": {s: {g: a.tolist() for g, a in v.items()} for s, v in self.counts.items()},
            "change_sum": self.change_sum.tolist(),
            "change_count": self.change_count.tolist(),
            "prompts": list(self.prompts),
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> ProfileStatistics:
        def arrays(tree):
            return {s: {g: np.asarray(a, dtype=np.float64) for g, a in v.items()} for s, v in tree.items()}

        return cls(
            num_steps=int(data["num_steps"]),
            depths={k: int(v) for k, v in data["depths"].items()},
            sums=arrays(data["sums"]),
            counts=arrays(data["counts"]),
            change_sum=np.asarray(data["change_sum"], dtype=np.float64),
            change_count=np.asarray(data["change_count"], dtype=np.float64),
            prompts=list(data["prompts"]),
        )
