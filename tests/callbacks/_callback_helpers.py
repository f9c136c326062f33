"""Helpers shared by the callback tests: a quiet tiny Trainer, fixed random data, ``metrics.csv`` readers, per-rank
result files for ``ddp_spawn`` runs, a LightningCLI round trip and host-sync guards.

Test modules import it as ``from _callback_helpers import ...``: pytest's default ``prepend`` import mode puts
``tests/callbacks`` (a folder without ``__init__.py``) on ``sys.path`` before it imports a test module from there. The
module name is unique under ``tests/`` so that it cannot be shadowed by another folder's helper module.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.demos.boring_classes import BoringModel
from torch.utils.data import DataLoader, TensorDataset

CallbackT = TypeVar("CallbackT", bound=Callback)

# --------------------------------------------------------------------------------------------------------- Trainer

TRAIN_ONLY_ON_CPU: dict[str, Any] = {
    "accelerator": "cpu",
    "devices": 1,
    "limit_val_batches": 0,
    "enable_checkpointing": False,
}
"""Trainer options for a single-process CPU run without validation and without the default checkpoint callback."""

WITH_VALIDATION: dict[str, Any] = {
    "limit_train_batches": 2,
    "limit_val_batches": 1,
    "num_sanity_val_steps": 0,
    "deterministic": True,
}
"""Trainer options for two training batches and one validation batch per epoch, no sanity check, deterministic."""


def tiny_trainer(root: str | Path, callbacks: Callback | list[Callback] | None = None, **kwargs: Any) -> Trainer:
    """A quiet Trainer for one epoch under ``root``: no logger, no progress bar, no model summary.

    ``kwargs`` add Trainer options or override these. A test module binds its own defaults once with
    ``functools.partial(tiny_trainer, ...)``; keywords given at the call still win over the bound ones.
    """
    options: dict[str, Any] = {
        "default_root_dir": root,
        "max_epochs": 1,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    if callbacks is not None:
        options["callbacks"] = [callbacks] if isinstance(callbacks, Callback) else callbacks
    options.update(kwargs)
    return Trainer(**options)


# ------------------------------------------------------------------------------------------------------------ data


def fixed_inputs(n: int = 64, seed: int = 0, scale: float = 1.0, features: int = 32) -> torch.Tensor:
    """``n`` rows of ``features`` N(0, 1) values times ``scale``, from their own generator: the same on every call."""
    x = torch.randn(n, features, generator=torch.Generator().manual_seed(seed))
    return x if scale == 1.0 else x * scale


def fixed_loader(
    n: int = 64, batch_size: int = 8, seed: int = 0, scale: float = 1.0, tensor_dataset: bool = False
) -> DataLoader:
    """An unshuffled loader over :func:`fixed_inputs` (BoringModel's input size, 32 features).

    Batches are plain tensors, or one-element lists ``[x]`` with ``tensor_dataset=True``.
    """
    data = fixed_inputs(n, seed, scale)
    return DataLoader(TensorDataset(data) if tensor_dataset else data, batch_size=batch_size)


# ---------------------------------------------------------------------------------------------------- metrics.csv


def metrics_rows(log_dir: str | Path, key: str | None = None) -> list[dict[str, str]]:
    """The rows of ``log_dir/metrics.csv`` (a CSVLogger's file); with ``key``, only the rows where it has a value."""
    with open(Path(log_dir) / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return rows if key is None else [row for row in rows if row.get(key)]


# ------------------------------------------------------------------------------------- per-rank files (ddp_spawn)
# Under ddp_spawn the objects in the test process are not updated by the workers: each rank writes what it saw.


def write_rank_json(folder: str | Path, rank: int, record: Any) -> None:
    """Write ``record`` as JSON to ``folder/rank<rank>.json``."""
    (Path(folder) / f"rank{rank}.json").write_text(json.dumps(record))


def read_rank_json(folder: str | Path, world_size: int = 2) -> list[Any]:
    """The records that ranks ``0 .. world_size - 1`` wrote with :func:`write_rank_json`, in rank order."""
    return [json.loads((Path(folder) / f"rank{r}.json").read_text()) for r in range(world_size)]


def write_rank_text(folder: str | Path, rank: int, text: str, prefix: str = "rank") -> None:
    """Write ``text`` to ``folder/<prefix><rank>.txt``."""
    (Path(folder) / f"{prefix}{rank}.txt").write_text(text)


def read_rank_texts(folder: str | Path, prefix: str = "rank", world_size: int = 2) -> list[str]:
    """The texts that ranks ``0 .. world_size - 1`` wrote with :func:`write_rank_text`, in rank order."""
    return [(Path(folder) / f"{prefix}{r}.txt").read_text() for r in range(world_size)]


def tensors_digest(tensors: Iterable[torch.Tensor]) -> str:
    """SHA-256 of the tensors' bytes, in order: equal digests mean bitwise-equal tensors."""
    return hashlib.sha256(b"".join(t.detach().cpu().numpy().tobytes() for t in tensors)).hexdigest()


# ---------------------------------------------------------------------------------------------------- LightningCLI


def callback_from_cli(cls: type[CallbackT], args: list[str]) -> CallbackT:
    """Parse ``args`` with ``LightningCLI(BoringModel, run=False)`` and return the one ``cls`` callback it built."""
    cli = LightningCLI(BoringModel, run=False, args=args)
    (callback,) = [c for c in cli.trainer.callbacks if isinstance(c, cls)]
    return callback


# -------------------------------------------------------------------------------------------------- host syncs

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
