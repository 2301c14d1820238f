"""The benchmark runner, the TeaCache fitting tool and generate.py --teacache_thresh on a random tiny checkpoint."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from scripts_loader import load_script
from wan.configs import WAN_CONFIGS
from wan_ckpt_dit import write_random_wan_folder

from common_cache import CacheConfig, CacheProfile, StreamGroupConfig, UniformSchedule
from common_cache.teacache import load_coefficients
from profilingdit.bench import runner as bench_runner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
runner_cli = load_script("scripts/bench/runner.py", "bench_runner_cli")
fit_teacache = load_script("scripts/fit_teacache.py")

TASK = "t2v-tiny"
STEPS = "6"
PROMPTS = ["a large red circle moves to the right over a gray background",
           "a small blue square moves up over a black striped background"]


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory) -> str:
    """Random weights of the t2v-tiny architecture in the official layout (small: a smooth velocity field)."""
    return write_random_wan_folder(str(tmp_path_factory.mktemp("Wan2.1-T2V-tiny-random")), TASK)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("inputs")
    prompts = folder / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n\n")
    (folder / "prompt.txt").write_text(PROMPTS[0])
    group = StreamGroupConfig("blocks", WAN_CONFIGS[TASK].num_layers, tuple(range(2, 10)), 2, UniformSchedule(2))
    profile = CacheProfile(CacheConfig((group,)), metadata={"model": "random test weights"}).save(
        str(folder / "profile.json"))
    return {"prompts": str(prompts), "prompt": str(folder / "prompt.txt"), "profile": profile}


def test_modes_expand_thresholds_and_reject_bad_names():
    modes = bench_runner.parse_modes("full,delta,tea", [0.05, 0.1])
    assert [(m.name, m.kind, m.threshold) for m in modes] == [
        ("full", "full", None), ("delta", "delta", None), ("tea-0.05", "teacache", 0.05), ("tea-0.1", "teacache", 0.1)]
    assert [m.name for m in bench_runner.parse_modes("tea:0.2", [])] == ["full", "tea-0.2"]
    with pytest.raises(ValueError, match="--modes: 'magcache' is not allowed"):
        bench_runner.parse_modes("full,magcache", [])
    with pytest.raises(ValueError, match="--modes tea needs --teacache_thresh"):
        bench_runner.parse_modes("tea", [])
    with pytest.raises(ValueError, match="gives a mode twice"):
        bench_runner.parse_modes("tea:0.1,tea", [0.1])


@pytest.fixture(scope="module")
def bench(ckpt_dir, inputs, tmp_path_factory) -> dict:
    out = str(tmp_path_factory.mktemp("bench"))
    argv = ["--task", TASK, "--ckpt_dir", ckpt_dir, "--prompts", inputs["prompts"], "--sample_steps", STEPS,
            "--modes", "full,delta,tea", "--teacache_thresh", "0", "2", "--cache_profile", inputs["profile"],
            "--out_dir", out, "--warmup", "0"]
    assert runner_cli.main(argv) == 0
    return {"out": out, "argv": argv}


def test_benchmark_records_every_run_with_speed_calls_and_fidelity(bench):
    runs = bench_runner.read_runs(os.path.join(bench["out"], "runs.jsonl"))
    assert [(r["mode"], r["prompt"]) for r in runs] == [
        (m, p) for p in PROMPTS for m in ("full", "delta", "tea-0", "tea-2")]
    calls = 2 * int(STEPS) * WAN_CONFIGS[TASK].num_layers
    for run in runs:
        assert run["computed_calls"] + run["skipped_calls"] == calls
        assert os.path.isfile(run["video"]) and os.path.isfile(run["frames"]) and run["latency_s"] > 0
        assert run["peak_rss_bytes"] > 0
        if run["mode"] != "full":
            assert run["speedup"] > 0 and 0 < run["ssim"] <= 1
            assert run["ideal_speedup"] == pytest.approx(calls / run["computed_calls"])
        assert run["adherence"].keys() == {"colour", "motion", "shape"}  # the tiny model's checker ran
    by_mode = {r["mode"]: r for r in runs if r["prompt"] == PROMPTS[0]}
    assert "psnr" not in by_mode["full"]
    # Threshold 0 with the uncalibrated (identity) polynomial computes every step: the full video exactly.
    assert by_mode["tea-0"]["skipped_calls"] == 0 and by_mode["tea-0"]["psnr"] == math.inf
    # 6 steps, warm-up 2, refresh every 2: steps 3 and 5 reuse, 8 of 12 blocks skipped per forward.
    assert by_mode["delta"]["skipped_calls"] == 2 * 2 * 8
    tea = by_mode["tea-2"]
    assert tea["computed_steps"]["cond"][0] == 0 and tea["computed_steps"]["cond"][-1] == 5
    assert 0 < tea["skipped_calls"] and math.isfinite(tea["psnr"])
    full_frames = np.load(by_mode["full"]["frames"])["frames"]
    assert full_frames.shape == (17, 64, 64, 3) and full_frames.dtype == np.uint8


def test_benchmark_is_resumable_and_summarises(bench):
    jsonl = os.path.join(bench["out"], "runs.jsonl")
    before = open(jsonl).read()
    assert runner_cli.main(bench["argv"]) == 0  # everything done: nothing runs again
    assert open(jsonl).read() == before
    table = open(os.path.join(bench["out"], "summary.md")).read()
    assert table.splitlines()[0].startswith("| mode | runs | latency (s) | speedup |")
    assert "| full | 2 |" in table and "| tea-0 | 2 |" in table and "| inf |" in table
    plot = os.path.join(bench["out"], "plot.png")
    assert runner_cli.main(["--out_dir", bench["out"], "--summarize_only", "--plot", plot]) == 0
    assert open(plot, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    summary = json.load(open(os.path.join(bench["out"], "summary.json")))
    assert [s["mode"] for s in summary] == ["full", "delta", "tea-0", "tea-2"]


def test_benchmark_input_errors(tmp_path, capsys):
    assert runner_cli.main(["--out_dir", str(tmp_path), "--summarize_only"]) == 2
    assert "no runs in" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    assert runner_cli.main(["--prompts", str(empty), "--out_dir", str(tmp_path)]) == 2
    assert "holds no prompt" in capsys.readouterr().err


@pytest.fixture(scope="module")
def fitted(ckpt_dir, inputs, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("fit") / "coefficients.json")
    argv = ["--task", TASK, "--ckpt_dir", ckpt_dir, "--prompts", inputs["prompt"], "--sample_steps", "10",
            "--out", out, "--plot", out.replace(".json", ".png")]
    assert fit_teacache.main(argv) == 0
    return out


def test_fit_writes_both_indicators_on_the_steps_each_mode_decides(fitted):
    data = json.load(open(fitted))
    assert data["format"] == "profilingdit-teacache-coefficients" and data["steps"] == 10
    e, e0 = data["fits"]["e"], data["fits"]["e0"]
    assert e["steps"] == [1, 8] and e0["steps"] == [5, 9]
    assert e["points"] == 2 * 8 and e0["points"] == 2 * 5  # branches x steps used
    assert len(e["coefficients"]) == 5
    x, y = np.array(e["data"]).T
    np.testing.assert_allclose(np.polyval(e["coefficients"], x), np.polyval(np.polyfit(x, y, 4), x), rtol=1e-6)
    assert load_coefficients(fitted, "e0") == tuple(e0["coefficients"])
    assert os.path.isfile(fitted.replace(".json", ".png"))


def test_fit_refuses_too_few_distinct_steps(ckpt_dir, inputs, tmp_path, capsys):
    argv = ["--ckpt_dir", ckpt_dir, "--prompts", inputs["prompts"], "--sample_steps", "7", "--out",
            str(tmp_path / "c.json")]
    assert fit_teacache.main(argv) == 2  # e0 decides on steps 5..6 only
    assert "only 2 distinct indicator distances for a degree-4 fit" in capsys.readouterr().err


def test_generate_runs_teacache_with_fitted_coefficients(ckpt_dir, fitted, tmp_path):
    out, stats = str(tmp_path / "tea.mp4"), str(tmp_path / "stats.json")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    args = ["--task", TASK, "--ckpt_dir", ckpt_dir, "--prompt", PROMPTS[0], "--sample_steps", "8",
            "--base_seed", "1", "--save_file", out, "--teacache_thresh", "0.3", "--teacache_coefficients", fitted,
            "--cache_stats", stats]
    result = subprocess.run([sys.executable, "generate.py", *args], cwd=os.path.join(ROOT, "Wan2.1"), env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.load(open(stats))
    assert data["policy"] == "teacache" and data["teacache"]["source"] == f"fitted ({fitted})"
    assert data["computed_steps"]["cond"][0] == 0 and data["computed_steps"]["uncond"][-1] == 7
    assert data["computed_calls"] + data["skipped_calls"] == 2 * 8 * WAN_CONFIGS[TASK].num_layers
    assert "TeaCache branch cond computed steps" in result.stdout



def test_generate_refuses_two_cache_policies(ckpt_dir, caplog):
    main = load_script("Wan2.1/generate.py").main
    argv = ["--task", TASK, "--ckpt_dir", ckpt_dir, "--teacache_thresh", "0.1", "--delta_cache"]
    assert main(argv) == 2
    assert "--teacache_thresh and --delta_cache/--cache_profile exclude each other" in caplog.text


def test_named_delta_modes_load_built_in_profiles():
    import argparse

    modes = bench_runner.parse_modes("full,delta:t2v-tiny-4x,delta", [])
    assert [(m.name, m.kind) for m in modes] == [("full", "full"), ("delta:t2v-tiny-4x", "delta"), ("delta", "delta")]
    args = argparse.Namespace(cache_profile=None)
    named = bench_runner.resolve_profile(args, "t2v-tiny", modes[1])
    default = bench_runner.resolve_profile(args, "t2v-tiny", modes[2])
    assert named.metadata["budget"]["target_speedup"] == 4.5 and default.metadata["budget"]["target_speedup"] == 3


def test_upper_envelope_interpolates_the_concave_hull_and_respects_faster_points():
    points = [(1.5, 44.0), (2.0, 42.0), (3.0, 30.0), (2.5, 33.0), (4.0, 28.0)]
    # hull: (1.5, 44) -> (2, 42) -> (4, 28); (2.5, 33) and (3, 30) lie under it (38.5 and 35 there)
    assert bench_runner.upper_envelope(points, 2.5) == pytest.approx(38.5)
    assert bench_runner.upper_envelope(points, 1.0) == 44.0  # a faster point reaches 44
    assert bench_runner.upper_envelope(points, 5.0) is None
    assert bench_runner.upper_envelope(points, 3.5) == pytest.approx(31.5)


def test_envelope_lines_give_each_of_our_modes_its_margin_over_the_peers():
    summary = [{"mode": "full", "reference": None, "cpu_speedup": 1.0, "psnr": None},
               {"mode": "delta:x", "reference": "full", "cpu_speedup": 2.0, "psnr": 45.0},
               {"mode": "fbc-0.1", "reference": "dfull", "cpu_speedup": 1.5, "psnr": 44.0},
               {"mode": "tea-0.1", "reference": "full", "cpu_speedup": 3.0, "psnr": 34.0}]
    text = bench_runner.envelope_lines(summary)
    assert "| delta:x | 2.00x | 45.00 | 40.67 | +4.33 |" in text and "| tea-0.1 |" not in text
