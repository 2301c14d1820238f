"""Samplers of HunyuanVideo."""

from .scheduling_flow_match_discrete import FlowMatchDiscreteScheduler, FlowMatchDiscreteSchedulerOutput

__all__ = ["FlowMatchDiscreteScheduler", "FlowMatchDiscreteSchedulerOutput"]
