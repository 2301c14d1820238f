"""umT5 text encoder of Wan2.1 (encoder only) with the official state-dict keys, and its prompt encoder.

References: Wan2.1 wan/modules/t5.py (official numerics: T5 RMSNorm, unscaled attention with a per-layer
relative position bias, min-filled masks, fp32 softmax, gated tanh-GELU feed-forward, fp16 clamping).

Checkpoint: ``models_t5_umt5-xxl-enc-bf16.pth``, a plain state dict (bf16). Keys::

    token_embedding.weight                     [vocab, dim]
    blocks.{i}.norm1.weight / norm2.weight     [dim]
    blocks.{i}.attn.{q,k,v}.weight             [dim_attn, dim]      (dim_attn = num_heads * head_dim)
    blocks.{i}.attn.o.weight                   [dim, dim_attn]
    blocks.{i}.pos_embedding.embedding.weight  [num_buckets, num_heads]
    blocks.{i}.ffn.gate.0.weight / fc1.weight  [dim_ffn, dim]       (gate = GELU branch, fc1 = linear branch)
    blocks.{i}.ffn.fc2.weight                  [dim, dim_ffn]
    norm.weight                                [dim]

The architecture is read from these shapes (``infer_t5_config``), so the official umT5-XXL file and a locally
trained tiny encoder load through the same code.
"""

from __future__ import annotations

import logging
import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from .tokenizers import HuggingfaceTokenizer

__all__ = [
    "UMT5_XXL_CONFIG", "T5Encoder", "T5EncoderModel", "umt5_xxl", "infer_t5_config", "load_t5_state_dict",
    "build_t5_encoder", "relative_position_bucket",
]

# Size preset of the official encoder (Wan2.1 wan/modules/t5.py: umt5_xxl); max_dist is fixed at 128 upstream.
UMT5_XXL_CONFIG = dict(
    vocab=256384, dim=4096, dim_attn=4096, dim_ffn=10240, num_heads=64, num_layers=24, num_buckets=32,
    shared_pos=False, max_dist=128,
)


def fp16_clamp(x: torch.Tensor) -> torch.Tensor:
    """Keeps fp16 activations finite (the official encoder clamps them after every residual add)."""
    if x.dtype == torch.float16 and torch.isinf(x).any():
        limit = torch.finfo(x.dtype).max - 1000
        x = torch.clamp(x, min=-limit, max=limit)
    return x


class TanhGELU(nn.Module):
    """GELU with the tanh approximation, written out as in T5 (``gelu_new``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class T5LayerNorm(nn.Module):
    """T5 RMSNorm: no mean subtraction, no bias; statistics in fp32, cast back to a half-precision weight."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * torch.rsqrt(x.float().pow(2).mean(dim=-1, keepdim=True) + self.eps)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            x = x.type_as(self.weight)
        return self.weight * x


def relative_position_bucket(rel_pos: torch.Tensor, num_buckets: int, max_dist: int) -> torch.Tensor:
    """Bidirectional T5 bucketing of ``rel_pos = key_pos - query_pos``.

    Half the buckets are for keys after the query (``rel_pos > 0``). Within a half, distances below
    ``num_buckets / 4`` get their own bucket and larger ones share log-spaced buckets up to ``max_dist``.
    """
    half = num_buckets // 2
    buckets = (rel_pos > 0).long() * half
    distance = rel_pos.abs()
    max_exact = half // 2
    log_ratio = torch.log(distance.float() / max_exact) / math.log(max_dist / max_exact)
    large = max_exact + (log_ratio * (half - max_exact)).long()
    large = torch.clamp(large, max=half - 1)
    return buckets + torch.where(distance < max_exact, distance, large)


class T5RelativeEmbedding(nn.Module):
    """Learned relative position bias, one value per (bucket, head)."""

    def __init__(self, num_buckets: int, num_heads: int, max_dist: int = 128):
        super().__init__()
        self.num_buckets = num_buckets
        self.max_dist = max_dist
        self.embedding = nn.Embedding(num_buckets, num_heads)

    def forward(self, len_q: int, len_k: int) -> torch.Tensor:
        """Returns the bias [1, heads, len_q, len_k]."""
        device = self.embedding.weight.device
        rel_pos = torch.arange(len_k, device=device)[None, :] - torch.arange(len_q, device=device)[:, None]
        buckets = relative_position_bucket(rel_pos, self.num_buckets, self.max_dist)  # [Lq, Lk]
        return self.embedding(buckets).permute(2, 0, 1).unsqueeze(0)  # [1, N, Lq, Lk]


class T5Attention(nn.Module):
    """Multi-head self-attention without query scaling; relative bias and key mask are added to the logits."""

    def __init__(self, dim: int, dim_attn: int, num_heads: int):
        super().__init__()
        if dim_attn % num_heads != 0:
            raise ValueError(f"dim_attn={dim_attn} must be divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim_attn // num_heads
        self.q = nn.Linear(dim, dim_attn, bias=False)
        self.k = nn.Linear(dim, dim_attn, bias=False)
        self.v = nn.Linear(dim, dim_attn, bias=False)
        self.o = nn.Linear(dim_attn, dim, bias=False)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.size(0), x.size(1), self.num_heads, self.head_dim).transpose(1, 2)  # [B, N, L, D]

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None,
                pos_bias: torch.Tensor | None) -> torch.Tensor:
        """x [B, L, C]; mask [B, L] (1 = token, 0 = padding) or [B, L, L]; pos_bias [1, N, L, L]."""
        b, length = x.size(0), x.size(1)
        q, k, v = self._heads(self.q(x)), self._heads(self.k(x)), self._heads(self.v(x))  # [B, N, L, D]
        bias = x.new_zeros(b, self.num_heads, length, length)
        if pos_bias is not None:
            bias = bias + pos_bias
        if mask is not None:
            mask = mask.view(b, 1, 1, -1) if mask.ndim == 2 else mask.unsqueeze(1)
            bias = bias.masked_fill(mask == 0, torch.finfo(x.dtype).min)
        logits = torch.matmul(q, k.transpose(-1, -2)) + bias  # [B, N, L, L]
        probs = F.softmax(logits.float(), dim=-1).type_as(logits)
        out = torch.matmul(probs, v).transpose(1, 2).reshape(b, length, -1)  # [B, L, N*D]
        return self.o(out)


class T5FeedForward(nn.Module):
    """Gated feed-forward: ``fc2(fc1(x) * gelu_tanh(gate(x)))``."""

    def __init__(self, dim: int, dim_ffn: int):
        super().__init__()
        self.gate = nn.Sequential(nn.Linear(dim, dim_ffn, bias=False), TanhGELU())
        self.fc1 = nn.Linear(dim, dim_ffn, bias=False)
        self.fc2 = nn.Linear(dim_ffn, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x) * self.gate(x))


class T5SelfAttentionBlock(nn.Module):
    """Pre-norm encoder block; owns its relative position bias unless the encoder shares one."""

    def __init__(self, dim, dim_attn, dim_ffn, num_heads, num_buckets, shared_pos=False, max_dist=128):
        super().__init__()
        self.norm1 = T5LayerNorm(dim)
        self.attn = T5Attention(dim, dim_attn, num_heads)
        self.norm2 = T5LayerNorm(dim)
        self.ffn = T5FeedForward(dim, dim_ffn)
        self.pos_embedding = None if shared_pos else T5RelativeEmbedding(num_buckets, num_heads, max_dist)

    def forward(self, x, mask=None, pos_bias=None):
        if self.pos_embedding is not None:
            pos_bias = self.pos_embedding(x.size(1), x.size(1))
        x = fp16_clamp(x + self.attn(self.norm1(x), mask, pos_bias))
        return fp16_clamp(x + self.ffn(self.norm2(x)))


class T5Encoder(nn.Module):
    """umT5 encoder stack: token embedding, ``num_layers`` blocks, final RMSNorm (no dropout: inference)."""

    def __init__(self, vocab, dim, dim_attn, dim_ffn, num_heads, num_layers, num_buckets, shared_pos=False,
                 max_dist=128):
        super().__init__()
        self.dim = dim
        self.token_embedding = nn.Embedding(vocab, dim)
        self.pos_embedding = T5RelativeEmbedding(num_buckets, num_heads, max_dist) if shared_pos else None
        self.blocks = nn.ModuleList([
            T5SelfAttentionBlock(dim, dim_attn, dim_ffn, num_heads, num_buckets, shared_pos, max_dist)
            for _ in range(num_layers)
        ])
        self.norm = T5LayerNorm(dim)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """ids [B, L] int64; mask [B, L] (1 = token, 0 = padding). Returns the hidden states [B, L, dim]."""
        x = self.token_embedding(ids)  # [B, L, C]
        length = x.size(1)
        pos_bias = self.pos_embedding(length, length) if self.pos_embedding is not None else None
        for block in self.blocks:
            x = block(x, mask, pos_bias)
        return self.norm(x)


def umt5_xxl(**overrides) -> T5Encoder:
    """The official umT5-XXL encoder (``UMT5_XXL_CONFIG``), random init; build it on ``meta`` to load."""
    return T5Encoder(**{**UMT5_XXL_CONFIG, **overrides})


# ------------------------------------------------------------------------------------------------------------
# Loading


def load_t5_state_dict(checkpoint_path: str) -> dict[str, torch.Tensor]:
    """Reads a T5 ``.pth`` (a plain state dict of tensors) onto the CPU."""
    if not checkpoint_path or not os.path.isfile(checkpoint_path):
        raise FileNotFoundError(
            f"T5 checkpoint not found: {checkpoint_path!r} (expected the plain state-dict file "
            "models_t5_umt5-xxl-enc-bf16.pth inside the checkpoint folder)"
        )
    state_dict = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    if not isinstance(state_dict, dict):
        raise ValueError(
            f"T5 checkpoint {checkpoint_path!r} holds a {type(state_dict).__name__}, not a state dict"
        )
    return state_dict


def _require(state_dict: dict, key: str) -> torch.Tensor:
    if key not in state_dict:
        raise ValueError(f"T5 state dict is missing the key {key!r}, needed to infer the encoder size")
    return state_dict[key]


def infer_t5_config(state_dict: dict[str, torch.Tensor]) -> dict:
    """Reads the encoder size from the tensor shapes (see the module docstring for the key layout).

    Returns:
        keyword arguments of ``T5Encoder`` (``max_dist`` is not stored in the file; it is 128 as upstream).
    """
    vocab, dim = _require(state_dict, "token_embedding.weight").shape
    num_layers = len({key.split(".")[1] for key in state_dict if key.startswith("blocks.")})
    if num_layers == 0:
        raise ValueError("T5 state dict has no 'blocks.*' keys")
    shared_pos = "blocks.0.pos_embedding.embedding.weight" not in state_dict
    pos_key = "pos_embedding.embedding.weight" if shared_pos else "blocks.0.pos_embedding.embedding.weight"
    num_buckets, num_heads = _require(state_dict, pos_key).shape
    dim_attn = _require(state_dict, "blocks.0.attn.q.weight").shape[0]
    dim_ffn = _require(state_dict, "blocks.0.ffn.fc1.weight").shape[0]
    return dict(vocab=vocab, dim=dim, dim_attn=dim_attn, dim_ffn=dim_ffn, num_heads=num_heads,
                num_layers=num_layers, num_buckets=num_buckets, shared_pos=shared_pos, max_dist=128)


def check_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor], what: str) -> None:
    """Raises ValueError naming the first missing, unexpected or wrongly shaped key."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in state_dict]
    if missing:
        raise ValueError(f"{what} state dict is missing {len(missing)} key(s), first {missing[0]!r}")
    unexpected = [key for key in state_dict if key not in expected]
    if unexpected:
        raise ValueError(
            f"{what} state dict has {len(unexpected)} unexpected key(s), first {unexpected[0]!r}"
        )
    for key, tensor in expected.items():
        if tuple(state_dict[key].shape) != tuple(tensor.shape):
            raise ValueError(
                f"{what} state dict key {key!r} has shape {tuple(state_dict[key].shape)}, "
                f"expected {tuple(tensor.shape)} for the inferred architecture"
            )


def build_t5_encoder(state_dict: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32,
                     device: torch.device | str = "cpu") -> T5Encoder:
    """Builds the encoder that fits ``state_dict`` (size inferred from its shapes) and loads it strictly."""
    with torch.device("meta"):
        model = T5Encoder(**infer_t5_config(state_dict))
    check_state_dict(model, state_dict, "T5")
    model.load_state_dict(state_dict, assign=True)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


# ------------------------------------------------------------------------------------------------------------
# Prompt encoder (Wan2.1 T5EncoderModel)


class T5EncoderModel:
    """Cleans, tokenizes and encodes prompts; returns each prompt's hidden states trimmed to its true length.

    Args:
        text_len: tokens per prompt after padding/truncation (512 in Wan2.1).
        dtype: parameter dtype of the encoder (the official file is bf16; fp32 on CPU for tests).
        device: where the encoder runs (ignored when ``shard_fn`` is given).
        checkpoint_path: the ``.pth`` state dict (``models_t5_umt5-xxl-enc-bf16.pth``).
        tokenizer_path: the tokenizer folder (``google/umt5-xxl``).
        shard_fn: optional ``shard_fn(model, sync_module_states=False)`` (FSDP) that places the model.
    """

    def __init__(self, text_len: int, dtype: torch.dtype = torch.bfloat16,
                 device: torch.device | str = torch.device("cpu"), checkpoint_path: str | None = None,
                 tokenizer_path: str | None = None, shard_fn=None):
        self.text_len = text_len
        self._warned: set[str] = set()
        self._warned_unknown: set[str] = set()
        self.dtype = dtype
        self.device = torch.device(device)
        self.tokenizer = HuggingfaceTokenizer(tokenizer_path or "", seq_len=text_len, clean="whitespace")
        if not self.tokenizer.cased:
            # A tokenizer built from lower-case text only (the tiny model's) maps every upper-case letter to <unk>:
            # "A LARGE YELLOW CIRCLE" would reach the encoder as four unknown tokens. Lower-casing (the official
            # "lower" cleaning mode) makes such a prompt mean what it says; umT5's cased vocabulary is unaffected.
            self.tokenizer.clean = "lower"
            logging.info("T5 tokenizer %s has no upper-case pieces: prompts are lower-cased", tokenizer_path)
        self.model = build_t5_encoder(load_t5_state_dict(checkpoint_path), dtype=dtype, device="cpu")
        config = infer_t5_config(self.model.state_dict())
        if config == UMT5_XXL_CONFIG:
            logging.info("T5: loaded the umt5_xxl encoder from %s", checkpoint_path)
        else:
            logging.info("T5: loaded an encoder of inferred size %s from %s", config, checkpoint_path)
        if shard_fn is not None:
            self.model = shard_fn(self.model, sync_module_states=False)
        else:
            self.model.to(self.device)

    def __call__(self, texts: str | list[str], device: torch.device | str) -> list[torch.Tensor]:
        """Encodes prompts.

        Args:
            texts: prompts (cleaned with the "whitespace" rules before tokenization).
            device: where the token ids go (the encoder's device).

        Returns:
            one tensor [true_len, dim] per prompt; ``true_len`` counts the tokens including ``</s>``.
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        self._warn_if_unknown(texts)
        self._warn_if_truncated(texts)
        ids, mask = self.tokenizer(texts, return_mask=True, add_special_tokens=True)
        ids, mask = ids.to(device), mask.to(device)
        seq_lens = mask.gt(0).sum(dim=1).long()
        context = self.model(ids, mask)  # [B, text_len, dim]
        return [out[:length] for out, length in zip(context, seq_lens)]

    def _warn_if_unknown(self, texts: list[str]) -> None:
        """Words with characters the tokenizer cannot represent become <unk> (the official pipeline does this
        silently, and the tiny model then draws something else than asked): name them and what to type instead."""
        for text in texts:
            words = [] if text in self._warned_unknown else self.tokenizer.unknown_pieces(text)
            self._warned_unknown.add(text)  # once per prompt, like the truncation warning
            if words:
                suggestions = [self.tokenizer.suggestion(w) for w in words]
                instead = [f"{w!r} -> {repr(s) if s else 'leave it out'}" for w, s in zip(words, suggestions)]
                logging.warning("the T5 tokenizer (%d pieces) cannot represent %s of the prompt: the text encoder sees "
                                "<unk> there. Type instead: %s", self.tokenizer.vocab_size,
                                ", ".join(map(repr, words)), ", ".join(instead))

    def _warn_if_truncated(self, texts: list[str]) -> None:
        """Prompts longer than ``text_len`` are cut, as in the official pipeline; say so instead of doing it
        silently (the end of a prompt, e.g. its background, would otherwise vanish without a trace)."""
        for text, count in zip(texts, self.tokenizer.token_counts(texts)):
            if count > self.text_len and text not in self._warned:
                self._warned.add(text)  # once per prompt: a pipeline encodes the same prompt many times
                logging.warning("prompt has %d tokens; the text encoder keeps the first text_len=%d and ignores the "
                                "rest: %r", count, self.text_len, text)
