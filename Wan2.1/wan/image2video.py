"""Wan2.1 image-to-video pipeline: T5 + CLIP image tokens + conditioning latent -> the sampler of WanT2V -> VAE.

References: Wan2.1 wan/image2video.py (WanI2V: the size rule, the frame mask, the conditioning video of the first
frame followed by zeros, CLIP on the unresized image, CFG as two forward calls sharing the image inputs).

What is new against text-to-video (everything else is :class:`wan.text2video.WanT2V`'s, including the cache
brackets and sequence parallelism):

* the output size follows the image: its aspect ratio kept, its area at most ``max_area`` (:func:`latent_grid`);
* the DiT gets ``y = [frame mask (4 channels) | VAE latent of (resized image, then F - 1 zero frames)]`` (zero:
  mid-grey in [-1, 1]), which it concatenates to the noise along channels (16 + 4 + 16 = 36), and the CLIP image
  tokens ``clip_fea`` (both branches get the same image inputs; only the text differs).
"""

from __future__ import annotations

import math
import os
import random
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from profilingdit.files import load_component
from profilingdit.timing import GenerationReport

from .modules.clip import CLIPModel
from .text2video import WanT2V


def load_image(path: str) -> Image.Image:
    """Opens an image file as RGB, with messages that name the flag and the problem.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a folder, an unreadable file, or a file that is not a (complete) image.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"--image {path!r} does not exist")
    if os.path.isdir(path):
        raise ValueError(f"--image {path!r} is a folder: expected an image file (PNG, JPEG, ...)")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")  # decodes every pixel: a truncated file fails here
    except PermissionError as err:
        raise ValueError(f"--image {path!r} cannot be read: {err.strerror}") from err
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:  # UnidentifiedImageError: OSError
        raise ValueError(f"--image {path!r} is not a readable image file (PNG, JPEG, ...): {err}") from err


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB image -> ``[3, H, W]`` fp32 in [-1, 1] (``to_tensor`` then ``(x - 0.5) / 0.5``, as upstream)."""
    pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)  # [3, H, W] uint8
    return (pixels.float() / 255.0 - 0.5) / 0.5


def latent_grid(height: int, width: int, max_area: int, vae_stride=(4, 8, 8), patch_size=(1, 2, 2)):
    """The latent height and width for an image of ``height x width`` pixels: the aspect ratio kept, the area at
    most ``max_area``, both sides multiples of the patch (upstream's rule, e.g. 832*480 for a 16:9 image)."""
    aspect = height / width
    lat_h = round(math.sqrt(max_area * aspect) // vae_stride[1] // patch_size[1] * patch_size[1])
    lat_w = round(math.sqrt(max_area / aspect) // vae_stride[2] // patch_size[2] * patch_size[2])
    if lat_h < patch_size[1] or lat_w < patch_size[2]:
        raise ValueError(f"an image of {width}x{height} pixels (WxH) is too elongated for the area {max_area}: its "
                         "short side would be empty")
    return lat_h, lat_w


def first_frame_mask(frame_num: int, lat_h: int, lat_w: int, temporal_stride: int = 4) -> torch.Tensor:
    """The 4-channel frame mask ``[temporal_stride, (F - 1) / stride + 1, lat_h, lat_w]``: 1 for the given first
    frame, 0 for the frames to generate. Per pixel frame, the first is repeated ``stride`` times, so that every
    latent frame holds the mask of the ``stride`` pixel frames it encodes, one per channel."""
    mask = torch.zeros(frame_num + temporal_stride - 1, lat_h, lat_w)  # first frame x stride, then F - 1 frames
    mask[:temporal_stride] = 1
    return mask.view(-1, temporal_stride, lat_h, lat_w).transpose(0, 1)  # [stride, T_lat, h, w]


def conditioning_video(image: torch.Tensor, frame_num: int, height: int, width: int) -> torch.Tensor:
    """``[3, F, height, width]``: the image resized (bicubic, on the CPU as upstream), then ``F - 1`` zero frames."""
    first = F.interpolate(image[None].cpu(), size=(height, width), mode="bicubic").transpose(0, 1)  # [3, 1, h, w]
    return torch.cat([first, torch.zeros(3, frame_num - 1, height, width)], dim=1)


def conditioning_latent(vae, image: torch.Tensor, frame_num: int, height: int, width: int,
                        vae_stride=(4, 8, 8)) -> torch.Tensor:
    """``y`` of the i2v DiT: ``cat([frame mask, VAE latent of the conditioning video])`` ``[4 + z, T, h, w]``.

    Args:
        vae: a :class:`wan.modules.vae.WanVAE` (normalised latents).
        image: ``[3, H, W]`` in [-1, 1], any size.
        frame_num: frames of the video, 4n+1.
        height, width: the video size in pixels (multiples of the spatial stride).
        vae_stride: the VAE's (time, height, width) compression.
    """
    video = conditioning_video(image, frame_num, height, width).to(vae.device)
    latent = vae.encode([video])[0]  # [z, T, h, w]
    mask = first_frame_mask(frame_num, height // vae_stride[1], width // vae_stride[2], vae_stride[0]).to(latent)
    return torch.cat([mask, latent])


class WanI2V(WanT2V):
    """Image-to-video generation with a Wan2.1 i2v checkpoint folder (the T5, VAE and DiT as
    :class:`WanT2V`; plus the CLIP image encoder). Same constructor arguments as :class:`WanT2V`."""

    def __init__(self, config, checkpoint_dir: str, *args, **kwargs):
        super().__init__(config, checkpoint_dir, *args, **kwargs)
        if self.model.model_type != "i2v":
            raise ValueError(f"the DiT in {checkpoint_dir!r} is a {self.model.model_type} model: image-to-video "
                             "needs an i2v checkpoint (config.json model_type 'i2v', in_dim 36)")
        clip_path = os.path.join(checkpoint_dir, config.clip_checkpoint)
        self.clip = load_component("CLIP image encoder", clip_path, lambda: CLIPModel(
            dtype=config.clip_dtype, device=self.device, checkpoint_path=clip_path,
            tokenizer_path=os.path.join(checkpoint_dir, config.clip_tokenizer), vision_config=config.clip_vision))

    def output_size(self, image: Image.Image, max_area: int) -> tuple[int, int]:
        """(W, H) in pixels of the video generated from ``image`` with ``max_area``."""
        lat_h, lat_w = latent_grid(image.height, image.width, max_area, self.vae_stride, self.patch_size)
        return lat_w * self.vae_stride[2], lat_h * self.vae_stride[1]

    def generate(self, input_prompt: str, img: Image.Image, max_area: int = 720 * 1280, frame_num: int = 81,
                 shift: float = 5.0, sample_solver: str = "unipc", sampling_steps: int = 40,
                 guide_scale: float = 5.0, n_prompt: str = "", seed: int = -1, offload_model: bool = True,
                 progress: bool = True) -> tuple[torch.Tensor | None, GenerationReport]:
        """Generates one video whose first frame is ``img``.

        Args:
            input_prompt: the text prompt.
            img: the first frame (RGB PIL image, any size).
            max_area: the most pixels per frame (``MAX_AREA_CONFIGS[--size]``); the image's aspect ratio is kept.
            frame_num, shift, sample_solver, sampling_steps, guide_scale, n_prompt, seed, offload_model, progress:
                as :meth:`WanT2V.generate` (default 40 steps).

        Returns:
            (video [3, F, H, W] in [-1, 1] on rank 0, else None; the generation report).
        """
        start = time.perf_counter()
        seed = seed if seed >= 0 else random.randint(0, sys.maxsize)
        report = GenerationReport(seeds=[seed])
        image = image_to_tensor(img).to(self.device)  # [3, H, W]
        width, height = self.output_size(img, max_area)
        z_dim, latent_frames = self.vae.model.z_dim, (frame_num - 1) // self.vae_stride[0] + 1
        lat_h, lat_w = height // self.vae_stride[1], width // self.vae_stride[2]
        seq_len = latent_frames * lat_h * lat_w // (self.patch_size[1] * self.patch_size[2])
        generator = torch.Generator(device=self.device).manual_seed(seed)
        noise = torch.randn(z_dim, latent_frames, lat_h, lat_w, dtype=torch.float32, device=self.device,
                            generator=generator)
        context, context_null = self._encode_prompts(input_prompt, n_prompt or self.sample_neg_prompt, offload_model)
        clip_context, y = self._encode_image(image, frame_num, height, width, offload_model)
        image_inputs = {"clip_fea": clip_context, "y": [y]}
        latent = self._denoise(noise, {"context": context, **image_inputs}, {"context": context_null, **image_inputs},
                               seq_len, sample_solver, sampling_steps, shift, guide_scale, generator, report, progress)
        del noise
        return self._decode(latent, offload_model, report, start), report

    def _encode_image(self, image: torch.Tensor, frame_num: int, height: int, width: int, offload_model: bool):
        """CLIP tokens of the unresized image ``[1, L_img, image_dim]`` and the conditioning latent ``y``."""
        self.clip.model.to(self.device)
        clip_context = self.clip.visual([image[:, None, :, :]])
        if offload_model and not self.on_cpu:
            self.clip.model.cpu()
        return clip_context, conditioning_latent(self.vae, image, frame_num, height, width, self.vae_stride)
