"""A tiny image-to-video model in the exact Wan2.1 i2v architecture (for tests and CPU runs; no weights shipped).

Not an upstream config: the i2v architecture of Wan2.1 (DiT with ``img_emb`` and image key/values, a CLIP
visual tower, the same conditioning latent, samplers and checkpoint layout) at the sizes of ``t2v-tiny``: a DiT of
12 blocks of width 128, the tiny umT5 and Wan VAE, and a CLIP tower of 3 blocks of width 64 on 32x32 images (17
tokens). Checkpoint folders of random weights are written by the tests (tests/wan_ckpt_image.py).
"""

import torch
from easydict import EasyDict

from .wan_t2v_tiny import t2v_tiny

i2v_tiny = EasyDict(__name__="Config: Wan I2V tiny")
i2v_tiny.update({key: value for key, value in t2v_tiny.items() if key not in ("__name__", "default_ckpt_dir")})

# CLIP visual tower (file name of the official checkpoint)
i2v_tiny.clip_model = "clip_xlm_roberta_vit_h_14"
i2v_tiny.clip_dtype = torch.float16
i2v_tiny.clip_checkpoint = "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
i2v_tiny.clip_tokenizer = "xlm-roberta-large"
i2v_tiny.clip_vision = dict(image_size=32, patch_size=8, dim=64, mlp_ratio=4, out_dim=32, num_heads=4, num_layers=3,
                            eps=1e-5)

# transformer: the t2v-tiny DiT with the i2v input and image embedding
i2v_tiny.model_type = "i2v"
i2v_tiny.in_dim = 36
i2v_tiny.image_dim = 64
