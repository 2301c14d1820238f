"""Wan2.1 output: str2bool, the official frame arithmetic, mp4 round trips, atomic writes, file names."""

import argparse
import os
import sys
from datetime import datetime

import imageio
import imageio.v3 as iio
import numpy as np
import pytest
import torch

from wan.utils import utils as video_utils
from wan.utils.utils import cache_video, default_save_file, make_frame_grid, str2bool, video_to_frames


def gradient_video(frames=9, height=64, width=64):
    """[1, 3, T, H, W] in [-1, 1]: red ramps left to right, green top to bottom, blue with time."""
    video = torch.empty(1, 3, frames, height, width)
    video[0, 0] = torch.linspace(-1, 1, width)[None, None, :]
    video[0, 1] = torch.linspace(-1, 1, height)[None, :, None]
    video[0, 2] = torch.linspace(-1, 1, frames)[:, None, None]
    return video


def test_str2bool():
    for text in ("yes", "TRUE", "t", "Y", "1", "True"):
        assert str2bool(text) is True
    for text in ("no", "False", "F", "n", "0", "NO"):
        assert str2bool(text) is False
    assert str2bool(True) is True and str2bool(False) is False
    with pytest.raises(argparse.ArgumentTypeError, match="Boolean value expected, got 'maybe'"):
        str2bool("maybe")
    parser = argparse.ArgumentParser()
    parser.add_argument("--offload_model", type=str2bool, default=None)
    assert parser.parse_args(["--offload_model", "False"]).offload_model is False


def test_frame_arithmetic_clamps_normalizes_and_truncates():
    values = torch.tensor([-3.0, -1.0, 0.0, 0.999, 1.0, 2.0])  # 0 -> 127.5 -> 127 and 0.999 -> 254.87 -> 254
    video = values.view(1, 1, 1, 1, 6).repeat(1, 3, 2, 2, 1)  # [B=1, C=3, T=2, H=2, W=6]
    frames = video_to_frames(video)
    assert frames.shape == (2, 2, 6, 3) and frames.dtype == np.uint8
    assert frames[1, 1, :, 0].tolist() == [0, 0, 127, 254, 255, 255]
    gray = torch.tensor([0.0, 0.5, 0.999, 1.0]).view(1, 1, 1, 1, 4)  # one channel -> RGB; no normalisation
    frames = video_to_frames(gray, normalize=False, value_range=(0, 1))
    assert frames.shape == (1, 1, 4, 3)
    assert frames[0, 0].tolist() == [[0] * 3, [127] * 3, [254] * 3, [255] * 3]


def test_frame_grid_layout():
    images = torch.arange(1, 4, dtype=torch.float32).view(3, 1, 1, 1).expand(3, 1, 4, 6)  # images of 1, 2, 3
    grid = make_frame_grid(images, nrow=2)
    assert grid.shape == (3, 2 * (4 + 2) + 2, 2 * (6 + 2) + 2)
    assert torch.all(grid[:, 2:6, 2:8] == 1) and torch.all(grid[:, 2:6, 10:16] == 2)
    assert torch.all(grid[:, 8:12, 2:8] == 3) and torch.all(grid[:, 8:12, 10:16] == 0)  # empty last cell
    assert grid.sum().item() == 3 * 24 * (1 + 2 + 3)  # padding is zero
    assert make_frame_grid(images, nrow=8).shape == (3, 4 + 4, 3 * 8 + 2)  # one row of three
    assert torch.equal(make_frame_grid(images[:1]), images[0].repeat(3, 1, 1))  # a batch of one: no padding


def test_cache_video_round_trip(tmp_path):
    video = gradient_video()
    save_file = str(tmp_path / "clip.mp4")
    assert cache_video(video, save_file) == save_file
    assert os.listdir(tmp_path) == ["clip.mp4"]  # no temporary file left
    frames = iio.imread(save_file, plugin="pyav")
    meta = iio.immeta(save_file, plugin="pyav")
    assert frames.shape == (9, 64, 64, 3) and meta["fps"] == 16.0 and meta["codec"] == "h264"
    error = np.abs(frames.astype(np.int64) - video_to_frames(video).astype(np.int64))
    assert error.mean() < 3.0 and error.max() < 16, (error.mean(), error.max())  # measured 1.6 / 7
    # Two 32x32 videos side by side: the official grid, padding 2 -> 36x70 frames, written at that size.
    pair = gradient_video(3, 32, 32).repeat(2, 1, 1, 1, 1)
    pair_file = cache_video(pair, str(tmp_path / "pair.mp4"), fps=8, nrow=2)
    assert iio.imread(pair_file, plugin="pyav").shape == (3, 36, 70, 3)


@pytest.mark.parametrize(
    "tensor,save_name,kwargs,error,message",
    [
        (torch.zeros(3, 9, 64, 64), "a.mp4", {}, ValueError, r"\[B, C, T, H, W\] .* got \(3, 9, 64, 64\)"),
        (torch.zeros(1, 4, 2, 16, 16), "a.mp4", {}, ValueError, r"C 1 or 3, got \(1, 4, 2, 16, 16\)"),
        (torch.zeros(1, 3, 2, 15, 16), "a.mp4", {}, ValueError, "frame size 15x16 .* must be even"),
        (torch.zeros(1, 3, 2, 16, 16), "a.gif", {}, ValueError, "must end with one of .mp4, .mkv, .mov"),
        (torch.zeros(1, 3, 2, 16, 16), "a.mp4", {"fps": 0}, ValueError, "fps must be a number > 0, got 0"),
        (torch.zeros(1, 3, 2, 16, 16), "a.mp4", {"value_range": (1, -1)}, ValueError, r"high, got \(1, -1\)"),
        (torch.zeros(1, 3, 2, 16, 16), "no/a.mp4", {}, FileNotFoundError, "folder .*no' of .* not exist"),
    ],
)
def test_bad_input_is_refused_before_writing(tmp_path, tensor, save_name, kwargs, error, message):
    with pytest.raises(error, match=message):
        cache_video(tensor, str(tmp_path / save_name), **kwargs)
    assert os.listdir(tmp_path) == []


def test_failure_mid_write_leaves_no_partial_file(tmp_path, monkeypatch):
    save_file = tmp_path / "clip.mp4"
    save_file.write_bytes(b"previous video")
    real_get_writer = imageio.get_writer
    seen_paths = []

    class FailingWriter:
        """Writes three real frames, then fails like a full disk would."""

        def __init__(self, path, **kwargs):
            self.writer = real_get_writer(path, **kwargs)
            self.count = 0
            seen_paths.append(path)

        def append_data(self, frame):
            if self.count == 3:
                raise OSError("No space left on device (injected)")
            self.writer.append_data(frame)
            self.count += 1

        def close(self):
            self.writer.close()

    monkeypatch.setattr(video_utils.imageio, "get_writer", FailingWriter)
    with pytest.raises(OSError, match="injected"):
        cache_video(gradient_video(), str(save_file))
    assert len(seen_paths) == 1 and os.path.dirname(seen_paths[0]) == str(tmp_path)
    assert os.path.basename(seen_paths[0]).startswith(".clip.") and seen_paths[0].endswith(".partial.mp4")
    assert os.listdir(tmp_path) == ["clip.mp4"] and save_file.read_bytes() == b"previous video"


def test_default_save_file(monkeypatch):
    now = datetime(2025, 3, 4, 5, 6, 7)
    prompt = "A cat/dog runs on the beach at sunset, cinematic lighting, golden hour"
    name = default_save_file("t2v-1.3B", "832*480", 1, 2, prompt, now=now)
    short_prompt = "A_cat_dog_runs_on_the_beach_at_sunset,_cinematic_l"
    assert len(short_prompt) == 50
    assert name == f"t2v-1.3B_832x480_1_2_{short_prompt}_20250304_050607.mp4"
    image_name = default_save_file("t2i-14B", "1024*1024", 1, 1, "a b", now=now)
    assert image_name == "t2i-14B_1024x1024_1_1_a_b_20250304_050607.png"
    monkeypatch.setattr(sys, "platform", "win32")
    windows_name = default_save_file("t2v-14B", "1280*720", 8, 1, "x", now=now)
    assert windows_name == "t2v-14B_1280x720_8_1_x_20250304_050607.mp4"
    # quotes, newlines, wildcards and separators become "_"; a long CJK/emoji prompt stays under 255 bytes
    unsafe = default_save_file("t2v-14B", "1280*720", 1, 1, 'say "hi"\n*?<a\\b>|:\'x\'', now=now)
    assert unsafe == "t2v-14B_1280x720_1_1_say__hi_____a_b____x__20250304_050607.mp4"
    long_name = default_save_file("t2v-14B", "1280*720", 1, 1, "猫" * 40 + "🐈" * 40, now=now)
    assert len(long_name.encode()) <= 255 and long_name.startswith("t2v-14B_1280x720_1_1_猫")
    stamp = default_save_file("t2v-14B", "1280*720", 1, 1, "x")[-19:-4]
    assert datetime.strptime(stamp, "%Y%m%d_%H%M%S")
