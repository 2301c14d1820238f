"""Builds a small T5-style SentencePiece tokenizer folder (layout of ``google/umt5-xxl``) from captions.

Used to make the tokenizer that ships with a locally trained tiny model, and by the tests. The folder:

    out_dir/
      spiece.model           the SentencePiece unigram model (pad 0, ``</s>`` 1, ``<unk>`` 2, no ``<s>``)
      tokenizer.json         the same vocabulary, scores and NFKC normalizer for the ``tokenizers`` library
      tokenizer_config.json  ``tokenizer_class: T5Tokenizer``, ``extra_ids: 0``, the special tokens

``transformers.AutoTokenizer.from_pretrained(out_dir)`` loads it as a ``T5Tokenizer`` that appends ``</s>``
and pads with id 0, like the umT5 tokenizer. Thanks to ``tokenizer.json``, loading needs neither ``protobuf``
nor ``sentencepiece``. Building needs ``sentencepiece`` (training); the model's normalizer table is read with
a small protobuf wire-format reader, so the ``protobuf`` package is not required either.
"""

from __future__ import annotations

import io
import os

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"

# ModelProto field numbers (sentencepiece_model.proto): normalizer_spec = 3, its precompiled_charsmap = 2.
_NORMALIZER_SPEC_FIELD = 3
_PRECOMPILED_CHARSMAP_FIELD = 2


def build_sentencepiece_tokenizer(out_dir: str, corpus: list[str], vocab_size: int) -> str:
    """Trains a SentencePiece unigram model on ``corpus`` and writes a T5-style tokenizer folder.

    Args:
        out_dir: folder to write (created if missing; existing tokenizer files are overwritten).
        corpus: training sentences (e.g. captions); the vocabulary the corpus supports bounds ``vocab_size``.
        vocab_size: number of pieces, including ``<pad>``, ``</s>`` and ``<unk>``.

    Returns:
        ``out_dir``.
    """
    import sentencepiece as spm

    if not corpus or not all(isinstance(line, str) for line in corpus):
        raise ValueError("corpus must be a non-empty list of strings")
    if vocab_size < 4:
        raise ValueError(f"vocab_size={vocab_size} is too small; it needs <pad>, </s>, <unk> and pieces")
    proto = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(corpus), model_writer=proto, vocab_size=vocab_size, model_type="unigram",
            pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece=PAD, eos_piece=EOS, unk_piece=UNK,
            character_coverage=1.0, num_threads=1, minloglevel=2,
        )
    except RuntimeError as error:  # e.g. "Vocabulary size too high (500). Please set it to a value <= 219."
        raise ValueError(f"vocab_size={vocab_size} cannot be trained on this corpus: {error}") from error
    proto = proto.getvalue()
    processor = spm.SentencePieceProcessor(model_proto=proto)
    vocab = [(processor.id_to_piece(i), processor.get_score(i)) for i in range(processor.get_piece_size())]
    _save_t5_tokenizer(out_dir, vocab, _precompiled_charsmap(proto))
    with open(os.path.join(out_dir, "spiece.model"), "wb") as handle:
        handle.write(proto)
    return out_dir


def _save_t5_tokenizer(out_dir: str, vocab: list[tuple[str, float]], charsmap: bytes | None) -> None:
    """Writes ``tokenizer.json`` and ``tokenizer_config.json`` of a T5 tokenizer with this vocabulary."""
    from transformers import T5Tokenizer

    tokenizer = T5Tokenizer(
        vocab=vocab, _spm_precompiled_charsmap=charsmap, extra_ids=0,
        eos_token=EOS, unk_token=UNK, pad_token=PAD, model_max_length=512,
    )
    os.makedirs(out_dir, exist_ok=True)
    tokenizer.save_pretrained(out_dir)


def _precompiled_charsmap(model_proto: bytes) -> bytes | None:
    """Reads ``normalizer_spec.precompiled_charsmap`` (the NFKC table) from a serialized model."""
    normalizer = _last_field(model_proto, _NORMALIZER_SPEC_FIELD)
    if normalizer is None:
        return None
    return _last_field(normalizer, _PRECOMPILED_CHARSMAP_FIELD) or None


def _last_field(message: bytes, number: int) -> bytes | None:
    """Payload of the last length-delimited field ``number`` of a protobuf message (``None`` if absent)."""
    found, pos = None, 0
    while pos < len(message):
        key, pos = _read_varint(message, pos)
        field, wire_type = key >> 3, key & 7
        if wire_type == 0:
            _, pos = _read_varint(message, pos)
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        elif wire_type == 2:
            length, pos = _read_varint(message, pos)
            if field == number:
                found = message[pos:pos + length]
            pos += length
        else:
            raise ValueError(f"unsupported protobuf wire type {wire_type} in a SentencePiece model")
    return found


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """Decodes one base-128 varint at ``pos``; returns (value, next position)."""
    value, shift = 0, 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos
