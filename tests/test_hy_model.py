"""HunyuanVideo transformer: diffusers equivalence, key conversion, RoPE, checkpoints, cache seam, sizes."""

import math
import re
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from diffusers import HunyuanVideoTransformer3DModel
from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoRotaryPosEmbed
from hy_ckpt_dit import TINY_HY_DIT_CONFIG, make_tiny_dit, write_dit_checkpoint
from hyvideo.modules import (
    HYVideoDiffusionTransformer,
    TextSegments,
    get_nd_rotary_pos_embed,
    get_rotary_pos_embed,
    infer_config,
    load_hunyuan_transformer,
    official_config,
)
from hyvideo.modules import attention as attention_module
from hyvideo.modules.attention import attention
from hyvideo.utils.diffusers_keys import diffusers_config, diffusers_to_official, official_to_diffusers

from common_cache import run_blocks
from profilingdit.seams import Seams

TINY_ROPE = {"rope_dim_list": TINY_HY_DIT_CONFIG["rope_dim_list"]}
TINY_LOAD = {"model_name": None, "config_overrides": TINY_ROPE, "dtype": torch.float32}
TEXT_LENS = (6, 10)  # sample 0 has 4 padding tokens, sample 1 none (an empty second segment)


def tiny_inputs(model: HYVideoDiffusionTransformer, text_lens=TEXT_LENS, frames=3, size=8, seed=1):
    """Keyword inputs of the official forward for a [B, 16, frames, size, size] latent."""
    g = torch.Generator().manual_seed(seed)
    batch, txt_len = len(text_lens), 10
    mask = torch.zeros(batch, txt_len, dtype=torch.long)
    for b, n in enumerate(text_lens):
        mask[b, :n] = 1
    cos, sin = get_nd_rotary_pos_embed(model.rope_dim_list, [frames, size // 2, size // 2], theta=256.0)
    return {
        "x": torch.randn(batch, 16, frames, size, size, generator=g),
        "t": torch.tensor([999.0, 500.0][:batch]),
        "text_states": torch.randn(batch, txt_len, model.config["text_states_dim"], generator=g),
        "text_mask": mask,
        "text_states_2": torch.randn(batch, model.config["text_states_dim_2"], generator=g),
        "freqs_cos": cos,
        "freqs_sin": sin,
        "guidance": torch.tensor([6016.0, 3000.0][:batch]),
    }


def diffusers_twin(model: HYVideoDiffusionTransformer) -> HunyuanVideoTransformer3DModel:
    twin = HunyuanVideoTransformer3DModel(**diffusers_config(model.config)).eval()
    twin.load_state_dict(official_to_diffusers(model.state_dict()), strict=True)
    return twin


# ----------------------------------------------------------------------------- (1) equivalence with diffusers


@pytest.mark.parametrize("guidance_embed", [True, False])
def test_forward_matches_diffusers(guidance_embed):
    model = make_tiny_dit(guidance_embed=guidance_embed)
    twin = diffusers_twin(model)
    inputs = tiny_inputs(model)
    if not guidance_embed:
        inputs["guidance"] = None
    with torch.no_grad():
        ours = model(**inputs)["x"]
        ref = twin(
            hidden_states=inputs["x"], timestep=inputs["t"], encoder_hidden_states=inputs["text_states"],
            encoder_attention_mask=inputs["text_mask"], pooled_projections=inputs["text_states_2"],
            guidance=inputs["guidance"], return_dict=False,
        )[0]  # fmt: skip
    assert ours.shape == (2, 16, 3, 8, 8)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)
    assert ours.abs().max() > 0.5  # a real signal, not two zero outputs


def test_return_dict_false_returns_the_tensor():
    model = make_tiny_dit()
    inputs = tiny_inputs(model)
    with torch.no_grad():
        assert torch.equal(model(**inputs, return_dict=False), model(**inputs)["x"])


def test_padding_text_does_not_reach_the_image():
    """Changing the padding text states changes no image output (segments 1 and 2 never mix)."""
    model = make_tiny_dit()
    inputs = tiny_inputs(model)
    changed = dict(inputs, text_states=inputs["text_states"].clone())
    changed["text_states"][0, 6:] += 5.0
    with torch.no_grad():
        assert torch.equal(model(**inputs)["x"], model(**changed)["x"])


def _qkv(batch=2, seq=12, heads=2, dim=8):
    g = torch.Generator().manual_seed(3)
    return [torch.randn(batch, seq, heads, dim, generator=g) for _ in range(3)]


def _masked_reference(q, k, v, mask):
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).flatten(2)


def test_attention_has_the_official_two_segment_semantics():
    q, k, v = _qkv()
    segments = TextSegments(txt_len=5, valid_lens=(2, 5))  # 7 image tokens; sample 0: 3 padding text tokens
    seg_id = torch.zeros(2, 12, dtype=torch.long)
    seg_id[0, 9:] = 1  # [B, L]: segment of each token
    block_mask = (seg_id[:, :, None] == seg_id[:, None, :])[:, None]  # [B, 1, L, L]
    ours = attention(q, k, v, segments, backend="sdpa")
    torch.testing.assert_close(ours, _masked_reference(q, k, v, block_mask), atol=1e-6, rtol=1e-6)
    # diffusers' key-only mask (C.4 item 4): same image / valid-text rows, different padding-text rows.
    key_mask = (seg_id == 0)[:, None, None, :]
    diffusers_like = _masked_reference(q, k, v, key_mask)
    torch.testing.assert_close(ours[:, :9], diffusers_like[:, :9], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ours[1], diffusers_like[1], atol=1e-6, rtol=1e-6)
    assert (ours[0, 9:] - diffusers_like[0, 9:]).abs().max() > 1e-2


def test_text_segments_and_cu_seqlens():
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    segments = TextSegments.from_mask(mask, batch_size=2, txt_len=4)
    assert segments.valid_lens == (2, 4)
    # upstream get_cu_seqlens for 6 image tokens: [0, 6+2, 10, 10+6+4, 20]
    assert segments.cu_seqlens(10, torch.device("cpu")).tolist() == [0, 8, 10, 20, 20]
    assert TextSegments.from_mask(None, 2, 4).valid_lens == (4, 4)
    with pytest.raises(ValueError, match=r"text_mask has shape \(2, 4\); expected \(2, 5\)"):
        TextSegments.from_mask(mask, batch_size=2, txt_len=5)
    message = r"backend='xformers' is not supported; allowed: \('auto', 'flash', 'sdpa'"
    with pytest.raises(ValueError, match=message):
        attention(*_qkv(), TextSegments(5, (5, 5)), backend="xformers")


def _reference_varlen(q, k, v, cu_q, cu_k, max_q, max_k):
    """flash_attn_varlen_func's contract on the CPU: q, k, v [total, H, D], independent segments."""
    assert torch.equal(cu_q, cu_k) and cu_q.dtype == torch.int32 and max_q == max_k
    bounds = cu_q.tolist()
    pieces = [
        _masked_reference(q[None, s:e], k[None, s:e], v[None, s:e], None).view(e - s, *q.shape[1:])
        for s, e in zip(bounds[:-1], bounds[1:])
        if e > s
    ]
    return torch.cat(pieces)


def test_flash_backend_feeds_the_official_cu_seqlens(monkeypatch):
    """The flash path (GPU only) run on a CPU stand-in for flash_attn_varlen_func matches the SDPA path."""
    monkeypatch.setattr(attention_module, "flash_attn_varlen_func", _reference_varlen)
    q, k, v = _qkv()
    segments = TextSegments(txt_len=5, valid_lens=(2, 5))
    flash = attention(q, k, v, segments, backend="flash")
    torch.testing.assert_close(flash, attention(q, k, v, segments, backend="sdpa"), atol=1e-6, rtol=1e-6)


def test_attention_kernel_is_the_seam_of_every_block():
    calls = []

    def recording_kernel(q, k, v, segments):
        calls.append(q.shape)
        return attention(q, k, v, segments, backend="sdpa")  # [B, L, H*D]

    model = make_tiny_dit()
    inputs = tiny_inputs(model)
    with torch.no_grad():
        ref = model(**inputs)["x"]
        with Seams() as seams:
            for block in [*model.double_blocks, *model.single_blocks]:
                seams.swap(block, "attention_kernel", recording_kernel)
            out = model(**inputs)["x"]
    assert torch.equal(out, ref)
    assert calls == [(2, 48 + 10, 2, 32)] * 4  # 2 double + 2 single blocks, joint [image ; text] sequence
    assert all(block.attention_kernel is attention for block in [*model.double_blocks, *model.single_blocks])
    model.set_attention_backend("sdpa")
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs)["x"], ref, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="backend='flash2' is not supported"):
        model.set_attention_backend("flash2")


def test_bf16_parameters_with_autocast_stay_close_to_fp32():
    model = make_tiny_dit()
    inputs = tiny_inputs(model)
    with torch.no_grad():
        ref = model(**inputs)["x"]
        model.to(torch.bfloat16)
        model.final_layer.linear.float()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(**inputs)["x"]
    assert low.dtype == torch.bfloat16
    assert ((low.float() - ref).norm() / ref.norm()).item() < 2e-2


def test_forward_input_errors():
    model = make_tiny_dit()
    inputs = tiny_inputs(model)
    with pytest.raises(ValueError, match="guidance is None, but this model has guidance_embed=True"):
        model(**dict(inputs, guidance=None))
    with pytest.raises(ValueError, match="freqs_cos and freqs_sin are required"):
        model(**dict(inputs, freqs_sin=None))
    with pytest.raises(ValueError, match=r"freqs_cos has shape \(12, 32\); expected .* \(48, 32\)"):
        model(**dict(inputs, freqs_cos=inputs["freqs_cos"][:12]))
    with pytest.raises(ValueError, match=r"rope_dim_list=\[8, 8, 8\] must sum to head_dim=32"):
        HYVideoDiffusionTransformer(**{**TINY_HY_DIT_CONFIG, "rope_dim_list": [8, 8, 8]})
    with pytest.raises(ValueError, match="hidden_size=64 must be divisible by heads_num=3"):
        HYVideoDiffusionTransformer(**{**TINY_HY_DIT_CONFIG, "heads_num": 3})


# ----------------------------------------------------------------------------- RoPE


def test_rope_tables_match_diffusers_and_the_formula():
    cos, sin = get_nd_rotary_pos_embed([8, 12, 12], [3, 4, 5], theta=256.0)
    ref_cos, ref_sin = HunyuanVideoRotaryPosEmbed(2, 1, [8, 12, 12], 256.0)(torch.zeros(1, 16, 3, 8, 10))
    torch.testing.assert_close(cos, ref_cos, atol=1e-6, rtol=0)
    torch.testing.assert_close(sin, ref_sin, atol=1e-6, rtol=0)
    # Token (t=2, h=1, w=3) is row 2*20 + 1*5 + 3; its h-axis pair j=1 sits at columns 8 + 2, 8 + 3.
    angle = 1 * 256.0 ** (-2 / 12)
    row = 2 * 20 + 1 * 5 + 3
    assert cos[row, 10].item() == pytest.approx(math.cos(angle), abs=1e-6)
    assert cos[row, 10] == cos[row, 11] and sin[row, 10] == sin[row, 11]


def test_rotary_tables_from_pixel_sizes():
    cos, sin = get_rotary_pos_embed(129, 720, 1280)  # latent [33, 90, 160] -> 33 x 45 x 80 tokens
    assert cos.shape == sin.shape == (118_800, 128) and cos.dtype == torch.float32
    cos, _ = get_rotary_pos_embed(9, 64, 64, rope_dim_list=[8, 12, 12])  # latent [3, 8, 8] -> 3 x 4 x 4
    ref, _ = get_nd_rotary_pos_embed([8, 12, 12], [3, 4, 4])
    assert torch.equal(cos, ref)
    with pytest.raises(ValueError, match="must hold even dimensions"):
        get_nd_rotary_pos_embed([7, 13, 12], [1, 1, 1])


# ----------------------------------------------------------------------------- (2) key conversion


def test_converter_covers_every_key_and_round_trips():
    model = make_tiny_dit()
    sd = model.state_dict()
    converted = official_to_diffusers(sd)
    assert set(converted) == set(diffusers_twin(model).state_dict())
    back = diffusers_to_official(converted)
    assert set(back) == set(sd)
    assert all(torch.equal(back[k], sd[k]) for k in sd)
    # The final modulation is stored (shift, scale) officially and (scale, shift) in diffusers.
    shift, scale = sd["final_layer.adaLN_modulation.1.weight"].chunk(2)
    assert torch.equal(converted["norm_out.linear.weight"], torch.cat([scale, shift]))
    # linear1 is split with the real hidden size (64), not the upstream script's 3072.
    assert converted["single_transformer_blocks.0.proj_mlp.weight"].shape == (256, 64)


def test_converter_full_size_keys_and_shapes_match_diffusers():
    ours = HYVideoDiffusionTransformer(**official_config("HYVideo-T/2-cfgdistill"), device="meta")
    converted = official_to_diffusers(ours.state_dict())
    with torch.device("meta"):
        twin = HunyuanVideoTransformer3DModel(**diffusers_config(ours.config))
    expected = {k: v.shape for k, v in twin.state_dict().items()}
    assert {k: v.shape for k, v in converted.items()} == expected
    assert set(diffusers_to_official(converted)) == set(ours.state_dict())


def test_converter_errors_name_the_key():
    sd = make_tiny_dit().state_dict()
    with pytest.raises(ValueError, match="official_to_diffusers: no conversion rule for key 'extra.weight'"):
        official_to_diffusers({**sd, "extra.weight": torch.zeros(1)})
    converted = official_to_diffusers(sd)
    del converted["transformer_blocks.1.attn.to_k.bias"]
    with pytest.raises(ValueError, match="double_blocks.1.img_attn_qkv.bias is split in diffusers and some"):
        diffusers_to_official(converted)


# ----------------------------------------------------------------------------- (3) checkpoints


def _same_weights(model, sd):
    return all(torch.equal(model.state_dict()[k], v) for k, v in sd.items())


def test_deepspeed_checkpoint_round_trip_file_and_folder(tmp_path):
    model = make_tiny_dit()
    path = write_dit_checkpoint(tmp_path / "transformers", model.state_dict())
    # The official folder also holds the fp8 variant and its scale map: the folder rule must skip them.
    for decoy in ("mp_rank_00_model_states_fp8.pt", "mp_rank_00_model_states_fp8_map.pt"):
        (path.parent / decoy).write_bytes(b"not this one")
    inputs = tiny_inputs(model)
    for source in (path, path.parent):
        loaded = load_hunyuan_transformer(source, **TINY_LOAD)
        assert loaded.config == model.config
        assert _same_weights(loaded, model.state_dict()) and not loaded.training
        with torch.no_grad():
            assert torch.equal(loaded(**inputs)["x"], model(**inputs)["x"])


def test_load_key_selects_module_or_ema(tmp_path):
    module, ema = make_tiny_dit(seed=1), make_tiny_dit(seed=2)
    path = tmp_path / "mp_rank_00_model_states.pt"
    torch.save({"module": module.state_dict(), "ema": ema.state_dict(), "ds_version": "0.10.0"}, path)
    assert _same_weights(load_hunyuan_transformer(path, **TINY_LOAD), module.state_dict())
    assert _same_weights(load_hunyuan_transformer(path, load_key="ema", **TINY_LOAD), ema.state_dict())
    message = r"--load-key: 'best' is not a top-level key .* \['ds_version', 'ema', 'module'\]"
    with pytest.raises(ValueError, match=message):
        load_hunyuan_transformer(path, load_key="best", **TINY_LOAD)


def test_folder_with_several_model_states_files_takes_the_first_sorted(tmp_path, caplog):
    first, second = make_tiny_dit(seed=1), make_tiny_dit(seed=2)
    write_dit_checkpoint(tmp_path, second.state_dict(), file_name="mp_rank_01_model_states.pt")
    write_dit_checkpoint(tmp_path, first.state_dict(), file_name="mp_rank_00_model_states.pt")
    assert _same_weights(load_hunyuan_transformer(tmp_path, **TINY_LOAD), first.state_dict())
    assert "using mp_rank_00_model_states.pt" in caplog.text


def test_bare_state_dicts_file_and_pytorch_model_folder(tmp_path):
    model = make_tiny_dit()
    bare = write_dit_checkpoint(tmp_path / "a", model.state_dict(), load_key=None, file_name="dit.pt")
    assert _same_weights(load_hunyuan_transformer(bare, **TINY_LOAD), model.state_dict())
    folder = write_dit_checkpoint(tmp_path / "b", model.state_dict(), None, "pytorch_model_ema.pt").parent
    assert _same_weights(load_hunyuan_transformer(folder, load_key="ema", **TINY_LOAD), model.state_dict())
    message = r"pytorch_model_module.pt \(load_key='module'\) not in .*\['pytorch_model_ema.pt'\]"
    with pytest.raises(FileNotFoundError, match=message):
        load_hunyuan_transformer(folder, **TINY_LOAD)


def test_bf16_load_keeps_final_linear_fp32(tmp_path):
    path = write_dit_checkpoint(tmp_path, make_tiny_dit().state_dict())
    model = load_hunyuan_transformer(path, **{**TINY_LOAD, "dtype": torch.bfloat16})
    dtypes = {name: p.dtype for name, p in model.named_parameters()}
    assert dtypes.pop("final_layer.linear.weight") == dtypes.pop("final_layer.linear.bias") == torch.float32
    assert set(dtypes.values()) == {torch.bfloat16}


def test_config_is_inferred_from_shapes():
    config = dict(TINY_HY_DIT_CONFIG, qkv_bias=False, guidance_embed=False, mlp_width_ratio=2, heads_num=4,
                  rope_dim_list=[4, 6, 6], mm_single_blocks_depth=3, out_channels=8)  # fmt: skip
    inferred = infer_config(HYVideoDiffusionTransformer(**config, device="meta").state_dict())
    assert inferred == {k: v for k, v in config.items() if k != "rope_dim_list"}
    official = official_config("HYVideo-T/2-cfgdistill")
    full = infer_config(HYVideoDiffusionTransformer(**official, device="meta").state_dict())
    assert {**full, "rope_dim_list": [16, 56, 56]} == official


def test_loader_path_errors(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match=re.escape(f"--dit-weight: no file or folder at {missing}")):
        load_hunyuan_transformer(missing)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.pt").write_bytes(b"")
    message = r"no '\*_model_states.pt' or 'pytorch_model_\*.pt' checkpoint in .* \['notes.pt'\]"
    with pytest.raises(FileNotFoundError, match=message):
        load_hunyuan_transformer(tmp_path / "empty")


class _NotAWeight:
    pass


def test_loader_content_errors(tmp_path):
    sd = make_tiny_dit().state_dict()
    broken = OrderedDict(sd)
    del broken["double_blocks.1.img_mod.linear.bias"]
    broken["extra.weight"] = torch.zeros(1)
    path = write_dit_checkpoint(tmp_path / "keys", broken)
    message = (
        r"1 missing keys \(e.g. \['double_blocks.1.img_mod.linear.bias'\]\), "
        r"1 unexpected keys \(e.g. \['extra.weight'\]\)"
    )
    with pytest.raises(ValueError, match=message):
        load_hunyuan_transformer(path, **TINY_LOAD)
    path = tmp_path / "pickled.pt"
    torch.save({"module": sd, "trainer": _NotAWeight()}, path)
    with pytest.raises(ValueError, match="holds objects other than tensors and containers"):
        load_hunyuan_transformer(path, **TINY_LOAD)


def test_loader_config_errors(tmp_path):
    path = write_dit_checkpoint(tmp_path, make_tiny_dit().state_dict())
    message = "hidden_size: the checkpoint has 64 but model 'HYVideo-T/2-cfgdistill' says 3072"
    with pytest.raises(ValueError, match=message):
        load_hunyuan_transformer(path)
    message = "guidance_embed: the checkpoint has True but config_overrides says False"
    with pytest.raises(ValueError, match=message):
        no_guidance = {**TINY_ROPE, "guidance_embed": False}
        load_hunyuan_transformer(path, **{**TINY_LOAD, "config_overrides": no_guidance})
    with pytest.raises(ValueError, match=r"rope_dim_list cannot be read from a checkpoint.*head_dim=32"):
        load_hunyuan_transformer(path, model_name=None)
    with pytest.raises(ValueError, match=r"config_overrides: unknown fields \['depth'\]"):
        load_hunyuan_transformer(path, model_name=None, config_overrides={"depth": 2})
    message = r"--model: 'HYVideo-T/4' is not supported; allowed: \['HYVideo-T/2', 'HYVideo-T/2-cfgdistill'\]"
    with pytest.raises(ValueError, match=message):
        load_hunyuan_transformer(path, model_name="HYVideo-T/4")


# ----------------------------------------------------------------------------- (4) the cache seam


class RecordingCache:
    """A cache that runs every stack as a plain loop and records what the forward hands it."""

    def __init__(self):
        self.calls = []

    def run(self, group, blocks, states, kwargs):
        before = tuple(s.clone() for s in states) if isinstance(states, tuple) else states.clone()
        out = run_blocks(None, group, blocks, states, **kwargs)
        self.calls.append(
            {"group": group, "n": len(blocks), "states": states, "before": before, "kwargs": kwargs}
        )
        return out


def test_run_blocks_without_cache_is_the_plain_loop():
    model = make_tiny_dit()
    inputs = tiny_inputs(model)
    assert model.block_cache is None
    assert model.stream_group_depths() == {"double": 2, "single": 2}
    with torch.no_grad():
        plain = model(**inputs)["x"]
        model.block_cache = recorder = RecordingCache()
        cached = model(**inputs)["x"]
    assert torch.equal(plain, cached)
    double, single = recorder.calls
    assert (double["group"], double["n"], single["group"], single["n"]) == ("double", 2, "single", 2)
    assert isinstance(double["states"], tuple) and len(double["states"]) == 2
    assert isinstance(single["states"], torch.Tensor)
    # Blocks never modify their inputs in place (the cache keeps references to them).
    assert all(torch.equal(a, b) for a, b in zip(double["states"], double["before"]))
    assert torch.equal(single["states"], single["before"])
    # run_blocks(None, ...) is bit-identical to calling the blocks one by one.
    with torch.no_grad():
        img, txt = double["states"]
        for block in model.double_blocks:
            img, txt = block(img, txt, **double["kwargs"])
        via_runner = run_blocks(None, "double", model.double_blocks, double["states"], **double["kwargs"])
        x = single["states"]
        for block in model.single_blocks:
            x = block(x, **single["kwargs"])
        single_runner = run_blocks(None, "single", model.single_blocks, single["states"], **single["kwargs"])
    assert torch.equal(via_runner[0], img) and torch.equal(via_runner[1], txt)
    assert torch.equal(single_runner, x)


# ----------------------------------------------------------------------------- (5) official sizes


def test_official_configs_on_meta_device():
    distilled = HYVideoDiffusionTransformer(
        **official_config("HYVideo-T/2-cfgdistill"), dtype=torch.bfloat16, device="meta"
    )
    assert len(distilled.state_dict()) == 856
    assert sum(p.numel() for p in distilled.parameters()) == 12_821_012_544
    assert distilled.final_layer.linear.weight.dtype == torch.float32
    assert distilled.double_blocks[0].img_attn_qkv.weight.shape == (9216, 3072)
    assert distilled.single_blocks[0].linear1.weight.shape == (21504, 3072)
    plain = HYVideoDiffusionTransformer(**official_config("HYVideo-T/2"), device="meta")
    assert set(distilled.state_dict()) - set(plain.state_dict()) == {
        f"guidance_in.mlp.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")
    }


def test_checkpoint_helper_writes_a_weights_only_deepspeed_file(tmp_path):
    """The helper's file loads with weights_only=True, as the official file does."""
    model = make_tiny_dit()
    path = write_dit_checkpoint(tmp_path, model.state_dict())
    assert path.name == "mp_rank_00_model_states.pt"
    loaded = torch.load(path, weights_only=True)
    assert sorted(loaded) == ["buffer_names", "ds_version", "module"]
    assert list(loaded["module"]) == list(model.state_dict())
