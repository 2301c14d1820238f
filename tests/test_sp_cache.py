"""Cache decisions under sequence parallelism: identical on every rank, or the ranks stop meeting (torchrun, gloo).

A toy model whose hidden state is sharded over 2 ranks (each rank holds different tokens) runs a short denoising
loop under each cache policy; the worker (this file under torchrun) gathers every rank's decisions to rank 0.

* The delta cache's schedule is static: the same block calls on every rank by construction.
* TeaCache decides from the relative change of an indicator that, for HunyuanVideo, is computed from the image
  tokens, i.e. from this rank's shard. The shards below change at different rates (1% and 10% per step), so a
  decision taken from the local shard differs between the ranks: in a real model one rank would skip its blocks
  while the other waits inside their attention for it (a hang). The metric must be reduced over the group with
  ``profilingdit.parallel.all_reduce_mean`` before ``.item()``; then both ranks decide alike.
"""

from __future__ import annotations

import json
import os
import sys

import torch
from test_sp_engine import torchrun

from common_cache import CacheConfig, DeltaCache, StreamGroupConfig, UniformSchedule, attach_cache, run_blocks
from common_cache.teacache import UNCALIBRATED, TeaCache, TeaCacheConfig

STEPS = 10
RATES = (0.01, 0.1)  # relative change of the indicator per step on rank 0 and rank 1


class ShardedToy(torch.nn.Module):
    """Four blocks that scale their input; the TeaCache indicator is the local shard itself."""

    def __init__(self):
        super().__init__()
        self.scales = [1.01, 0.99, 1.02, 0.98]
        self.block_cache = None

    def stream_group_depths(self) -> dict[str, int]:
        return {"blocks": len(self.scales)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blocks = [lambda h, s=s: h * s for s in self.scales]
        return run_blocks(self.block_cache, "blocks", blocks, x, cache_signals={"shard": x})


def _decisions(cache, rank: int) -> list[list[int]]:
    """The loop's per-step computed block calls on this rank."""
    model = ShardedToy()
    attach_cache(model, cache)
    cache.begin(STEPS)
    for step in range(STEPS):
        x = torch.full((1, 8, 4), 1.0 + RATES[rank] * step)  # [B, local tokens, C]: this rank's shard
        with cache.step(step, "cond"):
            model(x)
    return cache.stats.groups["blocks"].computed


def _worker(out_path: str) -> None:
    from profilingdit.parallel import shutdown

    torch.distributed.init_process_group("gloo")
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    group = StreamGroupConfig("blocks", 4, (1, 2), 2, UniformSchedule(3))
    tea = TeaCacheConfig(threshold=0.15, coefficients=UNCALIBRATED, indicator="shard")
    local = {"delta": _decisions(DeltaCache(CacheConfig((group,))), rank), "teacache": _decisions(TeaCache(tea), rank)}
    gathered = [None] * world
    torch.distributed.all_gather_object(gathered, local)
    if rank == 0:
        with open(out_path, "w") as handle:
            json.dump(gathered, handle)
    shutdown()


def test_cache_decisions_agree_across_ranks(tmp_path):
    out = str(tmp_path / "decisions.json")
    result = torchrun(2, os.path.abspath(__file__), out)
    assert result.returncode == 0, result.stdout + result.stderr
    rank0, rank1 = json.load(open(out))
    print(rank0, rank1, sep="\n")
    assert rank0["delta"] == rank1["delta"] == [4, 4, 4, 2, 2, 4, 2, 2, 4, 2]
    assert 4 * STEPS > sum(rank0["teacache"])  # the rule does skip on this input
    assert rank0["teacache"] == rank1["teacache"]  # needs the all-reduced metric in common_cache/teacache.py


if __name__ == "__main__":
    _worker(sys.argv[1])
