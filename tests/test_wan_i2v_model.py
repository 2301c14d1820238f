"""Wan2.1 image-to-video parts against the libraries, on tiny configs: the i2v DiT vs diffusers'
``WanTransformer3DModel`` (``image_dim``), the CLIP visual tower vs transformers' ``CLIPVisionModel``, the
conditioning latent and frame mask vs ``WanImageToVideoPipeline.prepare_latents``; plus the size rule, the CLIP
loader, the i2v configs, the TeaCache coefficients and the built-in cache profile."""

from __future__ import annotations

import os

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline, WanTransformer3DModel
from test_wan_vae import diffusers_vae
from transformers import CLIPVisionConfig, CLIPVisionModel, CLIPVisionModelWithProjection
from wan_ckpt_dit import TINY_CONFIG, random_tiny_wan
from wan_ckpt_image import TINY_CLIP, clip_official_shapes, clip_to_transformers, random_clip_state_dict
from wan_ckpt_text import TINY_VAE, write_vae_checkpoint

from common_cache.teacache import PUBLISHED, wan_teacache_config
from wan.cache_profiles import builtin_profile
from wan.configs import MAX_AREA_CONFIGS, SUPPORTED_SIZES, WAN_CONFIGS, is_image_task
from wan.image2video import conditioning_latent, first_frame_mask, image_to_tensor, latent_grid
from wan.modules.checkpoint import ARCHITECTURE_FIELDS
from wan.modules.clip import VIT_H_14, CLIPModel, CLIPVisionEncoder, preprocess
from wan.modules.model import WanModel
from wan.modules.vae import WAN_LATENTS_MEAN, WAN_LATENTS_STD, WanVAE, load_vae_state_dict
from wan.utils.diffusers_keys import diffusers_config, diffusers_to_official, official_to_diffusers
from scripts_loader import load_script

pytestmark = pytest.mark.usefixtures("one_thread")

I2V_CONFIG = dict(TINY_CONFIG, model_type="i2v", in_dim=36, image_dim=24)  # text_len 512, as diffusers assumes


@pytest.fixture(scope="module")
def i2v_model():
    return random_tiny_wan(I2V_CONFIG, seed=0)


@pytest.fixture(scope="module")
def i2v_inputs():
    generator = torch.Generator().manual_seed(0)
    latents = [torch.randn(16, 3, 8, 12, generator=generator) for _ in range(2)]  # 72 tokens each
    y = [torch.randn(20, 3, 8, 12, generator=generator) for _ in range(2)]
    clip_fea = torch.randn(2, 5, 24, generator=generator)
    contexts = [torch.randn(n, 32, generator=generator) for n in (5, 9)]
    return latents, y, clip_fea, contexts


# --- the i2v DiT vs diffusers -----------------------------------------------------------------------------------


@pytest.mark.parametrize("timestep, tol", [(500, 1e-5), (3, 1e-5), (999, 1e-4)])
def test_i2v_dit_matches_diffusers(i2v_model, i2v_inputs, timestep, tol):
    """t = 999 gets 1e-4: the official float64 timestep sinusoid vs diffusers' fp32 one (reference C.4 #1; the
    text-to-video test allows 1e-3 there); measured 1e-5 at 999, 4e-6 at 500, 7e-7 at 3."""
    reference = WanTransformer3DModel(**diffusers_config(**I2V_CONFIG)).eval()
    reference.load_state_dict(official_to_diffusers(i2v_model.state_dict()), strict=True)
    latents, y, clip_fea, contexts = i2v_inputs
    t = torch.tensor([timestep, timestep])
    padded_text = torch.stack([torch.cat([c, c.new_zeros(512 - c.shape[0], 32)]) for c in contexts])
    with torch.no_grad():
        expected = reference(torch.cat([torch.stack(latents), torch.stack(y)], dim=1), t, padded_text,
                             encoder_hidden_states_image=clip_fea, return_dict=False)[0]
        for seq_len in (72, 80):  # without and with latent padding
            ours = torch.stack(i2v_model(latents, t, contexts, seq_len, clip_fea=clip_fea, y=y))
            assert ours.shape == expected.shape == (2, 16, 3, 8, 12)
            assert (ours - expected).abs().max().item() <= tol
    assert expected.abs().max() > 1.0


def test_i2v_keys_convert_both_ways(i2v_model):
    official = i2v_model.state_dict()
    converted = official_to_diffusers(official)
    reference = WanTransformer3DModel(**diffusers_config(**I2V_CONFIG)).state_dict()
    assert set(converted) == set(reference) and len(converted) == len(official)
    assert converted["blocks.1.attn2.add_k_proj.weight"] is official["blocks.1.cross_attn.k_img.weight"]
    assert converted["condition_embedder.image_embedder.ff.net.2.bias"] is official["img_emb.proj.3.bias"]
    assert list(diffusers_to_official(converted)) == list(official)


def test_image_inputs_change_the_output_and_are_required(i2v_model, i2v_inputs):
    latents, y, clip_fea, contexts = i2v_inputs
    t = torch.tensor([500, 500])
    with torch.no_grad():
        base = i2v_model(latents, t, contexts, 72, clip_fea=clip_fea, y=y)[0]
        other_image = i2v_model(latents, t, contexts, 72, clip_fea=clip_fea.roll(1, dims=2), y=y)[0]
        other_y = i2v_model(latents, t, contexts, 72, clip_fea=clip_fea, y=[-u for u in y])[0]
    assert (base - other_image).abs().max() > 1e-3 and (base - other_y).abs().max() > 1e-3
    with pytest.raises(ValueError, match="needs clip_fea .CLIP image tokens. and y"):
        i2v_model(latents, t, contexts, 72)
    with pytest.raises(ValueError, match="text-to-video only"):
        random_tiny_wan(seed=0)(latents, t, contexts, 72, y=y)


# --- the CLIP visual tower vs transformers ----------------------------------------------------------------------


def _transformers_clip(state_dict: dict, projection: bool):
    config = CLIPVisionConfig(hidden_size=TINY_CLIP["dim"], intermediate_size=TINY_CLIP["dim"] * TINY_CLIP["mlp_ratio"],
                              num_hidden_layers=TINY_CLIP["num_layers"], num_attention_heads=TINY_CLIP["num_heads"],
                              image_size=TINY_CLIP["image_size"], patch_size=TINY_CLIP["patch_size"], hidden_act="gelu",
                              layer_norm_eps=TINY_CLIP["eps"], projection_dim=TINY_CLIP["out_dim"])
    weights = clip_to_transformers(state_dict)
    if projection:
        model = CLIPVisionModelWithProjection(config)
    else:
        model = CLIPVisionModel(config)
        weights.pop("visual_projection.weight")
    if not any(key.startswith("vision_model.") for key in model.state_dict()):  # transformers 5 drops the prefix
        weights = {key.removeprefix("vision_model."): value for key, value in weights.items()}
    model.load_state_dict(weights, strict=True)
    return model.eval()


def test_clip_visual_matches_transformers():
    state_dict = random_clip_state_dict(seed=3)
    ours = CLIPVisionEncoder(**TINY_CLIP).eval()
    ours.load_state_dict({k: v for k, v in state_dict.items() if k.startswith("visual.")}, strict=True)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        tokens = ours.visual(images)  # penultimate block, as Wan2.1 uses
        reference = _transformers_clip(state_dict, projection=False)(pixel_values=images, output_hidden_states=True)
        assert tokens.shape == (2, 17, 64)
        assert (tokens - reference.hidden_states[-2]).abs().max().item() <= 1e-6
        # every other tensor of the file (last block, post-norm, head) through the projection model
        last = ours.visual(images, penultimate=False)
        embeds = ours.visual.post_norm(last[:, 0]) @ ours.visual.head
        projected = _transformers_clip(state_dict, projection=True)(pixel_values=images).image_embeds
    assert (embeds - projected).abs().max().item() <= 1e-5
    assert tokens.abs().max() > 1.0


def test_clip_model_loads_the_official_file_and_preprocesses(tmp_path):
    path = str(tmp_path / "clip.pth")
    torch.save(random_clip_state_dict(seed=5), path)
    clip = CLIPModel(torch.float16, "cpu", path, vision_config=TINY_CLIP)
    assert clip.dtype == torch.float32  # CPUs run fp32
    image = torch.rand(3, 1, 48, 40, generator=torch.Generator().manual_seed(6)) * 2 - 1
    tokens = clip.visual([image])
    pixels = preprocess([image], 32)
    expected_pixels = torch.nn.functional.interpolate(image.transpose(0, 1), size=(32, 32), mode="bicubic")
    mean, std = torch.tensor([0.48145466, 0.4578275, 0.40821073]), torch.tensor([0.26862954, 0.26130258, 0.27577711])
    torch.testing.assert_close(pixels, (expected_pixels * 0.5 + 0.5 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1))
    with torch.no_grad():
        assert torch.equal(tokens, clip.model.visual(pixels))
    assert tokens.shape == (1, 17, 64)


@pytest.mark.parametrize("change, message", [
    (lambda sd: sd.pop("visual.transformer.2.mlp.2.bias"), r"1 missing key\(s\) \['visual.transformer.2.mlp.2.bias'\]"),
    (lambda sd: sd.update({"vision.extra": torch.zeros(1)}), r"1 unexpected key\(s\) \['vision.extra'\]"),
    (lambda sd: sd.update({"visual.head": torch.zeros(64, 16)}),
     r"visual.head: checkpoint \[64, 16\] vs model \[64, 32\]"),
])
def test_clip_loader_is_strict_on_the_visual_tower(tmp_path, change, message):
    state_dict = random_clip_state_dict(seed=5)
    change(state_dict)
    path = str(tmp_path / "clip.pth")
    torch.save(state_dict, path)
    with pytest.raises(ValueError, match=message):
        CLIPModel(torch.float16, "cpu", path, vision_config=TINY_CLIP)


# --- conditioning latent and mask vs diffusers ------------------------------------------------------------------


@pytest.fixture(scope="module")
def vaes(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("vae") / "Wan2.1_VAE.pth")
    write_vae_checkpoint(path, seed=0)
    reference = diffusers_vae(load_vae_state_dict(path), TINY_VAE)
    reference.register_to_config(latents_mean=list(WAN_LATENTS_MEAN), latents_std=list(WAN_LATENTS_STD))
    return WanVAE(vae_pth=path), reference


@pytest.mark.parametrize("frame_num", [5, 9])
def test_conditioning_latent_matches_diffusers_prepare_latents(vaes, frame_num):
    ours, reference = vaes
    pipeline = WanImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=reference,
                                       scheduler=FlowMatchEulerDiscreteScheduler())
    image = torch.rand(3, 48, 64, generator=torch.Generator().manual_seed(frame_num)) * 2 - 1  # at the video size
    with torch.no_grad():
        y = conditioning_latent(ours, image, frame_num, 48, 64)
        _, expected = pipeline.prepare_latents(image[None], 1, 16, 48, 64, frame_num, torch.float32,
                                               torch.device("cpu"), torch.Generator().manual_seed(0))
    assert y.shape == expected.shape[1:] == (20, (frame_num - 1) // 4 + 1, 6, 8)
    assert torch.equal(y[:4], expected[0, :4])  # the frame mask
    assert (y[4:] - expected[0, 4:]).abs().max().item() <= 1e-6  # the VAE latent of the conditioning video
    assert y[4:].abs().max() > 0.1


def test_first_frame_mask_layout():
    mask = first_frame_mask(81, 2, 3)
    assert mask.shape == (4, 21, 2, 3)
    assert torch.equal(mask[:, 0], torch.ones(4, 2, 3)) and torch.equal(mask[:, 1:], torch.zeros(4, 20, 2, 3))


# --- the size rule, the image, the configs ----------------------------------------------------------------------


@pytest.mark.parametrize("size, image_hw, expected", [
    ("832*480", (1080, 1920), (58, 104)),  # a 16:9 image at 480P -> 832x464
    ("832*480", (1920, 1080), (104, 58)),
    ("1280*720", (1080, 1920), (90, 160)),  # 1280x720
    ("480*832", (512, 512), (78, 78)),  # a square image at the 480P area -> 624x624
    ("64*64", (64, 96), (6, 8)),  # the tiny task: 64x48
])
def test_latent_grid_keeps_the_aspect_ratio_within_the_area(size, image_hw, expected):
    assert latent_grid(*image_hw, MAX_AREA_CONFIGS[size]) == expected
    lat_h, lat_w = expected
    assert lat_h * lat_w * 64 <= MAX_AREA_CONFIGS[size] and lat_h % 2 == lat_w % 2 == 0


def test_image_to_tensor_is_upstreams_to_tensor_then_minus_one_to_one():
    from PIL import Image

    image = Image.new("RGB", (3, 2), (255, 0, 51))
    tensor = image_to_tensor(image)
    assert tensor.shape == (3, 2, 3) and tensor.dtype == torch.float32
    assert tensor[:, 0, 0].tolist() == pytest.approx([1.0, -1.0, (51 / 255 - 0.5) / 0.5])


def test_i2v_configs():
    cfg = WAN_CONFIGS["i2v-14B"]
    assert is_image_task("i2v-14B") and is_image_task("i2v-tiny") and not is_image_task("t2v-14B")
    assert SUPPORTED_SIZES["i2v-14B"] == ("720*1280", "1280*720", "480*832", "832*480")
    assert (cfg.clip_checkpoint, cfg.clip_tokenizer, cfg.clip_dtype) == (
        "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth", "xlm-roberta-large", torch.float16)
    assert cfg.sample_neg_prompt == "镜头晃动，" + WAN_CONFIGS["t2v-14B"].sample_neg_prompt
    assert (cfg.sample_steps, cfg.sample_shift, cfg.sample_shift_480p) == (40, 5.0, 3.0)
    assert cfg.clip_vision == VIT_H_14


def test_i2v_14B_sizes():
    cfg = WAN_CONFIGS["i2v-14B"]
    with torch.device("meta"):
        model = WanModel(**{key: cfg[key] for key in ARCHITECTURE_FIELDS if key in cfg})
        clip = CLIPVisionEncoder(**cfg.clip_vision)
    assert sum(p.numel() for p in model.parameters()) == 16_394_878_784  # reference B.2
    state = model.state_dict()
    assert len(state) == 1095 + 40 * 5 + 8 and state["patch_embedding.weight"].shape == (5120, 36, 1, 2, 2)
    assert state["img_emb.proj.1.weight"].shape == (1280, 1280) and state["img_emb.proj.3.weight"].shape == (5120, 1280)
    shapes = {key: tuple(value.shape) for key, value in clip.state_dict().items()}
    assert shapes == clip_official_shapes(**VIT_H_14)
    assert shapes["visual.pos_embedding"] == (1, 257, 1280)  # 257 image tokens


def test_teacache_uses_the_published_i2v_coefficients():
    for resolution in ("480P", "720P"):
        config = wan_teacache_config("i2v-14B", 0.2, resolution=resolution)
        assert config.coefficients == PUBLISHED[f"wan2.1-i2v-{resolution}"].coefficients
        assert (config.indicator, config.forced_first, config.forced_last) == ("e", 1, 1)
        ret = wan_teacache_config("i2v-14B", 0.2, use_ret_steps=True, resolution=resolution)
        assert ret.coefficients == PUBLISHED[f"wan2.1-i2v-{resolution}+ret"].coefficients and ret.indicator == "e0"
    assert wan_teacache_config("i2v-14B", 0.2, resolution="480P").coefficients[0] == -302.331670
    with pytest.raises(ValueError, match=r"resolution=None is not allowed: .* one of \['480P', '720P'\]"):
        wan_teacache_config("i2v-14B", 0.2)


@pytest.mark.parametrize("ckpt_dir, size, expected", [
    ("./Wan2.1-I2V-14B-480P", "1280*720", "480P"),  # TeaCache's rule: the checkpoint folder's name
    ("/models/Wan2.1-I2V-14B-720P/", "832*480", "720P"),
    ("/models/i2v", "480*832", "480P"),  # no resolution in the name: the one of --size
    ("/models/i2v", "720*1280", "720P"),
])
def test_teacache_resolution_of_a_run(ckpt_dir, size, expected):
    generate = load_script("Wan2.1/generate.py")

    args = generate._parse_args(["--task", "i2v-14B", "--ckpt_dir", ckpt_dir, "--size", size])
    assert generate._teacache_resolution(args) == expected


def test_builtin_i2v_profile_is_the_provisional_40_block_list(tmp_path):
    generate = load_script("Wan2.1/generate.py")

    profile, t2v = builtin_profile("i2v-14B"), builtin_profile("t2v-14B")
    assert profile.metadata["provisional"] is True and "profile_wan.py --task i2v-14B" in profile.metadata[
        "profiling_command"]
    assert profile.config.groups[0].depth == WAN_CONFIGS["i2v-14B"].num_layers == 40
    assert profile.config.groups[0].cached_blocks == t2v.config.groups[0].cached_blocks
    image = tmp_path / "first.png"
    from wan_ckpt_image import make_image

    make_image(64, 48).save(image)
    args = generate._parse_args(["--task", "i2v-14B", "--ckpt_dir", str(tmp_path), "--size", "832*480", "--image",
                                 str(image), "--delta_cache", "--save_file", str(tmp_path / "x.mp4")])
    generate._validate_args(args)
    assert (args.sample_steps, args.sample_shift) == (40, 3.0)  # the i2v defaults at 480P
    resolved = generate.resolve_policy(args).profile
    assert resolved.config.groups[0].refresh_steps(40)[:2] == (6, 12)
    assert os.listdir(tmp_path) == ["first.png"]


def test_profiler_takes_the_image_of_i2v_tasks(tmp_path):
    profile_wan = load_script("scripts/profile_wan.py")
    from wan_ckpt_image import make_image

    image = tmp_path / "first.png"
    make_image(96, 64).save(image)
    base = ["--ckpt_dir", str(tmp_path), "--prompt", "a red circle", "--out", str(tmp_path / "p.json")]
    with pytest.raises(ValueError, match="--image is required for task i2v-tiny"):
        profile_wan.validate(profile_wan.parse_args(["--task", "i2v-tiny", *base]))
    args = profile_wan.parse_args(["--task", "i2v-tiny", *base, "--image", str(image)])
    profile_wan.validate(args)
    kwargs = profile_wan.sampling_kwargs(args)
    assert kwargs["max_area"] == 64 * 64 and kwargs["img"].size == (96, 64) and "size" not in kwargs
    with pytest.raises(ValueError, match="--image is only used by the image-to-video tasks"):
        profile_wan.validate(profile_wan.parse_args(["--task", "t2v-tiny", *base, "--image", str(image)]))
