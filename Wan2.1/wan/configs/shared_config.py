"""Settings shared by every Wan2.1 task.

References: Wan2.1 wan/configs/shared_config.py (values); the sample_* defaults come from Wan2.1 generate.py.
"""

import torch
from easydict import EasyDict

wan_shared_cfg = EasyDict()

# T5 text encoder
wan_shared_cfg.t5_model = "umt5_xxl"
wan_shared_cfg.t5_dtype = torch.bfloat16
wan_shared_cfg.text_len = 512

# transformer
wan_shared_cfg.param_dtype = torch.bfloat16

# inference
wan_shared_cfg.num_train_timesteps = 1000
wan_shared_cfg.sample_fps = 16
wan_shared_cfg.sample_neg_prompt = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，"
    "丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，"
    "静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)
# generate.py defaults for text-to-video (upstream keeps them in generate.py, not in the configs)
wan_shared_cfg.sample_shift = 5.0
wan_shared_cfg.sample_steps = 50
wan_shared_cfg.sample_guide_scale = 5.0

# DiT architecture fields every text-to-video config shares
wan_shared_cfg.model_type = "t2v"  # the image-to-video configs set "i2v"
wan_shared_cfg.patch_size = (1, 2, 2)
wan_shared_cfg.freq_dim = 256
wan_shared_cfg.window_size = (-1, -1)
wan_shared_cfg.qk_norm = True
wan_shared_cfg.cross_attn_norm = True
wan_shared_cfg.eps = 1e-6
