"""Run a ``torch.compile``d network eagerly for a moment, so that forward hooks on its layers fire.

A compiled graph does not call the Python forward hooks that are registered on its inner modules after compilation
(Dynamo does not guard on them), so a callback that watches layers through hooks would see nothing. These helpers
find the three ways a Lightning project compiles a network and undo each one until the returned ``restore`` is
called, leaving the compiled code and its cache untouched:

- a child ``torch.compile(net)`` (a ``torch._dynamo.OptimizedModule`` holding ``_orig_mod``): the parent's child is
  swapped for ``_orig_mod``;
- ``net.compile()`` in place (``nn.Module._compiled_call_impl``): the compiled call is set aside;
- ``trainer.fit(torch.compile(model))``: Lightning's ``from_compiled`` replaced ``forward`` and the ``*_step``
  methods of the LightningModule by compiled ones (``_compiler_ctx``); the originals are put back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

_STEP_METHODS = ("forward", "training_step", "validation_step", "test_step", "predict_step")


def _is_optimized(module: nn.Module) -> bool:
    return hasattr(module, "_orig_mod") and type(module).__name__ == "OptimizedModule"


def run_eagerly(module: nn.Module) -> Callable[[], None]:
    """Make every compiled part of ``module`` run eagerly (its original modules, their hooks firing).

    Returns:
        ``restore()``, which puts every compiled part back as it was.
    """
    undo: list[Callable[[], None]] = []
    ctx = getattr(module, "_compiler_ctx", None)
    if ctx is not None:  # Lightning's from_compiled: compiled methods set on the instance
        compiled = {name: module.__dict__[name] for name in _STEP_METHODS if name in module.__dict__}
        for name in compiled:
            object.__setattr__(module, name, ctx[f"original_{name}"])
        undo.append(lambda: [object.__setattr__(module, n, m) for n, m in compiled.items()])
    stack = [module]
    while stack:
        parent = stack.pop()
        if getattr(parent, "_compiled_call_impl", None) is not None:  # nn.Module.compile() in place
            impl = parent._compiled_call_impl
            parent._compiled_call_impl = None
            undo.append(lambda p=parent, i=impl: setattr(p, "_compiled_call_impl", i))
        for name, child in list(parent._modules.items()):
            if child is not None and _is_optimized(child):  # a torch.compile(child) wrapper
                parent._modules[name] = child._orig_mod
                undo.append(lambda p=parent, n=name, c=child: p._modules.__setitem__(n, c))
                child = child._orig_mod
            if child is not None:
                stack.append(child)

    def restore() -> None:
        for step in reversed(undo):
            step()
        undo.clear()

    return restore


def strip_compiled_name(name: str) -> str:
    """A ``named_modules`` name without the ``_orig_mod`` parts a ``torch.compile`` wrapper adds (``net._orig_mod.0``
    -> ``net.0``), so logged names are the same compiled or not."""
    return ".".join(part for part in name.split(".") if part != "_orig_mod")


def call_eagerly(module: nn.Module, fn: Callable[[], Any]) -> Any:
    """``fn()`` with every compiled part of ``module`` running eagerly (see :func:`run_eagerly`)."""
    restore = run_eagerly(module)
    try:
        return fn()
    finally:
        restore()
