"""profilingdit.seams.Seams: attribute swaps and hooks undone exactly, last first."""

import pytest
import torch
from torch import nn

from profilingdit.seams import Seams


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 3)
        self.kernel = torch.relu  # an instance seam

    def forward(self, x):
        return self.kernel(self.project(x))

    def project(self, x):  # a method seam
        return self.linear(x)


def test_swaps_and_hooks_are_undone_last_first():
    model, x = Model(), torch.randn(2, 3)
    reference = model(x)
    seams = Seams()
    assert seams.swap(model, "kernel", torch.tanh) is torch.relu
    original_project = seams.swap(model, "project", lambda x: 2 * model.linear(x))
    assert original_project.__func__ is Model.project  # the class's method, bound
    seams.swap(model, "kernel", torch.sigmoid)  # swapped twice: undo restores the very first value
    seams.hook(model.register_forward_hook(lambda module, args, out: out + 1))
    assert len(seams) == 4
    torch.testing.assert_close(model(x), torch.sigmoid(2 * model.linear(x)) + 1)
    seams.undo()
    assert model.kernel is torch.relu and "project" not in vars(model) and not model._forward_hooks
    assert torch.equal(model(x), reference)
    seams.undo()  # a second undo does nothing
    assert len(seams) == 0 and torch.equal(model(x), reference)


def test_a_swapped_submodule_comes_back_under_its_name():
    model = Model()
    linear, keys = model.linear, list(model.state_dict())
    with Seams() as seams:
        seams.swap(model, "linear", nn.Identity())
        assert list(model.state_dict()) == []
    assert model.linear is linear and list(model.state_dict()) == keys


def test_context_manager_undoes_on_error_and_missing_seams_are_refused():
    model = Model()
    with pytest.raises(RuntimeError, match="boom"), Seams() as seams:
        seams.swap(model, "kernel", torch.tanh)
        raise RuntimeError("boom")
    assert model.kernel is torch.relu
    with pytest.raises(AttributeError, match="attention_kernal"):
        Seams().swap(model, "attention_kernal", torch.tanh)
