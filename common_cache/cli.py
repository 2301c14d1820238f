"""The cache argument group shared by both command lines (Wan2.1 snake_case, HunyuanVideo kebab-case).

Flags (snake_case spelling; HunyuanVideo uses the same names with dashes, and accepts ``--delta_cache`` too):

* ``--delta_cache``: enable the cache with the built-in profile of the model/task.
* ``--cache_profile PATH``: enable it with a profile file instead (Wan2.1 also takes a built-in profile's name).
* ``--cache_blocks [GROUP:]LIST``: replace the cached block list, e.g. ``0,2-7,10`` or ``single:0,2,4-7``.
* ``--cache_warmup [GROUP:]N``: warm-up steps (full compute) before caching starts.
* ``--cache_interval [GROUP:]K``: refresh every K steps after the warm-up (uniform schedule).
* ``--cache_refresh_steps [GROUP:]LIST``: refresh on these steps (explicit schedule).
* ``--cache_forecast_order [GROUP:]K``: 0 copies the last residual (the paper); 1, 2 extrapolate it.
* ``--cache_delta_dtype``, ``--cache_offload``: store deltas in a lower precision / on the CPU.
* ``--cache_stats PATH``: write the run's statistics as JSON (every run, full compute included: the timings, and
  the cache's statistics when one ran).

Overrides without ``GROUP:`` apply to every group of the profile (a block list only when it has one group). In a
profile whose units have their own warm-up, schedule or order (budgeted profiles), an override replaces that field
in every unit of the group; ``--cache_blocks`` replaces the units by the runs of the new list.
Unlike the official ``type=list`` flags, every list can be set from the command line.

TeaCache, the peer baseline, has its own group (:func:`add_teacache_args`): ``--teacache_thresh T`` turns it on,
``--use_ret_steps`` (Wan2.1) switches to its ``e0`` indicator, ``--teacache_coefficients PATH|LIST`` replaces the
published polynomial (e.g. with one fitted by scripts/fit_teacache.py). It excludes ``--delta_cache``.
HunyuanVideo spells them ``--teacache-thresh`` (``--teacache_thresh`` accepted) and ``--teacache-coefficients``;
it has no ret-steps mode, so ``--use_ret_steps`` is refused there.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
from collections.abc import Callable

import torch

from common_cache.config import CacheConfig, CacheProfile, StreamGroupConfig
from common_cache.delta_cache import DeltaCache
from common_cache.schedule import StepListSchedule, UniformSchedule
from common_cache.teacache import TeaCache, TeaCacheConfig, load_coefficients

DELTA_DTYPES = {"auto": None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
OVERRIDE_FLAGS = ("cache_blocks", "cache_warmup", "cache_interval", "cache_refresh_steps", "cache_forecast_order")
# The unit field each override replaces: a unit's own value gives way to the command line's group-wide one.
_UNIT_FIELDS = {"cache_warmup": "warmup_steps", "cache_interval": "schedule", "cache_refresh_steps": "schedule",
                "cache_forecast_order": "forecast_order"}

_GROUP_PREFIX = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*):(.*)$")


def parse_int_list(field: str, text: str, dash: str = "_") -> tuple[int, ...]:
    """Parses ``"0,2-7,10"`` into ``(0, 2, 3, 4, 5, 6, 7, 10)``.

    Args:
        field: the flag's name (``cache_blocks``), named in messages in the spelling of ``dash``.
        text: the value.
        dash: "_" (Wan2.1) or "-" (HunyuanVideo's ``--cache-blocks``).

    Raises:
        ValueError: naming the flag and the bad item.
    """
    values: list[int] = []
    for item in text.split(","):
        item = item.strip()
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", item)
        if not match:
            raise ValueError(f"{_flag(field, dash)}: {item!r} in {text!r} is not allowed: expected integers or "
                             "ranges like 2-7")
        first, last = int(match.group(1)), int(match.group(2) or match.group(1))
        if last < first:
            raise ValueError(f"{_flag(field, dash)}: range {item!r} is empty: write first-last with first <= last")
        values.extend(range(first, last + 1))
    return tuple(values)


def _parse_int(field: str, text: str, dash: str = "_") -> int:
    if not re.fullmatch(r"\d+", text.strip()):
        raise ValueError(f"{_flag(field, dash)}={text!r} is not allowed: expected a non-negative integer")
    return int(text)


def _split_group(text: str) -> tuple[str | None, str]:
    match = _GROUP_PREFIX.match(text)
    return (match.group(1), match.group(2)) if match else (None, text)


def add_cache_args(parser: argparse.ArgumentParser, kebab: bool = False) -> argparse._ArgumentGroup:
    """Adds the cache argument group to a CLI parser.

    Args:
        parser: the CLI's parser.
        kebab: spell the flags with dashes (HunyuanVideo); ``--delta_cache`` is accepted in both spellings.

    Returns:
        The argument group (destinations are always snake_case: ``args.delta_cache``, ``args.cache_blocks``...).
    """

    def flag(name: str) -> str:
        return "--" + (name.replace("_", "-") if kebab else name)

    group = parser.add_argument_group("cache (ProfilingDiT block caching)")
    spellings = ["--delta_cache", "--delta-cache"] if kebab else ["--delta_cache"]
    group.add_argument(*spellings, dest="delta_cache", action="store_true",
                       help="Enable the block cache with the built-in profile of this model.")
    group.add_argument(flag("cache_profile"), dest="cache_profile", default=None, metavar="PATH",
                       help="Enable the block cache with this cache profile (JSON) instead of the built-in one "
                            "(Wan2.1: or the name of a built-in profile, e.g. t2v-tiny-4x).")
    group.add_argument(flag("cache_blocks"), dest="cache_blocks", action="append", default=None,
                       metavar="[GROUP:]LIST", help="Cached (skipped) blocks, e.g. 0,2-7,10 or single:0,2,4-7.")
    group.add_argument(flag("cache_warmup"), dest="cache_warmup", action="append", default=None,
                       metavar="[GROUP:]N", help="Steps run in full before caching starts (paper: 6).")
    group.add_argument(flag("cache_interval"), dest="cache_interval", action="append", default=None,
                       metavar="[GROUP:]K", help="Refresh the deltas every K steps after the warm-up.")
    group.add_argument(flag("cache_refresh_steps"), dest="cache_refresh_steps", action="append", default=None,
                       metavar="[GROUP:]LIST", help="Refresh the deltas on these steps, e.g. 6,18,26,32,38,42,46,48.")
    group.add_argument(flag("cache_forecast_order"), dest="cache_forecast_order", action="append", default=None,
                       metavar="[GROUP:]K", help="What a reuse adds: 0 the last recorded residual (the paper), 1 or 2 "
                                                 "its extrapolation from the last 2 or 3 records.")
    group.add_argument(flag("cache_delta_dtype"), dest="cache_delta_dtype", default="auto",
                       choices=sorted(DELTA_DTYPES),
                       help="Storage dtype of the deltas (auto: the residual stream's dtype, exact).")
    group.add_argument(flag("cache_offload"), dest="cache_offload", action="store_true",
                       help="Keep the deltas in CPU memory (saves accelerator memory, costs transfers).")
    group.add_argument(flag("cache_stats"), dest="cache_stats", default=None, metavar="PATH",
                       help="Write the run's statistics as JSON to PATH (every run, full compute included: "
                            "denoise_seconds and the other timings, plus the cache's statistics).")
    return group


def _overrides_by_group(args: argparse.Namespace, names: list[str], dash: str = "_") -> dict[str, dict[str, str]]:
    """Collects ``{group: {flag: value}}`` from the repeated override flags."""
    result: dict[str, dict[str, str]] = {name: {} for name in names}
    for flag in OVERRIDE_FLAGS:
        for text in getattr(args, flag, None) or []:
            group, value = _split_group(text)
            if group is not None and group not in result:
                raise ValueError(f"{_flag(flag, dash)}={text!r}: group '{group}' is not in the cache profile: "
                                 f"allowed {names}")
            if group is None and flag == "cache_blocks" and len(names) > 1:
                raise ValueError(
                    f"{_flag(flag, dash)}={text!r}: the profile has groups {names}; name one, e.g. "
                    f"{names[-1]}:{value}"
                )
            for name in [group] if group else names:
                if flag in result[name]:
                    raise ValueError(f"{_flag(flag, dash)} is given twice for group '{name}'")
                result[name][flag] = value
    return result


def _apply_overrides(group: StreamGroupConfig, overrides: dict[str, str], dash: str = "_") -> StreamGroupConfig:
    if "cache_interval" in overrides and "cache_refresh_steps" in overrides:
        raise ValueError(f"group '{group.name}': {_flag('cache_interval', dash)} and "
                         f"{_flag('cache_refresh_steps', dash)} exclude each other: give one")
    changes: dict = {}
    if "cache_blocks" in overrides:
        changes["cached_blocks"] = parse_int_list("cache_blocks", overrides["cache_blocks"], dash)
        changes["units"] = ()  # the new list's runs of blocks are the units
    elif group.units:  # a profile's per-unit values give way to the overridden group-wide ones
        cleared = {_UNIT_FIELDS[flag]: None for flag in overrides if flag in _UNIT_FIELDS}
        if cleared:  # calibrated weights belong to the profile's own steps and order
            cleared["forecast_weights"] = None
        changes["units"] = tuple(dataclasses.replace(u, **cleared) for u in group.units)
    if "cache_forecast_order" in overrides:
        changes["forecast_order"] = _parse_int("cache_forecast_order", overrides["cache_forecast_order"], dash)
    if "cache_warmup" in overrides:
        changes["warmup_steps"] = _parse_int("cache_warmup", overrides["cache_warmup"], dash)
    if "cache_interval" in overrides:
        changes["schedule"] = UniformSchedule(_parse_int("cache_interval", overrides["cache_interval"], dash))
    if "cache_refresh_steps" in overrides:
        changes["schedule"] = StepListSchedule(parse_int_list("cache_refresh_steps", overrides["cache_refresh_steps"],
                                                              dash))
    return dataclasses.replace(group, **changes) if changes else group


def cache_profile_from_args(args: argparse.Namespace, builtin: CacheProfile | None, what: str,
                            dash: str = "_") -> CacheProfile | None:
    """Resolves the cache profile a run uses, or None when the cache is off.

    Args:
        args: parsed arguments with the cache group of :func:`add_cache_args`.
        builtin: the built-in profile for this model/task (None if there is none).
        what: the model/task name used in error messages.
        dash: the command line's word separator in messages ("-": HunyuanVideo's ``--cache-interval``).

    Raises:
        ValueError: overrides without enabling the cache, no profile available, or bad override values.
        FileNotFoundError: ``--cache_profile`` names a missing file.
    """
    enabled = args.delta_cache or args.cache_profile is not None
    if not enabled:
        used = [_flag(flag, dash) for flag in OVERRIDE_FLAGS if getattr(args, flag, None)]
        if used:
            raise ValueError(f"{', '.join(used)} only act with the cache on: add --delta_cache or "
                             f"{_flag('cache_profile', dash)} PATH")
        return None
    if args.cache_profile is not None:
        profile = CacheProfile.load(args.cache_profile)
    elif builtin is None:
        raise ValueError(f"there is no built-in cache profile for {what}: pass {_flag('cache_profile', dash)} PATH")
    else:
        profile = builtin
    names = [g.name for g in profile.config.groups]
    overrides = _overrides_by_group(args, names, dash)
    groups = tuple(_apply_overrides(g, overrides[g.name], dash) for g in profile.config.groups)
    used = {name: o for name, o in overrides.items() if o}
    metadata = {**profile.metadata, "overrides": used} if used else profile.metadata
    return CacheProfile(CacheConfig(groups), profile.scores, metadata)


def delta_cache_from_args(args: argparse.Namespace, profile: CacheProfile) -> DeltaCache:
    """Builds the run-time cache with the storage options of the command line."""
    return DeltaCache(
        profile.config,
        delta_dtype=DELTA_DTYPES[args.cache_delta_dtype],
        delta_device="cpu" if args.cache_offload else None,
    )


# ----------------------------------------------------------------------------------------------------------------
# TeaCache (peer baseline, common_cache/teacache.py)


def add_teacache_args(parser: argparse.ArgumentParser, kebab: bool = False,
                      ret_steps: bool = True) -> argparse._ArgumentGroup:
    """Adds the TeaCache flags (Wan2.1: ``--teacache_thresh``, ``--use_ret_steps``; HunyuanVideo, ``kebab``:
    ``--teacache-thresh``), plus ``--teacache_coefficients`` in the same spelling.

    Args:
        parser: the CLI's parser.
        kebab: spell the flags with dashes; ``--teacache_thresh`` is accepted in both spellings.
        ret_steps: add ``--use_ret_steps`` (only Wan2.1 has published ret-steps coefficients); without it the flag
            is still parsed (hidden) and :func:`teacache_from_args` refuses it with a clear message.
    """

    def flag(name: str) -> str:
        return "--" + (name.replace("_", "-") if kebab else name)

    group = parser.add_argument_group("TeaCache (peer baseline; excludes --delta_cache)")
    # Like --delta_cache, the threshold is accepted in both spellings on the kebab-case CLI.
    spellings = ["--teacache-thresh", "--teacache_thresh"] if kebab else ["--teacache_thresh"]
    group.add_argument(*spellings, dest="teacache_thresh", type=float, default=None, metavar="T",
                       help="Enable TeaCache with this threshold on the accumulated rescaled relative L1 "
                            "(published examples: Wan2.1 1.3B 0.05-0.08, 14B 0.14-0.2; HunyuanVideo 0.1-0.15).")
    if ret_steps:
        group.add_argument(flag("use_ret_steps"), dest="use_ret_steps", action="store_true",
                           help="TeaCache on the modulation input e0 with the first 5 steps forced (official mode).")
    else:  # parsed (hidden) only to be refused with a clear message by teacache_from_args
        group.add_argument("--use_ret_steps", "--use-ret-steps", dest="use_ret_steps_refused", action="store_true",
                           help=argparse.SUPPRESS)
    group.add_argument(flag("teacache_coefficients"), dest="teacache_coefficients", default=None,
                       metavar="PATH|LIST", help="Polynomial coefficients (highest degree first) replacing the "
                                                 "published ones: a scripts/fit_teacache.py JSON or a comma list.")
    return group


def _coefficients(text: str, indicator: str, dash: str = "_") -> tuple[tuple[float, ...], str]:
    flag = _flag("teacache_coefficients", dash)
    looks_like_path = text.endswith(".json") or os.sep in text or os.path.exists(text)
    if looks_like_path and not os.path.isfile(text):
        raise FileNotFoundError(f"{flag} {text}: no such file (expected a coefficients JSON written by "
                                "scripts/fit_teacache.py, or numbers like 2396.77,-1311.11,201.33,-8.30,0.138)")
    if looks_like_path:
        try:
            return load_coefficients(text, indicator), f"fitted ({text})"
        except ValueError as err:
            raise ValueError(f"{flag} {text}: {err}") from None
    try:
        return tuple(float(item) for item in text.split(",")), "user"
    except ValueError:
        raise ValueError(f"{flag}={text!r} is not allowed: expected a coefficients JSON file or "
                         "numbers like 2396.77,-1311.11,201.33,-8.30,0.138") from None


def _flag(name: str, dash: str) -> str:
    """A flag in the command line's spelling: ``_flag("teacache_thresh", "-") == "--teacache-thresh"``."""
    return "--" + name.replace("_", dash)


def teacache_from_args(args: argparse.Namespace, make_config: Callable[[float], TeaCacheConfig],
                       dash: str = "_") -> TeaCache | None:
    """Builds the TeaCache of a run, or None when ``--teacache_thresh`` is not given.

    Args:
        args: parsed arguments with the groups of :func:`add_teacache_args` and :func:`add_cache_args`.
        make_config: the model's settings at a threshold, e.g. ``lambda t: wan_teacache_config(task, t, ret)``.
        dash: the command line's word separator in messages ("_": Wan2.1, "-": HunyuanVideo's
            ``--teacache-thresh``).

    Raises:
        ValueError: TeaCache flags without ``--teacache_thresh``, a threshold that is not a finite number >= 0,
            TeaCache together with the delta cache, bad coefficients, ``--use_ret_steps`` on a CLI without it
            (``add_teacache_args(ret_steps=False)``).
        FileNotFoundError: a missing coefficients file (the message names ``--teacache_coefficients``).
    """
    thresh_flag = _flag("teacache_thresh", dash)
    if getattr(args, "use_ret_steps_refused", False):
        raise ValueError("--use_ret_steps is not available for this model: TeaCache's ret-steps mode (indicator e0, "
                         "first 5 steps forced) has published coefficients for Wan2.1 only")
    if args.teacache_thresh is None:
        used = [name for name in ("use_ret_steps", "teacache_coefficients") if getattr(args, name, None)]
        if used:
            raise ValueError(f"{', '.join(_flag(n, dash) for n in used)} only act with TeaCache on: add "
                             f"{thresh_flag} T")
        return None
    if not (math.isfinite(args.teacache_thresh) and args.teacache_thresh >= 0):
        raise ValueError(f"{thresh_flag} {args.teacache_thresh} is not allowed: expected a finite number >= 0 (0 "
                         "computes every step)")
    if getattr(args, "delta_cache", False) or getattr(args, "cache_profile", None) is not None:
        raise ValueError(f"{thresh_flag} and --delta_cache/{_flag('cache_profile', dash)} exclude each other: one "
                         "cache policy per run")
    config = make_config(args.teacache_thresh)
    if args.teacache_coefficients:
        coefficients, source = _coefficients(args.teacache_coefficients, config.indicator, dash)
        config = dataclasses.replace(config, coefficients=coefficients, source=source)
    return TeaCache(config)
