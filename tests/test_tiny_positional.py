"""wan.tiny.positional: the position ramps, their removal before decoding, and when noise hides them."""

import pytest
import torch
from wan.tiny.positional import (
    POSITION_CHANNELS,
    position_blind_decoding,
    position_ramps,
    position_readability,
    with_position,
    without_position,
)


def test_ramps_rise_left_to_right_and_top_to_bottom_in_every_frame():
    ramps = position_ramps(frames=3, height=8, width=8, amplitude=5.0)
    assert ramps.shape == (4, 3, 8, 8)
    for channel in (0, 2):  # horizontal: -5 at the left edge, +5 at the right, the same down each column
        assert torch.equal(ramps[channel, :, :, 0], torch.full((3, 8), -5.0))
        assert torch.equal(ramps[channel, :, :, -1], torch.full((3, 8), 5.0))
        steps = ramps[channel, :, :, 1:] - ramps[channel, :, :, :-1]
        assert torch.allclose(steps, torch.full_like(steps, 10.0 / 7))
    for channel in (1, 3):  # vertical: the transposed ramp
        assert torch.equal(ramps[channel], ramps[0].transpose(1, 2))


def test_with_and_without_position_touch_only_channels_12_to_15():
    latents = torch.randn(2, 16, 5, 8, 8)
    ramped = with_position(latents, 3.0)
    others = [c for c in range(16) if c not in POSITION_CHANNELS]
    assert torch.equal(ramped[:, others], latents[:, others])
    assert torch.equal(ramped[:, 12:], position_ramps(5, 8, 8, 3.0).expand(2, 4, 5, 8, 8))
    blind = without_position(ramped)
    assert torch.equal(blind[:, others], latents[:, others]) and not blind[:, 12:].any()
    assert torch.equal(latents, latents.clone())  # inputs are not modified


class RecordingVae:
    def __init__(self):
        self.seen = []

    def decode(self, zs):
        self.seen.extend(zs)
        return ["video"] * len(zs)


def test_position_blind_decoding_zeroes_the_ramps_then_restores_decode():
    vae = RecordingVae()
    z = with_position(torch.randn(16, 5, 8, 8), 4.0)
    with position_blind_decoding(vae):
        assert vae.decode([z]) == ["video"]
    assert not vae.seen[0][12:].any() and torch.equal(vae.seen[0][:12], z[:12])
    vae.decode([z])  # outside the block: the latent as given
    assert torch.equal(vae.seen[1], z) and "decode" not in vars(vae)


def test_readability_goes_from_chance_to_certain_as_the_noise_falls():
    readable = position_readability(20.0, [0.999, 0.9, 0.5], draws=4000)
    assert readable[0.999] == pytest.approx(1 / 16, abs=0.03)  # 4 x 4 token positions: chance is 1/16
    assert readable[0.9] > 0.85 and readable[0.5] == 1.0
    # a larger amplitude is readable at more noise
    assert position_readability(40.0, [0.95])[0.95] > position_readability(10.0, [0.95])[0.95] + 0.4
