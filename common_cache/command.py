"""What both command lines share around the cache: one policy factory, the start-up and end-of-run logs, and the
``main`` wrapper (logging set-up, interrupts, exit codes).

``Wan2.1/generate.py`` and ``HunyuanVideo/sample_video.py`` build their cache policy only through
:func:`policy_from_args`, so that both apply the same rules: the delta cache and TeaCache exclude each other,
fitted TeaCache coefficients kept with the weights are preferred over the published ones, the profile is checked
against the model's depths and the run's steps before anything loads, and an uncalibrated TeaCache is warned about.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from common_cache.cli import cache_profile_from_args, delta_cache_from_args, teacache_from_args
from common_cache.config import CacheProfile
from common_cache.delta_cache import DeltaCache
from common_cache.policy import CachePolicy, attach_cache
from common_cache.report import log_cache_profile, log_cache_summary, write_run_stats
from common_cache.teacache import TeaCache, TeaCacheConfig, log_teacache_summary
from profilingdit.files import handle_interrupts, interrupt_exit_code
from profilingdit.parallel import shutdown
from profilingdit.timing import GenerationReport

FITTED_COEFFICIENTS = "teacache_coefficients.json"  # scripts/fit_teacache.py output kept with the weights


@dataclass
class RunPolicy:
    """The cache policy of one command-line run (None: full compute) and where it came from.

    Attributes:
        policy: the :class:`DeltaCache`, the :class:`TeaCache`, or None.
        profile: the delta cache's profile (None otherwise).
        profile_source: ``built-in`` or the profile's path (delta cache only).
        num_steps: the run's denoising steps.
    """

    policy: CachePolicy | None
    profile: CacheProfile | None = None
    profile_source: str = "built-in"
    num_steps: int = 50

    def attach(self, model: torch.nn.Module, logger: logging.Logger) -> None:
        """Attaches the policy to ``model`` (checks its depths) and logs its configuration once."""
        if self.policy is None:
            return
        attach_cache(model, self.policy)
        if isinstance(self.policy, TeaCache):
            logger.info("TeaCache %s, coefficients: %s", self.policy.config.tag(), self.policy.config.source)
        else:
            log_cache_profile(logger, self.profile, self.profile_source, self.num_steps)

    def log_summary(self, logger: logging.Logger, report: GenerationReport, stats_path: str | None) -> None:
        """Logs the policy's block calls and speedups and writes ``stats_path`` (every run: full compute writes
        the timings alone, the reference of cached runs)."""
        if isinstance(self.policy, TeaCache):
            log_teacache_summary(logger, self.policy, report, stats_path)
        elif isinstance(self.policy, DeltaCache):
            log_cache_summary(logger, self.policy, report, self.profile, stats_path)
        elif stats_path:
            write_run_stats(stats_path, report)


def policy_from_args(args: argparse.Namespace, *, what: str, num_steps: int, builtin: CacheProfile | None,
                     teacache_config: Callable[[float], TeaCacheConfig], depths: Mapping[str, int] | None,
                     weights_dir: str | None = None, resolve_profile: Callable[[str], str] | None = None,
                     dash: str = "_", logger: logging.Logger | None = None) -> RunPolicy:
    """The one factory of both command lines: the run's policy from its cache and TeaCache flags.

    Args:
        args: parsed arguments with the groups of :func:`common_cache.add_cache_args` and
            :func:`common_cache.cli.add_teacache_args`.
        what: the model/task in messages (``task t2v-tiny``, ``--model HYVideo-T/2-cfgdistill``).
        num_steps: the run's denoising steps (every schedule must fit them).
        builtin: the model's built-in profile (None: ``--delta_cache`` needs ``--cache_profile``).
        teacache_config: the model's TeaCache settings at a threshold.
        depths: the model's stream group depths, to check the profile before loading (None: checked when the
            policy is attached, e.g. for an architecture known only after loading).
        weights_dir: the folder of the weights; its ``teacache_coefficients.json``, when present, replaces the
            published coefficients unless ``--teacache_coefficients`` is given.
        resolve_profile: turns a ``--cache_profile`` value into a path (e.g. a built-in profile's name).
        dash: the command line's word separator in messages.
        logger: where the warnings go.

    Raises:
        ValueError: the two caches together, a bad threshold, coefficients or override, a profile that does not fit
            the depths or the steps.
        FileNotFoundError: a missing profile or coefficients file.
    """
    logger = logger or logging.getLogger()
    fitted = os.path.join(weights_dir, FITTED_COEFFICIENTS) if weights_dir else None
    if args.teacache_thresh is not None and not args.teacache_coefficients and fitted and os.path.isfile(fitted):
        args.teacache_coefficients = fitted
    teacache = teacache_from_args(args, teacache_config, dash)  # first: it refuses the delta cache together with it
    if teacache is not None:
        if teacache.config.source.startswith("uncalibrated"):
            logger.warning("TeaCache is %s", teacache.config.source)
        return RunPolicy(teacache, num_steps=num_steps)
    if args.cache_profile is not None and resolve_profile is not None:
        args.cache_profile = resolve_profile(args.cache_profile)
    profile = cache_profile_from_args(args, builtin, what, dash)
    if profile is None:
        return RunPolicy(None, num_steps=num_steps)
    if depths is not None:
        profile.config.check_depths(depths)
    for group in profile.config.groups:
        group.refresh_steps(num_steps)
    return RunPolicy(delta_cache_from_args(args, profile), profile, args.cache_profile or "built-in", num_steps)


def uncalibrated(config: TeaCacheConfig, why: str) -> TeaCacheConfig:
    """``config`` marked as uncalibrated for this run (:func:`policy_from_args` then warns with ``why``)."""
    return dataclasses.replace(config, source=f"uncalibrated: {why}")


# ------------------------------------------------------------------------------------------------ main


def init_logging() -> None:
    """The official command lines' log format, on stdout."""
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(levelname)s: %(message)s",
                        handlers=[logging.StreamHandler(stream=sys.stdout)])


def run_command(body: Callable[[], object], logger: logging.Logger) -> int:
    """Runs a command line's ``body`` and turns its end into an exit code: 0, 2 for a refused input or an I/O error
    (logged as one line), 130/143 for Ctrl-C/SIGTERM (every cleanup has run: no partial file is left). The
    sequence-parallel process group, if any, is shut down in every case."""
    try:
        with handle_interrupts():
            body()
    except (ValueError, OSError) as err:  # OSError: e.g. the disk filled up while writing
        logger.error("%s", err)
        return 2
    except KeyboardInterrupt as err:
        logger.error("%s: stopped, no partial file left", str(err) or "interrupted (Ctrl-C)")
        return interrupt_exit_code(err)
    finally:
        shutdown()
    return 0
