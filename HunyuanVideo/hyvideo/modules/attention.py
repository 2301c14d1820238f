"""The attention entry point of the HunyuanVideo blocks, and the token refiner's masked attention.

References: Tencent/HunyuanVideo hyvideo/modules/attenion.py (official semantics: `flash_attn_varlen_func`
over two segments per sample, see `get_cu_seqlens`) and hyvideo/modules/token_refiner.py (refiner mask).

Every double- and single-stream block calls :func:`attention` on the joint sequence [image ; text]. Per sample
the official model splits that sequence into two varlen segments:

* segment 1 = all image tokens + the first ``valid_len`` text tokens (the text is right-padded),
* segment 2 = the padding text tokens, which attend only to each other.

Image and valid-text outputs therefore never see padding. On CUDA with fp16/bf16 inputs and flash-attn
installed, the official kernel runs on the same ``cu_seqlens``. Everywhere else each segment of each sample
goes through ``F.scaled_dot_product_attention`` on its own: the semantics of the official two-segment block
mask built from the same lengths, without materializing an [L, L] mask (GBs at 100k+ tokens).

Difference to diffusers' ``HunyuanVideoTransformer3DModel`` (official-models.md C.4 item 4): diffusers masks
only the *keys* (padding keys are hidden from every query), so its padding-text *queries* attend to image +
valid text, while here (as officially) they attend to the padding tokens only. Image outputs and valid-text
rows agree; the padding rows of the text stream differ, and they never influence image or valid-text rows.

Every block calls it through its ``attention_kernel`` attribute (the seam, swapped only through
:class:`profilingdit.seams.Seams`): profiling wraps it to observe q and k, sequence parallelism replaces it by a
kernel with the same arguments (the image part of the sequence is then this rank's shard, the text part whole).
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

try:  # Optional GPU kernel; never required (it cannot even be installed without CUDA).
    from flash_attn import flash_attn_varlen_func
except (ImportError, OSError):
    flash_attn_varlen_func = None


@dataclass(frozen=True)
class TextSegments:
    """Layout of the text at the end of a joint [image ; text] sequence.

    Attributes:
        txt_len: number of text tokens at the end of the sequence (padded length, 256 officially).
        valid_lens: per sample, how many of them are real tokens (text is right-padded), as Python ints.
    """

    txt_len: int
    valid_lens: tuple[int, ...]

    @classmethod
    def from_mask(cls, text_mask: torch.Tensor | None, batch_size: int, txt_len: int) -> "TextSegments":
        """Builds the layout from a [B, txt_len] 0/1 text mask (None = every token valid).

        The valid count is the mask's row sum, as in upstream's `get_cu_seqlens`: the mask must be
        right-padded.
        """
        if text_mask is None:
            return cls(txt_len, (txt_len,) * batch_size)
        if tuple(text_mask.shape) != (batch_size, txt_len):
            expected = (batch_size, txt_len)
            raise ValueError(f"text_mask has shape {tuple(text_mask.shape)}; expected {expected}")
        return cls(txt_len, tuple(int(n) for n in text_mask.sum(dim=1).tolist()))

    def first_segment_lens(self, seq_len: int) -> list[int]:
        """Per sample, the length of segment 1 (image + valid text) in a joint sequence of `seq_len`."""
        return [seq_len - self.txt_len + n for n in self.valid_lens]

    def cu_seqlens(self, seq_len: int, device: torch.device) -> torch.Tensor:
        """flash-attn varlen boundaries [2B+1] int32: 0, s_0, L, L+s_1, 2L, ... (segment 2 may be empty)."""
        bounds = [0]
        for b, first in enumerate(self.first_segment_lens(seq_len)):
            bounds += [b * seq_len + first, (b + 1) * seq_len]
        return torch.tensor(bounds, dtype=torch.int32, device=device)


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, segments: TextSegments, backend: str = "auto"
) -> torch.Tensor:
    """Joint attention over [image ; text] with the official two-segment text mask.

    Args:
        q, k, v: [B, L, H, D]; the last `segments.txt_len` tokens are text.
        segments: text layout (see :class:`TextSegments`).
        backend: "auto" (flash varlen when usable, else SDPA), or a name from `attention_backends()`.

    Returns:
        [B, L, H*D] in the dtype of `v`.
    """
    if len(segments.valid_lens) != q.shape[0]:
        raise ValueError(f"segments describe {len(segments.valid_lens)} samples but q has batch {q.shape[0]}")
    if backend == "auto":
        backend = "flash" if _flash_usable(q) else "sdpa"
    check_attention_backend(backend)
    return _KERNELS[backend](q, k, v, segments).flatten(2)  # [B, L, H*D]


def attention_backends() -> tuple[str, ...]:
    """Names accepted by :func:`attention` and `set_attention_backend`."""
    return ("auto", *_KERNELS)


def check_attention_backend(backend: str) -> None:
    """Raises ValueError for a backend name that is not registered."""
    if backend not in attention_backends():
        raise ValueError(f"backend={backend!r} is not supported; allowed: {attention_backends()}")


def _flash_usable(q: torch.Tensor) -> bool:
    return flash_attn_varlen_func is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)


def _flash_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, segments: TextSegments) -> torch.Tensor:
    """The official kernel call: the batch is flattened into one varlen sequence of 2B segments."""
    if flash_attn_varlen_func is None:
        raise ValueError("backend='flash' needs the flash-attn package, which is not installed; use 'sdpa'")
    batch, seq_len, heads, head_dim = q.shape
    cu_seqlens = segments.cu_seqlens(seq_len, q.device)
    out = flash_attn_varlen_func(
        q.reshape(batch * seq_len, heads, head_dim),
        k.reshape(batch * seq_len, heads, head_dim),
        v.reshape(batch * seq_len, heads, head_dim),
        cu_seqlens,
        cu_seqlens,
        seq_len,
        seq_len,
    )  # [B*L, H, D]
    return out.view(batch, seq_len, heads, head_dim)


def _sdpa_segments(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, segments: TextSegments) -> torch.Tensor:
    """SDPA on each segment of each sample separately (no mask needed; empty segments are skipped)."""
    seq_len = q.shape[1]
    samples = []
    for b, first in enumerate(segments.first_segment_lens(seq_len)):
        pieces = [
            _sdpa(q[b : b + 1, start:end], k[b : b + 1, start:end], v[b : b + 1, start:end])
            for start, end in ((0, first), (first, seq_len))
            if end > start
        ]
        samples.append(torch.cat(pieces, dim=1))
    return torch.cat(samples, dim=0)  # [B, L, H, D]


def _sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """SDPA in the [B, L, H, D] layout (scale D^-0.5, as flash-attn's default)."""
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))  # [B, H, L, D]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask).transpose(1, 2)  # [B, L, H, D]


# Joint-attention kernels by name; each maps (q, k, v, segments) to [B, L, H, D].
_KERNELS: dict[str, Callable[..., torch.Tensor]] = {"flash": _flash_varlen, "sdpa": _sdpa_segments}


def refiner_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None
) -> torch.Tensor:
    """The token refiner's SDPA with a [B, 1, L, L] bool mask (text only, never sequence-parallel).

    Args:
        q, k, v: [B, L, H, D].
        attn_mask: bool mask, True = attend; None = full attention.

    Returns:
        [B, L, H*D].
    """
    return _sdpa(q, k, v, attn_mask).flatten(2)


def refiner_mask(text_mask: torch.Tensor) -> torch.Tensor:
    """Official refiner mask: token i sees token j iff both are valid; column 0 is forced True.

    Forcing key 0 keeps the softmax of padding rows (which see no valid key otherwise) from producing NaN.

    Args:
        text_mask: [B, L] 0/1 or bool.

    Returns:
        [B, 1, L, L] bool.
    """
    valid = text_mask.bool()
    mask = valid[:, None, None, :] & valid[:, None, :, None]  # [B, 1, L, L]: valid_i & valid_j
    mask[:, :, :, 0] = True
    return mask
