"""generate.py end to end: a tiny checkpoint folder in the official layout goes through the real CLI.

The folder is written by the test (random weights of the ``t2v-tiny`` architecture: config.json + safetensors,
the T5 ``.pth``, a locally trained tokenizer, the VAE ``.pth``); generate.py runs as a subprocess from inside
Wan2.1/, like the official command line.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from common_cache import CacheConfig, CacheProfile, StreamGroupConfig, UniformSchedule
from wan.configs import WAN_CONFIGS
from wan_ckpt_dit import random_tiny_wan, write_wan_checkpoint
from wan_ckpt_text import build_tiny_tokenizer, write_t5_checkpoint, write_vae_checkpoint
from profilingdit.metrics.video import psnr_video as psnr  # uint8 frames, PSNR from the whole video's MSE
from profilingdit.metrics.video import read_video as read_frames  # [F, H, W, 3] uint8

WAN_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "Wan2.1")
TASK = "t2v-tiny"
STEPS = 8
DEPTH = WAN_CONFIGS[TASK].num_layers


def tiny_dit_config() -> dict:
    cfg = WAN_CONFIGS[TASK]
    return {"model_type": "t2v", "dim": cfg.dim, "ffn_dim": cfg.ffn_dim, "freq_dim": cfg.freq_dim, "in_dim": 16,
            "out_dim": 16, "num_heads": cfg.num_heads, "num_layers": cfg.num_layers, "eps": cfg.eps,
            "text_len": cfg.text_len, "text_dim": cfg.text_dim}


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory) -> str:
    folder = str(tmp_path_factory.mktemp("Wan2.1-T2V-tiny-random"))
    config = tiny_dit_config()
    # Weights ~N(0, 0.03^2): a smooth random velocity field, like a trained model's. At the fixture's default 0.1
    # the random field changes chaotically from step to step, and no cache (or sampler) could follow it.
    state_dict = {k: v if "norm" in k else 0.3 * v for k, v in random_tiny_wan(config, seed=0).state_dict().items()}
    write_wan_checkpoint(folder, state_dict, config)
    cfg = WAN_CONFIGS[TASK]
    write_t5_checkpoint(os.path.join(folder, cfg.t5_checkpoint), dim=cfg.text_dim, dim_attn=cfg.text_dim,
                        num_heads=4)
    build_tiny_tokenizer(os.path.join(folder, cfg.t5_tokenizer))
    write_vae_checkpoint(os.path.join(folder, cfg.vae_checkpoint))
    return folder


@pytest.fixture(scope="module")
def profile_path(tmp_path_factory) -> str:
    """Blocks 2..9 cached (one span) except 5, warm-up 2, refresh every 3 steps, for STEPS steps."""
    group = StreamGroupConfig("blocks", DEPTH, (2, 3, 4, 6, 7, 8, 9), 2, UniformSchedule(3))
    path = str(tmp_path_factory.mktemp("profiles") / "tiny-test.json")
    return CacheProfile(CacheConfig((group,)), metadata={"model": "random test weights"}).save(path)


def run_generate(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # common_cache must come from the install
    return subprocess.run([sys.executable, "generate.py", *args], cwd=WAN_DIR, env=env, capture_output=True,
                          text=True, timeout=300)


def base_args(ckpt_dir: str, save_file: str, *extra: str) -> list[str]:
    return ["--task", TASK, "--ckpt_dir", ckpt_dir, "--prompt", "a red circle moves to the right",
            "--sample_steps", str(STEPS), "--base_seed", "42", "--save_file", save_file, *extra]


@pytest.fixture(scope="module")
def full_video(ckpt_dir, tmp_path_factory) -> str:
    """The full-compute video; its run statistics (--cache_stats, written for every run) are beside it as .json."""
    out = str(tmp_path_factory.mktemp("out") / "full.mp4")
    result = run_generate(*base_args(ckpt_dir, out, "--cache_stats", out[:-4] + ".json"))
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def check_run_stats(stats: dict, policy: str) -> None:
    """The timings every --cache_stats file has (full compute included), consistent with each other."""
    assert stats["policy"] == policy
    assert len(stats["step_seconds"]) == STEPS and stats["seeds"] == [42]
    assert 0 < sum(stats["step_seconds"]) <= stats["denoise_seconds"] < stats["total_seconds"]
    assert 0 < stats["decode_seconds"] < stats["total_seconds"]


def test_cache_stats_of_a_full_compute_run(full_video):
    stats = json.load(open(full_video[:-4] + ".json"))
    check_run_stats(stats, "none")
    assert stats["full_steps"] == list(range(STEPS))  # nothing skipped
    assert os.listdir(os.path.dirname(full_video)) == ["full.json", "full.mp4"]  # written atomically: no temp file


def test_generate_writes_an_mp4_with_the_right_frames_and_size(full_video):
    frames = read_frames(full_video)
    assert frames.shape == (17, 64, 64, 3)
    assert frames.std() > 1.0  # not a constant image


@pytest.fixture(scope="module")
def other_seed_video(ckpt_dir, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("out") / "other_seed.mp4")
    args = base_args(ckpt_dir, out)
    args[args.index("--base_seed") + 1] = "7"
    assert run_generate(*args).returncode == 0
    return out


def test_same_seed_gives_the_same_video(ckpt_dir, full_video, other_seed_video, tmp_path):
    again = str(tmp_path / "again.mp4")
    result = run_generate(*base_args(ckpt_dir, again))
    assert result.returncode == 0, result.stderr
    assert np.array_equal(read_frames(again), read_frames(full_video))
    assert not np.array_equal(read_frames(other_seed_video), read_frames(full_video))


def test_delta_cache_skips_the_expected_calls_and_stays_close(ckpt_dir, full_video, other_seed_video, profile_path,
                                                             tmp_path):
    out, stats_path = str(tmp_path / "cached.mp4"), str(tmp_path / "stats.json")
    result = run_generate(*base_args(ckpt_dir, out, "--cache_profile", profile_path, "--cache_stats", stats_path))
    assert result.returncode == 0, result.stdout + result.stderr
    stats = json.load(open(stats_path))
    check_run_stats(stats, "delta_cache")
    assert stats["full_steps"] == [0, 1, 2, 5]
    depth = DEPTH
    # 8 steps, warm-up 2, refresh on 2 and 5: full steps 0, 1, 2, 5; reuse steps 3, 4, 6, 7 run depth - 7 blocks.
    assert stats["groups"]["blocks"]["skipped"] == [0, 0, 0, 14, 14, 0, 14, 14]
    assert stats["computed_calls"] == 2 * (4 * depth + 4 * (depth - 7))
    assert stats["branches"] == ["cond", "uncond"]
    assert "ideal" in result.stdout and "cache saved" in result.stderr  # summary and progress bar
    cached, full = read_frames(out), read_frames(full_video)
    assert not np.array_equal(cached, full)
    # The cached video is far closer to the full one than a video of another seed is.
    baseline = psnr(read_frames(other_seed_video), full)
    print(f"PSNR cached vs full {psnr(cached, full):.2f} dB; other seed vs full {baseline:.2f} dB")
    assert psnr(cached, full) > 30.0 and psnr(cached, full) > baseline + 15.0


def test_builtin_profile_for_another_depth_is_refused(ckpt_dir, tmp_path):
    wrong = os.path.join(WAN_DIR, "wan", "cache_profiles", "t2v-14B.json")
    out = str(tmp_path / "x.mp4")
    result = run_generate(*base_args(ckpt_dir, out, "--cache_profile", wrong))
    assert result.returncode != 0
    assert f"made for depth 40, but the model has {DEPTH} blocks" in result.stdout
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--size", "832*480"], "--size 832*480 is not supported by task t2v-tiny: allowed 64*64"),
        (["--frame_num", "6"], "--frame_num 6 is not allowed: expected 4n+1"),
        (["--sample_steps", "0"], "--sample_steps 0 is not allowed"),
        (["--ulysses_size", "2"], "does not match the one process launched (WORLD_SIZE=1): run with torchrun"),
        (["--cache_interval", "3"], "--cache_interval only act with the cache on"),
        (["--cache_profile", "PROFILE", "--cache_warmup", "9"], "warmup_steps=9 is not allowed for a run of 8 steps"),
        (["--cache_profile", "PROFILE", "--cache_blocks", f"3,{DEPTH}"],
         f"cached block {DEPTH} is out of range for depth {DEPTH}"),
    ],
)
def test_bad_arguments_fail_clearly_before_writing(ckpt_dir, profile_path, tmp_path, extra, message):
    extra = [profile_path if item == "PROFILE" else item for item in extra]
    result = run_generate(*base_args(ckpt_dir, str(tmp_path / "x.mp4"), *extra))
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
    assert os.listdir(tmp_path) == []


def test_unknown_task_is_refused(tmp_path):
    result = run_generate("--task", "t2v-99B", "--ckpt_dir", str(tmp_path))
    assert result.returncode != 0
    assert "invalid choice: 't2v-99B'" in result.stderr


def test_missing_checkpoint_pieces_are_listed(ckpt_dir, tmp_path):
    broken = str(tmp_path / "ckpt")
    shutil.copytree(ckpt_dir, broken)
    os.remove(os.path.join(broken, "Wan2.1_VAE.pth"))
    shutil.rmtree(os.path.join(broken, "google"))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = run_generate(*base_args(broken, str(out_dir / "x.mp4")))
    assert result.returncode != 0
    assert f"checkpoint folder {broken} is missing: T5 tokenizer folder (google/umt5-xxl); VAE (Wan2.1_VAE.pth)" \
        in result.stdout
    assert os.listdir(out_dir) == []


@pytest.mark.parametrize("name, message", [
    ("diffusion_pytorch_model.safetensors", "weight file {path} is truncated"),  # checked before any loading
    ("models_t5_umt5-xxl-enc-bf16.pth", "T5 encoder at {path} could not be read (corrupt or incomplete file?)"),
])
def test_corrupt_checkpoint_file_is_named(ckpt_dir, tmp_path, name, message):
    broken = str(tmp_path / "ckpt")
    shutil.copytree(ckpt_dir, broken)
    path = os.path.join(broken, name)
    with open(path, "r+b") as handle:
        handle.truncate(os.path.getsize(path) // 2)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = run_generate(*base_args(broken, str(out_dir / "x.mp4")))
    assert result.returncode != 0
    assert message.format(path=path) in result.stdout
    assert os.listdir(out_dir) == []
