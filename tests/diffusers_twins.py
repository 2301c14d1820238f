"""Test helper: our transformers and their diffusers twins with the same random weights, plus tiny pipelines.

The twins load our weights through the key converters (``wan.utils.diffusers_keys``,
``hyvideo.utils.diffusers_keys``); :func:`wan_step` / :func:`hunyuan_step` call either implementation on the same
inputs, so a test can run one sampling loop over both and compare. The tiny pipelines (:func:`tiny_wan_pipeline`,
:func:`tiny_wan_i2v_pipeline`, :func:`tiny_hunyuan_pipeline`) hold such twins and take prompt embeddings directly;
:func:`delta` builds a small DeltaCache for any stream groups.
"""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKLWan,
    FlowMatchEulerDiscreteScheduler,
    HunyuanVideoPipeline,
    HunyuanVideoTransformer3DModel,
    UniPCMultistepScheduler,
    WanImageToVideoPipeline,
    WanPipeline,
    WanTransformer3DModel,
)
from hy_ckpt_dit import make_tiny_dit
from hyvideo.modules import get_nd_rotary_pos_embed
from hyvideo.utils import diffusers_keys as hy_keys
from PIL import Image
from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModel
from wan.utils import diffusers_keys as wan_keys
from wan_ckpt_dit import TINY_CONFIG, random_tiny_wan

from common_cache import CacheConfig, DeltaCache, StreamGroupConfig, UniformSchedule

WAN_TEXT_LEN = 16  # a short text so that no padding is needed (our model pads, diffusers takes it as given)
HY_TEXT_LEN = 6
CLIP_DIM = 16  # the tiny CLIP's token width = the i2v transformer's image_dim


def delta(groups: dict[str, tuple[int, tuple[int, ...]]], order: int = 0) -> DeltaCache:
    """A DeltaCache caching ``cached`` blocks of each group: warm-up 2, refresh every 2nd step, forecast order."""
    return DeltaCache(CacheConfig(tuple(
        StreamGroupConfig(name, depth, cached, 2, UniformSchedule(2), order) for name, (depth, cached) in groups.items()
    )))


def wan_pair(num_layers: int = 4, seed: int = 0, **overrides):
    """(our WanModel, diffusers WanTransformer3DModel) with the same random weights (fp32, eval)."""
    config = {**TINY_CONFIG, "num_layers": num_layers, "text_len": WAN_TEXT_LEN, **overrides}
    ours = random_tiny_wan(config, seed=seed)
    twin = WanTransformer3DModel(**wan_keys.diffusers_config(**config)).eval()
    twin.load_state_dict(wan_keys.official_to_diffusers(ours.state_dict()), strict=True)
    return ours, twin


def wan_inputs(seed: int = 1):
    """A latent [1, 16, 2, 8, 8] (32 tokens) and cond / uncond text [1, 16, 32]."""
    g = torch.Generator().manual_seed(seed)
    latent = torch.randn(1, 16, 2, 8, 8, generator=g)
    texts = {branch: torch.randn(1, WAN_TEXT_LEN, TINY_CONFIG["text_dim"], generator=g) for branch in ("cond", "uncond")}
    return latent, texts


def wan_step(model, latent: torch.Tensor, t: float, text: torch.Tensor) -> torch.Tensor:
    """One velocity prediction [1, 16, F, H, W] of either implementation."""
    timestep = torch.tensor([t])
    with torch.no_grad():
        if isinstance(model, WanTransformer3DModel):
            return model(latent, timestep, text, return_dict=False)[0]
        return model([latent[0]], timestep, [text[0]], seq_len=32)[0][None]


def hunyuan_pair(double: int = 3, single: int = 3, seed: int = 0):
    """(our HYVideoDiffusionTransformer, diffusers HunyuanVideoTransformer3DModel) with the same random weights."""
    ours = make_tiny_dit(seed=seed, mm_double_blocks_depth=double, mm_single_blocks_depth=single)
    twin = HunyuanVideoTransformer3DModel(**hy_keys.diffusers_config(ours.config)).eval()
    twin.load_state_dict(hy_keys.official_to_diffusers(ours.state_dict()), strict=True)
    return ours, twin


def hunyuan_inputs(model, seed: int = 1):
    """A latent [1, 16, 3, 8, 8] and per-branch (text states, mask, pooled text), plus the RoPE tables."""
    g = torch.Generator().manual_seed(seed)
    latent = torch.randn(1, 16, 3, 8, 8, generator=g)
    texts = {branch: (torch.randn(1, HY_TEXT_LEN, model.config["text_states_dim"], generator=g),
                      torch.ones(1, HY_TEXT_LEN, dtype=torch.long),
                      torch.randn(1, model.config["text_states_dim_2"], generator=g))
             for branch in ("cond", "uncond")}
    rope = get_nd_rotary_pos_embed(model.rope_dim_list, [3, 4, 4], theta=256.0)
    return latent, texts, rope


def hunyuan_step(model, latent, t: float, text, rope) -> torch.Tensor:
    """One velocity prediction [1, 16, 3, 8, 8] of either implementation (guidance 6016 as the distilled model)."""
    states, mask, pooled = text
    timestep, guidance = torch.tensor([t]), torch.tensor([6016.0])
    with torch.no_grad():
        if isinstance(model, HunyuanVideoTransformer3DModel):
            return model(hidden_states=latent, timestep=timestep, encoder_hidden_states=states,
                         encoder_attention_mask=mask, pooled_projections=pooled, guidance=guidance,
                         return_dict=False)[0]
        return model(latent, timestep, states, mask, pooled, rope[0], rope[1], guidance, return_dict=False)


def _wan_scheduler() -> UniPCMultistepScheduler:
    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)


def tiny_wan_pipeline(num_layers: int = 40) -> WanPipeline:
    """A WanPipeline around a tiny random transformer with the official depth (no text encoder, no VAE)."""
    _, twin = wan_pair(num_layers=num_layers)
    return WanPipeline(tokenizer=None, text_encoder=None, transformer=twin, vae=None, scheduler=_wan_scheduler())


def tiny_wan_i2v_pipeline(num_layers: int = 12, seed: int = 0) -> WanImageToVideoPipeline:
    """A WanImageToVideoPipeline of tiny random parts: an i2v transformer (36 input channels, image_dim CLIP_DIM,
    image key/value projections), a VAE (8x spatial, 4x temporal) and a CLIP vision tower (32 px, 16 px patches:
    5 tokens) with its image processor, all built here (no hub). No text encoder: pass prompt embeddings.

    diffusers 0.42.1 needs the image encoder: ``check_inputs`` refuses ``image`` together with ``image_embeds``,
    yet ``prepare_latents`` encodes ``image`` with the VAE, so the CLIP embeddings cannot be passed in directly.
    """
    _, twin = wan_pair(num_layers=num_layers, seed=seed, model_type="i2v", in_dim=36, image_dim=CLIP_DIM)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                               temperal_downsample=[False, True, True]).eval()
        clip = CLIPVisionModel(CLIPVisionConfig(hidden_size=CLIP_DIM, intermediate_size=32, num_hidden_layers=2,
                                                num_attention_heads=2, image_size=32, patch_size=16)).eval()
    processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return WanImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=vae, scheduler=_wan_scheduler(),
                                   image_processor=processor, image_encoder=clip, transformer=twin)


def random_image(size: int = 64, seed: int = 0) -> Image.Image:
    """A random RGB image of ``size`` x ``size`` pixels (the i2v first frame)."""
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size, size, 3), generator=g, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy())


def tiny_hunyuan_pipeline(double: int = 20, single: int = 40) -> HunyuanVideoPipeline:
    """A HunyuanVideoPipeline around a tiny random transformer with the official depths (no encoders, no VAE)."""
    _, twin = hunyuan_pair(double, single)
    return HunyuanVideoPipeline(text_encoder=None, tokenizer=None, transformer=twin, vae=None,
                                scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder_2=None,
                                tokenizer_2=None)
