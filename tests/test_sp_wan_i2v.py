"""Wan2.1 image-to-video under torchrun (gloo, 2 processes): Ulysses 2 and Ring 2 against one process.

As upstream, only the video tokens are split over the ranks: the conditioning latent is concatenated to the noise
before the tokens are cut, and the CLIP image tokens join the text context, which every rank holds whole (the
cross-attention stays local). Two kinds of runs on the folder of tests/test_wan_i2v_generate.py:

* generate.py itself under torchrun with ``--ulysses_size 2 --delta_cache`` against the same command on one process
  (the mp4 files within PSNR 30 dB, as in test_sp_wan.py, measured identical; the cache statistics equal);
* the pipeline worker (this file under torchrun): every rank loads a one-process ``WanI2V`` and a Ring 2 one and
  generates the same video, without and with a delta cache; rank 0 compares the decoded float videos (within 1e-4;
  measured 4.5e-6, Ulysses 2 measured 0) and every rank's cache buffers (half of the one-process ones).
"""

from __future__ import annotations

import json
import os
import sys

import pytest
from test_sp_engine import run_layouts, torchrun
from test_wan_generate import profile_path  # noqa: F401 (fixture: 7 of 12 blocks cached, warm-up 2, interval 3)
from test_wan_generate import WAN_DIR, psnr, read_frames
from test_wan_i2v_generate import (  # noqa: F401 (fixtures)
    FRAMES,
    PROMPT,
    STEPS,
    TASK,
    cached_run,
    i2v_args,
    i2v_ckpt_dir,
    images,
)

VIDEO_TOLERANCE = 1e-4


def _generate(pipeline, image, profile, cached: bool):
    from common_cache import DeltaCache, attach_cache, detach_cache

    if cached:
        attach_cache(pipeline.model, DeltaCache(profile.config))
    video, _ = pipeline.generate(PROMPT, image, max_area=64 * 64, frame_num=FRAMES, shift=3.0, sampling_steps=STEPS,
                                 seed=42, offload_model=False, progress=False)
    buffer_bytes = pipeline.model.block_cache.stats.peak_buffer_bytes if cached else 0
    if cached:
        detach_cache(pipeline.model)
    return video, buffer_bytes


def _worker(ckpt: str, image_path: str, profile_file: str, out_path: str, layouts: list[str]) -> None:
    from test_sp_engine import write_layout_results

    from common_cache import CacheProfile
    from profilingdit.parallel import LaunchEnv, ParallelDegrees, init_sequence_parallel, shutdown
    from wan.configs import WAN_CONFIGS
    from wan.image2video import WanI2V, load_image

    env = LaunchEnv.from_environ()
    config, profile, image = WAN_CONFIGS[TASK], CacheProfile.load(profile_file), load_image(image_path)
    pipelines = {"single": WanI2V(config, ckpt, rank=env.rank, device="cpu")}
    for layout in layouts:  # "UxR"
        sp = init_sequence_parallel(ParallelDegrees(*map(int, layout.split("x"))), env)
        pipelines[layout] = WanI2V(config, ckpt, rank=env.rank, device="cpu", use_usp=True, sequence_parallel=sp)
    write_layout_results(env, layouts, lambda name, cached: _generate(pipelines[name], image, profile, cached),
                         out_path)
    shutdown()


@pytest.mark.slow
def test_ring_i2v_pipeline_matches_one_process(i2v_ckpt_dir, images, profile_path, tmp_path):  # noqa: F811
    """Ring 2 (Ulysses 2 gives the same float video as one process too: measured max difference 0, and the command
    line test below compares it)."""
    measured, processes = run_layouts(os.path.abspath(__file__), [i2v_ckpt_dir, images["first.png"], profile_path],
                                      ["1x2"], str(tmp_path / "i2v.json"), VIDEO_TOLERANCE)
    single = measured["1x2+cache"]["single_buffer"]  # each rank caches its half of the 36 video tokens
    assert single > 0 and measured["1x2+cache"]["buffers"] == [single // processes] * processes


def test_cli_ulysses_2_with_delta_cache_matches_one_process(i2v_ckpt_dir, images, cached_run, tmp_path):  # noqa: F811
    single, single_stats = cached_run  # the same command on one process (test_wan_i2v_generate.py)
    out, stats_path = str(tmp_path / "ulysses.mp4"), str(tmp_path / "ulysses.json")
    args = i2v_args(i2v_ckpt_dir, images["first.png"], out, "--delta_cache", "--cache_warmup", "2",
                    "--cache_interval", "3", "--cache_stats", stats_path, "--ulysses_size", "2")
    result = torchrun(2, "generate.py", *args, cwd=WAN_DIR, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(os.listdir(tmp_path)) == ["ulysses.json", "ulysses.mp4"]
    print(f"PSNR Ulysses 2 vs one process: {psnr(read_frames(out), read_frames(single)):.1f} dB")
    assert read_frames(out).shape == read_frames(single).shape
    assert psnr(read_frames(out), read_frames(single)) > 30.0
    with open(stats_path) as handle:
        stats = json.load(handle)
    assert stats["groups"]["blocks"]["skipped"] == single_stats["groups"]["blocks"]["skipped"]
    assert stats["computed_calls"] == single_stats["computed_calls"]


if __name__ == "__main__":
    _worker(*sys.argv[1:5], sys.argv[5:])
