"""When the callbacks log, how their statistics reach the host, and how they are written to the loggers.

The "no sync on quiet steps" rule of the design: statistics are computed and accumulated as *device* tensors and
copied to the host once per logging interval, with a single transfer (:func:`to_host`); steps that do not log never
synchronize the host with the device.

- :func:`resolve_every_n_steps`, :func:`logging_step`, :func:`is_logging_step`, :func:`trainer_logs_now`: the logging
  interval and the x-axis step, the ones Lightning uses for ``self.log`` (``fit_loop.epoch_loop._batches_that_stepped``,
  as Lightning's own ``LearningRateMonitor`` does).
- :func:`to_host`: one stacked device-to-host copy for many tensors.
- :func:`log_metrics`: host floats to every logger of the trainer, from rank zero.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import lightning.pytorch as pl
import torch
from torch import Tensor

from lightning_tricks._tensorboard import event_file_writer, write_scalars


def resolve_every_n_steps(trainer: pl.Trainer, value: int | None) -> int:
    """``value``, or the trainer's ``log_every_n_steps`` when ``None`` (``0`` there means: never log)."""
    return int(trainer.log_every_n_steps) if value is None else int(value)


def logging_step(trainer: pl.Trainer) -> int:
    """The step index Lightning's logger connector uses for the current training batch (same x-axis as ``self.log``).

    Valid from ``on_train_batch_start`` to ``on_train_batch_end``: Lightning increments the counter afterwards.
    """
    step = getattr(trainer.fit_loop.epoch_loop, "_batches_that_stepped", None)
    return int(trainer.global_step if step is None else step)  # (`global_step` is a property chain: only if needed)


def is_logging_step(trainer: pl.Trainer, every_n_steps: int, step: int | None = None) -> bool:
    """Whether the current training batch is a logging step for an interval of ``every_n_steps`` (``0``: never).

    Same rule as Lightning's ``LoggerConnector.should_update_logs``: ``(step + 1) % every_n_steps == 0``, with
    ``step`` the :func:`logging_step` (pass it when already at hand).
    """
    if every_n_steps <= 0:
        return False
    return ((logging_step(trainer) if step is None else step) + 1) % every_n_steps == 0


def trainer_logs_now(trainer: pl.Trainer) -> bool:
    """Whether this training batch's step metrics reach the loggers: Lightning's own rule (``should_update_logs``).

    For callbacks that log at the Trainer's ``log_every_n_steps`` (a callback with its own interval uses
    :func:`is_logging_step`). Lightning has no public equivalent of this property.
    """
    return bool(trainer.loggers) and trainer._logger_connector.should_update_logs


def to_host(tensors: Sequence[Tensor]) -> list[float]:
    """Copy many tensors to the host with ONE transfer: flatten, concatenate on the device, then ``tolist()``.

    This is a deliberate host-device synchronization; call it only on logging steps.
    """
    if len(tensors) == 0:
        return []
    device = tensors[0].device
    flat = torch.cat([t.detach().reshape(-1).to(device=device, dtype=torch.float32) for t in tensors])
    return flat.tolist()  # the one host-device sync of the logging interval


def log_metrics(trainer: pl.Trainer, metrics: Mapping[str, float], step: int | None = None) -> None:
    """Send host floats to every logger of the trainer from global rank zero (default step: :func:`logging_step`).

    A ``TensorBoardLogger`` writing through torch's ``SummaryWriter`` gets all of them as ONE event
    (:func:`~lightning_tricks._tensorboard.write_scalars`), which TensorBoard reads as the logger's own
    ``log_metrics`` would write them, one event per key, at a fraction of the cost. Other loggers, and a
    ``TensorBoardLogger`` subclass that overrides ``log_metrics``, get ``log_metrics``.
    """
    if not metrics or not trainer.is_global_zero:
        return
    step = logging_step(trainer) if step is None else step
    for logger in trainer.loggers:
        writer = event_file_writer(logger)
        if writer is None:
            logger.log_metrics(dict(metrics), step=step)
        else:
            write_scalars(logger, writer, metrics, step)
