"""HunyuanVideo text-to-video (ProfilingDiT re-implementation)."""
