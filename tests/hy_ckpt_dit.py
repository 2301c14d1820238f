"""Test helper: tiny HunyuanVideo transformers and checkpoints in the official (DeepSpeed-style) layout.

`write_dit_checkpoint` writes what `huggingface-cli download tencent/HunyuanVideo` puts in
`ckpts/hunyuan-video-t2v-720p/transformers/`: a `mp_rank_00_model_states.pt` whose weights sit under
"module" (or "ema"), loadable with `torch.load(weights_only=True)`.
"""

from pathlib import Path

import torch

from hyvideo.modules import HYVideoDiffusionTransformer

# hidden 64 = 2 heads x 32; rope dims sum to 32; refiner depth 2 as upstream.
TINY_HY_DIT_CONFIG = {
    "patch_size": [1, 2, 2],
    "in_channels": 16,
    "out_channels": 16,
    "hidden_size": 64,
    "heads_num": 2,
    "mlp_width_ratio": 4,
    "mm_double_blocks_depth": 2,
    "mm_single_blocks_depth": 2,
    "rope_dim_list": [8, 12, 12],
    "qkv_bias": True,
    "qk_norm": True,
    "guidance_embed": True,
    "text_states_dim": 32,
    "text_states_dim_2": 16,
}


def make_tiny_dit(seed: int = 0, std: float = 0.1, **overrides) -> HYVideoDiffusionTransformer:
    """A tiny fp32 transformer with every parameter drawn from N(0, std^2) (seeded), so no branch is zero."""
    model = HYVideoDiffusionTransformer(**{**TINY_HY_DIT_CONFIG, **overrides})
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * std)
    return model.eval()


def write_dit_checkpoint(
    folder: str | Path,
    state_dict: dict[str, torch.Tensor],
    load_key: str | None = "module",
    file_name: str = "mp_rank_00_model_states.pt",
) -> Path:
    """Writes a transformer checkpoint and returns its path.

    Args:
        folder: created if needed.
        state_dict: official-key weights.
        load_key: "module" / "ema" (DeepSpeed-style, next to a few DeepSpeed bookkeeping entries), or
            None for a bare state dict.
        file_name: file name inside `folder`.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().clone() for k, v in state_dict.items()}
    payload = weights if load_key is None else {load_key: weights, "buffer_names": [], "ds_version": "0.10.0"}
    path = folder / file_name
    torch.save(payload, path)
    return path
