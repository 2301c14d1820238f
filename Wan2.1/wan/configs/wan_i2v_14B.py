"""Wan2.1 image-to-video 14B (the 480P and 720P checkpoints share this config).

References: Wan2.1 wan/configs/wan_i2v_14B.py (values) and generate.py (the i2v sampling defaults).
"""

import torch
from easydict import EasyDict

from ..modules.clip import VIT_H_14
from .shared_config import wan_shared_cfg

i2v_14B = EasyDict(__name__="Config: Wan I2V 14B")
i2v_14B.update(wan_shared_cfg)
i2v_14B.sample_neg_prompt = "镜头晃动，" + i2v_14B.sample_neg_prompt

# T5
i2v_14B.t5_checkpoint = "models_t5_umt5-xxl-enc-bf16.pth"
i2v_14B.t5_tokenizer = "google/umt5-xxl"

# CLIP (only the visual tower runs; the tokenizer folder belongs to the unused text tower)
i2v_14B.clip_model = "clip_xlm_roberta_vit_h_14"
i2v_14B.clip_dtype = torch.float16
i2v_14B.clip_checkpoint = "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
i2v_14B.clip_tokenizer = "xlm-roberta-large"
i2v_14B.clip_vision = dict(VIT_H_14)

# VAE
i2v_14B.vae_checkpoint = "Wan2.1_VAE.pth"
i2v_14B.vae_stride = (4, 8, 8)

# transformer (40 heads of 128); in_dim 36 = noise 16 + frame mask 4 + image latent 16
i2v_14B.model_type = "i2v"
i2v_14B.in_dim = 36
i2v_14B.image_dim = VIT_H_14["dim"]
i2v_14B.dim = 5120
i2v_14B.ffn_dim = 13824
i2v_14B.num_heads = 40
i2v_14B.num_layers = 40

# generate.py defaults of the i2v task: 40 steps; shift 5.0, or 3.0 at the 480P sizes 832*480 and 480*832
i2v_14B.sample_steps = 40
i2v_14B.sample_shift_480p = 3.0
