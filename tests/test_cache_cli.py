"""The cache argument group shared by both command lines."""

import argparse

import pytest
import torch

from cache_toys import HUNYUAN_SINGLE_BACKGROUND, HUNYUAN_SINGLE_REFRESH, WAN14B_CACHED
from common_cache import (
    CacheConfig,
    CacheProfile,
    StepListSchedule,
    StreamGroupConfig,
    UniformSchedule,
    add_cache_args,
    cache_profile_from_args,
    delta_cache_from_args,
    parse_int_list,
)

WAN = CacheProfile(CacheConfig((StreamGroupConfig("blocks", 40, WAN14B_CACHED, 6, UniformSchedule(6)),)))
HUNYUAN = CacheProfile(
    CacheConfig(
        (
            StreamGroupConfig("double", 20, tuple(range(6, 20)), 6, UniformSchedule(6)),
            StreamGroupConfig("single", 40, HUNYUAN_SINGLE_BACKGROUND, 6, StepListSchedule(HUNYUAN_SINGLE_REFRESH)),
        )
    )
)


def parse(argv, kebab=False):
    parser = argparse.ArgumentParser()
    add_cache_args(parser, kebab=kebab)
    return parser.parse_args(argv)


def test_parse_int_list_accepts_ranges_and_rejects_garbage():
    assert parse_int_list("cache_blocks", "0, 2-5,9") == (0, 2, 3, 4, 5, 9)
    with pytest.raises(ValueError, match=r"--cache_blocks: 'x' in '1,x' is not allowed"):
        parse_int_list("cache_blocks", "1,x")
    with pytest.raises(ValueError, match=r"range '7-3' is empty"):
        parse_int_list("cache_blocks", "7-3")


def test_cache_off_by_default_and_overrides_need_it():
    assert cache_profile_from_args(parse([]), WAN, "t2v-14B") is None
    with pytest.raises(ValueError, match="--cache_interval only act with the cache on: add --delta_cache"):
        cache_profile_from_args(parse(["--cache_interval", "3"]), WAN, "t2v-14B")


def test_builtin_profile_and_missing_builtin():
    assert cache_profile_from_args(parse(["--delta_cache"]), WAN, "t2v-14B") == WAN
    with pytest.raises(ValueError, match="there is no built-in cache profile for t2v-1.3B: pass --cache_profile PATH"):
        cache_profile_from_args(parse(["--delta_cache"]), None, "t2v-1.3B")


def test_overrides_replace_fields_of_every_group():
    args = parse(["--delta_cache", "--cache_blocks", "0-9", "--cache_warmup", "4", "--cache_refresh_steps", "4,20"])
    profile = cache_profile_from_args(args, WAN, "t2v-14B")
    group = profile.config.group("blocks")
    assert group.cached_blocks == tuple(range(10)) and group.warmup_steps == 4
    assert group.schedule == StepListSchedule((4, 20))
    assert profile.metadata["overrides"]["blocks"]["cache_blocks"] == "0-9"


def test_group_prefixed_overrides_in_kebab_spelling():
    args = parse(["--delta-cache", "--cache-interval", "single:4", "--cache-blocks", "double:10-19"], kebab=True)
    profile = cache_profile_from_args(args, HUNYUAN, "HYVideo-T/2-cfgdistill")
    assert profile.config.group("single").schedule == UniformSchedule(4)
    assert profile.config.group("double").schedule == UniformSchedule(6)
    assert profile.config.group("double").cached_blocks == tuple(range(10, 20))
    assert parse(["--delta_cache"], kebab=True).delta_cache  # the paper's underscore spelling works too


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--delta_cache", "--cache_blocks", "1,2"], "the profile has groups ['double', 'single']; name one"),
        (["--delta_cache", "--cache_interval", "triple:3"], "group 'triple' is not in the cache profile"),
        (["--delta_cache", "--cache_interval", "3", "--cache_refresh_steps", "single:6,9"],
         "--cache_interval and --cache_refresh_steps exclude each other"),
        (["--delta_cache", "--cache_warmup", "single:2", "--cache_warmup", "single:3"],
         "--cache_warmup is given twice for group 'single'"),
        (["--delta_cache", "--cache_blocks", "single:0,40"], "cached block 40 is out of range for depth 40"),
        (["--delta_cache", "--cache_warmup", "-1"], "--cache_warmup='-1' is not allowed"),
    ],
)
def test_override_errors(argv, message):
    with pytest.raises(ValueError) as err:
        cache_profile_from_args(parse(argv), HUNYUAN, "hunyuan")
    assert message in str(err.value)


def test_profile_file_and_storage_options(tmp_path):
    path = HUNYUAN.save(str(tmp_path / "p.json"))
    args = parse(["--cache_profile", path, "--cache_delta_dtype", "bf16", "--cache_offload"])
    profile = cache_profile_from_args(args, None, "hunyuan")
    assert profile == HUNYUAN
    cache = delta_cache_from_args(args, profile)
    assert cache.delta_dtype == torch.bfloat16 and cache.delta_device == torch.device("cpu")
    with pytest.raises(FileNotFoundError, match="cache profile not found"):
        cache_profile_from_args(parse(["--cache_profile", str(tmp_path / "nope.json")]), None, "x")
