"""Names and grouping of layers and parameters: readable labels for logged keys and chart titles, and which
parameters belong to which layer and optimizer (the "readable at any size" rule of the design).

``net.1/mean`` says nothing about which layer it is; ``net.1 Linear(784→1024)`` does. :func:`module_label` names a
submodule or a parameter of a model by its path (as ``named_modules`` / ``named_parameters`` give it) followed by its
type and shape:

- ``nn.Linear``: ``Linear(784→1024)``;
- ``nn.Conv1d/2d/3d`` and the transposed ones: ``Conv2d(1→64, 3x3, stride 2)`` (stride, dilation and groups only when
  not 1);
- batch norms, ``LayerNorm``, ``GroupNorm``: ``BatchNorm1d(1024)``, ``LayerNorm(1024)``, ``GroupNorm(32 groups, 64)``;
- ``nn.Embedding``: ``Embedding(10000→256)``; dropouts: ``Dropout(p=0.5)``;
- anything else: its class name (``ReLU``, ``BasicBlock``, ``Sequential``).

A parameter is named after the module that owns it: ``net.1.weight Linear(784→1024)``; a parameter of a module whose
type gives no shape also shows its own (``scale [64]``). Parametrized modules (``torch.nn.utils.parametrize``, e.g.
``weight_norm``) are named by their original class, and the ``parametrizations.<name>.original<k>`` part of a path is
resolved to the module that holds it. Wrappers keep their paths (``_orig_mod.`` of ``torch.compile``, ``module.`` of
DDP): the label names what the optimizer and the hooks see.

Grouping: a parameter's layer is the module that owns it (:func:`layer_name`); :func:`group_indices` groups parameter
names by layer and :func:`named_optimizer_params` lists the named parameters an optimizer updates.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.nn.utils import parametrize


def _pair(values: int | tuple[int, ...]) -> str:
    values = values if isinstance(values, tuple) else (values,)
    return "x".join(str(v) for v in values)


def _short(values: int | tuple[int, ...]) -> str:
    """A stride or dilation: one number when it is the same along every axis."""
    values = values if isinstance(values, tuple) else (values,)
    return str(values[0]) if len(set(values)) == 1 else _pair(values)


def _not_one(values: int | tuple[int, ...] | str) -> bool:
    if isinstance(values, str):
        return False
    return any(v != 1 for v in (values if isinstance(values, tuple) else (values,)))


def module_type(module: nn.Module) -> str:
    """``Linear(784→1024)``-style description of one module: its class and, for the common layers, their shapes."""
    cls = type(module)
    if parametrize.is_parametrized(module):  # `ParametrizedLinear` -> `Linear`
        cls = cls.__bases__[0]
    name = cls.__name__
    if isinstance(module, nn.Linear):
        return f"{name}({module.in_features}→{module.out_features})"
    if isinstance(module, nn.modules.conv._ConvNd):
        details = [f"{module.in_channels}→{module.out_channels}", _pair(module.kernel_size)]
        if _not_one(module.stride):
            details.append(f"stride {_short(module.stride)}")
        if _not_one(module.dilation):
            details.append(f"dilation {_short(module.dilation)}")
        if module.groups != 1:
            details.append(f"groups {module.groups}")
        return f"{name}({', '.join(details)})"
    if isinstance(module, nn.modules.batchnorm._NormBase):
        return f"{name}({module.num_features})"
    if isinstance(module, nn.LayerNorm):
        return f"{name}({_pair(tuple(module.normalized_shape))})"
    if isinstance(module, nn.GroupNorm):
        return f"{name}({module.num_groups} groups, {module.num_channels})"
    if isinstance(module, nn.Embedding):
        return f"{name}({module.num_embeddings}→{module.embedding_dim})"
    if isinstance(module, nn.modules.dropout._DropoutNd):
        return f"{name}(p={module.p:g})"
    return name


def _describes_shape(module: nn.Module) -> bool:
    return (
        module_type(module)
        != (type(module).__bases__[0] if parametrize.is_parametrized(module) else type(module)).__name__
    )


def module_label(root: nn.Module, path: str) -> str:
    """``"<path> <type(shape)>"`` for the submodule or parameter at ``path`` of ``root``.

    Args:
        root: the model (the module the path is relative to).
        path: a name from ``root.named_modules()`` or ``root.named_parameters()`` (``""`` is ``root`` itself).

    Returns:
        e.g. ``"net.1 Linear(784→1024)"``, ``"net.1.bias Linear(784→1024)"``, ``"layer1.0 BasicBlock"``, or
        ``"Sequential"`` for ``path=""``.

    Raises:
        ValueError: ``path`` names neither a submodule nor a parameter of ``root`` (the message lists some that exist).

    Example::

        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(784, 1024), nn.ReLU())
        >>> module_label(net, "1"), module_label(net, "1.weight"), module_label(net, "2")
        ('1 Linear(784→1024)', '1.weight Linear(784→1024)', '2 ReLU')
    """
    modules = dict(root.named_modules())
    if path in modules:
        return f"{path} {module_type(modules[path])}".strip()
    parameters = dict(root.named_parameters())
    if path not in parameters:
        known = [name for name in (*modules, *parameters) if name][:12]
        raise ValueError(
            f"`path` {path!r} is neither a submodule nor a parameter of {type(root).__name__}; "
            f"pass a name from named_modules() or named_parameters(), e.g. {known}."
        )
    return _parameter_label(path, parameters[path], modules)


def _parameter_label(path: str, param: nn.Parameter, modules: dict[str, nn.Module]) -> str:
    owner_path, _, _ = path.rpartition(".")
    if ".parametrizations." in f".{path}":  # `net.1.parametrizations.weight.original0`: owned by `net.1`
        owner_path = f".{path}".split(".parametrizations.")[0].lstrip(".")
    owner = modules[owner_path]
    label = f"{path} {module_type(owner)}"
    if not _describes_shape(owner):
        label += f" [{_pair(tuple(param.shape)) or 'scalar'}]"
    return label


def parameter_labels(root: nn.Module) -> dict[str, str]:
    """:func:`module_label` of every named submodule and parameter of ``root``, keyed by path, in one pass (for the
    monitors, which name many tensors every logging step)."""
    modules = dict(root.named_modules())
    labels = {path: f"{path} {module_type(module)}" for path, module in modules.items() if path}
    labels.update({path: _parameter_label(path, param, modules) for path, param in root.named_parameters()})
    return labels


def layer_name(param_name: str) -> str:
    """The module that owns a parameter: ``"net.0.weight"`` -> ``"net.0"``; a root-level parameter -> ``"<root>"``."""
    head, _, _ = param_name.rpartition(".")
    return head or "<root>"


def group_indices(names: Iterable[str]) -> dict[str, list[int]]:
    """``{layer: [indices of its parameters]}`` for parameter names, in first-seen order."""
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        groups.setdefault(layer_name(name), []).append(i)
    return groups


def named_optimizer_params(
    pl_module: nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> list[tuple[str, nn.Parameter]]:
    """``(name, param)`` for the trainable parameters of ``pl_module`` that ``optimizer`` updates (all if ``None``).

    Names are those of ``pl_module.named_parameters()`` (no DDP ``module.`` prefix); order follows the module.
    """
    named = [(n, p) for n, p in pl_module.named_parameters() if p.requires_grad]
    if optimizer is None:
        return named
    in_opt = {id(p) for group in optimizer.param_groups for p in group["params"]}
    return [(n, p) for n, p in named if id(p) in in_opt]
