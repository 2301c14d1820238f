"""Diffusion parts of HunyuanVideo: the flow-matching scheduler (the denoising pipeline lives beside it)."""

from .schedulers import FlowMatchDiscreteScheduler

__all__ = ["FlowMatchDiscreteScheduler"]
