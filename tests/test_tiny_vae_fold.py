"""Folding a VAE's own latent statistics into its quant convs, so that the official normalisation applies."""

import os

import numpy as np
import pytest
import torch

from wan.modules.vae import WAN_LATENTS_MEAN, WAN_LATENTS_STD, WanVAE, WanVAE_
from wan.tiny import data
from wan.tiny.export import fold_latent_stats

pytestmark = pytest.mark.usefixtures("one_thread")

SHIPPED_VAE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "Wan2.1", "Wan2.1-T2V-tiny",
                           "Wan2.1_VAE.pth")
TINY_VAE = dict(dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1, temperal_downsample=[False, True, True])


@pytest.fixture()
def vae_files(tmp_path):
    torch.manual_seed(1)
    model = WanVAE_(**TINY_VAE)
    with torch.no_grad():  # non-trivial quant convs and a latent far from the official statistics
        model.conv1.bias.normal_(0.0, 0.5)
        model.conv2.bias.normal_(0.0, 0.5)
    mean, std = torch.randn(16) * 0.4, torch.rand(16) * 0.3 + 0.1
    own = str(tmp_path / "own.pth")
    folded = str(tmp_path / "folded.pth")
    torch.save(model.state_dict(), own)
    torch.save(fold_latent_stats(model.state_dict(), mean, std), folded)
    return own, folded, mean, std


def test_folded_vae_with_official_stats_equals_own_stats(vae_files):
    own_path, folded_path, mean, std = vae_files
    own = WanVAE(vae_pth=own_path, latents_mean=mean, latents_std=std)
    folded = WanVAE(vae_pth=folded_path)  # the official 16-channel statistics, as the pipeline uses them
    assert torch.equal(folded.mean, torch.tensor(WAN_LATENTS_MEAN))
    assert torch.equal(folded.std, torch.tensor(WAN_LATENTS_STD))
    video = torch.rand(3, 9, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    z_own, z_folded = own.encode([video])[0], folded.encode([video])[0]
    assert z_own.shape == (16, 3, 4, 4)
    assert (z_own - z_folded).abs().max() < 1e-5 * max(1.0, float(z_own.abs().max()))
    latent = torch.randn(16, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    decoded_own, decoded_folded = own.decode([latent])[0], folded.decode([latent])[0]
    assert (decoded_own - decoded_folded).abs().max() < 1e-5


def test_fold_rescales_the_posterior_log_variance(vae_files):
    own_path, folded_path, mean, std = vae_files
    own, folded = torch.load(own_path), torch.load(folded_path)
    gain = torch.tensor(WAN_LATENTS_STD) / std
    assert torch.allclose(folded["conv1.bias"][16:], own["conv1.bias"][16:] + 2 * torch.log(gain), atol=1e-5)
    assert torch.equal(folded["encoder.conv1.weight"], own["encoder.conv1.weight"])  # only quant convs change


def test_fold_refuses_bad_statistics():
    state = WanVAE_(**TINY_VAE).state_dict()
    with pytest.raises(ValueError, match="16 values"):
        fold_latent_stats(state, torch.zeros(8), torch.ones(8))
    with pytest.raises(ValueError, match="std > 0"):
        fold_latent_stats(state, torch.zeros(16), torch.zeros(16))


def test_shipped_vae_latents_are_normalised():
    vae = WanVAE(vae_pth=SHIPPED_VAE)
    # the first training clips (the latent statistics were measured on 2,400 of them)
    videos = [torch.from_numpy(data.to_model_range(data.render(data.sample_spec(0, i))[0])) for i in range(24)]
    with torch.no_grad():
        latents = torch.stack(vae.encode(videos))  # [24, 16, 5, 8, 8], official normalisation
        mean, std = latents.mean(dim=(0, 2, 3, 4)), latents.std(dim=(0, 2, 3, 4))
        # a clip's latent is mostly its background colour, so 24 clips estimate the mean to about +-0.2
        assert mean.abs().max() < 0.6 and 0.6 < std.min() and std.max() < 1.5
        round_trip = vae.decode(list(latents[:2]))
    error = np.abs(np.stack([v.numpy() for v in round_trip]) - np.stack([v.numpy() for v in videos[:2]]))
    assert error.mean() < 0.1  # reconstruction in [-1, 1] units
