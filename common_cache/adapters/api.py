"""``enable_cache`` / ``disable_cache``: one way to put a cache policy on any supported model or pipeline.

Targets:

* our transformers (``WanModel``, ``HYVideoDiffusionTransformer``: anything with ``stream_group_depths()`` and a
  ``block_cache`` attribute): the policy is attached as with :func:`common_cache.attach_cache`; the pipeline (or
  the user) drives ``begin`` / ``step`` as before;
* a diffusers transformer of :data:`common_cache.adapters.registry.DIFFUSERS_MODELS` (``WanTransformer3DModel``,
  T2V and I2V, ``HunyuanVideoTransformer3DModel``): its block stacks run through the policy; the caller drives
  ``policy.begin(num_steps, sigmas=...)`` once per generation and wraps every transformer call in
  ``with policy.step(i, branch):``, exactly as for our models;
* a diffusers pipeline whose ``transformer`` is one of those (``WanPipeline``, ``WanImageToVideoPipeline``,
  ``HunyuanVideoPipeline``): as for its transformer, and ``begin`` / ``step`` are driven automatically from the
  pipeline's scheduler and ``cache_context`` calls (:mod:`common_cache.adapters.pipeline`).

Rules: a target holds at most one policy (enabling twice raises; call :func:`disable_cache` first), and a policy
serves one target at a time. :func:`disable_cache` on a target without a cache does nothing and returns None.
After :func:`disable_cache` the target is exactly as before: same module tree, same ``state_dict`` keys, and
bit-identical outputs.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from common_cache.adapters.diffusers import DiffusersAdapter
from common_cache.adapters.pipeline import PipelineDriver
from common_cache.adapters.registry import DIFFUSERS_MODELS, diffusers_spec
from common_cache.policy import attach_cache, detach_cache

POLICY_METHODS = ("bind", "begin", "step", "run")
_ALLOWED_TARGETS = (
    "one of our transformers (WanModel, HYVideoDiffusionTransformer), a diffusers transformer "
    f"({', '.join(sorted(DIFFUSERS_MODELS))}), or a diffusers pipeline whose .transformer is one of those"
)


@dataclass
class _Enabled:
    """What :func:`enable_cache` did to one transformer, and how to undo it."""

    target: Any  # what enable_cache was given (the transformer or its pipeline)
    policy: Any
    undo: Callable[[], None]


# transformer module -> its enabled cache. Weak keys: a model that is garbage-collected takes its entry with it.
_ENABLED: weakref.WeakKeyDictionary[nn.Module, _Enabled] = weakref.WeakKeyDictionary()


def _is_native(target: Any) -> bool:
    return isinstance(target, nn.Module) and hasattr(target, "stream_group_depths") and hasattr(target, "block_cache")


def _transformer_of(target: Any) -> tuple[nn.Module, bool]:
    """(the transformer to patch, whether ``target`` is a pipeline), or TypeError naming the type."""
    if _is_native(target) or (isinstance(target, nn.Module) and diffusers_spec(target) is not None):
        return target, False
    transformer = getattr(target, "transformer", None)
    if not isinstance(target, nn.Module) and isinstance(transformer, nn.Module) \
            and diffusers_spec(transformer) is not None:
        return transformer, True
    what = type(target).__name__
    if transformer is not None:
        what += f" with transformer {type(transformer).__name__}"
    raise TypeError(f"enable_cache: target {what} is not supported: allowed {_ALLOWED_TARGETS}")


def _check_policy(policy: Any) -> None:
    missing = [name for name in POLICY_METHODS if not callable(getattr(policy, name, None))]
    if missing:
        raise TypeError(
            f"enable_cache: policy {type(policy).__name__} is not a cache policy (it lacks {', '.join(missing)}): "
            "allowed a common_cache.CachePolicy such as DeltaCache or TeaCache, or an object with the same "
            f"{'/'.join(POLICY_METHODS)} protocol (e.g. the profiling recorder)")


def _check_pipeline(pipeline: Any) -> None:
    if getattr(pipeline, "transformer_2", None) is not None:
        raise ValueError(f"enable_cache: {type(pipeline).__name__} has a transformer_2 (a two-stage Wan2.2 "
                         "pipeline); allowed: pipelines with a single transformer")
    if not hasattr(pipeline, "scheduler"):
        raise TypeError(f"enable_cache: pipeline {type(pipeline).__name__} has no scheduler to read the steps from")


def enable_cache(target: Any, policy: Any) -> Any:
    """Puts ``policy`` on ``target`` (see the module docstring for the targets and who drives the steps).

    Args:
        target: one of our transformers, a supported diffusers transformer, or a diffusers pipeline holding one.
        policy: a cache policy (``DeltaCache``, ``TeaCache``, the profiling recorder: ``bind``/``begin``/``step``/
            ``run``).

    Returns:
        ``policy`` (read its ``stats`` after a generation).

    Raises:
        TypeError: an unsupported target or an object that is not a policy.
        RuntimeError: the target already has a cache, or the policy already serves another target.
        ValueError: the policy does not fit the model (a cached group it lacks, a depth mismatch), or a two-stage
            pipeline. Nothing is changed when this is raised.
    """
    _check_policy(policy)
    transformer, is_pipeline = _transformer_of(target)
    _check_free(transformer, policy)
    if _is_native(transformer):
        attach_cache(transformer, policy)
        _ENABLED[transformer] = _Enabled(target, policy, lambda: detach_cache(transformer))
        return policy
    if getattr(transformer, "is_cache_enabled", False):
        raise RuntimeError(f"enable_cache: the {type(transformer).__name__} has a diffusers cache enabled: call "
                           "transformer.disable_cache() (diffusers' own method) first")
    if is_pipeline:
        _check_pipeline(target)
    adapter = DiffusersAdapter(transformer, diffusers_spec(transformer), policy)
    adapter.install()
    driver = None
    if is_pipeline:
        driver = PipelineDriver(target, transformer, policy)
        driver.install()

    def undo() -> None:
        if driver is not None:
            driver.remove()
        adapter.remove()

    _ENABLED[transformer] = _Enabled(target, policy, undo)
    return policy


def _check_free(transformer: nn.Module, policy: Any) -> None:
    enabled = _ENABLED.get(transformer)
    if enabled is not None or getattr(transformer, "block_cache", None) is not None:
        held = enabled.policy if enabled is not None else transformer.block_cache
        raise RuntimeError(f"enable_cache: the {type(transformer).__name__} already has a cache "
                           f"({type(held).__name__}): call disable_cache() first")
    for other, entry in _ENABLED.items():
        if entry.policy is policy:
            raise RuntimeError(f"enable_cache: this {type(policy).__name__} already serves a "
                               f"{type(other).__name__}: a policy keeps per-model state, create one per model")


def disable_cache(target: Any) -> Any | None:
    """Removes the cache from ``target``: afterwards it is exactly as before :func:`enable_cache`.

    Args:
        target: what :func:`enable_cache` was given (the pipeline, or the transformer).

    Returns:
        The removed policy, or None when ``target`` had no cache (a no-op).

    Raises:
        TypeError: an unsupported target.
        ValueError: the cache was enabled on the pipeline but ``target`` is its transformer, or the reverse.
    """
    transformer, _ = _transformer_of(target)
    enabled = _ENABLED.get(transformer)
    if enabled is None:
        policy = getattr(transformer, "block_cache", None)
        if policy is not None:  # attached with attach_cache() directly (the command lines)
            detach_cache(transformer)
        return policy
    if enabled.target is not target:
        raise ValueError(f"disable_cache: the cache was enabled on the {type(enabled.target).__name__}, not on this "
                         f"{type(target).__name__}: pass the object given to enable_cache()")
    enabled.undo()
    del _ENABLED[transformer]
    return enabled.policy


def enabled_policy(target: Any) -> Any | None:
    """The policy enabled on ``target`` (or on its transformer), or None."""
    transformer, _ = _transformer_of(target)
    enabled = _ENABLED.get(transformer)
    return enabled.policy if enabled is not None else getattr(transformer, "block_cache", None)
