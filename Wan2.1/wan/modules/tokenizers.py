"""Tokenizer front-end of the Wan2.1 text encoders: prompt cleaning plus a Hugging Face tokenizer.

References: Wan2.1 wan/modules/tokenizers.py (cleaning rules, padding/truncation settings, returned mask).

The official T5 call cleans every prompt ("whitespace": ``ftfy.fix_text``, ``html.unescape`` twice, strip,
collapse runs of whitespace to one space), then tokenizes with ``padding="max_length"``, ``truncation=True``
and ``add_special_tokens=True`` (T5 appends ``</s>``), and returns the ids together with the attention mask.
"""

from __future__ import annotations

import html
import os
import re
import string

import ftfy
import torch
from transformers import AutoTokenizer

CLEAN_MODES = ("whitespace", "lower", "canonicalize")


def basic_clean(text: str) -> str:
    """Repairs broken unicode (ftfy), unescapes HTML entities twice and strips the ends."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    return text.strip()


def whitespace_clean(text: str) -> str:
    """Collapses every run of whitespace to a single space and strips the ends."""
    return re.sub(r"\s+", " ", text).strip()


def canonicalize(text: str) -> str:
    """Lower-cases, drops ASCII punctuation (``_`` becomes a space) and collapses whitespace."""
    text = text.replace("_", " ")
    text = text.translate(str.maketrans("", "", string.punctuation))
    return whitespace_clean(text.lower())


def clean_text(text: str, mode: str) -> str:
    """Applies one of the official cleaning modes (``CLEAN_MODES``) to a prompt."""
    if mode == "whitespace":
        return whitespace_clean(basic_clean(text))
    if mode == "lower":
        return whitespace_clean(basic_clean(text)).lower()
    if mode == "canonicalize":
        return canonicalize(basic_clean(text))
    raise ValueError(f"clean={mode!r} is not a cleaning mode; allowed: None or one of {CLEAN_MODES}")


class HuggingfaceTokenizer:
    """Cleans prompts and tokenizes them to a fixed length with a local Hugging Face tokenizer folder.

    Args:
        name_or_path: a local tokenizer folder (for Wan2.1: ``<ckpt_dir>/google/umt5-xxl``). No hub access.
        seq_len: pad and truncate every prompt to this many tokens; ``None`` keeps the natural lengths.
        clean: ``None`` or one of ``CLEAN_MODES`` (the T5 encoder uses ``"whitespace"``).
        **kwargs: passed to ``AutoTokenizer.from_pretrained``.
    """

    def __init__(self, name_or_path: str, seq_len: int | None = None, clean: str | None = None, **kwargs):
        if clean is not None and clean not in CLEAN_MODES:
            raise ValueError(f"clean={clean!r} is not a cleaning mode; allowed: None or one of {CLEAN_MODES}")
        if seq_len is not None and seq_len < 1:
            raise ValueError(f"seq_len={seq_len} must be a positive number of tokens (or None)")
        if not os.path.isdir(name_or_path):
            raise FileNotFoundError(
                f"tokenizer folder not found: {name_or_path!r} (expected a local folder with "
                "tokenizer.json / spiece.model and tokenizer_config.json, e.g. <ckpt_dir>/google/umt5-xxl)"
            )
        self.name = name_or_path
        self.seq_len = seq_len
        self.clean = clean
        kwargs.setdefault("local_files_only", True)
        self.tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
        self.vocab_size = self.tokenizer.vocab_size

    def _cleaned(self, sequence: str | list[str]) -> list[str]:
        texts = [sequence] if isinstance(sequence, str) else list(sequence)
        return [clean_text(text, self.clean) for text in texts] if self.clean else texts

    def token_counts(self, sequence: str | list[str]) -> list[int]:
        """Tokens of each cleaned prompt before padding/truncation, ``</s>`` included."""
        return [len(ids) for ids in self.tokenizer(self._cleaned(sequence), add_special_tokens=True).input_ids]

    def __call__(self, sequence: str | list[str], return_mask: bool = True, **kwargs):
        """Tokenizes one prompt or a list of prompts.

        Args:
            sequence: a prompt or a list of prompts.
            return_mask: also return the attention mask (1 = real token, 0 = padding).
            **kwargs: extra tokenizer arguments (``add_special_tokens=True``); they override the defaults.

        Returns:
            ``ids`` [B, L] int64, and ``mask`` [B, L] int64 when ``return_mask`` is set.
        """
        options = {"return_tensors": "pt"}
        if self.seq_len is not None:
            options.update(padding="max_length", truncation=True, max_length=self.seq_len)
        options.update(kwargs)
        encoded = self.tokenizer(self._cleaned(sequence), **options)
        ids = torch.as_tensor(encoded.input_ids)
        if return_mask:
            return ids, torch.as_tensor(encoded.attention_mask)
        return ids
