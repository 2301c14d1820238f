"""Drives a cache policy's ``begin`` and ``step`` from an unchanged diffusers pipeline.

Our pipelines call ``cache.begin(num_steps, sigmas=...)`` once per generation and wrap every model call in
``cache.step(i, branch)``. A diffusers pipeline does neither, so :class:`PipelineDriver` derives both from what the
pipeline does anyway, with hooks on its transformer only:

* **generation**: every ``__call__`` of a diffusers pipeline runs ``scheduler.set_timesteps``, which stores a new
  ``scheduler.timesteps`` tensor. At each transformer call the driver compares the scheduler's current
  ``timesteps`` object with the one its generation began with; a new one starts a generation with
  ``policy.begin(len(timesteps), sigmas=scheduler.sigmas[:len(timesteps)])``. Watching the tensor rather than
  patching ``set_timesteps`` keeps working when the user swaps ``pipe.scheduler`` after :func:`enable_cache`
  (the usual way to set Wan's flow shift).
* **branch**: the pipelines wrap each call in ``transformer.cache_context("cond")`` / ``("uncond")``; the driver
  wraps that method to read the name (:data:`BRANCHES` maps it to our branch name; another name is used as it is, so
  distinct contexts never share state). A call outside any context is branch ``cond``.
* **step**: the ``step_index`` the pipeline gives ``cache_context`` (WanPipeline does), else the position of the
  call's timestep in ``scheduler.timesteps``, searched after the branch's previous step (each branch advances on its
  own, so a step without the uncond call, or an interrupted loop, still numbers correctly).
"""

from __future__ import annotations

import contextlib
import functools
import math
from typing import Any

import torch
from torch import nn

from profilingdit.seams import Seams

# diffusers cache_context name -> our guidance branch name.
BRANCHES = {"cond": "cond", "uncond": "uncond"}
DEFAULT_BRANCH = "cond"
_TIMESTEP_RTOL = 1e-3  # a timestep cast to bf16 still finds its step; neighbouring steps differ by far more


def _scalar(value: Any) -> float:
    """A timestep argument ([B], [B, L] or a number) as one float: its largest entry."""
    if isinstance(value, torch.Tensor):
        return float(value.detach().float().max())
    return float(value)


class PipelineDriver:
    """Calls ``policy.begin`` per generation and ``policy.step(i, branch)`` around each transformer call.

    Args:
        pipeline: the diffusers pipeline (its ``scheduler`` is read at every call).
        transformer: ``pipeline.transformer``.
        policy: the cache policy.
    """

    def __init__(self, pipeline: Any, transformer: nn.Module, policy) -> None:
        self.pipeline = pipeline
        self.transformer = transformer
        self.policy = policy
        self._context: tuple[str | None, dict] = (None, {})  # the active cache_context (name, kwargs)
        self._timesteps: torch.Tensor | None = None  # the schedule the current generation began with
        self._schedule: list[float] = []
        self._last_step: dict[str, int] = {}
        self._open: contextlib.AbstractContextManager | None = None
        self._seams = Seams()

    # ----------------------------------------------------------------------------------------------------------

    def install(self) -> None:
        """Adds the two forward hooks and the ``cache_context`` wrapper to the transformer."""
        original = self.transformer.cache_context  # the bound class method
        self._seams.swap(self.transformer, "cache_context", functools.partial(self._cache_context, original))
        self._seams.hook(self.transformer.register_forward_pre_hook(self._before, with_kwargs=True))
        self._seams.hook(self.transformer.register_forward_hook(self._after, always_call=True))

    def remove(self) -> None:
        """Removes the hooks and the wrapper (``cache_context`` is the class's method again)."""
        self._seams.undo()
        self._close()

    @contextlib.contextmanager
    def _cache_context(self, original, name: str, **kwargs):
        previous = self._context
        self._context = (name, kwargs)
        try:
            with original(name, **kwargs):
                yield
        finally:
            self._context = previous

    # ----------------------------------------------------------------------------------------------------------

    def _before(self, module: nn.Module, args: tuple, kwargs: dict):
        self._close()  # a previous call that never reached _after (cannot happen with always_call; be safe)
        scheduler = self.pipeline.scheduler
        timesteps = getattr(scheduler, "timesteps", None)
        if timesteps is None:
            raise RuntimeError(f"{type(self.pipeline).__name__}.scheduler ({type(scheduler).__name__}) has no "
                               "timesteps: the transformer was called before scheduler.set_timesteps()")
        if timesteps is not self._timesteps:
            self._begin(scheduler, timesteps)
        name, context_kwargs = self._context
        branch = DEFAULT_BRANCH if name is None else BRANCHES.get(name, name)
        index = self._step_index(branch, context_kwargs, args, kwargs)
        self._open = self.policy.step(index, branch)
        self._open.__enter__()

    def _after(self, module: nn.Module, args: tuple, output: Any):
        self._close()

    def _close(self) -> None:
        if self._open is not None:
            opened, self._open = self._open, None
            opened.__exit__(None, None, None)

    def _begin(self, scheduler: Any, timesteps: torch.Tensor) -> None:
        num_steps = len(timesteps)
        sigmas = getattr(scheduler, "sigmas", None)
        sigmas = [float(s) for s in sigmas[:num_steps]] if sigmas is not None and len(sigmas) >= num_steps else None
        self.policy.begin(num_steps, sigmas=sigmas)
        self._timesteps = timesteps
        self._schedule = [float(t) for t in timesteps]
        self._last_step = {}

    def _step_index(self, branch: str, context_kwargs: dict, args: tuple, kwargs: dict) -> int:
        """The pipeline's ``step_index``, else the call's timestep looked up in the schedule after the last step."""
        last = self._last_step.get(branch, -1)
        if context_kwargs.get("step_index") is not None:
            index = int(context_kwargs["step_index"])
        else:
            value = _scalar(kwargs["timestep"] if "timestep" in kwargs else args[1])
            index = next((i for i in range(last + 1, len(self._schedule))
                          if math.isclose(self._schedule[i], value, rel_tol=_TIMESTEP_RTOL, abs_tol=1e-6)), None)
            if index is None:
                raise RuntimeError(
                    f"transformer called with timestep {value:g} on branch '{branch}', which is not a step of the "
                    f"scheduler's timesteps after step {last}: each guidance branch must run in its own "
                    "transformer.cache_context(name) and each step's timestep must come from scheduler.timesteps")
        self._last_step[branch] = index
        return index
