"""Per-generation cache statistics: block calls computed and skipped, buffer memory, time in the engine."""

from __future__ import annotations

import json
from dataclasses import dataclass, field


@dataclass
class GroupStats:
    """Counts of one stream group, summed over guidance branches.

    Attributes:
        depth: blocks in the stack.
        computed: block calls that ran, per step.
        skipped: block calls that were replaced by a stored delta (or skipped inside a span), per step.
    """

    depth: int
    computed: list[int]
    skipped: list[int]

    @property
    def computed_calls(self) -> int:
        return sum(self.computed)

    @property
    def skipped_calls(self) -> int:
        return sum(self.skipped)


@dataclass
class CacheStats:
    """Statistics of one generation (reset by ``begin``).

    Attributes:
        num_steps: denoising steps of the generation.
        groups: per stream group counts.
        branches: guidance branches seen (e.g. ``cond``, ``uncond``).
        buffer_bytes: bytes held by the cache buffers now (deltas of every branch and group).
        peak_buffer_bytes: the largest ``buffer_bytes`` seen during the generation.
        stack_seconds: host wall time spent inside the cache entry point (blocks included).
        engine_seconds: the part of ``stack_seconds`` not spent in block calls: recording and adding deltas and
            bookkeeping. On a GPU these are launch times unless the caller synchronises.
    """

    num_steps: int = 0
    groups: dict[str, GroupStats] = field(default_factory=dict)
    branches: list[str] = field(default_factory=list)
    buffer_bytes: int = 0
    peak_buffer_bytes: int = 0
    stack_seconds: float = 0.0
    engine_seconds: float = 0.0

    def add_group(self, name: str, depth: int) -> None:
        self.groups[name] = GroupStats(depth, [0] * self.num_steps, [0] * self.num_steps)

    def count(self, name: str, step: int, computed: int, skipped: int) -> None:
        group = self.groups[name]
        group.computed[step] += computed
        group.skipped[step] += skipped

    def set_buffer_bytes(self, value: int) -> None:
        self.buffer_bytes = value
        self.peak_buffer_bytes = max(self.peak_buffer_bytes, value)

    @property
    def computed_calls(self) -> int:
        return sum(g.computed_calls for g in self.groups.values())

    @property
    def skipped_calls(self) -> int:
        return sum(g.skipped_calls for g in self.groups.values())

    @property
    def total_calls(self) -> int:
        """Block calls a full-compute run of the same forwards would make."""
        return self.computed_calls + self.skipped_calls

    @property
    def ideal_speedup(self) -> float:
        """Full block calls over computed block calls: the speedup if only blocks cost time and all cost the same."""
        return self.total_calls / self.computed_calls if self.computed_calls else 1.0

    def to_dict(self) -> dict:
        return {
            "num_steps": self.num_steps,
            "branches": list(self.branches),
            "computed_calls": self.computed_calls,
            "skipped_calls": self.skipped_calls,
            "total_calls": self.total_calls,
            "ideal_speedup": round(self.ideal_speedup, 4),
            "peak_buffer_bytes": self.peak_buffer_bytes,
            "stack_seconds": round(self.stack_seconds, 6),
            "engine_seconds": round(self.engine_seconds, 6),
            "groups": {
                name: {"depth": g.depth, "computed": g.computed, "skipped": g.skipped}
                for name, g in self.groups.items()
            },
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def summary(self) -> str:
        """A few human-readable lines for the end of a run."""
        lines = [
            f"block calls: {self.computed_calls} computed, {self.skipped_calls} skipped of {self.total_calls} "
            f"({self.skipped_calls / max(self.total_calls, 1):.1%} saved); ideal speedup {self.ideal_speedup:.3f}x",
        ]
        for name, g in self.groups.items():
            total = g.computed_calls + g.skipped_calls
            lines.append(f"  {name:<8} depth {g.depth:>3}: {g.computed_calls} computed / {total} calls")
        lines.append(
            f"cache buffers: peak {self.peak_buffer_bytes / 2**20:.1f} MiB over branches {self.branches}; "
            f"engine time {self.engine_seconds:.3f} s of {self.stack_seconds:.3f} s in the block stacks"
        )
        return "\n".join(lines)
