"""Wan2.1 text-to-video and image-to-video (ProfilingDiT re-implementation)."""
