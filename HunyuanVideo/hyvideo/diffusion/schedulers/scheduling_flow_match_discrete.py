"""Flow-matching Euler scheduler of HunyuanVideo (sd3 time shift, `--flow-reverse`).

References: Tencent/HunyuanVideo hyvideo/diffusion/schedulers/scheduling_flow_match_discrete.py (official
numerics: torch fp32 sigmas, unrounded fp32 timesteps, Euler update in fp32).

Schedule for N steps (all torch fp32, on the CPU, as upstream):
    sigmas = linspace(1, 0, N + 1)
    sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)      # "sd3 time shift"
    if not reverse: sigmas = 1 - sigmas
    timesteps = sigmas[:-1] * num_train_timesteps             # not rounded: 1000.0, 997.093, 994.083, ...
Step i:  x_{i+1} = float32(x_i) + float32(v_i) * (sigmas[i+1] - sigmas[i]).

`reverse=True` (the `--flow-reverse` flag, passed by every official script) samples from sigma 1 (noise)
to 0 (data) with the model's velocity v = noise - data. Without it the sigmas run 0 -> 1 (the shifted values
mirrored: 1 - sigma), so the update moves *towards* noise: the CLI default is wrong for inference, which is
why the flag must be given. Both behaviours are kept, as upstream.
"""

from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput

SUPPORTED_SOLVERS = ("euler",)


@dataclass
class FlowMatchDiscreteSchedulerOutput(BaseOutput):
    """Output of `FlowMatchDiscreteScheduler.step`.

    Attributes:
        prev_sample: the sample at the next sigma, fp32, same shape as the input sample.
    """

    prev_sample: torch.FloatTensor


def sd3_time_shift(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """Shift sigmas towards the noise end: s * sigma / (1 + (s - 1) * sigma) (identity for s = 1)."""
    return (shift * sigmas) / (1 + (shift - 1) * sigmas)


class FlowMatchDiscreteScheduler(SchedulerMixin, ConfigMixin):
    """Euler sampler for rectified-flow models with the sd3 time shift.

    Args:
        num_train_timesteps: timestep scale: the model sees `sigma * num_train_timesteps`.
        shift: time shift s >= 1 pushes steps towards the noise end (`--flow-shift`, 7.0 for HunyuanVideo;
            the upstream class default is 1.0, the CLI default 7.0).
        reverse: `--flow-reverse`: sample from sigma 1 (noise) to 0 (data). Without it the order is 0 -> 1.
        solver: only "euler".
        n_tokens: accepted for parity with upstream (no resolution-dependent shift is applied).
    """

    _compatibles = []
    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        shift: float = 7.0,
        reverse: bool = True,
        solver: str = "euler",
        n_tokens: int | None = None,
    ):
        if solver not in SUPPORTED_SOLVERS:
            raise ValueError(f"solver={solver!r} is not supported; allowed: {', '.join(SUPPORTED_SOLVERS)}")
        if not num_train_timesteps > 0:
            raise ValueError(f"num_train_timesteps must be positive, got {num_train_timesteps!r}")
        if not shift > 0:
            raise ValueError(f"shift must be positive, got {shift!r}")
        # Unshifted training schedule until `set_timesteps` is called.
        sigmas = torch.linspace(1, 0, num_train_timesteps + 1)
        if not reverse:
            sigmas = sigmas.flip(0)
        self._set_schedule(sigmas, device=None)
        self.num_inference_steps = None

    def _set_schedule(self, sigmas: torch.Tensor, device) -> None:
        self.sigmas = sigmas  # [N + 1] fp32, CPU (the Euler step uses them as 0-d factors)
        timesteps = sigmas[:-1] * self.config.num_train_timesteps
        self.timesteps = timesteps.to(dtype=torch.float32, device=device)
        self._step_index = None
        self._begin_index = None

    @property
    def step_index(self) -> int | None:
        """Index of the current step (None before the first `step`)."""
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        """First step index, when the pipeline sets it (e.g. img2img); None otherwise."""
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start the step counter at `begin_index` instead of looking the first timestep up."""
        self._begin_index = begin_index

    def set_timesteps(
        self, num_inference_steps: int, device: torch.device | str | None = None, n_tokens: int | None = None
    ) -> None:
        """Build the N-step schedule (see the module docstring) and reset the step counter.

        Args:
            num_inference_steps: N >= 1.
            device: device of `timesteps` (sigmas stay on the CPU, as upstream).
            n_tokens: accepted for parity with upstream; unused.
        """
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be an int >= 1, got {num_inference_steps!r}")
        self.num_inference_steps = num_inference_steps
        sigmas = torch.linspace(1, 0, num_inference_steps + 1)  # fp32
        sigmas = sd3_time_shift(sigmas, self.config.shift)
        if not self.config.reverse:
            sigmas = 1 - sigmas
        self._set_schedule(sigmas, device)

    def _sigma_to_t(self, sigma):
        return sigma * self.config.num_train_timesteps

    def index_for_timestep(self, timestep, schedule_timesteps: torch.Tensor | None = None) -> int:
        """Position of `timestep` in the schedule (exact match: the pipeline passes the schedule's values)."""
        schedule = self.timesteps if schedule_timesteps is None else schedule_timesteps
        timestep = torch.as_tensor(timestep, dtype=schedule.dtype).to(schedule.device)
        matches = (schedule == timestep).nonzero()
        if len(matches) == 0:
            raise ValueError(f"timestep={float(timestep)} is not in the scheduler's timesteps")
        return int(matches[0])

    def _init_step_index(self, timestep) -> None:
        if self.begin_index is None:
            self._step_index = self.index_for_timestep(timestep)
        else:
            self._step_index = self._begin_index

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """Flow matching feeds the sample unscaled."""
        return sample

    def step(
        self, model_output: torch.Tensor, timestep, sample: torch.Tensor, return_dict: bool = True
    ) -> FlowMatchDiscreteSchedulerOutput | tuple[torch.Tensor]:
        """One Euler step: x + (sigma_next - sigma) * v, computed in fp32.

        Args:
            model_output: velocity v predicted at `timestep`, same shape as `sample`.
            timestep: the current value from `timesteps` (a float or 0-d tensor, not a step index).
            sample: current sample x.
            return_dict: return `FlowMatchDiscreteSchedulerOutput` (True) or a 1-tuple.

        Returns:
            The fp32 sample at the next sigma.
        """
        if isinstance(timestep, int) and not isinstance(timestep, bool):
            raise ValueError(
                "timestep must be a value from scheduler.timesteps (float or tensor), not an int step index"
            )
        if self.step_index is None:
            self._init_step_index(timestep)
        if self._step_index >= len(self.sigmas) - 1:
            steps = len(self.sigmas) - 1
            raise ValueError(f"step called {self._step_index + 1} times for a {steps}-step schedule")
        dt = self.sigmas[self._step_index + 1] - self.sigmas[self._step_index]  # 0-d fp32
        prev_sample = sample.to(torch.float32) + model_output.to(torch.float32) * dt
        self._step_index += 1
        if not return_dict:
            return (prev_sample,)
        return FlowMatchDiscreteSchedulerOutput(prev_sample=prev_sample)

    def __len__(self) -> int:
        return self.config.num_train_timesteps
