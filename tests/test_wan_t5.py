"""Wan2.1 umT5 encoder and tokenizer: equivalence with transformers' UMT5EncoderModel, loader, wrapper."""

import logging
import math
import os

import pytest
import torch
from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel

from wan.modules.t5 import (
    UMT5_XXL_CONFIG,
    T5Encoder,
    T5EncoderModel,
    build_t5_encoder,
    infer_t5_config,
    load_t5_state_dict,
    relative_position_bucket,
    umt5_xxl,
)
from wan.modules.tokenizers import HuggingfaceTokenizer, clean_text
from wan.utils.sp_tokenizer import build_sentencepiece_tokenizer
from wan_ckpt_text import (
    TINY_T5,
    TINY_VOCAB,
    UMT5_XXL_SHAPES,
    build_tiny_tokenizer,
    caption_corpus,
    random_t5_state_dict,
    t5_official_shapes,
    write_t5_checkpoint,
)

PROMPTS = ["a tiny red cat jumps over the blue lake at sunset", "a dog", "  a  &amp;amp; green\n\tballoon  "]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return build_tiny_tokenizer(str(tmp_path_factory.mktemp("umt5_tok")))


@pytest.fixture(scope="module")
def t5_files(tmp_path_factory, tokenizer_dir):
    path = str(tmp_path_factory.mktemp("t5") / "models_t5_umt5-xxl-enc-bf16.pth")
    state_dict = write_t5_checkpoint(path, seed=1)
    return path, tokenizer_dir, state_dict


def to_hf_umt5(state_dict: dict) -> dict:
    """Official Wan T5 keys -> transformers UMT5EncoderModel keys (reference B.6)."""
    renames = {
        "norm1.weight": "layer.0.layer_norm.weight",
        "attn.q.weight": "layer.0.SelfAttention.q.weight",
        "attn.k.weight": "layer.0.SelfAttention.k.weight",
        "attn.v.weight": "layer.0.SelfAttention.v.weight",
        "attn.o.weight": "layer.0.SelfAttention.o.weight",
        "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
        "norm2.weight": "layer.1.layer_norm.weight",
        "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",
        "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight",
        "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight",
    }
    out = {
        "shared.weight": state_dict["token_embedding.weight"],
        "encoder.embed_tokens.weight": state_dict["token_embedding.weight"],
        "encoder.final_layer_norm.weight": state_dict["norm.weight"],
    }
    for key, tensor in state_dict.items():
        if key.startswith("blocks."):
            _, index, rest = key.split(".", 2)
            out[f"encoder.block.{index}.{renames[rest]}"] = tensor
    return out


def hf_umt5(config: dict, state_dict: dict) -> UMT5EncoderModel:
    hf_config = UMT5Config(
        vocab_size=config["vocab"], d_model=config["dim"], d_kv=config["dim_attn"] // config["num_heads"],
        d_ff=config["dim_ffn"], num_layers=config["num_layers"], num_heads=config["num_heads"],
        relative_attention_num_buckets=config["num_buckets"],
        relative_attention_max_distance=config["max_dist"],
        feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6, dropout_rate=0.0,
    )
    model = UMT5EncoderModel(hf_config).eval()
    model.load_state_dict(to_hf_umt5(state_dict), strict=True)
    return model


# ------------------------------------------------------------------------------------------------------------
# Tokenizer


def test_tokenizer_folder_round_trips_like_t5(tokenizer_dir):
    import sentencepiece as spm

    assert sorted(os.listdir(tokenizer_dir)) == ["spiece.model", "tokenizer.json", "tokenizer_config.json"]
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    assert type(tokenizer).__name__ == "T5Tokenizer"
    assert len(tokenizer) == TINY_VOCAB
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    assert tokenizer.convert_ids_to_tokens([0, 1, 2]) == ["<pad>", "</s>", "<unk>"]
    processor = spm.SentencePieceProcessor(model_file=os.path.join(tokenizer_dir, "spiece.model"))
    # Same pieces as SentencePiece itself (incl. its NFKC normalizer and unknown characters) plus </s>.
    for text in [*caption_corpus(5, seed=7), "the ﬁsh ＡＢ swims", "Zürich 你好 quickly!"]:
        ids = tokenizer(text).input_ids
        assert ids == processor.encode(text) + [1]
    text = caption_corpus(1, seed=3)[0]
    assert tokenizer.decode(tokenizer(text).input_ids, skip_special_tokens=True) == text


def test_sentencepiece_builder_rejects_impossible_vocab(tmp_path):
    with pytest.raises(ValueError, match="vocab_size=5000"):
        build_sentencepiece_tokenizer(str(tmp_path), caption_corpus(50), 5000)
    with pytest.raises(ValueError, match="corpus"):
        build_sentencepiece_tokenizer(str(tmp_path), [], 100)


def test_official_cleaning():
    assert clean_text("  a  &amp;amp; green\n\tballoon  ", "whitespace") == "a & green balloon"
    assert clean_text("A  Big_Dog, runs!", "lower") == "a big_dog, runs!"
    assert clean_text("A  Big_Dog, runs!", "canonicalize") == "a big dog runs"
    with pytest.raises(ValueError, match="clean='upper'"):
        clean_text("x", "upper")


def test_huggingface_tokenizer_pads_truncates_and_masks(tokenizer_dir):
    tokenizer = HuggingfaceTokenizer(tokenizer_dir, seq_len=12, clean="whitespace")
    ids, mask = tokenizer(PROMPTS, return_mask=True, add_special_tokens=True)
    assert ids.shape == mask.shape == (3, 12) and ids.dtype == torch.int64
    reference = AutoTokenizer.from_pretrained(tokenizer_dir)
    short = reference("a dog").input_ids  # ▁a ▁dog </s>
    assert ids[1].tolist() == short + [0] * (12 - len(short))
    assert mask[1].tolist() == [1] * len(short) + [0] * (12 - len(short))
    assert ids[2].tolist()[: int(mask[2].sum())] == reference("a & green balloon").input_ids
    # The long prompt is truncated to 12 tokens and still ends with </s>.
    assert mask[0].tolist() == [1] * 12 and ids[0, -1].item() == 1
    assert torch.equal(tokenizer(PROMPTS[1], return_mask=False), ids[1:2])


def test_huggingface_tokenizer_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer folder not found.*nowhere"):
        HuggingfaceTokenizer(str(tmp_path / "nowhere"), seq_len=8, clean="whitespace")
    with pytest.raises(ValueError, match="clean='bad'"):
        HuggingfaceTokenizer(str(tmp_path), seq_len=8, clean="bad")


# ------------------------------------------------------------------------------------------------------------
# Encoder numerics


def test_relative_position_bucket_matches_formula_and_transformers():
    rel = torch.arange(-300, 301)
    buckets = relative_position_bucket(rel, num_buckets=32, max_dist=128)
    for r, bucket in zip(rel.tolist(), buckets.tolist()):
        distance = abs(r)
        log_bucket = 8 + int(math.log(distance / 8) / math.log(128 / 8) * 8) if distance >= 8 else None
        within = distance if distance < 8 else min(15, log_bucket)
        assert bucket == within + (16 if r > 0 else 0), r
    attention = UMT5EncoderModel(UMT5Config(num_layers=1, d_model=8, d_kv=4, num_heads=2, d_ff=8)).encoder
    hf_bucket = attention.block[0].layer[0].SelfAttention._relative_position_bucket(rel)
    assert torch.equal(buckets, hf_bucket)


def test_encoder_matches_transformers_umt5():
    # 8 buckets / max distance 16: the log-spaced buckets are used within L = 24.
    config = {**TINY_T5, "num_buckets": 8, "max_dist": 16, "shared_pos": False}
    state_dict = random_t5_state_dict(seed=2, **{k: config[k] for k in TINY_T5})
    ours = T5Encoder(**config).eval()
    ours.load_state_dict(state_dict, strict=True)
    reference = hf_umt5(config, state_dict)
    ids = torch.randint(3, TINY_VOCAB, (3, 24))
    lengths = torch.tensor([24, 17, 5])
    mask = (torch.arange(24)[None] < lengths[:, None]).long()
    with torch.no_grad():
        out = ours(ids, mask)
        expected = reference(input_ids=ids, attention_mask=mask).last_hidden_state
    assert out.shape == (3, 24, TINY_T5["dim"])
    for row, length in enumerate(lengths.tolist()):
        diff = (out[row, :length] - expected[row, :length]).abs().max().item()
        assert diff < 1e-5, (row, diff)
    assert expected[:, :5].abs().max() > 0.5  # outputs are O(1): the tolerance is meaningful


def test_padding_and_masked_tokens_do_not_change_valid_outputs():
    state_dict = random_t5_state_dict(seed=3, **TINY_T5)
    model = build_t5_encoder(state_dict)
    ids = torch.randint(3, TINY_VOCAB, (1, 10))
    with torch.no_grad():
        unpadded = model(ids)
        ones = model(ids, torch.ones(1, 10, dtype=torch.long))
        padded_ids = torch.cat([ids, torch.randint(3, TINY_VOCAB, (1, 6))], dim=1)
        padded = model(padded_ids, torch.tensor([[1] * 10 + [0] * 6]))
        zero_pad = torch.cat([ids, torch.zeros(1, 6, dtype=torch.long)], dim=1)
        other_pad = model(zero_pad, torch.tensor([[1] * 10 + [0] * 6]))
    assert torch.equal(unpadded, ones)
    assert torch.allclose(padded[:, :10], unpadded, atol=1e-5, rtol=0)
    assert torch.allclose(padded[:, :10], other_pad[:, :10], atol=1e-5, rtol=0)
    # Without the mask the padding does change the valid positions (the mask is what isolates them).
    with torch.no_grad():
        unmasked = model(padded_ids)
    assert (unmasked[:, :10] - unpadded).abs().max() > 1e-3


# ------------------------------------------------------------------------------------------------------------
# Sizes and loading


def test_umt5_xxl_preset_has_the_official_keys_and_shapes():
    with torch.device("meta"):
        model = umt5_xxl()
    shapes = {key: tuple(tensor.shape) for key, tensor in model.state_dict().items()}
    assert shapes == t5_official_shapes(**UMT5_XXL_SHAPES)
    assert len(shapes) == 2 + 24 * 10
    assert sum(math.prod(shape) for shape in shapes.values()) == 5_680_910_336
    assert infer_t5_config(model.state_dict()) == UMT5_XXL_CONFIG


def test_size_is_inferred_from_the_written_checkpoint(t5_files):
    path, _, written = t5_files
    state_dict = load_t5_state_dict(path)
    config = infer_t5_config(state_dict)
    assert config == {**TINY_T5, "shared_pos": False, "max_dist": 128}
    model = build_t5_encoder(state_dict)
    assert model.blocks[0].attn.head_dim == TINY_T5["dim_attn"] // TINY_T5["num_heads"]  # 6, not dim / heads
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, written[key]), key


def test_bf16_checkpoint_loads_in_the_requested_dtype(tmp_path):
    path = str(tmp_path / "t5.pth")
    written = write_t5_checkpoint(path, dtype=torch.bfloat16)
    model = build_t5_encoder(load_t5_state_dict(path), dtype=torch.float32)
    weight = model.blocks[1].ffn.fc2.weight
    assert weight.dtype == torch.float32 and torch.equal(weight, written["blocks.1.ffn.fc2.weight"].float())


def test_bf16_encoder_tracks_fp32():
    """The default (official) dtype: bf16 weights, fp32 norm statistics and softmax."""
    state_dict = random_t5_state_dict(seed=4, **TINY_T5)
    ids = torch.randint(3, TINY_VOCAB, (2, 12))
    mask = torch.tensor([[1] * 12, [1] * 7 + [0] * 5])
    with torch.no_grad():
        full = build_t5_encoder(state_dict, dtype=torch.float32)(ids, mask)
        half = build_t5_encoder(state_dict, dtype=torch.bfloat16)(ids, mask)
    assert half.dtype == torch.bfloat16
    valid = mask.bool()
    error = (half.float()[valid] - full[valid]).norm() / full[valid].norm()
    assert error < 2e-2, error


def test_loader_errors(tmp_path):
    missing = str(tmp_path / "absent.pth")
    with pytest.raises(FileNotFoundError, match="T5 checkpoint not found.*absent.pth"):
        load_t5_state_dict(missing)
    state_dict = random_t5_state_dict(**TINY_T5)
    broken = dict(state_dict)
    del broken["blocks.1.ffn.fc1.weight"]
    with pytest.raises(ValueError, match="missing.*'blocks.1.ffn.fc1.weight'"):
        build_t5_encoder(broken)
    extra = {**state_dict, "blocks.0.attn.bias": torch.zeros(3)}
    with pytest.raises(ValueError, match="unexpected.*'blocks.0.attn.bias'"):
        build_t5_encoder(extra)
    wrong = {**state_dict, "blocks.1.norm2.weight": torch.ones(7)}
    with pytest.raises(ValueError, match="'blocks.1.norm2.weight' has shape"):
        build_t5_encoder(wrong)
    with pytest.raises(ValueError, match="'token_embedding.weight'"):
        build_t5_encoder({k: v for k, v in state_dict.items() if k != "token_embedding.weight"})
    torch.save([1, 2], str(tmp_path / "list.pth"))
    with pytest.raises(ValueError, match="not a state dict"):
        load_t5_state_dict(str(tmp_path / "list.pth"))


# ------------------------------------------------------------------------------------------------------------
# Prompt encoder wrapper


def test_t5_encoder_model_returns_true_lengths(t5_files):
    path, tokenizer_dir, state_dict = t5_files
    encoder = T5EncoderModel(text_len=16, dtype=torch.float32, device="cpu", checkpoint_path=path,
                             tokenizer_path=tokenizer_dir)
    outputs = encoder(PROMPTS, torch.device("cpu"))
    reference = AutoTokenizer.from_pretrained(tokenizer_dir)
    expected_lengths = [16, len(reference("a dog").input_ids), len(reference("a & green balloon").input_ids)]
    assert [tuple(out.shape) for out in outputs] == [(n, TINY_T5["dim"]) for n in expected_lengths]
    # Each trimmed output equals the encoder run on that prompt alone, unpadded (ids include </s>).
    model = build_t5_encoder(state_dict)
    with torch.no_grad():
        alone = model(torch.tensor([reference("a dog").input_ids]))[0]
    assert torch.allclose(outputs[1], alone, atol=1e-5, rtol=0)
    single = encoder("a dog", "cpu")
    assert len(single) == 1 and torch.equal(single[0], outputs[1])


def test_t5_encoder_model_warns_when_a_prompt_is_truncated(t5_files, caplog):
    path, tokenizer_dir, _ = t5_files
    encoder = T5EncoderModel(text_len=16, dtype=torch.float32, device="cpu", checkpoint_path=path,
                             tokenizer_path=tokenizer_dir)
    count = len(AutoTokenizer.from_pretrained(tokenizer_dir)(PROMPTS[0]).input_ids)
    assert count > 16  # the long test prompt
    with caplog.at_level(logging.WARNING):
        outputs = encoder(PROMPTS, torch.device("cpu"))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "tokens;" in r.getMessage()]
    assert len(warnings) == 1 and f"prompt has {count} tokens; the text encoder keeps the first text_len=16" in warnings[0]
    assert outputs[0].shape[0] == 16  # still truncated, as the official pipeline does
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        encoder([PROMPTS[0], "a dog"], "cpu")  # the same long prompt again: said once is enough
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_t5_encoder_model_missing_files(t5_files, tmp_path):
    path, tokenizer_dir, _ = t5_files
    with pytest.raises(FileNotFoundError, match="T5 checkpoint not found.*nope.pth"):
        T5EncoderModel(8, torch.float32, "cpu", checkpoint_path=str(tmp_path / "nope.pth"),
                       tokenizer_path=tokenizer_dir)
    with pytest.raises(FileNotFoundError, match="tokenizer folder not found.*umt5-xxl"):
        T5EncoderModel(8, torch.float32, "cpu", checkpoint_path=path,
                       tokenizer_path=str(tmp_path / "google" / "umt5-xxl"))


def shipped_tiny_encoder() -> T5EncoderModel:
    folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "Wan2.1", "Wan2.1-T2V-tiny")
    return T5EncoderModel(text_len=32, dtype=torch.float32, device="cpu",
                          checkpoint_path=os.path.join(folder, "models_t5_umt5-xxl-enc-bf16.pth"),
                          tokenizer_path=os.path.join(folder, "google", "umt5-xxl"))


def test_lower_case_tokenizer_lower_cases_prompts_and_names_what_it_cannot_represent(caplog):
    """The tiny model's tokenizer was built from lower-case captions: an upper-case prompt means the same as its
    lower-case form (it used to become <unk> tokens), and pieces outside its vocabulary are named with a fix."""
    encoder = shipped_tiny_encoder()
    assert not encoder.tokenizer.cased and encoder.tokenizer.clean == "lower"
    with caplog.at_level(logging.WARNING):
        upper = encoder("A SMALL RED CIRCLE MOVES UP", "cpu")[0]
        lower = encoder("a small red circle moves up", "cpu")[0]
    assert torch.equal(upper, lower) and not caplog.records
    with caplog.at_level(logging.WARNING):
        encoder(["a small café circle 猫 moves 😀 up!"] * 2, "cpu")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # once per prompt
    assert ("cannot represent 'café', '猫', '😀', 'up!' of the prompt: the text encoder sees <unk> there. Type "
            "instead: 'café' -> 'cafe', '猫' -> leave it out, '😀' -> leave it out, 'up!' -> 'up'") in warnings[0]


def test_cased_tokenizer_keeps_the_case(tmp_path):
    corpus = [f"A {c} Cat walks in Paris at {t}" for c in ("Red", "blue", "GREEN") for t in ("Noon", "night")] * 4
    folder = build_sentencepiece_tokenizer(str(tmp_path / "tok"), corpus, 28)
    tokenizer = HuggingfaceTokenizer(folder, seq_len=16, clean="whitespace")
    assert tokenizer.cased and tokenizer.unknown_pieces("A Red Cat") == []
    assert tokenizer.unknown_pieces("a red cat!") == ["cat!"]  # '!' is not in the corpus; lower case is
