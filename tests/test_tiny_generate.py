"""The shipped tiny model through generate.py (a subprocess, as a user runs it): what the mp4 can be claimed to show.

Two kinds of checks, kept apart because they claim different things (docs/benchmarks.md, section 6: on 60 held-out
prompts the model draws the prompt's colour 98 % of the time, the motion about 20 %):

* Colour: fixed pairs chosen by a rule before any result was seen (the first four held-out evaluation prompts,
  prompt i with seed i, as wan.tiny.evaluate runs them), not selected because the model passed them. This is a
  claim about the model: it draws the colour it is asked for in most videos (at least 3 of the 4; pair 2, a red
  triangle, is the evaluation's one colour miss in 60).
* Motion: a regression guard only. The pairs below were selected because the evaluation found their motion right;
  they say nothing about how often the model follows a motion word, only that a change to the model files, the
  pipeline or the cache has not broken videos that used to be right.
"""

import os
import subprocess
import sys

import imageio.v3 as iio

from wan.tiny import adherence, data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WAN_DIR = os.path.join(ROOT, "Wan2.1")

# prompt i with seed i for the first four held-out prompts: the rule, fixed before any result was seen
COLOUR_PAIRS = [(data.caption(spec), index) for index, spec in enumerate(data.eval_specs(4))]
COLOUR_AT_LEAST = 3  # of 4: the evaluation's rate is 98 % (59 of 60); pair 2 is its one miss

# Regression guard: pairs on which the evaluation found the motion right (selected, see the module docstring).
MOTION_GUARD = ("a large yellow square moves to the right over a black striped background", 10)
MOTION_GUARD_CACHED = ("a large green triangle moves to the right over a black gradient background", 23)


def _generate(tmp_path, prompt: str, seed: int, *extra: str) -> str:
    out = str(tmp_path / f"seed{seed}.mp4")
    # One thread: on a shared 2-core machine two threads stall each other on the tiny model's small matmuls.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "generate.py", "--task", "t2v-tiny", "--prompt", prompt, "--base_seed", str(seed),
               "--save_file", out, *extra]
    result = subprocess.run(command, cwd=WAN_DIR, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "cannot represent" not in result.stdout  # the captions use the tokenizer's vocabulary only
    return out


def test_generate_draws_the_colour_of_the_prompt(tmp_path):
    """Colour on the fixed, unselected pairs: the model draws the colour it is asked for in most videos."""
    assert COLOUR_PAIRS[0] == ("a small red circle moves to the right over a moving dark red checkered background", 0)
    results = {}
    for prompt, seed in COLOUR_PAIRS:
        video = iio.imread(_generate(tmp_path, prompt, seed), plugin="pyav")  # [T, H, W, 3] uint8
        assert video.shape == (17, 64, 64, 3)
        score = adherence.score_caption(video, prompt)
        results[(prompt, seed)] = (score.colour_correct, [obj.colour for obj in score.found[:2]])
    correct = sum(colour == 1.0 for colour, _ in results.values())
    assert correct >= COLOUR_AT_LEAST, results


def test_motion_regression_guard(tmp_path):
    """Regression guard, not a claim about the model's motion (see the module docstring)."""
    prompt, seed = MOTION_GUARD
    score = adherence.score_caption(iio.imread(_generate(tmp_path, prompt, seed), plugin="pyav"), prompt)
    assert (score.colour_correct, score.motion_correct) == (1.0, 1.0), score.found


def test_motion_regression_guard_with_delta_cache(tmp_path):
    """Regression guard of the cached path (selected pair, see the module docstring)."""
    prompt, seed = MOTION_GUARD_CACHED
    video = iio.imread(_generate(tmp_path, prompt, seed, "--delta_cache"), plugin="pyav")
    score = adherence.score_caption(video, prompt)
    assert (score.colour_correct, score.motion_correct) == (1.0, 1.0), score.found
