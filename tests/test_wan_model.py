"""Wan2.1 DiT: diffusers equivalence, key conversion, checkpoint loading, block loop, real-config sizes."""

import json
import os

import pytest
import torch
from diffusers import WanTransformer3DModel
from safetensors.torch import load_file, save_file
from wan_ckpt_dit import TINY_CONFIG, random_tiny_wan, tiny_inputs, write_wan_checkpoint

from wan.configs import SIZE_CONFIGS, SUPPORTED_SIZES, WAN_CONFIGS, register_task, wan_shared_cfg
from wan.modules.attention import attention
from wan.modules.checkpoint import ARCHITECTURE_FIELDS, load_wan_model
from wan.modules.model import WanModel
from wan.utils.diffusers_keys import (
    diffusers_config,
    diffusers_to_official,
    official_to_diffusers,
    official_to_diffusers_key,
)

NEG_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，丑陋的，"
    "残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，"
    "三条腿，背景人很多，倒着走"
)


@pytest.fixture(scope="module")
def tiny_model():
    return random_tiny_wan(seed=0)


@pytest.fixture(scope="module")
def diffusers_model(tiny_model):
    model = WanTransformer3DModel(**diffusers_config(**TINY_CONFIG)).eval()
    model.load_state_dict(official_to_diffusers(tiny_model.state_dict()), strict=True)
    return model


def _run(model, latents, t, contexts, seq_len):
    with torch.no_grad():
        return model(latents, t, contexts, seq_len=seq_len)


# --- (1) diffusers equivalence --------------------------------------------------------------------


@pytest.mark.parametrize("timestep, tol", [(999, 1e-3), (500, 1e-4), (3, 1e-4)])
def test_matches_diffusers(tiny_model, diffusers_model, timestep, tol):
    generator = torch.Generator().manual_seed(timestep)
    latents = [torch.randn(16, 3, 8, 12, generator=generator) for _ in range(2)]  # 72 tokens each
    contexts = [torch.randn(n, 32, generator=generator) for n in (5, 9)]
    t = torch.tensor([timestep, timestep])
    padded_text = torch.stack([torch.cat([c, c.new_zeros(512 - c.shape[0], 32)]) for c in contexts])
    with torch.no_grad():
        ref = diffusers_model(torch.stack(latents), t, padded_text, return_dict=False)[0]
    for seq_len in (72, 80):  # without and with latent padding (masked keys)
        ours = torch.stack(_run(tiny_model, latents, t, contexts, seq_len))
        assert ours.dtype == torch.float32 and ours.shape == ref.shape == (2, 16, 3, 8, 12)
        torch.testing.assert_close(ours, ref, atol=tol, rtol=tol)
    assert ref.abs().max() > 1.0  # a non-degenerate output


# --- (2) key conversion ---------------------------------------------------------------------------


def test_converter_maps_every_key(tiny_model, diffusers_model):
    official = tiny_model.state_dict()
    converted = official_to_diffusers(official)
    target = diffusers_model.state_dict()
    assert len(converted) == len(official) == len(target)
    assert set(converted) == set(target)
    for key, value in converted.items():
        assert value.shape == target[key].shape, key
    assert list(diffusers_to_official(converted)) == list(official)
    assert official_to_diffusers_key("blocks.2.norm3.weight") == "blocks.2.norm2.weight"
    assert official_to_diffusers_key("head.modulation") == "scale_shift_table"
    assert official_to_diffusers_key("blocks.0.modulation") == "blocks.0.scale_shift_table"
    with pytest.raises(ValueError, match=r"no rename rule for key 'blocks\.0\.cross_attn\.k_extra\.weight'"):
        official_to_diffusers_key("blocks.0.cross_attn.k_extra.weight")


# --- (3) checkpoint round trip --------------------------------------------------------------------


@pytest.mark.parametrize("num_shards", [1, 3])
def test_checkpoint_round_trip(tmp_path, tiny_model, num_shards):
    write_wan_checkpoint(str(tmp_path), tiny_model.state_dict(), TINY_CONFIG, num_shards=num_shards)
    names = sorted(os.listdir(tmp_path))
    if num_shards == 1:
        assert names == ["config.json", "diffusion_pytorch_model.safetensors"]
    else:
        assert "diffusion_pytorch_model-00003-of-00003.safetensors" in names and len(names) == 5
    loaded = load_wan_model(tmp_path, expected_config=WAN_CONFIGS["t2v-1.3B"] | _tiny_fields())
    assert loaded.freqs.dtype == torch.complex128 and not loaded.training
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in loaded.parameters())
    latents, contexts, seq_len = tiny_inputs()
    t = torch.tensor([640, 17])
    expected = _run(tiny_model, latents, t, contexts, seq_len)
    actual = _run(loaded, latents, t, contexts, seq_len)
    assert [u.shape for u in actual] == [(16, 3, 8, 12), (16, 2, 6, 8)]
    for a, b in zip(actual, expected):
        assert torch.equal(a, b)


def _tiny_fields() -> dict:
    return {key: TINY_CONFIG[key] for key in TINY_CONFIG if key in ARCHITECTURE_FIELDS}


# --- (4) loader errors ----------------------------------------------------------------------------


def test_loader_missing_files(tmp_path, tiny_model):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_wan_model(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=f"config.json is missing in checkpoint folder '{tmp_path}'"):
        load_wan_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(TINY_CONFIG))
    with pytest.raises(FileNotFoundError) as info:
        load_wan_model(tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message and "diffusion_pytorch_model.safetensors.index.json" in message
    assert "expected diffusion_pytorch_model.safetensors or" in message

    sharded = tmp_path / "sharded"
    write_wan_checkpoint(str(sharded), tiny_model.state_dict(), TINY_CONFIG, num_shards=3)
    os.remove(sharded / "diffusion_pytorch_model-00002-of-00003.safetensors")
    missing_shard = r"\['diffusion_pytorch_model-00002-of-00003.safetensors'\] listed in"
    with pytest.raises(FileNotFoundError, match=missing_shard):
        load_wan_model(sharded)


def test_loader_key_errors(tmp_path, tiny_model):
    state = dict(tiny_model.state_dict())
    state["blocks.0.extra.weight"] = torch.zeros(3)
    write_wan_checkpoint(str(tmp_path / "extra"), state, TINY_CONFIG)
    extra = r"0 missing key\(s\) \[\], 1 unexpected key\(s\) \[blocks\.0\.extra\.weight\]"
    with pytest.raises(ValueError, match=extra):
        load_wan_model(tmp_path / "extra")

    state = dict(tiny_model.state_dict())
    del state["head.modulation"], state["blocks.1.ffn.2.bias"]
    write_wan_checkpoint(str(tmp_path / "missing"), state, TINY_CONFIG)
    with pytest.raises(ValueError, match=r"2 missing key\(s\) \[blocks\.1\.ffn\.2\.bias, head\.modulation\]"):
        load_wan_model(tmp_path / "missing")

    wrong_ffn = dict(TINY_CONFIG, ffn_dim=48)  # config.json disagrees with the tensors
    write_wan_checkpoint(str(tmp_path / "shape"), tiny_model.state_dict(), wrong_ffn)
    wrong_shape = r"blocks\.0\.ffn\.0\.weight: checkpoint \[64, 32\] vs model \[48, 32\]"
    with pytest.raises(ValueError, match=wrong_shape):
        load_wan_model(tmp_path / "shape")


def test_loader_config_errors(tmp_path, tiny_model):
    write_wan_checkpoint(str(tmp_path), tiny_model.state_dict(), TINY_CONFIG)
    expected = dict(_tiny_fields(), dim=48, num_layers=30)
    mismatch = r"does not match the task config: dim=32 \(expected 48\), num_layers=3 \(expected 30\)"
    with pytest.raises(ValueError, match=mismatch):
        load_wan_model(tmp_path, expected_config=expected)
    with pytest.raises(ValueError, match=r"dim=32 \(expected 1536\)"):
        load_wan_model(tmp_path, expected_config=WAN_CONFIGS["t2v-1.3B"])
    (tmp_path / "config.json").write_text(json.dumps(dict(TINY_CONFIG, model_type="flf2v")))
    with pytest.raises(ValueError, match=r"model_type 'flf2v' is not supported; allowed: \['t2v', 'i2v'\]"):
        load_wan_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(TINY_CONFIG))  # a t2v checkpoint for an i2v task
    with pytest.raises(ValueError, match=r"model_type='t2v' \(expected 'i2v'\), in_dim=16 \(expected 36\)"):
        load_wan_model(tmp_path, expected_config=dict(_tiny_fields(), model_type="i2v", in_dim=36))


def test_loader_casts_dtype(tmp_path, tiny_model):
    state = {key: value.to(torch.bfloat16) for key, value in tiny_model.state_dict().items()}
    write_wan_checkpoint(str(tmp_path), state, TINY_CONFIG)
    stored = load_file(tmp_path / "diffusion_pytorch_model.safetensors")
    assert stored["head.head.weight"].dtype == torch.bfloat16
    loaded = load_wan_model(tmp_path, dtype=torch.float32)
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
    assert torch.equal(loaded.head.head.weight, state["head.head.weight"].float())


# --- (5) the block loop ---------------------------------------------------------------------------


def test_uncached_forward_equals_direct_block_loop(tiny_model):
    assert tiny_model.block_cache is None
    assert tiny_model.stream_group_depths() == {"blocks": 3}
    latents, contexts, seq_len = tiny_inputs()
    t = torch.tensor([999, 250])
    with torch.no_grad():
        tokens, seq_lens, grid_sizes = tiny_model.patchify_and_pad(latents, seq_len)
        e, e0 = tiny_model.embed_time(t)
        context = tiny_model.embed_text(contexts)
        x = tokens
        for block in tiny_model.blocks:
            x = block(x, e0, seq_lens, grid_sizes, tiny_model.freqs, context, None)
        expected = tiny_model.head_and_unpatchify(x, e, grid_sizes)
    assert seq_lens.tolist() == [72, 24] and grid_sizes.tolist() == [[3, 4, 6], [2, 3, 4]]
    assert tokens.shape == (2, seq_len, 32) and torch.equal(tokens[1, 24:], torch.zeros(seq_len - 24, 32))
    for a, b in zip(_run(tiny_model, latents, t, contexts, seq_len), expected):
        assert torch.equal(a, b)


def _stack_output_generation(model, monkeypatch, fast: bool) -> tuple[list[torch.Tensor], list[int]]:
    """Six steps (two branches) with the whole stack forecasting its output (order 1, computed on steps 0, 1, 3);
    ``fast=False`` makes the cache report that it reads the stack's input on every step. Returns the outputs and
    the step of every patch-embedding call."""
    from common_cache import (
        CacheConfig,
        DeltaCache,
        StepListSchedule,
        StreamGroupConfig,
        attach_cache,
        detach_cache,
    )

    if not fast:
        monkeypatch.setattr(DeltaCache, "replaces_stack", lambda self, group: False)
    group = StreamGroupConfig("blocks", 3, (0, 1, 2), 1, StepListSchedule((3,)), 1, forecast_target="output")
    cache = DeltaCache(CacheConfig((group,)))
    latents, contexts, seq_len = tiny_inputs()
    outputs, embedded_at, step = [], [], [0]
    handle = model.patch_embedding.register_forward_hook(lambda m, i, o: embedded_at.append(step[0]))
    attach_cache(model, cache)
    try:
        cache.begin(6)
        for step[0] in range(6):
            t = torch.full((2,), 900.0 - 150 * step[0])
            for branch, context in (("cond", contexts), ("uncond", [c.flip(0) for c in contexts])):
                with cache.step(step[0], branch):
                    outputs += _run(model, [u + 0.1 * step[0] for u in latents], t, context, seq_len)
    finally:
        detach_cache(model)
        handle.remove()
    assert cache.stats.computed_calls == 3 * 3 * 2  # steps 0, 1, 3; two branches; three blocks
    return outputs, embedded_at


def test_a_step_that_forecasts_the_stack_output_skips_the_stack_input(tiny_model, monkeypatch):
    """Reuse steps of a whole-stack output forecast skip the patch (and text) embeddings; the outputs are
    bit-identical to computing them."""
    fast, embedded_fast = _stack_output_generation(tiny_model, monkeypatch, fast=True)
    slow, embedded_slow = _stack_output_generation(tiny_model, monkeypatch, fast=False)
    assert embedded_fast == [0, 0, 0, 0, 1, 1, 1, 1, 3, 3, 3, 3]  # two latents per forward, two branches
    assert embedded_slow == [s for s in range(6) for _ in range(4)]
    assert len(fast) == len(slow) == 24
    for a, b in zip(fast, slow):
        assert a.shape == b.shape and torch.equal(a, b)


def test_padding_does_not_change_valid_outputs(tiny_model):
    latents, contexts, _ = tiny_inputs()
    t = torch.tensor([700, 700])
    short = _run(tiny_model, latents, t, contexts, 72)
    long = _run(tiny_model, latents, t, contexts, 100)
    for a, b in zip(short, long):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_residual_stream_stays_fp32_under_bf16_autocast(tiny_model):
    latents, contexts, seq_len = tiny_inputs()
    t = torch.tensor([500, 500])
    dtypes = []
    handles = [b.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype)) for b in tiny_model.blocks]
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = _run(tiny_model, latents, t, contexts, seq_len)
    finally:
        for handle in handles:
            handle.remove()
    assert dtypes == [torch.float32] * 3
    for a, b in zip(low, _run(tiny_model, latents, t, contexts, seq_len)):
        assert a.dtype == torch.float32
        assert ((a - b).norm() / b.norm()).item() < 2e-2


def test_forward_rejects_bad_inputs(tiny_model):
    latents, contexts, _ = tiny_inputs()
    t = torch.tensor([1, 1])
    too_short = r"seq_len \(50\) is smaller than the token count of a sample \(\[72, 24\]\)"
    with pytest.raises(ValueError, match=too_short):
        _run(tiny_model, latents, t, contexts, 50)
    with pytest.raises(ValueError, match="600 tokens; at most text_len=512"):
        _run(tiny_model, latents, t, [torch.zeros(600, 32), contexts[1]], 80)
    with pytest.raises(ValueError, match="text-to-video only"):
        tiny_model(latents, t, contexts, 80, clip_fea=torch.zeros(1))


# --- attention ------------------------------------------------------------------------------------


def test_attention_ignores_keys_beyond_k_lens():
    generator = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 7, 2, 8, generator=generator) for _ in range(3))
    k_lens = torch.tensor([7, 4])
    out = attention(q, k, v, k_lens=k_lens)
    for b, n in enumerate(k_lens.tolist()):
        scores = torch.einsum("qhd,khd->hqk", q[b], k[b, :n]) / 8**0.5
        expected = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v[b, :n])
        torch.testing.assert_close(out[b], expected, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="needs flash-attn and a CUDA tensor"):
        attention(q, k, v, use_flash=True)
    with pytest.raises(ValueError, match=r"window_size \(4, 4\) needs flash-attn"):
        attention(q, k, v, window_size=(4, 4))


# --- (6) real configs -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "task, tensors, params", [("t2v-1.3B", 825, 1_418_996_800), ("t2v-14B", 1095, 14_288_491_584)]
)
def test_real_config_sizes(task, tensors, params):
    cfg = WAN_CONFIGS[task]
    with torch.device("meta"):
        model = WanModel(**{key: cfg[key] for key in ARCHITECTURE_FIELDS if key in cfg})
    state = model.state_dict()
    assert len(state) == tensors
    assert sum(p.numel() for p in model.parameters()) == params
    assert "freqs" not in state and model.freqs.shape == (1024, 64)
    assert model.freqs.dtype == torch.complex128 and model.freqs.device.type == "cpu"
    assert state["time_projection.1.weight"].shape == (6 * cfg.dim, cfg.dim)
    assert state["head.head.weight"].shape == (64, cfg.dim)


# --- configs --------------------------------------------------------------------------------------


def test_config_registries():
    assert set(WAN_CONFIGS) == {"t2v-14B", "t2v-1.3B", "t2v-tiny", "i2v-14B", "i2v-tiny"}
    assert SIZE_CONFIGS["1280*720"] == (1280, 720) and SIZE_CONFIGS["1024*1024"] == (1024, 1024)
    assert SUPPORTED_SIZES["t2v-1.3B"] == ("480*832", "832*480")
    assert SUPPORTED_SIZES["t2v-14B"] == ("720*1280", "1280*720", "480*832", "832*480")
    cfg = WAN_CONFIGS["t2v-1.3B"]
    assert cfg.sample_neg_prompt == NEG_PROMPT
    assert (cfg.t5_model, cfg.t5_dtype, cfg.text_len) == ("umt5_xxl", torch.bfloat16, 512)
    assert (cfg.vae_stride, cfg.patch_size, cfg.vae_checkpoint) == ((4, 8, 8), (1, 2, 2), "Wan2.1_VAE.pth")
    assert (cfg.dim, cfg.ffn_dim, cfg.num_heads, cfg.num_layers) == (1536, 8960, 12, 30)


def test_register_task():
    tiny = dict(wan_shared_cfg, dim=32)
    try:
        register_task("t2v-registry-test", tiny, ["480*832"])
        assert WAN_CONFIGS["t2v-registry-test"] is tiny and SUPPORTED_SIZES["t2v-registry-test"] == ("480*832",)
        with pytest.raises(ValueError, match="task 't2v-registry-test' is already registered"):
            register_task("t2v-registry-test", tiny, ["480*832"])
    finally:
        WAN_CONFIGS.pop("t2v-registry-test", None)
        SUPPORTED_SIZES.pop("t2v-registry-test", None)
    with pytest.raises(ValueError, match=r"got \['640\*480'\]"):
        register_task("t2v-other", tiny, ["640*480"])
    assert "t2v-other" not in WAN_CONFIGS


def test_safetensors_helper_writes_official_index(tmp_path, tiny_model, caplog):
    config = dict(TINY_CONFIG, _name_or_path="somewhere", future_field=1)
    write_wan_checkpoint(str(tmp_path), tiny_model.state_dict(), config, num_shards=2)
    index = json.loads((tmp_path / "diffusion_pytorch_model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(tiny_model.state_dict())
    assert sorted(set(index["weight_map"].values())) == [
        "diffusion_pytorch_model-00001-of-00002.safetensors",
        "diffusion_pytorch_model-00002-of-00002.safetensors",
    ]
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["_class_name"] == "WanModel" and config["dim"] == 32
    save_file({"x": torch.zeros(1)}, tmp_path / "unused.safetensors")  # stray files in the folder are ignored
    assert isinstance(load_wan_model(tmp_path), WanModel)
    assert "ignoring unknown field 'future_field'" in caplog.text and "_name_or_path" not in caplog.text
