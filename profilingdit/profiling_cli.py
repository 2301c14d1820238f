"""Model-independent parts of the profiling command lines (``profile_wan.py``, ``profile_hunyuan.py``).

Both scripts take the same profiling options; Wan2.1 spells its flags with underscores (``--cache_k``, as its
``generate.py``), HunyuanVideo with dashes (``--cache-k``, as its ``sample_video.py``). Every helper that names a
flag in a message takes that spelling as ``dash`` ("_" or "-"); argparse stores both under the same attribute
names (``args.cache_k``), so the helpers read the same fields for both models.

Outputs are never left half-written: JSON goes through :func:`write_json_atomic`, figures through
``common_cache.profiling.save_figure_atomic``; finished prompts are kept in ``<out>.partial.json`` so that
``--resume`` can continue an interrupted run (:func:`read_partial`).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Sequence

from common_cache.profiling import (
    STATISTICS,
    HighAttentionRule,
    MaskVideoProvider,
    PCAMaskProvider,
    ProfileSettings,
    ProfileStatistics,
    SAM2MaskProvider,
    plot_step_change,
    uniform_refresh_count,
)


def flag(name: str, dash: str = "_") -> str:
    """The command-line spelling of option ``name`` (an attribute name): ``flag("cache_k", "-") == "--cache-k"``."""
    return "--" + name.replace("_", dash)


def add_mask_args(parser: argparse.ArgumentParser, dash: str = "_") -> None:
    """The foreground-mask options (``dash``: the CLI's word separator, ``_`` for Wan2.1, ``-`` for HunyuanVideo)."""
    masks = parser.add_argument_group("foreground masks")
    masks.add_argument(flag("mask_provider", dash), default="pca", choices=["pca", "video", "sam2"])
    masks.add_argument(flag("mask_source", dash), default="clean", choices=["clean", "prediction"],
                       help="pca/sam2: the clean-latent estimate x_t - sigma*v, or the raw velocity prediction.")
    masks.add_argument(flag("mask_method", dash), default="kmeans", choices=["kmeans", "otsu"])
    masks.add_argument(flag("mask_videos", dash), default=None,
                       help="video provider: comma-separated mask files (.npy, .mp4, .gif), one per prompt.")
    masks.add_argument(flag("sam2_checkpoint", dash), default=None)
    masks.add_argument(flag("sam2_config", dash), default=None)
    masks.add_argument(flag("mask_pooling", dash), default="fraction", choices=["fraction", "majority", "any"])


def add_decision_args(parser: argparse.ArgumentParser, cache_k: dict, default_out: str,
                      dash: str = "_") -> argparse._ArgumentGroup:
    """The statistics, decision and output options; ``cache_k``: the model's ``add_argument`` keywords for
    ``--cache_k`` (one group or several). Returns the decisions group (for model-specific additions)."""
    def opt(name: str) -> str:
        return flag(name, dash)

    decide = parser.add_argument_group("statistics and decisions")
    decide.add_argument(opt("threshold"), default="mean", help="High-attention tokens: mean, mean+<k>std, top<q>.")
    decide.add_argument(opt("statistic"), default="r_attn", choices=list(STATISTICS))
    decide.add_argument(opt("reuse_every"), type=int, default=0,
                        help="Measure reuse_error (each block cached alone, anchors every interval steps from the "
                             "warm-up) on every n-th step between anchors; 0 = not measured (default unless "
                             f"{opt('statistic')} reuse_error, which sets 1).")
    decide.add_argument(opt("score_from_step"), type=int, default=None, help="Default: the warm-up length.")
    decide.add_argument(opt("cache_k"), **cache_k)
    decide.add_argument(opt("tau"), type=float, default=None, help="Cache blocks scoring below tau.")
    decide.add_argument(opt("warmup"), type=int, default=6)
    decide.add_argument(opt("refresh_budget"), default=None,
                        help="Refresh steps (warm-up end included) placed by the step-change curve; 'auto': as many "
                             f"as the uniform {opt('interval')} schedule has.")
    decide.add_argument(opt("interval"), type=int, default=6,
                        help=f"Uniform refresh interval (used without {opt('refresh_budget')}; also the budget of "
                             f"{opt('refresh_budget')} auto).")
    decide.add_argument(opt("query_chunk"), type=int, default=256)
    decide.add_argument(opt("attention_every"), type=int, default=1,
                        help="Measure attention on every n-th step only (cost on large models).")
    out = parser.add_argument_group("outputs")
    out.add_argument("--out", default=None, help=f"Profile JSON (default: {default_out}).")
    out.add_argument("--figures", default=None, help="Figure path prefix (default: --out without .json).")
    out.add_argument("--resume", action="store_true", help="Continue from <out>.partial.json.")
    return decide


def add_budget_args(parser: argparse.ArgumentParser, dash: str = "_") -> None:
    """The budgeted-profile options (common_cache.profiling.budget)."""
    from common_cache.config import FORECAST_TARGETS, MAX_FORECAST_ORDER
    from common_cache.profiling.budget import LAYOUTS

    budget = parser.add_argument_group(
        "budgeted profile (forecasting; replaces the attention statistics and the block split)")
    budget.add_argument(flag("target_speedup", dash), dest="target_speedup", type=float, default=None, metavar="X",
                        help="Choose every unit's refresh steps and forecast order so that the block calls give an "
                             "ideal speedup of at least X with the least predicted error, then measure the result "
                             "on the profiling prompts.")
    budget.add_argument(flag("max_forecast_order", dash), dest="max_forecast_order", type=int, default=2,
                        help=f"Highest forecast order the search may choose (0..{MAX_FORECAST_ORDER}; 0: copies).")
    budget.add_argument(flag("budget_layout", dash), dest="budget_layout", default="stack", choices=list(LAYOUTS),
                        help="stack: each stream group refreshes as one unit (default; best measured); blocks: "
                             "every block has its own steps.")
    budget.add_argument(flag("forecast_damping", dash), dest="forecast_damping", default="auto", metavar="auto|G",
                        help="Scale of the order-1 forecast slope (1 = finite differences); auto (default) picks the "
                             "best of 1.0, 0.9, ..., 0.5 on the profiling prompts (one generation per prompt each).")
    budget.add_argument(flag("forecast_target", dash), dest="forecast_target", default=None,
                        choices=list(FORECAST_TARGETS),
                        help="What a reuse step forecasts: the stack's output (the default with the stack layout) "
                             "or its residual out - in, added to the current input (the default, and the only "
                             "choice, with the blocks layout).")
    budget.add_argument(flag("step_weight_power", dash), dest="step_weight_power", default="auto", metavar="auto|P",
                        help="The search weighs a forecast's error at step s by (sigma_s - sigma_(s+1))^P; auto "
                             "(default) searches with P = 1, 0.5, 0, -0.5 and keeps the profile (with its damping) "
                             "closest to full compute on the profiling prompts.")
    budget.add_argument(flag("residual_elements", dash), dest="residual_elements", type=int, default=1 << 16,
                        help="Residual entries per block and step kept for the search (a fixed random subset).")


def check_budget_args(args: argparse.Namespace, num_steps: int, dash: str = "_") -> None:
    """Ranges of the budgeted-profile options (before any model is loaded)."""
    from common_cache.config import MAX_FORECAST_ORDER

    target = args.target_speedup
    if target is not None and not (math.isfinite(target) and 1.0 < target <= num_steps):
        raise ValueError(f"{flag('target_speedup', dash)} {target} is not allowed: expected a number in "
                         f"(1, {num_steps}] (ideal speedup: full block calls over computed ones)")
    if not 0 <= args.max_forecast_order <= MAX_FORECAST_ORDER:
        raise ValueError(f"{flag('max_forecast_order', dash)} {args.max_forecast_order} is not allowed: expected "
                         f"0..{MAX_FORECAST_ORDER}")
    args.damping = parse_damping(args.forecast_damping, flag("forecast_damping", dash))
    if args.forecast_target == "output" and args.budget_layout != "stack":
        raise ValueError(f"{flag('forecast_target', dash)} output is not allowed with {flag('budget_layout', dash)} "
                         f"{args.budget_layout}: expected residual (only the whole stack's outputs are recorded)")
    args.power = parse_step_weight_power(args.step_weight_power, flag("step_weight_power", dash))
    if args.residual_elements < 1:
        raise ValueError(f"{flag('residual_elements', dash)} {args.residual_elements} is not allowed: expected an "
                         "integer >= 1")


def parse_auto_number(text: str, shown: str, allowed: Callable[[float], bool], expected: str) -> float | None:
    """An ``auto|number`` option: None for ``auto``, else the number if ``allowed`` (the error names ``expected``)."""
    if text == "auto":
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not allowed(value):
        raise ValueError(f"{shown} {text!r} is not allowed: expected auto or {expected}")
    return value


def parse_damping(text: str, shown: str) -> float | None:
    """``--forecast_damping``: None for ``auto``, else a number in (0, 2]."""
    return parse_auto_number(text, shown, lambda v: 0.0 < v <= 2.0, "a number in (0, 2] (1 = finite differences)")


def parse_step_weight_power(text: str, shown: str) -> float | None:
    """``--step_weight_power``: None for ``auto``, else a number in [-2, 2]."""
    return parse_auto_number(text, shown, lambda v: -2.0 <= v <= 2.0,
                             "a number in [-2, 2] (1 = the sampler's step sizes)")


def budget_generations(args: argparse.Namespace) -> int:
    """Generations of a budgeted run: the trajectories, the closed-loop candidates (step weights x dampings, when
    more than one) and the timed check."""
    from common_cache.profiling.budget import DAMPINGS, STEP_WEIGHT_POWERS

    candidates = ((len(STEP_WEIGHT_POWERS) if args.power is None else 1)
                  * (len(DAMPINGS) if args.damping is None else 1))
    return len(args.prompts) * (3 + (candidates if candidates > 1 else 0))


def save_budgeted_profile(path: str, config, search: dict, measured: dict, facts: dict, prompts: Sequence[str],
                          seeds: Sequence[int], command: str, seconds: float) -> None:
    """Writes a budgeted profile (no per-block scores; the search and the measured figures in its metadata) and
    logs what was measured on the profiling prompts."""
    from common_cache import CacheProfile

    metadata = {**facts, "source": "profiler (budgeted)", "prompts": list(prompts), "seeds": list(seeds),
                "budget": search, "measured_on_profiling_prompts": measured, "command": command,
                "profiling_seconds": round(seconds, 1), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    CacheProfile(config, {}, metadata).save(path)
    logging.info("budgeted profile written to %s: ideal speedup %.3fx; on the %d profiling prompts: PSNR %s dB "
                 "(min %s), measured speedup %.2fx", path, measured["ideal_speedup"], len(prompts),
                 measured["psnr_mean"], measured["psnr_min"], measured["measured_speedup"])


def run_metadata(args: argparse.Namespace, script: str, argv: list[str], seconds: float) -> dict:
    """The model-independent part of a profile's metadata: seeds, mask and high-attention settings, the command."""
    return {
        "seeds": [args.base_seed + i for i in range(len(args.prompts))],
        "mask_provider": {"name": args.mask_provider, "source": args.mask_source, "method": args.mask_method,
                          "pooling": args.mask_pooling},
        "high_attention": args.rule.text(),
        "command": f"python scripts/{script} " + shlex.join(argv),
        "profiling_seconds": round(seconds, 1),
    }


def profile_or_resume_later(run_prompts, bar, recorder, partial: str, num_prompts: int, write_outputs) -> int:
    """Runs ``run_prompts()``; on Ctrl-C keeps the partial file for ``--resume`` (exit code 130), else passes the
    statistics to ``write_outputs`` and removes the partial file (exit code 0)."""
    try:
        statistics = run_prompts()
    except KeyboardInterrupt:
        bar.close()
        kept = len(recorder.statistics.prompts) if recorder.statistics else 0
        logging.warning("interrupted: %d of %d prompts are saved in %s; rerun with --resume to continue", kept,
                        num_prompts, partial)
        return 130
    bar.close()
    write_outputs(statistics)
    if os.path.exists(partial):
        os.remove(partial)
    return 0


def write_json_atomic(data: dict, path: str) -> None:
    """Writes ``data`` as JSON under a temporary name in the same folder, then renames it over ``path``."""
    fd, tmp = tempfile.mkstemp(prefix=".partial-", suffix=".json", dir=os.path.dirname(os.path.abspath(path)))
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def run_key(args: argparse.Namespace, keys: Sequence[str]) -> dict:
    """What must match for ``--resume`` to continue a partial run, in its JSON form (tuples become lists), so that
    it compares equal to the key read back from the partial file."""
    return json.loads(json.dumps({k: getattr(args, k) for k in keys}))


def read_partial(args: argparse.Namespace, partial: str, key: dict) -> dict | None:
    """The partial file's content when ``--resume`` is given and the file exists, else None.

    Raises:
        ValueError: the file was written with other settings (its run key differs from ``key``).
    """
    if not args.resume or not os.path.isfile(partial):
        return None
    with open(partial) as handle:
        data = json.load(handle)
    if data.get("run") != key:
        raise ValueError(f"--resume: {partial} was written with other settings; rerun without --resume to start over")
    return data


def load_partial(args: argparse.Namespace, partial: str, key: dict) -> ProfileStatistics | None:
    """The statistics of the prompts finished before an interruption (see :func:`read_partial`), or None."""
    data = read_partial(args, partial, key)
    return None if data is None else ProfileStatistics.from_dict(data["statistics"])


def make_settings(args: argparse.Namespace) -> ProfileSettings:
    """The decision settings of the command line (``args.cache_k``: an int, a group -> int mapping or None)."""
    return ProfileSettings(statistic=args.statistic, first_step=args.score_from_step, cache_k=args.cache_k,
                           tau=args.tau, warmup_steps=args.warmup, refresh_budget=args.refresh_budget,
                           interval=args.interval)


def resolve_prompts(args: argparse.Namespace, dash: str = "_",
                    defaults: Callable[[int | None], list[str]] | None = None, missing_hint: str = "") -> list[str]:
    """The profiling prompts: every ``--prompt``, then the lines of ``--prompt_file``, cut to ``--num_prompts``.

    Args:
        args: with ``prompt`` (a list or None), ``prompt_file``, ``num_prompts``.
        dash: flag spelling for messages.
        defaults: built-in prompts when none are given (called with ``--num_prompts``); None: there are none.
        missing_hint: appended to the error when no prompt is given.

    Raises:
        ValueError: no prompt at all, or ``--num_prompts`` < 1.
        FileNotFoundError: a missing ``--prompt_file``.
    """
    prompts = list(args.prompt or [])
    if args.prompt_file:
        if not os.path.isfile(args.prompt_file):
            raise FileNotFoundError(f"{flag('prompt_file', dash)} not found: {args.prompt_file}")
        with open(args.prompt_file, encoding="utf-8") as handle:
            prompts += [line.strip() for line in handle if line.strip()]
    if not prompts and defaults is not None:
        prompts = defaults(args.num_prompts)
    if not prompts:
        raise ValueError(f"no profiling prompts: pass --prompt (repeatable) or {flag('prompt_file', dash)}"
                         + missing_hint)
    if args.num_prompts is not None:
        if args.num_prompts < 1:
            raise ValueError(f"{flag('num_prompts', dash)} {args.num_prompts} is not allowed: expected >= 1")
        prompts = prompts[: args.num_prompts]
    return prompts


def check_mask_flags(args: argparse.Namespace, dash: str = "_") -> None:
    """Refuses incomplete mask-provider options (before any model is loaded)."""
    if args.mask_provider == "sam2" and (not args.sam2_checkpoint or not args.sam2_config):
        raise ValueError(f"{flag('mask_provider', dash)} sam2 needs {flag('sam2_checkpoint', dash)} PATH and "
                         f"{flag('sam2_config', dash)} NAME")
    if args.mask_provider == "video":
        paths = [p for p in (args.mask_videos or "").split(",") if p]
        if len(paths) != len(args.prompts):
            raise ValueError(f"{flag('mask_videos', dash)} has {len(paths)} files for {len(args.prompts)} prompts: "
                             "give one per prompt")


def make_mask_provider(args: argparse.Namespace, temporal_stride: int, dash: str = "_"):
    """The foreground-mask provider of the command line.

    Args:
        args: with ``mask_provider``, ``mask_source``, ``mask_method``, ``mask_videos``, ``sam2_*``, ``prompts``.
        temporal_stride: the VAE's temporal compression (pixel frames -> latent frames of user masks).
        dash: flag spelling for messages.
    """
    check_mask_flags(args, dash)
    if args.mask_provider == "pca":
        return PCAMaskProvider(source=args.mask_source, method=args.mask_method)
    if args.mask_provider == "sam2":
        return SAM2MaskProvider(args.sam2_checkpoint, args.sam2_config)
    paths = [p for p in args.mask_videos.split(",") if p]
    return MaskVideoProvider(paths, temporal_stride=temporal_stride)


MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes 0..2^64-1


def check_seed_range(seed: int | None, count: int, shown: str) -> None:
    """Prompt i runs with seed + i: every one must be a 64-bit unsigned seed (``shown``: the flag, e.g. --seed)."""
    if seed is not None and not 0 <= seed <= MAX_SEED - (count - 1):
        raise ValueError(f"{shown} {seed} is not allowed: expected 0..{MAX_SEED - (count - 1)} (prompt i uses "
                         f"{shown} + i for {count} prompts; a seed is a 64-bit unsigned integer)")


def check_output_paths(args: argparse.Namespace) -> None:
    """``--out`` (a .json file) and ``--figures`` (a path prefix: ``<prefix>_heatmap.png``...) can be written:
    existing, writable folders. Run before any model is loaded."""
    from profilingdit.files import check_output_file, check_output_folder

    check_output_file("--out", args.out, (".json",))
    prefix = args.figures
    if not prefix or prefix.endswith(("/", os.sep)) or os.path.isdir(prefix):
        raise ValueError(f"--figures {prefix!r} is a folder: expected a path prefix such as figs/wan (figures go to "
                         "figs/wan_heatmap.png, figs/wan_step_change.png)")
    check_output_folder("--figures", os.path.dirname(os.path.abspath(prefix)), prefix)


def check_decision_flags(args: argparse.Namespace, num_steps: int, dash: str = "_",
                         check_cache_k: Callable[[argparse.Namespace], None] | None = None) -> None:
    """Checks the statistics and decision flags and fills their derived values.

    Sets ``args.reuse_every`` (1 with ``--statistic reuse_error`` when not given), ``args.refresh_budget`` (an int
    or None; ``auto`` = the uniform schedule's refresh count) and ``args.rule`` (the high-attention rule).

    Args:
        args: the parsed command line.
        num_steps: denoising steps of every profiled generation.
        dash: flag spelling for messages.
        check_cache_k: the model's check of ``--cache_k`` against its depths, run right after the warm-up check.

    Raises:
        ValueError: naming the flag, the value and what is allowed.
    """
    if not 0 <= args.warmup < num_steps:
        raise ValueError(f"{flag('warmup', dash)} {args.warmup} is not allowed: expected 0..{num_steps - 1}")
    if check_cache_k is not None:
        check_cache_k(args)
    if args.cache_k is not None and args.tau is not None:
        raise ValueError(f"{flag('cache_k', dash)} and {flag('tau', dash)} exclude each other: give one")
    if args.tau is not None and not math.isfinite(args.tau):
        raise ValueError(f"{flag('tau', dash)} {args.tau} is not allowed: expected a finite number (a score)")
    for name, low in (("attention_every", 1), ("reuse_every", 0)):
        if getattr(args, name) < low:
            raise ValueError(f"{flag(name, dash)} {getattr(args, name)} is not allowed: expected an integer >= {low}")
    if args.statistic == "reuse_error" and args.reuse_every == 0:
        args.reuse_every = 1
    if args.interval < 1:
        raise ValueError(f"{flag('interval', dash)} {args.interval} is not allowed: expected >= 1")
    if args.refresh_budget == "auto":
        args.refresh_budget = uniform_refresh_count(args.interval, args.warmup, num_steps)
    elif args.refresh_budget is not None:
        if not args.refresh_budget.isdigit() or int(args.refresh_budget) < 1:
            raise ValueError(f"{flag('refresh_budget', dash)} {args.refresh_budget} is not allowed: expected 'auto' "
                             "or an integer >= 1")
        args.refresh_budget = int(args.refresh_budget)
    args.rule = HighAttentionRule.parse(args.threshold)


def plot_refresh_schedules(statistics: ProfileStatistics, refresh: Sequence[int], args: argparse.Namespace,
                           path: str, title: str) -> str:
    """The step-change curve with the profile's refresh steps and, when they differ, the uniform ``--interval``
    schedule's (the paper's Fig. 4)."""
    uniform = tuple(range(args.warmup, statistics.num_steps, args.interval))
    schedules = {"profile": tuple(refresh)}
    if tuple(refresh) != uniform:
        schedules[f"uniform interval {args.interval}"] = uniform
    return plot_step_change(statistics.change_curve(), path, schedules, args.warmup, title=title)


def cli_main(parse_args, validate, run, argv: list[str] | None) -> int:
    """The profilers' entry point: parse, check every value, run; bad input -> a logged message and exit code 2."""
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(levelname)s: %(message)s", stream=sys.stdout)
    args = parse_args(argv)
    try:
        validate(args)
        return run(args, argv)
    except (ValueError, FileNotFoundError) as err:
        logging.error("%s", err)
        return 2
