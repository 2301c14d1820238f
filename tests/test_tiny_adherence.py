"""The prompt-adherence checker on ground-truth videos of the data generator, and on wrong captions."""

import numpy as np
import pytest

from wan.tiny import adherence, data


def _video(colour="red", shape="circle", motion="right", size="large", x0=20.0, y0=30.0, speed=2.0,
           background=("gray", "striped", True, 1.0)):
    spec = data.VideoSpec((data.ObjectSpec(colour, shape, size, motion, x0, y0, speed),),
                          data.BackgroundSpec(*background))
    return spec, data.render(spec)[0]


def test_ground_truth_scores_perfectly_on_training_and_evaluation_specs():
    specs = [data.sample_spec(5, i, two_object_prob=0.0) for i in range(30)] + data.eval_specs(30)
    scores = [adherence.score_caption(data.render(spec)[0], data.caption(spec)) for spec in specs]
    assert adherence.summarise(scores) == {"colour": 1.0, "motion": 1.0, "shape": 1.0, "count": 60}


def test_every_colour_shape_and_motion_is_recognised():
    for colour in data.OBJECT_COLOURS:
        for shape in data.SHAPES:
            for motion, x0, y0 in (("right", 15, 30), ("left", 49, 30), ("down", 30, 15), ("up", 30, 49),
                                   ("bounces", 30, 30)):
                speed = 4.0 if motion == "bounces" else 2.0
                background = ("dark blue", "checkered", True, -1)
                spec, video = _video(colour, shape, motion, "small", x0, y0, speed, background)
                found = adherence.analyse_video(video)
                assert [(o.colour, o.shape, o.motion) for o in found] == [(colour, shape, motion)], data.caption(spec)


def test_model_layout_and_uint8_inputs_give_the_same_answer():
    spec, video = _video()
    as_model = data.to_model_range(video)  # [3, T, H, W] in [-1, 1]
    as_uint8 = (video * 255).round().astype(np.uint8)
    caption = data.caption(spec)
    for variant in (video, as_model, as_uint8):
        score = adherence.score_caption(variant, caption)
        assert (score.colour_correct, score.motion_correct, score.shape_correct) == (1.0, 1.0, 1.0)


def test_wrong_captions_score_zero():
    _, video = _video("red", "circle", "right")
    wrong_colour = adherence.score_caption(video, "a large blue circle moves to the right over a gray background")
    assert (wrong_colour.colour_correct, wrong_colour.motion_correct, wrong_colour.shape_correct) == (0.0, 0.0, 0.0)
    wrong_motion = adherence.score_caption(video, "a large red circle moves to the left over a gray background")
    assert (wrong_motion.colour_correct, wrong_motion.motion_correct, wrong_motion.shape_correct) == (1.0, 0.0, 1.0)
    wrong_shape = adherence.score_caption(video, "a large red square moves to the right over a gray background")
    assert wrong_shape.shape_correct == 0.0 and wrong_shape.motion_correct == 1.0


def test_two_object_caption_is_scored_per_object():
    spec = data.VideoSpec(
        (data.ObjectSpec("green", "square", "large", "down", 16, 14, 2.0),
         data.ObjectSpec("white", "triangle", "large", "left", 50, 48, 2.0)),
        data.BackgroundSpec("brown", "gradient"),
    )
    video = data.render(spec)[0]
    score = adherence.score_caption(video, data.caption(spec))
    assert (score.colour_correct, score.motion_correct, score.shape_correct) == (1.0, 1.0, 1.0)
    half = adherence.score_caption(video, "a large green square moves down and a large red triangle moves to the "
                                          "left over a brown background")
    assert (half.colour_correct, half.motion_correct, half.shape_correct) == (0.5, 0.5, 0.5)


def test_background_only_and_static_videos():
    blank = np.stack([data.background_frame(data.BackgroundSpec("gray", "striped", True, 1.0), t) for t in range(17)])
    assert adherence.analyse_video(blank) == []
    score = adherence.score_caption(blank, "a small red circle moves up over a gray background")
    assert (score.colour_correct, score.motion_correct, score.shape_correct) == (0.0, 0.0, 0.0)
    _, still = _video(speed=0.0)
    assert adherence.analyse_video(still)[0].motion == "static"


@pytest.mark.parametrize("xs, ys, expected", [
    (np.linspace(10, 40, 17), np.full(17, 30.0), "right"),
    (np.linspace(40, 10, 17), np.full(17, 30.0), "left"),
    (np.full(17, 30.0), np.linspace(40, 10, 17), "up"),
    (np.full(17, 30.0), np.linspace(10, 40, 17), "down"),
    (np.concatenate([np.linspace(20, 50, 9), np.linspace(46, 20, 8)]), np.full(17, 30.0), "bounces"),
    (np.full(17, 30.0) + np.tile([0, 1.5], 9)[:17], np.full(17, 30.0), "static"),
])
def test_motion_classes_from_tracks(xs, ys, expected):
    track = np.stack([np.arange(17.0), xs, ys], axis=1)
    assert adherence.classify_motion(track) == expected
    assert adherence.classify_motion(track[:5]) == "unknown"


def test_bad_video_shape_is_refused():
    with pytest.raises(ValueError, match="4 dims"):
        adherence.analyse_video(np.zeros((64, 64, 3)))
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\] or \[3, T, H, W\]"):
        adherence.analyse_video(np.zeros((17, 64, 64, 4), np.float32))
