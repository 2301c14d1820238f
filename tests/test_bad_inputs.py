"""Bad-input matrix, Wan2.1 side: generate.py, scripts/profile_wan.py, scripts/video_metrics.py, scripts/sweep_wan.sh.

Every case runs the real command line as a subprocess (as a user types it, from a folder of its own) and must end
with exit code != 0, a message naming the flag and the value, no traceback, no model loaded (none of the loading
lines in the log) and no file left behind, hidden ones included (tests/cli_runs.py, ``assert_refused``). The cases
are the ones of issue 17 plus the clear ones that already worked, so that they stay clear.
HunyuanVideo's command lines: tests/test_bad_inputs_hunyuan.py.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import numpy as np
import pytest

from cli_runs import (
    GENERATE,
    PROFILE_WAN,
    ROOT,
    SWEEP_WAN,
    VIDEO_METRICS,
    Case,
    assert_refused,
    files_under,
    make_inputs,
    run_cases,
    run_command,
    run_python,
)

TINY = ["--task", "t2v-tiny", "--sample_steps", "4", "--prompt", "a red circle moves up", "--base_seed", "1"]
MAX_SEED = 2**64 - 1
TINY_PROFILE = os.path.join(ROOT, "Wan2.1", "wan", "cache_profiles", "t2v-tiny.json")


GENERATE_CASES = {
    # output paths, checked before any loading (issue 17: found only after the whole generation)
    "save_file in an unwritable folder": Case(["--save_file", "/proc/x.mp4"],
                                             ["--save_file '/proc/x.mp4'", "/proc is not writable"]),
    "save_file .gif": Case(["--save_file", "x.gif"], ["--save_file 'x.gif' is not allowed", ".mp4"]),
    "save_file without extension": Case(["--save_file", "x"], ["--save_file 'x' is not allowed", ".mp4"]),
    "save_file in a missing folder": Case(["--save_file", "nowhere/x.mp4"],
                                          ["--save_file 'nowhere/x.mp4'", "{d}/nowhere does not exist"]),
    "save_file is a folder": Case(["--save_file", "a_folder"], ["--save_file 'a_folder' is a folder"]),
    "save_file below a file": Case(["--save_file", "a_file/x.mp4"], ["--save_file 'a_file/x.mp4'", "is a file"]),
    "cache_stats in a missing folder": Case(["--cache_stats", "nowhere/s.json"],
                                            ["--cache_stats 'nowhere/s.json'", "does not exist"]),
    "cache_stats .txt": Case(["--cache_stats", "s.txt"], ["--cache_stats 's.txt' is not allowed", ".json"]),
    # numeric ranges
    "frame_num beyond the RoPE table": Case(["--frame_num", "100001"],
                                            ["--frame_num 100001 is not allowed: at most 4093"]),
    "frame_num not 4n+1": Case(["--frame_num", "6"], ["--frame_num 6 is not allowed: expected 4n+1"]),
    "frame_num not an integer": Case(["--frame_num", "abc"], ["argument --frame_num: invalid int value: 'abc'"]),
    "base_seed beyond 64 bits": Case(["--base_seed", str(MAX_SEED + 1)],
                                     [f"--base_seed {MAX_SEED + 1} is not allowed: expected 0..{MAX_SEED}"]),
    "sample_steps 0": Case(["--sample_steps", "0"], ["--sample_steps 0 is not allowed: expected an integer >= 1"]),
    "sample_shift inf": Case(["--sample_shift", "inf"], ["--sample_shift inf is not allowed"]),
    "sample_guide_scale nan": Case(["--sample_guide_scale", "nan"], ["--sample_guide_scale nan is not allowed"]),
    "size of another task": Case(["--size", "832*480"], ["--size 832*480 is not supported by task t2v-tiny"]),
    "ulysses_size without torchrun": Case(["--ulysses_size", "2"], ["WORLD_SIZE=1"]),
    "use_prompt_extend": Case(["--use_prompt_extend"], ["--use_prompt_extend is not available"]),
    # cache and TeaCache flags
    "teacache_thresh negative": Case(["--teacache_thresh", "-1"], ["--teacache_thresh -1.0 is not allowed"]),
    "teacache_coefficients missing file": Case(
        ["--teacache_thresh", "0.1", "--teacache_coefficients", "fit.json"],
        ["--teacache_coefficients fit.json: no such file"]),
    "teacache with delta_cache": Case(["--teacache_thresh", "0.1", "--delta_cache"],
                                      ["--teacache_thresh and --delta_cache", "exclude each other"]),
    "cache override without the cache": Case(["--cache_interval", "3"], ["--cache_interval only act with the cache"]),
    "cache_blocks out of range": Case(["--cache_profile", TINY_PROFILE, "--cache_blocks", "3,12"],
                                      ["cached block 12 is out of range for depth 12"]),
    # cache profile schema (common_cache/config.py): the message names the file, the field, the value and the type
    "cache_profile missing": Case(["--cache_profile", "nope.json"], ["--cache_profile nope.json", "no such file"]),
    "cache_profile not an object": Case(["--cache_profile", "list.json"],
                                        ["cache profile", "list.json", "list", "JSON object"]),
    "cache_profile block index as a string": Case(["--cache_profile", "string_index.json"],
                                                  ["string_index.json", "cached block", "'3'", "int"]),
    "cache_profile is a folder": Case(["--cache_profile", "a_folder"], ["cache profile", "a_folder", "directory"]),
}


@pytest.fixture(scope="module")
def generate_runs(tmp_path_factory):
    return run_cases([sys.executable, GENERATE, *TINY], GENERATE_CASES, str(tmp_path_factory.mktemp("generate")),
                     make_inputs)


@pytest.mark.parametrize("case", list(GENERATE_CASES))
def test_generate_refuses_before_loading(generate_runs, case):
    run, folder, before, needles = generate_runs[case]
    assert_refused(run, needles, folder, before)
    assert "not found" not in run.output
    assert "out of range" not in run.output or case == "cache_blocks out of range"


def test_default_output_name_needs_a_writable_current_folder():
    run = run_python(GENERATE, TINY, "/proc")  # no --save_file: the video would go to the current folder
    assert_refused(run, ["--save_file '(default: the current folder)'", "/proc is not writable"], "/proc/self/fdinfo",
                   files_under("/proc/self/fdinfo"))


def test_truncated_weights_shard_is_named_before_loading(tmp_path):
    shipped = os.path.join(ROOT, "Wan2.1", "Wan2.1-T2V-tiny")
    ckpt = tmp_path / "ckpt"
    shutil.copytree(shipped, ckpt)
    shard = ckpt / "diffusion_pytorch_model-00002-of-00002.safetensors"
    with open(shard, "r+b") as handle:
        handle.truncate(os.path.getsize(shard) // 2)
    out = tmp_path / "out"
    out.mkdir()
    run = run_python(GENERATE, [*TINY, "--ckpt_dir", str(ckpt), "--save_file", str(out / "x.mp4")], str(out))
    assert_refused(run, [f"weight file {shard} is truncated"], str(out), set())


# ---------------------------------------------------------------------------------------------------------------
# scripts/profile_wan.py


PROFILE_WAN_CASES = {
    "sample_steps 0 is refused, not replaced by the default": Case(["--sample_steps", "0"],
                                                                   ["--sample_steps 0 is not allowed"]),
    "sample_steps negative names sample_steps": Case(["--sample_steps", "-5"], ["--sample_steps -5 is not allowed"]),
    "frame_num 0": Case(["--frame_num", "0"], ["--frame_num 0 is not allowed"]),
    "frame_num beyond the RoPE table": Case(["--frame_num", "100001"], ["--frame_num 100001 is not allowed"]),
    "sample_shift 0": Case(["--sample_shift", "0"], ["--sample_shift 0.0 is not allowed"]),
    "negative base_seed": Case(["--base_seed", "-3"], ["--base_seed -3 is not allowed"]),
    "out .txt": Case(["--out", "p.txt"], ["--out 'p.txt' is not allowed", ".json"]),
    "out in a missing folder": Case(["--out", "nowhere/p.json"], ["--out 'nowhere/p.json'", "does not exist"]),
    "out in an unwritable folder": Case(["--out", "/proc/p.json"], ["--out '/proc/p.json'", "not writable"]),
    "figures in a missing folder": Case(["--figures", "nowhere/f"], ["--figures 'nowhere/f'", "does not exist"]),
    "figures is a folder": Case(["--figures", "a_folder"], ["--figures 'a_folder' is a folder"]),
    "warmup too long": Case(["--sample_steps", "10", "--warmup", "10"], ["--warmup 10 is not allowed"]),
    "cache_k out of range": Case(["--cache_k", "12"], ["--cache_k 12 is not allowed"]),
    "prompt_file missing": Case(["--prompt_file", "prompts.txt"], ["--prompt_file not found: prompts.txt"]),
    "query_chunk 0": Case(["--query_chunk", "0"], ["--query_chunk 0 is not allowed"]),
    "tau nan": Case(["--tau", "nan"], ["--tau nan is not allowed"]),
}


@pytest.fixture(scope="module")
def profile_wan_runs(tmp_path_factory):
    return run_cases([sys.executable, PROFILE_WAN, "--num_prompts", "1"], PROFILE_WAN_CASES,
                     str(tmp_path_factory.mktemp("profile_wan")), make_inputs)


@pytest.mark.parametrize("case", list(PROFILE_WAN_CASES))
def test_profile_wan_refuses_before_loading(profile_wan_runs, case):
    run, folder, before, needles = profile_wan_runs[case]
    assert_refused(run, needles, folder, before)
    if case.startswith("sample_steps"):
        assert "--warmup" not in run.output


# ---------------------------------------------------------------------------------------------------------------
# scripts/video_metrics.py


def make_videos(folder: str) -> None:
    make_inputs(folder)
    rng = np.random.default_rng(0)
    np.save(os.path.join(folder, "five.npy"), rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8))
    np.save(os.path.join(folder, "three.npy"), rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8))
    np.save(os.path.join(folder, "wide.npy"), rng.integers(0, 256, (5, 32, 48, 3), dtype=np.uint8))
    with open(os.path.join(folder, "text.mp4"), "w") as handle:
        handle.write("this is not a video\n")


METRICS_CASES = {
    "videos of different length": Case(["--ref", "five.npy", "--test", "three.npy"],
                                       ["lengths differ", "(5, 32, 32, 3)", "(3, 32, 32, 3)"]),
    "videos of different size": Case(["--ref", "five.npy", "--test", "wide.npy"],
                                     ["frame sizes differ", "(5, 32, 32, 3)", "(5, 32, 48, 3)"]),
    "not a video": Case(["--ref", "text.mp4", "--test", "text.mp4"], ["text.mp4 is not a readable video"]),
    "missing reference": Case(["--ref", "nope.mp4", "--test", "five.npy"], ["--ref nope.mp4 does not exist"]),
    "json .txt": Case(["--ref", "five.npy", "--test", "five.npy", "--json", "m.txt"],
                      ["--json 'm.txt' is not allowed", ".json"]),
    "json in a missing folder": Case(["--ref", "five.npy", "--test", "five.npy", "--json", "nowhere/m.json"],
                                     ["--json 'nowhere/m.json'", "does not exist"]),
    "md in an unwritable folder": Case(["--ref", "five.npy", "--test", "five.npy", "--md", "/proc/m.md"],
                                       ["--md '/proc/m.md'", "not writable"]),
    "md is a folder": Case(["--ref", "five.npy", "--test", "five.npy", "--md", "a_folder"],
                           ["--md 'a_folder' is a folder"]),
}


@pytest.fixture(scope="module")
def metrics_runs(tmp_path_factory):
    return run_cases([sys.executable, VIDEO_METRICS], METRICS_CASES, str(tmp_path_factory.mktemp("metrics")),
                     make_videos)


@pytest.mark.parametrize("case", list(METRICS_CASES))
def test_video_metrics_refuses(metrics_runs, case):
    run, folder, before, needles = metrics_runs[case]
    assert_refused(run, needles, folder, before, max_seconds=30)


def test_video_metrics_writes_strict_json_for_identical_videos(tmp_path):
    make_videos(str(tmp_path))
    run = run_python(VIDEO_METRICS, ["--ref", "five.npy", "--test", "five.npy", "--json", "m.json"], str(tmp_path))
    assert run.returncode == 0, run.output

    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    result = json.loads((tmp_path / "m.json").read_text(), parse_constant=refuse)  # strict: no Infinity, no NaN
    (pair,) = result["pairs"]
    assert pair["psnr"] is None and pair["psnr_video"] is None and pair["identical"] is True
    assert pair["ssim"] == 1.0 and result["identical_videos"] == 1 and result["mean"]["psnr"] is None


# ---------------------------------------------------------------------------------------------------------------
# scripts/sweep_wan.sh


SWEEP_CASES = {
    "unknown argument": Case(["--bogus-flag"], ["got '--bogus-flag'", "takes no arguments"]),
    "positional argument": Case(["t2v-tiny"], ["got 't2v-tiny'"]),
    "NUM_PROMPTS not a number": Case([], ["NUM_PROMPTS=x is not allowed"], {"NUM_PROMPTS": "x"}),
    "SEEDS entry not a number": Case([], ["SEEDS entry 'a' is not allowed"], {"SEEDS": "1 a"}),
    "MODES entry unknown": Case([], ["MODES entry 'fast' is not allowed"], {"MODES": "full fast"}),
    "THRESHOLDS entry not a number": Case([], ["THRESHOLDS entry 'high' is not allowed"], {"THRESHOLDS": "high"}),
    "METRICS not 0/1": Case([], ["METRICS=2 is not allowed"], {"METRICS": "2"}),
    "PROMPTS_FILE missing": Case([], ["PROMPTS_FILE=", "does not exist"], {"PROMPTS_FILE": "nope.txt"}),
}


@pytest.fixture(scope="module")
def sweep_runs(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("sweep"))
    cases = {name: Case(case.args, case.needles, {"OUT_DIR": "sweep_out", "PYTHON": "false", **(case.env or {})})
             for name, case in SWEEP_CASES.items()}
    return run_cases(["bash", SWEEP_WAN], cases, root)


@pytest.mark.parametrize("case", list(SWEEP_CASES))
def test_sweep_refuses_before_doing_anything(sweep_runs, case):
    run, folder, before, needles = sweep_runs[case]
    assert run.returncode == 2
    assert_refused(run, needles, folder, before, max_seconds=10)  # PYTHON=false: nothing could have run anyway


def test_sweep_help(tmp_path):
    run = run_command(["bash", SWEEP_WAN, "--help"], str(tmp_path), {"OUT_DIR": "sweep_out"})
    assert run.returncode == 0 and "Inputs (environment variables" in run.output and "--help" in run.output
    assert files_under(str(tmp_path)) == set()
