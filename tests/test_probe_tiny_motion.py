"""wan.tiny.probe_motion: the reversed captions, both probes on the shipped model, flag errors."""

import json

import pytest

from wan.tiny import data
from wan.tiny import probe_motion as probe


def test_reversed_caption_swaps_straight_motions_only():
    spec = data.VideoSpec(
        (data.ObjectSpec("red", "circle", "large", "right", 12, 30, 2.5),
         data.ObjectSpec("blue", "square", "small", "up", 30, 50, 3.0),
         data.ObjectSpec("white", "triangle", "small", "bounces", 32, 20, 4.0)),
        data.BackgroundSpec("gray", "striped", True, 1.0),
    )
    assert probe.reversed_caption(spec) == (
        "a large red circle moves to the left and a small blue square moves down and a small white triangle bounces "
        "over a moving gray striped background")


def test_probes_run_on_the_shipped_model(tmp_path, one_thread):
    out = tmp_path / "probe.json"
    assert probe.main(["--seeds", "1", "--sample_steps", "4", "--clips", "4", "--sigmas", "0.8",
                       "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    swap = result["direction_swap"]
    assert swap["count"] == 8 and len(swap["rows"]) == 8
    direction_of = {data.MOTION_PHRASES[d]: d for d in probe.DIRECTIONS}
    asked = [next(d for phrase, d in direction_of.items() if phrase in row["prompt"]) for row in swap["rows"]]
    # the accuracy is the share of rows whose found motion is the direction the prompt asked for
    assert swap["accuracy"] == sum(row["found"] == d for row, d in zip(swap["rows"], asked)) / 8
    assert {row["prompt"].split(" over ")[0].split(" ", 4)[-1] for row in swap["rows"]} == {
        data.MOTION_PHRASES[d] for d in probe.DIRECTIONS}
    position = result["absolute_position"]
    assert len(position["gray gradient"]) == len(position["gray"]) == 1
    assert position["ground truth gray gradient"] == pytest.approx(1.9, abs=0.1)  # 0.5 + 0.8 y / 64, rows 4-15 vs 48-59
    (gap,) = result["loss_gap"]
    assert gap["sigma"] == 0.8
    assert gap["direction_gap"] == pytest.approx(gap["reversed"] - gap["true"])
    assert gap["caption_gap"] > 0.0  # the model does use its caption: the empty one costs more


@pytest.mark.parametrize("flags, message", [
    (["--seeds", "0"], "--seeds 0 is not allowed"),
    (["--sigmas", "0.5", "1.5"], "--sigmas [0.5, 1.5] is not allowed"),
])
def test_bad_flags_are_rejected(flags, message, capsys):
    with pytest.raises(SystemExit) as error:
        probe.main(flags)
    assert error.value.code != 0 and message in capsys.readouterr().err
