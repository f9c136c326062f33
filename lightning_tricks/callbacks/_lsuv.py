"""LSUV, the data-dependent part of :class:`~lightning_tricks.callbacks.WeightInit`, and how it calls the model.

Mishkin & Matas 2016, "All you need is a good init": starting from orthogonal weights, rescale each Linear / Conv
layer in forward order until its output variance on one batch is 1. The forward call is ``forward_fn(module, batch)``
(:func:`default_forward`: ``module(<the batch's inputs>)``), given as a callable or a dotted import path.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor, nn

from lightning_tricks._validation import invalid

ForwardFn = Callable[[nn.Module, Any], Any]


class _StopForward(Exception):
    """Raised by a forward hook once the layer of interest has produced its output."""


def _call(model: nn.Module, inputs: Any, forward_fn: ForwardFn | None) -> Any:
    return model(inputs) if forward_fn is None else forward_fn(model, inputs)


@torch.no_grad()
def _output_variance(model: nn.Module, layer: nn.Module, inputs: Any, forward_fn: ForwardFn | None) -> float:
    captured: list[Tensor] = []

    def hook(_module: nn.Module, _args: Any, output: Tensor) -> None:
        captured.append(output.detach().float())
        raise _StopForward  # the rest of the network is not needed

    handle = layer.register_forward_hook(hook)
    try:
        _call(model, inputs, forward_fn)
    except _StopForward:
        pass
    finally:
        handle.remove()
    if not captured:
        return float("nan")
    return captured[0].var().item()  # host sync: LSUV runs once, before training


@torch.no_grad()
def lsuv_(
    model: nn.Module,
    inputs: Any,
    layers: Sequence[tuple[str, nn.Module]],
    tolerance: float = 0.1,
    max_iters: int = 10,
    forward_fn: ForwardFn | None = None,
) -> dict[str, float]:
    """Layer-sequential unit-variance scaling (Mishkin & Matas 2016), in place.

    In forward order, each layer's weight ``w0`` is set to ``w0 * s`` with ``s`` updated ``s /= sqrt(var)`` until the
    variance of the layer's output on ``model(inputs)`` (or ``forward_fn(model, inputs)``) is within ``tolerance`` of
    1 (at most ``max_iters`` rescalings). Call it on already (orthogonally) initialized layers. Returns each layer's
    final scale ``s``; :func:`apply_scales_` reproduces the result bit for bit on an identical copy of the weights.

    Raises:
        RuntimeError: When none of ``layers`` ran in the forward call (e.g. hooks do not fire inside a compiled graph:
            call it under :func:`~lightning_tricks.callbacks._compiled.call_eagerly`).
    """
    order: list[nn.Module] = []

    def record(module: nn.Module, _args: Any, _output: Any) -> None:
        if module not in order:
            order.append(module)

    handles = [layer.register_forward_hook(record) for _, layer in layers]
    try:
        _call(model, inputs, forward_fn)
    finally:
        for handle in handles:
            handle.remove()
    if layers and not order:  # else LSUV would silently leave every weight unscaled
        raise RuntimeError(
            f"LSUV: none of the {len(layers)} selected layers ran in the forward call, so none can be rescaled"
            " (is the forward compiled, or does it not reach these layers?)."
        )
    names = {id(layer): name for name, layer in layers}
    scales: dict[str, float] = {}
    for layer in order:
        start, scale = layer.weight.detach().clone(), 1.0
        for iteration in range(max_iters + 1):
            variance = _output_variance(model, layer, inputs, forward_fn)
            if abs(variance - 1.0) <= tolerance or not math.isfinite(variance) or variance <= 0.0:
                break
            if iteration == max_iters:
                rank_zero_warn(
                    f"LSUV: layer `{names[id(layer)]}` output variance {variance:.3g} after {max_iters} steps"
                )
                break
            scale /= math.sqrt(variance)
            layer.weight.copy_(start * scale)
        scales[names[id(layer)]] = scale
    return scales


@torch.no_grad()
def apply_scales_(layers: Sequence[tuple[str, nn.Module]], scales: Mapping[str, float]) -> None:
    """Multiply each named layer's weight by its LSUV scale (the same operation :func:`lsuv_` ends with)."""
    for name, layer in layers:
        if name in scales:
            layer.weight.copy_(layer.weight * scales[name])


def batch_inputs(batch: Any) -> Any:
    """LSUV's default input: the batch itself (a tensor), its first element (tuple / list) or first value (dict)."""
    if isinstance(batch, Mapping):
        return next(iter(batch.values()))
    if isinstance(batch, (list, tuple)):
        return batch[0]
    return batch


def default_forward(module: nn.Module, batch: Any) -> Any:
    """LSUV's default ``lsuv_forward_fn``: ``module(batch_inputs(batch))``."""
    return module(batch_inputs(batch))


def resolve_forward_fn(value: ForwardFn | str | None) -> ForwardFn:
    """``value`` itself, the callable at a dotted import path (``"package.module.function"``), or the default."""
    if value is None:
        return default_forward
    if callable(value):
        return value
    if isinstance(value, str) and "." in value:
        module_name, _, attribute = value.rpartition(".")
        try:
            found = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as err:
            raise ValueError(
                f"Expected argument `lsuv_forward_fn` to be a callable `(module, batch) -> output` or the dotted import"
                f" path of one, but could not import {value!r}: {err}"
            ) from err
        if callable(found):
            return found
    allowed = "a callable `(module, batch) -> output` or the dotted import path of one"
    allowed += " (e.g. 'my_project.init.run_generator')"
    raise invalid("lsuv_forward_fn", allowed, value)
