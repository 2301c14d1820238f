"""The run-time side of profiling: a stand-in for the block cache that watches instead of skipping.

:class:`ProfilingRecorder` speaks the cache protocol of :class:`common_cache.DeltaCache` (``bind``, ``begin``,
``step``, ``run``, ``stats``), so it is attached with :func:`common_cache.attach_cache` and the unchanged pipeline
tells it the step index and guidance branch of every forward. ``run`` executes every block (a plain loop) and
keeps track of which block is running; a model adapter (``wan/profiling.py``, ``hyvideo/profiling.py``) feeds it

* the attention each token received in the current block (:meth:`record_attention`), computed at the model's
  attention entry point, and
* the model output of the current branch (:meth:`record_prediction`).

``run`` also measures, model-independently, how much each block's residual (output minus input) changed since the
previous step of the same branch, relative to the size of the block's input (``delta_change``: roughly the
relative error a cache reusing the previous residual would add to the stream). The tensors are compared through a
fixed random projection to ``sketch_width`` channels per token, so only a small sketch per block and branch is
kept between steps.

With ``reuse_interval`` set, ``run`` also measures each block's ``reuse_error``: the error at the end of the block
stack if that block alone were cached. On *anchor* steps (``reuse_start``, then every ``reuse_interval`` steps, as
a uniform refresh schedule would refresh) every block's residual is stored; on the steps in between, for each block
b the rest of the stack is run again from ``input_b + stored residual_b`` (what a cache feeds block b+1), and the
difference from the true stack output is measured relative to the stack's own contribution (output minus input).
It is a counterfactual of the cache, so it includes how the error spreads through the blocks after b, which the
attention statistics cannot see. It costs ``depth * (depth - 1) / 2`` extra block calls per measured step and one
stored residual per block and branch (as much memory as caching every block); ``reuse_every`` thins the measured
steps.

When a step is over (the next step starts or the generation ends), the branch outputs are combined into the
prediction that drives the sampler, the mask provider turns it into a foreground mask, and each recorded block
becomes one R_attn / lift record of :class:`ProfileStatistics`; the raw per-token vectors are then dropped, so
memory stays at one step's worth.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from common_cache.policy import CachePolicy, StepContext
from common_cache.profiling.masks import MaskProvider, StepView, pool_to_tokens
from common_cache.profiling.scores import HighAttentionRule, foreground_lift, foreground_ratio
from common_cache.profiling.statistics import ProfileStatistics
from common_cache.runner import States, call_block

# branch name -> (prediction [C, T, H, W], clean estimate [C, T, H, W] or None)
BranchOutputs = Mapping[str, tuple[torch.Tensor, torch.Tensor | None]]
Combine = Callable[[BranchOutputs], tuple[torch.Tensor, torch.Tensor | None]]


def single_branch(outputs: BranchOutputs) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The default combination: exactly one branch (e.g. a guidance-distilled model)."""
    if len(outputs) != 1:
        raise RuntimeError(
            f"the step ran branches {sorted(outputs)}: pass a combine function (e.g. classifier-free guidance)"
        )
    return next(iter(outputs.values()))


@dataclass
class _Position(StepContext):
    group: str | None = None
    block: int | None = None


class ProfilingRecorder(CachePolicy):
    """Collects attention and prediction statistics of generations into a :class:`ProfileStatistics`.

    A :class:`~common_cache.policy.CachePolicy` like the caches (the same bind / begin / step protocol, checks and
    statistics), whose ``run`` computes every block and records what it sees.

    Args:
        mask_provider: foreground masks per step (see ``masks.py``).
        patch_size: the model's (frames, height, width) patch: latent mask -> token grid.
        rule: which tokens are high-attention.
        pooling: latent mask -> token weights (``fraction``, ``majority``, ``any``).
        combine: branch outputs -> the sampler's prediction (and clean estimate), e.g. classifier-free guidance.
        groups: stream groups to record (None = all the model has).
        keep_masks: keep each step's latent mask of the current generation in ``masks`` (for evaluation).
        attention_every: measure attention on every n-th step only (steps 0, n, 2n, ...): the received-attention
            computation costs about one extra attention per block, which matters for large models.
        sketch_width: channels of the random projection used for ``delta_change`` (0 = do not measure it).
        reuse_interval: anchor spacing of the ``reuse_error`` measurement (0 = do not measure it).
        reuse_start: the first anchor step (the warm-up length of the schedule being modelled).
        reuse_every: measure ``reuse_error`` on every n-th step between anchors only.
    """

    def __init__(
        self,
        mask_provider: MaskProvider,
        patch_size: Sequence[int] = (1, 2, 2),
        rule: HighAttentionRule = HighAttentionRule(),
        pooling: str = "fraction",
        combine: Combine = single_branch,
        groups: Sequence[str] | None = None,
        keep_masks: bool = False,
        attention_every: int = 1,
        sketch_width: int = 16,
        reuse_interval: int = 0,
        reuse_start: int = 0,
        reuse_every: int = 1,
    ) -> None:
        for name, value, low in (("attention_every", attention_every, 1), ("reuse_interval", reuse_interval, 0),
                                 ("reuse_start", reuse_start, 0), ("reuse_every", reuse_every, 1)):
            if value < low:
                raise ValueError(f"{name}={value} is not allowed: expected an integer >= {low}")
        super().__init__()
        self.mask_provider = mask_provider
        self.patch_size = tuple(patch_size)
        self.rule = rule
        self.pooling = pooling
        self.combine = combine
        self.groups = None if groups is None else tuple(groups)
        self.keep_masks = keep_masks
        self.attention_every = attention_every
        self.sketch_width = sketch_width
        self.reuse_interval, self.reuse_start, self.reuse_every = reuse_interval, reuse_start, reuse_every
        self._anchors: dict[tuple[str, str], list[States]] = {}  # (branch, group) -> residual per block
        self._replaying = False
        self._projections: dict[tuple[int, torch.device], torch.Tensor] = {}
        self._sketches: dict[tuple[str, str, int], torch.Tensor] = {}
        self.statistics: ProfileStatistics | None = None
        self.masks: list[torch.Tensor] = []
        self.prompt_index = 0
        self._depths: dict[str, int] | None = None  # the profiled groups (all the model's unless ``groups``)
        self._pending_step: int | None = None
        self._attention: dict[tuple[str, str, int], list[torch.Tensor]] = {}
        self._outputs: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self._previous_prediction: torch.Tensor | None = None

    # ----------------------------------------------------------------------------------------------------------
    # The cache protocol of CachePolicy (bind, begin, step), with the recorder's hooks.

    context_type = _Position

    def _check_model(self, model_depths: Mapping[str, int]) -> None:
        """Any model; ``groups``, when given, must be among its stream groups (the others run unrecorded)."""
        unknown = sorted(set(self.groups or ()) - set(model_depths))
        if unknown:
            raise ValueError(f"profiling groups {unknown} are not stream groups of the model: {sorted(model_depths)}")
        self._depths = {g: d for g, d in model_depths.items() if self.groups is None or g in self.groups}

    def _prepare(self, num_steps: int) -> None:
        """Starts a generation (one prompt): statistics are created on the first call, added to afterwards."""
        if self.statistics is None:
            self.statistics = ProfileStatistics(num_steps, dict(self._depths))
        elif self.statistics.num_steps != num_steps:
            raise ValueError(
                f"every profiled generation must have the same number of steps: {self.statistics.num_steps} "
                f"before, {num_steps} now"
            )
        self.masks = []
        self._sketches.clear()
        self._anchors.clear()
        self._pending_step = None
        self._previous_prediction = None
        self._attention.clear()
        self._outputs.clear()

    @contextmanager
    def step(self, index: int, branch: str = "cond") -> Iterator[None]:
        """Marks the forwards inside as step ``index`` of guidance ``branch``; a new step index first finishes the
        statistics of the previous step (both branches have run by then)."""
        if self.statistics is None:
            raise RuntimeError("ProfilingRecorder.step() before begin(num_steps)")
        if self._pending_step is not None and index != self._pending_step:
            self._finish_step()
        self._pending_step = index
        with super().step(index, branch):
            yield

    def run(self, group: str, blocks: Sequence[Callable], states: States, kwargs: dict) -> States:
        """Runs every block (a plain loop) while tracking which one is running."""
        position = self._require_context(group, blocks)
        measure = self.sketch_width > 0 and group in self._depths
        role = self._reuse_role(group, position.step)
        first, inputs, outputs = states, [], []
        for index, block in enumerate(blocks):
            position.group, position.block = group, index
            out = call_block(block, states, kwargs)
            if measure:
                self._record_delta_change(position, out, states)
            if role is not None:
                inputs.append(states), outputs.append(out)
            states = out
        position.group = position.block = None
        self.stats.count(group, position.step, len(blocks), 0)
        if role == "anchor":
            self._anchors[(position.branch, group)] = [_combine(o, i, torch.sub) for o, i in zip(outputs, inputs)]
        elif role == "measure":
            self._record_reuse_error(position, group, blocks, kwargs, first, inputs, states)
        return states

    def end(self) -> ProfileStatistics:
        """Finishes the current generation (its last step) and returns the statistics so far."""
        if self._pending_step is not None:
            self._finish_step()
            self._pending_step = None
        self.prompt_index += 1
        return self.statistics

    # ----------------------------------------------------------------------------------------------------------
    # Fed by the model adapters.

    @property
    def current_block(self) -> tuple[str, int] | None:
        """(group, block index) of the block running now; None outside a recorded block stack or step."""
        position = self._context
        if position is None or position.group is None or position.group not in self._depths or self._replaying:
            return None
        if position.step % self.attention_every:
            return None
        return position.group, position.block

    def record_attention(self, received: torch.Tensor) -> None:
        """Stores the received attention ``[T, P]`` (frames x tokens per frame) of the current block and branch."""
        where = self.current_block
        if where is None:
            return
        key = (self._context.branch, *where)
        self._attention.setdefault(key, []).append(received.detach().float().cpu())

    def record_prediction(self, prediction: torch.Tensor, clean_estimate: torch.Tensor | None = None) -> None:
        """Stores the model output ``[C, T, H, W]`` (and clean estimate) of the current branch."""
        position = self._require_position()
        clean = None if clean_estimate is None else clean_estimate.detach().float().cpu()
        self._outputs[position.branch] = (prediction.detach().float().cpu(), clean)

    # ----------------------------------------------------------------------------------------------------------

    def _require_position(self) -> _Position:
        if self._context is None:
            raise RuntimeError(
                "a model with a ProfilingRecorder attached was called outside cache.step(i, branch): the pipeline "
                "must call cache.begin(num_steps) once per generation and wrap every forward in cache.step(i, branch)"
            )
        return self._context

    def _sketch(self, out: States, inp: States) -> tuple[torch.Tensor, torch.Tensor]:
        """Random projections of the residual and of the input, each ``[B, L_total, sketch_width]`` float32."""
        deltas, inputs = [], []
        for o, i in zip(out if isinstance(out, tuple) else (out,), inp if isinstance(inp, tuple) else (inp,)):
            key = (o.shape[-1], o.device)
            if key not in self._projections:
                generator = torch.Generator().manual_seed(o.shape[-1])
                matrix = torch.randn(o.shape[-1], self.sketch_width, generator=generator) / self.sketch_width**0.5
                self._projections[key] = matrix.to(o.device)
            projection = self._projections[key]
            deltas.append((o.detach().float() - i.detach().float()) @ projection)
            inputs.append(i.detach().float() @ projection)
        return torch.cat(deltas, dim=1), torch.cat(inputs, dim=1)

    def _record_delta_change(self, position: _Position, out: States, inp: States) -> None:
        with torch.no_grad():
            delta, inputs = self._sketch(out, inp)
        key = (position.branch, position.group, position.block)
        previous = self._sketches.get(key)
        self._sketches[key] = delta
        if previous is not None and previous.shape == delta.shape:
            change = ((delta - previous).norm() / inputs.norm().clamp(min=1e-12)).item()
            self.statistics.add_block(position.group, position.block, position.step, {"delta_change": [change]})

    def _reuse_role(self, group: str, step: int) -> str | None:
        """``anchor`` (store residuals), ``measure`` (reuse_error) or None for this group and step."""
        if not self.reuse_interval or group not in self._depths or step < self.reuse_start:
            return None
        offset = (step - self.reuse_start) % self.reuse_interval
        if offset == 0:
            return "anchor"
        return "measure" if offset % self.reuse_every == 0 else None

    def _record_reuse_error(self, position: _Position, group: str, blocks: Sequence[Callable], kwargs: dict,
                            first: States, inputs: list[States], last: States) -> None:
        stored = self._anchors.get((position.branch, group))
        if stored is None or len(stored) != len(blocks):
            return
        scale = _norm(_combine(last, first, torch.sub)).clamp(min=1e-12)
        self._replaying = True
        try:
            with torch.no_grad():
                for b in range(len(blocks)):
                    states = _combine(inputs[b], stored[b], torch.add)  # block b cached: current input + old residual
                    for block in blocks[b + 1:]:
                        states = call_block(block, states, kwargs)
                    error = (_norm(_combine(states, last, torch.sub)) / scale).item()
                    self.statistics.add_block(group, b, position.step, {"reuse_error": [error]})
        finally:
            self._replaying = False

    def _finish_step(self) -> None:
        step = self._pending_step
        if not self._outputs:
            raise RuntimeError(f"step {step} recorded no model output: the model adapter must call record_prediction")
        prediction, clean = self.combine(self._outputs)
        if self._previous_prediction is not None:
            change = (prediction - self._previous_prediction).abs().mean().item()
            self.statistics.add_change(step, change)
        self._previous_prediction = prediction
        if not self._attention and not self.keep_masks:
            self._outputs.clear()
            return
        view = StepView(step, self.statistics.num_steps, prediction, clean, self.prompt_index)
        mask = self.mask_provider(view)  # [T, H, W]
        if self.keep_masks:
            self.masks.append(mask)
        weights = pool_to_tokens(mask, self.patch_size, self.pooling).flatten(1)  # [T', P]
        for (_, group, block), records in self._attention.items():
            received = torch.stack(records).mean(dim=0)  # [T', P] (several calls: e.g. a batch)
            if received.shape != weights.shape:
                raise RuntimeError(
                    f"received attention of block {block} has frames x tokens {tuple(received.shape)}, but the "
                    f"foreground mask gives {tuple(weights.shape)}: check the adapter's token grid"
                )
            high = self.rule.high(received)
            self.statistics.add_block(group, block, step, {
                "r_attn": foreground_ratio(high, weights).numpy(),
                "lift": foreground_lift(received, weights).numpy(),
            })
        self._attention.clear()
        self._outputs.clear()


def _combine(a: States, b: States, op: Callable) -> States:
    """``op`` applied to matching tensors of two block states (a tensor or a tuple of tensors)."""
    if isinstance(a, tuple):
        return tuple(op(x.detach(), y.detach()) for x, y in zip(a, b))
    return op(a.detach(), b.detach())


def _norm(states: States) -> torch.Tensor:
    """L2 norm over every tensor of a block state (float32)."""
    tensors = states if isinstance(states, tuple) else (states,)
    return torch.sqrt(sum(t.float().square().sum() for t in tensors))
