"""generate.py image-to-video end to end on a tiny random i2v checkpoint folder in the official layout.

The folder (written by tests/wan_ckpt_image.py: DiT config.json + safetensors with model_type i2v and in_dim 36,
the T5 ``.pth``, a tokenizer, the VAE ``.pth`` and the CLIP ``.pth``) goes through the real command line: the
first run as a subprocess from inside Wan2.1/, the others through ``generate.main`` in this process (the same code
after the imports, which cost several seconds per process). Bad inputs must fail before any model is
built, exit non-zero and leave no file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from test_wan_generate import WAN_DIR, psnr, read_frames
from wan_ckpt_image import make_image, write_random_i2v_folder

from wan.configs import WAN_CONFIGS
from scripts_loader import load_script

TASK = "i2v-tiny"
STEPS = 6
FRAMES = 9
DEPTH = WAN_CONFIGS[TASK].num_layers
PROMPT = "a red circle moves to the right"

pytestmark = pytest.mark.usefixtures("one_thread")  # the in-process runs: tiny matrices, 2 shared cores


def session_folder(tmp_path_factory, name: str):
    """A folder shared by every module of the session that imports these fixtures (test_sp_wan_i2v.py too), and
    whether it is new: module fixtures imported elsewhere run again there, the folders' contents need not."""
    folder = tmp_path_factory.getbasetemp() / name
    new = not folder.exists()
    folder.mkdir(exist_ok=True)
    return folder, new


@pytest.fixture(scope="module")
def i2v_ckpt_dir(tmp_path_factory) -> str:
    folder, new = session_folder(tmp_path_factory, "Wan2.1-I2V-tiny-random")
    return write_random_i2v_folder(str(folder)) if new else str(folder)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, str]:
    """A 96x64 image (a 64x48 video within the 64*64 area), another image, and files that are not images."""
    folder, _ = session_folder(tmp_path_factory, "i2v-images")
    paths = {name: str(folder / name) for name in ("first.png", "other.png", "text.png", "truncated.png")}
    make_image(96, 64, seed=0).save(paths["first.png"])
    make_image(96, 64, seed=1).save(paths["other.png"])
    with open(paths["text.png"], "w") as handle:
        handle.write("not an image\n")
    with open(paths["first.png"], "rb") as source, open(paths["truncated.png"], "wb") as target:
        target.write(source.read()[:200])
    return paths


def i2v_args(ckpt_dir: str, image: str | None, save_file: str, *extra: str) -> list[str]:
    image_args = [] if image is None else ["--image", image]
    return ["--task", TASK, "--ckpt_dir", ckpt_dir, *image_args, "--prompt", PROMPT, "--sample_steps", str(STEPS),
            "--frame_num", str(FRAMES), "--base_seed", "42", "--save_file", save_file, *extra]


def run_generate(*args: str) -> subprocess.CompletedProcess:
    """generate.py as a user runs it, with one thread (tiny matrices on 2 shared cores)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # common_cache must come from the install
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run([sys.executable, "generate.py", *args], cwd=WAN_DIR, env=env, capture_output=True,
                          text=True, timeout=300)


def generate_in_process(*args: str) -> int:
    generate = load_script("Wan2.1/generate.py")

    return generate.main(list(args))


@pytest.fixture(scope="module")
def full_video(i2v_ckpt_dir, images, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("out") / "full.mp4")
    result = run_generate(*i2v_args(i2v_ckpt_dir, images["first.png"], out))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Input image: " in result.stdout and "video size 64x48" in result.stdout
    return out


def test_i2v_writes_an_mp4_of_the_image_aspect_and_4n_plus_1_frames(full_video):
    frames = read_frames(full_video)
    assert frames.shape == (FRAMES, 48, 64, 3)  # 96x64 image in the 64*64 area: 64x48, 9 = 4*2+1 frames
    assert frames.std() > 1.0


def test_same_seed_same_frames_another_image_other_frames(i2v_ckpt_dir, images, full_video, tmp_path):
    again, other = str(tmp_path / "again.mp4"), str(tmp_path / "other.mp4")
    assert generate_in_process(*i2v_args(i2v_ckpt_dir, images["first.png"], again)) == 0
    assert generate_in_process(*i2v_args(i2v_ckpt_dir, images["other.png"], other)) == 0
    assert np.array_equal(read_frames(again), read_frames(full_video))
    assert not np.array_equal(read_frames(other), read_frames(full_video))
    print(f"PSNR other image vs first image: {psnr(read_frames(other), read_frames(full_video)):.1f} dB")


@pytest.fixture(scope="module")
def cached_run(i2v_ckpt_dir, images, tmp_path_factory) -> tuple[str, dict]:
    """``--delta_cache`` (the built-in i2v-tiny profile: 8 of 12 blocks cached) with warm-up 2 and interval 3."""
    folder, new = session_folder(tmp_path_factory, "i2v-cached")
    out, stats_path = str(folder / "cached.mp4"), str(folder / "stats.json")
    if new:
        assert generate_in_process(*i2v_args(i2v_ckpt_dir, images["first.png"], out, "--delta_cache", "--cache_warmup",
                                             "2", "--cache_interval", "3", "--cache_stats", stats_path)) == 0
    with open(stats_path) as handle:
        return out, json.load(handle)


def test_delta_cache_computes_exactly_the_planned_block_calls(cached_run, full_video):
    out, stats = cached_run
    cached_blocks = 8  # wan/cache_profiles/i2v-tiny.json
    # 6 steps, warm-up 2, refresh on 2 and 5: full steps 0, 1, 2, 5; steps 3 and 4 skip 8 blocks in both branches.
    assert stats["groups"]["blocks"]["skipped"] == [0, 0, 0, 2 * cached_blocks, 2 * cached_blocks, 0]
    assert stats["computed_calls"] == 2 * (4 * DEPTH + 2 * (DEPTH - cached_blocks))
    assert stats["branches"] == ["cond", "uncond"]
    cached, full = read_frames(out), read_frames(full_video)
    assert cached.shape == full.shape and not np.array_equal(cached, full)
    print(f"PSNR cached vs full: {psnr(cached, full):.1f} dB")
    assert psnr(cached, full) > 25.0


@pytest.fixture
def no_model_loading(monkeypatch):
    """Fails the test if generate.py builds a pipeline: bad inputs must be refused before any model loads."""
    generate = load_script("Wan2.1/generate.py")

    def refuse(*args, **kwargs):
        raise AssertionError("a pipeline was built for a bad input")

    monkeypatch.setattr(generate, "WanI2V", refuse)
    monkeypatch.setattr(generate, "WanT2V", refuse)


@pytest.mark.parametrize("image, extra, message", [
    ("missing.png", [], "--image '{dir}/missing.png' does not exist"),
    ("", [], "--image '{dir}' is a folder: expected an image file"),
    ("text.png", [], "--image '{dir}/text.png' is not a readable image file (PNG, JPEG, ...): cannot identify image"),
    ("truncated.png", [], "--image '{dir}/truncated.png' is not a readable image file"),
    (None, [], "--image is required for task i2v-tiny: the image the video starts from"),
    ("first.png", ["--task", "t2v-tiny"], "--image is only used by the image-to-video tasks (i2v-14B, i2v-tiny); "
                                          "task t2v-tiny generates from the prompt alone"),
    ("first.png", ["--size", "832*480"], "--size 832*480 is not supported by task i2v-tiny: allowed 64*64"),
    ("first.png", ["--frame_num", "6"], "--frame_num 6 is not allowed: expected 4n+1"),
])
def test_bad_inputs_fail_before_any_model_loads(i2v_ckpt_dir, images, tmp_path, caplog, no_model_loading, image,
                                                extra, message):
    folder = os.path.dirname(images["first.png"])
    path = None if image is None else os.path.join(folder, image) if image else folder
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    assert generate_in_process(*i2v_args(i2v_ckpt_dir, path, str(out_dir / "x.mp4")), *extra) == 2
    assert message.format(dir=folder) in caplog.text
    assert os.listdir(out_dir) == []


def test_missing_clip_file_is_listed(i2v_ckpt_dir, images, tmp_path, caplog):
    broken = str(tmp_path / "ckpt")
    shutil.copytree(i2v_ckpt_dir, broken)
    os.remove(os.path.join(broken, WAN_CONFIGS[TASK].clip_checkpoint))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    assert generate_in_process(*i2v_args(broken, images["first.png"], str(out_dir / "x.mp4"))) == 2
    assert (f"checkpoint folder {broken} is missing: CLIP image encoder "
            "(models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth)") in caplog.text
    assert os.listdir(out_dir) == []
