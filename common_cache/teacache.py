"""TeaCache: skip the whole block stack while an input-side indicator says the output barely changes.

References: TeaCache (Liu et al., CVPR 2025; ali-vilab/TeaCache, TeaCache4Wan2.1 and TeaCache4HunyuanVideo) for the
rule, the published coefficients and the forced steps (../shared/reference/peers.md section 2). Own code.

The rule, per guidance branch and forward (one call of the model inside ``cache.step(i, branch)``):

1. the model hands its *indicator* to :func:`common_cache.run_blocks` as a named signal (Wan2.1: the timestep
   embedding ``e``, or its 6-way projection ``e0`` with ``--use_ret_steps``; HunyuanVideo: the modulated input of
   the first double-stream block, ``modulated_input``);
2. ``d = mean|x_i - x_prev| / mean|x_prev|`` (relative L1 against this branch's previous forward);
3. ``acc += poly(d)``, with ``poly`` the 4th-degree polynomial fitted offline (highest degree first, numpy
   ``poly1d`` order) that maps indicator change to model-output change;
4. while ``acc < threshold`` every stack of the forward is skipped and its stored residual (stack output minus
   stack input, recorded on the last computed forward of the branch) is added; otherwise the stacks run, the
   residuals are recorded and ``acc`` is reset to 0;
5. the first ``forced_first`` and the last ``forced_last`` steps always compute (and reset ``acc``).

A model with several stacks per forward (HunyuanVideo: ``double`` then ``single``) decides once, at its first stack,
and every stack keeps its own residual. Because what connects the stacks (a concatenation) is linear, the sum of the
per-stack residuals equals the residual of the whole stack, as in the official code.

The published coefficients were fitted on the real models (TeaCache: 70 T2V-CompBench prompts). On any other model
(e.g. the tiny Wan2.1-architecture model) the rule runs *uncalibrated* unless coefficients are fitted for it with
``scripts/fit_teacache.py``; :data:`UNCALIBRATED` (identity: ``poly(d) = d``) is then used.

Usage (the pipeline's side is the same as for :class:`common_cache.DeltaCache`)::

    cache = TeaCache(wan_teacache_config("t2v-1.3B", threshold=0.08))
    attach_cache(model, cache)
    cache.begin(num_steps)
    for i, t in enumerate(timesteps):
        with cache.step(i, "cond"):
            v_cond = model(...)
        ...
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from common_cache.policy import CachePolicy, StepContext
from common_cache.report import write_run_stats
from common_cache.runner import Signal, States, call_block
from profilingdit.parallel import all_reduce_mean

UNCALIBRATED = (1.0, 0.0)  # poly(d) = d: the raw relative L1, used when no fitted coefficients exist


@dataclass(frozen=True)
class TeaCachePreset:
    """Published settings of one model (peers.md section 2)."""

    coefficients: tuple[float, ...]
    indicator: str
    forced_first: int
    forced_last: int
    source: str


# The cache signals the models hand to run_blocks (``cache_signals={name: ...}``) that TeaCache reads, by name:
# one definition for our two model forwards, the diffusers adapter and the presets below.
WAN_TIME_EMBEDDING = "e"  # Wan2.1: the time embedding [B, C]
WAN_TIME_MODULATION = "e0"  # Wan2.1: its 6-way projection [B, 6, C] (TeaCache's ret-steps mode)
HUNYUAN_MODULATED_INPUT = "modulated_input"  # HunyuanVideo: the first double block's modulated image [B, N, C]

_WAN = "TeaCache4Wan2.1"
_WAN_RET = _WAN + " (ret steps)"
# Keys: "<model>" for the default indicator, "<model>+ret" for --use_ret_steps.
PUBLISHED: dict[str, TeaCachePreset] = {
    "hunyuanvideo-t2v": TeaCachePreset(
        (733.226126, -401.131952, 67.5869174, -3.14987800, 0.0961237896), HUNYUAN_MODULATED_INPUT, 1, 1,
        "TeaCache4HunyuanVideo"),
    "wan2.1-t2v-1.3B": TeaCachePreset(
        (2396.76752, -1311.10545, 201.331979, -8.29855975, 0.137887774), WAN_TIME_EMBEDDING, 1, 1, _WAN),
    "wan2.1-t2v-14B": TeaCachePreset(
        (-5784.54975374, 5449.50911966, -1811.16591783, 256.27178429, -13.02252404), WAN_TIME_EMBEDDING, 1, 1, _WAN),
    "wan2.1-i2v-480P": TeaCachePreset(
        (-302.331670, 223.948934, -52.5463970, 5.87348440, -0.201973289), WAN_TIME_EMBEDDING, 1, 1, _WAN),
    "wan2.1-i2v-720P": TeaCachePreset(
        (-114.36346466, 65.26524496, -18.82220707, 4.91518089, -0.23412683), WAN_TIME_EMBEDDING, 1, 1, _WAN),
    "wan2.1-t2v-1.3B+ret": TeaCachePreset(
        (-52186.2437, 9230.41404, -528.275948, 13.6987616, -0.0499875664), WAN_TIME_MODULATION, 5, 0, _WAN_RET),
    "wan2.1-t2v-14B+ret": TeaCachePreset(
        (-303318.725, 49053.7029, -2655.30556, 58.7365115, -0.315583525), WAN_TIME_MODULATION, 5, 0, _WAN_RET),
    "wan2.1-i2v-480P+ret": TeaCachePreset(
        (257151.496, -35422.9917, 1402.86849, -13.5890334, 0.132517977), WAN_TIME_MODULATION, 5, 0, _WAN_RET),
    "wan2.1-i2v-720P+ret": TeaCachePreset(
        (8107.05460, 2133.93892, -372.934672, 16.6203073, -0.0417769401), WAN_TIME_MODULATION, 5, 0, _WAN_RET),
}
WAN_TASK_MODELS = {"t2v-1.3B": "wan2.1-t2v-1.3B", "t2v-14B": "wan2.1-t2v-14B"}
# Image-to-video: one fit per checkpoint resolution (the 480P and 720P I2V-14B checkpoints).
WAN_IMAGE_TASK_MODELS = {"i2v-14B": {"480P": "wan2.1-i2v-480P", "720P": "wan2.1-i2v-720P"}}
COEFFICIENTS_FORMAT = "profilingdit-teacache-coefficients"


@dataclass(frozen=True)
class TeaCacheConfig:
    """What the rule needs.

    Attributes:
        threshold: skip while the accumulated rescaled distance stays below this (TeaCache ``rel_l1_thresh``).
        coefficients: polynomial mapping indicator distance to output distance, highest degree first.
        indicator: the name of the signal the model passes to ``run_blocks`` (``cache_signals={name: ...}``).
        forced_first: the first steps that always compute (>= 1: the first step has no residual to reuse).
        forced_last: the last steps that always compute.
        source: where the coefficients come from (shown in logs and statistics).
    """

    threshold: float
    coefficients: tuple[float, ...]
    indicator: str
    forced_first: int = 1
    forced_last: int = 1
    source: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) \
                or not math.isfinite(self.threshold) or self.threshold < 0:
            raise ValueError(f"teacache threshold={self.threshold!r} is not allowed: expected a finite number >= 0")
        coefficients = tuple(float(c) for c in self.coefficients)
        if not coefficients or not all(math.isfinite(c) for c in coefficients):
            raise ValueError(f"teacache coefficients={list(self.coefficients)!r} are not allowed: expected one or "
                             "more finite numbers, highest degree first")
        object.__setattr__(self, "coefficients", coefficients)
        if not isinstance(self.forced_first, int) or self.forced_first < 1:
            raise ValueError(f"teacache forced_first={self.forced_first!r} is not allowed: expected an integer >= 1 "
                             "(the first step has no residual to reuse)")
        if not isinstance(self.forced_last, int) or self.forced_last < 0:
            raise ValueError(f"teacache forced_last={self.forced_last!r} is not allowed: expected an integer >= 0")
        if not self.indicator:
            raise ValueError("teacache indicator must name the model's signal, e.g. 'e'")

    def rescale(self, distance: float) -> float:
        """``poly(distance)`` by Horner's rule, in float64 (numpy ``poly1d`` semantics)."""
        value = 0.0
        for c in self.coefficients:
            value = value * distance + c
        return value

    def is_forced(self, step: int, num_steps: int) -> bool:
        return step < self.forced_first or step >= num_steps - self.forced_last

    def tag(self) -> str:
        """A short stable name, e.g. ``tea-e-t0.08-f1l1``."""
        return f"tea-{self.indicator}-t{self.threshold:g}-f{self.forced_first}l{self.forced_last}"

    def to_dict(self) -> dict:
        return {"threshold": self.threshold, "coefficients": list(self.coefficients), "indicator": self.indicator,
                "forced_first": self.forced_first, "forced_last": self.forced_last, "source": self.source}


def preset_config(model: str, threshold: float) -> TeaCacheConfig:
    """The published settings of ``model`` (a key of :data:`PUBLISHED`) at ``threshold``.

    Raises:
        ValueError: an unknown model key.
    """
    if model not in PUBLISHED:
        raise ValueError(f"no published TeaCache coefficients for {model!r}: allowed {sorted(PUBLISHED)}")
    p = PUBLISHED[model]
    return TeaCacheConfig(threshold, p.coefficients, p.indicator, p.forced_first, p.forced_last,
                          f"published ({p.source}, {model})")


def wan_teacache_config(task: str, threshold: float, use_ret_steps: bool = False,
                        coefficients: Sequence[float] | None = None, source: str = "",
                        resolution: str | None = None) -> TeaCacheConfig:
    """TeaCache settings for a Wan2.1 text-to-video or image-to-video task.

    Args:
        task: the ``--task`` (``t2v-1.3B``, ``t2v-14B`` and ``i2v-14B`` have published coefficients).
        threshold: ``--teacache_thresh``.
        use_ret_steps: indicator ``e0`` with the first 5 steps forced and no forced last step; else ``e`` with the
            first and the last step forced (the official rules).
        coefficients: fitted coefficients (highest degree first) replacing the published ones; None uses the
            published ones, or :data:`UNCALIBRATED` for a task without any.
        source: where ``coefficients`` come from.
        resolution: image-to-video only: the checkpoint's resolution, ``480P`` or ``720P`` (TeaCache publishes one
            fit for each I2V-14B checkpoint).

    Raises:
        ValueError: an image-to-video task with published fits but no (or an unknown) ``resolution``.
    """
    indicator, first, last = (WAN_TIME_MODULATION, 5, 0) if use_ret_steps else (WAN_TIME_EMBEDDING, 1, 1)
    if coefficients is not None:
        return TeaCacheConfig(threshold, tuple(coefficients), indicator, first, last, source or "user")
    model = WAN_TASK_MODELS.get(task)
    if task in WAN_IMAGE_TASK_MODELS:
        fits = WAN_IMAGE_TASK_MODELS[task]
        if resolution not in fits:
            raise ValueError(f"TeaCache for task {task}: resolution={resolution!r} is not allowed: the published "
                             f"coefficients are per checkpoint, one of {sorted(fits)}")
        model = fits[resolution]
    if model is None:
        return TeaCacheConfig(threshold, UNCALIBRATED, indicator, first, last,
                              f"uncalibrated: no published coefficients for task {task}; fit them with "
                              "scripts/fit_teacache.py")
    return preset_config(model + ("+ret" if use_ret_steps else ""), threshold)


def hunyuan_teacache_config(threshold: float, coefficients: Sequence[float] | None = None,
                            source: str = "") -> TeaCacheConfig:
    """TeaCache settings for HunyuanVideo T2V (indicator ``modulated_input``, first and last step forced)."""
    if coefficients is None:
        return preset_config("hunyuanvideo-t2v", threshold)
    return TeaCacheConfig(threshold, tuple(coefficients), HUNYUAN_MODULATED_INPUT, 1, 1, source or "user")


def load_coefficients(path: str, indicator: str) -> tuple[float, ...]:
    """Reads the coefficients for ``indicator`` from a file written by ``scripts/fit_teacache.py``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a coefficients file, or no fit for ``indicator`` in it.
    """
    with open(path, encoding="utf-8") as handle:
        try:
            data = json.load(handle)
        except json.JSONDecodeError as err:
            raise ValueError(f"teacache coefficients file {path} is not JSON: {err}") from err
    if not isinstance(data, dict) or data.get("format") != COEFFICIENTS_FORMAT:
        raise ValueError(f"{path} is not a TeaCache coefficients file (format {COEFFICIENTS_FORMAT!r}); write one "
                         "with scripts/fit_teacache.py")
    fits = data.get("fits", {})
    if indicator not in fits:
        raise ValueError(f"{path} has no fit for indicator {indicator!r}: it has {sorted(fits)}")
    return tuple(float(c) for c in fits[indicator]["coefficients"])


def relative_l1(current: torch.Tensor, previous: torch.Tensor) -> float:
    """``mean|current - previous| / mean|previous|`` in fp32 (inf when ``previous`` is all zeros)."""
    if current.shape != previous.shape:
        raise RuntimeError(f"the TeaCache indicator changed shape from {tuple(previous.shape)} to "
                           f"{tuple(current.shape)} within a generation")
    previous = previous.float()
    means = torch.stack([previous.abs().mean(), (current.float() - previous).abs().mean()])
    scale, change = all_reduce_mean(means).tolist()  # under sequence parallelism: over every rank's shard
    return change / scale if scale > 0 else math.inf


@dataclass
class StepRecord:
    """One forward's decision (kept per branch in :attr:`TeaCache.history`)."""

    step: int
    distance: float | None  # raw relative L1 (None on the first step)
    accumulated: float  # after this forward (0 after a compute)
    computed: bool
    forced: bool


@dataclass
class _BranchState:
    previous: torch.Tensor | None = None
    accumulated: float = 0.0
    last_step: int = -1
    residuals: dict[str, tuple[torch.Tensor, ...]] = field(default_factory=dict)
    out_dtypes: dict[str, tuple[torch.dtype, ...]] = field(default_factory=dict)


@dataclass
class _Context(StepContext):
    signals: dict[str, Signal] = field(default_factory=dict)
    compute: bool | None = None  # decided at the forward's first stack
    groups_done: set[str] = field(default_factory=set)


class TeaCache(CachePolicy):
    """The TeaCache policy behind :func:`common_cache.run_blocks` (same pipeline API as ``DeltaCache``).

    The pipeline protocol (``bind``, ``begin``, ``step``) comes from :class:`common_cache.policy.CachePolicy`:
    ``bind`` remembers the model's stream groups, and ``begin`` clears every residual, accumulator, indicator, the
    history and the statistics.

    Args:
        config: threshold, coefficients, indicator and forced steps.
    """

    context_type = _Context

    def __init__(self, config: TeaCacheConfig) -> None:
        self.config = config
        super().__init__()
        self.history: dict[str, list[StepRecord]] = {}
        self._states: dict[str, _BranchState] = {}  # branch -> indicator, accumulator, residuals
        self._context: _Context | None = None

    # ----------------------------------------------------------------------------------------------------------
    # Hooks of bind and begin.

    def _check_model(self, model_depths: Mapping[str, int]) -> None:
        """Raises ValueError when the model exposes no stream group."""
        if not model_depths:
            raise ValueError("the model exposes no stream groups: stream_group_depths() returned nothing")

    def _prepare(self, num_steps: int) -> None:
        """Checks ``num_steps`` and clears the history (``begin`` then clears the branch states and statistics).

        Raises:
            ValueError: ``num_steps`` is not an integer >= 1.
        """
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"num_steps={num_steps!r} is not allowed: expected an integer >= 1")
        self.history = {}

    # ----------------------------------------------------------------------------------------------------------
    # Called by run_blocks.

    def receive_signals(self, group: str, signals: dict[str, Signal]) -> None:
        """Keeps the forward's signals until the decision (see :class:`common_cache.runner.SignalReceiver`)."""
        if self._context is not None:
            self._context.signals.update(signals)

    def run(self, group: str, blocks: Sequence[Callable], states: States, kwargs: dict) -> States:
        """Runs or skips one block stack for the current step and branch."""
        start = time.perf_counter()
        context = self._require_context(group, blocks)
        state = self._states.setdefault(context.branch, _BranchState())
        if context.compute is None:
            context.compute = self._decide(context, state)
        context.groups_done.add(group)
        single = not isinstance(states, tuple)
        hs = (states,) if single else tuple(states)
        block_seconds = 0.0
        if context.compute:
            block_start = time.perf_counter()
            out = hs
            for block in blocks:
                result = call_block(block, out[0] if single else out, kwargs)
                out = (result,) if single else tuple(result)
            block_seconds = time.perf_counter() - block_start
            self._record(state, group, hs, out)
            self.stats.count(group, context.step, len(blocks), 0)
        else:
            out = self._reuse(state, group, hs, context)
            self.stats.count(group, context.step, 0, len(blocks))
        self._add_stack_time(start, block_seconds)
        return out[0] if single else out

    # ----------------------------------------------------------------------------------------------------------

    def _require_context(self, group: str, blocks: Sequence[Callable]) -> _Context:
        context = super()._require_context(group, blocks)
        if group in context.groups_done:
            raise RuntimeError(f"stream group '{group}' ran twice in one forward of step {context.step}, branch "
                               f"'{context.branch}': wrap every model call in its own cache.step(i, branch)")
        return context

    def _indicator(self, context: _Context) -> torch.Tensor:
        name = self.config.indicator
        if name not in context.signals:
            raise RuntimeError(
                f"TeaCache needs the indicator '{name}', but the model handed run_blocks the signals "
                f"{sorted(context.signals)}: the forward must pass cache_signals={{'{name}': ...}} to its first "
                "run_blocks call")
        value = context.signals[name]
        value = value() if callable(value) else value
        return value.detach()

    def _decide(self, context: _Context, state: _BranchState) -> bool:
        """The accumulated rescaled relative-L1 rule; updates the branch's indicator and accumulator."""
        self._check_order(f"branch '{context.branch}'", context.step, state.last_step)
        state.last_step = context.step
        current = self._indicator(context)
        forced = self.config.is_forced(context.step, self.stats.num_steps)
        distance = None if state.previous is None else relative_l1(current, state.previous)
        if forced or distance is None or not state.residuals:
            compute = True
        else:
            state.accumulated += self.config.rescale(distance)
            compute = not state.accumulated < self.config.threshold
        if compute:
            state.accumulated = 0.0
        state.previous = current
        self.history.setdefault(context.branch, []).append(
            StepRecord(context.step, distance, state.accumulated, compute, forced))
        return compute

    def _record(self, state: _BranchState, group: str, inputs: tuple, outputs: tuple) -> None:
        state.residuals[group] = tuple(o - i for o, i in zip(outputs, inputs))
        state.out_dtypes[group] = tuple(o.dtype for o in outputs)
        self.stats.set_buffer_bytes(sum(r.numel() * r.element_size() for s in self._states.values()
                                        for rs in s.residuals.values() for r in rs))

    def _reuse(self, state: _BranchState, group: str, inputs: tuple, context: _Context) -> tuple:
        residuals = state.residuals.get(group)
        if residuals is None or any(r.shape != h.shape for r, h in zip(residuals, inputs)):
            have = None if residuals is None else [tuple(r.shape) for r in residuals]
            raise RuntimeError(
                f"no usable residual for stream group '{group}' of branch '{context.branch}' at step {context.step} "
                f"(stored {have}, input {[tuple(h.shape) for h in inputs]}): the input shape changed within a "
                "generation, or this group did not run on the branch's last computed step")
        out = []
        for h, r, dtype in zip(inputs, residuals, state.out_dtypes[group]):
            summed = h + r  # out of place: the caller may still hold the input
            out.append(summed if summed.dtype == dtype else summed.to(dtype))
        return tuple(out)

    # ----------------------------------------------------------------------------------------------------------

    def computed_steps(self, branch: str) -> list[int]:
        """Steps on which ``branch`` ran its blocks in the last generation."""
        return [r.step for r in self.history.get(branch, []) if r.computed]

    def to_dict(self) -> dict:
        """Settings, statistics and the per-branch decisions of the last generation (for ``--cache_stats``)."""
        return {"policy": "teacache", "tag": self.config.tag(), "teacache": self.config.to_dict(),
                **self.stats.to_dict(),
                "computed_steps": {b: self.computed_steps(b) for b in self.history},
                "distances": {b: [r.distance for r in records] for b, records in self.history.items()}}


def log_teacache_summary(logger: logging.Logger, cache: TeaCache, report, stats_path: str | None) -> None:
    """Logs block calls, computed steps per branch and the measured speedup; writes the statistics JSON if asked.

    Args:
        logger: where to log.
        cache: the TeaCache of the run.
        report: the run's :class:`profilingdit.timing.GenerationReport`.
        stats_path: a JSON path for :meth:`TeaCache.to_dict` plus the timings, or None.
    """
    logger.info("TeaCache %s, coefficients: %s", cache.config.tag(), cache.config.source)
    for line in cache.stats.summary().splitlines():
        logger.info(line)
    for branch in cache.history:
        logger.info("TeaCache branch %s computed steps %s", branch, cache.computed_steps(branch))
    measured = report.measured_speedup()
    logger.info("speedup of the denoising loop: ideal %.3fx, measured %s (full-step time x steps / loop time)",
                cache.stats.ideal_speedup, f"{measured:.3f}x" if measured else "n/a")
    if stats_path:
        write_run_stats(stats_path, report, {"policy": "teacache", **cache.to_dict(), "measured_speedup": measured})
