"""HunyuanVideo causal 3D VAE: keys and numerics against diffusers, official tiling, the checkpoint loader."""

import json
import os
import re

import pytest
import torch
from diffusers import AutoencoderKLHunyuanVideo
from hy_ckpt_vae import TINY_VAE_CONFIG, random_vae_state_dict, tiny_vae_config, write_vae_checkpoint

from hyvideo.vae import AutoencoderKLCausal3D, CausalVAEConfig, load_vae
from hyvideo.vae import tiling
from hyvideo.vae.tiling import blend, tiled_spatial, tiled_temporal
from hyvideo.vae.unet_causal_3d_blocks import CausalConv3d, CausalFrameAttention

ATOL = 1e-4


def build_pair(config: dict, seed: int = 0):
    """Our model and diffusers' `AutoencoderKLHunyuanVideo` with the same weights (same key names, C.3)."""
    state = random_vae_state_dict(config, seed)
    ours = AutoencoderKLCausal3D.from_config(config).eval()
    ours.load_state_dict(state, strict=True)
    n = len(config["block_out_channels"])
    ref = AutoencoderKLHunyuanVideo(
        in_channels=config["in_channels"], out_channels=config["out_channels"],
        latent_channels=config["latent_channels"], block_out_channels=tuple(config["block_out_channels"]),
        down_block_types=("HunyuanVideoDownBlock3D",) * n, up_block_types=("HunyuanVideoUpBlock3D",) * n,
        layers_per_block=config["layers_per_block"], act_fn=config["act_fn"],
        norm_num_groups=config["norm_num_groups"], scaling_factor=config["scaling_factor"],
        spatial_compression_ratio=config.get("spatial_compression_ratio", 8),
        temporal_compression_ratio=config["time_compression_ratio"],
        mid_block_add_attention=config["mid_block_add_attention"]).eval()
    ref.load_state_dict(state, strict=True)
    return ours, ref


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


# ---------------------------------------------------------------- keys and structure

def test_full_size_model_has_official_key_count_and_params():
    with torch.device("meta"):
        vae = AutoencoderKLCausal3D(CausalVAEConfig())
    state = vae.state_dict()
    assert len(state) == 248
    assert sum(p.numel() for p in vae.parameters()) == 246_478_803
    expected_shapes = {
        "encoder.conv_in.conv.weight": (128, 3, 3, 3, 3),
        "encoder.down_blocks.1.resnets.0.conv_shortcut.conv.weight": (256, 128, 1, 1, 1),
        "encoder.down_blocks.2.downsamplers.0.conv.conv.weight": (512, 512, 3, 3, 3),
        "encoder.mid_block.attentions.0.to_out.0.weight": (512, 512),
        "encoder.conv_out.conv.weight": (32, 512, 3, 3, 3),
        "quant_conv.weight": (32, 32, 1, 1, 1),
        "post_quant_conv.weight": (16, 16, 1, 1, 1),
        "decoder.conv_in.conv.weight": (512, 16, 3, 3, 3),
        "decoder.up_blocks.0.resnets.2.conv2.conv.weight": (512, 512, 3, 3, 3),
        "decoder.up_blocks.3.resnets.0.conv_shortcut.conv.weight": (128, 256, 1, 1, 1),
        "decoder.conv_norm_out.weight": (128,),
        "decoder.conv_out.conv.weight": (3, 128, 3, 3, 3),
    }
    for key, shape in expected_shapes.items():
        assert tuple(state[key].shape) == shape, key
    assert "encoder.down_blocks.3.downsamplers.0.conv.conv.weight" not in state
    assert "decoder.up_blocks.3.upsamplers.0.conv.conv.weight" not in state


def test_resample_strides_follow_the_official_layout():
    with torch.device("meta"):
        vae = AutoencoderKLCausal3D(CausalVAEConfig())
    strides = [b.downsamplers[0].conv.conv.stride for b in vae.encoder.down_blocks[:3]]
    factors = [b.upsamplers[0].factor for b in vae.decoder.up_blocks[:3]]
    assert strides == [(1, 2, 2), (2, 2, 2), (2, 2, 2)]
    assert factors == [(1, 2, 2), (2, 2, 2), (2, 2, 2)]


@pytest.mark.parametrize("attention", [True, False])
def test_keys_and_shapes_equal_diffusers(attention):
    ours, ref = build_pair(tiny_vae_config(mid_block_add_attention=attention))
    ours_shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert ours_shapes == {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert ("decoder.mid_block.attentions.0.to_q.weight" in ours_shapes) == attention
    if not attention:
        z = torch.randn(1, 4, 2, 4, 4)
        with torch.no_grad():
            assert max_diff(ours.decode(z), ref.decode(z).sample) < ATOL


# ---------------------------------------------------------------- numerics against diffusers (untiled)

@torch.no_grad()
def test_untiled_decode_and_encode_match_diffusers():
    ours, ref = build_pair(TINY_VAE_CONFIG)
    ref.use_framewise_decoding = ref.use_framewise_encoding = False  # diffusers' default frame tiling: off
    z = torch.randn(1, 4, 3, 8, 8)
    video = ours.decode(z)
    assert video.shape == (1, 3, 9, 64, 64)
    assert max_diff(video, ref.decode(z).sample) < ATOL

    x = torch.rand(1, 3, 9, 64, 64) * 2 - 1
    post, ref_post = ours.encode(x), ref.encode(x).latent_dist
    assert post.mean.shape == (1, 4, 3, 8, 8)
    assert max_diff(post.mean, ref_post.mean) < ATOL
    assert max_diff(post.logvar, ref_post.logvar) < ATOL
    assert torch.equal(post.mode(), post.mean)
    sample = post.sample(torch.Generator().manual_seed(3))
    assert max_diff(sample, ref_post.sample(torch.Generator().manual_seed(3))) < ATOL
    noise = torch.randn(post.mean.shape, generator=torch.Generator().manual_seed(3))
    assert torch.equal(sample, post.mean + post.std * noise)


@torch.no_grad()
def test_causal_conv_pads_by_replication_and_never_looks_ahead():
    conv = CausalConv3d(2, 3, kernel_size=3)
    x = torch.randn(1, 2, 4, 5, 5)
    x_changed = x.clone()
    x_changed[:, :, 3] += 1.0
    assert torch.equal(conv(x)[:, :, :3], conv(x_changed)[:, :, :3])
    assert conv(x).shape == (1, 3, 4, 5, 5)
    constant = torch.full((1, 2, 3, 4, 4), 0.5)
    out = conv(constant)  # replicate padding keeps a constant input constant up to the borders
    expected = conv.conv.weight.sum(dim=(1, 2, 3, 4)) * 0.5 + conv.conv.bias
    assert torch.allclose(out, expected.view(1, 3, 1, 1, 1).expand_as(out), atol=1e-6)


@torch.no_grad()
def test_mid_attention_is_frame_causal():
    attn = CausalFrameAttention(8, groups=4)
    h = torch.randn(1, 8, 3, 2, 3)
    h_permuted = h.clone()
    h_permuted[:, :, 2] = h[:, :, 2].flip(-1)  # same GroupNorm statistics, last frame rearranged
    out, out_permuted = attn(h), attn(h_permuted)
    assert torch.allclose(out[:, :, :2], out_permuted[:, :, :2], atol=1e-6)  # earlier frames cannot see it
    assert torch.allclose(out_permuted[:, :, 2], out[:, :, 2].flip(-1), atol=1e-6)  # it sees its own frame
    h_swapped = h[:, :, [2, 1, 0]]  # frame 1 now sees the old frame 2 where frame 0 was
    assert not torch.allclose(attn(h_swapped)[:, :, 1], out[:, :, 1], atol=1e-3)


# ---------------------------------------------------------------- tiling

def test_blend_is_the_official_linear_ramp():
    prev = torch.zeros(1, 1, 1, 2, 6)
    cur = torch.ones(1, 1, 1, 2, 5)
    out = blend(prev, cur, 4, dim=-1)
    assert out[0, 0, 0, 0].tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert torch.equal(cur, torch.ones_like(cur))  # the input is left untouched
    prev_t = torch.arange(6.0).view(1, 1, 6, 1, 1)
    out_t = blend(prev_t, torch.zeros(1, 1, 3, 1, 1), 8, dim=2)  # extent clipped to the shorter tile (3)
    assert torch.allclose(out_t.flatten(), torch.tensor([3.0, 4.0 * 2 / 3, 5.0 * 1 / 3]), atol=1e-6)


class LocalDecoder(torch.nn.Module):
    """Stand-in decoder: causal nearest upsampling (x4 in time after frame 0, x8 in space); logs calls."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, z):
        self.calls.append(tuple(z.shape[2:]))
        frames = torch.cat([z[:, :, :1], z[:, :, 1:].repeat_interleave(4, dim=2)], dim=2)
        return frames.repeat_interleave(8, dim=3).repeat_interleave(8, dim=4)


class LocalEncoder(torch.nn.Module):
    """Stand-in encoder: frames 0, 4, 8, ... and every 8th pixel, channels doubled (moments)."""

    def forward(self, x):
        return torch.cat([x[:, :, ::4, ::8, ::8]] * 2, dim=1)


def official_size_vae_with_local_stand_ins() -> AutoencoderKLCausal3D:
    """The official tile geometry (sample_size 256, sample_tsize 64, 4 blocks) around local stand-ins."""
    config = tiny_vae_config(latent_channels=1, sample_size=256, sample_tsize=64)
    with torch.device("meta"):
        vae = AutoencoderKLCausal3D.from_config(config)
    vae.encoder, vae.decoder = LocalEncoder(), LocalDecoder()
    vae.quant_conv = vae.post_quant_conv = torch.nn.Identity()
    vae.enable_tiling()
    return vae


def test_official_tile_sizes_from_config():
    vae = official_size_vae_with_local_stand_ins()
    assert (vae.tile_sample_min_size, vae.tile_latent_min_size) == (256, 32)
    assert (vae.tile_sample_min_tsize, vae.tile_latent_min_tsize) == (64, 16)
    assert vae.tile_overlap_factor == 0.25


@torch.no_grad()
def test_official_tiling_geometry_is_exact_for_a_local_decoder():
    vae = official_size_vae_with_local_stand_ins()
    z = torch.randn(1, 1, 33, 40, 48)  # 129 frames at 320 x 384: three windows, each 2 x 2 spatial tiles
    video = vae.decode(z)
    assert video.shape == (1, 1, 129, 320, 384)
    assert max_diff(video, LocalDecoder()(z)) < 1e-5
    windows = vae.decoder.calls
    assert [c[0] for c in windows[::4]] == [17, 17, 9]  # windows start at latent frames 0, 12, 24
    assert windows[:4] == [(17, 32, 32), (17, 32, 24), (17, 16, 32), (17, 16, 24)]  # tiles start at 0 and 24

    vae.decoder.calls.clear()
    vae.decode(torch.randn(1, 1, 16, 32, 32))  # at the thresholds: no tiling at all
    assert vae.decoder.calls == [(16, 32, 32)]
    vae.decoder.calls.clear()
    vae.decode(torch.randn(1, 1, 17, 33, 32))  # one more frame and one more row: both tilings (and, as
    # officially, a sliver column at 24 too, since tile starts run over range(0, size, stride))
    spatial = [(32, 32), (32, 8), (9, 32), (9, 8)]
    assert vae.decoder.calls == [(17, *hw) for hw in spatial] + [(5, *hw) for hw in spatial]


@torch.no_grad()
def test_official_tiled_encode_geometry_is_exact_for_a_local_encoder():
    vae = official_size_vae_with_local_stand_ins()
    x = torch.randn(1, 1, 129, 320, 448)
    posterior = vae.encode(x)
    assert posterior.mean.shape == (1, 1, 33, 40, 56)
    assert max_diff(posterior.mean, x[:, :, ::4, ::8, ::8]) < 1e-5


def test_generic_tilers_reconstruct_a_pointwise_function_exactly():
    x = torch.randn(1, 2, 5, 23, 17)
    assert torch.equal(tiled_spatial(lambda t: t * 2, x, tile=8, stride=6, blend_extent=2, keep=6), x * 2)
    assert torch.equal(tiled_temporal(lambda t: t * 2, x, tile=2, stride=1, blend_extent=1, keep=1), x * 2)


@torch.no_grad()
def test_tiled_decode_and_encode_match_diffusers_tiled_path():
    # The official tiling and diffusers' agree once diffusers gets the same geometry (32 px tiles every 24 px,
    # 16 frames every 12); only its defaults differ (A.8).
    config = tiny_vae_config(block_out_channels=[8, 8, 8, 8])
    ours, ref = build_pair(config)
    ours.enable_tiling()
    ref.enable_tiling(tile_sample_min_height=32, tile_sample_min_width=32, tile_sample_min_num_frames=16,
                      tile_sample_stride_height=24, tile_sample_stride_width=24,
                      tile_sample_stride_num_frames=12)
    z = torch.randn(1, 4, 6, 5, 5)  # 2 temporal windows x 2 x 2 spatial tiles
    video = ours.decode(z)
    assert video.shape == (1, 3, 21, 40, 40)
    assert max_diff(video, ref.decode(z).sample) < ATOL
    x = torch.rand(1, 3, 21, 40, 40) * 2 - 1
    mean = ours.encode(x).mean
    assert mean.shape == (1, 4, 6, 5, 5)
    assert max_diff(mean, ref.encode(x).latent_dist.mean) < ATOL


def nearly_local_vae(sample_size: int, sample_tsize: int) -> AutoencoderKLCausal3D:
    """Tiny VAE whose inner GroupNorm scales are zero: the resnet and attention branches become constants, and
    only the convolutions on the residual path, the upsamplers and the output norm carry the signal.

    A random tiny VAE with its attention and GroupNorm statistics has a receptive field far larger than any
    tile we can afford, so tiled and untiled decodes of it are unrelated (measured relative L2 0.8-1.2); this
    one is local enough for the comparison to say something about the blend.
    """
    config = tiny_vae_config(block_out_channels=[8, 8, 8, 8], sample_size=sample_size,
                             sample_tsize=sample_tsize)
    state = random_vae_state_dict(config, seed=1)
    for key in state:
        if key.endswith(".weight") and "norm" in key.split(".")[-2] and "conv_norm_out" not in key:
            state[key] = torch.zeros_like(state[key])
    vae = AutoencoderKLCausal3D.from_config(config).eval()
    vae.load_state_dict(state)
    return vae


def relative_error(tiled: torch.Tensor, full: torch.Tensor) -> float:
    return ((tiled - full).norm() / (full - full.mean()).norm()).item()


@pytest.mark.parametrize("latent_shape, bound", [((1, 4, 1, 14, 14), 0.3), ((1, 4, 13, 4, 4), 0.4)],
                         ids=["spatial", "temporal"])
@torch.no_grad()
def test_tiled_decode_stays_close_to_untiled(monkeypatch, latent_shape, bound):
    # Latent tiles of 8 every 6 (16 px blended), windows of 8 latent frames every 6 (8 frames blended).
    # Measured relative L2 error of the tiled decode: 0.20 (spatial) and 0.30 (temporal); without blending
    # 0.40 and 0.51.
    vae = nearly_local_vae(sample_size=64, sample_tsize=32)
    z = torch.randn(latent_shape, generator=torch.Generator().manual_seed(5))
    full = vae.decode(z)
    vae.enable_tiling()
    tiled = vae.decode(z)
    assert tiled.shape == full.shape
    assert relative_error(tiled, full) < bound
    monkeypatch.setattr(tiling, "blend", lambda prev, cur, extent, dim: cur)  # hard seams fail the bound
    assert relative_error(vae.decode(z), full) > bound


def test_disable_tiling_turns_both_off():
    vae = official_size_vae_with_local_stand_ins()
    vae.disable_tiling()
    assert not vae.use_spatial_tiling and not vae.use_temporal_tiling
    vae.decode(torch.randn(1, 1, 33, 40, 40))
    assert vae.decoder.calls == [(33, 40, 40)]


# ---------------------------------------------------------------- loader

@pytest.mark.parametrize("layout", ["plain", "state_dict", "vae_prefix"])
@torch.no_grad()
def test_load_vae_round_trip_is_bit_identical(tmp_path, layout):
    state = random_vae_state_dict(TINY_VAE_CONFIG, seed=2)
    vae_dir = write_vae_checkpoint(str(tmp_path), state_dict=state, layout=layout)
    vae, path, spatial, temporal = load_vae("884-4c-hy", "fp32", vae_path=vae_dir, device="cpu")
    assert (path, spatial, temporal) == (vae_dir, 8, 4)
    assert not vae.training and not any(p.requires_grad for p in vae.parameters())
    direct = AutoencoderKLCausal3D.from_config(TINY_VAE_CONFIG).eval()
    direct.load_state_dict(state)
    for key, value in vae.state_dict().items():
        assert torch.equal(value, state[key]), key
    z = torch.randn(1, 4, 2, 4, 4)
    assert torch.equal(vae.decode(z), direct.decode(z))
    assert vae.config.scaling_factor == 0.476986


def test_load_vae_gives_fp32_parameters_for_a_bf16_checkpoint(tmp_path):
    state = {k: v.bfloat16() for k, v in random_vae_state_dict(TINY_VAE_CONFIG).items()}
    vae, *_ = load_vae("884-4c-hy", vae_path=write_vae_checkpoint(str(tmp_path), state_dict=state))
    assert vae.dtype == torch.float32
    assert torch.equal(vae.decoder.conv_out.conv.weight, state["decoder.conv_out.conv.weight"].float())


def test_load_vae_precision_sample_size_and_logger(tmp_path):
    vae_dir = write_vae_checkpoint(str(tmp_path))
    messages = []

    class Logger:
        def info(self, msg):
            messages.append(msg)

    vae, *_ = load_vae("884-4c-hy", "bf16", sample_size=64, vae_path=vae_dir, logger=Logger())
    assert vae.dtype == torch.bfloat16
    assert (vae.tile_sample_min_size, vae.tile_latent_min_size) == (64, 8)
    assert any(vae_dir in m for m in messages)
    vae_fp32, *_ = load_vae("884-4c-hy", None, vae_path=vae_dir)
    z = torch.randn(1, 4, 2, 4, 4)
    with torch.no_grad():
        video, reference = vae.decode(z.bfloat16()), vae_fp32.decode(z)
    assert video.dtype == torch.bfloat16 and vae_fp32.dtype == torch.float32
    assert ((video.float() - reference).norm() / reference.norm()).item() < 2e-2


@pytest.mark.parametrize("vae_type", ["884-16chy", "8-16c-hy", "884-16-hy", "abc", "884-16c-"])
def test_load_vae_rejects_malformed_vae_type(tmp_path, vae_type):
    with pytest.raises(ValueError, match=f"vae_type='{vae_type}'"):
        load_vae(vae_type, vae_path=str(tmp_path))


def test_load_vae_rejects_2d_vae_type_and_channel_mismatch(tmp_path):
    vae_dir = write_vae_checkpoint(str(tmp_path))
    with pytest.raises(ValueError, match="only 3D VAEs"):
        load_vae("88-4c-hy", vae_path=vae_dir)
    with pytest.raises(ValueError, match="16 latent channels.*latent_channels=4"):
        load_vae("884-16c-hy", vae_path=vae_dir)


def test_load_vae_default_folder_comes_from_vae_path_table(tmp_path, monkeypatch):
    import hyvideo.vae

    with pytest.raises(ValueError, match="vae_type='884-4c-hy' has no default folder"):
        load_vae("884-4c-hy")
    vae_dir = write_vae_checkpoint(str(tmp_path))
    monkeypatch.setitem(hyvideo.vae.VAE_PATH, "884-4c-hy", vae_dir)
    assert load_vae("884-4c-hy")[1] == vae_dir


def test_load_vae_rejects_bad_precision(tmp_path):
    with pytest.raises(ValueError, match="vae_precision='fp8'.*bf16"):
        load_vae("884-4c-hy", "fp8", vae_path=str(tmp_path))


def test_load_vae_missing_files_say_what_and_where(tmp_path):
    missing_dir = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=re.escape(f"VAE folder not found: {missing_dir}")):
        load_vae("884-4c-hy", vae_path=missing_dir)
    vae_dir = write_vae_checkpoint(str(tmp_path))
    os.remove(os.path.join(vae_dir, "pytorch_model.pt"))
    with pytest.raises(FileNotFoundError, match="VAE weights not found: .*pytorch_model.pt"):
        load_vae("884-4c-hy", vae_path=vae_dir)
    os.remove(os.path.join(vae_dir, "config.json"))
    with pytest.raises(FileNotFoundError, match="VAE config not found: .*config.json"):
        load_vae("884-4c-hy", vae_path=vae_dir)


def test_load_vae_reports_key_and_shape_mismatches(tmp_path):
    state = random_vae_state_dict(TINY_VAE_CONFIG)
    state.pop("decoder.conv_out.conv.bias")
    state["decoder.extra.weight"] = torch.zeros(1)
    state["post_quant_conv.weight"] = torch.zeros(4, 4, 1, 1, 2)
    vae_dir = write_vae_checkpoint(str(tmp_path), state_dict=state)
    with pytest.raises(ValueError) as err:
        load_vae("884-4c-hy", vae_path=vae_dir)
    message = str(err.value)
    assert "missing keys (1): ['decoder.conv_out.conv.bias']" in message
    assert "unexpected keys (1): ['decoder.extra.weight']" in message
    assert "post_quant_conv.weight: (4, 4, 1, 1, 2) vs model (4, 4, 1, 1, 1)" in message


def test_config_errors_name_field_and_value(tmp_path):
    bad_block = tiny_vae_config(down_block_types=["DownEncoderBlock2D"] * 4)
    with pytest.raises(ValueError, match=r"down_block_types contains \['DownEncoderBlock2D'"):
        AutoencoderKLCausal3D.from_config(bad_block)
    with pytest.raises(ValueError, match="time_compression_ratio=2; allowed: 4 or 8"):
        AutoencoderKLCausal3D.from_config(tiny_vae_config(time_compression_ratio=2))
    with pytest.raises(ValueError, match="multiples of norm_num_groups=4"):
        AutoencoderKLCausal3D.from_config(tiny_vae_config(block_out_channels=[8, 6, 8, 8]))
    vae_dir = write_vae_checkpoint(str(tmp_path))
    with open(os.path.join(vae_dir, "config.json"), "w") as f:
        f.write("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_vae("884-4c-hy", vae_path=vae_dir)
    with open(os.path.join(vae_dir, "config.json"), "w") as f:
        json.dump(tiny_vae_config(act_fn="gelu"), f)
    with pytest.raises(ValueError, match="config.json: act_fn='gelu'"):
        load_vae("884-4c-hy", vae_path=vae_dir)
