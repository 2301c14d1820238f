"""scripts/profile_hunyuan.py end to end on a tiny checkpoint tree in the official layout.

The tree (3 double + 6 single blocks, `--dit-config`, tiny VAE and text encoders) is the `ckpts` fixture of
test_hy_sample_video.py. The CLI profiles two prompts over 8 steps in-process; its profile loads, fits the model,
and `sample_video.py --cache-profile` skips exactly the calls the profile plans. An interrupted run resumed with
`--resume` gives the statistics of a straight run; bad input fails before anything is written.
"""

from __future__ import annotations

import json
import os

import pytest
from test_hy_sample_video import DOUBLE, SINGLE, ckpts, dit_paths  # noqa: F401 (ckpts: the checkpoint fixture)
from test_hy_sample_video import cli_args as sample_video_args

from common_cache import CacheProfile
from scripts_loader import load_script

sample_video = load_script("HunyuanVideo/sample_video.py")

STEPS = 8
PROMPTS = ["a red circle moves to the right", "a blue square bounces"]
DEPTHS = {"double": DOUBLE, "single": SINGLE}


def load_cli():
    return load_script("scripts/profile_hunyuan.py")


def cli_args(root: str, out: str, *extra: str, prompts=PROMPTS, dit_config: bool = True) -> list[str]:
    weight, config = dit_paths(root)
    args = ["--model-base", root, "--dit-weight", weight, "--video-size", "32", "48", "--video-length", "5",
            "--infer-steps", str(STEPS), "--flow-reverse", "--seed", "42", "--warmup", "2", "--interval", "3",
            "--out", out]
    args += ["--dit-config", config] if dit_config else []
    for prompt in prompts:
        args += ["--prompt", prompt]
    return args + list(extra)


@pytest.fixture(scope="module")
def cli():
    return load_cli()


@pytest.fixture(scope="module")
def straight(ckpts, cli, tmp_path_factory) -> tuple[str, list[str]]:  # noqa: F811
    """Both stacks, a compute budget per group, a profiled refresh schedule: (profile path, argv)."""
    out = str(tmp_path_factory.mktemp("straight") / "tiny.json")
    argv = cli_args(ckpts, out, "--cache-k", "double:2", "--cache-k", "single:3", "--refresh-budget", "auto")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MODEL_BASE", raising=False)
        assert cli.main(argv) == 0
    return out, argv


def test_profile_loads_fits_the_model_and_records_the_run(straight):
    out, _ = straight
    profile = CacheProfile.load(out)
    profile.config.check_depths(DEPTHS)
    assert [g.name for g in profile.config.groups] == ["double", "single"]
    for group, k in (("double", 2), ("single", 3)):
        config = profile.config.group(group)
        assert len(config.cached_blocks) == k and config.warmup_steps == 2
        assert len(config.refresh_steps(STEPS)) == 2  # auto: as many as the uniform interval 3 from step 2 (2, 5)
        assert len(profile.scores[group]) == DEPTHS[group] and all(isinstance(s, float) for s in profile.scores[group])
        # the cached blocks are the lowest-scoring ones
        assert max(profile.scores[group][b] for b in config.cached_blocks) <= min(
            s for b, s in enumerate(profile.scores[group]) if b not in config.cached_blocks)
    meta = profile.metadata
    assert meta["source"] == "profiler" and meta["prompts"] == PROMPTS and meta["steps"] == STEPS
    assert meta["command"].startswith("python scripts/profile_hunyuan.py --model-base ")
    assert "--cache-k double:2 --cache-k single:3" in meta["command"]
    assert meta["model"] == "HunyuanVideo DiT (--dit-config config.json)" and meta["depths"] == DEPTHS
    assert meta["seeds"] == [42, 43] and meta["video_size"] == [32, 48] and meta["groups"] == ["double", "single"]
    assert sorted(os.listdir(os.path.dirname(out))) == [
        "tiny.json", "tiny_heatmap_double.png", "tiny_heatmap_single.png", "tiny_step_change.png"]


def planned_skips(profile: CacheProfile, group: str) -> list[int]:
    """Per step, the block calls the profile skips in ``group`` (cached blocks on reuse steps)."""
    config = profile.config.group(group)
    refresh = set(config.refresh_steps(STEPS))
    return [len(config.cached_blocks) if s >= config.warmup_steps and s not in refresh else 0 for s in range(STEPS)]


def test_sample_video_runs_the_profile_as_planned(straight, ckpts, tmp_path, monkeypatch):  # noqa: F811
    out, _ = straight
    stats_path = str(tmp_path / "stats.json")
    monkeypatch.delenv("MODEL_BASE", raising=False)
    argv = sample_video_args(ckpts, str(tmp_path / "results"), "--cache-profile", out, "--cache-stats", stats_path)
    assert sample_video.main(argv) == 0
    stats = json.load(open(stats_path))
    profile = CacheProfile.load(out)
    skipped = {group: planned_skips(profile, group) for group in DEPTHS}
    assert stats["groups"]["double"]["skipped"] == skipped["double"]
    assert stats["groups"]["single"]["skipped"] == skipped["single"]
    total = sum(map(sum, skipped.values()))
    assert total > 0 and stats["computed_calls"] == STEPS * (DOUBLE + SINGLE) - total


def test_an_interrupted_run_resumes_to_the_statistics_of_a_straight_run(straight, cli, tmp_path, monkeypatch):
    """Ctrl-C right after prompt 0 was saved, then --resume; without --seed the drawn base seed is kept."""
    reference, argv = straight
    out = str(tmp_path / "tiny.json")
    argv = [out if a == reference else a for a in argv]
    del argv[argv.index("--seed"):argv.index("--seed") + 2]
    monkeypatch.delenv("MODEL_BASE", raising=False)
    seeds = iter([42, 7])  # the first draw is the straight run's seed; a second draw would differ
    monkeypatch.setattr(cli.random, "randint", lambda low, high: next(seeds))
    real_write, writes = cli.write_json_atomic, []

    def write_then_interrupt(data, path):
        real_write(data, path)
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "write_json_atomic", write_then_interrupt)
    assert cli.main(argv) == 130
    with open(out + ".partial.json") as handle:
        assert json.load(handle)["statistics"]["prompts"] == PROMPTS[:1]
    assert sorted(os.listdir(tmp_path)) == ["tiny.json.partial.json"]

    monkeypatch.setattr(cli, "write_json_atomic", lambda data, path: writes.append(path) or real_write(data, path))
    assert cli.main([*argv, "--resume"]) == 0
    assert writes == [out + ".partial.json"]  # only prompt 1 ran
    assert not os.path.exists(out + ".partial.json")
    resumed, expected = CacheProfile.load(out), CacheProfile.load(reference)
    assert resumed.metadata["seeds"] == [42, 43] and resumed.metadata["prompts"] == PROMPTS
    assert resumed.config == expected.config
    for group in DEPTHS:
        assert resumed.scores[group] == pytest.approx(expected.scores[group], abs=1e-6)
    for name in ("block_scores", "step_change"):
        assert json.dumps(resumed.metadata["profiler"][name]) == json.dumps(expected.metadata["profiler"][name])


def test_resume_refuses_a_partial_file_of_other_settings(ckpts, cli, tmp_path, caplog, monkeypatch):  # noqa: F811
    out = str(tmp_path / "tiny.json")
    partial = {"run": {"seed": 1}, "seed": 1, "statistics": {}}
    cli.write_json_atomic(partial, out + ".partial.json")
    monkeypatch.delenv("MODEL_BASE", raising=False)
    assert cli.main(cli_args(ckpts, out, "--resume")) == 2
    assert f"--resume: {out}.partial.json was written with other settings" in caplog.text
    assert os.listdir(tmp_path) == ["tiny.json.partial.json"]


def test_single_stream_only_with_real_guidance(ckpts, cli, tmp_path, monkeypatch):  # noqa: F811
    out = str(tmp_path / "single.json")
    monkeypatch.delenv("MODEL_BASE", raising=False)
    argv = cli_args(ckpts, out, "--groups", "single", "--cache-k", "4", "--cfg-scale", "3", prompts=PROMPTS[:1])
    assert cli.main(argv) == 0  # real guidance: one batched [uncond ; cond] forward per step
    profile = CacheProfile.load(out)
    assert profile.metadata["cfg_scale"] == 3.0
    profile.config.check_depths(DEPTHS)
    assert [g.name for g in profile.config.groups] == ["single"] and list(profile.scores) == ["single"]
    assert len(profile.config.group("single").cached_blocks) == 4
    assert profile.config.group("single").refresh_steps(STEPS) == (2, 5)  # uniform interval 3
    assert sorted(os.listdir(tmp_path)) == ["single.json", "single_heatmap_single.png", "single_step_change.png"]


@pytest.mark.parametrize("extra, message", [
    ([], "no profiling prompts: pass --prompt (repeatable) or --prompt-file (HunyuanVideo has no built-in"),
    (["--cache-k", "3"], "--cache-k 3 is not allowed for group 'double': expected 1..2 (the model has 3 double"),
    (["--cache-k", "double:1", "--cache-k", "single:6"],
     "--cache-k single:6 is not allowed for group 'single': expected 1..5 (the model has 6 single-stream blocks)"),
    (["--cache-k", "triple:2"], "--cache-k triple:2 is not allowed: 'triple' is not a profiled group"),
    (["--groups", "single", "--cache-k", "double:2"], "--cache-k double:2 is not allowed: 'double' is not a profiled"),
    (["--cache-k", "2", "--tau", "0.5"], "--cache-k and --tau exclude each other"),
    (["--groups", "double,triple"], "--groups double,triple is not allowed: expected stream groups from double"),
    (["--ulysses-degree", "2"], "--ulysses-degree 2 is not allowed: profiling runs in one process"),
    (["--ring-degree", "2"], "--ring-degree 2 is not allowed: profiling runs in one process"),
    (["--num-videos", "2"], "--num-videos 2 is not allowed: profiling generates one video per prompt"),
    (["--warmup", "8"], "--warmup 8 is not allowed: expected 0..7"),
    (["--refresh-budget", "x"], "--refresh-budget x is not allowed"),
    (["--score-from-step", "8"], "--score-from-step 8 is not allowed: expected 0..7"),
    (["--mask-provider", "video", "--mask-videos", "a.npy"], "--mask-videos has 1 files for 2 prompts"),
    (["--video-length", "6"], "--video-length 6 is not allowed: expected 4n+1"),
])
def test_bad_input_fails_clearly_and_writes_nothing(ckpts, cli, tmp_path, caplog, monkeypatch,  # noqa: F811
                                                    extra, message):
    argv = cli_args(ckpts, str(tmp_path / "tiny.json"), *extra, prompts=PROMPTS if extra else [])
    monkeypatch.delenv("MODEL_BASE", raising=False)
    assert cli.main(argv) == 2
    assert message in caplog.text
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("cache_k, message", [
    ("20", "--cache-k 20 is not allowed for group 'double': expected 1..19 (the model has 20 double-stream blocks)"),
    ("single:40", "--cache-k single:40 is not allowed for group 'single': expected 1..39"),
])
def test_official_depths_are_checked_before_loading(cli, tmp_path, caplog, monkeypatch, cache_k, message):
    monkeypatch.delenv("MODEL_BASE", raising=False)
    argv = ["--model-base", str(tmp_path / "nonexistent"), "--prompt", "x", "--flow-reverse", "--cache-k", cache_k,
            "--out", str(tmp_path / "p.json")]
    assert cli.main(argv) == 2
    assert message in caplog.text and "checkpoint pieces missing" not in caplog.text
    assert os.listdir(tmp_path) == []


def test_target_speedup_writes_a_budgeted_profile_that_sample_video_runs_as_planned(ckpts, cli, tmp_path,  # noqa: F811
                                                                                   monkeypatch):
    """Both stacks as units sharing one budget: ideal speedup >= 2, the stack units' own steps, and sample_video.py
    with the profile skips exactly the planned calls."""
    monkeypatch.delenv("MODEL_BASE", raising=False)
    out = str(tmp_path / "budget.json")
    assert cli.main(cli_args(ckpts, out, "--target-speedup", "2", "--max-forecast-order", "1",
                             "--step-weight-power", "0.5")) == 0
    profile = CacheProfile.load(out)
    meta = profile.metadata
    assert meta["budget"]["step_weight_power"] == 0.5 and "damping_psnr_on_profiling_prompts" in meta["budget"]
    assert meta["source"] == "profiler (budgeted)" and meta["measured_on_profiling_prompts"]["prompts"] == 2
    assert meta["budget"]["computed_block_calls_per_branch"] <= STEPS * (DOUBLE + SINGLE) / 2
    stats_path = str(tmp_path / "stats.json")
    argv = sample_video_args(ckpts, str(tmp_path / "results"), "--cache-profile", out, "--cache-stats", stats_path)
    assert sample_video.main(argv) == 0
    stats = json.load(open(stats_path))
    assert stats["computed_calls"] == meta["budget"]["computed_block_calls_per_branch"]
    assert stats["ideal_speedup"] >= 2.0
    for group in profile.config.groups:
        assert len(group.units) == 1 and group.units[0].forecast_order <= 1
