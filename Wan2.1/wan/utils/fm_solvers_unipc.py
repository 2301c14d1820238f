"""References: Wan2.1 wan/utils/fm_solvers_unipc.py (official flow UniPC sampler, the default solver).

UniPC (Zhao et al. 2023) in its flow-matching form: order 2, `bh2` (B(h) = expm1(-h)), data prediction
(`predict_x0`), a corrector on every step after the first, lower-order final step and a final sigma of zero.
Each step is

    m   = x - sigma_i * v                                     x0 prediction of the model
    x   = UniC(m, last_sample, x)       (i > 0)               correct the previous predictor's result
    x'  = UniP(x)                                             predict the sample at sigma_{i+1}

with order = min(2, N - i, lower_order_nums + 1). The order-2 corrector solves its 2x2 system with
`torch.linalg.solve` in fp32 (as upstream); the order-2 predictor uses rho = 0.5. At the final step
sigma_{i+1} = 0, so lambda = +inf, expm1(-inf) = -1, and the predictor returns the x0 prediction itself.
"""

import torch

from .fm_solvers import FlowMultistepSchedulerBase


class FlowUniPCMultistepScheduler(FlowMultistepSchedulerBase):
    """Flow UniPC multistep sampler with the official Wan2.1 schedule.

    Usage (official t2v loop): `sched = FlowUniPCMultistepScheduler(num_train_timesteps=1000, shift=1)`,
    `sched.set_timesteps(steps, device=device, shift=sample_shift)`, then for each `t` in `sched.timesteps`:
    `x = sched.step(v, t, x, return_dict=False)[0]`.
    """

    def _reset_state(self):
        super()._reset_state()
        self.last_sample = None  # the sample the previous predictor started from
        self.this_order = None  # order used by the previous predictor (the corrector reuses it)

    def step(self, model_output, timestep, sample, return_dict=False, generator=None):
        """One predictor-corrector step.

        Args:
            model_output: predicted velocity v (e.g. [1, C, F, H, W]), same shape as `sample`.
            timestep: the current timestep (an entry of `self.timesteps`).
            sample: the current sample x.
            return_dict: False -> plain tuple `(prev_sample,)`; True -> `FlowStepOutput`.
            generator: unused (deterministic solver); accepted for API compatibility.

        Returns:
            A tuple whose [0] is the next sample (the x0 prediction at the final step).
        """
        index = self._begin_step(timestep)
        x0_pred = sample - self.sigmas[index] * model_output
        if index > 0 and self.last_sample is not None:
            sample = self._corrector(x0_pred, self.last_sample, sample, index, self.this_order)
        self._push_x0(x0_pred)
        # Lower order at the end (N - i) and during the warm-up (lower_order_nums + 1).
        self.this_order = min(self.solver_order, self.num_inference_steps - index, self.lower_order_nums + 1)
        self.last_sample = sample
        prev_sample = self._predictor(sample, index, self.this_order)
        self.lower_order_nums = min(self.lower_order_nums + 1, self.solver_order)
        self._step_index += 1
        return self._wrap(prev_sample, return_dict)

    def _phi(self, lambda_t, lambda_s0):
        """(h, hh = -h, h*phi_1 = expm1(hh), B(h) = expm1(hh)) for the step lambda_s0 -> lambda_t."""
        h = lambda_t - lambda_s0
        hh = -h
        return h, hh, torch.expm1(hh), torch.expm1(hh)

    def _predictor(self, sample, index, order):
        """UniP-bh2 from sigma_index to sigma_index+1, using the stored x0 predictions."""
        alpha_t, sigma_t, lambda_t = self._alpha_sigma_lambda(index + 1)
        _, sigma_s0, lambda_s0 = self._alpha_sigma_lambda(index)
        h, _, h_phi_1, b_h = self._phi(lambda_t, lambda_s0)
        m0 = self.x0_history[-1]
        prev_sample = sigma_t / sigma_s0 * sample - alpha_t * h_phi_1 * m0
        if order == 2:
            _, _, lambda_s1 = self._alpha_sigma_lambda(index - 1)
            r = (lambda_s1 - lambda_s0) / h
            d1 = (self.x0_history[-2] - m0) / r
            prev_sample = prev_sample - alpha_t * b_h * (0.5 * d1)  # the order-2 predictor uses rho = 0.5
        return prev_sample.to(sample.dtype)

    def _corrector(self, x0_new, last_sample, sample, index, order):
        """UniC-bh2 of the step sigma_index-1 -> sigma_index with the new x0 prediction `x0_new`.

        `self.x0_history` still ends with the x0 prediction of step index-1 (m0) when this runs.
        """
        alpha_t, sigma_t, lambda_t = self._alpha_sigma_lambda(index)
        _, sigma_s0, lambda_s0 = self._alpha_sigma_lambda(index - 1)
        h, hh, h_phi_1, b_h = self._phi(lambda_t, lambda_s0)
        m0 = self.x0_history[-1]
        corrected = sigma_t / sigma_s0 * last_sample - alpha_t * h_phi_1 * m0
        d1_t = x0_new - m0
        if order == 1:
            return (corrected - alpha_t * b_h * (0.5 * d1_t)).to(last_sample.dtype)
        _, _, lambda_s1 = self._alpha_sigma_lambda(index - 2)
        r = (lambda_s1 - lambda_s0) / h
        d1 = (self.x0_history[-2] - m0) / r
        rho = self._corrector_weights(r, hh, b_h).to(last_sample.dtype)
        correction = rho[0] * d1 + rho[1] * d1_t
        return (corrected - alpha_t * b_h * correction).to(last_sample.dtype)

    @staticmethod
    def _corrector_weights(r, hh, b_h):
        """Solve R rho = b for the order-2 corrector (fp32, like upstream).

        R has rows r_k^0 and r_k^1 for r_k = [r, 1]; b_k = g_k * k! / B(h) with g_1 = phi_1 / hh - 1 and
        g_2 = g_1 / hh - 1/2!.
        """
        rks = torch.stack([r, torch.ones_like(r)])
        matrix = torch.stack([torch.pow(rks, 0), torch.pow(rks, 1)])  # [[1, 1], [r, 1]]
        g1 = torch.expm1(hh) / hh - 1
        g2 = g1 / hh - 0.5
        rhs = torch.stack([g1 * 1 / b_h, g2 * 2 / b_h])
        return torch.linalg.solve(matrix, rhs)
