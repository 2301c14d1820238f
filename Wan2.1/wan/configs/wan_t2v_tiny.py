"""A tiny text-to-video model in the exact Wan2.1 architecture (the project's built-in default model).

Not an upstream config: the architecture is Wan2.1's (same modules, keys, samplers, checkpoint layout), scaled
down so that it trains and runs on a CPU. The checkpoint folder it loads by default is ``Wan2.1-T2V-tiny/`` next
to generate.py; tests write random weights of the same architecture into temporary folders.

Sizes: 64x64 pixels, 17 frames (latent 16 x 5 x 8 x 8, 80 tokens); 12 blocks of width 128 (4 heads of 32, MLP 384);
a small umT5 encoder of width 128 with prompts padded to 32 tokens; a Wan VAE of base width 32 with the official
16-channel latent (its latent statistics are folded into its 1x1x1 quant convs, so the official mean/std apply).
"""

import os

from easydict import EasyDict

from .shared_config import wan_shared_cfg

t2v_tiny = EasyDict(__name__="Config: Wan T2V tiny")
t2v_tiny.update(wan_shared_cfg)

# default checkpoint folder (the official file names inside)
t2v_tiny.default_ckpt_dir = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "Wan2.1-T2V-tiny")
t2v_tiny.t5_checkpoint = "models_t5_umt5-xxl-enc-bf16.pth"
t2v_tiny.t5_tokenizer = "google/umt5-xxl"
t2v_tiny.text_len = 32

# VAE
t2v_tiny.vae_checkpoint = "Wan2.1_VAE.pth"
t2v_tiny.vae_stride = (4, 8, 8)

# transformer (4 heads of 32)
t2v_tiny.dim = 128
t2v_tiny.ffn_dim = 384
t2v_tiny.num_heads = 4
t2v_tiny.num_layers = 12
t2v_tiny.text_dim = 128

# sampling defaults of this task (generate.py falls back to these when a flag is not given)
t2v_tiny.default_size = "64*64"
t2v_tiny.frame_num = 17
t2v_tiny.sample_fps = 8
t2v_tiny.sample_neg_prompt = ""  # the unconditional branch is the empty caption, as trained (caption dropout)
t2v_tiny.sample_shift = 3.0  # the shift of the training timestep distribution (wan/tiny/recipe.py)
