"""Built-in cache profiles of HunyuanVideo, used by ``--delta_cache``.

* ``hunyuan-video-t2v-720p.json``: the paper's configuration for the 720p T2V checkpoint (method.md 2.3-2.4):
  double stream, blocks 6..19 as one span refreshed every 6 steps; single stream, the 24 background blocks
  0,2,4,5,6,7,10-21,23,25,26,27,31,33 refreshed on steps 6,18,26,32,38,42,46,48; warm-up 6 in both. Ideal speedup
  3000 / 1632 = 1.84x at 50 steps. These are the paper's constants, not a profile we re-measured.

Both official ``--model`` configs have the same depths (20 double, 40 single blocks); the profile was made on the
guidance-distilled checkpoint, which is the only one released.
"""

from __future__ import annotations

import os

from common_cache import CacheProfile

PROFILE_DIR = os.path.dirname(os.path.abspath(__file__))
BUILTIN_PROFILES = {
    "HYVideo-T/2-cfgdistill": "hunyuan-video-t2v-720p.json",
    "HYVideo-T/2": "hunyuan-video-t2v-720p.json",
}


def builtin_profile_path(model: str) -> str | None:
    """The shipped profile file for a ``--model`` name, or None when there is none."""
    name = BUILTIN_PROFILES.get(model)
    return os.path.join(PROFILE_DIR, name) if name else None


def builtin_profile(model: str) -> CacheProfile | None:
    """The shipped profile of ``model``, or None when there is none."""
    path = builtin_profile_path(model)
    return CacheProfile.load(path) if path else None
