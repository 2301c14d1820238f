"""The diffusers peer harness of the benchmark runner (profilingdit.bench.peers) on a random t2v-tiny
checkpoint."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
from scripts_loader import load_script
from wan_ckpt_dit import write_random_wan_folder

from profilingdit.bench import peers as bench_peers
from profilingdit.bench import runner as bench_runner
from profilingdit.metrics import video as video_metrics

pytestmark = pytest.mark.usefixtures("one_thread")

TASK = "t2v-tiny"
STEPS = 12  # > cache-dit's 8 warm-up steps, so DBCache can cache
PROMPT = "a large red circle moves to the right over a gray background"
# Every peer at the parameter that computes everything, and at one that skips a lot.
EXACT = [("fbc", 0.0), ("mag", 0.0), ("taylor", 1), ("taylorlite", 1), ("pab", None), ("dbcache", 0.0),
         ("dbcache-ts", 0.0)]
LOOSE = [("fbc", 10.0), ("mag", 10.0), ("taylor", 3), ("taylorlite", 3), ("pab", None), ("dbcache", 10.0),
         ("dbcache-ts", 10.0)]


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory) -> str:
    return write_random_wan_folder(str(tmp_path_factory.mktemp("Wan2.1-T2V-tiny-random")), TASK)


@pytest.fixture(scope="module")
def setup(ckpt_dir, tmp_path_factory) -> dict:
    """Our pipeline, the harness (cache-dit imported), the generation settings and both full runs."""
    out = str(tmp_path_factory.mktemp("peers"))
    pipeline, _ = bench_runner.load_pipeline(TASK, ckpt_dir)
    runner_cli = load_script("scripts/bench/runner.py", "bench_runner_cli")
    args = runner_cli.parse_args(["--sample_steps", str(STEPS)])
    settings = bench_runner.generation_settings(pipeline, args)
    harness = bench_peers.DiffusersHarness(pipeline, ["dfull", "dbcache"], out, TASK)
    _, full_frames, _, _ = bench_runner.generate(pipeline, None, PROMPT, 3, settings)
    dfull = harness.generate("dfull", None, PROMPT, 3, settings)
    return {"pipeline": pipeline, "harness": harness, "settings": settings, "out": out, "full": full_frames,
            "dfull": dfull}


def test_peer_mode_syntax_and_dfull_reference():
    modes = bench_runner.parse_modes("full,delta,fbc:0.05,taylorlite:3,pab,dbcache-ts:0.2,tea:0.1", [])
    assert [(m.name, m.kind, m.threshold) for m in modes] == [
        ("full", "full", None), ("delta", "delta", None), ("dfull", "dfull", None), ("fbc-0.05", "fbc", 0.05),
        ("taylorlite-3", "taylorlite", 3), ("pab", "pab", None), ("dbcache-ts-0.2", "dbcache-ts", 0.2),
        ("tea-0.1", "teacache", 0.1)]
    # dfull given after a peer is moved before it; without peers it stays where it is.
    assert [m.name for m in bench_runner.parse_modes("mag:0.1,dfull", [])] == ["full", "dfull", "mag-0.1"]
    assert [m.name for m in bench_runner.parse_modes("tea:0.1,dfull", [])] == ["full", "tea-0.1", "dfull"]
    assert bench_peers.parse_peer_mode("delta") is None


@pytest.mark.parametrize("item, message", [
    ("fbc", "'fbc' needs a threshold: fbc:<threshold>"),
    ("taylor:", "'taylor:' needs an interval"),
    ("mag:abc", "'mag:abc': 'abc' is not a number"),
    ("dbcache:-0.1", "'dbcache:-0.1' is not allowed: the threshold must be a finite number >= 0"),
    ("taylorlite:0", "'taylorlite:0' is not allowed: the interval must be an integer >= 1"),
    ("taylor:2.5", "'taylor:2.5' is not allowed: the interval must be an integer >= 1"),
    ("taylor:inf", "'taylor:inf' is not allowed: the interval must be an integer >= 1"),
    ("fbc:nan", "'fbc:nan' is not allowed: the threshold must be a finite number >= 0"),
    ("dfull:1", "'dfull:1' is not allowed: dfull takes no parameter"),
    ("pab:2", "'pab:2' is not allowed: pab takes no parameter"),
    ("teacache", "'teacache' is not allowed: expected full, delta, delta:<profile>, tea, tea:<threshold> or dfull, fbc:<T>"),
])
def test_bad_mode_strings_name_the_mode(item, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        bench_runner.parse_modes(item, [])
    with pytest.raises(ValueError, match="gives a mode twice"):
        bench_runner.parse_modes("fbc:0.1,fbc:0.10", [])


def test_dfull_reproduces_our_full(setup):
    _, frames, _, calls, _ = setup["dfull"]
    assert frames.shape == setup["full"].shape == (17, 64, 64, 3)
    assert video_metrics.psnr_video(setup["full"], frames) > 60.0  # same weights, same loop: rounding only
    total = 2 * STEPS * 12
    assert (calls.blocks, calls.attention, calls.ffn, calls.total_blocks) == (total, 2 * total, total, total)
    assert calls.record()["ideal_speedup"] == 1.0


@pytest.mark.parametrize("kind, value", EXACT)
def test_every_peer_at_its_exact_setting_computes_everything_and_equals_dfull(setup, kind, value, monkeypatch):
    monkeypatch.setattr(bench_peers, "PAB_TIMESTEP_WINDOW", (0, 0))  # PAB broadcasts at no timestep
    _, frames, _, calls, _ = setup["harness"].generate(kind, value, PROMPT, 3, setup["settings"])
    reference = setup["dfull"][3]
    assert (calls.blocks, calls.attention, calls.ffn) == (reference.blocks, reference.attention, reference.ffn)
    np.testing.assert_array_equal(frames, setup["dfull"][1])


@pytest.mark.parametrize("kind, value", LOOSE)
def test_every_peer_skips_work_at_a_loose_setting(setup, kind, value):
    _, frames, _, calls, _ = setup["harness"].generate(kind, value, PROMPT, 3, setup["settings"])
    total = calls.total_blocks
    if kind in ("pab", "taylor"):  # they skip inside the blocks
        assert calls.blocks == total and calls.attention < 2 * total
    else:
        assert calls.blocks < total and calls.attention == 2 * calls.blocks
    assert calls.ffn <= total if kind != "taylor" else calls.ffn < total
    psnr = video_metrics.psnr_video(setup["dfull"][1], frames)
    assert math.isfinite(psnr) and psnr > 10.0


def test_the_next_generation_starts_from_a_clean_state(setup):
    harness = setup["harness"]
    harness.generate("dbcache", 10.0, PROMPT, 3, setup["settings"])
    harness.generate("fbc", 10.0, PROMPT, 3, setup["settings"])
    _, frames, _, calls, _ = harness.generate("dfull", None, PROMPT, 3, setup["settings"])
    np.testing.assert_array_equal(frames, setup["dfull"][1])
    assert not hasattr(harness.transformer, "_context_manager") and harness.transformer._cache_config is None


def _spy_branches(harness, monkeypatch) -> list[str]:
    branches: list[str] = []
    forward = harness._forward

    def recording(latent, timestep, text, branch):
        branches.append(branch)
        return forward(latent, timestep, text, branch)

    monkeypatch.setattr(harness, "_forward", recording)
    return branches


def test_guidance_branches_never_share_cache_state(setup, monkeypatch):
    from cache_dit.caching.cache_contexts.cache_context import CachedContext
    from diffusers.hooks.hooks import StateManager
    from diffusers.hooks.pyramid_attention_broadcast import PyramidAttentionBroadcastHook

    harness, settings = setup["harness"], setup["settings"]
    branches = _spy_branches(harness, monkeypatch)
    seen: list[tuple[str, object]] = []
    get_state, pab_forward, cfg_step = (StateManager.get_state, PyramidAttentionBroadcastHook.new_forward,
                                        CachedContext.is_separate_cfg_step)
    monkeypatch.setattr(StateManager, "get_state", lambda self: seen.append((branches[-1], self.context.name))
                        or get_state(self))
    monkeypatch.setattr(PyramidAttentionBroadcastHook, "new_forward",
                        lambda self, *a, **k: seen.append((branches[-1], id(self.state))) or pab_forward(self, *a, **k))
    monkeypatch.setattr(CachedContext, "is_separate_cfg_step",
                        lambda self: seen.append((branches[-1], cfg_step(self))) or cfg_step(self))
    # diffusers hooks: state looked up under the branch's own cache-context name.
    harness.generate("fbc", 10.0, PROMPT, 3, settings)
    assert branches[:4] == ["cond", "uncond", "cond", "uncond"] and len(branches) == 2 * STEPS
    assert seen and all(branch == name for branch, name in seen)
    # PAB: every hook holds one state per branch.
    seen.clear()
    harness.generate("pab", None, PROMPT, 3, settings)
    cond, uncond = ({state for branch, state in seen if branch == b} for b in ("cond", "uncond"))
    assert cond and uncond and not cond & uncond
    # cache-dit: the cond forward is its non-CFG call and the uncond forward its CFG call.
    seen.clear()
    harness.generate("dbcache", 10.0, PROMPT, 3, settings)
    assert {(branch, flag) for branch, flag in seen} == {("cond", False), ("uncond", True)}


def test_mag_ratios_come_from_profiling_prompts_and_are_cached(setup, monkeypatch):
    from wan.tiny.data import profiling_prompts

    harness, settings = setup["harness"], setup["settings"]
    ratios = harness.calibrate_mag(settings)
    data = json.load(open(os.path.join(setup["out"], bench_peers.MAG_RATIOS_FILE)))
    assert data["key"]["prompts"] == profiling_prompts(bench_peers.MAG_CALIBRATION_PROMPTS)
    assert not set(data["key"]["prompts"]) & set(bench_runner.default_prompts(60))  # never evaluation prompts
    assert len(ratios) == STEPS and ratios[0] == 1.0 and all(r > 0 for r in ratios)
    curves = np.array(data["branches"]["cond"] + data["branches"]["uncond"])
    np.testing.assert_allclose(curves.mean(axis=0), ratios)
    again = bench_peers.DiffusersHarness(setup["pipeline"], ["mag"], setup["out"], TASK)
    monkeypatch.setattr(again, "_calibration_run", lambda *a: pytest.fail("recalibrated despite the cached file"))
    assert again.calibrate_mag(settings) == ratios
    with pytest.raises(ValueError, match="mode mag on --task t2v-1.3B: MagCache calibration prompts"):
        bench_peers.calibration_prompts("t2v-1.3B")


def test_runner_records_peers_against_dfull(ckpt_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPT + "\n")
    out = str(tmp_path / "bench")
    argv = ["--task", TASK, "--ckpt_dir", ckpt_dir, "--prompts", str(prompts), "--sample_steps", str(STEPS),
            "--modes", "full,fbc:0.5,taylorlite:3", "--out_dir", out, "--warmup", "0", "--seeds", "3"]
    assert load_script("scripts/bench/runner.py", "bench_runner_cli").main(argv) == 0
    runs = {r["mode"]: r for r in bench_runner.read_runs(os.path.join(out, "runs.jsonl"))}
    assert list(runs) == ["full", "dfull", "fbc-0.5", "taylorlite-3"]
    assert runs["dfull"]["conversion_psnr"] > 60.0 and runs["dfull"]["speed_vs_full"] > 0
    assert runs["dfull"]["cpu_vs_full"] > 0 and 0 < runs["dfull"]["forward_cpu_s"] <= 1.5 * runs["dfull"]["latency_s"]
    assert "psnr" not in runs["dfull"] and runs["dfull"]["computed_calls"] == 2 * STEPS * 12
    for name in ("fbc-0.5", "taylorlite-3"):
        run = runs[name]
        assert run["reference"] == "dfull" and run["harness"] == "diffusers" and run["speedup"] > 0
        assert run["cpu_speedup"] == pytest.approx(runs["dfull"]["forward_cpu_s"] / run["forward_cpu_s"])
        assert run["computed_calls"] + run["skipped_calls"] == 2 * STEPS * 12
        assert run["ideal_speedup"] == pytest.approx(2 * STEPS * 12 / run["computed_calls"])
        assert run["adherence"].keys() == {"colour", "motion", "shape"}
    table = open(os.path.join(out, "summary.md")).read()
    assert "| dfull | 1 |" in table and "| taylorlite-3 | 1 |" in table and "| dfull |\n" in table
    assert "dfull vs full (same weights in diffusers' transformer" in table
    for plot in ("speed_psnr.png", "speed_psnr_cpu.png"):
        assert open(os.path.join(out, plot), "rb").read(8) == b"\x89PNG\r\n\x1a\n"
