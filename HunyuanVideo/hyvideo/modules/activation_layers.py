"""Activation factory used by the HunyuanVideo transformer.

References: Tencent/HunyuanVideo hyvideo/modules/activation_layers.py (names of the activation types).
"""

from collections.abc import Callable

import torch.nn as nn

# Factories rather than instances: every layer that needs an activation builds its own module.
_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "gelu": nn.GELU,
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "relu": nn.ReLU,
    "silu": nn.SiLU,
}


def get_activation_layer(act_type: str) -> Callable[[], nn.Module]:
    """Returns a factory for the activation named `act_type`.

    Args:
        act_type: one of "gelu", "gelu_tanh", "relu", "silu".

    Returns:
        A zero-argument callable that builds the activation module.
    """
    if act_type not in _ACTIVATIONS:
        raise ValueError(f"act_type={act_type!r} is not supported; allowed: {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[act_type]
