"""Test helper: tiny HunyuanVideo text-encoder folders in the official layout, built offline.

`write_text_encoders(model_base)` writes
  model_base/text_encoder/    tiny random Llama decoder (`save_pretrained`; `AutoModel` loads it) + tokenizer
  model_base/text_encoder_2/  tiny random `CLIPTextModel` + `CLIPTokenizer`

Both tokenizers are trained at test time with the `tokenizers` library on a small corpus (no network):
* LLM: byte-level BPE with the Llama-3 pre-tokenizer regex, BOS added in front, and the special tokens of the
  chat template (`<|start_header_id|>`, `<|end_header_id|>`, `<|eot_id|>`) kept whole. It is trained to
  saturation on a corpus that holds both templates, so every pre-tokenizer piece of a template is one token,
  as in the official Llama-3 tokenizer. Consequence: the template prefixes count exactly the official
  crop_start values (95 video, 36 image; checked in tests/test_hy_text_encoder.py), so the tests use the
  official `PROMPT_TEMPLATE` unchanged. (crop_start is a property of the tokenizer: these values would not
  hold for a tokenizer that splits template words.) Prompt words outside the corpus fall back to smaller
  pieces (byte level).
* CLIP: byte-level BPE with the "</w>" end-of-word suffix (the CLIP vocabulary format), wrapped in
  `CLIPTokenizer` with `<|startoftext|>` / `<|endoftext|>` (eos = pad, as openai/clip-vit-large-patch14).
"""

import json
import os

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaModel,
    PreTrainedTokenizerFast,
)

from hyvideo.constants import PROMPT_TEMPLATE

LLM_BOS, LLM_EOS, LLM_PAD = "<|begin_of_text|>", "<|end_of_text|>", "<|pad|>"
LLM_SPECIAL_TOKENS = [LLM_BOS, LLM_EOS, LLM_PAD, "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
CLIP_BOS, CLIP_EOS = "<|startoftext|>", "<|endoftext|>"
# Pre-tokenizer regex of the Llama-3 tokenizer: keeps runs of newlines together, so "\n\n" in front of the
# prompt is one piece whether or not a prompt follows (which makes `template_crop_start` exact).
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PROMPTS = [
    "A cat walks on the grass, realistic style.",
    "A dog runs along a sunny beach at sunset, camera tracking shot.",
    "Two people dance in the rain under a red umbrella.",
    "An astronaut rides a horse on the moon.",
]


def _corpus() -> list[str]:
    templates = [spec["template"].format(prompt) for spec in PROMPT_TEMPLATE.values() for prompt in PROMPTS]
    return templates + PROMPTS


def build_llm_tokenizer(vocab_size: int = 2000) -> PreTrainedTokenizerFast:
    """A Llama-3-like byte-level BPE tokenizer that adds BOS, trained to saturation on templates and prompts.

    `vocab_size` is an upper bound: training stops once every corpus piece is a single token (about 540).
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=LLM_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(), trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{LLM_BOS} $A",
        pair=f"{LLM_BOS} $A {LLM_BOS} $B",
        special_tokens=[(LLM_BOS, tokenizer.token_to_id(LLM_BOS))],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=LLM_BOS, eos_token=LLM_EOS, pad_token=LLM_PAD
    )


def build_clip_tokenizer(num_merges: int = 120) -> CLIPTokenizer:
    """A CLIP tokenizer (byte-level BPE, "</w>" suffix) whose merges are learned from the tiny corpus."""
    trainer_model = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    trainer_model.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    trainer = trainers.BpeTrainer(
        vocab_size=2 * len(alphabet) + num_merges,
        initial_alphabet=alphabet,
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    trainer_model.train_from_iterator([text.lower() for text in _corpus()], trainer=trainer)
    merges = _bpe_merges(trainer_model)
    # CLIP's vocabulary order: bytes, bytes + "</w>", merged tokens, then the two special tokens last.
    vocab_list = alphabet + [char + "</w>" for char in alphabet]
    vocab_list += [left + right for left, right in merges if left + right not in vocab_list]
    vocab = {token: index for index, token in enumerate(vocab_list)}
    vocab[CLIP_BOS], vocab[CLIP_EOS] = len(vocab), len(vocab) + 1
    return CLIPTokenizer(vocab=vocab, merges=merges)


def _bpe_merges(tokenizer: Tokenizer) -> list[tuple[str, str]]:
    merges = json.loads(tokenizer.to_str())["model"]["merges"]
    return [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]


def write_llm_folder(folder: str, hidden_size: int = 32, num_layers: int = 4, causal_lm: bool = False) -> str:
    """Write a tiny random Llama decoder and its tokenizer to `folder` (as `text_encoder/`).

    Args:
        folder: output folder (created).
        hidden_size: model width (the official one is 4096).
        num_layers: decoder layers (the official one has 32).
        causal_lm: save a `LlamaForCausalLM` (keys `model.*` + `lm_head`) instead of a bare `LlamaModel`;
            `AutoModel` loads both.

    Returns:
        `folder`.
    """
    tokenizer = build_llm_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = (LlamaForCausalLM if causal_lm else LlamaModel)(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_clip_folder(folder: str, hidden_size: int = 24, num_layers: int = 2) -> str:
    """Write a tiny random `CLIPTextModel` and its `CLIPTokenizer` to `folder` (as `text_encoder_2/`).

    Returns:
        `folder`.
    """
    tokenizer = build_clip_tokenizer()
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=hidden_size,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    CLIPTextModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_text_encoders(
    model_base: str, llm_hidden_size: int = 32, clip_hidden_size: int = 24
) -> tuple[str, str]:
    """Write `model_base/text_encoder` and `model_base/text_encoder_2`.

    Returns:
        (LLM folder, CLIP folder).
    """
    llm = write_llm_folder(os.path.join(model_base, "text_encoder"), hidden_size=llm_hidden_size)
    clip = write_clip_folder(os.path.join(model_base, "text_encoder_2"), hidden_size=clip_hidden_size)
    return llm, clip
