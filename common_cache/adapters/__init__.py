"""Model adapters: one entry point that puts a cache policy on our models and on diffusers models and pipelines.

* :func:`enable_cache`, :func:`disable_cache`, :func:`enabled_policy` (:mod:`common_cache.adapters.api`);
* the registry of diffusers transformers: :data:`DIFFUSERS_MODELS`, :class:`DiffusersModelSpec`,
  :class:`StackSpec`, :func:`register_diffusers_model` (:mod:`common_cache.adapters.registry`);
* :data:`BRANCHES`: diffusers ``cache_context`` names -> our guidance branch names.
"""

from common_cache.adapters.api import disable_cache, enable_cache, enabled_policy
from common_cache.adapters.pipeline import BRANCHES
from common_cache.adapters.registry import (
    DIFFUSERS_MODELS,
    DiffusersModelSpec,
    StackSpec,
    diffusers_spec,
    register_diffusers_model,
)

__all__ = [
    "BRANCHES",
    "DIFFUSERS_MODELS",
    "DiffusersModelSpec",
    "StackSpec",
    "diffusers_spec",
    "disable_cache",
    "enable_cache",
    "enabled_policy",
    "register_diffusers_model",
]
