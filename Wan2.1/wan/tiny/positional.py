"""An absolute-position signal in the tiny model's latent (issue 18's experiment), applied to normalised latents.

The Wan DiT has no absolute position embedding (3D RoPE only), so on the tiny model's 4x4-token frames "the object
starts on the left" can only be learned from attention's edge effects. The experiment replaces the latent channels
that repeat information (12-15: the last frame's sub-block luminance, which channels 0-11 already carry as
averages) by fixed ramps, the same in every clip: channels 12 and 14 rise from left to right, 13 and 15 from top
to bottom, from ``-amplitude`` to ``+amplitude`` over the latent's width and height.

The ramps are applied here to the normalised latents the DiT sees (training targets) and neutralised (set to 0,
the channel mean) before decoding; a shipped model would produce them in the closed-form encoder instead. Because
sampling starts from noise, the ramps reach ``x_t`` only as the DiT writes them: they make the DiT's loss ask for
its own absolute position, and once written, position is readable from ``x_t`` by every later step.
"""

from __future__ import annotations

import torch

from profilingdit.seams import Seams

POSITION_CHANNELS = (12, 13, 14, 15)


def position_ramps(frames: int, height: int, width: int, amplitude: float) -> torch.Tensor:
    """``[4, frames, height, width]``: the values of :data:`POSITION_CHANNELS` (horizontal, vertical, horizontal,
    vertical ramps from ``-amplitude`` to ``+amplitude``)."""
    horizontal = torch.linspace(-amplitude, amplitude, width).view(1, width).expand(height, width)
    vertical = torch.linspace(-amplitude, amplitude, height).view(height, 1).expand(height, width)
    return torch.stack([horizontal, vertical, horizontal, vertical])[:, None].expand(4, frames, height, width).clone()


def with_position(latents: torch.Tensor, amplitude: float) -> torch.Tensor:
    """Normalised latents ``[..., 16, f, h, w]`` with :data:`POSITION_CHANNELS` replaced by the ramps (a copy)."""
    out = latents.clone()
    frames, height, width = latents.shape[-3:]
    out[..., list(POSITION_CHANNELS), :, :, :] = position_ramps(frames, height, width, amplitude).to(latents)
    return out


def without_position(latents: torch.Tensor) -> torch.Tensor:
    """A copy with :data:`POSITION_CHANNELS` set to 0 (the channel mean), for a decoder that never saw ramps."""
    out = latents.clone()
    out[..., list(POSITION_CHANNELS), :, :, :] = 0.0
    return out


def position_blind_decoding(vae) -> Seams:
    """Within the returned context, ``vae.decode`` (a ``WanVAE``) neutralises the position channels of what it
    decodes; on exit the VAE's own method is back."""
    seams = Seams()
    decode = vae.decode
    seams.swap(vae, "decode", lambda zs: decode([without_position(z) for z in zs]))
    return seams


def position_readability(amplitude: float, sigmas: list[float], height: int = 8, width: int = 8, patch: int = 2,
                         draws: int = 2000, seed: int = 0) -> dict[float, float]:
    """How often a token's column and row (of ``width / patch`` x ``height / patch``) are both recovered from the
    position channels of ``x_t = (1 - sigma) x0 + sigma noise`` by the best linear reader (nearest ramp template,
    the noise being white), per sigma: at which noise level the ramps make position visible."""
    generator = torch.Generator().manual_seed(seed)
    ramps = position_ramps(1, height, width, amplitude)[:, 0]  # [4, h, w]
    # [tokens, 4 * patch * patch] templates, token (row, col) order
    tokens = ramps.unfold(1, patch, patch).unfold(2, patch, patch).permute(1, 2, 0, 3, 4).flatten(2).flatten(0, 1)
    rows = torch.arange(height // patch).repeat_interleave(width // patch)
    cols = torch.arange(width // patch).repeat(height // patch)
    result = {}
    for sigma in sigmas:
        index = torch.randint(len(tokens), (draws,), generator=generator)
        noisy = (1 - sigma) * tokens[index] + sigma * torch.randn(draws, tokens.shape[1], generator=generator)
        nearest = torch.cdist(noisy, (1 - sigma) * tokens).argmin(dim=1)
        correct = (rows[nearest] == rows[index]) & (cols[nearest] == cols[index])
        result[sigma] = float(correct.float().mean())
    return result
