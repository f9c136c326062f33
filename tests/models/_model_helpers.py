"""Shared helper of the model tests: a quiet single-process CPU Trainer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch import Trainer


def quiet_trainer(root: str | Path, **kwargs: Any) -> Trainer:
    """A CPU Trainer under ``root`` with no logger, checkpoints, progress bar or model summary.

    ``kwargs`` add Trainer options or override these (e.g. ``max_epochs``, ``logger``, ``devices=2``).
    """
    options: dict[str, Any] = {
        "default_root_dir": root,
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    options.update(kwargs)
    return Trainer(**options)
