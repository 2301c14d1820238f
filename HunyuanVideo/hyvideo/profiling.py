"""HunyuanVideo adapter of the ProfilingDiT profiler, through the model's attention seam.

Not an upstream module (the official release has no profiling code, method.md section 0).

While a :class:`HunyuanProfiling` block is active (everything is installed through one
:class:`profilingdit.seams.Seams` and undone after it):

* every double- and single-stream block's ``attention_kernel`` is wrapped: the wrapper first measures the attention
  each image token receives, then calls the kernel it wraps, so outputs are unchanged (bit-identical);
* joint text tokens (method.md section 2.1 item 2 and 2.2): the softmax is the model's own, over the image keys
  and the valid text keys (the official segment 1); only image queries are averaged, and only image keys are
  scored (the text tokens have no place in a spatial foreground mask);
* a forward pre-hook reads the token grid and the input latent, a forward hook takes the velocity prediction v
  and forms the clean estimate ``x0 = x_t - sigma * v`` (``--flow-reverse`` sampling, ``sigma = t / 1000``);
  with batched classifier-free guidance ([uncond ; cond], as the pipeline runs it) the two halves are combined
  with ``guidance_scale`` first;
* the :class:`ProfilingRecorder` is the model's block cache, so the pipeline's ``cache.step(i, branch)`` tells it
  the step.

Sequence parallelism is not supported while profiling (a rank would see only its image shard).
"""

from __future__ import annotations

import torch

from common_cache.profiling import ProfilingRecorder, received_attention, split_frames
from common_cache.profiling.session import ModelProfiling

from .modules.models import HYVideoDiffusionTransformer


class HunyuanProfiling(ModelProfiling):
    """Context manager that profiles every generation of ``model`` run inside it.

    Args:
        model: the HunyuanVideo DiT (no cache attached).
        recorder: collects the statistics (``groups=("single",)`` reproduces the paper, which profiles only the
            single-stream blocks; the default records both stacks).
        guidance_scale: classifier-free guidance of batched [uncond ; cond] forwards (ignored for batch 1).
        num_train_timesteps: timestep -> sigma.
        query_chunk / key_chunk: tile sizes of the received-attention computation.
    """

    def __init__(self, model: HYVideoDiffusionTransformer, recorder: ProfilingRecorder, guidance_scale: float = 1.0,
                 num_train_timesteps: int = 1000, query_chunk: int = 256, key_chunk: int | None = None):
        super().__init__(model, recorder, num_train_timesteps, query_chunk, key_chunk)
        self.guidance_scale = guidance_scale
        self._grid: tuple[int, int, int] | None = None
        self._input: tuple[torch.Tensor, torch.Tensor] | None = None

    def _kernel_owners(self) -> list[torch.nn.Module]:
        return [*self.model.double_blocks, *self.model.single_blocks]

    def _observing(self, kernel):
        """``kernel`` preceded by the received-attention measurement of the image tokens (recorded blocks only)."""

        def observe_then_attend(q, k, v, segments):
            if self.recorder.current_block is not None:
                self._record(q, k, segments)
            return kernel(q, k, v, segments)

        return observe_then_attend

    def _record(self, q, k, segments) -> None:
        tt, th, tw = self._grid
        n_img = q.shape[1] - segments.txt_len
        if n_img != tt * th * tw:
            raise ValueError(f"{n_img} image tokens for a {tt}x{th}x{tw} grid: profiling under sequence "
                             "parallelism is not supported")
        key_lens = [n_img + valid for valid in segments.valid_lens]
        with torch.no_grad():
            received = received_attention(q, k, key_lens, [n_img] * q.shape[0], query_chunk=self.query_chunk,
                                          key_chunk=self.key_chunk)  # [B, L]
        frames = split_frames(received[:, :n_img], tt, th * tw)  # [B, T, P]
        self.recorder.record_attention(frames.mean(dim=0))

    def _on_input(self, module, args, kwargs):
        x = args[0] if args else kwargs["x"]
        t = args[1] if len(args) > 1 else kwargs["t"]
        self._grid = module.token_grid(x)
        self._input = (x, t)

    def _on_output(self, module, args, kwargs, output):
        velocity = (output["x"] if isinstance(output, dict) else output).float()  # [B, C, t, h, w]
        x, t = self._input
        sigma = t.reshape(-1)[0].double().item() / self.num_train_timesteps
        clean = x.float() - sigma * velocity
        if velocity.shape[0] == 2:  # batched CFG, [uncond ; cond] as the pipeline concatenates them
            velocity = velocity[0] + self.guidance_scale * (velocity[1] - velocity[0])
            clean = clean[0] + self.guidance_scale * (clean[1] - clean[0])
        elif velocity.shape[0] == 1:
            velocity, clean = velocity[0], clean[0]
        else:
            raise ValueError(f"profiling expects batch 1 (or 2 with CFG), got {velocity.shape[0]}")
        self.recorder.record_prediction(velocity, clean)
