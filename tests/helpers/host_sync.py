"""Guards against host reads of tensors: on a GPU each one is a device-to-host synchronization (no sync on quiet
steps). On the CPU the Tensor methods that copy a value to Python stand in for CUDA's sync debug mode."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from lightning.pytorch import Callback

HOST_SYNC_METHODS = ("item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy")
"""Tensor methods that copy a value to the host: on a GPU each one is a device-to-host synchronization."""

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU"))]


def intercept_host_reads(
    monkeypatch: pytest.MonkeyPatch, before: Callable[[str], None], names: Sequence[str] = HOST_SYNC_METHODS
) -> None:
    """Patch each ``torch.Tensor`` method in ``names`` to call ``before(name)`` first, then the original method.

    ``before`` may raise to refuse the read. ``monkeypatch`` undoes the patches.
    """

    def intercepted(name: str) -> Callable[..., Any]:
        original = getattr(torch.Tensor, name)

        def method(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            before(name)
            return original(self, *args, **kwargs)

        return method

    for name in names:
        monkeypatch.setattr(torch.Tensor, name, intercepted(name))


@contextmanager
def no_host_sync(device: torch.device, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail on any device-to-host copy: CUDA's sync debug mode on a GPU; on CPU, the Tensor methods that copy a value
    to Python (:data:`HOST_SYNC_METHODS`) raise."""
    if device.type == "cuda":
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return

    def refuse(name: str) -> None:
        raise AssertionError("host sync on a step that does not log")

    with monkeypatch.context() as m:
        intercept_host_reads(m, refuse)
        yield


def count_host_reads_in_hooks(
    monkeypatch: pytest.MonkeyPatch, callback: Callback, hook_names: Sequence[str]
) -> dict[str, int]:
    """Count the host reads of tensors made while one of ``callback``'s hooks ``hook_names`` runs (a CPU stand-in for
    CUDA's sync debug mode). Returns a dict whose ``"reads"`` entry grows as the Trainer calls the hooks."""
    state = {"inside": False, "reads": 0}

    def count(name: str) -> None:
        state["reads"] += state["inside"]

    intercept_host_reads(monkeypatch, count)
    for hook_name in hook_names:
        hook = getattr(callback, hook_name)

        def wrapped(*args: Any, _hook: Any = hook) -> None:
            state["inside"] = True
            try:
                _hook(*args)
            finally:
                state["inside"] = False

        setattr(callback, hook_name, wrapped)
    return state
