"""GenerationReport arithmetic and the shared end-of-run summary."""

import json
import logging

import torch

from cache_toys import ToyModel
from common_cache import (
    CacheConfig,
    CacheProfile,
    DeltaCache,
    StreamGroupConfig,
    UniformSchedule,
    attach_cache,
    log_cache_summary,
)
from profilingdit.timing import GenerationReport, saved_calls_text


def test_measured_speedup_from_full_step_times():
    report = GenerationReport(step_seconds=[9.0, 2.0, 2.0, 1.0, 1.0, 2.0], full_steps=[0, 1, 2, 5],
                              denoise_seconds=17.0)
    # step 0 excluded: full steps cost 2.0 s, so full compute would take 6 x 2.0 = 12 s
    assert report.measured_speedup() == 12.0 / 17.0
    assert GenerationReport(step_seconds=[1.0], full_steps=[0], denoise_seconds=1.0).measured_speedup() is None


def test_record_step_marks_steps_without_skips_as_full(caplog, tmp_path):
    config = CacheConfig((StreamGroupConfig("blocks", 4, (1, 2), 1, UniformSchedule(3)),))
    model, cache = ToyModel(4), DeltaCache(config)
    attach_cache(model, cache)
    cache.begin(5)
    report = GenerationReport()
    for i in range(5):
        with cache.step(i):
            model(torch.ones(2))
        report.record_step(i, 1.0, cache)
    report.denoise_seconds = 4.0
    assert report.full_steps == [0, 1, 4]
    assert saved_calls_text(cache) == "cache saved 4/20 block calls"
    stats_path = str(tmp_path / "stats.json")
    with caplog.at_level(logging.INFO):
        log_cache_summary(logging.getLogger("t"), cache, report, CacheProfile(config), stats_path)
    assert "ideal 1.250x, measured 1.250x" in caplog.text
    data = json.load(open(stats_path))
    assert data["profile_tag"] == config.tag() and data["skipped_calls"] == 4 and data["measured_speedup"] == 1.25
