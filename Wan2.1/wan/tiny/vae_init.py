"""Closed-form weights for the tiny Wan VAE: a colour-pooling encoder and a decoder that starts as its inverse.

Not an upstream module; the architecture is the Wan VAE's (``WanVAE_``, base dim 16, dim_mult [1, 2, 2, 2], one
residual block per level, temporal downsampling [F, T, T], z_dim 16), only the weight values are set here.

Why: trained from scratch on this CPU, the tiny VAE learns object positions and brightness within a few hundred
steps but not colour (its scale-invariant RMS norms make colour a small change of direction on a large common
vector); the budget allows a few hundred steps. So the encoder is fixed in closed form and only the decoder is
trained:

* encoder: latent channels 0-11 hold the mean RGB of each 4x4-pixel sub-block of the 8x8-pixel latent cell
  (2x2 sub-blocks x 3 colours, ``pixel_unshuffle`` order ``colour * 4 + sub-block``), averaged over the frames the
  latent frame covers (frame 0 alone, then groups of 4); channels 12-15 hold the sub-block luminance of the last
  frame of the group (where the object is at the end of the group). Residual blocks and the mid attention are
  identities (zero output convs), the stride-2 convs average 2x2 pixels (the last one is a space-to-depth), the
  temporal stride-2 convs average (or pick the last) frame, and a constant channel ``K`` makes the RMS norms of
  the head almost exactly a constant scaling, undone by the head conv (SiLU is linearised around 0; the residual
  curvature is below 2 % of the range).
* decoder (initial value, then trained): each 8x8 cell is painted with the cell's mean colour (the mean of its
  four sub-blocks), frames are repeated, pixels upsampled by nearest-neighbour copies; the sub-block channels are
  carried along for the training to use.
"""

from __future__ import annotations

import torch
from torch import nn

from ..modules.vae import Resample, ResidualBlock, WanVAE_

K = 100.0  # the constant channel; larger = more linear heads
LATENT_CHANNELS = 16
TINY_VAE_CONFIG = dict(dim=16, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                       temperal_downsample=[False, True, True])
RGB, LUM, CONST = (0, 1, 2), 3, 4  # encoder channels at full resolution


def _zero(module: nn.Module) -> None:
    for param in module.parameters():
        param.data.zero_()


def _identity_conv(conv: nn.Module, channels, scale: float = 1.0) -> None:
    """Current-frame, centre-pixel identity for the listed channels (other weights zero)."""
    _zero(conv)
    w = conv.weight.data
    centre = [s // 2 for s in w.shape[2:]]
    if w.dim() == 5:  # causal conv: the current frame is the last temporal tap
        centre[0] = w.shape[2] - 1
    for ch in channels:
        w[(ch, ch, *centre)] = scale


def _residual_identities(module: nn.Module) -> None:
    """Every residual block becomes the identity: zero last conv, identity shortcut; attention adds zero."""
    for block in module.modules():
        if isinstance(block, ResidualBlock):
            _zero(block.residual[6])
            if not isinstance(block.shortcut, nn.Identity):
                _identity_conv(block.shortcut, range(min(block.shortcut.weight.shape[:2])))
        elif hasattr(block, "proj") and hasattr(block, "to_qkv"):
            _zero(block.proj)


@torch.no_grad()
def _encoder(model: WanVAE_) -> None:
    enc = model.encoder
    _zero(enc.conv1)
    w = enc.conv1.weight.data  # [16, 3, 3, 3, 3]; current frame = temporal tap 2
    for c in RGB:
        w[c, c, 2, 1, 1] = 1.0
        w[LUM, c, 2, 1, 1] = 1.0 / 3.0
    enc.conv1.bias.data[CONST] = K
    _residual_identities(enc)
    resamples = [layer for layer in enc.downsamples if isinstance(layer, Resample)]
    for index, layer in enumerate(resamples):
        conv = layer.resample[1]  # ZeroPad(0,1,0,1) + Conv2d(3, stride 2): taps (0|1, 0|1) cover one 2x2 block
        _zero(conv)
        last = index == len(resamples) - 1
        for ch in (*RGB, LUM, CONST):
            for i in (0, 1):
                for j in (0, 1):
                    if last and ch != CONST:  # space-to-depth: sub-block (i, j) of channel ch -> ch * 4 + 2i + j
                        conv.weight.data[ch * 4 + 2 * i + j, ch, i, j] = 1.0
                    else:
                        conv.weight.data[ch if not last else 16, ch, i, j] = 0.25
        if layer.mode == "downsample3d":
            # frames (previous last, new...): average taps 1 and 2, except luminance which keeps the newest frame
            t = layer.time_conv
            _zero(t)
            channels = range(16) if last else (*RGB, LUM)
            for ch in channels:
                is_lum = (ch >= 12) if last else ch == LUM
                if is_lum:
                    t.weight.data[ch, ch, 2, 0, 0] = 1.0
                else:
                    t.weight.data[ch, ch, 1, 0, 0] = t.weight.data[ch, ch, 2, 0, 0] = 0.5
            const = 16 if last else CONST
            t.weight.data[const, const, 1, 0, 0] = t.weight.data[const, const, 2, 0, 0] = 0.5
    # head: RMS norm (constant scaling since |x| ~ K) -> SiLU (~ x/2 near 0) -> conv undoing both
    alpha = (enc.head[0].gamma.shape[0] ** 0.5) / K
    _identity_conv(enc.head[2], range(LATENT_CHANNELS), 2.0 / alpha)
    _identity_conv(model.conv1, range(LATENT_CHANNELS))
    model.conv1.bias.data[LATENT_CHANNELS:] = -6.0  # log-variance: a narrow posterior (unused by inference)


@torch.no_grad()
def _decoder(model: WanVAE_) -> None:
    dec = model.decoder
    _identity_conv(model.conv2, range(LATENT_CHANNELS))
    _zero(dec.conv1)
    w = dec.conv1.weight.data  # [32, 16, 3, 3, 3]
    for c in RGB:  # channels 0-2: the cell's mean colour (mean of its four sub-blocks)
        for s in range(4):
            w[c, c * 4 + s, 2, 1, 1] = 0.25
    dec.conv1.bias.data[3] = K
    for k in range(12):  # channels 4-15: the sub-block colours, for the training to use
        w[4 + k, k, 2, 1, 1] = 1.0
    _residual_identities(dec)
    for layer in dec.upsamples:
        if isinstance(layer, Resample):
            _identity_conv(layer.resample[1], range(16))  # nearest x2 then identity
            if layer.mode == "upsample3d":  # both output frames of the pair copy the current frame
                t = layer.time_conv
                _zero(t)
                half = t.weight.shape[0] // 2
                for ch in range(16):
                    t.weight.data[ch, ch, 2, 0, 0] = t.weight.data[half + ch, ch, 2, 0, 0] = 1.0
    alpha = (dec.head[0].gamma.shape[0] ** 0.5) / K
    _identity_conv(dec.head[2], RGB, 2.0 / alpha)


def closed_form_vae() -> WanVAE_:
    """A ``WanVAE_`` of ``TINY_VAE_CONFIG`` with the closed-form encoder and the initial decoder described above."""
    model = WanVAE_(**TINY_VAE_CONFIG)
    _encoder(model)
    _decoder(model)
    return model.eval()
