"""sample_video.py end to end: a tiny checkpoint tree in the official layout goes through the real CLI.

The tree is written by the test: the DeepSpeed-style `mp_rank_00_model_states.pt` (weights under "module") of a
tiny DiT (3 double + 6 single blocks) with the `--dit-config` JSON beside it, `vae/config.json` +
`pytorch_model.pt`, a tiny Llama `text_encoder/` and a CLIP `text_encoder_2/` with locally built tokenizers.
Generations run sample_video.py as a subprocess from inside HunyuanVideo/, like the official command line;
argument errors (which fail before any generation) call its `main` in-process to keep the file fast.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from hy_ckpt_dit import make_tiny_dit, write_dit_checkpoint
from hy_ckpt_text import write_text_encoders
from hy_ckpt_vae import tiny_vae_config, write_vae_checkpoint

from common_cache import CacheConfig, CacheProfile, StepListSchedule, StreamGroupConfig, UniformSchedule
from hyvideo.config import parse_args
from profilingdit.metrics.video import psnr_video as psnr  # uint8 frames, PSNR from the whole video's MSE
from profilingdit.metrics.video import read_video as read_frames  # [F, H, W, 3] uint8
from scripts_loader import load_script

sample_video = load_script("HunyuanVideo/sample_video.py")

HY_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "HunyuanVideo")
DOUBLE, SINGLE, STEPS = 3, 6, 8
PROMPT = "a red circle moves to the right"
NAME = re.compile(r"^\d{4}-\d\d-\d\d-\d\d:\d\d:\d\d_seed(\d+)_" + re.escape(PROMPT) + r"\.mp4$")


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("ckpts"))
    # Weights ~N(0, 0.03^2) outside the norms: a smooth random velocity field, like a trained model's (at 0.1 the
    # field changes chaotically from step to step and no cache could follow it).
    model = make_tiny_dit(seed=0, std=0.1, mm_double_blocks_depth=DOUBLE, mm_single_blocks_depth=SINGLE)
    state_dict = {k: v if "norm" in k else 0.3 * v for k, v in model.state_dict().items()}
    transformers = os.path.join(root, "hunyuan-video-t2v-720p", "transformers")
    write_dit_checkpoint(transformers, state_dict, load_key="module")
    with open(os.path.join(transformers, "config.json"), "w") as handle:
        json.dump({"rope_dim_list": model.rope_dim_list}, handle)
    write_vae_checkpoint(os.path.join(root, "hunyuan-video-t2v-720p"), config=tiny_vae_config(latent_channels=16))
    write_text_encoders(root, llm_hidden_size=32, clip_hidden_size=16)
    return root


def dit_paths(root: str) -> tuple[str, str]:
    folder = os.path.join(root, "hunyuan-video-t2v-720p", "transformers")
    return os.path.join(folder, "mp_rank_00_model_states.pt"), os.path.join(folder, "config.json")


def cli_args(root: str, save_path: str, *extra: str, model_base: bool = True, dit_config: bool = True) -> list[str]:
    weight, config = dit_paths(root)
    args = ["--dit-weight", weight, "--video-size", "32", "48", "--video-length", "5", "--infer-steps", str(STEPS),
            "--prompt", PROMPT, "--flow-reverse", "--seed", "42", "--save-path", save_path]
    args += ["--model-base", root] if model_base else []
    args += ["--dit-config", config] if dit_config else []
    return args + list(extra)


def run_cli(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MODEL_BASE")}
    # One thread: with tensors this small, a thread pool shared with other jobs on 2 cores costs 50x in waits.
    env.update({"OMP_NUM_THREADS": "1", **(env_extra or {})})
    return subprocess.run([sys.executable, "sample_video.py", *args], cwd=HY_DIR, env=env, capture_output=True,
                          text=True, timeout=300)


def videos_in(folder: str) -> dict[int, str]:
    """seed -> path of every video in ``folder`` (which must hold nothing else)."""
    names = os.listdir(folder)
    assert all(NAME.match(name) for name in names), names
    return {int(NAME.match(name).group(1)): os.path.join(folder, name) for name in names}


@pytest.fixture(scope="module")
def full_video(ckpts, tmp_path_factory) -> str:
    """The full-compute video, in <tmp>/results; its run statistics (--cache-stats) in <tmp>/stats.json."""
    out = str(tmp_path_factory.mktemp("full") / "results")
    result = run_cli(*cli_args(ckpts, out, "--cache-stats", os.path.join(os.path.dirname(out), "stats.json")))
    assert result.returncode == 0, result.stdout + result.stderr
    (path,) = videos_in(out).values()
    return path


def check_run_stats(stats: dict, policy: str) -> None:
    """The timings every --cache-stats file has (full compute included), consistent with each other."""
    assert stats["policy"] == policy and len(stats["step_seconds"]) == STEPS and stats["seeds"] == [42]
    assert 0 < sum(stats["step_seconds"]) <= stats["denoise_seconds"] < stats["total_seconds"]
    assert 0 < stats["decode_seconds"] < stats["total_seconds"]


def test_cache_stats_of_a_full_compute_run(full_video):
    folder = os.path.dirname(os.path.dirname(full_video))
    stats = json.load(open(os.path.join(folder, "stats.json")))
    check_run_stats(stats, "none")
    assert stats["full_steps"] == list(range(STEPS))
    assert sorted(os.listdir(folder)) == ["results", "stats.json"]  # written atomically: no temp file


@pytest.fixture(scope="module")
def two_other_seeds(ckpts, tmp_path_factory) -> dict[int, str]:
    """--seed 7 --num-videos 2, with the checkpoint root given by MODEL_BASE only (no --model-base)."""
    out = str(tmp_path_factory.mktemp("seeds") / "results")
    args = cli_args(ckpts, out, "--num-videos", "2", model_base=False)
    args[args.index("--seed") + 1] = "7"
    result = run_cli(*args, env_extra={"MODEL_BASE": ckpts})
    assert result.returncode == 0, result.stdout + result.stderr
    return videos_in(out)


@pytest.fixture(scope="module")
def profile_path(tmp_path_factory) -> str:
    """double: span 1..2, warm-up 2, every 3 steps; single: 0,2,3,5 (units 0, [2..3], 5), warm-up 2, steps 4,6."""
    groups = (StreamGroupConfig("double", DOUBLE, (1, 2), 2, UniformSchedule(3)),
              StreamGroupConfig("single", SINGLE, (0, 2, 3, 5), 2, StepListSchedule((4, 6))))
    path = str(tmp_path_factory.mktemp("profiles") / "tiny-test.json")
    return CacheProfile(CacheConfig(groups), metadata={"model": "random test weights"}).save(path)


def test_writes_an_mp4_with_the_right_frames_size_and_official_name(full_video):
    assert NAME.match(os.path.basename(full_video)).group(1) == "42"
    frames = read_frames(full_video)
    assert frames.shape == (5, 32, 48, 3)  # 5 frames of H 32 x W 48
    assert frames.std() > 1.0  # not a constant image


def test_num_videos_gives_consecutive_seeds_from_model_base_env(two_other_seeds):
    assert sorted(two_other_seeds) == [7, 8]
    first, second = (read_frames(two_other_seeds[s]) for s in (7, 8))
    assert first.shape == second.shape == (5, 32, 48, 3)
    assert not np.array_equal(first, second)


def test_same_seed_gives_the_same_video(ckpts, full_video, two_other_seeds, tmp_path):
    result = run_cli(*cli_args(ckpts, str(tmp_path)))
    assert result.returncode == 0, result.stderr
    (again,) = videos_in(str(tmp_path)).values()
    assert np.array_equal(read_frames(again), read_frames(full_video))
    assert not np.array_equal(read_frames(two_other_seeds[7]), read_frames(full_video))


def test_delta_cache_skips_the_expected_calls_and_stays_close(ckpts, full_video, two_other_seeds, profile_path,
                                                             tmp_path):
    out, stats_path = str(tmp_path / "results"), str(tmp_path / "stats.json")
    result = run_cli(*cli_args(ckpts, out, "--delta_cache", "--cache-profile", profile_path,
                               "--cache-stats", stats_path))
    assert result.returncode == 0, result.stdout + result.stderr
    stats = json.load(open(stats_path))
    check_run_stats(stats, "delta_cache")
    # 8 steps. double: warm-up 2, refresh 2, 5 -> reuse 3, 4, 6, 7 skip blocks 1, 2.
    # single: warm-up 2, refresh 2 (the warm-up's end), 4, 6 -> reuse 3, 5, 7 skip 4 blocks.
    assert stats["groups"]["double"]["skipped"] == [0, 0, 0, 2, 2, 0, 2, 2]
    assert stats["groups"]["single"]["skipped"] == [0, 0, 0, 4, 0, 4, 0, 4]
    assert stats["computed_calls"] == STEPS * (DOUBLE + SINGLE) - 4 * 2 - 3 * 4 == 52
    assert stats["branches"] == ["cond"]
    assert "ideal 1.385x" in result.stdout and "cache saved 20/72 block calls" in result.stderr
    cached, full = read_frames(videos_in(out)[42]), read_frames(full_video)
    assert not np.array_equal(cached, full)
    # The cached video is far closer to the full one than a video of another seed is.
    baseline = psnr(read_frames(two_other_seeds[7]), full)
    print(f"PSNR cached vs full {psnr(cached, full):.2f} dB; other seed vs full {baseline:.2f} dB")
    assert psnr(cached, full) > 30.0 and psnr(cached, full) > baseline + 15.0


def test_missing_checkpoint_pieces_are_all_listed(ckpts, tmp_path):
    broken = str(tmp_path / "ckpts")
    shutil.copytree(ckpts, broken)
    os.remove(os.path.join(broken, "hunyuan-video-t2v-720p", "vae", "pytorch_model.pt"))
    shutil.rmtree(os.path.join(broken, "text_encoder_2"))
    out = str(tmp_path / "results")
    args = cli_args(broken, out)
    args[args.index("--dit-weight") + 1] = os.path.join(broken, "missing.pt")
    result = run_cli(*args)
    assert result.returncode == 2
    clip = os.path.join(broken, "text_encoder_2")
    assert (f"checkpoint pieces missing under the model base {broken} (MODEL_BASE or --model-base): "
            f"DiT weights (no file or folder at {broken}/missing.pt); "
            f"VAE weights ({broken}/hunyuan-video-t2v-720p/vae/pytorch_model.pt); "
            f"CLIP text encoder ({clip}/config.json); CLIP text encoder tokenizer (one of ") in result.stdout
    assert not os.path.exists(out)


# ---------------------------------------------------------------------------------------------------------------
# In-process: errors found before any generation.


def run_main(caplog, monkeypatch, argv: list[str]) -> tuple[int, str]:
    monkeypatch.delenv("MODEL_BASE", raising=False)
    caplog.clear()
    return sample_video.main(argv), caplog.text


def test_builtin_profile_is_refused_for_the_tiny_depth(ckpts, tmp_path, caplog, monkeypatch):
    code, log = run_main(caplog, monkeypatch, cli_args(ckpts, str(tmp_path / "out"), "--delta_cache",
                                                         "--infer-steps", "50"))
    assert code == 2
    assert "cache profile group 'double' was made for depth 20, but the model has 3 blocks" in log
    assert os.listdir(tmp_path) == []


def test_official_model_refuses_a_checkpoint_of_another_shape(ckpts, tmp_path, caplog, monkeypatch):
    code, log = run_main(caplog, monkeypatch, cli_args(ckpts, str(tmp_path / "out"), dit_config=False))
    assert code == 2
    assert "does not fit --model HYVideo-T/2-cfgdistill: hidden_size: the checkpoint has 64 but model " \
           "'HYVideo-T/2-cfgdistill' says 3072" in log
    assert "needs --dit-config PATH" in log
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("piece", ["hunyuan-video-t2v-720p/transformers/mp_rank_00_model_states.pt",
                                   "hunyuan-video-t2v-720p/vae/pytorch_model.pt", "text_encoder/model.safetensors"])
def test_a_corrupt_checkpoint_file_is_named(ckpts, tmp_path, caplog, monkeypatch, piece):
    broken = str(tmp_path / "ckpts")
    shutil.copytree(ckpts, broken)
    path = os.path.join(broken, piece)
    with open(path, "r+b") as handle:
        handle.truncate(os.path.getsize(path) // 2)
    argv = cli_args(broken, str(tmp_path / "out"))
    code, log = run_main(caplog, monkeypatch, argv)
    assert code == 2
    assert "could not be read (corrupt or incomplete file?)" in log
    assert not os.path.exists(tmp_path / "out")


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--video-length", "6"], "--video-length 6 is not allowed: expected 4n+1"),
        (["--video-size", "40", "48"], "--video-size 40 48 is not allowed: height and width must be multiples of 16"),
        (["--video-size", "32"], "--video-size 32 is not allowed: expected two values, height and width"),
        (["--video-size", "32", "48", "64"], "--video-size 32 48 64 is not allowed: expected two values"),
        (["--video-size", "0", "48"], "--video-size 0 48 is not allowed: height and width must be positive"),
        (["--latent-channels", "8"], "Latent channels (--latent-channels 8) must match the VAE channels (16"),
        (["--vae", "88-16"], "Invalid VAE model: --vae 88-16."),
        (["--ulysses-degree", "2"], "does not match the one process launched (WORLD_SIZE=1): run with torchrun"),
        (["--use-fp8"], "--use-fp8 is not supported"),
        (["--batch-size", "2"], "--batch-size 2 is not allowed: only 1"),
        (["--infer-steps", "0"], "--infer-steps 0 is not allowed"),
        (["--cache-interval", "3"], "--cache-interval only act with the cache on: add --delta_cache or --cache-profile"),
        (["--cache-profile", "PROFILE", "--infer-steps", "5"], "refresh step 6 is out of range for 5 steps"),
        (["--cache-profile", "PROFILE", "--cache-blocks", "single:3,6"], "cached block 6 is out of range for depth 6"),
        (["--dit-config", "CONFIG_WITHOUT_ROPE"], "lacks 'rope_dim_list'"),
    ],
)
def test_bad_arguments_fail_clearly_before_writing(ckpts, profile_path, tmp_path, caplog, monkeypatch, extra,
                                                   message):
    bad_config = tmp_path / "config.json"
    bad_config.write_text(json.dumps({"qkv_bias": True}))
    replace = {"PROFILE": profile_path, "CONFIG_WITHOUT_ROPE": str(bad_config)}
    argv = cli_args(ckpts, str(tmp_path / "out"), *[replace.get(item, item) for item in extra])
    code, log = run_main(caplog, monkeypatch, argv)
    assert code == 2
    assert message in log
    assert not os.path.exists(tmp_path / "out")


def test_missing_prompt_is_refused(ckpts, tmp_path, caplog, monkeypatch):
    argv = cli_args(ckpts, str(tmp_path / "out"))
    del argv[argv.index("--prompt"):argv.index("--prompt") + 2]
    code, log = run_main(caplog, monkeypatch, argv)
    assert code == 2 and "--prompt is required" in log


# ---------------------------------------------------------------------------------------------------------------
# The official command lines parse with the official defaults.


def test_official_invocation_and_defaults():
    args = parse_args(["--video-size", "720", "1280", "--video-length", "129", "--infer-steps", "50", "--prompt",
                       "A cat walks on the grass, realistic style.", "--seed", "42", "--embedded-cfg-scale", "6.0",
                       "--flow-shift", "7.0", "--flow-reverse", "--use-cpu-offload", "--save-path", "./results"])
    assert (args.video_size, args.video_length, args.seed, args.flow_reverse, args.use_cpu_offload) == \
        ((720, 1280), 129, 42, True, True)
    defaults = parse_args(["--prompt", "x"])
    expected = {"model": "HYVideo-T/2-cfgdistill", "latent_channels": 16, "precision": "bf16", "rope_theta": 256,
                "vae": "884-16c-hy", "vae_precision": "fp16", "vae_tiling": True, "text_encoder": "llm",
                "text_encoder_precision": "fp16", "text_states_dim": 4096, "text_len": 256, "tokenizer": "llm",
                "prompt_template": "dit-llm-encode", "prompt_template_video": "dit-llm-encode-video",
                "hidden_state_skip_layer": 2, "apply_final_norm": False, "text_encoder_2": "clipL",
                "text_encoder_precision_2": "fp16", "text_states_dim_2": 768, "tokenizer_2": "clipL",
                "text_len_2": 77, "denoise_type": "flow", "flow_shift": 7.0, "flow_reverse": False,
                "flow_solver": "euler", "model_base": "ckpts", "load_key": "module", "batch_size": 1,
                "infer_steps": 50, "save_path": "./results", "num_videos": 1, "video_size": (720, 1280),
                "video_length": 129, "seed": None, "cfg_scale": 1.0, "embedded_cfg_scale": 6.0,
                "ulysses_degree": 1, "ring_degree": 1, "delta_cache": False}
    assert {k: getattr(defaults, k) for k in expected} == expected
    assert parse_args(["--prompt", "x", "--delta_cache"]).delta_cache
    assert parse_args(["--prompt", "x", "--delta-cache"]).delta_cache


def test_builtin_profile_fits_50_steps_only_with_the_official_depths():
    profile = sample_video.resolve_policy(parse_args(["--prompt", "x", "--delta_cache"])).profile
    assert [g.name for g in profile.config.groups] == ["double", "single"]
    assert profile.config.group("single").refresh_steps(50) == (6, 18, 26, 32, 38, 42, 46, 48)
    with pytest.raises(ValueError, match="refresh step 32 is out of range for 30 steps"):
        sample_video.resolve_policy(parse_args(["--prompt", "x", "--delta_cache", "--infer-steps", "30"]))


def test_a_profile_for_another_depth_is_refused_before_loading_on_the_official_path(profile_path):
    args = parse_args(["--prompt", "x", "--cache-profile", profile_path, "--model-base", "/nonexistent"])
    with pytest.raises(ValueError, match="group 'double' was made for depth 3, but the model has 20 blocks"):
        sample_video.resolve_policy(args)
