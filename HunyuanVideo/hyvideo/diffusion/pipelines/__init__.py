"""The HunyuanVideo text-to-video denoising pipeline."""

from .pipeline_hunyuan_video import HunyuanVideoPipeline, TextConditions

__all__ = ["HunyuanVideoPipeline", "TextConditions"]
