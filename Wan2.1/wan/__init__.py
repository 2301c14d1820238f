"""Wan2.1 text-to-video (ProfilingDiT re-implementation)."""
