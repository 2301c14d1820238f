"""profilingdit.metrics.video and scripts/video_metrics.py on synthetic videos: PSNR/SSIM by hand, against
scikit-image, input checks, the CLI."""

from __future__ import annotations

import json
import math

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from scripts_loader import load_script
from skimage.metrics import structural_similarity

from profilingdit.metrics import lpips_alex
from profilingdit.metrics import video as vm

video_metrics_cli = load_script("scripts/video_metrics.py")


def video(frames=4, size=32, seed=0, low=0, high=200) -> np.ndarray:
    return np.random.default_rng(seed).integers(low, high, (frames, size, size, 3), dtype=np.uint8)


def test_identical_videos_give_infinite_psnr_and_ssim_one():
    ref = video()
    row = vm.compare(ref, ref.copy())
    assert row["psnr"] == math.inf and row["psnr_video"] == math.inf
    assert row["ssim"] == 1.0
    assert row["psnr_frames"] == [math.inf] * 4 and row["ssim_frames"] == [1.0] * 4


def test_known_additive_noise_gives_the_psnr_computed_by_hand():
    ref = video(low=5)  # values 5..199: neither +10 nor -5 clips
    row = vm.compare(ref, ref + np.uint8(10))
    assert row["psnr"] == pytest.approx(10 * math.log10(255**2 / 100))  # MSE = 10^2 = 100 -> 28.1308 dB
    # +-5 checkerboard on frame 0 only (MSE 25), frames 1..3 off by 2 everywhere (MSE 4).
    noisy = ref.astype(np.int16)
    noisy[0] += np.where(np.indices((32, 32)).sum(0) % 2 == 0, 5, -5)[..., None]
    noisy[1:] += 2
    row = vm.compare(ref, noisy.astype(np.uint8))
    expected = [10 * math.log10(255**2 / 25)] + [10 * math.log10(255**2 / 4)] * 3
    assert row["psnr_frames"] == pytest.approx(expected)
    assert row["psnr"] == pytest.approx(np.mean(expected))
    assert row["psnr_video"] == pytest.approx(10 * math.log10(255**2 / ((25 + 3 * 4) / 4)))


def test_ssim_of_a_constant_shift_by_hand_and_against_scikit_image():
    flat = np.full((1, 16, 16, 3), 100, np.uint8)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    # Zero variances: SSIM = (2 mu_a mu_b + C1) / (mu_a^2 + mu_b^2 + C1) everywhere.
    assert vm.ssim_frames(flat, flat + np.uint8(10))[0] == pytest.approx((2 * 100 * 110 + c1) / (100**2 + 110**2 + c1))
    assert c2 > 0
    ref, test = video(2, 40, seed=1, high=256), video(2, 40, seed=2, high=256)
    test = ((ref.astype(np.int32) * 3 + test) // 4).astype(np.uint8)  # correlated, SSIM well inside (0, 1)
    ours = vm.ssim_frames(ref, test)
    for f in range(2):
        reference = structural_similarity(ref[f], test[f], win_size=11, use_sample_covariance=False, data_range=255,
                                          channel_axis=-1)
        assert ours[f] == pytest.approx(reference, abs=1e-10)
    assert 0.3 < ours.mean() < 0.99


def test_float_and_integer_inputs_are_accepted_in_range():
    ref = video()
    assert vm.compare(ref.astype(np.float32) / 255.0, ref)["psnr"] == math.inf
    assert np.array_equal(vm.as_uint8_video(ref.astype(np.int64)), ref)


@pytest.mark.parametrize("bad, message", [
    (np.zeros((4, 32, 32), np.uint8), r"shape \(4, 32, 32\): expected a non-empty \[frames, height, width, 3\]"),
    (np.zeros((4, 32, 32, 4), np.uint8), r"shape \(4, 32, 32, 4\)"),
    (np.zeros((0, 32, 32, 3), np.uint8), "non-empty"),
    (np.full((1, 32, 32, 3), 1.5, np.float32), r"values in \[1.5, 1.5\]: float videos must lie in \[0, 1\]"),
    (np.full((1, 32, 32, 3), -0.5, np.float32), r"\[-0.5, -0.5\]"),
    (np.full((1, 32, 32, 3), np.nan, np.float32), "NaN"),
    (np.full((1, 32, 32, 3), 300, np.int32), r"values in \[300, 300\]: allowed 0..255"),
    (np.zeros((1, 32, 32, 3), bool), "dtype bool"),
])
def test_bad_input_is_rejected_with_a_clear_error(bad, message):
    with pytest.raises(ValueError, match=message):
        vm.compare(bad, video(1))


def test_mismatched_videos():
    with pytest.raises(ValueError, match=r"frame sizes differ: reference \(32, 32\), test \(40, 40\)"):
        vm.compare(video(size=32), video(size=40))
    with pytest.raises(ValueError, match="smaller than the 11x11 SSIM window"):
        vm.compare(video(size=8), video(size=8))
    with pytest.raises(ValueError, match=r"lengths differ: reference 5 frames, test 3 frames \(shapes "
                                         r"\(5, 32, 32, 3\) and \(3, 32, 32, 3\)\)"):
        vm.compare(video(5), video(3))


def test_frechet_distance_of_shifted_features():
    feats = np.random.default_rng(0).normal(size=(400, 3))
    assert vm.frechet_distance(feats, feats) == pytest.approx(0.0, abs=1e-8)
    shift = np.array([1.0, -2.0, 0.5])
    assert vm.frechet_distance(feats, feats + shift) == pytest.approx((shift**2).sum(), abs=1e-6)


def random_alexnet(path) -> None:
    generator = torch.Generator().manual_seed(0)
    state = {}
    for (i, o, k, _, _), index in zip(lpips_alex.ALEX_CONVS, lpips_alex.ALEX_KEYS):
        state[f"features.{index}.weight"] = torch.randn(o, i, k, k, generator=generator) * 0.05
        state[f"features.{index}.bias"] = torch.zeros(o)
    torch.save(state, path)


def test_lpips_with_user_weights_and_the_skip_message(tmp_path):
    skipped = vm.OptionalMetrics()
    assert skipped.skipped["lpips"].startswith("skipped: weights not available, pass --lpips-weights")
    assert skipped.skipped["fid"].startswith("skipped:")
    weights = tmp_path / "alexnet.pth"
    random_alexnet(weights)
    metrics = vm.OptionalMetrics(lpips_weights=str(weights))
    ref = video(2, 64)
    assert vm.compare(ref, ref, optional=metrics)["lpips"] == 0.0
    assert vm.compare(ref, video(2, 64, seed=5), optional=metrics)["lpips"] > 0.0
    torch.save({"features.0.weight": torch.zeros(64, 3, 11, 11)}, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="has no key 'features.0.bias'"):
        vm.OptionalMetrics(lpips_weights=str(tmp_path / "partial.pth"))
    with pytest.raises(FileNotFoundError, match="no file at"):
        vm.OptionalMetrics(lpips_weights=str(tmp_path / "missing.pth"))


def test_cli_pairs_folders_and_writes_json_and_markdown(tmp_path, capsys):
    ref_dir, test_dir = tmp_path / "full", tmp_path / "cached"
    ref_dir.mkdir()
    test_dir.mkdir()
    ref = video(3, 32)
    np.save(ref_dir / "a.npy", ref)
    np.save(test_dir / "a.npy", ref + np.uint8(10))
    iio.imwrite(ref_dir / "b.mp4", ref, plugin="pyav", codec="libx264", fps=8)
    iio.imwrite(test_dir / "b.mp4", ref, plugin="pyav", codec="libx264", fps=8)
    np.save(test_dir / "only_here.npy", ref)
    out_json, out_md = tmp_path / "m.json", tmp_path / "m.md"
    argv = ["--ref", str(ref_dir), "--test", str(test_dir), "--json", str(out_json), "--md", str(out_md)]
    assert video_metrics_cli.main(argv) == 0
    result = json.loads(out_json.read_text())
    assert [p["name"] for p in result["pairs"]] == ["a.npy", "b.mp4"]
    assert result["pairs"][0]["psnr"] == pytest.approx(28.1308, abs=1e-4)
    # the same frames, encoded the same way: strict JSON has null (not Infinity) and the flag says why
    assert result["pairs"][1]["psnr"] is None and result["pairs"][1]["identical"] is True
    assert result["pairs"][1]["psnr_frames"] == [None] * 3 and result["pairs"][1]["identical_frames"] == 3
    assert result["pairs"][0]["identical"] is False and result["identical_videos"] == 1
    assert result["mean"]["psnr"] == pytest.approx(28.1308, abs=1e-4)  # over the videos that are not identical
    assert "Infinity" not in out_json.read_text()
    table = out_md.read_text()
    assert "| a.npy | 3 | 28.13 |" in table and "LPIPS skipped: weights not available" in table
    assert video_metrics_cli.main(["--ref", str(ref_dir), "--test", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
