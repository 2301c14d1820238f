"""Wan2.1 under torchrun (gloo, 2 processes): Ulysses 2 and Ring 2 against one process, with and without the cache.

The checkpoint folder is the one tests/test_wan_generate.py writes (official layout, random tiny weights). Two
kinds of runs, both real torchrun launches:

* the pipeline worker (this file under torchrun): every rank loads the folder into a one-process ``WanT2V`` and
  into sequence-parallel ones (Ulysses 2, Ring 2) and generates the same video with each, without and with a delta
  cache; rank 0 compares the decoded float videos and the cache buffers;
* generate.py itself: the official command line under torchrun against the same command on one process, and
  invalid layouts that must stop every rank.

Tolerances: decoded float videos in [-1, 1] within 1e-4 (measured: Ulysses 0, Ring ~4e-6). The command lines' 8-bit H.264
files are compared loosely, PSNR > 30 dB (different seeds: < 20 dB): on these tiny clips a float difference of
1e-6 flips a few pixels by one level, and the encoder can turn that into block differences of up to 25 levels
(measured from identical files down to 38 dB).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from scripts_loader import load_script
from test_sp_engine import run_layouts, torchrun, write_layout_results
from test_wan_generate import (
    STEPS,
    TASK,
    WAN_DIR,
    base_args,
    ckpt_dir,  # noqa: F401 (fixture)
    profile_path,  # noqa: F401 (fixture)
    psnr,
    read_frames,
)

VIDEO_TOLERANCE = 1e-4
PSNR_FLOOR = 30.0  # 8-bit H.264 files: see the module docstring
PROMPT = "a red circle moves to the right"


# ---------------------------------------------------------------------------------------------------------------
# Worker (under torchrun)


def _generate(pipeline, profile, cached: bool):
    from common_cache import DeltaCache, attach_cache, detach_cache

    if cached:
        attach_cache(pipeline.model, DeltaCache(profile.config))
    video, _ = pipeline.generate(PROMPT, size=(64, 64), frame_num=17, shift=3.0, sampling_steps=STEPS, seed=42,
                                 offload_model=False, progress=False)
    buffer_bytes = pipeline.model.block_cache.stats.peak_buffer_bytes if cached else 0
    if cached:
        detach_cache(pipeline.model)
    return video, buffer_bytes


def _worker(ckpt: str, profile_file: str, out_path: str, layouts: list[str]) -> None:
    from wan.configs import WAN_CONFIGS
    from wan.text2video import WanT2V

    from common_cache import CacheProfile
    from profilingdit.parallel import LaunchEnv, ParallelDegrees, init_sequence_parallel, shutdown

    env = LaunchEnv.from_environ()
    config, profile = WAN_CONFIGS[TASK], CacheProfile.load(profile_file)
    pipelines = {"single": WanT2V(config, ckpt, rank=env.rank, device="cpu")}
    for layout in layouts:  # "UxR"
        sp = init_sequence_parallel(ParallelDegrees(*map(int, layout.split("x"))), env)
        pipelines[layout] = WanT2V(config, ckpt, rank=env.rank, device="cpu", use_usp=True, sequence_parallel=sp)
    write_layout_results(env, layouts, lambda name, cached: _generate(pipelines[name], profile, cached), out_path)
    shutdown()


# ---------------------------------------------------------------------------------------------------------------
# Tests


def check_pipelines(ckpt: str, profile: str, tmp_path, layouts: list[str]) -> None:
    """Runs the worker on U x R processes for each layout; checks videos and per-rank buffers."""
    measured, processes = run_layouts(os.path.abspath(__file__), [ckpt, profile], layouts, str(tmp_path / "wan.json"),
                                      VIDEO_TOLERANCE)
    for layout in layouts:
        # Every rank caches its own shard of the 80 tokens: 1/processes of the one-process buffers on each rank.
        single = measured[layout + "+cache"]["single_buffer"]
        assert single > 0 and measured[layout + "+cache"]["buffers"] == [single // processes] * processes


def test_ulysses_and_ring_pipelines_match_one_process_with_and_without_cache(ckpt_dir, profile_path,  # noqa: F811
                                                                              tmp_path):
    check_pipelines(ckpt_dir, profile_path, tmp_path, ["2x1", "1x2"])


@pytest.fixture(scope="module", params=["residual", "output"])
def forecast_profile_path(tmp_path_factory, request) -> str:
    """Forecasting, each rank on its own shard. ``residual``: per-unit schedules, blocks 2-4 (order 1) run on
    steps 0, 1, 2, 5, blocks 6-9 (order 2) on steps 0, 1, 2, 4, 6, the other blocks always run. ``output``: the
    shipped t2v-tiny layout, the whole stack as one unit (order 2, run on steps 0, 1, 2, 4, 6) forecasting its
    output, so that reuse steps skip the stack's input."""
    from common_cache import (
        CacheConfig,
        CacheProfile,
        StepListSchedule,
        StreamGroupConfig,
        UniformSchedule,
        UnitConfig,
    )

    if request.param == "residual":
        units = (UnitConfig(2, 4, 2, StepListSchedule((5,)), 1), UnitConfig(6, 9, 2, UniformSchedule(2), 2))
        group = StreamGroupConfig("blocks", 12, (2, 3, 4, 6, 7, 8, 9), 0, UniformSchedule(1), units=units)
    else:
        group = StreamGroupConfig("blocks", 12, tuple(range(12)), 2, UniformSchedule(2), 2, forecast_target="output")
    path = str(tmp_path_factory.mktemp("profiles") / f"forecast_{request.param}.json")
    return CacheProfile(CacheConfig((group,)), metadata={"model": "random test weights"}).save(path)


def test_ulysses_and_ring_with_forecasting_match_one_process(ckpt_dir, forecast_profile_path, tmp_path):  # noqa: F811
    check_pipelines(ckpt_dir, forecast_profile_path, tmp_path, ["2x1", "1x2"])


@pytest.mark.slow
def test_hybrid_pipeline_on_four_processes_matches_one_process(ckpt_dir, profile_path, tmp_path):  # noqa: F811
    check_pipelines(ckpt_dir, profile_path, tmp_path, ["2x2"])


def run_generate_torchrun(nproc: int, *args: str) -> subprocess.CompletedProcess:
    return torchrun(nproc, "generate.py", *args, cwd=WAN_DIR, timeout=300)


def run_generate_single(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run([sys.executable, "generate.py", *args], cwd=WAN_DIR, env=env, capture_output=True,
                          text=True, timeout=300)


def test_cli_ring_with_cache_matches_one_process(ckpt_dir, profile_path, tmp_path):  # noqa: F811
    single, parallel = str(tmp_path / "single.mp4"), str(tmp_path / "ring.mp4")
    stats_single, stats_parallel = str(tmp_path / "single.json"), str(tmp_path / "ring.json")
    cache = ("--cache_profile", profile_path)
    result = run_generate_single(*base_args(ckpt_dir, single, *cache, "--cache_stats", stats_single))
    assert result.returncode == 0, result.stdout + result.stderr
    result = run_generate_torchrun(2, *base_args(ckpt_dir, parallel, *cache, "--cache_stats", stats_parallel,
                                                 "--ring_size", "2"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("Generation job args") == 1  # rank 1 logs warnings only
    assert sorted(os.listdir(tmp_path)) == ["ring.json", "ring.mp4", "single.json", "single.mp4"]
    print(f"PSNR ring 2 vs one process: {psnr(read_frames(parallel), read_frames(single)):.1f} dB")
    assert psnr(read_frames(parallel), read_frames(single)) > PSNR_FLOOR
    one, two = json.load(open(stats_single)), json.load(open(stats_parallel))
    assert two["groups"]["blocks"]["skipped"] == one["groups"]["blocks"]["skipped"] == [0, 0, 0, 14, 14, 0, 14, 14]
    assert two["peak_buffer_bytes"] * 2 == one["peak_buffer_bytes"]  # rank 0's shard


def test_cli_invalid_layout_stops_every_rank(ckpt_dir, tmp_path):  # noqa: F811
    out = str(tmp_path / "x.mp4")
    result = run_generate_torchrun(2, *base_args(ckpt_dir, out, "--ulysses_size", "2", "--ring_size", "2"))
    assert result.returncode != 0
    message = ("--ulysses_size 2 x --ring_size 2 = 4 does not match the 2 processes launched (WORLD_SIZE=2): pass "
               "--ulysses_size x --ring_size = 2")
    assert result.stdout.count(message) == 2, result.stdout  # one error line per rank
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("argv, env, message", [
    (["--ulysses_size", "3"], {"WORLD_SIZE": "3"},
     "--ulysses_size 3 does not divide the model's 4 attention heads: allowed Ulysses degrees [1, 2, 4]"),
    (["--ring_size", "2"], {}, "--ulysses_size 1 x --ring_size 2 = 2 does not match the one process launched "
                               "(WORLD_SIZE=1): run with torchrun --nproc_per_node=2"),
    (["--dit_fsdp"], {"WORLD_SIZE": "2"}, "--dit_fsdp: FSDP weight sharding is not supported"),
])
def test_invalid_layouts_fail_before_any_process_group(ckpt_dir, tmp_path, monkeypatch, caplog, argv, env,  # noqa: F811
                                                       message):
    generate = load_script("Wan2.1/generate.py")

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert generate.main(base_args(ckpt_dir, str(tmp_path / "x.mp4"), *argv)) == 2
    assert message in caplog.text
    assert not torch.distributed.is_initialized()
    assert os.listdir(tmp_path) == []


if __name__ == "__main__":
    _worker(*sys.argv[1:4], sys.argv[4:])
