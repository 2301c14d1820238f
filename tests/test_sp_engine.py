"""The sequence-parallel engine and both model wrappers under real torchrun + gloo processes.

Run by pytest, this file launches itself with torchrun; under torchrun (``__main__``) it is the worker: for each
layout it builds the engine, checks shard/gather and USP attention (padding keys masked) against one-process SDPA
on the same full tensors, and runs tiny random Wan2.1 and HunyuanVideo DiTs on inputs whose sequences do not divide
by the world size (token padding, per-sample grids, padded text, a batch of two) against the same model on one
process; it writes the measured errors to a JSON file. The argument checks run in-process.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from profilingdit.parallel import (
    LaunchEnv,
    ParallelDegrees,
    all_reduce_mean,
    broadcast_object,
    check_parallel_degrees,
)

ATTENTION_TOLERANCE = 2e-6  # fp32 on the CPU; measured ~4e-7
MODEL_TOLERANCE = 1e-5  # one forward of a tiny fp32 DiT; measured ~1e-6


def torchrun(nproc: int, script: str, *args: str, cwd: str | None = None, timeout: int = 120,
             env_extra: dict | None = None) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=nproc script args`` with one thread per process.

    A worker script imports the installed packages (``wan``, ``hyvideo``, ``common_cache``, ``profilingdit``) and,
    for a test module, the test helpers beside it (the script's own folder is on the path).
    """
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MODEL_BASE")}
    env.update({"OMP_NUM_THREADS": "1", **(env_extra or {})})
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", script,
               *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def write_layout_results(env, layouts: list[str], generate, out_path: str) -> None:
    """Worker side of the pipeline tests: ``generate(name, cached) -> (video, cache buffer bytes)`` runs the
    one-process pipeline ("single") and every layout ("UxR"), without and with the cache. Rank 0 writes, per layout
    (and layout + "+cache"): every rank's buffer bytes, the one-process ones, and the largest difference from the
    one-process video."""
    result = {}
    for cached in (False, True):
        reference, reference_bytes = generate("single", cached)
        for layout in layouts:
            video, buffer_bytes = generate(layout, cached)
            buffers = [None] * env.world_size
            torch.distributed.all_gather_object(buffers, buffer_bytes)
            key = f"{layout}{'+cache' if cached else ''}"
            result[key] = {"buffers": buffers, "single_buffer": reference_bytes}
            if env.rank == 0:
                result[key]["max_abs"] = (video - reference).abs().max().item()
    if env.rank == 0:
        with open(out_path, "w") as handle:
            json.dump(result, handle)


def run_layouts(script: str, args: list[str], layouts: list[str], out_path: str,
                tolerance: float) -> tuple[dict, int]:
    """Test side: runs ``script`` (whose worker calls :func:`write_layout_results` with ``out_path``) on U x R
    processes and checks every layout's video against one process, without and with the cache. Returns the
    measurements and the process count."""
    processes = math.prod(int(d) for d in layouts[0].split("x"))
    result = torchrun(processes, script, *args, out_path, *layouts, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    with open(out_path) as handle:
        measured = json.load(handle)
    print(json.dumps(measured))
    for layout in layouts:
        assert measured[layout]["max_abs"] < tolerance, layout
        assert measured[layout + "+cache"]["max_abs"] < tolerance, layout
    return measured, processes


# ---------------------------------------------------------------------------------------------------------------
# Worker (under torchrun)


def _reference_attention(q, k, v, key_valid):
    mask = None if key_valid is None else key_valid[:, None, None, :]
    out = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                           attn_mask=mask)
    return out.transpose(1, 2)


def _attention_errors(sp) -> dict[str, float]:
    """USP vs full SDPA on a 7-token sequence (padded to a multiple of the world size), batch 2."""
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 7, 4, 16, generator=generator) for _ in range(3))
    errors = {}
    for name, valid_lens in (("unmasked", None), ("masked", (7, 4))):
        length = sp.padded_length(7)
        if valid_lens is None and length != 7:
            q_, k_, v_ = (torch.randn(2, length, 4, 16, generator=generator) for _ in range(3))
        else:
            q_, k_, v_ = q, k, v
        full_valid = None
        if valid_lens is not None:
            full_valid = torch.arange(q_.shape[1])[None, :] < torch.tensor(valid_lens)[:, None]  # [B, L]
        reference = _reference_attention(q_, k_, v_, full_valid)
        local_valid = None
        if valid_lens is not None:
            local_valid = sp.local_positions(length // sp.world_size)[None, :] < torch.tensor(valid_lens)[:, None]
        out = sp.attention(sp.shard(q_), sp.shard(k_), sp.shard(v_), key_valid=local_valid)
        gathered = sp.gather(out, length=q_.shape[1])
        rows = q_.shape[1] if valid_lens is None else min(valid_lens)
        errors[name] = (gathered[:, :rows] - reference[:, :rows]).abs().max().item()
    return errors


def _wan_error(sp) -> float:
    """A tiny random Wan2.1 DiT, one process vs this layout: two samples of 27 and 12 tokens (seq_len 27); after
    the seams are undone the model is a one-process model again (bit-identical, else the error is inf)."""
    from wan.distributed import parallelize_wan_model
    from wan_ckpt_dit import random_tiny_wan

    reference, parallel = random_tiny_wan(seed=3), random_tiny_wan(seed=3)
    seams = parallelize_wan_model(parallel, sp)
    generator = torch.Generator().manual_seed(4)
    x = [torch.randn(16, 3, 6, 6, generator=generator), torch.randn(16, 2, 4, 6, generator=generator)]
    context = [torch.randn(5, 32, generator=generator), torch.randn(9, 32, generator=generator)]
    inputs = {"x": x, "t": torch.tensor([900.0, 300.0]), "context": context, "seq_len": 27}
    with torch.no_grad():
        expected, got = reference(**inputs), parallel(**inputs)
        seams.undo()
        undone = parallel(**inputs)
    if not all(torch.equal(a, b) for a, b in zip(expected, undone)):
        return math.inf
    return max((a - b).abs().max().item() for a, b in zip(expected, got))


def _hunyuan_error(sp) -> float:
    """A tiny random HunyuanVideo DiT, one process vs this layout: 27 image tokens, 10 text tokens (6 and 10 valid);
    inf unless undoing the seams gives the one-process output again, bit for bit."""
    from hy_ckpt_dit import make_tiny_dit
    from hyvideo.modules import get_nd_rotary_pos_embed
    from hyvideo.parallel import parallelize_transformer

    reference, parallel = make_tiny_dit(seed=5), make_tiny_dit(seed=5)
    seams = parallelize_transformer(parallel, sp)
    generator = torch.Generator().manual_seed(6)
    cos, sin = get_nd_rotary_pos_embed(reference.rope_dim_list, [3, 3, 3], theta=256.0)
    inputs = {"x": torch.randn(2, 16, 3, 6, 6, generator=generator), "t": torch.tensor([999.0, 500.0]),
              "text_states": torch.randn(2, 10, 32, generator=generator),
              "text_mask": (torch.arange(10)[None, :] < torch.tensor([6, 10])[:, None]).long(),
              "text_states_2": torch.randn(2, 16, generator=generator), "freqs_cos": cos, "freqs_sin": sin,
              "guidance": torch.tensor([6016.0, 3000.0])}
    with torch.no_grad():
        expected, got = reference(**inputs)["x"], parallel(**inputs)["x"]
        seams.undo()
        undone = parallel(**inputs)["x"]
    if not torch.equal(expected, undone) or parallel._forward_pre_hooks:
        return math.inf
    return (expected - got).abs().max().item()


def _worker(out_path: str, layouts: list[str]) -> None:
    from profilingdit.parallel import init_sequence_parallel, shutdown

    env = LaunchEnv.from_environ()
    result = {}
    for layout in layouts:
        ulysses, ring = (int(d) for d in layout.split("x"))
        sp = init_sequence_parallel(ParallelDegrees(ulysses, ring), env)
        x = torch.arange(2 * 7 * 3, dtype=torch.float32).view(2, 7, 3)
        result[layout] = {
            "shard_shape": list(sp.shard(x).shape),
            "roundtrip_exact": bool(torch.equal(sp.gather(sp.shard(x), length=7), x)),
            **_attention_errors(sp),
            "wan": _wan_error(sp),
            "hunyuan": _hunyuan_error(sp),
        }
    # A metric that differs per rank (a mean over the local shard): only the reduced one gives one decision.
    local = torch.tensor([0.1 + 0.2 * env.rank])
    threshold = 0.1 + 0.1 * (env.world_size - 1)
    result["local_decision"] = bool(local.item() < threshold)
    result["reduced_decisions"] = [bool(all_reduce_mean(local).item() < threshold)]
    decisions = [None] * env.world_size
    torch.distributed.all_gather_object(decisions, (result["local_decision"], result["reduced_decisions"][0]))
    result["all_local"] = [d[0] for d in decisions]
    result["all_reduced"] = [d[1] for d in decisions]
    result["broadcast"] = broadcast_object({"seed": 1234 + env.rank, "prompt": f"rank {env.rank}"})
    if env.rank == 0:
        with open(out_path, "w") as handle:
            json.dump(result, handle)
    shutdown()


# ---------------------------------------------------------------------------------------------------------------
# Tests


def run_engine(tmp_path, nproc: int, layouts: list[str]) -> dict:
    out = str(tmp_path / "engine.json")
    result = torchrun(nproc, os.path.abspath(__file__), out, *layouts)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.load(open(out))


def test_two_ranks_ulysses_and_ring_match_one_process(tmp_path):
    result = run_engine(tmp_path, 2, ["2x1", "1x2"])
    for layout in ("2x1", "1x2"):
        assert result[layout]["shard_shape"] == [2, 4, 3]  # 7 tokens padded to 8, 4 per rank
        assert result[layout]["roundtrip_exact"]
        print(layout, result[layout])
        assert result[layout]["unmasked"] < ATTENTION_TOLERANCE
        assert result[layout]["masked"] < ATTENTION_TOLERANCE  # padding and invalid keys hidden exactly
        assert result[layout]["wan"] < MODEL_TOLERANCE
        assert result[layout]["hunyuan"] < MODEL_TOLERANCE
    # The cache's data-dependent decisions: per-rank metrics disagree, all-reduced ones agree.
    assert result["all_local"] == [True, False]
    assert result["all_reduced"] in ([True, True], [False, False])
    assert result["broadcast"] == {"seed": 1234, "prompt": "rank 0"}


def test_four_ranks_hybrid_matches_one_process(tmp_path):
    result = run_engine(tmp_path, 4, ["2x2"])
    assert result["2x2"]["shard_shape"] == [2, 2, 3]
    assert result["2x2"]["roundtrip_exact"]
    assert result["2x2"]["unmasked"] < ATTENTION_TOLERANCE
    assert result["2x2"]["masked"] < ATTENTION_TOLERANCE
    assert result["2x2"]["wan"] < MODEL_TOLERANCE
    assert result["2x2"]["hunyuan"] < MODEL_TOLERANCE


def test_degrees_must_match_the_world_size():
    with pytest.raises(ValueError, match=r"--ulysses_size 2 x --ring_size 2 = 4 does not match the 2 processes "
                                         r"launched \(WORLD_SIZE=2\): pass --ulysses_size x --ring_size = 2"):
        check_parallel_degrees(ParallelDegrees(2, 2), world_size=2)
    with pytest.raises(ValueError, match=r"does not match the one process launched \(WORLD_SIZE=1\): run with "
                                         r"torchrun --nproc_per_node=2"):
        check_parallel_degrees(ParallelDegrees(1, 2), world_size=1)
    with pytest.raises(ValueError, match="expected integers >= 1"):
        check_parallel_degrees(ParallelDegrees(0, 2), world_size=2)


def test_heads_must_be_divisible_by_the_ulysses_degree():
    flags = ("--ulysses-degree", "--ring-degree")
    with pytest.raises(ValueError, match=r"--ulysses-degree 4 does not divide the model's 6 attention heads: "
                                         r"allowed Ulysses degrees \[1, 2, 3, 6\]"):
        check_parallel_degrees(ParallelDegrees(4, 1), world_size=4, heads=6, flags=flags)
    check_parallel_degrees(ParallelDegrees(3, 2), world_size=6, heads=6, flags=flags)


def test_collectives_are_no_ops_on_one_process():
    x = torch.tensor([1.5, 2.5])
    assert all_reduce_mean(x) is x
    assert broadcast_object({"seed": 3}) == {"seed": 3}


def test_launch_env_is_checked(monkeypatch):
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="RANK=2, WORLD_SIZE=2, LOCAL_RANK=0 are inconsistent"):
        LaunchEnv.from_environ()
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE='two' is not an integer"):
        LaunchEnv.from_environ()


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2:])
