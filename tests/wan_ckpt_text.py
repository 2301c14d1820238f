"""Test fixtures for the Wan2.1 text encoder and VAE: a tiny SentencePiece tokenizer and tiny checkpoints.

Everything is written in the official layouts, from the key tables of reference/official-models.md (B.6, B.7),
independently of the model code under test:

* ``build_tiny_tokenizer(out_dir)`` trains a SentencePiece unigram model on generated English captions and
  writes a folder that ``transformers.AutoTokenizer.from_pretrained(out_dir)`` loads like ``google/umt5-xxl``
  (``spiece.model``, ``tokenizer.json``, ``tokenizer_config.json``; ``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2; see
  ``wan.utils.sp_tokenizer`` for the layout).
* ``write_t5_checkpoint(path, **size)`` writes a plain T5 state dict (layout of
  ``models_t5_umt5-xxl-enc-bf16.pth``).
* ``write_vae_checkpoint(path, **size)`` writes a plain VAE state dict (``Wan2.1_VAE.pth`` layout).
"""

from __future__ import annotations

import math
import random

import torch

from wan.utils.sp_tokenizer import build_sentencepiece_tokenizer

TINY_VOCAB = 256

TINY_T5 = dict(vocab=TINY_VOCAB, dim=32, dim_attn=24, dim_ffn=48, num_heads=4, num_layers=2, num_buckets=32)
UMT5_XXL_SHAPES = dict(vocab=256384, dim=4096, dim_attn=4096, dim_ffn=10240, num_heads=64, num_layers=24,
                       num_buckets=32)

TINY_VAE = dict(dim=8, z_dim=16, dim_mult=(1, 2, 4, 4), num_res_blocks=2,
                temperal_downsample=(False, True, True))
OFFICIAL_VAE = dict(dim=96, z_dim=16, dim_mult=(1, 2, 4, 4), num_res_blocks=2,
                    temperal_downsample=(False, True, True))

_COLORS = ("red green blue yellow white black orange purple pink brown gray golden silver violet crimson "
           "turquoise beige maroon navy olive teal ivory amber scarlet emerald").split()
_LOOKS = ("small large tiny huge tall short round square shiny fluffy wooden metal glass plastic ancient "
          "modern bright dark striped spotted glowing rusty transparent furry muddy").split()
_THINGS = ("ball cat dog cube circle bird car boat tree flower horse fish balloon robot girl boy woman man "
           "train kite rabbit elephant butterfly dragon airplane bicycle lantern castle candle umbrella "
           "penguin turtle squirrel fox owl whale dolphin jellyfish astronaut knight chef dancer musician "
           "giraffe tiger zebra monkey parrot spaceship submarine tractor").split()
_ACTIONS = ("bounces walks runs flies swims rolls spins jumps floats drifts glides dances slides falls "
            "climbs wanders hovers sparkles rotates shakes waves marches crawls sprints tumbles "
            "wobbles").split()
_PLACES = ("floor room park ocean forest sky beach lake street mountain desert river garden kitchen library "
           "stadium village highway bridge meadow canyon island harbor rooftop tunnel volcano jungle").split()
_MANNERS = ("slowly quickly gently calmly happily lazily proudly silently wildly gracefully steadily "
            "playfully nervously smoothly boldly carefully").split()
_CAMERAS = ["close up", "wide angle", "aerial view", "tracking shot", "handheld camera", "time lapse",
            "shallow depth of field", "golden hour light", "studio backdrop", "watercolor style",
            "pixel art style", "documentary footage", "vintage film grain", "dramatic shadows",
            "pastel colors"]
_PREPOSITIONS = "on across in over through under along near inside beside behind around toward".split()
_ENDINGS = ["at sunset", "in slow motion", "while the camera pans left", "with soft lighting",
            "during a rainy afternoon", "in a cinematic shot", "at night under neon lights",
            "as snow falls gently", "on a foggy morning", "seen from above", "in vivid detail"]


def caption_corpus(num: int = 800, seed: int = 0) -> list[str]:
    """Deterministic English video captions such as "a tiny red cat jumps slowly over the blue lake, ..."."""
    rng = random.Random(seed)
    captions = []
    for _ in range(num):
        subject = f"a {rng.choice(_LOOKS)} {rng.choice(_COLORS)} {rng.choice(_THINGS)}"
        motion = f"{rng.choice(_ACTIONS)} {rng.choice(_MANNERS)} {rng.choice(_PREPOSITIONS)}"
        place = f"the {rng.choice(_COLORS)} {rng.choice(_PLACES)} {rng.choice(_ENDINGS)}"
        captions.append(f"{subject} {motion} {place}, {rng.choice(_CAMERAS)}")
    return captions


def build_tiny_tokenizer(out_dir: str, vocab_size: int = TINY_VOCAB) -> str:
    """Trains the tiny caption tokenizer into ``out_dir`` (a ``google/umt5-xxl``-like folder); returns it."""
    return build_sentencepiece_tokenizer(out_dir, caption_corpus(), vocab_size)


# ------------------------------------------------------------------------------------------------------------
# T5


def t5_official_shapes(vocab, dim, dim_attn, dim_ffn, num_heads, num_layers, num_buckets) -> dict[str, tuple]:
    """Key -> shape of the official umT5 encoder state dict (B.6)."""
    shapes = {"token_embedding.weight": (vocab, dim)}
    for i in range(num_layers):
        block = f"blocks.{i}"
        shapes[f"{block}.norm1.weight"] = (dim,)
        for name in "qkv":
            shapes[f"{block}.attn.{name}.weight"] = (dim_attn, dim)
        shapes[f"{block}.attn.o.weight"] = (dim, dim_attn)
        shapes[f"{block}.pos_embedding.embedding.weight"] = (num_buckets, num_heads)
        shapes[f"{block}.norm2.weight"] = (dim,)
        shapes[f"{block}.ffn.gate.0.weight"] = (dim_ffn, dim)
        shapes[f"{block}.ffn.fc1.weight"] = (dim_ffn, dim)
        shapes[f"{block}.ffn.fc2.weight"] = (dim, dim_ffn)
    shapes["norm.weight"] = (dim,)
    return shapes


def random_t5_state_dict(seed: int = 0, dtype: torch.dtype = torch.float32, **size) -> dict:
    """Random weights in the official layout, scaled so that activations stay O(1)."""
    generator = torch.Generator().manual_seed(seed)
    state_dict = {}
    for key, shape in t5_official_shapes(**size).items():
        noise = torch.randn(shape, generator=generator)
        if key.endswith("norm1.weight") or key.endswith("norm2.weight") or key == "norm.weight":
            tensor = 1.0 + 0.1 * noise
        elif "pos_embedding" in key:
            tensor = 0.5 * noise
        elif key == "token_embedding.weight":
            tensor = noise
        else:  # linear [out, in]
            tensor = noise / math.sqrt(shape[1])
        state_dict[key] = tensor.to(dtype)
    return state_dict


def write_t5_checkpoint(path: str, seed: int = 0, dtype: torch.dtype = torch.float32, **size) -> dict:
    """Writes a random T5 ``.pth`` (plain state dict); ``size`` defaults to ``TINY_T5``. Returns it."""
    state_dict = random_t5_state_dict(seed, dtype, **{**TINY_T5, **size})
    torch.save(state_dict, path)
    return state_dict


# ------------------------------------------------------------------------------------------------------------
# VAE


def _residual_shapes(prefix: str, in_dim: int, out_dim: int) -> dict[str, tuple]:
    shapes = {
        f"{prefix}.residual.0.gamma": (in_dim, 1, 1, 1),
        f"{prefix}.residual.2.weight": (out_dim, in_dim, 3, 3, 3), f"{prefix}.residual.2.bias": (out_dim,),
        f"{prefix}.residual.3.gamma": (out_dim, 1, 1, 1),
        f"{prefix}.residual.6.weight": (out_dim, out_dim, 3, 3, 3), f"{prefix}.residual.6.bias": (out_dim,),
    }
    if in_dim != out_dim:
        shapes[f"{prefix}.shortcut.weight"] = (out_dim, in_dim, 1, 1, 1)
        shapes[f"{prefix}.shortcut.bias"] = (out_dim,)
    return shapes


def _middle_shapes(prefix: str, dim: int) -> dict[str, tuple]:
    shapes = {**_residual_shapes(f"{prefix}.0", dim, dim), **_residual_shapes(f"{prefix}.2", dim, dim)}
    shapes.update({
        f"{prefix}.1.norm.gamma": (dim, 1, 1),
        f"{prefix}.1.to_qkv.weight": (3 * dim, dim, 1, 1), f"{prefix}.1.to_qkv.bias": (3 * dim,),
        f"{prefix}.1.proj.weight": (dim, dim, 1, 1), f"{prefix}.1.proj.bias": (dim,),
    })
    return shapes


def _conv_shapes(prefix: str, out_dim: int, in_dim: int, *kernel: int) -> dict[str, tuple]:
    return {f"{prefix}.weight": (out_dim, in_dim, *kernel), f"{prefix}.bias": (out_dim,)}


def _encoder_shapes(dim, z_dim, dim_mult, num_res_blocks, temperal_downsample) -> dict[str, tuple]:
    dims = [dim * m for m in [1, *dim_mult]]
    shapes = _conv_shapes("encoder.conv1", dims[0], 3, 3, 3, 3)
    index = 0
    for level, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
        for _ in range(num_res_blocks):
            shapes.update(_residual_shapes(f"encoder.downsamples.{index}", in_dim, out_dim))
            in_dim, index = out_dim, index + 1
        if level < len(dim_mult) - 1:
            shapes.update(_conv_shapes(f"encoder.downsamples.{index}.resample.1", out_dim, out_dim, 3, 3))
            if temperal_downsample[level]:
                prefix = f"encoder.downsamples.{index}.time_conv"
                shapes.update(_conv_shapes(prefix, out_dim, out_dim, 3, 1, 1))
            index += 1
    shapes.update(_middle_shapes("encoder.middle", dims[-1]))
    shapes["encoder.head.0.gamma"] = (dims[-1], 1, 1, 1)
    shapes.update(_conv_shapes("encoder.head.2", 2 * z_dim, dims[-1], 3, 3, 3))
    return shapes


def _decoder_shapes(dim, z_dim, dim_mult, num_res_blocks, temperal_upsample) -> dict[str, tuple]:
    dims = [dim * m for m in [dim_mult[-1], *dim_mult[::-1]]]
    shapes = _conv_shapes("decoder.conv1", dims[0], z_dim, 3, 3, 3)
    shapes.update(_middle_shapes("decoder.middle", dims[0]))
    index = 0
    for level, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
        in_dim = in_dim // 2 if level > 0 else in_dim
        for _ in range(num_res_blocks + 1):
            shapes.update(_residual_shapes(f"decoder.upsamples.{index}", in_dim, out_dim))
            in_dim, index = out_dim, index + 1
        if level < len(dim_mult) - 1:
            shapes.update(_conv_shapes(f"decoder.upsamples.{index}.resample.1", out_dim // 2, out_dim, 3, 3))
            if temperal_upsample[level]:
                prefix = f"decoder.upsamples.{index}.time_conv"
                shapes.update(_conv_shapes(prefix, 2 * out_dim, out_dim, 3, 1, 1))
            index += 1
    shapes["decoder.head.0.gamma"] = (dims[-1], 1, 1, 1)
    shapes.update(_conv_shapes("decoder.head.2", 3, dims[-1], 3, 3, 3))
    return shapes


def vae_official_shapes(dim, z_dim, dim_mult, num_res_blocks, temperal_downsample) -> dict[str, tuple]:
    """Key -> shape of the official Wan VAE state dict (B.7); 194 keys for ``OFFICIAL_VAE``."""
    shapes = _encoder_shapes(dim, z_dim, dim_mult, num_res_blocks, temperal_downsample)
    shapes.update(_conv_shapes("conv1", 2 * z_dim, 2 * z_dim, 1, 1, 1))
    shapes.update(_conv_shapes("conv2", z_dim, z_dim, 1, 1, 1))
    shapes.update(_decoder_shapes(dim, z_dim, dim_mult, num_res_blocks, list(temperal_downsample)[::-1]))
    return shapes


def random_vae_state_dict(seed: int = 0, **size) -> dict[str, torch.Tensor]:
    """Random fp32 weights in the official layout (convs ~ N(0, 1/fan_in), gammas near 1, small biases)."""
    generator = torch.Generator().manual_seed(seed)
    state_dict = {}
    for key, shape in vae_official_shapes(**size).items():
        noise = torch.randn(shape, generator=generator)
        if key.endswith(".gamma"):
            tensor = 1.0 + 0.1 * noise
        elif key.endswith(".bias"):
            tensor = 0.05 * noise
        else:
            tensor = noise / math.sqrt(math.prod(shape[1:]))
        state_dict[key] = tensor
    return state_dict


def write_vae_checkpoint(path: str, seed: int = 0, **size) -> dict:
    """Writes a random VAE ``.pth`` (plain fp32 state dict); ``size`` defaults to ``TINY_VAE``. Returns it."""
    state_dict = random_vae_state_dict(seed, **{**TINY_VAE, **size})
    torch.save(state_dict, path)
    return state_dict
