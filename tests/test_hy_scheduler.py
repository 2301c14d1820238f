"""HunyuanVideo flow-matching Euler scheduler: formula, --flow-reverse, diffusers parity, trajectories."""

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from hyvideo.diffusion import FlowMatchDiscreteScheduler

N, SHIFT = 50, 7.0


def reference_sigmas(n: int, shift: float, reverse: bool) -> np.ndarray:
    """The official schedule in float64 numpy, written independently of the implementation."""
    sigmas = np.linspace(1.0, 0.0, n + 1)
    sigmas = shift * sigmas / (1.0 + (shift - 1.0) * sigmas)
    return sigmas if reverse else 1.0 - sigmas


def make(reverse: bool = True, n: int = N, shift: float = SHIFT) -> FlowMatchDiscreteScheduler:
    scheduler = FlowMatchDiscreteScheduler(
        num_train_timesteps=1000, shift=shift, reverse=reverse, solver="euler"
    )
    scheduler.set_timesteps(n)
    return scheduler


@pytest.mark.parametrize("reverse", [True, False])
def test_schedule_follows_the_formula(reverse):
    scheduler = make(reverse)
    expected = reference_sigmas(N, SHIFT, reverse)
    assert scheduler.sigmas.dtype == torch.float32 and scheduler.timesteps.dtype == torch.float32
    assert scheduler.sigmas.shape == (N + 1,) and scheduler.timesteps.shape == (N,)
    # fp32 evaluation of the formula: a few ULPs of values <= 1.
    np.testing.assert_allclose(scheduler.sigmas.numpy(), expected, rtol=0, atol=3e-7)
    # Timesteps are the fp32 sigmas times 1000, not rounded.
    assert torch.equal(scheduler.timesteps, scheduler.sigmas[:-1] * 1000)
    np.testing.assert_allclose(scheduler.timesteps.numpy(), expected[:-1] * 1000, rtol=0, atol=3e-4)


def test_reverse_runs_from_noise_to_data_with_official_values():
    scheduler = make(reverse=True)
    assert scheduler.sigmas[0] == 1.0 and scheduler.sigmas[-1] == 0.0
    assert torch.all(scheduler.sigmas[1:] < scheduler.sigmas[:-1])
    # Values quoted from the official run (official-models.md A.7).
    assert scheduler.timesteps[0] == 1000.0
    np.testing.assert_allclose(scheduler.timesteps[1:3].numpy(), [997.093, 994.083], atol=1e-3)


def test_without_reverse_the_schedule_is_mirrored():
    forward, backward = make(reverse=False), make(reverse=True)
    assert forward.sigmas[0] == 0.0 and forward.sigmas[-1] == 1.0
    assert torch.all(forward.sigmas[1:] > forward.sigmas[:-1])
    assert torch.equal(forward.sigmas, 1 - backward.sigmas)
    assert forward.timesteps[0] == 0.0


def test_shift_one_is_the_plain_linspace():
    scheduler = make(shift=1.0)
    assert torch.equal(scheduler.sigmas, torch.linspace(1, 0, N + 1))


def test_matches_diffusers_flow_match_euler():
    ours = make(reverse=True)
    theirs = FlowMatchEulerDiscreteScheduler(shift=SHIFT)
    theirs.set_timesteps(sigmas=np.linspace(1, 0, N + 1)[:-1])  # what diffusers' HunyuanVideoPipeline does
    sigma_gap = (ours.sigmas - theirs.sigmas).abs().max().item()
    timestep_gap = (ours.timesteps - theirs.timesteps).abs().max().item()
    assert sigma_gap <= 1.2e-7, sigma_gap
    assert timestep_gap <= 2e-4, timestep_gap

    # Same Euler trajectory for an arbitrary velocity sequence.
    generator = torch.Generator().manual_seed(0)
    x_ours = x_theirs = torch.randn(2, 3, 4, generator=generator)
    for t_ours, t_theirs in zip(ours.timesteps, theirs.timesteps):
        v = torch.randn(2, 3, 4, generator=generator)
        x_ours = ours.step(v, t_ours, x_ours, return_dict=False)[0]
        x_theirs = theirs.step(v, t_theirs, x_theirs, return_dict=False)[0]
    torch.testing.assert_close(x_ours, x_theirs, rtol=0, atol=2e-6)


def test_exact_velocity_lands_on_the_data_point():
    """x_t = (1 - t) x0 + t eps has velocity v(x, t) = (x - x0) / t; Euler with it is exact for this path."""
    scheduler = make(reverse=True)
    generator = torch.Generator().manual_seed(1)
    data = torch.randn(1, 16, 3, 4, 4, generator=generator)
    noise = torch.randn(1, 16, 3, 4, 4, generator=generator)
    x = noise
    for t in scheduler.timesteps:
        sigma = t / 1000  # the model only sees the timestep: this also checks timestep == sigma * 1000
        x = scheduler.step((x - data) / sigma, t, x).prev_sample
    torch.testing.assert_close(x, data, rtol=0, atol=2e-5)


def test_without_reverse_the_same_velocity_moves_towards_noise():
    """The default flag value: sigmas 0 -> 1, so noise - data velocities carry the data point to the noise."""
    scheduler = make(reverse=False)
    generator = torch.Generator().manual_seed(2)
    data, noise = torch.randn(8, generator=generator), torch.randn(8, generator=generator)
    x = data
    for t in scheduler.timesteps:
        x = scheduler.step(noise - data, t, x, return_dict=False)[0]
    torch.testing.assert_close(x, noise, rtol=0, atol=1e-5)


def test_step_is_fp32_euler_and_counts_steps():
    scheduler = make(reverse=True, n=4)
    sample = torch.randn(3).half()
    velocity = torch.randn(3).half()
    out = scheduler.step(velocity, scheduler.timesteps[0], sample, return_dict=False)[0]
    assert out.dtype == torch.float32
    dt = scheduler.sigmas[1] - scheduler.sigmas[0]
    assert torch.equal(out, sample.float() + velocity.float() * dt)
    assert scheduler.step_index == 1


def test_first_step_looks_up_its_position_in_the_schedule():
    scheduler = make(reverse=True, n=10)
    sample, velocity = torch.zeros(2), torch.ones(2)
    out = scheduler.step(velocity, scheduler.timesteps[6], sample).prev_sample
    assert scheduler.step_index == 7
    assert torch.equal(out, velocity * (scheduler.sigmas[7] - scheduler.sigmas[6]))


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="solver='heun'.*allowed: euler"):
        FlowMatchDiscreteScheduler(solver="heun")
    scheduler = make(n=2)
    with pytest.raises(ValueError, match="num_inference_steps"):
        scheduler.set_timesteps(0)
    with pytest.raises(ValueError, match="not an int step index"):
        scheduler.step(torch.zeros(1), 0, torch.zeros(1))
    with pytest.raises(ValueError, match="timestep=123.5 is not in"):
        scheduler.step(torch.zeros(1), 123.5, torch.zeros(1))
    for t in scheduler.timesteps:
        scheduler.step(torch.zeros(1), t, torch.zeros(1))
    with pytest.raises(ValueError, match="step called 3 times for a 2-step schedule"):
        scheduler.step(torch.zeros(1), scheduler.timesteps[-1], torch.zeros(1))
