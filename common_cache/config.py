"""Typed cache configuration and the JSON cache profile.

A :class:`CacheConfig` is one :class:`StreamGroupConfig` per block stack that is cached (Wan2.1: ``blocks``;
HunyuanVideo: ``double`` and ``single``). A :class:`CacheProfile` is a config plus what produced it (per-block
scores, model, depth, steps, resolution, prompts, ...), saved as JSON; ``--cache_profile PATH`` loads one.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from common_cache.files import atomic_path
from common_cache.schedule import Schedule, UniformSchedule, schedule_from_dict

PROFILE_FORMAT = "profilingdit-cache-profile"
PROFILE_VERSION = 1


def _duplicates(values) -> list:
    seen, dups = set(), set()
    for value in values:
        (dups if value in seen else seen).add(value)
    return sorted(dups)


@dataclass(frozen=True)
class StreamGroupConfig:
    """How one block stack is cached.

    Attributes:
        name: the stream group (``blocks``, ``double``, ``single``): must match a group the model exposes.
        depth: number of blocks of the model this list was made for; a model of another depth is refused.
        cached_blocks: indices of the blocks that are skipped on reuse steps (background-focused blocks). Runs of
            consecutive indices share one delta (a span); isolated indices get their own delta.
        warmup_steps: the first steps run in full (the paper's s0 = 6).
        schedule: which steps after the warm-up refresh the deltas.
    """

    name: str
    depth: int
    cached_blocks: tuple[int, ...]
    warmup_steps: int = 6
    schedule: Schedule = field(default_factory=lambda: UniformSchedule(6))

    def __post_init__(self) -> None:
        object.__setattr__(self, "cached_blocks", tuple(self.cached_blocks))
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"stream group name={self.name!r} is not allowed: expected a non-empty string")
        if isinstance(self.depth, bool) or not isinstance(self.depth, int) or self.depth < 1:
            raise ValueError(f"group '{self.name}': depth={self.depth!r} is not allowed: expected an integer >= 1")
        if not self.cached_blocks:
            raise ValueError(
                f"group '{self.name}': cached_blocks is empty: list at least one block, or leave the group out of "
                "the profile to run all its blocks"
            )
        for block in self.cached_blocks:
            if isinstance(block, bool) or not isinstance(block, int) or not 0 <= block < self.depth:
                raise ValueError(
                    f"group '{self.name}': cached block {block!r} is out of range for depth {self.depth}: "
                    f"allowed 0..{self.depth - 1}"
                )
        dups = _duplicates(self.cached_blocks)
        if dups:
            raise ValueError(f"group '{self.name}': cached_blocks has duplicates {dups}: each block once")
        object.__setattr__(self, "cached_blocks", tuple(sorted(self.cached_blocks)))
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(
                f"group '{self.name}': warmup_steps={self.warmup_steps!r} is not allowed: expected an integer >= 0"
            )

    def refresh_steps(self, num_steps: int) -> tuple[int, ...]:
        """The refresh steps of a run of ``num_steps`` steps, after checking that the run fits this group.

        Raises:
            ValueError: ``num_steps`` < 1, the warm-up covers the whole run, or a listed step is out of range.
        """
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"num_steps={num_steps!r} is not allowed: expected an integer >= 1")
        if self.warmup_steps >= num_steps:
            raise ValueError(
                f"group '{self.name}': warmup_steps={self.warmup_steps} is not allowed for a run of {num_steps} "
                f"steps: expected 0..{num_steps - 1} (the cache would never act)"
            )
        try:
            return self.schedule.refresh_steps(self.warmup_steps, num_steps)
        except ValueError as err:
            raise ValueError(f"group '{self.name}': {err}") from None

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "depth": self.depth,
            "cached_blocks": list(self.cached_blocks),
            "warmup_steps": self.warmup_steps,
            "schedule": self.schedule.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> StreamGroupConfig:
        known = {"name", "depth", "cached_blocks", "warmup_steps", "schedule"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"stream group has unknown fields {unknown}: allowed {sorted(known)}")
        missing = sorted({"name", "depth", "cached_blocks"} - set(data))
        if missing:
            raise ValueError(f"stream group {data.get('name', '?')!r} lacks the fields {missing}")
        fields = dict(data)
        if "schedule" in fields:
            fields["schedule"] = schedule_from_dict(fields["schedule"])
        return cls(**fields)

    def short(self) -> str:
        """A compact description for tags: name, number of cached blocks, warm-up, schedule."""
        return f"{self.name[0]}{len(self.cached_blocks)}w{self.warmup_steps}{self.schedule.short()}"


@dataclass(frozen=True)
class CacheConfig:
    """The cache configuration of a whole model: one entry per cached stream group.

    Groups the model has but the config leaves out run all their blocks on every step.
    """

    groups: tuple[StreamGroupConfig, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "groups", tuple(self.groups))
        if not self.groups:
            raise ValueError("cache config has no stream groups: expected at least one group")
        dups = _duplicates(g.name for g in self.groups)
        if dups:
            raise ValueError(f"cache config names the stream groups {dups} more than once: each group once")

    def group(self, name: str) -> StreamGroupConfig:
        for group in self.groups:
            if group.name == name:
                return group
        raise KeyError(f"cache config has no stream group '{name}': it has {[g.name for g in self.groups]}")

    def check_depths(self, model_depths: Mapping[str, int]) -> None:
        """Refuses a config made for another model.

        Args:
            model_depths: block count per stream group of the model (``model.stream_group_depths()``).

        Raises:
            ValueError: a group the model lacks, or a group whose depth differs from the model's.
        """
        for group in self.groups:
            if group.name not in model_depths:
                raise ValueError(
                    f"cache profile group '{group.name}' is not a stream group of this model: "
                    f"allowed {sorted(model_depths)}"
                )
            if model_depths[group.name] != group.depth:
                raise ValueError(
                    f"cache profile group '{group.name}' was made for depth {group.depth}, but the model has "
                    f"{model_depths[group.name]} blocks: use a profile made for this model (depth "
                    f"{model_depths[group.name]})"
                )

    def to_dict(self) -> dict:
        return {"groups": [g.to_dict() for g in self.groups]}

    @classmethod
    def from_dict(cls, data: Mapping) -> CacheConfig:
        groups = data.get("groups") if isinstance(data, Mapping) else None
        if not isinstance(groups, list):
            raise ValueError("cache config needs 'groups': a list of stream groups")
        return cls(tuple(StreamGroupConfig.from_dict(g) for g in groups))

    def tag(self) -> str:
        """A short stable string for file names, e.g. ``dc-b28w6i6-3f9a1c``.

        The readable part summarises each group; the hash covers every field, so two configs share a tag only if
        they are identical.
        """
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha1(canonical.encode()).hexdigest()[:6]
        return "dc-" + "-".join(g.short() for g in self.groups) + f"-{digest}"


@dataclass(frozen=True)
class CacheProfile:
    """A cache config with the evidence that produced it, as stored in a JSON profile file.

    Attributes:
        config: the cache configuration.
        scores: per stream group, one score per block (e.g. the profiler's foreground ratio R_attn).
        metadata: free-form facts: model, steps, resolution, prompts, source, date, ``provisional``...
    """

    config: CacheConfig
    scores: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, values in self.scores.items():
            depth = self.config.group(name).depth if name in {g.name for g in self.config.groups} else None
            if depth is not None and len(values) != depth:
                raise ValueError(f"scores of group '{name}' have {len(values)} entries: expected one per block ({depth})")

    def to_dict(self) -> dict:
        return {
            "format": PROFILE_FORMAT,
            "version": PROFILE_VERSION,
            **self.config.to_dict(),
            "scores": self.scores,
            "metadata": self.metadata,
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> CacheProfile:
        if data.get("format") != PROFILE_FORMAT:
            raise ValueError(f"format={data.get('format')!r} is not allowed: expected '{PROFILE_FORMAT}'")
        if data.get("version") != PROFILE_VERSION:
            raise ValueError(f"version={data.get('version')!r} is not allowed: expected {PROFILE_VERSION}")
        return cls(CacheConfig.from_dict(data), dict(data.get("scores", {})), dict(data.get("metadata", {})))

    def save(self, path: str) -> str:
        """Writes the profile as JSON, atomically (temporary file in the same folder, then rename)."""
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with atomic_path(path) as temp, open(temp, "w") as handle:
            json.dump(self.to_dict(), handle, indent=2)
            handle.write("\n")
        return path

    @classmethod
    def load(cls, path: str) -> CacheProfile:
        """Reads a JSON profile.

        Raises:
            FileNotFoundError: no file at ``path``.
            ValueError: not valid JSON or not a valid profile (the message names the file and the field).
        """
        if not os.path.isfile(path):
            raise FileNotFoundError(f"cache profile not found: {path}")
        try:
            with open(path) as handle:
                data = json.load(handle)
            return cls.from_dict(data)
        except json.JSONDecodeError as err:
            raise ValueError(f"cache profile {path} is not valid JSON: {err}") from None
        except (ValueError, KeyError) as err:
            raise ValueError(f"cache profile {path}: {err}") from None
