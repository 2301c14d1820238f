"""wan.tiny.motion_learnability: the simplified motion set, the checker's ceiling, a short run, flag errors."""

import dataclasses
import json

import numpy as np
import pytest
from wan.configs import WAN_CONFIGS
from wan.modules.vae import WanVAE
from wan.tiny import data
from wan.tiny import motion_learnability as learnability


def test_simple_specs_are_one_object_straight_motions_inside_the_frame():
    specs = learnability.simple_specs(1, 8, "black", speed_scale=0.5)
    assert [spec.objects[0].motion for spec in specs] == list(learnability.DIRECTIONS) * 2
    assert all(len(spec.objects) == 1 and spec.background == data.BackgroundSpec("black", "plain") for spec in specs)
    full = learnability.simple_specs(1, 8, "black")
    for slow, fast in zip(specs, full):  # same draws, half the speed, the same start
        assert slow.objects[0].speed == pytest.approx(fast.objects[0].speed / 2)
        assert (slow.objects[0].x0, slow.objects[0].y0) == (fast.objects[0].x0, fast.objects[0].y0)
        r = data.SIZES[slow.objects[0].size]
        path = data.positions(slow.objects[0])
        assert path.min() >= r and path.max() <= data.WIDTH - r
    assert len({spec.background for spec in learnability.simple_specs(1, 16, "random")}) > 1


def test_motion_accuracy_scores_the_generators_own_videos():
    specs = learnability.simple_specs(2, 4, "black")
    videos = [data.render(spec)[0] for spec in specs]
    assert learnability.motion_accuracy(videos, specs) == {
        "motion": 1.0, "colour": 1.0, "found_motion": {"down": 1, "left": 1, "right": 1, "up": 1}}
    # the same videos against captions with the opposite direction: every motion wrong, every colour right
    reverse = {"right": "left", "left": "right", "up": "down", "down": "up"}
    reversed_specs = [dataclasses.replace(spec, objects=(dataclasses.replace(
        spec.objects[0], motion=reverse[spec.objects[0].motion]),)) for spec in specs]
    assert learnability.motion_accuracy(videos, reversed_specs) == {
        "motion": 0.0, "colour": 1.0, "found_motion": {"down": 1, "left": 1, "right": 1, "up": 1}}


@pytest.mark.parametrize("amplitude", [0.0, 8.0])
def test_short_run_reports_ceiling_and_history(tmp_path, one_thread, amplitude):
    out = tmp_path / "learn.json"
    assert learnability.main(["--num_clips", "8", "--steps", "3", "--batch", "2", "--eval_prompts", "4",
                              "--eval_every", "2", "--sample_steps", "3", "--positional_amplitude", str(amplitude),
                              "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    ceiling = result["ceiling"]  # the VAE round trip keeps every direction
    assert (ceiling["motion"], ceiling["colour"], sum(ceiling["found_motion"].values())) == (1.0, 1.0, 4)
    assert [row["step"] for row in result["history"]] == [2, 3]
    for row in result["history"]:  # shares of the 4 evaluation prompts, and a real loss
        assert row["motion"] * 4 in range(5) and row["colour"] * 4 in range(5)
        assert np.isfinite(row["loss"]) and row["loss"] > 0
        directions = row["x0_direction"]  # the reader gets every clean latent right; sigmas as listed
        assert directions["clean"] == 1.0 and list(directions)[1:] == [str(s) for s in learnability.PROBE_SIGMAS]
        assert all(value * 4 in range(5) for value in directions.values())
    assert result["settings"]["init"] == "fresh"
    # the ramps' readability is reported only for a run that trains with them
    assert ("position_readability" in result) == (amplitude > 0)


@pytest.mark.parametrize("flags, message", [
    (["--steps", "0"], "--steps 0 is not allowed"),
    (["--speed_scale", "1.5"], "--speed_scale 1.5 is not allowed: must be in (0, 1]"),
    (["--lr", "0"], "--lr 0.0 is not allowed"),
    (["--positional_amplitude", "-1"], "--positional_amplitude -1.0 is not allowed: must be at least 0"),
    (["--init", "random"], "invalid choice: 'random'"),
])
def test_bad_flags_are_rejected(flags, message, capsys):
    with pytest.raises(SystemExit) as error:
        learnability.main(flags)
    assert error.value.code != 0 and message in capsys.readouterr().err


def test_latent_direction_reads_the_encoded_clips():
    config = WAN_CONFIGS["t2v-tiny"]
    vae = WanVAE(vae_pth=f"{config.default_ckpt_dir}/{config.vae_checkpoint}")
    specs = learnability.simple_specs(3, 8, "black")
    latents = vae.encode(learnability.clips_of(specs))
    assert [learnability.latent_direction(z) for z in latents] == [s.objects[0].motion for s in specs]
    # the same latents played backwards move the other way
    reverse = {"right": "left", "left": "right", "up": "down", "down": "up"}
    assert [learnability.latent_direction(z.flip(1)) for z in latents] == \
        [reverse[s.objects[0].motion] for s in specs]
