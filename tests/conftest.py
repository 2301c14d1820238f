"""Test set-up: deterministic torch and the one-thread fixture. The packages (``wan``, ``hyvideo``,
``common_cache``, ``profilingdit``) come from the install (``pip install -r requirements.txt``); entry scripts are
loaded by path (``scripts_loader.load_script``)."""

import pytest
import torch


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
