"""Wan2.1 causal video VAE: equivalence with diffusers' AutoencoderKLWan, latent normalisation, loader."""

import math
import re

import pytest
import torch
from diffusers import AutoencoderKLWan

from wan.modules.vae import (
    WAN_LATENTS_MEAN,
    WAN_LATENTS_STD,
    WAN_VAE_CONFIG,
    WanVAE,
    WanVAE_,
    build_wan_vae,
    infer_vae_config,
    load_vae_state_dict,
)
from wan_ckpt_text import (
    OFFICIAL_VAE,
    TINY_VAE,
    random_vae_state_dict,
    vae_official_shapes,
    write_vae_checkpoint,
)


@pytest.fixture(scope="module")
def tiny_vae_path(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("vae") / "Wan2.1_VAE.pth")
    write_vae_checkpoint(path, seed=0)
    return path


def video(frames=9, size=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(3, frames, size, size, generator=generator) * 2 - 1


def to_diffusers_wan_vae(state_dict: dict) -> dict:
    """Official Wan VAE keys -> diffusers AutoencoderKLWan keys (reference C.3)."""
    out = {}
    for key, tensor in state_dict.items():
        key = re.sub(r"^conv1\.", "quant_conv.", key)
        key = re.sub(r"^conv2\.", "post_quant_conv.", key)
        key = re.sub(r"^(encoder|decoder)\.conv1\.", r"\1.conv_in.", key)
        key = re.sub(r"^(encoder|decoder)\.head\.0\.", r"\1.norm_out.", key)
        key = re.sub(r"^(encoder|decoder)\.head\.2\.", r"\1.conv_out.", key)
        key = re.sub(r"\.middle\.0\.", ".mid_block.resnets.0.", key)
        key = re.sub(r"\.middle\.1\.", ".mid_block.attentions.0.", key)
        key = re.sub(r"\.middle\.2\.", ".mid_block.resnets.1.", key)
        key = key.replace(".residual.0.", ".norm1.").replace(".residual.2.", ".conv1.")
        key = key.replace(".residual.3.", ".norm2.").replace(".residual.6.", ".conv2.")
        key = key.replace(".shortcut.", ".conv_shortcut.")
        key = key.replace("encoder.downsamples.", "encoder.down_blocks.")
        match = re.match(r"^decoder\.upsamples\.(\d+)\.(.*)$", key)
        if match:
            block, j = divmod(int(match.group(1)), 4)
            where = "upsamplers.0" if j == 3 else f"resnets.{j}"
            key = f"decoder.up_blocks.{block}.{where}.{match.group(2)}"
        out[key] = tensor
    return out


def diffusers_vae(state_dict: dict, config: dict) -> AutoencoderKLWan:
    model = AutoencoderKLWan(
        base_dim=config["dim"], z_dim=config["z_dim"], dim_mult=list(config["dim_mult"]),
        num_res_blocks=config["num_res_blocks"], attn_scales=[],
        temperal_downsample=list(config["temperal_downsample"]),
    ).eval()
    model.load_state_dict(to_diffusers_wan_vae(state_dict), strict=True)
    return model


# ------------------------------------------------------------------------------------------------------------
# Equivalence


def test_encode_and_decode_match_diffusers(tiny_vae_path):
    vae = WanVAE(vae_pth=tiny_vae_path)
    reference = diffusers_vae(load_vae_state_dict(tiny_vae_path), TINY_VAE)
    mean = torch.tensor(WAN_LATENTS_MEAN).view(1, 16, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(WAN_LATENTS_STD).view(1, 16, 1, 1, 1)
    clip = video()
    with torch.no_grad():
        latent = vae.encode([clip])[0]
        expected = (reference.encode(clip[None]).latent_dist.mean - mean) * inv_std
        assert latent.shape == (16, 3, 4, 4)
        assert (latent - expected[0]).abs().max().item() <= 1e-5
        z = torch.randn(16, 3, 4, 4)
        decoded = vae.decode([z])[0]
        expected_video = reference.decode(z[None] / inv_std + mean).sample[0]
    assert decoded.shape == (3, 9, 32, 32)
    assert (decoded - expected_video).abs().max().item() <= 1e-5
    assert (decoded.abs() < 0.99).float().mean() > 0.5  # mostly not clamped: the comparison means something


# ------------------------------------------------------------------------------------------------------------
# Wrapper semantics


def test_wrapper_applies_mean_and_std_exactly(tiny_vae_path):
    vae = WanVAE(z_dim=16, vae_pth=tiny_vae_path, dtype=torch.float32, device="cpu")
    mean = torch.tensor(WAN_LATENTS_MEAN).view(1, 16, 1, 1, 1)
    std = torch.tensor(WAN_LATENTS_STD).view(1, 16, 1, 1, 1)
    clip = video(frames=5, size=16, seed=1)
    z = torch.randn(16, 2, 2, 2)
    with torch.no_grad():
        mu, _ = vae.model.encode_moments(clip[None])
        assert torch.equal(vae.encode([clip])[0], ((mu - mean) * (1.0 / std))[0])
        raw = vae.model.decode_raw(z[None] / (1.0 / std) + mean)
        assert torch.equal(vae.decode([z])[0], raw.clamp(-1, 1)[0])
    assert raw.abs().max() > 1  # the clamp is exercised


def test_latent_statistics_override(tmp_path):
    path = str(tmp_path / "vae_z4.pth")
    write_vae_checkpoint(path, seed=3, z_dim=4, dim_mult=(1, 2), temperal_downsample=(True,))
    mean, std = [0.5, -1.0, 0.0, 2.0], [1.0, 2.0, 0.5, 4.0]
    vae = WanVAE(z_dim=4, vae_pth=path, latents_mean=mean, latents_std=std)
    clip = video(frames=5, size=16, seed=2)
    with torch.no_grad():
        mu, _ = vae.model.encode_moments(clip[None])
        latent = vae.encode([clip])[0]
    assert latent.shape == (4, 3, 8, 8)  # one temporal downsample: 1 + 4 frames -> 1 + 2 latent frames
    expected = (mu - torch.tensor(mean).view(1, 4, 1, 1, 1)) * (1.0 / torch.tensor(std)).view(1, 4, 1, 1, 1)
    assert torch.equal(latent, expected[0])
    with pytest.raises(ValueError, match="latents_mean and latents_std are required for a z_dim=4"):
        WanVAE(z_dim=4, vae_pth=path)
    with pytest.raises(ValueError, match="latents_std has 3 values.*z_dim=4"):
        WanVAE(z_dim=4, vae_pth=path, latents_mean=mean, latents_std=std[:3])
    with pytest.raises(ValueError, match="z_dim=16 but the VAE checkpoint.*4-channel"):
        WanVAE(z_dim=16, vae_pth=path)


def test_chunked_processing_is_causal(tiny_vae_path):
    vae = WanVAE(vae_pth=tiny_vae_path)
    clip = video(size=16, seed=4)
    with torch.no_grad():
        full = vae.encode([clip])[0]
        prefix = vae.encode([clip[:, :5]])[0]
        z = torch.randn(16, 3, 2, 2)
        decoded = vae.decode([z])[0]
        decoded_prefix = vae.decode([z[:, :2]])[0]
    # Later frames never influence earlier ones (equal up to the GEMM shapes of the quant convs).
    assert torch.allclose(prefix, full[:, :2], atol=1e-5, rtol=0)
    assert torch.allclose(decoded_prefix, decoded[:, :5], atol=1e-5, rtol=0)


def test_wrapper_rejects_bad_shapes(tiny_vae_path):
    vae = WanVAE(vae_pth=tiny_vae_path)
    with pytest.raises(ValueError, match=r"videos\[0\] has shape \(3, 8, 32, 32\).*T = 1 \+ 4k"):
        vae.encode([video(frames=8)])
    with pytest.raises(ValueError, match=r"zs\[0\] has shape \(4, 2, 4, 4\); expected \[16, t, h, w\]"):
        vae.decode([torch.zeros(4, 2, 4, 4)])


# ------------------------------------------------------------------------------------------------------------
# Sizes and loading


def test_official_preset_has_the_194_official_keys():
    with torch.device("meta"):
        model = WanVAE_(**WAN_VAE_CONFIG)
    shapes = {key: tuple(tensor.shape) for key, tensor in model.state_dict().items()}
    assert shapes == vae_official_shapes(**OFFICIAL_VAE)
    assert len(shapes) == 194
    assert round(sum(math.prod(shape) for shape in shapes.values()) / 1e5) == 1269  # 126.9 M parameters
    assert infer_vae_config(model.state_dict()) == WAN_VAE_CONFIG


def test_architecture_is_inferred_from_the_checkpoint(tiny_vae_path):
    state_dict = load_vae_state_dict(tiny_vae_path)
    config = infer_vae_config(state_dict)
    assert config == {key: list(v) if isinstance(v, tuple) else v for key, v in TINY_VAE.items()}
    other = dict(dim=4, z_dim=6, dim_mult=[1, 3, 2], num_res_blocks=1, temperal_downsample=[True, False])
    assert infer_vae_config(random_vae_state_dict(**other)) == other
    model = build_wan_vae(state_dict)
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, state_dict[key]), key


def test_loader_errors(tmp_path, tiny_vae_path):
    with pytest.raises(FileNotFoundError, match="VAE checkpoint not found.*missing_vae.pth"):
        WanVAE(vae_pth=str(tmp_path / "missing_vae.pth"))
    state_dict = load_vae_state_dict(tiny_vae_path)
    broken = {k: v for k, v in state_dict.items() if k != "decoder.upsamples.7.time_conv.weight"}
    with pytest.raises(ValueError, match="missing.*'decoder.upsamples.7.time_conv.weight'"):
        build_wan_vae(broken)
    with pytest.raises(ValueError, match="unexpected.*'decoder.extra.weight'"):
        build_wan_vae({**state_dict, "decoder.extra.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="'encoder.middle.1.proj.bias' has shape"):
        build_wan_vae({**state_dict, "encoder.middle.1.proj.bias": torch.zeros(5)})
    with pytest.raises(ValueError, match="'conv2.weight'"):
        build_wan_vae({k: v for k, v in state_dict.items() if k != "conv2.weight"})
