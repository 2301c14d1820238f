"""Peer cache methods for the benchmark runner: diffusers' ``WanTransformer3DModel`` in our own sampling loop.

The harness loads diffusers' Wan transformer with the SAME weights as our DiT (renamed by
``wan.utils.diffusers_keys``) and runs it in a copy of ``WanT2V.generate``'s loop: the same T5 embeddings (zero-padded
to ``text_len`` as our model pads them), the same initial noise, the same UniPC/DPM++ scheduler with the same shift
and steps, classifier-free guidance as two forwards per step (cond, then uncond) and the same VAE decode. Only the
transformer implementation and the cache attached to it differ, so every peer is compared with the harness's own
full run (``dfull``), and ``dfull`` with our ``full`` (the conversion check).

Modes (``--modes`` items of ``scripts/bench/runner.py``; the mode's name replaces ``:`` with ``-``):

* ``dfull``: no cache (the reference of every peer mode).
* ``fbc:<T>``: diffusers ``FirstBlockCacheConfig(threshold=T)``.
* ``mag:<T>``: diffusers ``MagCacheConfig(threshold=T, num_inference_steps=<steps>, mag_ratios=...)``, other fields
  at diffusers' defaults (``max_skip_steps`` 3, ``retention_ratio`` 0.2). The ratios are calibrated with
  ``calibrate=True`` on the profiling prompts (the tiny model's training-split captions that
  ``scripts/profile_wan.py`` uses, never the evaluation prompts) and cached in ``<out_dir>/magcache_ratios.json``.
  diffusers takes one ratio curve for both guidance branches: we use the mean of the cond and uncond curves over
  the calibration prompts (both are kept in the file).
* ``taylor:<N>`` / ``taylorlite:<N>``: diffusers ``TaylorSeerCacheConfig(cache_interval=N, use_lite_mode=...)``,
  full (forecasts module outputs inside every block) and lite (forecasts ``proj_out``, skips the blocks). Defaults
  kept (order 1, ``disable_cache_before_step`` 3) except two fields. ``taylor_factors_dtype``: float32 instead of
  bfloat16, because this harness runs fp32 (on a CPU bf16 would add a rounding error that is not the method's, and
  bf16 arithmetic is slow there). ``cache_identifiers`` (full mode only): diffusers' default patterns
  (``^blocks.*attn``, matched with ``re.fullmatch``) match no module of the Wan transformer, whose attention
  modules are ``attn1``/``attn2``, so with the defaults nothing would be forecast; we name every block's ``attn1``,
  ``attn2`` and ``ffn``, the attention and MLP outputs that the TaylorSeer paper forecasts.
* ``pab``: diffusers ``PyramidAttentionBroadcastConfig`` with the PAB paper's pyramid: self-attention recomputed
  every 2nd call, cross-attention every 6th (the broadcast ranges the paper uses; Wan has no separate temporal
  attention), both only inside diffusers' default timestep window (100, 800) and always outside it;
  ``current_timestep_callback`` reads the loop's current timestep. diffusers keeps one
  PAB state per attention module, not per cache context, so with two forwards per step the uncond forward would
  reuse the cond forward's attention; the harness gives every hook one state per guidance branch instead.
* ``dbcache:<T>`` / ``dbcache-ts:<T>``: cache-dit 1.5.3 DBCache ``DBCacheConfig(Fn_compute_blocks=1,
  Bn_compute_blocks=0, residual_diff_threshold=T, num_inference_steps=<steps>, enable_separate_cfg=True,
  cfg_compute_first=False)`` (other fields at cache-dit's defaults: 8 warm-up steps, no cap on cached steps),
  without and with ``TaylorSeerCalibratorConfig(taylorseer_order=1)``. It is attached with cache-dit's
  transformer-only path, ``cache_dit.enable_cache(transformer, ...)`` (cache-dit wraps the transformer in its own
  placeholder pipeline with a persistent cache context), because our loop, not a diffusers pipeline, drives the
  transformer. cache-dit does not read diffusers' cache contexts: it counts transformer calls and takes even calls
  as the conditional branch and odd calls as the unconditional one (``cfg_compute_first=False``), which is our
  order, and keeps separate buffers per branch. ``num_inference_steps`` makes it start a new context after the last
  step; the harness also attaches a fresh cache for every generation and detaches it afterwards
  (``cache_dit.disable_cache``), so no state crosses generations.

Branches: every forward runs inside ``transformer.cache_context("cond")`` or ``("uncond")``, so the diffusers hooks
keep separate state per guidance branch. Block calls: the blocks' (and their attention modules') own ``forward``
is wrapped by a counter before any cache attaches, so a call that a cache skips or forecasts is not counted; the
counting costs one Python call per module call. CPU time: see :class:`ForwardClock` (the runner clocks our DiT the
same way).
"""

from __future__ import annotations

import ast
import contextlib
import functools
import io
import json
import logging
import math
import os
import time
import types
from dataclasses import dataclass, field

import numpy as np
import torch

PEER_KINDS = ("dfull", "fbc", "mag", "taylor", "taylorlite", "pab", "dbcache", "dbcache-ts")
THRESHOLD_KINDS = ("fbc", "mag", "dbcache", "dbcache-ts")  # <kind>:<threshold >= 0>
INTERVAL_KINDS = ("taylor", "taylorlite")  # <kind>:<integer >= 1>
REFERENCE = "dfull"
TAYLOR_IDENTIFIERS = (r"blocks\.\d+\.attn1", r"blocks\.\d+\.attn2", r"blocks\.\d+\.ffn")  # full TaylorSeer
PAB_SELF_RANGE, PAB_CROSS_RANGE = 2, 6
PAB_TIMESTEP_WINDOW = (100, 800)
MAG_CALIBRATION_PROMPTS = 2
MAG_RATIOS_FILE = "magcache_ratios.json"
MAG_FORMAT = "profilingdit-magcache-ratios"
_MAG_LOG_PREFIX = "MagCache Calibration Results: "
ALLOWED_TEXT = "dfull, fbc:<T>, mag:<T>, taylor:<N>, taylorlite:<N>, pab, dbcache:<T>, dbcache-ts:<T>"


# ------------------------------------------------------------------------------------------------- mode syntax


def parse_peer_mode(item: str) -> tuple[str, str, float | None] | None:
    """``"fbc:0.1"`` -> ``("fbc-0.1", "fbc", 0.1)``; None when ``item`` is not a peer mode at all.

    Raises:
        ValueError: a peer mode with a missing, non-numeric or out-of-range parameter (names the mode).
    """
    kind, sep, value = item.partition(":")
    if kind not in PEER_KINDS:
        return None
    if kind in ("dfull", "pab"):
        if sep:
            raise ValueError(f"--modes: {item!r} is not allowed: {kind} takes no parameter")
        return kind, kind, None
    if not sep or not value:
        what = "threshold" if kind in THRESHOLD_KINDS else "interval"
        article = "a" if kind in THRESHOLD_KINDS else "an"
        raise ValueError(f"--modes: {item!r} needs {article} {what}: {kind}:<{what}> (allowed: {ALLOWED_TEXT})")
    if kind in THRESHOLD_KINDS:
        number = _number(item, value)
        if not number >= 0 or math.isinf(number):
            raise ValueError(f"--modes: {item!r} is not allowed: the threshold must be a finite number >= 0")
        return f"{kind}-{number:g}", kind, number
    number = _number(item, value)
    if not math.isfinite(number) or number != int(number) or number < 1:
        raise ValueError(f"--modes: {item!r} is not allowed: the interval must be an integer >= 1")
    return f"{kind}-{int(number)}", kind, int(number)


def _number(item: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"--modes: {item!r}: {text!r} is not a number") from None


def is_peer(kind: str) -> bool:
    """Whether a mode kind runs on the diffusers harness."""
    return kind in PEER_KINDS


# ------------------------------------------------------------------------------------------------- counting


class CallCounter:
    """Counts the calls of every block's, attention module's and feed-forward's own ``forward`` (the computed ones).

    Installed before any cache: diffusers' hooks and cache-dit wrap ``module.forward`` as they find it, so a call
    they skip or forecast never reaches the counter.
    """

    def __init__(self, transformer: torch.nn.Module) -> None:
        self.blocks = self.attention = self.ffn = 0
        self.num_blocks = len(transformer.blocks)
        for block in transformer.blocks:
            self._wrap(block, "blocks")
            self._wrap(block.attn1, "attention")
            self._wrap(block.attn2, "attention")
            self._wrap(block.ffn, "ffn")

    def _wrap(self, module: torch.nn.Module, counter: str) -> None:
        original = module.forward

        @functools.wraps(original)
        def counted(*args, **kwargs):
            setattr(self, counter, getattr(self, counter) + 1)
            return original(*args, **kwargs)

        module.forward = counted

    def reset(self) -> None:
        self.blocks = self.attention = self.ffn = 0


@dataclass
class Calls:
    """Computed module calls of one generation; a full one computes ``total_blocks`` block calls, each with two
    attention calls and one feed-forward call."""

    blocks: int
    attention: int
    ffn: int
    total_blocks: int

    def record(self) -> dict:
        """The run-record fields: block calls as the runner reports them for its own modes (``ideal_speedup`` =
        total / computed), plus the attention and feed-forward calls (PAB and full TaylorSeer skip inside blocks)."""
        return {"computed_calls": self.blocks, "skipped_calls": self.total_blocks - self.blocks,
                "ideal_speedup": _ratio(self.total_blocks, self.blocks),
                "computed_attention_calls": self.attention, "computed_ffn_calls": self.ffn,
                "attention_ideal_speedup": _ratio(2 * self.total_blocks, self.attention),
                "ffn_ideal_speedup": _ratio(self.total_blocks, self.ffn)}


def _ratio(total: int, computed: int) -> float:
    return total / computed if computed else math.inf


class ForwardClock:
    """Process CPU seconds spent inside a module's ``forward`` calls (the cache's own decisions included).

    On a shared machine other processes stretch wall time, but hardly the CPU time that a single-threaded run
    (``OMP_NUM_THREADS=1``) spends on its own work, so the ratio of these times is a load-robust companion of the
    measured (wall) speedup. The wrapper costs one Python call and two clock reads per forward.
    """

    def __init__(self, module: torch.nn.Module) -> None:
        self.seconds = 0.0
        original = module.forward

        def clocked(_module, *args, **kwargs):
            start = time.process_time()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds += time.process_time() - start

        # A bound method, not a plain function: cache-dit's disable_cache re-binds the forward it found with
        # ``__get__``, which leaves a bound method as it is but would pass the module twice to a plain function.
        module.forward = types.MethodType(clocked, module)

    def reset(self) -> None:
        self.seconds = 0.0


# ------------------------------------------------------------------------------------------------- harness


def diffusers_transformer(model: torch.nn.Module, device: torch.device):
    """A diffusers ``WanTransformer3DModel`` with the weights of our ``WanModel`` (eval mode, no grad)."""
    from diffusers import WanTransformer3DModel
    from wan.utils.diffusers_keys import diffusers_config, official_to_diffusers

    fields = ("dim", "num_heads", "ffn_dim", "num_layers", "in_dim", "out_dim", "freq_dim", "text_dim", "patch_size",
              "qk_norm", "cross_attn_norm", "eps")
    config = diffusers_config(**{name: getattr(model, name) for name in fields})
    transformer = WanTransformer3DModel(**config).eval().requires_grad_(False)
    transformer.load_state_dict(official_to_diffusers(model.state_dict()), strict=True)
    return transformer.to(device)


@dataclass
class PeerTimed:
    """What the repeats of one peer (mode, prompt, seed) produced (the fields
    ``profilingdit.bench.runner.run_record`` reads)."""

    video: torch.Tensor
    frames: np.ndarray
    peak: int | None
    calls: Calls
    latencies: list[float] = field(default_factory=list)
    totals: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)  # CPU seconds inside the transformer's forwards
    cache: object = None  # the runner's own cache statistics: none for peers


class _BranchStates:
    """One PAB state per guidance branch for every PAB hook (diffusers keeps a single state per module)."""

    def __init__(self, transformer: torch.nn.Module) -> None:
        from diffusers.hooks.pyramid_attention_broadcast import (
            _PYRAMID_ATTENTION_BROADCAST_HOOK,
            PyramidAttentionBroadcastState,
        )

        self.hooks = [module._diffusers_hook.get_hook(_PYRAMID_ATTENTION_BROADCAST_HOOK)
                      for module in transformer.modules() if hasattr(module, "_diffusers_hook")]
        self.hooks = [hook for hook in self.hooks if hook is not None]
        self.states = {branch: [PyramidAttentionBroadcastState() for _ in self.hooks] for branch in ("cond", "uncond")}

    def select(self, branch: str) -> None:
        for hook, state in zip(self.hooks, self.states[branch]):
            hook.state = state


class DiffusersHarness:
    """Runs peer modes: our pipeline's T5, noise, scheduler and VAE around diffusers' Wan transformer.

    Args:
        pipeline: the loaded ``WanT2V`` (its DiT gives the weights; it is not modified).
        kinds: the peer mode kinds of the run (``dbcache*`` imports cache-dit up front, so that every run of the
            process, ``dfull`` included, sees the same library state).
        out_dir: where the MagCache ratios file is kept.
        task: the Wan task (MagCache calibration prompts exist for ``t2v-tiny``).
    """

    def __init__(self, pipeline, kinds, out_dir: str, task: str) -> None:
        self.pipeline = pipeline
        self.device = pipeline.device
        self.transformer = diffusers_transformer(pipeline.model, self.device)
        self.counter = CallCounter(self.transformer)
        self.clock = ForwardClock(self.transformer)
        self.text_len = pipeline.model.text_len
        self.out_dir, self.task = out_dir, task
        self.timestep: float = 0.0  # the loop's current timestep (PAB's callback)
        self.branch_states: _BranchStates | None = None
        self.mag_ratios: list[float] | None = None
        if any(kind.startswith("dbcache") for kind in kinds):
            _import_cache_dit()

    # --------------------------------------------------------------------------------------------- caches

    def attach(self, kind: str, value, steps: int) -> None:
        """Attaches a fresh cache of ``kind`` (with its threshold / interval) to the transformer."""
        from diffusers import (
            FirstBlockCacheConfig,
            MagCacheConfig,
            PyramidAttentionBroadcastConfig,
            TaylorSeerCacheConfig,
        )

        if kind == "fbc":
            self.transformer.enable_cache(FirstBlockCacheConfig(threshold=value))
        elif kind == "mag":
            if self.mag_ratios is None:
                raise RuntimeError("mode mag: no MagCache ratios yet: call calibrate_mag() first")
            self.transformer.enable_cache(MagCacheConfig(threshold=value, num_inference_steps=steps,
                                                         mag_ratios=list(self.mag_ratios)))
        elif kind in INTERVAL_KINDS:
            lite = kind == "taylorlite"
            self.transformer.enable_cache(TaylorSeerCacheConfig(
                cache_interval=value, use_lite_mode=lite, taylor_factors_dtype=torch.float32,
                cache_identifiers=None if lite else list(TAYLOR_IDENTIFIERS)))
        elif kind == "pab":
            self.transformer.enable_cache(PyramidAttentionBroadcastConfig(
                spatial_attention_block_skip_range=PAB_SELF_RANGE, cross_attention_block_skip_range=PAB_CROSS_RANGE,
                spatial_attention_timestep_skip_range=PAB_TIMESTEP_WINDOW,
                cross_attention_timestep_skip_range=PAB_TIMESTEP_WINDOW,
                current_timestep_callback=lambda: self.timestep))
            self.branch_states = _BranchStates(self.transformer)
        elif kind.startswith("dbcache"):
            cache_dit = _import_cache_dit()
            config = cache_dit.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=value,
                                             num_inference_steps=steps, enable_separate_cfg=True,
                                             cfg_compute_first=False)
            calibrator = cache_dit.TaylorSeerCalibratorConfig(taylorseer_order=1) if kind == "dbcache-ts" else None
            cache_dit.enable_cache(self.transformer, cache_config=config, calibrator_config=calibrator)
        elif kind != "dfull":
            raise ValueError(f"mode kind {kind!r} is not allowed: expected one of {list(PEER_KINDS)}")

    def detach(self, kind: str) -> None:
        """Removes the cache of ``kind`` (and all its state)."""
        if kind.startswith("dbcache"):
            _import_cache_dit().disable_cache(self.transformer)
        elif kind != "dfull":
            self.transformer.disable_cache()
        self.branch_states = None

    # --------------------------------------------------------------------------------------------- sampling

    def _pad_text(self, context: list[torch.Tensor]) -> torch.Tensor:
        """Our trimmed T5 output ``[L, C]`` -> ``[1, text_len, C]`` zero-padded, as our model pads it."""
        text = context[0]
        return torch.cat([text, text.new_zeros(self.text_len - text.shape[0], text.shape[1])])[None]

    def _forward(self, latent, timestep, text, branch: str) -> torch.Tensor:
        if self.branch_states is not None:
            self.branch_states.select(branch)
        with self.transformer.cache_context(branch):
            return self.transformer(latent, timestep, text, return_dict=False)[0]  # [1, C, t, h, w]

    def sample(self, prompt: str, seed: int, settings: dict):
        """``WanT2V.generate`` with the diffusers transformer: (video [3, F, H, W] in [-1, 1], report).

        ``settings`` are the keyword arguments of ``WanT2V.generate``
        (``profilingdit.bench.runner.generation_settings``).
        """
        from profilingdit.timing import DenoiseTimer, GenerationReport

        pipeline = self.pipeline
        start = time.perf_counter()
        report = GenerationReport(seeds=[seed])
        shape = pipeline.latent_shape(settings["size"], settings["frame_num"])
        context, context_null = pipeline._encode_prompts(prompt, settings.get("n_prompt") or pipeline.sample_neg_prompt,
                                                         False)
        text, text_null = self._pad_text(context), self._pad_text(context_null)  # [1, text_len, text_dim]
        generator = torch.Generator(device=self.device).manual_seed(seed)
        latent = torch.randn(*shape, dtype=torch.float32, device=self.device, generator=generator)[None]
        scheduler, timesteps = pipeline._scheduler(settings["sample_solver"], settings["sampling_steps"],
                                                   settings["shift"])
        guide_scale = settings["guide_scale"]
        timer = DenoiseTimer(report, None, len(timesteps), self.device, False)
        with pipeline._autocast(), torch.no_grad():
            for index, t in enumerate(timesteps):
                timestep = torch.stack([t])
                self.timestep = float(t)
                cond = self._forward(latent, timestep, text, "cond")
                uncond = self._forward(latent, timestep, text_null, "uncond")
                noise_pred = uncond + guide_scale * (cond - uncond)  # [1, C, t, h, w]
                latent = scheduler.step(noise_pred, t, latent, return_dict=False, generator=generator)[0]
                timer.step_done(index)
        timer.close()
        decode_start = time.perf_counter()
        video = pipeline.vae.decode([latent[0].float()])[0]
        report.decode_seconds = time.perf_counter() - decode_start
        report.total_seconds = time.perf_counter() - start
        return video, report

    def generate(self, kind: str, value, prompt: str, seed: int, settings: dict):
        """One generation with a fresh cache: (video, uint8 frames [F, H, W, 3], report, calls, peak memory)."""
        from wan.utils.utils import video_to_frames

        steps = settings["sampling_steps"]
        if kind == "mag":
            self.calibrate_mag(settings)  # once (or read from the ratios file), before anything is timed
        self.attach(kind, value, steps)
        self.counter.reset()
        self.clock.reset()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        try:
            video, report = self.sample(prompt, seed, settings)
        finally:
            self.detach(kind)
        peak = torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else None
        calls = Calls(self.counter.blocks, self.counter.attention, self.counter.ffn,
                      2 * steps * self.counter.num_blocks)  # two forwards per step
        return video, video_to_frames(video[None]), report, calls, peak

    def timed_generate(self, kind: str, value, prompt: str, seed: int, settings: dict, repeats: int) -> PeerTimed:
        """``repeats`` generations (median latency kept by the runner); checks the frames are identical."""
        result = None
        for _ in range(repeats):
            video, frames, report, calls, peak = self.generate(kind, value, prompt, seed, settings)
            if result is None:
                result = PeerTimed(video, frames, peak, calls)
            elif not np.array_equal(frames, result.frames):
                raise RuntimeError(f"a repeat of {prompt!r} (seed {seed}, {kind}) gave different frames: "
                                   "nondeterministic run")
            result.latencies.append(report.denoise_seconds)
            result.totals.append(report.total_seconds)
            result.cpu.append(self.clock.seconds)
        return result

    # --------------------------------------------------------------------------------------------- MagCache

    def calibrate_mag(self, settings: dict, prompts: list[str] | None = None) -> list[float]:
        """MagCache ratios for these settings: from ``<out_dir>/magcache_ratios.json`` or calibrated now.

        Calibration runs ``MagCacheConfig(calibrate=True)`` (nothing skipped) on ``prompts`` (default: the first
        ``MAG_CALIBRATION_PROMPTS`` profiling prompts, seed i for prompt i) and averages diffusers' per-step ratios
        over both guidance branches and the prompts.

        Raises:
            ValueError: no calibration prompts exist for the task.
        """
        if self.mag_ratios is not None:
            return self.mag_ratios
        prompts = prompts or calibration_prompts(self.task)
        key = {"steps": settings["sampling_steps"], "shift": settings["shift"], "solver": settings["sample_solver"],
               "guide_scale": settings["guide_scale"], "size": list(settings["size"]),
               "frame_num": settings["frame_num"], "prompts": prompts, "seeds": list(range(len(prompts)))}
        path = os.path.join(self.out_dir, MAG_RATIOS_FILE)
        cached = _read_json(path)
        if cached and cached.get("format") == MAG_FORMAT and cached.get("key") == key:
            self.mag_ratios = cached["ratios"]
            return self.mag_ratios
        branches = {"cond": [], "uncond": []}
        for seed, prompt in enumerate(prompts):
            cond, uncond = self._calibration_run(prompt, seed, settings)
            branches["cond"].append(cond)
            branches["uncond"].append(uncond)
        curves = np.array(branches["cond"] + branches["uncond"])  # [2 x prompts, steps]
        self.mag_ratios = [float(r) for r in curves.mean(axis=0)]
        data = {"format": MAG_FORMAT, "key": key, "ratios": self.mag_ratios, "branches": branches,
                "note": "diffusers MagCacheConfig(calibrate=True) per branch and prompt; ratios = their mean"}
        os.makedirs(self.out_dir, exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2)
        os.replace(tmp, path)
        return self.mag_ratios

    def _calibration_run(self, prompt: str, seed: int, settings: dict) -> tuple[list[float], list[float]]:
        """One ``calibrate=True`` generation: the (cond, uncond) ratio curves diffusers reports at the last step."""
        from diffusers import MagCacheConfig

        steps = settings["sampling_steps"]
        logger = logging.getLogger("diffusers.hooks.mag_cache")
        records: list[str] = []
        handler = _ListHandler(records)
        level, propagate = logger.level, logger.propagate
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
        self.transformer.enable_cache(MagCacheConfig(calibrate=True, num_inference_steps=steps))
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # diffusers also prints the ratios
                self.sample(prompt, seed, settings)
        finally:
            self.transformer.disable_cache()
            logger.removeHandler(handler)
            logger.setLevel(level)
            logger.propagate = propagate
        curves = [ast.literal_eval(text[len(_MAG_LOG_PREFIX):]) for text in records
                  if text.startswith(_MAG_LOG_PREFIX)]
        if len(curves) != 2 or any(len(curve) != steps for curve in curves):
            raise RuntimeError(f"MagCache calibration on {prompt!r} reported {len(curves)} ratio curves of lengths "
                               f"{[len(c) for c in curves]}: expected 2 (cond, uncond) of {steps} steps")
        return curves[0], curves[1]  # cond finishes its last step first


class _ListHandler(logging.Handler):
    def __init__(self, records: list[str]) -> None:
        super().__init__(logging.INFO)
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record.getMessage())


def calibration_prompts(task: str, count: int = MAG_CALIBRATION_PROMPTS) -> list[str]:
    """The profiler's prompts (training-split captions of the tiny model), never the evaluation ones.

    Raises:
        ValueError: the task has no built-in profiling prompts.
    """
    if task != "t2v-tiny":
        raise ValueError(f"mode mag on --task {task}: MagCache calibration prompts are built in only for t2v-tiny "
                         "(scripts/profile_wan.py's training captions)")
    from wan.tiny.data import profiling_prompts

    return profiling_prompts(count)


def _read_json(path: str) -> dict | None:
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _import_cache_dit():
    """cache-dit, imported quietly (its INFO logging is per call; ``CACHE_DIT_LOG_LEVEL`` overrides)."""
    os.environ.setdefault("CACHE_DIT_LOG_LEVEL", "error")
    import cache_dit

    return cache_dit


# ------------------------------------------------------------------------------------------------- records


def peer_fields(kind: str, value, calls: Calls, mag_ratios: list[float] | None) -> dict:
    """Extra run-record fields of a peer run: its harness, reference, block/attention calls and settings."""
    row = {"harness": "diffusers", "reference": REFERENCE, **calls.record(), "tag": peer_tag(kind, value)}
    if kind == "mag":
        row["mag_ratios_file"] = MAG_RATIOS_FILE
        row["mag_ratios"] = mag_ratios
    return row


def peer_tag(kind: str, value) -> str:
    """A short description of the cache settings of a peer mode."""
    if kind == "pab":
        return f"PAB self {PAB_SELF_RANGE} cross {PAB_CROSS_RANGE} in t{PAB_TIMESTEP_WINDOW}, per-branch state"
    return {"dfull": "diffusers WanTransformer3DModel, no cache",
            "fbc": f"FirstBlockCache threshold {value}",
            "mag": f"MagCache threshold {value}, K 3, retention 0.2",
            "taylor": f"TaylorSeer interval {value}, order 1, warm-up 3, attn1/attn2/ffn of every block",
            "taylorlite": f"TaylorSeer-lite interval {value}, order 1, warm-up 3",
            "dbcache": f"cache-dit DBCache F1B0 threshold {value}, warm-up 8",
            "dbcache-ts": f"cache-dit DBCache F1B0 threshold {value}, warm-up 8, TaylorSeer order 1"}[kind]


def conversion_fields(full: dict, full_frames, row: dict, frames, compare) -> dict:
    """``dfull`` (``row``, ``frames``) vs our ``full`` on the same prompt and seed: the check of the weight conversion
    (PSNR/SSIM of the uint8 frames) and the two transformers' relative speed (wall and CPU time)."""
    metrics = compare(full_frames, frames)
    fields = {"conversion_psnr": metrics["psnr_video"], "conversion_ssim": metrics["ssim"],
              "speed_vs_full": full["latency_s"] / row["latency_s"]}
    if "forward_cpu_s" in full and "forward_cpu_s" in row:
        fields["cpu_vs_full"] = full["forward_cpu_s"] / row["forward_cpu_s"]
    return fields
