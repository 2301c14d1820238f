"""Test set-up: the model folders are run from inside (like the official repos), so put them (and the scripts) on
sys.path."""

import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for sub in ("", "Wan2.1", "HunyuanVideo", "scripts"):
    path = os.path.join(ROOT, sub)
    if path not in sys.path:
        sys.path.insert(0, path)


@pytest.fixture(autouse=True)
def _deterministic_torch():
    """Every test starts from the same RNG state and the CI thread count."""
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of many tiny ops: on a shared 2-core machine two threads stall each other on
    small matrices and convolutions (use with ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
