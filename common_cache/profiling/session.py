"""What both models' profiling context managers share: attach the recorder, wrap every attention kernel, hook the
model's input and output, and undo all of it on exit (``wan.profiling.WanProfiling``,
``hyvideo.profiling.HunyuanProfiling``)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from common_cache.policy import attach_cache, detach_cache
from common_cache.profiling.recorder import ProfilingRecorder
from profilingdit.seams import Seams


class ModelProfiling:
    """Base of the model adapters' profilers: a context manager that profiles every generation run inside it.

    A subclass names the modules holding an ``attention_kernel`` seam (:meth:`_kernel_owners`), wraps a kernel with
    its measurement (:meth:`_observing`), and implements the forward hooks ``_on_input`` (pre-hook, with kwargs)
    and ``_on_output`` (hook, with kwargs). Everything is installed through one :class:`profilingdit.seams.Seams`
    and undone on exit, so the model is exactly as before.

    Args:
        model: the DiT; it must have no cache attached.
        recorder: collects the statistics.
        num_train_timesteps: timestep -> sigma (``sigma = t / num_train_timesteps``).
        query_chunk / key_chunk: tile sizes of the received-attention computation.
    """

    def __init__(self, model: nn.Module, recorder: ProfilingRecorder, num_train_timesteps: int = 1000,
                 query_chunk: int = 256, key_chunk: int | None = None) -> None:
        self.model = model
        self.recorder = recorder
        self.num_train_timesteps = num_train_timesteps
        self.query_chunk = query_chunk
        self.key_chunk = key_chunk
        self._seams = Seams()

    def __enter__(self):
        """Attaches the recorder, wraps the kernels and adds the hooks.

        Raises:
            ValueError: the model already has a block cache attached.
        """
        if self.model.block_cache is not None:
            raise ValueError("the model already has a block cache attached: profile the uncached model")
        attach_cache(self.model, self.recorder)
        for owner in self._kernel_owners():
            self._seams.swap(owner, "attention_kernel", self._observing(owner.attention_kernel))
        self._seams.hook(self.model.register_forward_pre_hook(self._on_input, with_kwargs=True))
        self._seams.hook(self.model.register_forward_hook(self._on_output, with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        self._seams.undo()
        detach_cache(self.model)

    def _kernel_owners(self) -> list[nn.Module]:
        """The modules whose ``attention_kernel`` is wrapped."""
        raise NotImplementedError

    def _observing(self, kernel: Callable) -> Callable:
        """``kernel`` preceded by the measurement of the queries and keys it gets."""
        raise NotImplementedError
