"""Running ``lightning-tricks`` in a subprocess, and test-only callbacks added to those runs by class path.

The subprocess runs get ``tests/`` on ``PYTHONPATH`` (:func:`cli_env`), so
``--trainer.callbacks+=helpers.cli.KillAtStep`` resolves. Nothing here is part of the package.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from typing_extensions import override


def _rank_path(path: str, trainer: pl.Trainer) -> Path:
    """``path`` for rank 0, ``<stem>.rank<r><suffix>`` for the others."""
    p = Path(path)
    return p if trainer.global_rank == 0 else p.with_name(f"{p.stem}.rank{trainer.global_rank}{p.suffix}")


class KillAtStep(Callback):
    """SIGKILL this process when batch ``step`` (zero-based optimizer step) is about to start.

    The checkpoints written at earlier steps are on disk; the steps after the last one are lost, as in a real kill.
    """

    def __init__(self, step: int) -> None:
        self.step = step

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class WaitForSigtermAtStep(Callback):
    """At the start of step ``step``, write ``marker`` and wait (up to 120 s) until the parent's SIGTERM arrived."""

    def __init__(self, step: int, marker: str) -> None:
        self.step = step
        self.marker = marker

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step != self.step:
            return
        Path(self.marker).write_text(str(os.getpid()))
        deadline = time.monotonic() + 120
        while not trainer.received_sigterm and time.monotonic() < deadline:
            time.sleep(0.01)


class RankDependentDraws(Callback):
    """At every batch start, rank ``r`` draws ``r + 1`` numbers from the global torch RNG, so the ranks' RNG states
    (and dropout masks) differ, as they do in any run that draws per rank: a resume that gave a rank another rank's
    state, or none, changes the weights."""

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        torch.rand(trainer.global_rank + 1)


class RecordFinal(Callback):
    """Save what a run ended with to ``path`` (``torch.save``; ranks other than 0 add ``.rank<r>`` to the name).

    Keys: ``weights`` (the module after ``on_train_end``), ``last_step_weights`` (the raw weights right after the
    last optimizer step), ``ema`` (the EMA callback's averaged weights, if any), ``metrics`` (``callback_metrics``),
    ``global_step``, ``epoch``.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._last_step: dict[str, torch.Tensor] = {}

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._last_step = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        ema = next((c for c in trainer.callbacks if type(c).__name__ == "EMA"), None)
        average = getattr(ema, "_average_model", None)
        record = {
            "weights": {k: v.detach().clone() for k, v in pl_module.state_dict().items()},
            "last_step_weights": self._last_step,
            "ema": None if average is None else {k: v.clone() for k, v in average.module.state_dict().items()},
            "metrics": {k: v.detach().clone() for k, v in trainer.callback_metrics.items()},
            "global_step": trainer.global_step,
            "epoch": trainer.current_epoch,
        }
        torch.save(record, _rank_path(self.path, trainer))


class RecordTrainImages(Callback):
    """Save every training batch's images, per epoch, to ``path`` (per rank): ``{epoch: Tensor[N, C*H*W]}``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._seen: dict[int, list[torch.Tensor]] = {}

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._seen.setdefault(trainer.current_epoch, []).append(batch[0].detach().flatten(1).cpu().clone())

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        torch.save({e: torch.cat(xs) for e, xs in self._seen.items()}, _rank_path(self.path, trainer))


# ----------------------------------------------------------------------------------------------- running the CLI
TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent


def cli_env() -> dict[str, str]:
    """The environment of a ``python -m lightning_tricks.cli`` subprocess: ``tests/`` importable, quiet, 1 thread."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), env.get("PYTHONPATH", "")) if p)
    env.setdefault("OMP_NUM_THREADS", "1")  # the CI box has 2 cores shared with other test runs
    env["PYTHONWARNINGS"] = "ignore"
    return env


def cli_command(*args: str) -> list[str]:
    import sys

    return [sys.executable, "-m", "lightning_tricks.cli", *args]
