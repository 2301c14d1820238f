"""Wan2.1 text-to-video 1.3B.

References: Wan2.1 wan/configs/wan_t2v_1_3B.py (values).
"""

from easydict import EasyDict

from .shared_config import wan_shared_cfg

t2v_1_3B = EasyDict(__name__="Config: Wan T2V 1.3B")
t2v_1_3B.update(wan_shared_cfg)

# T5
t2v_1_3B.t5_checkpoint = "models_t5_umt5-xxl-enc-bf16.pth"
t2v_1_3B.t5_tokenizer = "google/umt5-xxl"

# VAE
t2v_1_3B.vae_checkpoint = "Wan2.1_VAE.pth"
t2v_1_3B.vae_stride = (4, 8, 8)

# transformer (12 heads of 128)
t2v_1_3B.dim = 1536
t2v_1_3B.ffn_dim = 8960
t2v_1_3B.num_heads = 12
t2v_1_3B.num_layers = 30
