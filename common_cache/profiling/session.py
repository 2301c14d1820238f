"""What both models' profilers share: the context manager that attaches the recorder, wraps every attention
kernel, hooks the model's input and output and undoes all of it on exit (``wan.profiling.WanProfiling``,
``hyvideo.profiling.HunyuanProfiling``), and the prompt loop (:func:`record_prompts`, also used on diffusers
pipelines)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from common_cache.policy import attach_cache, detach_cache
from common_cache.profiling.recorder import ProfilingRecorder
from common_cache.profiling.statistics import ProfileStatistics
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


def record_prompts(recorder: ProfilingRecorder, prompts: Sequence, generate: Callable[[int], object],
                   skip: int = 0, on_prompt_done: Callable[[int, ProfileStatistics], None] | None = None,
                   ) -> ProfileStatistics:
    """The profilers' prompt loop: ``generate(i)`` for prompts ``skip..``, each closed as one generation.

    Args:
        recorder: the recorder, attached to the model (inside a profiling context).
        prompts: all profiling prompts (a non-string prompt, e.g. embeddings, is listed as ``"prompt <i>"``).
        generate: runs the generation of prompt ``i`` (with the caller's seed and settings).
        skip: prompts already profiled (resume): not run again.
        on_prompt_done: called after each prompt with its index and the statistics so far (e.g. to save them).

    Returns:
        The statistics over all prompts.
    """
    for index in range(skip, len(prompts)):
        recorder.prompt_index = index
        generate(index)
        statistics = recorder.end()
        prompt = prompts[index]
        statistics.prompts.append(prompt if isinstance(prompt, str) else f"prompt {index}")
        if on_prompt_done is not None:
            on_prompt_done(index, statistics)
    return recorder.statistics
