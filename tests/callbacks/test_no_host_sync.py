"""No host-device synchronization on non-logging steps, checked by CUDA itself, plus a CPU proxy of that check.

``torch.cuda.set_sync_debug_mode("error")`` makes every synchronizing CUDA call (``.item()``, ``.tolist()``, a
device-to-host copy, ``nonzero``, ``cudaStreamSynchronize``) raise. A helper callback switches it on at the very
start of every training step that is NOT a logging step and off at its very end, so any sync that a callback (or the
loop) makes on such a step fails the fit with a traceback pointing at it. Logging steps may sync (once), by design.

Set-up that keeps Lightning itself sync-free on those steps: the batches are already on the GPU (no pageable
host-to-device copy), no progress bar, no checkpointing, no validation, a module that logs nothing itself.
``InputRangeCheck``'s single deliberate sync is placed on a logging step (``check_batches=10``, interval 5).

The CUDA test runs only with a GPU. The CPU proxy runs everywhere: on the same quiet steps it makes the Tensor
methods that sync on a GPU (``item``, ``tolist``, ``__bool__``, ``__float__``, ``__int__``, ``numpy``, ``nonzero``,
``cpu``) raise, which catches the usual mistakes (``if tensor:``, ``float(loss)``, ``.item()``) without a GPU.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from helpers.host_sync import HOST_SYNC_METHODS, intercept_host_reads
from helpers.trainers import tiny_trainer
from lightning.pytorch.loggers import CSVLogger
from torch import nn

from lightning_tricks.callbacks import gradient_clipping
from lightning_tricks.callbacks._logging import is_logging_step

_SYNCING_METHODS = (*HOST_SYNC_METHODS, "nonzero")
LOG_EVERY = 5
MONITORS: list[tuple[str, dict[str, Any]]] = [
    ("WeightNormMonitor", {}),
    ("GradientHealth", {}),
    ("ActivationStats", {}),
    ("InputRangeCheck", {"check_batches": 2 * LOG_EVERY}),
]
OTHERS: list[tuple[str, dict[str, Any]]] = [
    ("WeightInit", {"scheme": "kaiming_normal"}),
    ("GradientClipping", {"mode": "norm", "threshold": 1.0}),
    ("WeightDecay", {"coefficient": 1e-4, "mode": "l2"}),
    ("LRDecay", {"mode": "cosine", "interval": "step", "warmup": 3, "total": 40}),
    ("EMA", {"decay": 0.99}),
]


def _build(specs: list[tuple[str, dict[str, Any]]]) -> list[pl.Callback]:
    """Instantiate the named package callbacks; those not written yet are left out (imported lazily)."""
    package = importlib.import_module("lightning_tricks.callbacks")
    built = []
    for name, kwargs in specs:
        try:
            cls = getattr(package, name)
        except (ImportError, AttributeError):
            continue
        built.append(cls(**kwargs))
    return built


class _GuardQuietSteps:
    """Two callbacks: ``first`` calls ``on()`` at the start of each non-logging step, ``last`` calls ``off()``."""

    def __init__(self, on: Callable[[], None], off: Callable[[], None]) -> None:
        self.quiet_steps = 0
        self.logging_steps = 0
        owner = self

        class First(pl.Callback):
            def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
                if is_logging_step(trainer, trainer.log_every_n_steps):
                    owner.logging_steps += 1
                else:
                    owner.quiet_steps += 1
                    on()

        class Last(pl.Callback):
            def on_train_batch_end(self, *args: Any) -> None:
                off()

            def on_exception(self, *args: Any) -> None:
                off()

        self.first, self.last = First(), Last()


class _Net(pl.LightningModule):
    def __init__(self, steps: int, device: str) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 2))
        gen = torch.Generator().manual_seed(0)
        self.batches = [
            (
                (torch.rand(16, 32, generator=gen) * 2 - 1).to(device),
                torch.randint(0, 2, (16,), generator=gen).to(device),
            )
            for _ in range(4)
        ]
        self.steps = steps

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)

    def train_dataloader(self) -> Any:
        batches, steps = self.batches, self.steps

        class Batches:  # a sized iterable of ready on-device batches (a plain list would read as several loaders)
            def __len__(self) -> int:
                return steps

            def __iter__(self) -> Any:
                return (batches[i % len(batches)] for i in range(steps))

        return Batches()


def _fit(tmp_path: Path, which: str, precision: str, device: str, guard: _GuardQuietSteps) -> pl.Trainer:
    callbacks = _build(MONITORS) + (_build(OTHERS) if which == "all" else [])
    assert callbacks, "no package callback could be built"
    trainer = tiny_trainer(
        tmp_path,
        [guard.first, *callbacks, guard.last],
        accelerator=device,
        devices=1,
        precision=precision,
        max_epochs=2,
        log_every_n_steps=LOG_EVERY,
        logger=CSVLogger(tmp_path),
        enable_checkpointing=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(_Net(steps=20, device=device))
    assert guard.quiet_steps == 32 and guard.logging_steps == 8  # 40 steps, every 5th logs
    metrics = (Path(trainer.logger.log_dir) / "metrics.csv").read_text()
    assert "activation/" in metrics and "input/min" in metrics  # the monitors did run on the logging steps
    return trainer


CASES = [("monitors", "32-true"), ("all", "32-true"), ("all", "bf16-mixed")]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize(("which", "precision"), CASES)
def test_no_cuda_sync_on_non_logging_steps(tmp_path: Path, which: str, precision: str) -> None:
    guard = _GuardQuietSteps(lambda: torch.cuda.set_sync_debug_mode("error"), lambda: torch.cuda.set_sync_debug_mode(0))
    try:
        _fit(tmp_path, which, precision, "cuda", guard)
    finally:
        torch.cuda.set_sync_debug_mode(0)


@pytest.mark.parametrize(("which", "precision"), CASES)
def test_no_sync_calls_on_non_logging_steps_cpu_proxy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, which: str, precision: str
) -> None:
    quiet = {"on": False}
    caught: list[str] = []

    def refuse_when_quiet(name: str) -> None:
        if quiet["on"]:
            caught.append(name)
            raise RuntimeError(f"host-device sync on a non-logging step: Tensor.{name}")

    intercept_host_reads(monkeypatch, refuse_when_quiet, _SYNCING_METHODS)
    # the accelerators' code path: on the CPU itself GradientClipping reads its clip factor (free there)
    monkeypatch.setattr(gradient_clipping, "reads_are_free", lambda device: False)
    guard = _GuardQuietSteps(lambda: quiet.update(on=True), lambda: quiet.update(on=False))
    _fit(tmp_path, which, precision, "cpu", guard)
    assert caught == []


def test_cpu_proxy_catches_a_sync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The proxy is not vacuous: a callback calling ``float(tensor)`` on every step is caught."""

    class Syncing(pl.Callback):
        def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
            float(next(pl_module.parameters()).sum())

    monkeypatch.setattr(sys.modules[__name__], "_build", lambda specs: [Syncing()])
    with pytest.raises(RuntimeError, match=r"non-logging step: Tensor.__float__"):
        test_no_sync_calls_on_non_logging_steps_cpu_proxy(tmp_path, monkeypatch, "monitors", "32-true")
