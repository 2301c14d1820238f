"""Wan2.1 flow samplers: the official schedule, steps vs the B.8 formulas and diffusers, analytic flows."""

import math

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

from wan.utils.fm_solvers import (
    FlowDPMSolverMultistepScheduler,
    FlowStepOutput,
    get_sampling_sigmas,
    retrieve_timesteps,
)
from wan.utils.fm_solvers_unipc import FlowUniPCMultistepScheduler

SHAPE = (1, 4, 3, 6, 8)  # [B, C, F, H, W] latent


def official_unipc_schedule(num_steps, shift):
    """The official UniPC schedule, written from the formula (official-models.md B.8)."""
    sigma_max = float(np.float32(0.999))
    sig = np.linspace(sigma_max, 0, num_steps + 1)[:-1]
    sig = shift * sig / (1 + (shift - 1) * sig)
    return (sig * 1000).astype(np.int64), np.append(sig, 0.0).astype(np.float32)


def schedule(sched, num_steps, shift):
    """Set the schedule the way the official pipeline does for each solver."""
    if isinstance(sched, FlowUniPCMultistepScheduler):
        sched.set_timesteps(num_steps, device="cpu", shift=shift)
    else:
        retrieve_timesteps(sched, device="cpu", sigmas=get_sampling_sigmas(num_steps, shift))
    return sched


def make_unipc(num_steps, shift):
    sched = FlowUniPCMultistepScheduler(num_train_timesteps=1000, shift=1, use_dynamic_shifting=False)
    return schedule(sched, num_steps, shift)


def make_dpm(num_steps, shift):
    sched = FlowDPMSolverMultistepScheduler(num_train_timesteps=1000, shift=1, use_dynamic_shifting=False)
    return schedule(sched, num_steps, shift)


def run(sched, velocity_fn, x):
    """Run a whole generation; returns the sample after every step."""
    outputs = []
    for i, t in enumerate(sched.timesteps):
        x = sched.step(velocity_fn(i, x), t, x, return_dict=False)[0]
        outputs.append(x)
    return outputs


def random_velocities(num_steps, seed=1):
    gen = torch.Generator().manual_seed(seed)
    table = [torch.randn(SHAPE, generator=gen) for _ in range(num_steps)]
    return lambda i, x: table[i]


# ------------------------------------------------------------------------------------------------------------
# Independent references written from the B.8 formulas (fp32 scalars like upstream, or fp64)
# ------------------------------------------------------------------------------------------------------------


def _lambdas(sigmas32, dtype):
    sig = sigmas32.to(dtype)
    return sig, torch.log(1 - sig) - torch.log(sig)  # -inf at sigma = 1, +inf at sigma = 0


def reference_unipc(sigmas32, velocity_fn, step_inputs, dtype):
    """Outputs of every step, given the sample entering each step (teacher forcing: no drift accumulates)."""
    sig, lam = _lambdas(sigmas32, dtype)
    num_steps = len(sig) - 1
    history, last_sample, prev_order, lower_order_nums, outputs = [], None, None, 0, []
    for i in range(num_steps):
        x = step_inputs[i].to(dtype)
        m = x - sig[i] * velocity_fn(i, step_inputs[i]).to(dtype)
        if i > 0:  # UniC: sigma_{i-1} -> sigma_i
            h = lam[i] - lam[i - 1]
            phi1 = torch.expm1(-h)
            base = sig[i] / sig[i - 1] * last_sample - (1 - sig[i]) * phi1 * history[-1]
            if prev_order == 1:
                rho0, rho1, d1 = 0.0, 0.5, 0.0
            else:
                r = (lam[i - 2] - lam[i - 1]) / h
                d1 = (history[-2] - history[-1]) / r
                c1 = phi1 / (-h) - 1
                c2 = c1 / (-h) - 0.5
                b0, b1 = c1 / phi1, 2 * c2 / phi1
                # R = [[1, 1], [r, 1]]: Cramer's rule.
                rho0, rho1 = (b0 - b1) / (1 - r), (b1 - r * b0) / (1 - r)
            x = base - (1 - sig[i]) * phi1 * (rho0 * d1 + rho1 * (m - history[-1]))
        history = (history + [m])[-2:]
        order = min(2, num_steps - i, lower_order_nums + 1)
        last_sample = x
        h = lam[i + 1] - lam[i]  # UniP: sigma_i -> sigma_{i+1}
        phi1 = torch.expm1(-h)
        x = sig[i + 1] / sig[i] * x - (1 - sig[i + 1]) * phi1 * m
        if order == 2:
            r = (lam[i - 1] - lam[i]) / h
            x = x - (1 - sig[i + 1]) * phi1 * 0.5 * (history[-2] - m) / r
        prev_order, lower_order_nums = order, min(lower_order_nums + 1, 2)
        outputs.append(x)
    return outputs


def reference_dpm(sigmas32, velocity_fn, step_inputs, dtype):
    """Outputs of every step, given the sample entering each step (teacher forcing: no drift accumulates)."""
    sig, lam = _lambdas(sigmas32, dtype)
    num_steps = len(sig) - 1
    history, outputs = [], []
    for i in range(num_steps):
        x = step_inputs[i].to(dtype)
        m = x - sig[i] * velocity_fn(i, step_inputs[i]).to(dtype)
        history = (history + [m])[-2:]
        h = lam[i + 1] - lam[i]
        coef = (1 - sig[i + 1]) * (torch.exp(-h) - 1)
        x = sig[i + 1] / sig[i] * x - coef * m
        if 0 < i < num_steps - 1:
            r0 = (lam[i] - lam[i - 1]) / h
            x = x - 0.5 * coef * (m - history[-2]) / r0  # r0 = inf after the sigma = 1 step: no correction
        outputs.append(x)
    return outputs


# ------------------------------------------------------------------------------------------------------------
# Schedules
# ------------------------------------------------------------------------------------------------------------


def test_unipc_schedule_is_the_official_formula():
    sched = make_unipc(50, 5.0)
    timesteps, sigmas = official_unipc_schedule(50, 5.0)
    assert sched.timesteps.dtype == torch.int64 and sched.sigmas.dtype == torch.float32
    assert sched.num_inference_steps == 50 and len(sched.sigmas) == 51
    assert torch.equal(sched.timesteps, torch.from_numpy(timesteps))
    assert torch.equal(sched.sigmas, torch.from_numpy(sigmas))
    # Hard numbers: sigma_max = float32(0.999); int64 truncation; shifted first sigma 4.995 / 4.996.
    assert sched.sigma_max == 0.9990000128746033 and sched.sigma_min == 0.0
    assert sched.timesteps[:5].tolist() == [999, 995, 991, 987, 982]
    assert sched.timesteps[-3:].tolist() == [241, 172, 92]
    assert sched.sigmas[0].item() == pytest.approx(0.99979984, abs=1e-7)
    assert sched.sigmas[-2].item() == pytest.approx(5 * 0.01998 / (1 + 4 * 0.01998), abs=1e-6)
    assert sched.sigmas[-1].item() == 0.0


def test_dpm_schedule_starts_at_sigma_one():
    sigmas = get_sampling_sigmas(50, 5.0)
    expected = np.linspace(1, 0, 51)[:50]
    np.testing.assert_array_equal(sigmas, 5.0 * expected / (1 + 4.0 * expected))
    sched = FlowDPMSolverMultistepScheduler(num_train_timesteps=1000, shift=1, use_dynamic_shifting=False)
    timesteps, num_steps = retrieve_timesteps(sched, device="cpu", sigmas=sigmas)
    assert num_steps == 50 and timesteps is sched.timesteps
    assert timesteps[:3].tolist() == [1000, 995, 991]
    assert torch.equal(timesteps, torch.from_numpy((sigmas * 1000).astype(np.int64)))
    assert torch.equal(sched.sigmas, torch.from_numpy(np.append(sigmas, 0.0).astype(np.float32)))


def test_diffusers_flow_unipc_default_schedule_differs():
    """diffusers' flow UniPC uses linspace(1, 1/1000) (and 1 - 1e-6 as first sigma), not
    linspace(float32(0.999), 0): the schedules disagree, so we keep our own (C.4 item 7) and compare with
    diffusers only on injected sigmas."""
    ours = make_unipc(50, 5.0)
    diffusers_sched = UniPCMultistepScheduler(
        use_flow_sigmas=True, flow_shift=5.0, prediction_type="flow_prediction"
    )
    diffusers_sched.set_timesteps(50)
    sig = np.linspace(1, 1 / 1000, 51)[:-1]
    sig = 5.0 * sig / (1 + 4.0 * sig)
    sig[0] -= 1e-6
    assert torch.equal(diffusers_sched.sigmas, torch.from_numpy(np.append(sig, 0.0).astype(np.float32)))
    sigma_gap = (diffusers_sched.sigmas - ours.sigmas).abs().max().item()
    assert 4e-3 < sigma_gap < 5e-3
    assert diffusers_sched.timesteps[0].item() == ours.timesteps[0].item() == 999
    assert (diffusers_sched.timesteps != ours.timesteps).sum().item() > 10


# ------------------------------------------------------------------------------------------------------------
# Step numerics
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_steps,shift", [(1, 5.0), (2, 5.0), (3, 3.0), (6, 8.0), (50, 5.0)])
@pytest.mark.parametrize("solver", ["unipc", "dpm++"])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.float64, 4e-6)])
def test_steps_match_b8_reference(solver, num_steps, shift, dtype, tol):
    """Step by step against the B.8 formulas.

    Upstream does the sigma / lambda scalar math in fp32, as the fp32 reference does (max diff measured
    2.4e-7). The fp64 reference shows what that costs: expm1(-h) / -h - 1 and the next coefficient lose digits
    to cancellation for small h, up to 2.0e-6 at N = 50 (samples up to ~4).
    """
    make, reference = (make_unipc, reference_unipc) if solver == "unipc" else (make_dpm, reference_dpm)
    sched = make(num_steps, shift)
    velocity = random_velocities(num_steps)
    x_start = torch.randn(SHAPE)
    got = run(sched, velocity, x_start)
    want = reference(sched.sigmas, velocity, [x_start] + got[:-1], dtype)
    for step, (g, w) in enumerate(zip(got, want)):
        assert g.dtype == torch.float32
        assert (g.double() - w.double()).abs().max().item() < tol, f"step {step}"
    # The final step returns the x0 prediction of the last model output, exactly.
    x_last_in = got[-2] if num_steps > 1 else x_start
    assert torch.equal(got[-1], x_last_in - sched.sigmas[-2] * velocity(num_steps - 1, None))


@pytest.mark.parametrize("solver", ["unipc", "dpm++"])
def test_steps_match_diffusers_on_injected_sigmas(solver):
    """With the official sigmas injected, diffusers' UniPC / DPM++ solvers give bit-identical trajectories."""
    if solver == "unipc":
        ours = make_unipc(12, 5.0)
        theirs = UniPCMultistepScheduler(
            use_flow_sigmas=True, flow_shift=1.0, prediction_type="flow_prediction"
        )
        theirs.set_timesteps(sigmas=ours.sigmas[:-1].double().numpy())
    else:
        ours = make_dpm(12, 5.0)
        theirs = DPMSolverMultistepScheduler(
            use_flow_sigmas=True, flow_shift=1.0, prediction_type="flow_prediction",
            algorithm_type="dpmsolver++", solver_type="midpoint", final_sigmas_type="zero",
        )
        theirs.set_timesteps(12)
        theirs.sigmas, theirs.timesteps = ours.sigmas.clone(), ours.timesteps.clone()
    assert torch.equal(theirs.sigmas, ours.sigmas) and torch.equal(theirs.timesteps, ours.timesteps)
    velocity = random_velocities(12, seed=3)
    x_start = torch.randn(SHAPE)
    for g, w in zip(run(ours, velocity, x_start), run(theirs, velocity, x_start)):
        assert torch.equal(g, w)


@pytest.mark.parametrize("make", [make_unipc, make_dpm])
def test_single_data_point_flow_lands_on_it(make):
    """For x_s = (1 - s) x0 + s noise with a single data point x0, the exact velocity is
    v = noise - x0 = (x - x0) / s."""
    x0 = torch.randn(SHAPE)
    sched = make(20, 5.0)
    sigmas = sched.sigmas
    outputs = run(sched, lambda i, x: (x - x0) / sigmas[i], torch.randn(SHAPE))
    assert (outputs[-1] - x0).abs().max().item() < 1e-5


@pytest.mark.parametrize("make,min_gain", [(make_unipc, 6.0), (make_dpm, 3.0)])
def test_gaussian_flow_converges_at_the_solver_order(make, min_gain):
    """Data x0 ~ N(mu, tau^2): the exact flow keeps z = (x - (1 - s) mu) / std(s) fixed, with
    std(s)^2 = (1 - s)^2 tau^2 + s^2.

    On a grid uniform in lambda, doubling the steps must cut the error at the last nonzero sigma by ~2^order:
    DPM++ 2M is order 2 (measured 3.9x), UniPC-bh2 with its corrector order 3 (measured 8.1x). (On the
    official shift-5 grid the last lambda steps are so large that the asymptotic order only shows beyond
    ~100 steps.)
    """
    mu, tau = 0.7, 0.3

    def std(s):
        return math.sqrt((1 - s) ** 2 * tau**2 + s**2)

    z = torch.randn(SHAPE)
    errors = []
    for num_steps in (20, 40):
        sched = make(num_steps, 5.0)
        lambdas = torch.linspace(-4.0, 4.0, num_steps, dtype=torch.float64)
        sched.set_timesteps(sigmas=torch.sigmoid(-lambdas), shift=1.0)  # sigma = 1 / (1 + e^lambda)
        sigmas = sched.sigmas.tolist()

        def velocity(i, x):
            s = sigmas[i]
            return -mu + (s - (1 - s) * tau**2) / std(s) * ((x - (1 - s) * mu) / std(s))

        outputs = run(sched, velocity, (1 - sigmas[0]) * mu + std(sigmas[0]) * z)
        s_last = sigmas[-2]
        errors.append((outputs[-2] - ((1 - s_last) * mu + std(s_last) * z)).abs().max().item())
    assert errors[1] < 5e-3 and errors[0] / errors[1] > min_gain, errors


# ------------------------------------------------------------------------------------------------------------
# State, API and errors
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [make_unipc, make_dpm])
def test_set_timesteps_resets_state(make):
    sched = make(6, 5.0)
    velocity = random_velocities(6)
    x_start = torch.randn(SHAPE)
    first = run(sched, velocity, x_start)
    schedule(sched, 6, 5.0)
    for t in sched.timesteps[:3]:  # abandon a generation half-way ...
        sched.step(torch.randn(SHAPE), t, torch.randn(SHAPE))
    schedule(sched, 6, 5.0)
    again = run(sched, velocity, x_start)  # ... and the next one is unaffected
    for a, b, c in zip(first, again, run(make(6, 5.0), velocity, x_start)):
        assert torch.equal(a, b) and torch.equal(a, c)


@pytest.mark.parametrize("make", [make_unipc, make_dpm])
def test_step_return_types(make):
    sched = make(3, 5.0)
    x, v = torch.randn(SHAPE), torch.randn(SHAPE)
    out = sched.step(v, sched.timesteps[0], x, return_dict=True)
    assert isinstance(out, FlowStepOutput) and out[0] is out.prev_sample and out.prev_sample.shape == SHAPE
    plain = make(3, 5.0).step(v, sched.timesteps[0], x, return_dict=False, generator=torch.Generator())
    assert type(plain) is tuple and torch.equal(plain[0], out.prev_sample)


def test_first_step_index_from_timestep_and_exhaustion():
    sched = make_unipc(4, 5.0)
    x, v = torch.randn(SHAPE), torch.randn(SHAPE)
    with pytest.raises(ValueError, match="timestep 500 is not in the schedule"):
        sched.step(v, 500, x)
    sched.step(v, sched.timesteps[1], x)  # start in the middle (upstream looks the index up)
    assert sched.step_index == 2
    for t in sched.timesteps[2:]:
        sched.step(v, t, x)
    with pytest.raises(ValueError, match="all 4 steps are done; call set_timesteps"):
        sched.step(v, sched.timesteps[-1], x)


def test_errors_name_the_value():
    with pytest.raises(ValueError, match="call set_timesteps before step"):
        FlowUniPCMultistepScheduler().step(torch.zeros(1), 999, torch.zeros(1))
    with pytest.raises(ValueError, match="use_dynamic_shifting=True is not supported"):
        FlowDPMSolverMultistepScheduler(use_dynamic_shifting=True)
    with pytest.raises(ValueError, match=r"shift must be a finite number > 0, got -1\.0"):
        make_unipc(10, -1.0)
    with pytest.raises(ValueError, match="num_inference_steps must be a positive int, got 0"):
        make_unipc(0, 5.0)
    with pytest.raises(ValueError, match=r"sigmas must be .* values in \[0, 1\]"):
        FlowDPMSolverMultistepScheduler().set_timesteps(sigmas=[1.5, 0.5])
    with pytest.raises(ValueError, match="pass only one of `timesteps` or `sigmas`"):
        retrieve_timesteps(make_dpm(3, 5.0), timesteps=[999], sigmas=[0.5])
    with pytest.raises(ValueError, match="does not accept custom `timesteps`"):
        retrieve_timesteps(make_dpm(3, 5.0), timesteps=[999, 500])
