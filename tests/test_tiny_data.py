"""The tiny model's data generator: determinism, caption/mask consistency, the held-out split."""

import numpy as np
import pytest
from scipy.ndimage import binary_dilation

from wan.tiny import data


def _specs(count, held_out=False, two_object_prob=0.25):
    return [data.sample_spec(3, i, held_out=held_out, two_object_prob=two_object_prob) for i in range(count)]


def test_specs_and_videos_are_deterministic():
    assert _specs(20) == _specs(20)
    spec = data.sample_spec(3, 5)
    video_a, masks_a = data.render(spec)
    video_b, masks_b = data.render(spec)
    assert np.array_equal(video_a, video_b) and np.array_equal(masks_a, masks_b)
    assert data.sample_spec(3, 5) != data.sample_spec(4, 5)


def test_video_layout_and_value_ranges():
    video, masks = data.render(data.sample_spec(0, 1, two_object_prob=1.0))
    assert video.shape == (17, 64, 64, 3) and video.dtype == np.float32
    assert masks.shape == (2, 17, 64, 64) and masks.dtype == bool
    spec = data.sample_spec(0, 1, two_object_prob=1.0)
    backgrounds = np.stack([data.background_frame(spec.background, t) for t in range(17)])
    assert backgrounds.max() <= data.MAX_BACKGROUND_BRIGHTNESS
    far = ~binary_dilation(masks.any(axis=0), iterations=2, structure=np.ones((1, 3, 3)))
    assert np.allclose(video[far], backgrounds[far], atol=1e-6)  # away from the objects: the background
    assert video.max(axis=-1)[masks.any(axis=0)].min() >= 0.5  # the objects are bright
    model_input = data.to_model_range(video)
    assert model_input.shape == (3, 17, 64, 64)
    assert model_input.min() >= -1.0 and model_input.max() <= 1.0


@pytest.mark.parametrize("index", range(12))
def test_masks_match_caption_colour_and_motion(index):
    spec = data.sample_spec(11, index, two_object_prob=0.5)
    video, masks = data.render(spec)
    wanted = data.parse_caption(data.caption(spec))
    assert [o["colour"] for o in wanted] == [o.colour for o in spec.objects]
    for obj, mask, target in zip(spec.objects, masks, wanted):
        assert target["shape"] == obj.shape and target["motion"] == obj.motion and target["size"] == obj.size
        inner = mask[0] if obj is spec.objects[-1] else mask[0] & ~masks[-1, 0]
        pixels = video[0][inner]
        # the pixels fully inside the mask carry the object's colour
        assert np.abs(np.median(pixels, axis=0) - np.asarray(data.OBJECT_COLOURS[obj.colour])).max() < 1e-6
        centre = data.positions(obj)
        assert centre.shape == (17, 2)
        step = np.diff(centre, axis=0)
        expected = {"right": (1, 0), "left": (-1, 0), "down": (0, 1), "up": (0, -1)}.get(obj.motion)
        if expected is None:  # bounces: horizontal only, with at least one reversal
            assert np.all(step[:, 1] == 0) and (np.sign(step[:, 0]) != np.sign(step[0, 0])).any()
        else:
            assert np.all(np.sign(step) == np.asarray(expected))


def test_single_object_mask_area_follows_size_and_shape():
    for shape, fill in (("square", 1.0), ("circle", np.pi / 4), ("triangle", 0.5)):
        obj = data.ObjectSpec("red", shape, "large", "right", 20.0, 30.0, 2.0)
        spec = data.VideoSpec((obj,), data.BackgroundSpec("black", "plain"))
        _, masks = data.render(spec)
        side = 2 * data.SIZES["large"]
        assert masks[0, 0].sum() == pytest.approx(fill * side * side, rel=0.08)


def test_caption_round_trip_and_template():
    spec = data.VideoSpec(
        (data.ObjectSpec("blue", "square", "small", "bounces", 20, 20, 4.0),
         data.ObjectSpec("yellow", "triangle", "large", "up", 40, 50, 2.0)),
        data.BackgroundSpec("dark green", "checkered", True, 1.0),
    )
    text = data.caption(spec)
    assert text == ("a small blue square bounces and a large yellow triangle moves up over a moving dark green "
                    "checkered background")
    assert data.parse_caption(text) == [
        {"size": "small", "colour": "blue", "shape": "square", "motion": "bounces"},
        {"size": "large", "colour": "yellow", "shape": "triangle", "motion": "up"},
    ]
    with pytest.raises(ValueError, match="names no object"):
        data.parse_caption("a blue background")


def test_held_out_split():
    held, train = data.triples(True), data.triples(False)
    assert len(held) == 18 and len(train) == 72 and not set(held) & set(train)
    for position, values in enumerate((data.OBJECT_COLOURS, data.SHAPES, data.MOTIONS)):
        assert {t[position] for t in train} == set(values)  # every attribute is seen in training
    for spec in _specs(200):
        first = spec.objects[0]
        assert not data.is_held_out(first.colour, first.shape, first.motion)
        assert len({o.colour for o in spec.objects}) == len(spec.objects)
    evaluation = data.eval_specs(60)
    assert len({data.caption(s) for s in evaluation}) == 60
    assert all(len(s.objects) == 1 and data.is_held_out(s.objects[0].colour, s.objects[0].shape,
                                                         s.objects[0].motion) for s in evaluation)
    assert {(s.objects[0].colour, s.objects[0].shape, s.objects[0].motion) for s in evaluation} == set(held)


def test_objects_stay_inside_the_frame():
    for spec in _specs(100, two_object_prob=1.0):
        for obj in spec.objects:
            r = data.SIZES[obj.size]
            track = data.positions(obj)
            assert track.min() >= r - 1e-9 and track.max() <= data.WIDTH - r + 1e-9
