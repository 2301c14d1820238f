"""Wan2.1 text-to-video 14B.

References: Wan2.1 wan/configs/wan_t2v_14B.py (values).
"""

from easydict import EasyDict

from .shared_config import wan_shared_cfg

t2v_14B = EasyDict(__name__="Config: Wan T2V 14B")
t2v_14B.update(wan_shared_cfg)

# T5
t2v_14B.t5_checkpoint = "models_t5_umt5-xxl-enc-bf16.pth"
t2v_14B.t5_tokenizer = "google/umt5-xxl"

# VAE
t2v_14B.vae_checkpoint = "Wan2.1_VAE.pth"
t2v_14B.vae_stride = (4, 8, 8)

# transformer (40 heads of 128)
t2v_14B.dim = 5120
t2v_14B.ffn_dim = 13824
t2v_14B.num_heads = 40
t2v_14B.num_layers = 40
