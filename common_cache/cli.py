"""The cache argument group shared by both command lines (Wan2.1 snake_case, HunyuanVideo kebab-case).

Flags (snake_case spelling; HunyuanVideo uses the same names with dashes, and accepts ``--delta_cache`` too):

* ``--delta_cache``: enable the cache with the built-in profile of the model/task.
* ``--cache_profile PATH``: enable it with a profile file instead.
* ``--cache_blocks [GROUP:]LIST``: replace the cached block list, e.g. ``0,2-7,10`` or ``single:0,2,4-7``.
* ``--cache_warmup [GROUP:]N``: warm-up steps (full compute) before caching starts.
* ``--cache_interval [GROUP:]K``: refresh every K steps after the warm-up (uniform schedule).
* ``--cache_refresh_steps [GROUP:]LIST``: refresh on these steps (explicit schedule).
* ``--cache_delta_dtype``, ``--cache_offload``: store deltas in a lower precision / on the CPU.
* ``--cache_stats PATH``: write the run's cache statistics as JSON.

Overrides without ``GROUP:`` apply to every group of the profile (a block list only when it has one group).
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
import os
import re
from collections.abc import Callable

import torch

from common_cache.config import CacheConfig, CacheProfile, StreamGroupConfig
from common_cache.delta_cache import DeltaCache
from common_cache.schedule import StepListSchedule, UniformSchedule
from common_cache.teacache import TeaCache, TeaCacheConfig, load_coefficients

DELTA_DTYPES = {"auto": None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
OVERRIDE_FLAGS = ("cache_blocks", "cache_warmup", "cache_interval", "cache_refresh_steps")

_GROUP_PREFIX = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*):(.*)$")


def parse_int_list(field: str, text: str) -> tuple[int, ...]:
    """Parses ``"0,2-7,10"`` into ``(0, 2, 3, 4, 5, 6, 7, 10)``.

    Raises:
        ValueError: naming the flag and the bad item.
    """
    values: list[int] = []
    for item in text.split(","):
        item = item.strip()
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", item)
        if not match:
            raise ValueError(f"--{field}: {item!r} in {text!r} is not allowed: expected integers or ranges like 2-7")
        first, last = int(match.group(1)), int(match.group(2) or match.group(1))
        if last < first:
            raise ValueError(f"--{field}: range {item!r} is empty: write first-last with first <= last")
        values.extend(range(first, last + 1))
    return tuple(values)


def _parse_int(field: str, text: str) -> int:
    if not re.fullmatch(r"\d+", text.strip()):
        raise ValueError(f"--{field}={text!r} is not allowed: expected a non-negative integer")
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
                       help="Enable the block cache with this cache profile (JSON) instead of the built-in one.")
    group.add_argument(flag("cache_blocks"), dest="cache_blocks", action="append", default=None,
                       metavar="[GROUP:]LIST", help="Cached (skipped) blocks, e.g. 0,2-7,10 or single:0,2,4-7.")
    group.add_argument(flag("cache_warmup"), dest="cache_warmup", action="append", default=None,
                       metavar="[GROUP:]N", help="Steps run in full before caching starts (paper: 6).")
    group.add_argument(flag("cache_interval"), dest="cache_interval", action="append", default=None,
                       metavar="[GROUP:]K", help="Refresh the deltas every K steps after the warm-up.")
    group.add_argument(flag("cache_refresh_steps"), dest="cache_refresh_steps", action="append", default=None,
                       metavar="[GROUP:]LIST", help="Refresh the deltas on these steps, e.g. 6,18,26,32,38,42,46,48.")
    group.add_argument(flag("cache_delta_dtype"), dest="cache_delta_dtype", default="auto",
                       choices=sorted(DELTA_DTYPES),
                       help="Storage dtype of the deltas (auto: the residual stream's dtype, exact).")
    group.add_argument(flag("cache_offload"), dest="cache_offload", action="store_true",
                       help="Keep the deltas in CPU memory (saves accelerator memory, costs transfers).")
    group.add_argument(flag("cache_stats"), dest="cache_stats", default=None, metavar="PATH",
                       help="Write the cache statistics of the run as JSON to PATH.")
    return group


def _overrides_by_group(args: argparse.Namespace, names: list[str]) -> dict[str, dict[str, str]]:
    """Collects ``{group: {flag: value}}`` from the repeated override flags."""
    result: dict[str, dict[str, str]] = {name: {} for name in names}
    for flag in OVERRIDE_FLAGS:
        for text in getattr(args, flag, None) or []:
            group, value = _split_group(text)
            if group is not None and group not in result:
                raise ValueError(f"--{flag}={text!r}: group '{group}' is not in the cache profile: allowed {names}")
            if group is None and flag == "cache_blocks" and len(names) > 1:
                raise ValueError(
                    f"--{flag}={text!r}: the profile has groups {names}; name one, e.g. {names[-1]}:{value}"
                )
            for name in [group] if group else names:
                if flag in result[name]:
                    raise ValueError(f"--{flag} is given twice for group '{name}'")
                result[name][flag] = value
    return result


def _apply_overrides(group: StreamGroupConfig, overrides: dict[str, str]) -> StreamGroupConfig:
    if "cache_interval" in overrides and "cache_refresh_steps" in overrides:
        raise ValueError(
            f"group '{group.name}': --cache_interval and --cache_refresh_steps exclude each other: give one"
        )
    changes: dict = {}
    if "cache_blocks" in overrides:
        changes["cached_blocks"] = parse_int_list("cache_blocks", overrides["cache_blocks"])
    if "cache_warmup" in overrides:
        changes["warmup_steps"] = _parse_int("cache_warmup", overrides["cache_warmup"])
    if "cache_interval" in overrides:
        changes["schedule"] = UniformSchedule(_parse_int("cache_interval", overrides["cache_interval"]))
    if "cache_refresh_steps" in overrides:
        changes["schedule"] = StepListSchedule(parse_int_list("cache_refresh_steps", overrides["cache_refresh_steps"]))
    return dataclasses.replace(group, **changes) if changes else group


def cache_profile_from_args(args: argparse.Namespace, builtin: CacheProfile | None, what: str) -> CacheProfile | None:
    """Resolves the cache profile a run uses, or None when the cache is off.

    Args:
        args: parsed arguments with the cache group of :func:`add_cache_args`.
        builtin: the built-in profile for this model/task (None if there is none).
        what: the model/task name used in error messages.

    Raises:
        ValueError: overrides without enabling the cache, no profile available, or bad override values.
        FileNotFoundError: ``--cache_profile`` names a missing file.
    """
    enabled = args.delta_cache or args.cache_profile is not None
    if not enabled:
        used = [f"--{flag}" for flag in OVERRIDE_FLAGS if getattr(args, flag, None)]
        if used:
            raise ValueError(f"{', '.join(used)} only act with the cache on: add --delta_cache or --cache_profile PATH")
        return None
    if args.cache_profile is not None:
        profile = CacheProfile.load(args.cache_profile)
    elif builtin is None:
        raise ValueError(f"there is no built-in cache profile for {what}: pass --cache_profile PATH")
    else:
        profile = builtin
    names = [g.name for g in profile.config.groups]
    overrides = _overrides_by_group(args, names)
    groups = tuple(_apply_overrides(g, overrides[g.name]) for g in profile.config.groups)
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


def _coefficients(text: str, indicator: str) -> tuple[tuple[float, ...], str]:
    if os.path.isfile(text) or text.endswith(".json"):
        return load_coefficients(text, indicator), f"fitted ({text})"
    try:
        return tuple(float(item) for item in text.split(",")), "user"
    except ValueError:
        raise ValueError(f"--teacache_coefficients={text!r} is not allowed: expected a coefficients JSON file or "
                         "numbers like 2396.77,-1311.11,201.33,-8.30,0.138") from None


def teacache_from_args(args: argparse.Namespace,
                       make_config: Callable[[float], TeaCacheConfig]) -> TeaCache | None:
    """Builds the TeaCache of a run, or None when ``--teacache_thresh`` is not given.

    Args:
        args: parsed arguments with the groups of :func:`add_teacache_args` and :func:`add_cache_args`.
        make_config: the model's settings at a threshold, e.g. ``lambda t: wan_teacache_config(task, t, ret)``.

    Raises:
        ValueError: TeaCache flags without ``--teacache_thresh``, TeaCache together with the delta cache, bad
            coefficients, ``--use_ret_steps`` on a CLI without it (``add_teacache_args(ret_steps=False)``).
        FileNotFoundError: a missing coefficients file.
    """
    if getattr(args, "use_ret_steps_refused", False):
        raise ValueError("--use_ret_steps is not available for this model: TeaCache's ret-steps mode (indicator e0, "
                         "first 5 steps forced) has published coefficients for Wan2.1 only")
    if args.teacache_thresh is None:
        used = [name for name in ("use_ret_steps", "teacache_coefficients") if getattr(args, name, None)]
        if used:
            raise ValueError(f"{', '.join('--' + n for n in used)} only act with TeaCache on: add --teacache_thresh T")
        return None
    if getattr(args, "delta_cache", False) or getattr(args, "cache_profile", None) is not None:
        raise ValueError("--teacache_thresh and --delta_cache/--cache_profile exclude each other: one cache policy "
                         "per run")
    config = make_config(args.teacache_thresh)
    if args.teacache_coefficients:
        coefficients, source = _coefficients(args.teacache_coefficients, config.indicator)
        config = dataclasses.replace(config, coefficients=coefficients, source=source)
    return TeaCache(config)
