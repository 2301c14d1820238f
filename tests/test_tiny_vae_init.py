"""The closed-form tiny VAE: the encoder pools colours exactly as documented, the initial decoder paints them."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wan.modules.vae import infer_vae_config
from wan.tiny import adherence, data
from wan.tiny.vae_init import TINY_VAE_CONFIG, closed_form_vae

pytestmark = pytest.mark.usefixtures("one_thread")


def _clips(count=3):
    specs = [data.sample_spec(9, i, two_object_prob=0.0) for i in range(count)]
    return specs, torch.from_numpy(np.stack([data.to_model_range(data.render(s)[0]) for s in specs]))


def _sub_blocks(frames: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> mean of each 4x4 block, 2x2 blocks per 8x8 cell as channels (pixel_unshuffle order)."""
    return F.pixel_unshuffle(F.avg_pool2d(frames, 4), 2)


def test_architecture_is_the_wan_vae_of_the_recipe():
    model = closed_form_vae()
    assert infer_vae_config(model.state_dict()) == TINY_VAE_CONFIG


def test_encoder_holds_pooled_colours_and_last_frame_luminance():
    _, clips = _clips()
    with torch.no_grad():
        mu, log_var = closed_form_vae().encode_moments(clips)  # [B, 16, 5, 8, 8]
    assert mu.shape == (3, 16, 5, 8, 8)
    assert torch.allclose(log_var, torch.full_like(log_var, -6.0))
    for t in range(5):
        frames = clips[:, :, :1] if t == 0 else clips[:, :, 4 * t - 3:4 * t + 1]
        colours = _sub_blocks(frames.mean(dim=2))  # [B, 12, 8, 8]
        luminance = _sub_blocks(frames[:, :, -1].mean(dim=1, keepdim=True))  # [B, 4, 8, 8]
        assert (mu[:, :12, t] - colours).abs().max() < 0.03  # the SiLU linearisation error is below 3 %
        assert (mu[:, 12:, t] - luminance).abs().max() < 0.03


def test_initial_decoder_paints_cell_colours_and_keeps_adherence():
    specs, clips = _clips()
    model = closed_form_vae()
    with torch.no_grad():
        video = model.decode_raw(model.encode_moments(clips)[0])
    assert video.shape == clips.shape
    cells = F.avg_pool2d(clips[:, :, 0], 8)  # frame 0 = latent frame 0: each 8x8 cell gets its mean colour
    painted = video[:, :, 0, ::8, ::8]
    assert (painted - cells).abs().max() < 0.05
    scores = [adherence.score_caption(v, data.caption(s)) for v, s in zip(video.clamp(-1, 1), specs)]
    assert all(s.colour_correct == 1.0 for s in scores)
