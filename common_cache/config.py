"""Typed cache configuration and the JSON cache profile.

A :class:`CacheConfig` is one :class:`StreamGroupConfig` per block stack that is cached (Wan2.1: ``blocks``;
HunyuanVideo: ``double`` and ``single``). A :class:`CacheProfile` is a config plus what produced it (per-block
scores, model, depth, steps, resolution, prompts, ...), saved as JSON; ``--cache_profile PATH`` loads one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from common_cache.schedule import Schedule, UniformSchedule, check_int, schedule_from_dict
from profilingdit.files import atomic_path

PROFILE_FORMAT = "profilingdit-cache-profile"
PROFILE_VERSION = 1
MAX_FORECAST_ORDER = 2
# The abscissa of the residual forecast: the step index, or the sampler's noise level sigma (the pipeline passes
# the sigmas of the run to ``begin``). The sampler's time t = 1000 * sigma gives the same forecast as sigma.
FORECAST_ABSCISSAS = ("step", "sigma")
# What a unit records and a reuse step forecasts: its residual ``out - in`` (added to the unit's input on a reuse
# step; the paper's kind) or its output (which replaces the skipped blocks' result, whatever the input).
FORECAST_TARGETS = ("residual", "output")


def _duplicates(values) -> list:
    seen, dups = set(), set()
    for value in values:
        (dups if value in seen else seen).add(value)
    return sorted(dups)


def _check_order(where: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_FORECAST_ORDER:
        raise ValueError(f"{where}: forecast_order={value!r} is not allowed: expected an integer "
                         f"0..{MAX_FORECAST_ORDER} (0 = copy the last residual)")


@dataclass(frozen=True)
class UnitConfig:
    """One cache unit with its own schedule: blocks ``first..last`` share one residual (a span when last > first).

    Fields left None take the group's value.

    Attributes:
        first, last: the unit's first and last block.
        warmup_steps: steps on which the unit always runs before its refreshes start.
        schedule: the unit's refresh steps after its warm-up.
        forecast_order: 0 adds the last recorded residual (the paper's copy); 1 and 2 add the finite-difference
            extrapolation of its last 2 or 3 recorded residuals.
        forecast_weights: optional calibrated forecast weights ``((step, (w_oldest, ..., w_newest)), ...)``, one
            entry per reuse step of the unit, each with one weight per record the forecast uses there; they replace
            the finite-difference weights (the budgeted profiler writes damped finite differences, the damping
            chosen on the profiling prompts). A schedule, warm-up or order given on the command line drops them.
    """

    first: int
    last: int
    warmup_steps: int | None = None
    schedule: Schedule | None = None
    forecast_order: int | None = None
    forecast_weights: tuple[tuple[int, tuple[float, ...]], ...] | None = None

    def __post_init__(self) -> None:
        for name in ("first", "last"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"cache unit {name}={value!r} is not allowed: expected a block index (integer >= 0)")
        if self.last < self.first:
            raise ValueError(f"cache unit blocks [{self.first}, {self.last}] are not allowed: expected first <= last")
        if self.warmup_steps is not None:
            check_int(f"cache unit {self.first}..{self.last}: warmup_steps", self.warmup_steps, 0)
        if self.forecast_order is not None:
            _check_order(f"cache unit {self.first}..{self.last}", self.forecast_order)
        if self.forecast_weights is not None:
            object.__setattr__(self, "forecast_weights",
                               _checked_weights(f"cache unit {self.first}..{self.last}", self.forecast_weights))

    @property
    def blocks(self) -> range:
        return range(self.first, self.last + 1)

    def to_dict(self) -> dict:
        data: dict = {"blocks": [self.first, self.last]}
        if self.warmup_steps is not None:
            data["warmup_steps"] = self.warmup_steps
        if self.schedule is not None:
            data["schedule"] = self.schedule.to_dict()
        if self.forecast_order is not None:
            data["forecast_order"] = self.forecast_order
        if self.forecast_weights is not None:
            data["forecast_weights"] = [[step, list(weights)] for step, weights in self.forecast_weights]
        return data

    @classmethod
    def from_dict(cls, data: Mapping) -> UnitConfig:
        _require_object("cache unit", data)
        known = {"blocks", "warmup_steps", "schedule", "forecast_order", "forecast_weights"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"cache unit has unknown fields {unknown}: allowed {sorted(known)}")
        blocks = data.get("blocks")
        if not isinstance(blocks, list) or len(blocks) != 2:
            raise ValueError(f"cache unit blocks={blocks!r} is not allowed: expected [first, last] (two block indices)")
        schedule = schedule_from_dict(data["schedule"]) if "schedule" in data else None
        return cls(blocks[0], blocks[1], data.get("warmup_steps"), schedule, data.get("forecast_order"),
                   data.get("forecast_weights"))


def _checked_weights(where: str, entries: object) -> tuple[tuple[int, tuple[float, ...]], ...]:
    """``forecast_weights`` as tuples, after checking its form: [step, [1 to 3 finite numbers]] pairs, each step
    once (whether the steps are the unit's reuse steps is checked when a run's steps are compiled)."""
    if not isinstance(entries, (list, tuple)) or not entries:
        raise ValueError(f"{where}: forecast_weights={_preview(entries)} is not allowed: expected a non-empty list "
                         "of [step, [weights]] pairs")
    checked = []
    for entry in entries:
        shape_ok = isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[1], (list, tuple))
        if not shape_ok or not 1 <= len(entry[1]) <= MAX_FORECAST_ORDER + 1:
            raise ValueError(f"{where}: forecast_weights entry {_preview(entry)} is not allowed: expected "
                             f"[step, [1 to {MAX_FORECAST_ORDER + 1} weights]]")
        check_int(f"{where}: forecast_weights step", entry[0], 0)
        for weight in entry[1]:
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
                raise ValueError(f"{where}: forecast weight {weight!r} at step {entry[0]} is not allowed: expected "
                                 "a finite number")
        checked.append((entry[0], tuple(float(w) for w in entry[1])))
    dups = _duplicates(step for step, _ in checked)
    if dups:
        raise ValueError(f"{where}: forecast_weights lists the steps {dups} more than once: each reuse step once")
    return tuple(sorted(checked))


def _require_object(what: str, data: object) -> None:
    if not isinstance(data, Mapping):
        raise ValueError(f"{what} is {type(data).__name__} {_preview(data)}: expected a JSON object {{...}}")


def _preview(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class StreamGroupConfig:
    """How one block stack is cached.

    Attributes:
        name: the stream group (``blocks``, ``double``, ``single``): must match a group the model exposes.
        depth: number of blocks of the model this list was made for; a model of another depth is refused.
        cached_blocks: indices of the blocks that are skipped on reuse steps (background-focused blocks). Without
            ``units``, runs of consecutive indices share one residual (a span); isolated indices get their own.
        warmup_steps: the first steps run in full (the paper's s0 = 6).
        schedule: which steps after the warm-up refresh the residuals.
        forecast_order: what a reuse step adds: 0 the last recorded residual (the paper), 1 or 2 the extrapolation
            of the last 2 or 3 recorded residuals (finite differences over ``forecast_abscissa``).
        forecast_abscissa: ``step`` (the step index) or ``sigma`` (the sampler's noise level).
        forecast_target: ``residual`` (every unit records ``out - in`` and a reuse step adds the forecast to the
            unit's input) or ``output`` (a unit records its output and a reuse step returns the forecast output,
            ignoring the input; budgeted whole-stack profiles use it, docs/caching.md).
        units: optional explicit cache units, each with its own warm-up, schedule and forecast order (fields it
            leaves None take the group's); their blocks must be exactly ``cached_blocks``.
    """

    name: str
    depth: int
    cached_blocks: tuple[int, ...]
    warmup_steps: int = 6
    schedule: Schedule = field(default_factory=lambda: UniformSchedule(6))
    forecast_order: int = 0
    forecast_abscissa: str = "step"
    forecast_target: str = "residual"
    units: tuple[UnitConfig, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "cached_blocks", tuple(self.cached_blocks))
        object.__setattr__(self, "units", tuple(sorted(self.units, key=lambda u: u.first)))
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
            if isinstance(block, bool) or not isinstance(block, int):
                raise ValueError(f"group '{self.name}': cached block {block!r} is a {type(block).__name__}: "
                                 f"expected an integer block index 0..{self.depth - 1}")
            if not 0 <= block < self.depth:
                raise ValueError(
                    f"group '{self.name}': cached block {block!r} is out of range for depth {self.depth}: "
                    f"allowed 0..{self.depth - 1}"
                )
        dups = _duplicates(self.cached_blocks)
        if dups:
            raise ValueError(f"group '{self.name}': cached_blocks has duplicates {dups}: each block once")
        object.__setattr__(self, "cached_blocks", tuple(sorted(self.cached_blocks)))
        check_int(f"group '{self.name}': warmup_steps", self.warmup_steps, 0)
        _check_order(f"group '{self.name}'", self.forecast_order)
        if self.forecast_abscissa not in FORECAST_ABSCISSAS:
            raise ValueError(f"group '{self.name}': forecast_abscissa={self.forecast_abscissa!r} is not allowed: "
                             f"expected one of {list(FORECAST_ABSCISSAS)}")
        if self.forecast_target not in FORECAST_TARGETS:
            raise ValueError(f"group '{self.name}': forecast_target={self.forecast_target!r} is not allowed: "
                             f"expected one of {list(FORECAST_TARGETS)}")
        self._check_units()

    def _check_units(self) -> None:
        if not self.units:
            return
        covered: list[int] = []
        for unit in self.units:
            if unit.last >= self.depth:
                raise ValueError(f"group '{self.name}': cache unit {unit.first}..{unit.last} is out of range for "
                                 f"depth {self.depth}: allowed blocks 0..{self.depth - 1}")
            if covered and unit.first <= covered[-1]:
                raise ValueError(f"group '{self.name}': cache unit {unit.first}..{unit.last} overlaps the unit "
                                 f"before it: units must not share blocks")
            covered.extend(unit.blocks)
        if tuple(covered) != self.cached_blocks:
            raise ValueError(f"group '{self.name}': the units cover blocks {covered} but cached_blocks is "
                             f"{list(self.cached_blocks)}: they must be the same blocks")

    def resolved_units(self) -> tuple[UnitConfig, ...]:
        """Every cache unit with all its fields filled: the explicit ``units``, else the maximal runs of
        consecutive ``cached_blocks``, with the group's warm-up, schedule and forecast order where a unit has none."""
        return tuple(self.resolved_unit(u) for u in self.units or block_runs(self.cached_blocks))

    def resolved_unit(self, unit: UnitConfig) -> UnitConfig:
        """``unit`` with the group's warm-up, schedule and forecast order where it has none."""
        return UnitConfig(
            unit.first,
            unit.last,
            self.warmup_steps if unit.warmup_steps is None else unit.warmup_steps,
            self.schedule if unit.schedule is None else unit.schedule,
            self.forecast_order if unit.forecast_order is None else unit.forecast_order,
            unit.forecast_weights,
        )

    def check_steps(self, num_steps: int) -> None:
        """Checks that a run of ``num_steps`` steps fits the group's and every unit's warm-up and schedule.

        Raises:
            ValueError: ``num_steps`` < 1, a warm-up covers the whole run, or a listed step is out of range.
        """
        self.refresh_steps(num_steps)

    def refresh_steps(self, num_steps: int) -> tuple[int, ...]:
        """The group-level refresh steps of a run of ``num_steps`` steps (units may have their own), after checking
        that the run fits every unit.

        Raises:
            ValueError: see :meth:`check_steps`.
        """
        steps = unit_refresh_steps(f"group '{self.name}'", UnitConfig(0, 0, self.warmup_steps, self.schedule),
                                   num_steps)
        for unit in self.units:
            unit_refresh_steps(f"group '{self.name}', unit {unit.first}..{unit.last}", self.resolved_unit(unit),
                               num_steps)
        return steps

    @property
    def max_forecast_order(self) -> int:
        return max(u.forecast_order for u in self.resolved_units())

    def to_dict(self) -> dict:
        data = {
            "name": self.name,
            "depth": self.depth,
            "cached_blocks": list(self.cached_blocks),
            "warmup_steps": self.warmup_steps,
            "schedule": self.schedule.to_dict(),
        }
        # Written only when they differ from the defaults, so profiles of the paper's kind keep their old form.
        if self.forecast_order:
            data["forecast_order"] = self.forecast_order
        if self.forecast_abscissa != "step":
            data["forecast_abscissa"] = self.forecast_abscissa
        if self.forecast_target != "residual":
            data["forecast_target"] = self.forecast_target
        if self.units:
            data["units"] = [u.to_dict() for u in self.units]
        return data

    @classmethod
    def from_dict(cls, data: Mapping) -> StreamGroupConfig:
        _require_object("stream group", data)
        known = {"name", "depth", "cached_blocks", "warmup_steps", "schedule", "forecast_order",
                 "forecast_abscissa", "forecast_target", "units"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"stream group has unknown fields {unknown}: allowed {sorted(known)}")
        fields = dict(data)
        if "units" in fields:
            if not isinstance(fields["units"], list):
                raise ValueError(f"stream group {data.get('name', '?')!r}: units={_preview(fields['units'])} is not "
                                 "allowed: expected a list of cache units")
            fields["units"] = tuple(UnitConfig.from_dict(u) for u in fields["units"])
            fields.setdefault("cached_blocks", [b for u in fields["units"] for b in u.blocks])
        missing = sorted({"name", "depth", "cached_blocks"} - set(fields))
        if missing:
            raise ValueError(f"stream group {data.get('name', '?')!r} lacks the fields {missing}")
        if not isinstance(fields["cached_blocks"], list):
            raise ValueError(f"stream group {data.get('name', '?')!r}: cached_blocks="
                             f"{_preview(fields['cached_blocks'])} is not allowed: expected a list of block indices")
        if "schedule" in fields:
            fields["schedule"] = schedule_from_dict(fields["schedule"])
        return cls(**fields)

    def short(self) -> str:
        """A compact description for tags: name, number of cached blocks, warm-up, schedule, forecast order."""
        text = f"{self.name[0]}{len(self.cached_blocks)}w{self.warmup_steps}{self.schedule.short()}"
        if self.units:
            text += f"u{len(self.units)}"
        order = self.max_forecast_order
        return text + (f"o{order}" if order else "")


def block_runs(cached_blocks: tuple[int, ...]) -> tuple[UnitConfig, ...]:
    """Splits a sorted block list into maximal runs of consecutive indices."""
    runs: list[UnitConfig] = []
    for block in cached_blocks:
        if runs and block == runs[-1].last + 1:
            runs[-1] = UnitConfig(runs[-1].first, block)
        else:
            runs.append(UnitConfig(block, block))
    return tuple(runs)


def unit_refresh_steps(where: str, unit: UnitConfig, num_steps: int) -> tuple[int, ...]:
    """The refresh steps of a resolved unit in a run of ``num_steps`` steps (``where`` starts error messages).

    Raises:
        ValueError: ``num_steps`` < 1, the warm-up covers the whole run, or a listed step is out of range.
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps={num_steps!r} is not allowed: expected an integer >= 1")
    if unit.warmup_steps >= num_steps:
        raise ValueError(
            f"{where}: warmup_steps={unit.warmup_steps} is not allowed for a run of {num_steps} "
            f"steps: expected 0..{num_steps - 1} (the cache would never act)"
        )
    try:
        return unit.schedule.refresh_steps(unit.warmup_steps, num_steps)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


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
            raise ValueError(f"groups={_preview(groups)} is not allowed: the profile needs 'groups', a list of "
                             "stream groups")
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
            if not isinstance(values, (list, tuple)):
                raise ValueError(f"scores of group '{name}' are {_preview(values)}: expected a list of numbers, "
                                 "one per block")
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
        _require_object("the profile", data)
        for name in ("scores", "metadata"):
            if not isinstance(data.get(name, {}), Mapping):
                raise ValueError(f"{name}={_preview(data[name])} is not allowed: expected a JSON object {{...}}")
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
        if os.path.isdir(path):
            raise ValueError(f"cache profile {path} is a directory: expected a JSON profile file")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"cache profile not found: {path}")
        try:
            with open(path) as handle:
                data = json.load(handle)
            return cls.from_dict(data)
        except json.JSONDecodeError as err:
            raise ValueError(f"cache profile {path} is not valid JSON: {err}") from None
        except UnicodeDecodeError:
            raise ValueError(f"cache profile {path} is not a text file: expected a JSON profile") from None
        except (ValueError, KeyError) as err:
            raise ValueError(f"cache profile {path}: {err}") from None
