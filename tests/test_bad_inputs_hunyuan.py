"""Bad-input matrix, HunyuanVideo side: sample_video.py and scripts/profile_hunyuan.py (see tests/test_bad_inputs.py).

Messages must use HunyuanVideo's own flag spellings (``--teacache-thresh``, ``--teacache-coefficients``), not the
Wan2.1 ones.
"""

from __future__ import annotations

import sys

import pytest

from cli_runs import PROFILE_HUNYUAN, SAMPLE_VIDEO, Case, assert_refused, make_inputs, run_cases, run_python

PROMPT = ["--prompt", "a cat walks on the grass"]
TOO_BIG_SEED = str(2**64)

SAMPLE_VIDEO_CASES = {
    "save-path in an unwritable folder": Case([*PROMPT, "--save-path", "/proc/results"],
                                              ["--save-path '/proc/results'", "/proc is not writable"]),
    "save-path is a file": Case([*PROMPT, "--save-path", "a_file"], ["--save-path a_file is a file"]),
    "save-path with its suffix is a file": Case([*PROMPT, "--save-path", "a", "--save-path-suffix", "file"],
                                                ["--save-path a_file is a file"]),
    "save-path below a file": Case([*PROMPT, "--save-path", "a_file/results"],
                                   ["--save-path 'a_file/results'", "is a file, not a folder"]),
    "cache-stats in a missing folder": Case([*PROMPT, "--cache-stats", "nowhere/s.json"],
                                            ["--cache-stats 'nowhere/s.json'", "does not exist"]),
    "cache-stats .txt": Case([*PROMPT, "--cache-stats", "s.txt"], ["--cache-stats 's.txt' is not allowed", ".json"]),
    "teacache with delta_cache": Case([*PROMPT, "--teacache-thresh", "0.1", "--delta_cache"],
                                      ["--teacache-thresh and --delta_cache/--cache-profile exclude each other"]),
    "teacache-coefficients missing file": Case(
        [*PROMPT, "--teacache-thresh", "0.1", "--teacache-coefficients", "fit.json"],
        ["--teacache-coefficients fit.json: no such file"]),
    "teacache-coefficients without a threshold": Case(
        [*PROMPT, "--teacache-coefficients", "1,2"],
        ["--teacache-coefficients only act with TeaCache on: add --teacache-thresh T"]),
    "teacache-thresh negative": Case([*PROMPT, "--teacache-thresh", "-1"], ["--teacache-thresh -1.0 is not allowed"]),
    "use_ret_steps": Case([*PROMPT, "--teacache-thresh", "0.1", "--use_ret_steps"],
                          ["--use_ret_steps is not available for this model"]),
    "seed beyond 64 bits": Case([*PROMPT, "--seed", TOO_BIG_SEED], [f"--seed {TOO_BIG_SEED} is not allowed"]),
    "negative seed": Case([*PROMPT, "--seed", "-1"], ["--seed -1 is not allowed", "omit it for a random seed"]),
    "flow-shift inf": Case([*PROMPT, "--flow-shift", "inf"], ["--flow-shift inf is not allowed"]),
    "rope-theta 0": Case([*PROMPT, "--rope-theta", "0"], ["--rope-theta 0 is not allowed"]),
    "cfg-scale nan": Case([*PROMPT, "--cfg-scale", "nan"], ["--cfg-scale nan is not allowed"]),
    "video-length not 4n+1": Case([*PROMPT, "--video-length", "6"], ["--video-length 6 is not allowed"]),
    "video-size not a multiple of 16": Case([*PROMPT, "--video-size", "40", "48"], ["--video-size 40 48"]),
    "infer-steps 0": Case([*PROMPT, "--infer-steps", "0"], ["--infer-steps 0 is not allowed"]),
    "prompt missing": Case([], ["--prompt is required"]),
    "use-fp8": Case([*PROMPT, "--use-fp8"], ["--use-fp8 is not supported"]),
    "cache override without the cache": Case([*PROMPT, "--cache-interval", "3"],
                                             ["--cache-interval only act with the cache on", "--cache-profile PATH"]),
    "cache-blocks not a list": Case([*PROMPT, "--delta_cache", "--cache-blocks", "single:1,x"],
                                    ["--cache-blocks: 'x' in '1,x' is not allowed"]),
    "cache profile not an object": Case([*PROMPT, "--cache-profile", "list.json"],
                                        ["cache profile", "list.json", "list", "JSON object"]),
    "cache profile is a folder": Case([*PROMPT, "--cache-profile", "a_folder"],
                                      ["cache profile", "a_folder", "directory"]),
}


@pytest.fixture(scope="module")
def sample_video_runs(tmp_path_factory):
    return run_cases([sys.executable, SAMPLE_VIDEO], SAMPLE_VIDEO_CASES,
                     str(tmp_path_factory.mktemp("sample_video")), make_inputs)


@pytest.mark.parametrize("case", list(SAMPLE_VIDEO_CASES))
def test_sample_video_refuses_before_loading(sample_video_runs, case):
    run, folder, before, needles = sample_video_runs[case]
    assert_refused(run, needles, folder, before)
    for wan_spelling in ("--teacache_thresh", "--teacache_coefficients", "--cache_profile"):
        assert wan_spelling not in run.output


PROFILE_HUNYUAN_CASES = {
    "infer-steps 0": Case([*PROMPT, "--infer-steps", "0"], ["--infer-steps 0 is not allowed"]),
    "out .txt": Case([*PROMPT, "--out", "p.txt"], ["--out 'p.txt' is not allowed", ".json"]),
    "out in an unwritable folder": Case([*PROMPT, "--out", "/proc/p.json"], ["--out '/proc/p.json'", "not writable"]),
    "figures in a missing folder": Case([*PROMPT, "--figures", "nowhere/f"], ["--figures 'nowhere/f'", "not exist"]),
    "seed beyond 64 bits for two prompts": Case([*PROMPT, "--prompt", "a dog", "--seed", str(2**64 - 1)],
                                                [f"--seed {2**64 - 1} is not allowed"]),
    "no prompt": Case([], ["no profiling prompts", "--prompt-file"]),
    "groups unknown": Case([*PROMPT, "--groups", "triple"], ["--groups triple is not allowed"]),
    "cache-k out of range": Case([*PROMPT, "--cache-k", "double:20"], ["--cache-k double:20 is not allowed"]),
    "ulysses-degree": Case([*PROMPT, "--ulysses-degree", "2"], ["--ulysses-degree 2 is not allowed"]),
}


@pytest.fixture(scope="module")
def profile_hunyuan_runs(tmp_path_factory):
    return run_cases([sys.executable, PROFILE_HUNYUAN], PROFILE_HUNYUAN_CASES,
                     str(tmp_path_factory.mktemp("profile_hunyuan")), make_inputs)


@pytest.mark.parametrize("case", list(PROFILE_HUNYUAN_CASES))
def test_profile_hunyuan_refuses_before_loading(profile_hunyuan_runs, case):
    run, folder, before, needles = profile_hunyuan_runs[case]
    assert_refused(run, needles, folder, before)


def test_a_cold_start_refuses_the_same_way(tmp_path):
    """One case from a plain `python sample_video.py` (no pre-warmed interpreter): the same refusal."""
    run = run_python(SAMPLE_VIDEO, [*PROMPT, "--seed", "-1"], str(tmp_path))
    assert_refused(run, ["--seed -1 is not allowed"], str(tmp_path), set())
