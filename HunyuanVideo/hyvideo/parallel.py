"""Sequence parallelism for the HunyuanVideo DiT: image tokens sharded over the ranks, text tokens replicated.

References: Tencent/HunyuanVideo sample_video.py + hyvideo/modules/attenion.py and xDiT's
`parallelize_transformer` (official USP path: `--ulysses-degree U --ring-degree R`, U x R = world size, image
tokens split, RoPE tables split the same way, text joined to every rank's attention, output gathered). Own code:
the model's forward runs unchanged; :func:`parallelize_transformer` swaps its seams through one
:class:`profilingdit.seams.Seams`, which it returns (``undo()`` makes the model a one-process model again).

* ``embed_image``: the image tokens are padded to a multiple of the world size and rank r keeps chunk r;
* a forward pre-hook cuts the RoPE tables (``freqs_cos``, ``freqs_sin``) the same way, so every image token keeps
  its global position;
* every block's ``attention_kernel`` becomes :func:`usp_joint_attention` (bound to this transformer's layout): the text,
  identical on every rank, is cut into equal chunks that join the local image tokens, so each key is seen exactly
  once across the ranks;
  yunchang's USP attention runs over [local image ; text chunk], padding keys (image padding, padding text
  tokens) masked; the text outputs are gathered back so the text stream stays replicated; padding text rows
  attend among themselves, as the official two-segment mask has it;
* ``unpatchify``: the final layer's per-token outputs are gathered from every rank first.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch

from profilingdit.parallel import (
    LaunchEnv,
    ParallelDegrees,
    SequenceParallel,
    check_heads,
    check_parallel_degrees,
    start_sequence_parallel,
)
from profilingdit.seams import Seams

from .modules.attention import TextSegments, attention
from .modules.models import HUNYUAN_VIDEO_CONFIG, HYVideoDiffusionTransformer

FLAGS = ("--ulysses-degree", "--ring-degree")


def degrees_from_args(args: argparse.Namespace) -> ParallelDegrees:
    """The sequence-parallel degrees of the command line."""
    return ParallelDegrees(args.ulysses_degree, args.ring_degree)


def check_parallel_args(args: argparse.Namespace, env: LaunchEnv | None = None) -> LaunchEnv:
    """Checks ``--ulysses-degree``/``--ring-degree`` against the launch and (for ``--model``) the head count.

    With ``--dit-config`` the head count comes from the checkpoint; :func:`parallelize_transformer` checks it.

    Raises:
        ValueError: naming the flags, the values and what is allowed.
    """
    env = env or LaunchEnv.from_environ()
    degrees = degrees_from_args(args)
    heads = HUNYUAN_VIDEO_CONFIG[args.model]["heads_num"] if args.dit_config is None else None
    check_parallel_degrees(degrees, env.world_size, heads, FLAGS)
    if degrees.size > 1 and args.use_cpu_offload:
        raise ValueError(f"--use-cpu-offload cannot be combined with {FLAGS[0]} {degrees.ulysses} x {FLAGS[1]} "
                         f"{degrees.ring} > 1 (as upstream): drop --use-cpu-offload")
    return env


def init_parallel(args: argparse.Namespace, env: LaunchEnv | None = None) -> SequenceParallel | None:
    """The USP engine of a torchrun launch, None on one process (call after :func:`check_parallel_args`).

    Ranks other than 0 log warnings and errors only from here on.
    """
    degrees = degrees_from_args(args)
    return start_sequence_parallel(degrees, env, f"1/{degrees.size} of the image tokens and all text tokens")


@dataclass
class _Layout:
    """The current forward's global image token count (set by the pre-hook, read by the seams)."""

    image_tokens: int = 0


def parallelize_transformer(transformer: HYVideoDiffusionTransformer, sp: SequenceParallel) -> Seams:
    """Makes ``transformer`` run on this rank's image tokens (see the module docstring).

    Args:
        transformer: the DiT, identical on every rank.
        sp: the engine from :func:`init_parallel`.

    Returns:
        The swapped seams: ``undo()`` restores the one-process model exactly.

    Raises:
        ValueError: the head count is not divisible by the Ulysses degree.
    """
    check_heads(sp.degrees, transformer.heads_num, FLAGS[0])
    layout = _Layout()
    embed_image, unpatchify = transformer.embed_image, transformer.unpatchify

    def shard_rope_tables(module, args, kwargs):
        if kwargs.get("freqs_cos") is None or kwargs.get("freqs_sin") is None:
            raise ValueError("under sequence parallelism the transformer takes freqs_cos and freqs_sin as keywords")
        layout.image_tokens = kwargs["freqs_cos"].shape[0]
        # Padding tokens get the identity rotation (cos 1, sin 0); they are masked as keys and dropped at the end.
        kwargs["freqs_cos"] = sp.shard(kwargs["freqs_cos"], dim=0, pad_value=1.0)
        kwargs["freqs_sin"] = sp.shard(kwargs["freqs_sin"], dim=0, pad_value=0.0)
        return args, kwargs

    def embed_and_shard(x: torch.Tensor) -> torch.Tensor:
        img = embed_image(x)  # [B, N_img, C]
        if img.shape[1] != layout.image_tokens:
            raise ValueError(f"{img.shape[1]} image tokens but RoPE tables for {layout.image_tokens}")
        return sp.shard(img, dim=1)  # [B, ceil(N_img / W), C]

    def gather_and_unpatchify(x: torch.Tensor, tt: int, th: int, tw: int) -> torch.Tensor:
        return unpatchify(sp.gather(x, dim=1, length=tt * th * tw), tt, th, tw)

    def kernel(q, k, v, segments):
        return usp_joint_attention(sp, layout.image_tokens, q, k, v, segments).flatten(2)  # [B, L, H*D]

    seams = Seams()
    seams.hook(transformer.register_forward_pre_hook(shard_rope_tables, with_kwargs=True))
    seams.swap(transformer, "embed_image", embed_and_shard)
    seams.swap(transformer, "unpatchify", gather_and_unpatchify)
    for block in [*transformer.double_blocks, *transformer.single_blocks]:
        seams.swap(block, "attention_kernel", kernel)
    return seams


def usp_joint_attention(sp: SequenceParallel, image_tokens: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        segments: TextSegments) -> torch.Tensor:
    """Joint attention over [this rank's image tokens ; the whole text], official two-segment semantics.

    Args:
        sp: the engine.
        image_tokens: the global image token count (unpadded).
        q, k, v: ``[B, N_local + N_txt, H, D]``: this rank's image chunk, then every text token.
        segments: the text layout (``txt_len``, valid tokens per sample).

    Returns:
        ``[B, N_local + N_txt, H, D]``: image rows for this rank's chunk, text rows whole (equal on every rank).
    """
    txt_len = segments.txt_len
    n_local = q.shape[1] - txt_len
    (q_img, q_txt), (k_img, k_txt), (v_img, v_txt) = (t.split([n_local, txt_len], dim=1) for t in (q, k, v))
    chunk = sp.padded_length(txt_len) // sp.world_size
    valid_lens = torch.tensor(segments.valid_lens, device=q.device)
    img_valid = sp.local_positions(n_local, q.device) < image_tokens  # [N_local]
    txt_valid = sp.local_positions(chunk, q.device)[None, :] < valid_lens[:, None]  # [B, chunk]
    key_valid = torch.cat([img_valid.expand(q.shape[0], -1), txt_valid], dim=1)  # [B, N_local + chunk]
    out = sp.attention(*(torch.cat([img, sp.shard(txt, dim=1)], dim=1) for img, txt in
                         ((q_img, q_txt), (k_img, k_txt), (v_img, v_txt))), key_valid=key_valid)
    out_txt = sp.gather(out[:, n_local:], dim=1, length=txt_len)  # [B, N_txt, H, D]
    _padding_text_among_themselves(out_txt, q_txt, k_txt, v_txt, segments)
    return torch.cat([out[:, :n_local], out_txt], dim=1)


def _padding_text_among_themselves(out_txt: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                   segments: TextSegments) -> None:
    """Overwrites each sample's padding text rows with their official segment: attention among themselves only.

    The text is whole on every rank, so this runs locally; these rows never reach image or valid text rows.
    """
    for b, valid in enumerate(segments.valid_lens):
        pad = segments.txt_len - valid
        if pad:
            rows = attention(q[b : b + 1, valid:], k[b : b + 1, valid:], v[b : b + 1, valid:],
                             TextSegments(pad, (0,)))  # [1, pad, H*D]: one segment, all padding
            out_txt[b, valid:] = rows[0].unflatten(-1, q.shape[2:]).to(out_txt.dtype)
