"""Exponential moving average (EMA) of the weights, used for validation, testing and checkpoints.

Averaging the iterates of SGD (Polyak & Juditsky 1992, "Acceleration of stochastic approximation by averaging") smooths
out the noise of the last steps; the exponential form ``ema <- decay * ema + (1 - decay) * weights`` is the one of
TensorFlow's ``tf.train.ExponentialMovingAverage`` and timm's ``ModelEmaV2``. Built on Lightning's
:class:`~lightning.pytorch.callbacks.WeightAveraging` (which keeps a ``torch.optim.swa_utils.AveragedModel``, swaps it
in for validation, copies it into the model when training ends and stores it in checkpoints) and torch's foreach
:func:`~torch.optim.swa_utils.get_ema_multi_avg_fn`.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import WeightAveraging
from torch import Tensor
from torch.optim.swa_utils import get_ema_multi_avg_fn
from typing_extensions import override

from lightning_tricks.callbacks._monitoring import trainer_logs_now


def ema_decay(decay: float, num_updates: int, warmup: bool = False) -> float:
    """The decay used for the update that follows ``num_updates`` earlier updates.

    With ``warmup`` the decay is ``min(decay, (1 + t) / (10 + t))`` with ``t = num_updates`` (TensorFlow's
    ``ExponentialMovingAverage(num_updates=...)``), so the average forgets the random initial weights quickly.
    """
    if not warmup:
        return decay
    return min(decay, (1.0 + num_updates) / (10.0 + num_updates))


def ema_update_(averaged: Sequence[Tensor], current: Sequence[Tensor], decay: float) -> None:
    """In place ``averaged[i] <- decay * averaged[i] + (1 - decay) * current[i]`` in one foreach call.

    All tensors of ``averaged`` share one device and dtype (as do those of ``current``). Floating point tensors go
    through ``torch._foreach_lerp_`` (inside :func:`~torch.optim.swa_utils.get_ema_multi_avg_fn`), integer buffers
    through a per-tensor fallback.
    """
    get_ema_multi_avg_fn(decay)(list(averaged), list(current), None)


def _group_pairs(averaged: Sequence[Tensor], current: Sequence[Tensor]) -> list[tuple[list[Tensor], list[Tensor]]]:
    """Pairs of aligned tensor lists, one pair per (device, dtype) of the averaged tensors."""
    groups: dict[tuple[torch.device, torch.dtype], tuple[list[Tensor], list[Tensor]]] = {}
    for avg, cur in zip(averaged, current, strict=True):
        avg_list, cur_list = groups.setdefault((avg.device, avg.dtype), ([], []))
        avg_list.append(avg)
        cur_list.append(cur)
    return list(groups.values())


class EMA(WeightAveraging):
    r"""Keep an exponential moving average of the weights; validate, test and checkpoint with it.

    After every optimizer step selected by ``update_every_n_steps`` / ``update_starting_at_step`` (hook
    ``on_train_batch_end``) the averaged copy is updated with ``ema <- d * ema + (1 - d) * weights`` in one foreach
    call per device and dtype (no Python loop over tensors, no host-device synchronization: the step count and the
    decay ``d`` are host-side numbers). The first update copies the weights (as ``AveragedModel`` does). Validation
    runs on the averaged weights (they are swapped in and out around each validation epoch), checkpoints hold them as
    ``state_dict`` (the raw weights go to ``current_model_state``, so ``Trainer.test(ckpt_path=...)`` and
    ``load_from_checkpoint`` give the averaged model, and resuming continues both exactly), and when training ends
    the averaged weights are copied into the module. Until the first update, the module's own weights are used.

    Cost: one extra copy of the weights (and buffers) in memory; per update one ``_foreach_lerp_`` over all of
    them (about 3 memory passes of the model size); a swap before and after each validation epoch.

    Logged keys (at the trainer's logging steps, once an update has happened): ``ema/decay``, the decay used by the
    latest update.

    Args:
        decay: The EMA decay ``d`` in ``[0, 1]``; the average's horizon is about ``1 / (1 - d)`` updates.
        warmup: Use ``min(decay, (1 + t) / (10 + t))`` after ``t`` updates (TensorFlow / timm style warmup).
        update_every_n_steps: Update after every n-th optimizer step (zero-based step index divisible by n).
        update_starting_at_step: First zero-based optimizer step index that updates; ``None`` starts at once.
        device: Where the averaged copy lives (e.g. ``"cpu"`` to save accelerator memory; then every update copies
            the weights to the host, a synchronization). ``None``: the module's device.
        use_buffers: Average the buffers too (BatchNorm statistics); if ``False`` they are copied from the module.

    Raises:
        ValueError: If ``decay`` is outside ``[0, 1]``, ``update_every_n_steps < 1``,
            ``update_starting_at_step < 0`` or ``device`` is not a device string.

    Example::

        from lightning.pytorch import Trainer
        from lightning_tricks.callbacks import EMA

        trainer = Trainer(max_epochs=10, callbacks=[EMA(decay=0.999, warmup=True)])
        trainer.fit(model)  # validation and the saved checkpoints use the averaged weights
    """

    def __init__(
        self,
        decay: float = 0.999,
        warmup: bool = False,
        update_every_n_steps: int = 1,
        update_starting_at_step: int | None = None,
        device: str | None = None,
        use_buffers: bool = True,
    ) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"Expected argument `decay` to be a float in the [0, 1] range, but got {decay}.")
        if update_every_n_steps < 1:
            raise ValueError(
                f"Expected argument `update_every_n_steps` to be an integer >= 1, but got {update_every_n_steps}."
            )
        if update_starting_at_step is not None and update_starting_at_step < 0:
            raise ValueError(
                "Expected argument `update_starting_at_step` to be None or an integer >= 0,"
                f" but got {update_starting_at_step}."
            )
        if device is not None:
            try:
                torch.device(device)
            except (RuntimeError, TypeError) as error:
                raise ValueError(
                    f"Expected argument `device` to be None or a torch device string such as 'cpu' or 'cuda:0',"
                    f" but got {device!r}."
                ) from error
        # No averaging function goes to AveragedModel: its `update_parameters` reads `n_averaged` on the host twice
        # per call (a synchronization on GPUs), so the updates are done here with a host-side counter.
        super().__init__(device=device, use_buffers=use_buffers)
        self.decay = decay
        self.warmup = warmup
        self.update_every_n_steps = update_every_n_steps
        self.update_starting_at_step = update_starting_at_step
        self._num_updates = 0
        self._last_decay: float | None = None
        self._groups: list[tuple[list[Tensor], list[Tensor]]] | None = None
        self._needs_move = False

    @override
    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        """Update after optimizer steps ``update_starting_at_step + k`` that are multiples of the interval."""
        if step_idx is None:
            return False
        started = self.update_starting_at_step is None or step_idx >= self.update_starting_at_step
        return started and step_idx % self.update_every_n_steps == 0

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._groups = None  # built at the first update, once the strategy has moved the module to its device

    def _tensor_pairs(self, pl_module: pl.LightningModule) -> tuple[list[Tensor], list[Tensor]]:
        assert self._average_model is not None
        average, module = self._average_model.module, pl_module
        if self._use_buffers:
            return list(itertools.chain(average.parameters(), average.buffers())), list(
                itertools.chain(module.parameters(), module.buffers())
            )
        return list(average.parameters()), list(module.parameters())

    @torch.no_grad()
    def _update(self, pl_module: pl.LightningModule) -> None:
        assert self._average_model is not None
        if self._groups is None:
            averaged, current = self._tensor_pairs(pl_module)
            self._needs_move = any(a.device != c.device for a, c in zip(averaged, current, strict=True))
            self._groups = _group_pairs([a.detach() for a in averaged], current)
        decay = 0.0 if self._num_updates == 0 else ema_decay(self.decay, self._num_updates, self.warmup)
        for averaged, current in self._groups:
            device = averaged[0].device
            # With `device` set, this copies the weights to that device: a synchronization, documented above.
            current = [c.detach().to(device) for c in current] if self._needs_move else [c.detach() for c in current]
            ema_update_(averaged, current, decay)
        if not self._use_buffers:
            for b_avg, b_cur in zip(self._average_model.module.buffers(), pl_module.buffers(), strict=True):
                b_avg.detach().copy_(b_cur.detach())
        self._average_model.n_averaged += 1  # device-side counter kept for AveragedModel's state; no sync
        self._num_updates += 1
        self._last_decay = decay

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step_idx = trainer.global_step - 1
        if trainer.global_step > self._latest_update_step and self.should_update(step_idx=step_idx):
            self._update(pl_module)
            self._latest_update_step = trainer.global_step
        if trainer_logs_now(trainer) and self._last_decay is not None:
            pl_module.log("ema/decay", self._last_decay, on_step=True, on_epoch=False, rank_zero_only=True)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """No epoch-end updates: EMA is step-based."""

    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._average_model is not None and self._num_updates > 0:
            self._swap_models(pl_module)

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._average_model is not None and self._num_updates > 0:
            self._swap_models(pl_module)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._average_model is not None and self._num_updates > 0:
            self._copy_average_to_current(pl_module)

    @override
    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self._average_model is not None and self._num_updates == 0:
            # Before the first update the "average" is the module itself, not the weights copied at `setup`.
            self._average_model.module.load_state_dict(pl_module.state_dict())
        super().on_save_checkpoint(trainer, pl_module, checkpoint)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "num_updates": self._num_updates, "last_decay": self._last_decay}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._latest_update_step = state_dict.get("latest_update_step", 0)
        self._num_updates = state_dict.get("num_updates", 0)
        self._last_decay = state_dict.get("last_decay")
