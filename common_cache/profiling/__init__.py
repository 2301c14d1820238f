"""common_cache.profiling: let the model reveal what to cache (model-agnostic half of the profiler).

* :func:`received_attention`: attention each key receives, chunk-wise (never an N x N matrix).
* Mask providers (:class:`PCAMaskProvider` default, :class:`MaskVideoProvider`, :class:`SAM2MaskProvider`) and
  :func:`pool_to_tokens`.
* :class:`HighAttentionRule`, :func:`foreground_ratio` (R_attn), :func:`foreground_lift`.
* :class:`ProfilingRecorder`: attached like a cache, records per (block, step) statistics into
  :class:`ProfileStatistics`.
* :func:`split_blocks`, :func:`refresh_steps_from_change`, :func:`build_profile`: decisions and the profile JSON.
* :func:`plot_heatmap`, :func:`plot_step_change`: figures.
* ``common_cache.profiling.budget``: budgeted profiles (``--target_speedup``): residual trajectories, the exact
  search of every unit's refresh steps and forecast order under a block-call budget, and its check.

docs/profiling.md describes the method and the command lines; model adapters live next to each model
(``Wan2.1/wan/profiling.py``, ``HunyuanVideo/hyvideo/profiling.py``).
"""

from common_cache.profiling.attention_stats import received_attention, split_frames
from common_cache.profiling.builder import ProfileSettings, build_profile
from common_cache.profiling.decisions import (
    refresh_steps_from_change,
    schedule_drift,
    split_blocks,
    uniform_refresh_count,
)
from common_cache.profiling.figures import plot_heatmap, plot_step_change, save_figure_atomic
from common_cache.profiling.masks import (
    MASK_PROVIDERS,
    MaskProvider,
    MaskVideoProvider,
    PCAMaskProvider,
    SAM2MaskProvider,
    StepView,
    mask_iou,
    pca_foreground,
    pixel_to_latent_mask,
    pool_to_tokens,
)
from common_cache.profiling.recorder import ProfilingRecorder, single_branch
from common_cache.profiling.scores import HighAttentionRule, foreground_lift, foreground_ratio
from common_cache.profiling.statistics import STATISTICS, ProfileStatistics

__all__ = [
    "MASK_PROVIDERS",
    "STATISTICS",
    "HighAttentionRule",
    "MaskProvider",
    "MaskVideoProvider",
    "PCAMaskProvider",
    "ProfileSettings",
    "ProfileStatistics",
    "ProfilingRecorder",
    "SAM2MaskProvider",
    "StepView",
    "build_profile",
    "foreground_lift",
    "foreground_ratio",
    "mask_iou",
    "pca_foreground",
    "pixel_to_latent_mask",
    "plot_heatmap",
    "plot_step_change",
    "pool_to_tokens",
    "received_attention",
    "refresh_steps_from_change",
    "save_figure_atomic",
    "schedule_drift",
    "single_branch",
    "split_blocks",
    "split_frames",
    "uniform_refresh_count",
]
