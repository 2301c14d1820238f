"""Schedules, stream-group validation, tags and the JSON cache profile."""

import json
import os

import pytest

from cache_toys import HUNYUAN_SINGLE_BACKGROUND, HUNYUAN_SINGLE_REFRESH, WAN14B_CACHED
from common_cache import (
    CacheConfig,
    CacheProfile,
    LinearSchedule,
    StepListSchedule,
    StreamGroupConfig,
    UniformSchedule,
    schedule_from_dict,
)


def wan14b_group(**changes):
    fields = dict(name="blocks", depth=40, cached_blocks=WAN14B_CACHED, warmup_steps=6, schedule=UniformSchedule(6))
    fields.update(changes)
    return StreamGroupConfig(**fields)


# ------------------------------------------------------------------------------------------------ schedules


def test_uniform_schedule_refreshes_every_interval_from_warmup():
    assert UniformSchedule(6).refresh_steps(6, 50) == (6, 12, 18, 24, 30, 36, 42, 48)
    assert UniformSchedule(1).refresh_steps(2, 5) == (2, 3, 4)


def test_list_schedule_adds_warmup_end_and_sorts():
    assert StepListSchedule(HUNYUAN_SINGLE_REFRESH).refresh_steps(6, 50) == HUNYUAN_SINGLE_REFRESH
    assert StepListSchedule((20, 10)).refresh_steps(6, 50) == (6, 10, 20)


def test_linear_schedule_is_eq15_rounded_down_to_even():
    # method.md 2.4: Tmax 12, Tmin 2, s0 6, S 50 -> 6, 18, 26, 32, 38, 42 and then 44 (not the list's 46).
    assert LinearSchedule(12, 2).refresh_steps(6, 50) == (6, 18, 26, 32, 38, 42, 44, 46, 48)
    assert LinearSchedule(4, 4, granularity=1).refresh_steps(0, 10) == (0, 4, 8)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: UniformSchedule(0), "interval=0 is not allowed: expected an integer >= 1"),
        (lambda: StepListSchedule((6, -1)), "refresh step=-1 is not allowed"),
        (lambda: StepListSchedule((6, 18, 6)), "contain duplicates [6]"),
        (lambda: LinearSchedule(2, 12), "max_interval=2 is not allowed: expected an integer >= 12"),
        (lambda: schedule_from_dict({"kind": "cosine"}), "schedule kind='cosine' is not allowed"),
        (lambda: schedule_from_dict({"kind": "uniform", "every": 3}), "bad fields ['every']"),
    ],
)
def test_schedule_errors(build, message):
    with pytest.raises(ValueError) as err:
        build()
    assert message in str(err.value)


def test_list_schedule_refuses_steps_in_warmup_or_beyond_the_run():
    with pytest.raises(ValueError, match=r"refresh step 3 lies inside the warm-up \(steps 0..5"):
        StepListSchedule((3, 18)).refresh_steps(6, 50)
    with pytest.raises(ValueError, match="refresh step 50 is out of range for 50 steps: allowed 6..49"):
        StepListSchedule((6, 50)).refresh_steps(6, 50)


# ------------------------------------------------------------------------------------------------ groups


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"cached_blocks": (0, 40)}, "cached block 40 is out of range for depth 40: allowed 0..39"),
        ({"cached_blocks": (-1, 3)}, "cached block -1 is out of range"),
        ({"cached_blocks": (3, 5, 3)}, "cached_blocks has duplicates [3]"),
        ({"cached_blocks": ()}, "cached_blocks is empty"),
        ({"warmup_steps": -2}, "warmup_steps=-2 is not allowed: expected an integer >= 0"),
        ({"depth": 0}, "depth=0 is not allowed"),
        ({"name": ""}, "stream group name='' is not allowed"),
    ],
)
def test_group_validation_errors(changes, message):
    with pytest.raises(ValueError) as err:
        wan14b_group(**changes)
    assert message in str(err.value)


def test_group_refuses_warmup_covering_the_run_and_names_the_group():
    group = wan14b_group(warmup_steps=6)
    with pytest.raises(ValueError, match="group 'blocks': warmup_steps=6 is not allowed for a run of 6 steps"):
        group.refresh_steps(6)
    bad = wan14b_group(schedule=StepListSchedule((6, 60)))
    with pytest.raises(ValueError, match="group 'blocks': refresh step 60 is out of range"):
        bad.refresh_steps(50)


def test_config_refuses_empty_duplicate_groups_and_other_depths():
    with pytest.raises(ValueError, match="has no stream groups"):
        CacheConfig(())
    with pytest.raises(ValueError, match=r"names the stream groups \['blocks'\] more than once"):
        CacheConfig((wan14b_group(), wan14b_group()))
    config = CacheConfig((wan14b_group(),))
    # The official code silently drops blocks 25-29 when the 40-block list meets the 30-block 1.3B model.
    with pytest.raises(ValueError, match="made for depth 40, but the model has 30 blocks"):
        config.check_depths({"blocks": 30})
    with pytest.raises(ValueError, match=r"group 'blocks' is not a stream group of this model: allowed \['double', 'single'\]"):
        config.check_depths({"double": 20, "single": 40})
    config.check_depths({"blocks": 40})


def test_tag_is_short_stable_and_distinguishes_configs():
    a = CacheConfig((wan14b_group(),))
    assert a.tag() == CacheConfig((wan14b_group(),)).tag()
    assert a.tag().startswith("dc-b28w6i6-")
    assert len(a.tag()) <= 24
    other_list = CacheConfig((wan14b_group(cached_blocks=tuple(range(28))),))
    assert other_list.tag() != a.tag()
    assert CacheConfig((wan14b_group(schedule=UniformSchedule(5)),)).tag() != a.tag()


# ------------------------------------------------------------------------------------------------ profiles


def hunyuan_profile():
    double = StreamGroupConfig("double", 20, tuple(range(6, 20)), 6, UniformSchedule(6))
    single = StreamGroupConfig("single", 40, HUNYUAN_SINGLE_BACKGROUND, 6, StepListSchedule(HUNYUAN_SINGLE_REFRESH))
    scores = {"single": [i / 40 for i in range(40)]}
    return CacheProfile(CacheConfig((double, single)), scores, {"model": "HYVideo-T/2-cfgdistill", "steps": 50})


def test_profile_json_round_trip(tmp_path):
    profile = hunyuan_profile()
    path = profile.save(str(tmp_path / "sub" / "profile.json"))
    loaded = CacheProfile.load(path)
    assert loaded == profile
    data = json.loads(open(path).read())
    assert data["format"] == "profilingdit-cache-profile" and data["version"] == 1
    assert data["groups"][1]["schedule"] == {"kind": "list", "steps": list(HUNYUAN_SINGLE_REFRESH)}
    assert [f for f in os.listdir(tmp_path / "sub")] == ["profile.json"]  # no temporary file left


def test_profile_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="cache profile not found"):
        CacheProfile.load(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        CacheProfile.load(str(bad))
    data = hunyuan_profile().to_dict()
    data["groups"][1]["cached_blocks"] = [0, 45]
    bad.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"bad.json: group 'single': cached block 45 is out of range for depth 40"):
        CacheProfile.load(str(bad))
    data = hunyuan_profile().to_dict() | {"format": "something-else"}
    bad.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="format='something-else' is not allowed"):
        CacheProfile.load(str(bad))


def test_profile_scores_must_cover_every_block():
    config = hunyuan_profile().config
    with pytest.raises(ValueError, match="scores of group 'single' have 3 entries: expected one per block \\(40\\)"):
        CacheProfile(config, {"single": [0.1, 0.2, 0.3]})
