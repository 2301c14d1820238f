"""Multi-process Wan2.1: sequence parallelism (Ulysses, Ring, hybrid) under torchrun, NCCL or gloo.

References: Wan2.1 wan/distributed/ (the official USP path through xDiT; FSDP is not re-implemented).
"""

from .launch import check_parallel_args, degrees_from_args, init_parallel
from .sequence_parallel import parallelize_wan_model, usp_self_attention

__all__ = ["check_parallel_args", "degrees_from_args", "init_parallel", "parallelize_wan_model",
           "usp_self_attention"]
