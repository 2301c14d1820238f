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
import unicodedata

import torch

CLEAN_MODES = ("whitespace", "lower", "canonicalize")


def basic_clean(text: str) -> str:
    """Repairs broken unicode (ftfy), unescapes HTML entities twice and strips the ends."""
    import ftfy  # here, not at the top: with transformers, a second of start-up that a refused command never needs

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
        from transformers import AutoTokenizer  # deferred like ftfy: the command lines check their flags first

        self.tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
        self.vocab_size = self.tokenizer.vocab_size
        # A vocabulary without a single upper-case letter was built from lower-case text (the tiny model's captions):
        # every upper-case letter of a prompt would become <unk>.
        self.cased = any(ch.isupper() for piece in self.tokenizer.get_vocab() for ch in piece)

    def _cleaned(self, sequence: str | list[str]) -> list[str]:
        texts = [sequence] if isinstance(sequence, str) else list(sequence)
        return [clean_text(text, self.clean) for text in texts] if self.clean else texts

    def unknown_pieces(self, text: str) -> list[str]:
        """The words of the cleaned prompt that hold characters the vocabulary cannot represent (the tokenizer turns
        them into its unknown token, which the text encoder reads as noise), in order and without repeats."""
        unk = self.tokenizer.unk_token_id
        cleaned = self._cleaned(text)[0]
        if unk is None or not cleaned:
            return []
        if self.tokenizer.is_fast:
            encoded = self.tokenizer(cleaned, add_special_tokens=False, return_offsets_mapping=True)
            spans = [span for token, span in zip(encoded.input_ids, encoded.offset_mapping) if token == unk]
        else:  # slow tokenizers have no offsets: test the characters one by one
            spans = [(i, i + 1) for i, ch in enumerate(cleaned) if not ch.isspace()
                     and unk in self.tokenizer(ch, add_special_tokens=False).input_ids]
        words = []
        for start, end in spans:
            first = cleaned.rfind(" ", 0, start) + 1
            last = cleaned.find(" ", max(end, start + 1))
            words.append(cleaned[first:None if last < 0 else last])
        return list(dict.fromkeys(word for word in words if word))

    def representable(self, char: str) -> bool:
        """Whether the vocabulary has a piece for ``char`` (it does not become the unknown token)."""
        return self.tokenizer.unk_token_id not in self.tokenizer(char, add_special_tokens=False).input_ids

    def suggestion(self, word: str) -> str:
        """What to type instead of ``word`` (from :meth:`unknown_pieces`): each character the vocabulary lacks is
        replaced by its unaccented form when that one is known (``é`` -> ``e``), else dropped; may be empty."""
        out = []
        for char in word:
            if not self.representable(char):
                folded = ascii_suggestion(char) or ""
                char = folded if folded and all(self.representable(c) for c in folded) else ""
            out.append(char)
        return "".join(out)

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


def ascii_suggestion(word: str) -> str | None:
    """``word`` without accents (``"café"`` -> ``"cafe"``), or None when nothing of it is left or nothing changed."""
    folded = unicodedata.normalize("NFKD", word).encode("ascii", "ignore").decode("ascii")
    return folded if folded and folded != word else None
