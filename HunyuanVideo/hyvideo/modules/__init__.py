"""HunyuanVideo transformer: model, official configs, RoPE tables and checkpoint loader."""

# `attention` (the function) is deliberately not re-exported: the name would shadow the submodule
# `hyvideo.modules.attention`.
from .attention import TextSegments
from .checkpoint import infer_config, load_hunyuan_transformer
from .models import HUNYUAN_VIDEO_CONFIG, HYVideoDiffusionTransformer, official_config
from .posemb_layers import get_nd_rotary_pos_embed, get_rotary_pos_embed

__all__ = [
    "HUNYUAN_VIDEO_CONFIG",
    "HYVideoDiffusionTransformer",
    "TextSegments",
    "get_nd_rotary_pos_embed",
    "get_rotary_pos_embed",
    "infer_config",
    "load_hunyuan_transformer",
    "official_config",
]
