"""Fidelity metrics of cached videos against their full-compute references (:mod:`profilingdit.metrics.video`;
LPIPS with an AlexNet backbone, without torchvision: :mod:`profilingdit.metrics.lpips_alex`)."""
