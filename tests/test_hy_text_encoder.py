"""HunyuanVideo text encoders on tiny local checkpoints: templates, crop, skip layer, final norm, pooling."""

import copy
import logging
import os
import shutil

import pytest
import torch
from accelerate import cpu_offload
from transformers import CLIPTextModel, LlamaForCausalLM, LlamaModel

import hy_ckpt_text
from hyvideo import text_encoder as text_encoder_module
from hyvideo.constants import NEGATIVE_PROMPT, PRECISION_TO_TYPE, PROMPT_TEMPLATE
from hyvideo.text_encoder import TextEncoder, llm_max_length, template_crop_start

VIDEO = PROMPT_TEMPLATE["dit-llm-encode-video"]
IMAGE = PROMPT_TEMPLATE["dit-llm-encode"]
TEXT_LEN = 256
MAX_LENGTH = TEXT_LEN + VIDEO["crop_start"]  # 351, as the official CLI
PROMPTS = ["A cat walks on the grass, realistic style.", "An astronaut rides a horse on the moon."]
LLM_LAYERS = 4


@pytest.fixture(scope="module")
def model_base(tmp_path_factory):
    base = tmp_path_factory.mktemp("ckpts")
    hy_ckpt_text.write_text_encoders(str(base))
    return base


def make_llm(model_base, **overrides) -> TextEncoder:
    kwargs = dict(
        text_encoder_type="llm",
        max_length=MAX_LENGTH,
        text_encoder_precision="fp32",
        text_encoder_path=str(model_base / "text_encoder"),
        prompt_template=IMAGE,
        prompt_template_video=VIDEO,
        hidden_state_skip_layer=2,
    )
    kwargs.update(overrides)
    return TextEncoder(**kwargs)


def make_clip(model_base) -> TextEncoder:
    return TextEncoder("clipL", 77, "fp32", text_encoder_path=str(model_base / "text_encoder_2"))


def reference_hidden_states(folder, tokens, model_class=LlamaModel):
    """All hidden states of the checkpoint, computed with transformers directly."""
    model = model_class.from_pretrained(folder, local_files_only=True).eval()
    if model_class is LlamaForCausalLM:
        model = model.model
    with torch.no_grad():
        out = model(tokens["input_ids"], attention_mask=tokens["attention_mask"], output_hidden_states=True)
    return model, out.hidden_states


def test_official_constants():
    template = VIDEO["template"]
    assert template.count("{}") == 1 and template.startswith("<|start_header_id|>system<|end_header_id|>\n\n")
    # No space before "2.", "3.", ...
    assert "of the video.2. The color" in template and "objects.3. Actions" in template
    assert template.endswith("<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>")
    assert (VIDEO["crop_start"], IMAGE["crop_start"]) == (95, 36)
    assert llm_max_length(TEXT_LEN, VIDEO, IMAGE) == 351 and llm_max_length(TEXT_LEN, None, IMAGE) == 292
    assert NEGATIVE_PROMPT.startswith("Aerial view, aerial view, overexposed")
    assert NEGATIVE_PROMPT.endswith("bad limbs, distortion")
    assert PRECISION_TO_TYPE == {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def test_tiny_tokenizer_reproduces_the_official_crop_start():
    # Every template piece is one token in both the official and the tiny tokenizer (see hy_ckpt_text), so the
    # official crop values apply unchanged; a template text that differs by one space would fail here.
    tokenizer = hy_ckpt_text.build_llm_tokenizer()
    assert template_crop_start(tokenizer, VIDEO["template"]) == 95
    assert template_crop_start(tokenizer, IMAGE["template"]) == 36


@pytest.mark.parametrize("data_type, crop", [("video", 95), ("image", 36)])
def test_llm_tokens_put_the_prompt_right_after_the_crop(model_base, data_type, crop):
    encoder = make_llm(model_base)
    tokens = encoder.text2tokens(PROMPTS, data_type=data_type)
    assert tokens["input_ids"].shape == (2, MAX_LENGTH)
    assert torch.all(tokens["input_ids"][:, 0] == encoder.tokenizer.bos_token_id)
    eot = encoder.tokenizer.convert_tokens_to_ids("<|eot_id|>")
    for row, prompt in enumerate(PROMPTS):
        prompt_ids = encoder.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        end = crop + len(prompt_ids)
        assert tokens["input_ids"][row, crop:end].tolist() == prompt_ids
        assert tokens["input_ids"][row, end] == eot
        # Right padding: ones up to and including <|eot_id|>, zeros after.
        mask = tokens["attention_mask"][row]
        assert mask[: end + 1].all() and not mask[end + 1 :].any()


@pytest.mark.parametrize("data_type, crop", [("video", 95), ("image", 36)])
def test_llm_encode_is_the_cropped_skip_layer_state(model_base, data_type, crop):
    encoder = make_llm(model_base)
    tokens = encoder.text2tokens(PROMPTS, data_type=data_type)
    out = encoder.encode(tokens, data_type=data_type)
    _, hidden_states = reference_hidden_states(model_base / "text_encoder", tokens)
    assert len(hidden_states) == LLM_LAYERS + 1
    assert out.hidden_state.shape == (2, MAX_LENGTH - crop, 32)
    torch.testing.assert_close(out.hidden_state, hidden_states[-3][:, crop:], rtol=0, atol=1e-6)
    assert torch.equal(out.attention_mask, tokens["attention_mask"][:, crop:])
    if data_type == "video":
        assert out.attention_mask.shape == (2, TEXT_LEN)


def test_skip_layer_drops_the_last_layers_and_final_norm_is_optional(model_base):
    plain = make_llm(model_base)
    normed = make_llm(model_base, apply_final_norm=True)
    tokens = plain.text2tokens(PROMPTS)
    state = plain.encode(tokens).hidden_state
    state_normed = normed.encode(tokens).hidden_state
    assert not torch.allclose(state, state_normed)
    torch.testing.assert_close(state_normed, plain.model.norm(state), rtol=0, atol=1e-6)

    # Independent check: a copy of the decoder cut to its first L - 2 layers ends in the final norm, so its
    # last_hidden_state is the skip-2 state with the final norm applied.
    truncated = copy.deepcopy(plain.model)
    truncated.config.num_hidden_layers = LLM_LAYERS - 2
    truncated.layers = truncated.layers[: LLM_LAYERS - 2]
    with torch.no_grad():
        expected = truncated(tokens["input_ids"], attention_mask=tokens["attention_mask"]).last_hidden_state
    torch.testing.assert_close(state_normed, expected[:, 95:], rtol=0, atol=1e-5)


def test_skip_none_and_skip_zero_use_the_normalised_last_state(model_base):
    tokens = None
    states = []
    variants = ({"hidden_state_skip_layer": None}, {"hidden_state_skip_layer": 0, "apply_final_norm": True})
    for overrides in variants:
        encoder = make_llm(model_base, **overrides)
        tokens = encoder.text2tokens(PROMPTS) if tokens is None else tokens
        states.append(encoder.encode(tokens).hidden_state)
    _, hidden_states = reference_hidden_states(model_base / "text_encoder", tokens)
    for state in states:  # no second norm for skip 0
        torch.testing.assert_close(state, hidden_states[-1][:, 95:], rtol=0, atol=1e-6)


def test_causal_lm_folder_loads_with_automodel(model_base, tmp_path):
    folder = hy_ckpt_text.write_llm_folder(str(tmp_path / "text_encoder"), causal_lm=True)
    encoder = make_llm(model_base, text_encoder_path=folder)
    assert isinstance(encoder.model, LlamaModel)
    tokens = encoder.text2tokens(PROMPTS[0])
    _, hidden_states = reference_hidden_states(folder, tokens, LlamaForCausalLM)
    state = encoder.encode(tokens).hidden_state
    torch.testing.assert_close(state, hidden_states[-3][:, 95:], rtol=0, atol=1e-6)


def test_sequential_cpu_offload_gives_the_same_states(model_base):
    """`--use-cpu-offload`: weights stay off the execution device between forwards (accelerate hooks)."""
    encoder = make_llm(model_base, apply_final_norm=True)
    tokens = encoder.text2tokens(PROMPTS)
    before = encoder.encode(tokens).hidden_state
    cpu_offload(encoder.model, execution_device=torch.device("cpu"))
    after = encoder.encode(tokens, device="cpu").hidden_state
    torch.testing.assert_close(after, before, rtol=0, atol=0)


def test_precision_sets_the_model_dtype(model_base):
    encoder = make_llm(model_base, text_encoder_precision="bf16")
    assert encoder.dtype == torch.bfloat16
    assert encoder(PROMPTS[0]).hidden_state.dtype == torch.bfloat16


def test_clip_returns_the_pooled_output(model_base):
    encoder = make_clip(model_base)
    tokens = encoder.text2tokens(PROMPTS)
    assert tokens["input_ids"].shape == (2, 77)
    out = encoder.encode(tokens)
    reference = CLIPTextModel.from_pretrained(model_base / "text_encoder_2", local_files_only=True).eval()
    with torch.no_grad():
        expected = reference(tokens["input_ids"], attention_mask=tokens["attention_mask"])
    assert out.hidden_state.shape == (2, 24)
    torch.testing.assert_close(out.hidden_state, expected.pooler_output, rtol=0, atol=1e-6)
    assert torch.equal(out.attention_mask, tokens["attention_mask"])
    # The pooled state is the one at the first <|endoftext|> (right after the prompt).
    first_eos = (tokens["input_ids"] == encoder.tokenizer.eos_token_id).int().argmax(dim=1)
    lengths = tokens["attention_mask"].sum(dim=1)
    assert torch.equal(first_eos, lengths - 1)
    torch.testing.assert_close(out.hidden_state, expected.last_hidden_state[torch.arange(2), first_eos])
    # No template for CLIP: the data type changes nothing.
    assert torch.equal(encoder.text2tokens(PROMPTS, "image")["input_ids"], tokens["input_ids"])


def test_long_prompts_are_truncated_to_max_length_with_a_warning(model_base, caplog):
    encoder, clip = make_llm(model_base), make_clip(model_base)
    long_prompt = " ".join(PROMPTS * 40)
    with caplog.at_level(logging.WARNING):
        tokens = encoder.text2tokens(long_prompt)
        clip_tokens = clip.text2tokens([PROMPTS[0], long_prompt])
        assert clip.text2tokens(long_prompt)["input_ids"].shape == (1, 77)  # a single string, said already
        encoder.text2tokens([long_prompt, PROMPTS[1]])  # said once per prompt
    assert tokens["input_ids"].shape == (1, MAX_LENGTH) and tokens["attention_mask"].all()
    assert clip_tokens["input_ids"].shape == (2, 77) and clip_tokens["attention_mask"][1].all()
    assert encoder.encode(tokens).hidden_state.shape == (1, TEXT_LEN, 32)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert warnings[0].startswith("llm text encoder: the prompt is ") and f"max_length={MAX_LENGTH}" in warnings[0]
    assert warnings[1].startswith("clipL text encoder: the prompt is ") and "max_length=77" in warnings[1]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        encoder.text2tokens(PROMPTS)
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_missing_folders_raise_file_not_found(model_base, tmp_path, monkeypatch):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=r"text encoder 'llm' folder not found.*nowhere"):
        make_llm(model_base, text_encoder_path=str(missing))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty.*config\.json"):
        TextEncoder("clipL", 77, text_encoder_path=str(empty))
    # A model folder without tokenizer files.
    weights_only = tmp_path / "weights_only"
    weights_only.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(model_base / "text_encoder" / name, weights_only / name)
    with pytest.raises(FileNotFoundError, match=r"tokenizer 'llm' folder .*weights_only.*tokenizer\.json"):
        make_llm(model_base, text_encoder_path=str(weights_only))
    # Default paths come from $MODEL_BASE (TEXT_ENCODER_PATH).
    default_folder = str(tmp_path / "ckpts" / "text_encoder_2")
    monkeypatch.setitem(text_encoder_module.TEXT_ENCODER_PATH, "clipL", default_folder)
    with pytest.raises(FileNotFoundError, match=r"'clipL' folder not found.*ckpts.text_encoder_2"):
        TextEncoder("clipL", 77)


def test_bad_arguments_raise_value_error(model_base):
    with pytest.raises(ValueError, match=r"text_encoder_type='t5'.*allowed: 'clipL', 'llm'"):
        TextEncoder("t5", 77)
    with pytest.raises(ValueError, match=r"text_encoder_precision='fp8'.*'fp32', 'fp16', 'bf16'"):
        make_llm(model_base, text_encoder_precision="fp8")
    with pytest.raises(ValueError, match=r"hidden_state_skip_layer=5 must be an int in \[0, 4\]"):
        make_llm(model_base, hidden_state_skip_layer=5)
    with pytest.raises(ValueError, match="exactly one"):
        make_llm(model_base, prompt_template={"template": "no slot", "crop_start": 0})
    encoder = make_llm(model_base, prompt_template_video=None)
    with pytest.raises(ValueError, match=r"data_type='video' needs prompt_template_video"):
        encoder.text2tokens(PROMPTS)
    with pytest.raises(ValueError, match=r"data_type='audio'.*allowed: 'image', 'video'"):
        encoder.text2tokens(PROMPTS, data_type="audio")
    assert os.path.isdir(model_base / "text_encoder")
