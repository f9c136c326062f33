"""``module_label``: readable ``path Type(shape)`` names of submodules and parameters, on models nobody here wrote."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm
from torchvision.models import resnet18

from lightning_tricks.callbacks._names import module_label, module_type
from lightning_tricks.models import MLPClassifier


def test_the_mlp_of_the_package_names_its_layers_by_path_type_and_shape():
    model = MLPClassifier(hidden_sizes=[1024, 256], norm="batch", dropout=0.5)
    labels = {name: module_label(model, name) for name, _ in model.named_modules() if name}
    linears = [label for label in labels.values() if " Linear(" in label]
    assert any(label.endswith("Linear(784→1024)") for label in linears), labels
    assert any(label.endswith("Linear(1024→256)") for label in linears), labels
    assert any(label.endswith("Linear(256→10)") for label in linears), labels
    assert any(label.endswith("BatchNorm1d(1024)") for label in labels.values()), labels
    assert any(label.endswith("Dropout(p=0.5)") for label in labels.values()), labels
    for name, label in labels.items():
        assert label.startswith(name + " "), "the path comes first, so labels sort by depth as the model does"


def test_torchvision_resnet18_convolutions_norms_blocks_and_parameters():
    net = resnet18(num_classes=10)
    assert module_label(net, "conv1") == "conv1 Conv2d(3→64, 7x7, stride 2)"
    assert module_label(net, "layer1.0.conv1") == "layer1.0.conv1 Conv2d(64→64, 3x3)"
    assert module_label(net, "layer2.0.downsample.0") == "layer2.0.downsample.0 Conv2d(64→128, 1x1, stride 2)"
    assert module_label(net, "bn1") == "bn1 BatchNorm2d(64)"
    assert module_label(net, "layer1.0") == "layer1.0 BasicBlock"
    assert module_label(net, "fc.weight") == "fc.weight Linear(512→10)"
    assert module_label(net, "layer1.0.bn1.bias") == "layer1.0.bn1.bias BatchNorm2d(64)"
    assert module_label(net, "") == "ResNet"


def test_other_layer_types():
    assert module_type(nn.Conv1d(4, 8, 5, dilation=2, groups=4)) == "Conv1d(4→8, 5, dilation 2, groups 4)"
    assert module_type(nn.ConvTranspose2d(8, 4, 2, stride=2)) == "ConvTranspose2d(8→4, 2x2, stride 2)"
    assert module_type(nn.LayerNorm([16, 8])) == "LayerNorm(16x8)"
    assert module_type(nn.GroupNorm(4, 32)) == "GroupNorm(4 groups, 32)"
    assert module_type(nn.Embedding(1000, 64)) == "Embedding(1000→64)"
    assert module_type(nn.Dropout2d(0.25)) == "Dropout2d(p=0.25)"
    assert module_type(nn.GELU()) == "GELU"


def test_a_parameter_of_a_module_without_shape_description_shows_its_own_shape():
    class Scale(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gain = nn.Parameter(torch.ones(3, 4))
            self.temperature = nn.Parameter(torch.tensor(1.0))

    net = nn.Sequential(nn.Linear(4, 4), Scale())
    assert module_label(net, "1.gain") == "1.gain Scale [3x4]"
    assert module_label(net, "1.temperature") == "1.temperature Scale [scalar]"


def test_parametrized_weight_norm_is_named_by_the_original_class_and_owner():
    net = nn.Sequential(nn.Flatten(), weight_norm(nn.Linear(784, 32)))
    assert type(net[1]).__name__ == "ParametrizedLinear"
    assert module_label(net, "1") == "1 Linear(784→32)"
    names = [name for name, _ in net.named_parameters()]
    assert "1.parametrizations.weight.original0" in names, names
    assert (
        module_label(net, "1.parametrizations.weight.original0") == "1.parametrizations.weight.original0 Linear(784→32)"
    )
    assert module_label(net, "1.bias") == "1.bias Linear(784→32)"


def test_wrapped_paths_are_kept():
    inner = nn.Sequential(nn.Linear(8, 2))
    wrapper = nn.Module()
    wrapper.module = inner  # what DDP's `module.` prefix looks like
    assert module_label(wrapper, "module.0.weight") == "module.0.weight Linear(8→2)"


def test_an_unknown_path_names_the_path_and_what_exists():
    net = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"`path` 'net\.1' is neither.*named_modules.*\['0', '0\.weight', '0\.bias'\]"):
        module_label(net, "net.1")
