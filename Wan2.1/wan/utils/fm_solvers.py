"""References: Wan2.1 wan/utils/fm_solvers.py (official flow DPM-Solver++ sampler, schedule and shift).

Flow-matching multistep samplers share one schedule: sigma runs from (nearly) 1 down to 0, the model predicts
the velocity v = noise - x0 of x_sigma = (1 - sigma) * x0 + sigma * noise, so x0 = x - sigma * v,
alpha = 1 - sigma and lambda = log(alpha) - log(sigma). Scalar sigma / lambda arithmetic is done on 0-dim fp32
CPU tensors, as upstream, so the numbers match the official sampler.

This file holds the shared schedule (`FlowMultistepSchedulerBase`), the explicit-sigma helpers used by the
official `--sample_solver dpm++` path (`get_sampling_sigmas`, `retrieve_timesteps`) and
`FlowDPMSolverMultistepScheduler` (dpmsolver++, midpoint, order 2).
"""

import inspect
import math
from typing import NamedTuple

import numpy as np
import torch


class FlowStepOutput(NamedTuple):
    """What `step(..., return_dict=True)` returns; `[0]` and `.prev_sample` both give the next sample."""

    prev_sample: torch.Tensor


def get_sampling_sigmas(sampling_steps, shift):
    """The official explicit sigma list of the DPM++ path: shift(linspace(1, 0, N + 1)[:N]).

    Args:
        sampling_steps: number of sampling steps N (positive int).
        shift: the flow shift s (> 0); sigma' = s * sigma / (1 + (s - 1) * sigma).

    Returns:
        numpy float64 array of N sigmas, starting at exactly 1.0 (no trailing zero).
    """
    _check_steps(sampling_steps, "sampling_steps")
    _check_shift(shift)
    sigma = np.linspace(1, 0, sampling_steps + 1)[:sampling_steps]
    return shift * sigma / (1 + (shift - 1) * sigma)


def retrieve_timesteps(
    scheduler, num_inference_steps=None, device=None, timesteps=None, sigmas=None, **kwargs
):
    """Set a scheduler's schedule from a step count, custom timesteps or custom sigmas (like upstream).

    Args:
        scheduler: a scheduler with `set_timesteps`.
        num_inference_steps: step count, used when neither `timesteps` nor `sigmas` is given.
        device: device of the returned timesteps.
        timesteps: custom timesteps (only for schedulers whose `set_timesteps` accepts them).
        sigmas: custom sigmas (only for schedulers whose `set_timesteps` accepts them).
        **kwargs: passed on to `set_timesteps`.

    Returns:
        (timesteps, num_inference_steps) of the scheduler after the call.
    """
    if timesteps is not None and sigmas is not None:
        raise ValueError("retrieve_timesteps: pass only one of `timesteps` or `sigmas`, not both")
    accepted = set(inspect.signature(scheduler.set_timesteps).parameters)
    for name, value in (("timesteps", timesteps), ("sigmas", sigmas)):
        if value is None:
            continue
        if name not in accepted:
            raise ValueError(
                f"retrieve_timesteps: {type(scheduler).__name__}.set_timesteps "
                f"does not accept custom `{name}`"
            )
        scheduler.set_timesteps(**{name: value}, device=device, **kwargs)
        return scheduler.timesteps, len(scheduler.timesteps)
    scheduler.set_timesteps(num_inference_steps, device=device, **kwargs)
    return scheduler.timesteps, len(scheduler.timesteps)


def _check_steps(num_steps, field="num_inference_steps"):
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
        raise ValueError(f"{field} must be a positive int, got {num_steps!r}")


def _check_shift(shift):
    is_number = isinstance(shift, (int, float)) and not isinstance(shift, bool)
    if not is_number or not math.isfinite(shift) or shift <= 0:
        raise ValueError(f"shift must be a finite number > 0, got {shift!r}")


def _shift_sigmas(sigmas, shift):
    """The SD3 / Wan time shift sigma' = s * sigma / (1 + (s - 1) * sigma), in the input's precision."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


class FlowMultistepSchedulerBase:
    """Schedule shared by the flow UniPC and DPM++ samplers (official `set_timesteps`).

    The training table is sigma_k = 1 - alpha_k with alpha = linspace(1, 1/T, T) reversed, stored in fp32 and
    shifted by the construction `shift`; its first entry gives `sigma_max` (float32(0.999) for shift 1,
    T = 1000) and its last gives `sigma_min` (0). The final sigma of every schedule is zero.
    """

    solver_order = 2

    def __init__(self, num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False):
        """
        Args:
            num_train_timesteps: length T of the training table (1000 for Wan2.1).
            shift: construction shift; also the default of `set_timesteps(shift=None)`. Wan builds with 1.
            use_dynamic_shifting: must be False (resolution-dependent `mu` shifting is not used by Wan2.1).
        """
        _check_steps(num_train_timesteps, "num_train_timesteps")
        _check_shift(shift)
        if use_dynamic_shifting:
            raise ValueError(
                "use_dynamic_shifting=True is not supported (Wan2.1 uses a fixed shift); allowed: False"
            )
        self.num_train_timesteps = int(num_train_timesteps)
        self.shift = shift
        # The two ends of the fp32 training table, shifted in fp32 like upstream (identity for shift 1).
        table_ends = torch.tensor([1.0 - 1.0 / num_train_timesteps, 0.0], dtype=torch.float32)
        table_ends = _shift_sigmas(table_ends, shift)
        self.sigma_max = table_ends[0].item()
        self.sigma_min = table_ends[1].item()
        self.timesteps = None
        self.sigmas = None
        self.num_inference_steps = None
        self._reset_state()

    def set_timesteps(self, num_inference_steps=None, device=None, sigmas=None, shift=None):
        """Build the sampling schedule and reset the multistep state (one call per generation).

        Args:
            num_inference_steps: N; sigmas = linspace(sigma_max, sigma_min, N + 1)[:-1] before the shift.
            device: device of `self.timesteps` (`self.sigmas` always stays on the CPU).
            sigmas: explicit float64 sigma list (N values, no trailing zero) instead of the linspace.
            shift: shift applied to the sigmas; None uses the construction shift.
        """
        shift = self.shift if shift is None else shift
        _check_shift(shift)
        if sigmas is None:
            _check_steps(num_inference_steps)
            sig = np.linspace(self.sigma_max, self.sigma_min, num_inference_steps + 1)[:-1]
        else:
            sig = np.asarray(sigmas, dtype=np.float64)
            if sig.ndim != 1 or sig.size == 0 or not np.all((sig >= 0) & (sig <= 1)):
                raise ValueError(
                    f"sigmas must be a non-empty 1-D list of values in [0, 1], got shape {sig.shape} "
                    f"and range [{sig.min() if sig.size else 'n/a'}, {sig.max() if sig.size else 'n/a'}]"
                )
        sig = _shift_sigmas(sig, shift)
        timesteps = sig * self.num_train_timesteps
        # int64 truncation (0.999 * 1000 -> 999), the sigma table in fp32 with a final zero, kept on the CPU.
        self.timesteps = torch.from_numpy(timesteps).to(device=device, dtype=torch.int64)
        self.sigmas = torch.from_numpy(np.concatenate([sig, [0.0]]).astype(np.float32))
        self.num_inference_steps = len(timesteps)
        self._reset_state()

    def _reset_state(self):
        self.x0_history = [None] * self.solver_order  # x0 predictions, oldest first
        self.lower_order_nums = 0
        self._step_index = None

    @property
    def step_index(self):
        """Index of the next step (None before the first `step`)."""
        return self._step_index

    def _begin_step(self, timestep):
        """Find the step index (on the first call, from the timestep) and check the schedule is not done."""
        if self.timesteps is None:
            raise ValueError(f"{type(self).__name__}.step: call set_timesteps before step")
        if self._step_index is None:
            self._step_index = self._index_for_timestep(timestep)
        if self._step_index >= self.num_inference_steps:
            raise ValueError(
                f"{type(self).__name__}.step: all {self.num_inference_steps} steps are done; "
                "call set_timesteps to start a new generation"
            )
        return self._step_index

    def _index_for_timestep(self, timestep):
        if isinstance(timestep, torch.Tensor):
            timestep = timestep.to(self.timesteps.device)
        matches = (self.timesteps == timestep).nonzero()
        if len(matches) == 0:
            raise ValueError(f"timestep {timestep!r} is not in the schedule {self.timesteps.tolist()}")
        # Upstream convention: with duplicated timesteps the first step is the second match.
        return matches[1 if len(matches) > 1 else 0].item()

    def _push_x0(self, x0_pred):
        self.x0_history = self.x0_history[1:] + [x0_pred]

    def _alpha_sigma_lambda(self, index):
        """(alpha, sigma, lambda) of entry `index`, 0-dim fp32 CPU tensors (lambda = +-inf at the ends)."""
        sigma = self.sigmas[index]
        alpha = 1 - sigma
        return alpha, sigma, torch.log(alpha) - torch.log(sigma)

    @staticmethod
    def _wrap(prev_sample, return_dict):
        return FlowStepOutput(prev_sample) if return_dict else (prev_sample,)


class FlowDPMSolverMultistepScheduler(FlowMultistepSchedulerBase):
    """Flow DPM-Solver++ (2M, midpoint): first order on the first and the final step, second order otherwise.

    The official sampler feeds explicit sigmas (`get_sampling_sigmas`) that start at exactly 1.0, where
    alpha = 0 and lambda = -inf: the first-order update then reduces to x_t = sigma_t * x + alpha_t * x0, and
    the next step's ratio r0 = h_prev / h is +inf, so its second-order correction (1 / r0) * (m0 - m1) is
    exactly 0.
    """

    def step(self, model_output, timestep, sample, return_dict=False, generator=None):
        """One sampling step.

        Args:
            model_output: predicted velocity v, same shape as `sample`.
            timestep: the current timestep (an entry of `self.timesteps`).
            sample: the current sample x.
            return_dict: False -> plain tuple `(prev_sample,)`; True -> `FlowStepOutput`.
            generator: unused (deterministic solver); accepted for API compatibility.

        Returns:
            A tuple whose [0] is the next sample, in the model output's dtype.
        """
        index = self._begin_step(timestep)
        x0_pred = sample - self.sigmas[index] * model_output
        self._push_x0(x0_pred)
        sample = sample.to(torch.float32)  # upstream upcasts before the update
        is_final = index == self.num_inference_steps - 1
        if self.lower_order_nums < 1 or is_final:
            prev_sample = self._first_order_update(sample, index)
        else:
            prev_sample = self._second_order_update(sample, index)
        self.lower_order_nums = min(self.lower_order_nums + 1, self.solver_order)
        self._step_index += 1
        return self._wrap(prev_sample.to(x0_pred.dtype), return_dict)

    def _first_order_update(self, sample, index):
        alpha_t, sigma_t, lambda_t = self._alpha_sigma_lambda(index + 1)
        _, sigma_s, lambda_s = self._alpha_sigma_lambda(index)
        h = lambda_t - lambda_s
        return (sigma_t / sigma_s) * sample - (alpha_t * (torch.exp(-h) - 1.0)) * self.x0_history[-1]

    def _second_order_update(self, sample, index):
        alpha_t, sigma_t, lambda_t = self._alpha_sigma_lambda(index + 1)
        _, sigma_s0, lambda_s0 = self._alpha_sigma_lambda(index)
        _, _, lambda_s1 = self._alpha_sigma_lambda(index - 1)
        m0, m1 = self.x0_history[-1], self.x0_history[-2]
        h, h_prev = lambda_t - lambda_s0, lambda_s0 - lambda_s1
        r0 = h_prev / h
        d1 = (1.0 / r0) * (m0 - m1)  # 0 when the previous step started at sigma = 1 (h_prev = +inf)
        coef = alpha_t * (torch.exp(-h) - 1.0)
        return (sigma_t / sigma_s0) * sample - coef * m0 - 0.5 * coef * d1
