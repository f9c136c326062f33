"""Trainers for the tests: a quiet tiny Trainer, the precisions that run on the CPU, a CSV-logged fit, a checkpoint
resume of the tiny GAN and the LightningCLI round trip."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.plugins.precision import MixedPrecision

from helpers.data import metrics_rows
from helpers.models import TinyGAN

CallbackT = TypeVar("CallbackT", bound=Callback)

TRAIN_ONLY_ON_CPU: dict[str, Any] = {
    "accelerator": "cpu",
    "devices": 1,
    "limit_val_batches": 0,
    "enable_checkpointing": False,
}
"""Trainer options for a single-process CPU run without validation and without the default checkpoint callback."""

ON_CPU: dict[str, Any] = {"accelerator": "cpu", "devices": 1, "enable_checkpointing": False, "max_epochs": None}
"""Trainer options for a single-process CPU run without the default checkpoint callback, of Lightning's default
length (``max_steps`` alone then decides)."""

WITH_VALIDATION: dict[str, Any] = {
    "limit_train_batches": 2,
    "limit_val_batches": 1,
    "num_sanity_val_steps": 0,
    "deterministic": True,
}
"""Trainer options for two training batches and one validation batch per epoch, no sanity check, deterministic."""

PRECISIONS = ["32-true", "64-true", "bf16-mixed", "bf16-true", "16-mixed", "16-true"]
"""Every precision Lightning offers that runs on the CPU (``16-mixed`` uses ``torch.amp.GradScaler("cpu")``)."""


def tiny_trainer(root: str | Path, callbacks: Callback | list[Callback] | None = None, **kwargs: Any) -> Trainer:
    """A quiet Trainer for one epoch under ``root``: no logger, no progress bar, no model summary.

    ``kwargs`` add Trainer options or override these (e.g. ``**ON_CPU``). A test module binds its own defaults once
    with ``functools.partial(tiny_trainer, ...)``; keywords given at the call still win over the bound ones.
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


def precision_options(precision: str) -> dict[str, Any]:
    """Trainer options for ``precision`` on the CPU. ``Trainer(precision="16-mixed")`` turns into ``bf16-mixed`` there,
    so ``16-mixed`` gets Lightning's ``MixedPrecision`` plugin with its ``torch.amp.GradScaler("cpu")``."""
    if precision == "16-mixed":
        return {"plugins": [MixedPrecision("16-mixed", "cpu")]}
    return {"precision": precision}


def csv_fit(
    root: str | Path, callbacks: Callback | list[Callback], model: LightningModule, **kwargs: Any
) -> tuple[Trainer, list[dict[str, str]]]:
    """Fit ``model`` for one epoch with a ``CSVLogger`` logging every step; returns the trainer and the
    ``metrics.csv`` rows. ``kwargs`` add Trainer options (e.g. :func:`precision_options`)."""
    from lightning.pytorch.loggers import CSVLogger

    options = {**TRAIN_ONLY_ON_CPU, "log_every_n_steps": 1, **kwargs}
    trainer = tiny_trainer(root, callbacks, logger=CSVLogger(root, name="", version=""), **options)
    trainer.fit(model)
    return trainer, metrics_rows(root)


def gan_resume_runs(
    root: Path, make_callbacks: Callable[[], list[Callback]]
) -> tuple[tuple[TinyGAN, list[Callback]], tuple[TinyGAN, list[Callback]]]:
    """Train :class:`~helpers.models.TinyGAN` for 2 epochs of 4 batches uninterrupted, and for 1 epoch then resumed
    from its checkpoint for the second; returns ``(model, callbacks)`` of the uninterrupted and of the resumed run."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    def run(folder: str, epochs: int, ckpt_path: str | None = None) -> tuple[TinyGAN, list[Callback]]:
        torch.manual_seed(0)  # the same initial weights in every run
        model, callbacks = TinyGAN(), make_callbacks()
        ckpt = ModelCheckpoint(dirpath=root / folder, save_top_k=-1, every_n_epochs=1)
        options = {**TRAIN_ONLY_ON_CPU, "enable_checkpointing": True, "limit_train_batches": 4}
        tiny_trainer(root / folder, [*callbacks, ckpt], max_epochs=epochs, **options).fit(model, ckpt_path=ckpt_path)
        return model, callbacks

    full = run("full", 2)
    run("part", 1)
    return full, run("resumed", 2, ckpt_path=str(root / "part" / "epoch=0-step=8.ckpt"))


def callback_from_cli(cls: type[CallbackT], args: list[str]) -> CallbackT:
    """Parse ``args`` with ``LightningCLI(BoringModel, run=False)`` and return the one ``cls`` callback it built."""
    cli = LightningCLI(BoringModel, run=False, args=args)
    (callback,) = [c for c in cli.trainer.callbacks if isinstance(c, cls)]
    return callback
