"""HunyuanVideo under torchrun (gloo, 2 processes): Ulysses 2 and Ring 2 against one process, with and without cache.

The checkpoint tree is the one tests/test_hy_sample_video.py writes (official layout, random tiny DiT with 2 heads,
tiny VAE and text encoders). Two kinds of runs, both real torchrun launches:

* the pipeline worker (this file under torchrun): every rank builds a one-process sampler and sequence-parallel
  ones (Ulysses 2, Ring 2) from the tree and generates the same video with each, without and with a delta cache on
  both stream groups; rank 0 compares the decoded float videos and the cache buffers;
* sample_video.py itself: the official command line under torchrun against the same command on one process, and
  an invalid layout that must stop every rank.

Tolerances: decoded float videos in [0, 1] within 1e-4 (measured: ~3e-6). The command lines' 8-bit H.264
files are compared loosely, PSNR > 30 dB (different seeds: < 20 dB): on these tiny clips a float difference of
1e-6 flips a few pixels by one level, and the encoder can turn that into block differences of up to 25 levels
(measured from identical files down to 38 dB).
"""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch
from test_hy_sample_video import (
    HY_DIR,
    cli_args,
    ckpts,  # noqa: F401 (fixture)
    profile_path,  # noqa: F401 (fixture)
    psnr,
    read_frames,
    run_cli,
    run_main,
    videos_in,
)
from test_sp_engine import run_layouts, torchrun, write_layout_results

VIDEO_TOLERANCE = 1e-4
IMAGE_TOKENS, TEXT_TOKENS = 12, 256  # 5 frames of 32x48 -> 2 x 2 x 3 tokens; --text-len 256
PSNR_FLOOR = 30.0  # 8-bit H.264 files: see the module docstring


# ---------------------------------------------------------------------------------------------------------------
# Worker (under torchrun)


def _sampler(args, root: str, device: torch.device, sp=None):
    from hyvideo.inference import HunyuanVideoSampler, RunPrecisions, check_checkpoint_pieces, load_transformer
    from hyvideo.parallel import parallelize_transformer

    paths = check_checkpoint_pieces(args, root)
    transformer = load_transformer(args, paths["dit_weight"], device, RunPrecisions.from_args(args, device).dit)
    if sp is not None:
        parallelize_transformer(transformer, sp)
    return HunyuanVideoSampler.from_pretrained(root, args, device=device, transformer=transformer)


def _generate(sampler, args, profile, cached: bool, decode: bool):
    from common_cache import DeltaCache, attach_cache, detach_cache

    if cached:
        attach_cache(sampler.model, DeltaCache(profile.config))
    outputs = sampler.predict(args.prompt, *args.video_size, video_length=args.video_length, seed=args.seed,
                              infer_steps=args.infer_steps, guidance_scale=args.cfg_scale, flow_shift=args.flow_shift,
                              embedded_guidance_scale=args.embedded_cfg_scale, progress=False, decode=decode)
    buffer_bytes = sampler.model.block_cache.stats.peak_buffer_bytes if cached else 0
    if cached:
        detach_cache(sampler.model)
    return outputs["samples"], buffer_bytes


def _worker(root: str, profile_file: str, out_path: str, layouts: list[str]) -> None:
    from common_cache import CacheProfile
    from profilingdit.parallel import LaunchEnv, ParallelDegrees, init_sequence_parallel, shutdown
    from hyvideo.config import parse_args

    env = LaunchEnv.from_environ()
    args = parse_args(cli_args(root, "unused", "--ulysses-degree", str(env.world_size)))
    profile, device = CacheProfile.load(profile_file), torch.device("cpu")
    samplers = {"single": _sampler(args, root, device)}
    for layout in layouts:  # "UxR"
        degrees = ParallelDegrees(*map(int, layout.split("x")))
        samplers[layout] = _sampler(args, root, device, init_sequence_parallel(degrees, env))
    write_layout_results(env, layouts,
                         lambda name, cached: _generate(samplers[name], args, profile, cached, env.rank == 0), out_path)
    shutdown()


# ---------------------------------------------------------------------------------------------------------------
# Tests


def check_pipelines(root: str, profile: str, tmp_path, layouts: list[str]) -> None:
    """Runs the worker on U x R processes for each layout; checks videos and per-rank buffers."""
    measured, processes = run_layouts(os.path.abspath(__file__), [root, profile], layouts,
                                      str(tmp_path / "hunyuan.json"), VIDEO_TOLERANCE)
    for layout in layouts:
        # Every delta covers the 12 image tokens and the 256 text tokens; each rank holds 12 / processes image
        # tokens and all the text (replicated), so only the image part of its buffers shrinks.
        single = measured[layout + "+cache"]["single_buffer"]
        per_rank = single * (IMAGE_TOKENS // processes + TEXT_TOKENS) // (IMAGE_TOKENS + TEXT_TOKENS)
        assert single > 0 and measured[layout + "+cache"]["buffers"] == [per_rank] * processes


def test_ulysses_and_ring_pipelines_match_one_process_with_and_without_cache(ckpts, profile_path,  # noqa: F811
                                                                              tmp_path):
    check_pipelines(ckpts, profile_path, tmp_path, ["2x1", "1x2"])


@pytest.mark.slow
def test_hybrid_pipeline_on_four_processes_matches_one_process(ckpts, profile_path, tmp_path):  # noqa: F811
    check_pipelines(ckpts, profile_path, tmp_path, ["2x2"])


def test_cli_ulysses_with_cache_matches_one_process(ckpts, profile_path, tmp_path):  # noqa: F811
    single, parallel = str(tmp_path / "single"), str(tmp_path / "ulysses")
    cache = ("--delta_cache", "--cache-profile", profile_path)
    result = run_cli(*cli_args(ckpts, single, *cache, "--cache-stats", str(tmp_path / "single.json")))
    assert result.returncode == 0, result.stdout + result.stderr
    result = torchrun(2, "sample_video.py", *cli_args(ckpts, parallel, *cache, "--cache-stats",
                                                      str(tmp_path / "ulysses.json"), "--ulysses-degree", "2"),
                      cwd=HY_DIR, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("Generation job args") == 1  # rank 1 logs warnings only
    (one,), (two,) = videos_in(single).values(), videos_in(parallel).values()
    print(f"PSNR ulysses 2 vs one process: {psnr(read_frames(two), read_frames(one)):.1f} dB")
    assert psnr(read_frames(two), read_frames(one)) > PSNR_FLOOR
    stats_one, stats_two = (json.load(open(tmp_path / name)) for name in ("single.json", "ulysses.json"))
    for group in ("double", "single"):
        assert stats_two["groups"][group]["skipped"] == stats_one["groups"][group]["skipped"]


def test_cli_invalid_layout_stops_every_rank(ckpts, tmp_path):  # noqa: F811
    out = str(tmp_path / "results")
    result = torchrun(2, "sample_video.py", *cli_args(ckpts, out), cwd=HY_DIR, timeout=300)
    assert result.returncode != 0
    message = ("--ulysses-degree 1 x --ring-degree 1 = 1 does not match the 2 processes launched (WORLD_SIZE=2): "
               "pass --ulysses-degree x --ring-degree = 2")
    assert result.stdout.count(message) == 2, result.stdout  # one error line per rank
    assert not os.path.exists(out)


@pytest.mark.parametrize("argv, env, message", [
    (["--model", "HYVideo-T/2-cfgdistill", "--ulysses-degree", "5"], {"WORLD_SIZE": "5"},
     "--ulysses-degree 5 does not divide the model's 24 attention heads: allowed Ulysses degrees [1, 2, 3, 4, 6, 8, "
     "12, 24]"),
    (["--ring-degree", "2", "--use-cpu-offload"], {"WORLD_SIZE": "2"},
     "--use-cpu-offload cannot be combined with --ulysses-degree 1 x --ring-degree 2 > 1"),
])
def test_invalid_layouts_fail_before_any_process_group(ckpts, tmp_path, caplog, monkeypatch, argv, env,  # noqa: F811
                                                       message):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    argv = cli_args(ckpts, str(tmp_path / "out"), *argv, dit_config="--model" not in argv)
    code, log = run_main(caplog, monkeypatch, argv)
    assert code == 2 and message in log
    assert not torch.distributed.is_initialized()
    assert not os.path.exists(tmp_path / "out")


def test_checkpoint_head_count_is_checked_when_parallelizing():
    from hy_ckpt_dit import make_tiny_dit

    from profilingdit.parallel import ParallelDegrees, SequenceParallel
    from hyvideo.parallel import parallelize_transformer

    sp = SequenceParallel(ParallelDegrees(4, 1), rank=0, device=torch.device("cpu"), attention_module=None)
    with pytest.raises(ValueError, match=r"--ulysses-degree 4 does not divide the model's 2 attention heads: "
                                         r"allowed Ulysses degrees \[1, 2\]"):
        parallelize_transformer(make_tiny_dit(), sp)


if __name__ == "__main__":
    _worker(*sys.argv[1:4], sys.argv[4:])
