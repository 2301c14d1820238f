"""generate.py's multi-process flags: checks before any process group exists, then the USP engine.

References: Wan2.1 generate.py (`--ulysses_size`, `--ring_size`, `--t5_fsdp`, `--dit_fsdp`; torchrun's RANK,
WORLD_SIZE and LOCAL_RANK; ulysses x ring = world size; heads divisible by the Ulysses degree).

Every check runs on every rank before ``init_process_group``: a bad combination stops each rank with the same
message and exit code, and no rank is left waiting for another.
"""

from __future__ import annotations

import argparse

from profilingdit.parallel import (
    LaunchEnv,
    ParallelDegrees,
    SequenceParallel,
    check_parallel_degrees,
    start_sequence_parallel,
)

FLAGS = ("--ulysses_size", "--ring_size")


def degrees_from_args(args: argparse.Namespace) -> ParallelDegrees:
    """The sequence-parallel degrees of the command line."""
    return ParallelDegrees(args.ulysses_size, args.ring_size)


def check_parallel_args(args: argparse.Namespace, num_heads: int, env: LaunchEnv | None = None) -> LaunchEnv:
    """Checks the multi-process flags against the launch (torchrun) and the model's head count.

    Args:
        args: the parsed command line.
        num_heads: attention heads of the task's DiT.
        env: the launch environment (default: read from the environment).

    Returns:
        The launch environment.

    Raises:
        ValueError: FSDP flags, degrees that do not multiply to the world size, or a Ulysses degree that does not
            divide the head count.
    """
    env = env or LaunchEnv.from_environ()
    if args.t5_fsdp or args.dit_fsdp:
        flags = " and ".join(f for f, on in (("--t5_fsdp", args.t5_fsdp), ("--dit_fsdp", args.dit_fsdp)) if on)
        raise ValueError(f"{flags}: FSDP weight sharding is not supported by this version (every process holds the "
                         "whole model); drop the flag, and split the sequence over the processes with "
                         "--ulysses_size/--ring_size")
    check_parallel_degrees(degrees_from_args(args), env.world_size, num_heads, FLAGS)
    return env


def init_parallel(args: argparse.Namespace, env: LaunchEnv | None = None) -> SequenceParallel | None:
    """The USP engine of a torchrun launch (process group, Ulysses and ring groups), None on one process.

    Call after :func:`check_parallel_args`. Ranks other than 0 log warnings and errors only from here on.
    """
    degrees = degrees_from_args(args)
    return start_sequence_parallel(degrees, env, f"1/{degrees.size} of the tokens")
