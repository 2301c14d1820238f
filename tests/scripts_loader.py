"""Loading an entry script (``Wan2.1/generate.py``, ``scripts/profile_wan.py`` ...) as a module, by its file path.

The entry scripts are not packages: they live where users run them. Their library code comes from the installed
packages (``wan``, ``hyvideo``, ``common_cache``, ``profilingdit``), so loading one changes nothing on the import path.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from types import ModuleType

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_script(relative_path: str, name: str | None = None) -> ModuleType:
    """Imports the script at ``relative_path`` (from the repository root) once, under ``name`` (default: its file
    name without ``.py``), and returns the module; later calls return the same module.

    Args:
        relative_path: e.g. ``"Wan2.1/generate.py"``.
        name: the module name to register in ``sys.modules``.
    """
    name = name or os.path.splitext(os.path.basename(relative_path))[0]
    path = os.path.join(ROOT, relative_path)
    module = sys.modules.get(name)
    if module is not None and os.path.abspath(getattr(module, "__file__", "") or "") == path:
        return module
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before running it, as an import does (dataclasses and pickling look it up)
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module
