"""Learning-rate decay: exponential (the classic ``lr * 0.98`` per epoch), step, cosine or linear, with linear warmup.

Sources: exponential and step decay are the classic schedules of the seed text ("decrease the learning rate by a
factor of 0.98 each epoch"); cosine annealing is Loshchilov & Hutter 2017, "SGDR: Stochastic Gradient Descent with
Warm Restarts" (without restarts); linear warmup is Goyal et al. 2017, "Accurate, Large Minibatch SGD: Training
ImageNet in 1 Hour".
"""

from __future__ import annotations

import math
from typing import Any, Literal

import lightning.pytorch as pl
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.optim import Optimizer
from typing_extensions import override

from lightning_tricks._loops import estimated_stepping_batches
from lightning_tricks._validation import check_choice, check_float, check_int
from lightning_tricks.callbacks._base import TrickCallback
from lightning_tricks.callbacks._logging import trainer_logs_now
from lightning_tricks.callbacks._steps import OptimizerSteps

DecayMode = Literal["exponential", "step", "cosine", "linear"]
Interval = Literal["epoch", "step"]


def lr_factor(
    mode: DecayMode, t: int, *, gamma: float = 0.98, step_size: int = 30, total: int = 1, warmup: int = 0
) -> float:
    """The multiplier of the initial learning rate at interval ``t`` (0-based epoch or optimizer step).

    Warmup: ``(t + 1) / (warmup + 1)`` for ``t < warmup``. Then, with ``s = t - warmup``:
    ``"exponential"``: ``gamma ** s``; ``"step"``: ``gamma ** (s // step_size)``; ``"cosine"``:
    ``(1 + cos(π·p)) / 2`` and ``"linear"``: ``1 - p``, with progress ``p = min(s / (total - warmup), 1)``.
    """
    if t < warmup:
        return (t + 1) / (warmup + 1)
    s = t - warmup
    if mode == "exponential":
        return gamma**s
    if mode == "step":
        return gamma ** (s // step_size)
    progress = min(s / max(total - warmup, 1), 1.0)
    if mode == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress


def scheduled_lr(
    mode: DecayMode,
    t: int,
    initial_lr: float,
    *,
    gamma: float = 0.98,
    step_size: int = 30,
    total: int = 1,
    warmup: int = 0,
    min_lr: float = 0.0,
) -> float:
    """The learning rate at interval ``t`` for a group whose initial learning rate is ``initial_lr``.

    During warmup: ``initial_lr · lr_factor``. After it, ``"exponential"`` and ``"step"`` are floored:
    ``max(initial_lr · f, min_lr)``; ``"cosine"`` and ``"linear"`` anneal to ``min_lr``:
    ``min_lr + (initial_lr - min_lr) · f``.
    """
    f = lr_factor(mode, t, gamma=gamma, step_size=step_size, total=total, warmup=warmup)
    if t < warmup:
        return initial_lr * f
    if mode in ("exponential", "step"):
        return max(initial_lr * f, min_lr)
    return min_lr + (initial_lr - min_lr) * f


class LRDecay(TrickCallback):
    """Set every optimizer's learning rate from a closed-form decay schedule, relative to each group's initial lr.

    The classic rule is the default: ``lr <- lr * 0.98`` per epoch. At fit start the callback records each param
    group's initial learning rate (of every optimizer from ``configure_optimizers``; saved in checkpoints), and then
    sets ``lr = scheduled_lr(mode, t, initial_lr, ...)`` with ``t`` the epoch (``interval="epoch"``) or, with
    ``interval="step"``, the number of steps *that optimizer* has made so far in the fit. Because the lr is a
    function of ``t`` alone, a resumed run gets exactly the same learning rates (the step counts are saved). The
    user's ``configure_optimizers`` is untouched. A new ``fit`` without a checkpoint starts afresh: the initial
    learning rates are read again from the new optimizers.

    Steps (the step rule, :mod:`lightning_tricks.callbacks._steps`): a step is one optimizer step of one
    optimizer. Each optimizer follows its own schedule on its own step count: a GAN whose generator and
    discriminator step once per batch has both reach ``min_lr`` at the end of the run, not halfway. Accumulation
    micro-batches, skipped batches (``training_step`` returning ``None``) and steps a ``GradScaler`` skipped do not
    advance the schedule.

    Runs in ``on_train_epoch_start`` (epoch interval), ``on_train_batch_start`` (both intervals, so a run resumed
    mid-epoch is right too) and, with ``interval="step"``, right after each optimizer step (for the next one; an
    optimizer stepped several times per batch gets a new lr for each). Cost: a few Python float writes per step, no
    device work (a tensor ``lr`` is updated with ``fill_``, no sync). Works under every precision and strategy
    (FSDP / DeepSpeed included: it only writes learning rates; ``interval="step"`` counts steps with torch's
    ``Optimizer.register_step_post_hook`` and refuses, at fit start, an optimizer that is no torch optimizer).

    A learning-rate scheduler returned by ``configure_optimizers`` would fight with this callback: that raises an
    error at ``on_fit_start`` (the first hook where the optimizers exist). Use one or the other.

    Modes (after ``warmup`` intervals of linear warmup from ``initial_lr / (warmup + 1)``; ``s = t - warmup``):

    - ``"exponential"``: ``initial_lr · gamma ** s``, floored at ``min_lr``.
    - ``"step"``: ``initial_lr · gamma ** (s // step_size)``, floored at ``min_lr``.
    - ``"cosine"``: from ``initial_lr`` to ``min_lr`` over ``total - warmup`` intervals along a half cosine.
    - ``"linear"``: from ``initial_lr`` to ``min_lr`` linearly over ``total - warmup`` intervals.

    Logged keys (at logging steps, through ``pl_module.log``): ``lr/opt{i}_group{j}`` for optimizer ``i`` (its index
    in ``trainer.optimizers``) and param group ``j``, e.g. ``lr/opt0_group0``.

    Args:
        mode: ``"exponential"``, ``"step"``, ``"cosine"`` or ``"linear"``.
        gamma: the decay factor per interval (``"exponential"``) or per ``step_size`` intervals (``"step"``), in
            ``(0, 1]``.
        interval: ``"epoch"`` or ``"step"`` (optimizer steps).
        warmup: number of intervals of linear warmup before the decay starts.
        min_lr: the floor (``"exponential"``, ``"step"``) or the end value (``"cosine"``, ``"linear"``).
        step_size: ``"step"`` mode: intervals between two decays.
        total: ``"cosine"`` / ``"linear"``: length of the schedule in intervals, warmup included. Default:
            ``trainer.max_epochs`` (epoch interval) or ``trainer.estimated_stepping_batches`` (step interval: the
            number of batches in which the optimizers step, i.e. the steps of an optimizer that steps once per such
            batch). Pass it for an optimizer stepped more often (a WGAN critic): a warning says when an optimizer
            runs past ``total``.

    Raises:
        ValueError: if an option is out of range, or at fit start if ``total`` is needed and cannot be inferred.
        MisconfigurationException: at fit start if ``configure_optimizers`` also returned an lr scheduler.

    Example::

        from lightning.pytorch import Trainer
        from lightning_tricks.callbacks import LRDecay

        trainer = Trainer(max_epochs=30, callbacks=[LRDecay()])  # lr * 0.98 per epoch
        trainer = Trainer(max_epochs=30, callbacks=[LRDecay(mode="cosine", interval="step", warmup=500)])
    """

    def __init__(
        self,
        mode: DecayMode = "exponential",
        gamma: float = 0.98,
        interval: Interval = "epoch",
        warmup: int = 0,
        min_lr: float = 0.0,
        step_size: int = 30,
        total: int | None = None,
    ) -> None:
        check_choice("mode", mode, DecayMode)
        check_choice("interval", interval, Interval)
        check_float("gamma", gamma, 0, 1, low_open=True)
        check_int("warmup", warmup, 0)
        check_float("min_lr", min_lr, 0)
        check_int("step_size", step_size, 1)
        check_int("total", total, 1, allow_none=True)
        self.mode = mode
        self.gamma = float(gamma)
        self.interval = interval
        self.warmup = warmup
        self.min_lr = float(min_lr)
        self.step_size = step_size
        self.total = total
        self._total = 1  # resolved at fit start
        # Training state (saved in checkpoints): initial lr of every param group of every optimizer, and the steps
        # each optimizer made (the step rule).
        self.initial_lrs: list[list[float]] | None = None
        self._steps = OptimizerSteps(on_step=self._after_step)
        self._trainer: pl.Trainer | None = None
        self._warned_past_total = False
        self._lrs_set = False  # interval="step": lrs set for this fit (then kept by the step post-hook)

    @override
    def reset_fit_state(self) -> None:
        self.initial_lrs = None
        self._steps.reset()
        self._warned_past_total = False

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._steps.detach()
        self._trainer = None

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.lr_scheduler_configs:
            names = [type(c.scheduler).__name__ for c in trainer.lr_scheduler_configs]
            raise MisconfigurationException(
                f"`LRDecay` sets the learning rate itself, but `configure_optimizers` also returned the scheduler(s)"
                f" {names}. Return only the optimizer(s), or remove the `LRDecay` callback."
            )
        shape = [len(opt.param_groups) for opt in trainer.optimizers]
        if self.initial_lrs is not None and [len(groups) for groups in self.initial_lrs] != shape:
            rank_zero_warn(
                f"`LRDecay`: the checkpoint recorded initial learning rates {self.initial_lrs}, but the optimizers"
                f" now have {shape} param groups. Recording the current learning rates as initial."
            )
            self.initial_lrs = None
        if self.initial_lrs is None:
            # float() of a tensor lr is a host sync, once per fit.
            self.initial_lrs = [[float(g["lr"]) for g in opt.param_groups] for opt in trainer.optimizers]
        self._total = self._resolve_total(trainer)
        self._trainer = trainer
        self._lrs_set = False
        if self.interval == "step":  # the epoch interval needs no step counts
            self._steps.attach(trainer)

    def _resolve_total(self, trainer: pl.Trainer) -> int:
        if self.total is not None:
            return self.total
        if self.mode not in ("cosine", "linear"):
            return 1
        if self.interval == "epoch":
            total, source = trainer.max_epochs, "Trainer(max_epochs)"
        else:
            # not the property itself: read here it loses a resumed loader's position (see the helper)
            total, source = estimated_stepping_batches(trainer), "trainer.estimated_stepping_batches"
        if total is None or not 0 < total < math.inf:
            raise ValueError(
                f"`LRDecay(mode={self.mode!r}, interval={self.interval!r})` needs the schedule length: pass `total`"
                f" (an int >= 1), since {source} is {total!r}."
            )
        return int(total)

    def _t(self, trainer: pl.Trainer, index: int) -> int:
        return trainer.current_epoch if self.interval == "epoch" else self._steps.count(index)

    def _set(self, optimizer: Optimizer, initial: list[float], t: int) -> list[float]:
        """Write the scheduled lr of interval ``t`` into every param group of ``optimizer``; returns them."""
        lrs = []
        for group, lr0 in zip(optimizer.param_groups, initial, strict=True):
            lr = scheduled_lr(
                self.mode,
                t,
                lr0,
                gamma=self.gamma,
                step_size=self.step_size,
                total=self._total,
                warmup=self.warmup,
                min_lr=self.min_lr,
            )
            if isinstance(group["lr"], Tensor):
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr
            lrs.append(lr)
        return lrs

    def _apply(self, trainer: pl.Trainer) -> list[list[float]]:
        return [
            self._set(opt, initial, self._t(trainer, i))
            for i, (opt, initial) in enumerate(zip(trainer.optimizers, self.initial_lrs or [], strict=True))
        ]

    def _after_step(self, index: int, count: int) -> None:
        """Step post-hook (``interval="step"``): set optimizer ``index``'s lr for its next step."""
        trainer = self._trainer
        if self.interval != "step" or trainer is None or self.initial_lrs is None:
            return
        self._set(trainer.optimizers[index], self.initial_lrs[index], count)
        if count > self._total and self.mode in ("cosine", "linear") and not self._warned_past_total:
            self._warned_past_total = True
            rank_zero_warn(
                f"`LRDecay(mode={self.mode!r}, interval='step')`: optimizer {index} made more steps ({count}) than the"
                f" schedule's length total={self._total}, so its lr stays at min_lr={self.min_lr}. An optimizer stepped"
                " several times per batch needs `total` given explicitly."
            )

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.interval == "epoch":
            self._apply(trainer)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        logs = trainer_logs_now(trainer)
        # interval="step": the step post-hook already set every optimizer's lr for its next step; the first batch of
        # a fit (or after a restore) sets it from the step counts, and logging steps read what they log
        if self.interval == "step" and self._lrs_set and not logs:
            return
        lrs = self._apply(trainer)
        self._lrs_set = True
        if logs:
            metrics = {f"lr/opt{i}_group{j}": lr for i, group_lrs in enumerate(lrs) for j, lr in enumerate(group_lrs)}
            pl_module.log_dict(metrics, on_step=True, on_epoch=False)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"initial_lrs": self.initial_lrs, **self._steps.state_dict()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.initial_lrs = state_dict["initial_lrs"]
        self._lrs_set = False  # the restored step counts decide the next lr
        self._steps.load_state_dict(state_dict)
