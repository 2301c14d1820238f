"""Text encoders of HunyuanVideo: the LLM (Llama-3 decoder, prompt template) and CLIP-L (pooled output).

References: Tencent/HunyuanVideo hyvideo/text_encoder/__init__.py (interface and numerics: prompt templates,
template crop, hidden-state skip layer, optional final norm, CLIP pooled output).

LLM path (`text_encoder_type="llm"`): the prompt is put into a chat template, tokenized to
`max_length = text_len + crop_start` tokens (right padding), and run with the attention mask. The state
taken is `hidden_states[-(skip + 1)]` (skip 2 = output of decoder layer L-2; the last entry of
`hidden_states` is already normalised, so the final RMSNorm is applied only on request and only for
skip > 0). The first `crop_start` positions (the template tokens in front of the prompt) are cut from both
the states and the mask.

CLIP path (`text_encoder_type="clipL"`): no template, 77 tokens, output = `pooler_output` [B, D].

Checkpoints are read from local folders only (`local_files_only=True`): the hub is never contacted.
"""

import logging
import os
from dataclasses import dataclass

import torch
import torch.nn as nn
from transformers import AutoModel, AutoTokenizer, CLIPTextModel, CLIPTokenizer

from ..constants import PRECISION_TO_TYPE, TEXT_ENCODER_PATH, TOKENIZER_PATH

TEXT_ENCODER_TYPES = ("clipL", "llm")
DATA_TYPES = ("image", "video")
# Output used when no hidden-state skip layer is given (as upstream).
DEFAULT_OUTPUT_KEY = {"clipL": "pooler_output", "llm": "last_hidden_state"}
CLIP_MAX_LENGTH = 77
MODEL_FILES = ("config.json",)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


@dataclass
class TextEncoderModelOutput:
    """Result of `TextEncoder.encode`.

    Attributes:
        hidden_state: LLM: [B, L - crop_start, D] token states; CLIP: [B, D] pooled state.
        attention_mask: [B, L - crop_start] (LLM) or [B, L] (CLIP) int mask, or None without a mask.
        hidden_states_list: all hidden states of the model (uncropped), only with `output_hidden_states=True`.
    """

    hidden_state: torch.Tensor
    attention_mask: torch.Tensor | None = None
    hidden_states_list: tuple[torch.Tensor, ...] | None = None


def _check_choice(field: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{field}={value!r} is not supported; allowed: {', '.join(map(repr, allowed))}")


def _require_folder(path: str, what: str, expected_files: tuple[str, ...]) -> None:
    """Raise FileNotFoundError unless `path` is a folder holding at least one of `expected_files`."""
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"{what} folder not found: looked for the directory {os.path.abspath(path)!r} "
            f"(it must hold {' or '.join(expected_files)}; see the checkpoint layout in the README)"
        )
    if not any(os.path.isfile(os.path.join(path, name)) for name in expected_files):
        raise FileNotFoundError(
            f"{what} folder {os.path.abspath(path)!r} has none of the expected files {list(expected_files)}"
        )


def _precision_dtype(precision: str | None) -> torch.dtype | None:
    if precision is None:
        return None
    _check_choice("text_encoder_precision", precision, tuple(PRECISION_TO_TYPE))
    return PRECISION_TO_TYPE[precision]


def load_text_encoder(
    text_encoder_type: str,
    text_encoder_precision: str | None = None,
    text_encoder_path: str | None = None,
    logger=None,
    device: torch.device | str | None = None,
) -> tuple[nn.Module, str]:
    """Load the text-encoder model from a local folder.

    Args:
        text_encoder_type: "llm" (`AutoModel`, a Llama decoder) or "clipL" (`CLIPTextModel`).
        text_encoder_precision: "fp32" / "fp16" / "bf16", or None for the dtype stored in the folder.
        text_encoder_path: model folder; default `TEXT_ENCODER_PATH[text_encoder_type]` ($MODEL_BASE/...).
        logger: optional logger for an info line.
        device: where to move the model (None: stay on the CPU).

    Returns:
        (model in eval mode without gradients, the folder it was read from).
    """
    _check_choice("text_encoder_type", text_encoder_type, TEXT_ENCODER_TYPES)
    path = text_encoder_path if text_encoder_path is not None else TEXT_ENCODER_PATH[text_encoder_type]
    _require_folder(path, f"text encoder {text_encoder_type!r}", MODEL_FILES)
    dtype = _precision_dtype(text_encoder_precision)
    if logger is not None:
        logger.info(f"Loading text encoder model ({text_encoder_type}) from: {path}")
    kwargs = {"local_files_only": True}
    if dtype is not None:
        kwargs["dtype"] = dtype
    model_class = CLIPTextModel if text_encoder_type == "clipL" else AutoModel
    model = model_class.from_pretrained(path, **kwargs)
    model.requires_grad_(False)
    model.eval()
    if device is not None:
        model = model.to(device)
    return model, path


def load_tokenizer(
    tokenizer_type: str, tokenizer_path: str | None = None, padding_side: str = "right", logger=None
) -> tuple[object, str]:
    """Load the tokenizer from a local folder.

    Args:
        tokenizer_type: "llm" (`AutoTokenizer`) or "clipL" (`CLIPTokenizer`, max_length 77).
        tokenizer_path: tokenizer folder; default `TOKENIZER_PATH[tokenizer_type]`.
        padding_side: "right" (upstream): the template tokens then sit at fixed positions 0..crop_start-1.
        logger: optional logger for an info line.

    Returns:
        (tokenizer, the folder it was read from).
    """
    _check_choice("tokenizer_type", tokenizer_type, TEXT_ENCODER_TYPES)
    _check_choice("padding_side", padding_side, ("right", "left"))
    path = tokenizer_path if tokenizer_path is not None else TOKENIZER_PATH[tokenizer_type]
    _require_folder(path, f"tokenizer {tokenizer_type!r}", TOKENIZER_FILES)
    if logger is not None:
        logger.info(f"Loading tokenizer ({tokenizer_type}) from: {path}")
    if tokenizer_type == "clipL":
        tokenizer = CLIPTokenizer.from_pretrained(
            path, max_length=CLIP_MAX_LENGTH, padding_side=padding_side, local_files_only=True
        )
    else:
        tokenizer = AutoTokenizer.from_pretrained(path, padding_side=padding_side, local_files_only=True)
    return tokenizer, path


def template_crop_start(tokenizer, template: str) -> int:
    """Number of tokens in front of the prompt when `template` is tokenized (BOS included).

    With the official Llama-3 tokenizer this gives the `crop_start` values of `PROMPT_TEMPLATE` (95 for the
    video template, 36 for the image one). It assumes the tokenizer adds special tokens only in front (BOS),
    and that the text before "{}" ends at a token boundary (true for the templates, which end in "\\n\\n"
    and a Llama-3 pre-tokenizer keeps newline runs together).

    Args:
        tokenizer: a Hugging Face tokenizer.
        template: a template string with exactly one "{}".

    Returns:
        The token count of the template prefix.
    """
    _check_template("template", {"template": template})
    prefix = template.split("{}")[0]
    return len(tokenizer(prefix)["input_ids"])


def llm_max_length(text_len: int, prompt_template_video: dict | None, prompt_template: dict | None) -> int:
    """Tokenizer length of the LLM: `text_len` plus the crop of the video template (else the image one).

    Args:
        text_len: tokens kept after the crop (`--text-len`, 256).
        prompt_template_video: `PROMPT_TEMPLATE[--prompt-template-video]` or None.
        prompt_template: `PROMPT_TEMPLATE[--prompt-template]` or None.

    Returns:
        `text_len + crop_start` (351 with the official settings).
    """
    for template in (prompt_template_video, prompt_template):
        if template is not None:
            return text_len + template.get("crop_start", 0)
    return text_len


def _check_template(field: str, template: dict | None) -> None:
    if template is None:
        return
    if not isinstance(template, dict) or not isinstance(template.get("template"), str):
        raise ValueError(f"{field} must be a dict with a 'template' string, got {template!r}")
    if template["template"].count("{}") != 1:
        raise ValueError(f"{field}['template'] must contain exactly one '{{}}' for the prompt")


def _final_norm(model: nn.Module, text_encoder_type: str) -> nn.Module:
    """The model's last normalisation layer (LLM: `norm`; CLIP: `text_model.final_layer_norm`)."""
    if text_encoder_type == "clipL":
        return model.text_model.final_layer_norm
    if not hasattr(model, "norm"):
        raise ValueError(
            f"apply_final_norm=True needs a decoder with a final `norm`, got {type(model).__name__}"
        )
    return model.norm


def _num_layers(model: nn.Module) -> int:
    config = model.config
    config = getattr(config, "text_config", None) or config
    return config.num_hidden_layers


class TextEncoder(nn.Module):
    """One text encoder with its tokenizer: the LLM with prompt templates, or CLIP-L (pooled output).

    Args:
        text_encoder_type: "llm" or "clipL".
        max_length: tokenizer length (LLM: `text_len + crop_start`, see `llm_max_length`; CLIP: 77).
        text_encoder_precision: "fp32" / "fp16" / "bf16", or None for the stored dtype.
        text_encoder_path: model folder; default `TEXT_ENCODER_PATH[text_encoder_type]`.
        tokenizer_type: "llm" or "clipL"; default = `text_encoder_type`.
        tokenizer_path: tokenizer folder; default `text_encoder_path` when that is given, else
            `TOKENIZER_PATH[tokenizer_type]`.
        output_key: model output used without a skip layer; default "last_hidden_state" (LLM) or
            "pooler_output" (CLIP).
        use_attention_mask: pass the padding mask to the model (upstream default True).
        prompt_template: image template dict {"template": str with one "{}", "crop_start": int} or None.
        prompt_template_video: video template dict, same form, or None.
        hidden_state_skip_layer: None (use `output_key`) or k >= 0: use `hidden_states[-(k + 1)]`.
        apply_final_norm: apply the model's final norm to the skipped-layer state (only for k > 0).
        reproduce: accepted for parity with the CLI; it changes nothing here (upstream only sets an unused
            flag).
        logger: optional logger.
        device: where the model is placed (None: CPU).
    """

    def __init__(
        self,
        text_encoder_type: str,
        max_length: int,
        text_encoder_precision: str | None = None,
        text_encoder_path: str | None = None,
        tokenizer_type: str | None = None,
        tokenizer_path: str | None = None,
        output_key: str | None = None,
        use_attention_mask: bool = True,
        prompt_template: dict | None = None,
        prompt_template_video: dict | None = None,
        hidden_state_skip_layer: int | None = None,
        apply_final_norm: bool = False,
        reproduce: bool = False,
        logger=None,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        _check_choice("text_encoder_type", text_encoder_type, TEXT_ENCODER_TYPES)
        if not isinstance(max_length, int) or max_length <= 0:
            raise ValueError(f"max_length must be a positive int, got {max_length!r}")
        _check_template("prompt_template", prompt_template)
        _check_template("prompt_template_video", prompt_template_video)
        self.text_encoder_type = text_encoder_type
        self.tokenizer_type = tokenizer_type if tokenizer_type is not None else text_encoder_type
        self.max_length = max_length
        self.precision = text_encoder_precision
        self.output_key = output_key if output_key is not None else DEFAULT_OUTPUT_KEY[text_encoder_type]
        self.use_attention_mask = use_attention_mask
        self.prompt_template = prompt_template
        self.prompt_template_video = prompt_template_video
        self.apply_final_norm = apply_final_norm
        self.reproduce = reproduce
        self.logger = logger
        self._warned: set[str] = set()

        self.model, self.model_path = load_text_encoder(
            text_encoder_type, text_encoder_precision, text_encoder_path, logger=logger, device=device
        )
        self.hidden_state_skip_layer = self._checked_skip(hidden_state_skip_layer)
        self.dtype = self.model.dtype
        # Kept from load time: under sequential CPU offload the parameters may later live elsewhere.
        self.device = self.model.device
        if tokenizer_path is None and text_encoder_path is not None:
            tokenizer_path = text_encoder_path  # the official layout keeps the tokenizer beside the model
        self.tokenizer, self.tokenizer_path = load_tokenizer(
            self.tokenizer_type, tokenizer_path, "right", logger
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.text_encoder_type} ({self.precision} - {self.model_path}), "
            f"max_length={self.max_length})"
        )

    def _checked_skip(self, skip: int | None) -> int | None:
        if skip is None:
            return None
        depth = _num_layers(self.model)
        if not isinstance(skip, int) or not 0 <= skip <= depth:
            raise ValueError(
                f"hidden_state_skip_layer={skip!r} must be an int in [0, {depth}] for this model"
            )
        return skip

    @property
    def use_template(self) -> bool:
        return self.prompt_template is not None or self.prompt_template_video is not None

    def _template_for(self, data_type: str) -> dict | None:
        """The template dict used for `data_type`, or None when this encoder has no template."""
        _check_choice("data_type", data_type, DATA_TYPES)
        if not self.use_template:
            return None
        template = self.prompt_template if data_type == "image" else self.prompt_template_video
        if template is None:
            field = "prompt_template" if data_type == "image" else "prompt_template_video"
            raise ValueError(f"data_type={data_type!r} needs {field}, which is None for this text encoder")
        return template

    @staticmethod
    def apply_text_to_template(text: str, template: str) -> str:
        """Insert `text` at the "{}" of `template` (the prompt itself is not formatted, braces are safe)."""
        if not isinstance(template, str):
            raise TypeError(f"template must be a str, got {type(template).__name__}")
        return template.format(text)

    def text2tokens(self, text: str | list[str], data_type: str = "video"):
        """Apply the template (if any) and tokenize to `max_length` with right padding.

        Args:
            text: one prompt or a list of prompts.
            data_type: "video" (video template) or "image" (image template); ignored without templates.

        Returns:
            A `BatchEncoding` with `input_ids` and `attention_mask`, both [B, max_length].
        """
        template = self._template_for(data_type)
        prompts = [text] if isinstance(text, str) else list(text)
        texts = prompts
        if template is not None:
            texts = [self.apply_text_to_template(one, template["template"]) for one in prompts]
        self._warn_if_truncated(prompts, texts)
        return self.tokenizer(
            texts,
            truncation=True,
            max_length=self.max_length,
            padding="max_length",
            return_attention_mask=True,
            return_tensors="pt",
        )

    def _warn_if_truncated(self, prompts: list[str], texts: list[str]) -> None:
        """Tokens past ``max_length`` are cut, as upstream does silently; say so, once per prompt."""
        counts = [len(ids) for ids in self.tokenizer(texts, truncation=False, verbose=False)["input_ids"]]
        for prompt, count in zip(prompts, counts):
            if count > self.max_length and prompt not in self._warned:
                self._warned.add(prompt)
                (self.logger or logging.getLogger(__name__)).warning(
                    f"{self.text_encoder_type} text encoder: the prompt is {count} tokens (template included); it "
                    f"keeps the first max_length={self.max_length} and ignores the rest: {prompt!r}"
                )

    def crop_start(self, data_type: str = "video") -> int:
        """Template tokens cut from the front of the LLM output for `data_type` (0 without a template)."""
        template = self._template_for(data_type)
        return 0 if template is None else template.get("crop_start", 0)

    @torch.no_grad()
    def encode(
        self,
        batch_encoding,
        use_attention_mask: bool | None = None,
        output_hidden_states: bool = False,
        hidden_state_skip_layer: int | None = None,
        data_type: str = "video",
        device: torch.device | str | None = None,
    ) -> TextEncoderModelOutput:
        """Run the model on tokens from `text2tokens`.

        Args:
            batch_encoding: mapping with `input_ids` and `attention_mask`, [B, L].
            use_attention_mask: override of the constructor setting.
            output_hidden_states: also return all hidden states.
            hidden_state_skip_layer: override of the constructor setting (checked the same way).
            data_type: "video" or "image": picks the crop of the matching template.
            device: device of the inputs and outputs (default: the model's device at load time); with
                sequential CPU offload this is the execution device.

        Returns:
            `TextEncoderModelOutput`: LLM [B, L - crop_start, D] states and the cropped mask; CLIP [B, D].
        """
        device = self.device if device is None else device
        use_mask = self.use_attention_mask if use_attention_mask is None else use_attention_mask
        skip = self.hidden_state_skip_layer if hidden_state_skip_layer is None else self._checked_skip(
            hidden_state_skip_layer
        )
        crop_start = self.crop_start(data_type)
        attention_mask = batch_encoding["attention_mask"].to(device) if use_mask else None
        extra = {"use_cache": False} if self.text_encoder_type == "llm" else {}
        outputs = self.model(
            input_ids=batch_encoding["input_ids"].to(device),
            attention_mask=attention_mask,
            output_hidden_states=output_hidden_states or skip is not None,
            **extra,
        )
        if skip is None:
            state = outputs[self.output_key]
        else:
            state = outputs.hidden_states[-(skip + 1)]  # [B, L, D]
            # The last entry is already normalised by the model; intermediate ones get the norm on request.
            if skip > 0 and self.apply_final_norm:
                state = _final_norm(self.model, self.text_encoder_type)(state)
        if crop_start > 0:
            # Drop the instruction tokens; only the prompt tokens (and the closing <|eot_id|>) remain.
            state = state[:, crop_start:]  # [B, L - crop_start, D]
            attention_mask = attention_mask[:, crop_start:] if attention_mask is not None else None
        hidden_states = outputs.hidden_states if output_hidden_states else None
        return TextEncoderModelOutput(state, attention_mask, hidden_states)

    def forward(
        self, text: str | list[str], data_type: str = "video", device: torch.device | str | None = None
    ) -> TextEncoderModelOutput:
        """Tokenize and encode `text` (see `text2tokens` and `encode`)."""
        return self.encode(self.text2tokens(text, data_type), data_type=data_type, device=device)
