"""Sequence parallelism (Ulysses, Ring and hybrid USP) shared by both models, and the cache's cross-rank helpers.

References: yunchang 0.6.4 ``LongContextAttention`` / ``set_seq_parallel_pg`` (the engine inside xDiT); xDiT's USP
wrappers for the layout (shard at the first block, gather after the head); cache-dit ``cache_manager.py`` (a
data-dependent cache decision is all-reduced across the group before ``.item()``). Own code.

One code path on GPUs (NCCL) and CPUs (gloo): the launcher's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``,
``torch.distributed``, and yunchang's ``LongContextAttention`` with Ulysses degree U and ring degree R
(U x R = world size). The only device-specific part is the attention kernel yunchang calls: flash-attn on a GPU
when installed (else torch's flash kernel), and on a CPU torch's CPU flash kernel, which yunchang cannot select
itself (see :func:`use_cpu_flash_kernel`).

Sequence layout: every sequence is padded to a multiple of the world size and rank r holds the r-th equal chunk
(:meth:`SequenceParallel.shard`); after the model's head the chunks are gathered back and the padding dropped
(:meth:`SequenceParallel.gather`). Attention has no mask argument in yunchang, so keys that must not be seen
(padding) are masked exactly by one extra head-dim column: queries carry 1 there, valid keys 0 and masked keys a
large negative value, so a masked key's logit drops by ~1e3 and its softmax weight underflows to 0, with the scale
kept at the original ``head_dim ** -0.5`` (:meth:`SequenceParallel.attention`).

The cache under sequence parallelism: every rank caches its own shard, and the decisions must be identical on every
rank or the ranks stop meeting in the same collectives (a hang). Static schedules give that by construction; a
data-dependent rule must decide on a metric reduced over the group with :func:`all_reduce_mean` before ``.item()``.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

# A masked key's extra column. With queries carrying 1.0 there, the key's logit drops by 3e4 * head_dim**-0.5
# (~2650 at head_dim 128): exp() of that is 0 in every float type, while the value itself stays finite in fp16 and
# bf16 (-inf would turn a fully masked ring step into NaN when yunchang merges log-sum-exps).
MASKED_KEY_VALUE = -30000.0
# Width of the appended columns: flash kernels want head dims that are multiples of 8.
MASK_COLUMNS = 8
COLLECTIVE_TIMEOUT = timedelta(minutes=30)


# ---------------------------------------------------------------------------------------------------------------
# Launch environment and argument checks (nothing here needs an initialised process group)


@dataclass(frozen=True)
class LaunchEnv:
    """What ``torchrun`` tells a process (defaults: a single process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_environ(cls) -> LaunchEnv:
        """Reads ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``.

        Raises:
            ValueError: a value that is not an integer in range.
        """
        values = {}
        for field, name, default in (("rank", "RANK", 0), ("world_size", "WORLD_SIZE", 1),
                                     ("local_rank", "LOCAL_RANK", 0)):
            text = os.environ.get(name, str(default))
            try:
                values[field] = int(text)
            except ValueError:
                raise ValueError(f"environment variable {name}={text!r} is not an integer (set by torchrun)") from None
        env = cls(**values)
        if env.world_size < 1 or not 0 <= env.rank < env.world_size or env.local_rank < 0:
            raise ValueError(f"RANK={env.rank}, WORLD_SIZE={env.world_size}, LOCAL_RANK={env.local_rank} are "
                             "inconsistent: expected 0 <= RANK < WORLD_SIZE (set by torchrun)")
        return env


@dataclass(frozen=True)
class ParallelDegrees:
    """Sequence-parallel degrees of a run.

    Attributes:
        ulysses: Ulysses degree U (all-to-all over heads); the head count must be divisible by it.
        ring: ring-attention degree R (key/value blocks passed around a ring).
    """

    ulysses: int = 1
    ring: int = 1

    @property
    def size(self) -> int:
        """Processes the degrees need (U x R)."""
        return self.ulysses * self.ring

    def tag(self) -> str:
        """Short stable name of the layout, e.g. ``u2r1``."""
        return f"u{self.ulysses}r{self.ring}"


def check_parallel_degrees(degrees: ParallelDegrees, world_size: int, heads: int | None = None,
                           flags: tuple[str, str] = ("--ulysses_size", "--ring_size")) -> None:
    """Checks the degrees against the launch and the model before any process group exists.

    Args:
        degrees: the requested degrees.
        world_size: processes launched (``WORLD_SIZE``).
        heads: attention heads per block (None: not known yet).
        flags: the command line's names of the two degrees, for the messages.

    Raises:
        ValueError: naming the flags, the values and what is allowed.
    """
    uly, ring = flags
    if degrees.ulysses < 1 or degrees.ring < 1:
        raise ValueError(f"{uly} {degrees.ulysses} / {ring} {degrees.ring}: expected integers >= 1")
    if degrees.size != world_size:
        launch = "one process" if world_size == 1 else f"{world_size} processes"
        hint = (f"run with torchrun --nproc_per_node={degrees.size}" if world_size == 1 else
                f"pass {uly} x {ring} = {world_size}, e.g. {uly} {world_size} {ring} 1")
        raise ValueError(f"{uly} {degrees.ulysses} x {ring} {degrees.ring} = {degrees.size} does not match the "
                         f"{launch} launched (WORLD_SIZE={world_size}): {hint}")
    if heads is not None:
        check_heads(degrees, heads, flags[0])


def check_heads(degrees: ParallelDegrees, heads: int, flag: str = "--ulysses_size") -> None:
    """Raises ValueError when ``heads`` is not divisible by the Ulysses degree (it scatters whole heads)."""
    if heads % degrees.ulysses:
        allowed = [d for d in range(1, heads + 1) if heads % d == 0]
        raise ValueError(f"{flag} {degrees.ulysses} does not divide the model's {heads} attention heads: "
                         f"allowed Ulysses degrees {allowed} (use the ring degree for the rest)")


def quiet_other_ranks(rank: int) -> None:
    """Ranks other than 0 log warnings and errors only (rank 0 logs the run)."""
    if rank != 0:
        logging.getLogger().setLevel(logging.WARNING)


# ---------------------------------------------------------------------------------------------------------------
# Collectives the cache needs (no-ops on a single process)


def group_size(group: dist.ProcessGroup | None = None) -> int:
    """Processes in ``group`` (the default group when None); 1 without an initialised process group."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


def all_reduce_mean(tensor: torch.Tensor, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """The element-wise mean of ``tensor`` over the processes of ``group``; ``tensor`` itself on one process.

    Every rank must call it at the same point (it is a collective). A cache decision computed from the result (for
    example a mean over the local shard, whose average over equal shards is the global mean) is the same on every
    rank. The input is never modified.

    Args:
        tensor: any floating tensor, on the process group's device (CPU for gloo, CUDA for NCCL).
        group: the sequence-parallel group (None: the default group).

    Returns:
        A new tensor (or ``tensor`` itself without a process group).
    """
    size = group_size(group)
    if size == 1:
        return tensor
    reduced = tensor.detach().clone()
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM, group=group)
    return reduced / size


def broadcast_object(obj: Any, src: int = 0, group: dist.ProcessGroup | None = None) -> Any:
    """Rank ``src``'s ``obj`` on every rank (seeds, prompts); ``obj`` itself on one process."""
    if group_size(group) == 1:
        return obj
    payload = [obj]
    dist.broadcast_object_list(payload, src=src, group=group)
    return payload[0]


# ---------------------------------------------------------------------------------------------------------------
# The engine


def use_cpu_flash_kernel() -> None:
    """Lets yunchang's torch-flash path run on a CPU (call only when the tensors are on the CPU).

    yunchang calls ``aten::_scaled_dot_product_flash_attention``, which has no CPU kernel; its CPU twin has the
    same arguments and also returns the log-sum-exp that the ring merge needs (``attn_type=torch_math`` returns
    zeros there and gives wrong ring results). Process-wide, as yunchang looks the name up at call time.
    """
    import yunchang.kernels.attention as yunchang_kernels

    yunchang_kernels._scaled_dot_product_flash_attention = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu


def _long_context_attention(device: torch.device):
    """yunchang's USP module with the kernel for ``device`` (flash-attn on a GPU when installed)."""
    from yunchang import LongContextAttention
    from yunchang.globals import HAS_FLASH_ATTN
    from yunchang.kernels import AttnType

    if device.type == "cuda" and HAS_FLASH_ATTN:
        return LongContextAttention(ring_impl_type="basic", attn_type=AttnType.FA)
    if device.type == "cpu":
        use_cpu_flash_kernel()
    return LongContextAttention(ring_impl_type="basic_pytorch", attn_type=AttnType.TORCH_FLASH)


class SequenceParallel:
    """One process's handle on the sequence-parallel group: shard, gather, attention.

    Build it with :func:`init_sequence_parallel` (which creates the process groups); the model wrappers of both
    models (``wan.distributed``, ``hyvideo.parallel``) take it as a constructor argument.

    Args:
        degrees: Ulysses and ring degrees (their product is the group size).
        rank: this process's rank in the group (it holds chunk ``rank`` of every sequence).
        device: the compute device of this process.
        attention_module: yunchang's ``LongContextAttention`` over this group's Ulysses and ring subgroups.
        group: the whole sequence-parallel group (None: the default group).
    """

    def __init__(self, degrees: ParallelDegrees, rank: int, device: torch.device, attention_module,
                 group: dist.ProcessGroup | None = None):
        self.degrees = degrees
        self.world_size = degrees.size
        self.rank = rank
        self.device = device
        self.group = group
        self._attention = attention_module

    def padded_length(self, length: int) -> int:
        """``length`` rounded up to a multiple of the world size."""
        return math.ceil(length / self.world_size) * self.world_size

    def shard(self, x: torch.Tensor, dim: int = 1, pad_value: float = 0.0) -> torch.Tensor:
        """This rank's chunk of ``x`` along ``dim`` after padding it to a multiple of the world size.

        Args:
            x: a full tensor, identical on every rank.
            dim: the sequence dimension.
            pad_value: value of the padding entries.

        Returns:
            ``x.shape`` with ``dim`` of size ``padded_length(x.shape[dim]) / world_size`` (contiguous).
        """
        length = x.shape[dim]
        pad = self.padded_length(length) - length
        if pad:
            shape = list(x.shape)
            shape[dim] = pad
            x = torch.cat([x, x.new_full(shape, pad_value)], dim=dim)
        return x.chunk(self.world_size, dim=dim)[self.rank].contiguous()

    def gather(self, x: torch.Tensor, dim: int = 1, length: int | None = None) -> torch.Tensor:
        """Concatenates every rank's chunk along ``dim`` (rank order) and drops the padding: undoes :meth:`shard`.

        Args:
            x: this rank's chunk (the same shape on every rank).
            dim: the sequence dimension.
            length: the unpadded length (None: keep everything).

        Returns:
            The full tensor, identical on every rank.
        """
        chunks = [torch.empty_like(x) for _ in range(self.world_size)]
        dist.all_gather(chunks, x.contiguous(), group=self.group)
        full = torch.cat(chunks, dim=dim)
        return full if length is None else full.narrow(dim, 0, length)

    def local_positions(self, local_length: int, device: torch.device | None = None) -> torch.Tensor:
        """Global sequence positions ``[local_length]`` of this rank's chunk."""
        start = self.rank * local_length
        return torch.arange(start, start + local_length, device=device or self.device)

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_valid: torch.Tensor | None = None,
                  softmax_scale: float | None = None) -> torch.Tensor:
        """Attention of this rank's queries over every rank's keys (USP: Ulysses all-to-all, then ring).

        Args:
            q, k, v: ``[B, L_local, H, D]``: this rank's chunk of the sequence (the same length on every rank).
            key_valid: ``[B, L_local]`` bool, False for keys no query may see (padding); None when every key of
                every rank is valid. Whether it is None must be the same decision on every rank.
            softmax_scale: default ``D ** -0.5``.

        Returns:
            ``[B, L_local, H, D]`` in the dtype of ``q``.
        """
        head_dim = q.shape[-1]
        scale = head_dim**-0.5 if softmax_scale is None else softmax_scale
        out_dtype = q.dtype
        if q.device.type == "cuda":  # flash kernels compute in half precision, as the official USP path
            half = v.dtype if v.dtype in (torch.float16, torch.bfloat16) else torch.bfloat16
            q, k, v = q.to(half), k.to(half), v.to(half)
        if key_valid is not None:
            q, k, v = _append_mask_columns(q, k, v, key_valid)
        out = self._attention(q.contiguous(), k.contiguous(), v.contiguous(), softmax_scale=scale)
        return out[..., :head_dim].to(out_dtype)


def _append_mask_columns(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_valid: torch.Tensor):
    """Appends :data:`MASK_COLUMNS` columns that hide the keys where ``key_valid`` is False (see module doc)."""
    batch, length, heads, _ = q.shape
    if tuple(key_valid.shape) != (batch, length):
        raise ValueError(f"key_valid has shape {tuple(key_valid.shape)}; expected {(batch, length)}")
    q_extra = q.new_zeros(batch, length, heads, MASK_COLUMNS)
    q_extra[..., 0] = 1.0
    k_extra = k.new_zeros(batch, length, heads, MASK_COLUMNS)
    k_extra[..., 0] = torch.where(key_valid.to(k.device), 0.0, MASKED_KEY_VALUE)[:, :, None].to(k.dtype)
    v_extra = v.new_zeros(batch, length, heads, MASK_COLUMNS)
    return torch.cat([q, q_extra], -1), torch.cat([k, k_extra], -1), torch.cat([v, v_extra], -1)


def init_sequence_parallel(degrees: ParallelDegrees, env: LaunchEnv | None = None,
                           timeout: timedelta = COLLECTIVE_TIMEOUT) -> SequenceParallel:
    """Initialises ``torch.distributed`` (NCCL with CUDA, gloo otherwise) and the USP subgroups.

    Call it on every rank after the checks (:func:`check_parallel_degrees`), so that a bad value stops every rank
    before any rank waits for another.

    Args:
        degrees: Ulysses and ring degrees; their product must equal the world size.
        env: the launch environment (default: read from the environment variables).
        timeout: how long a collective may wait for the other ranks.

    Returns:
        The handle the model wrappers take.
    """
    from yunchang import set_seq_parallel_pg

    env = env or LaunchEnv.from_environ()
    check_parallel_degrees(degrees, env.world_size)
    if torch.cuda.is_available():
        torch.cuda.set_device(env.local_rank)
        device, backend = torch.device("cuda", env.local_rank), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method="env://", rank=env.rank, world_size=env.world_size,
                                timeout=timeout)
    set_seq_parallel_pg(degrees.ulysses, degrees.ring, env.rank, env.world_size)
    return SequenceParallel(degrees, env.rank, device, _long_context_attention(device))


def start_sequence_parallel(degrees: ParallelDegrees, env: LaunchEnv | None, shards: str) -> SequenceParallel | None:
    """A command line's launch: None on one process; else :func:`init_sequence_parallel`, ranks other than 0
    quietened (warnings and errors only) and the layout logged once. ``shards``: what each rank holds, for the log
    (e.g. "1/4 of the tokens")."""
    if degrees.size == 1:
        return None
    sp = init_sequence_parallel(degrees, env)
    quiet_other_ranks(sp.rank)
    logging.getLogger(__name__).info("sequence parallelism %s over %d processes on %s: every rank holds %s; cache "
                                     "buffers are per rank", degrees.tag(), sp.world_size, sp.device, shards)
    return sp


def shutdown() -> None:
    """Destroys the default process group if there is one (end of a run, success or error)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()

