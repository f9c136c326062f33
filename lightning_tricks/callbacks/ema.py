"""Exponential moving average (EMA) of the weights, used for validation, testing and checkpoints.

Averaging the iterates of SGD (Polyak & Juditsky 1992, "Acceleration of stochastic approximation by averaging") smooths
out the noise of the last steps; the exponential form ``ema <- decay * ema + (1 - decay) * weights`` is the one of
TensorFlow's ``tf.train.ExponentialMovingAverage`` and timm's ``ModelEmaV2``. Built on Lightning's
:class:`~lightning.pytorch.callbacks.WeightAveraging` (which keeps a ``torch.optim.swa_utils.AveragedModel``, swaps it
in for validation, copies it into the model when training ends and stores it in checkpoints) and torch's foreach
:func:`~torch.optim.swa_utils.get_ema_multi_avg_fn`.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor
from torch.optim.swa_utils import get_ema_multi_avg_fn
from typing_extensions import override

from lightning_tricks._tensorboard import add_text
from lightning_tricks._validation import check_float, check_int, invalid
from lightning_tricks.callbacks._base import PerOptimizer, StrategyRefusal, TrickCallback
from lightning_tricks.callbacks._logging import trainer_logs_now
from lightning_tricks.callbacks._protocols import RestoresBestWeights
from lightning_tricks.callbacks._steps import OptimizerSteps, optimizer_key


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
    """Pairs of aligned tensor lists, one pair per (device, dtype) of the averaged tensors and of the current ones
    (so that each list is one foreach call and a cast, when one is needed, applies to the whole pair)."""
    groups: dict[tuple[Any, ...], tuple[list[Tensor], list[Tensor]]] = {}
    for avg, cur in zip(averaged, current, strict=True):
        avg_list, cur_list = groups.setdefault((avg.device, avg.dtype, cur.device, cur.dtype), ([], []))
        avg_list.append(avg)
        cur_list.append(cur)
    return list(groups.values())


class EMA(TrickCallback, WeightAveraging):
    r"""Keep an exponential moving average of the weights; validate, checkpoint and end training with it.

    Right after every optimizer step selected by ``update_every_n_steps`` / ``update_starting_at_step`` (a torch
    ``register_step_post_hook`` on each optimizer) the averaged copy of the parameters *that optimizer updates* is
    updated with ``ema <- d * ema + (1 - d) * weights`` in one foreach call per device and dtype (no Python loop over
    tensors, no host-device synchronization: the step counts and the decay ``d`` are host-side numbers). Buffers
    (BatchNorm statistics) and parameters no optimizer updates go along with every update. The first update of each
    optimizer's parameters copies them (as ``AveragedModel`` does). Validation inside ``fit`` runs on the averaged
    weights (copied in and out around each validation epoch), checkpoints hold them as ``state_dict`` (the raw
    weights go to ``current_model_state``, so ``Trainer.validate/test/predict(ckpt_path=...)`` (also on the Trainer
    that ran ``fit``, where Lightning's ``WeightAveraging`` would load the raw weights) and ``load_from_checkpoint``
    give the averaged model, and resuming continues both exactly), and when training ends the averaged weights are
    copied into the module. Until the first update, the module's own weights are used.

    Steps (the step rule, :mod:`lightning_tricks.callbacks._steps`): a step is one optimizer step of one
    optimizer. Each optimizer has its own step count, update count and warmup: in a GAN the generator's weights are
    averaged after each generator step and the discriminator's after each discriminator step, so
    ``update_every_n_steps=2`` updates each every second step of its own. Accumulation micro-batches, skipped batches
    (``training_step`` returning ``None``) and steps a ``GradScaler`` skipped are not steps.

    After ``fit``: the module holds the averaged weights, and ``trainer.validate()`` / ``trainer.test()`` evaluate
    the module as it is (no swap outside ``fit``), so they evaluate the same weights. With
    :class:`~lightning_tricks.callbacks.EarlyStopping` ``(restore_best_weights=True)`` in the same Trainer, in any
    list order: the metric it monitors was measured on the averaged weights, so it keeps the averaged weights of its
    best check, and those are what the module holds after ``fit`` (the restore wins over this end-of-training copy).
    The same holds for any callback with a ``will_restore()`` method, a user's own included
    (:class:`~lightning_tricks.callbacks._protocols.RestoresBestWeights`).

    Precision: under ``bf16-true`` / ``16-true`` the average stays in float32 (a half-precision average would round
    away updates of size ``(1 - d) * w``) and is cast to the module's dtype when it is copied in; under ``64-true``
    it is kept in float64. Other precisions keep the module's float32 weights. Sharded strategies (FSDP, DeepSpeed)
    are refused at ``setup``: the averaged copy would be a full copy of a sharded module.

    A new ``fit`` without a checkpoint starts a fresh average (a reused instance does not carry the first fit's).

    Cost: one extra copy of the weights (and buffers) in memory; per update one ``_foreach_lerp_`` over them (about
    3 memory passes of the model size); a model-sized copy before and after each validation epoch.

    Logged keys (at the trainer's logging steps, once an update has happened), with ``warmup=True`` only:
    ``ema/decay``, the decay used by the latest update (``ema/decay/opt<i>`` per optimizer with several). A constant
    decay is no chart: it is written once as TensorBoard text ``ema/decay`` (and is an HPARAMS column).

    Args:
        decay: The EMA decay ``d`` in ``[0, 1]``; the average's horizon is about ``1 / (1 - d)`` updates.
        warmup: Use ``min(decay, (1 + t) / (10 + t))`` after ``t`` updates (TensorFlow / timm style warmup).
        update_every_n_steps: Update after every n-th step of an optimizer (zero-based step index divisible by n).
        update_starting_at_step: First zero-based step index (of each optimizer) that updates; ``None``: at once.
        device: Where the averaged copy lives (e.g. ``"cpu"`` to save accelerator memory; then every update copies
            the weights to the host, a synchronization). ``None``: the module's device.
        use_buffers: Average the buffers too (BatchNorm statistics); if ``False`` they are copied from the module.

    Raises:
        ValueError: If ``decay`` is outside ``[0, 1]``, ``update_every_n_steps < 1``,
            ``update_starting_at_step < 0`` or ``device`` is not a device string.
        MisconfigurationException: At ``setup`` under a sharded strategy.

    Example::

        from lightning.pytorch import Trainer
        from lightning_tricks.callbacks import EMA

        trainer = Trainer(max_epochs=10, callbacks=[EMA(decay=0.999, warmup=True)])
        trainer.fit(model)  # validation and the saved checkpoints use the averaged weights
    """

    strategy_policy = StrategyRefusal(
        "the averaged copy would be a full, unsharded copy of the module on every rank",
        "Use a DDP strategy, or Lightning's EMAWeightAveraging where it supports your strategy.",
    )

    def __init__(
        self,
        decay: float = 0.999,
        warmup: bool = False,
        update_every_n_steps: int = 1,
        update_starting_at_step: int | None = None,
        device: str | None = None,
        use_buffers: bool = True,
    ) -> None:
        check_float("decay", decay, 0, 1)
        check_int("update_every_n_steps", update_every_n_steps, 1)
        check_int("update_starting_at_step", update_starting_at_step, 0, allow_none=True)
        if device is not None:
            try:
                torch.device(device)
            except (RuntimeError, TypeError) as error:
                raise invalid("device", "None or a torch device string such as 'cpu' or 'cuda:0'", device) from error
        # No averaging function goes to AveragedModel: its `update_parameters` reads `n_averaged` on the host twice
        # per call (a synchronization on GPUs), so the updates are done here with host-side counters.
        super().__init__(device=device, use_buffers=use_buffers)
        self.decay = decay
        self.warmup = warmup
        self.update_every_n_steps = update_every_n_steps
        self.update_starting_at_step = update_starting_at_step
        self._steps = OptimizerSteps(on_step=self._after_step)
        self._module: pl.LightningModule | None = None  # during fit, for the step hooks
        self._opts = PerOptimizer(_OptimizerAverage)
        self.reset_fit_state()

    @override
    def reset_fit_state(self) -> None:
        self._num_updates = 0  # updates of any optimizer's parameters
        self._opts.clear()
        self._rest_updates = 0  # of the buffers and the parameters of no optimizer
        self._groups: dict[int, list[tuple[list[Tensor], list[Tensor]]]] | None = None
        self._backup: list[Tensor] | None = None
        self._steps.reset()

    @override
    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        """Update after steps ``update_starting_at_step + k`` (of one optimizer) that are multiples of the interval."""
        if step_idx is None:
            return False
        started = self.update_starting_at_step is None or step_idx >= self.update_starting_at_step
        return started and step_idx % self.update_every_n_steps == 0

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)  # TrickCallback's, then WeightAveraging's (the averaged copy)
        if stage == "fit" and str(trainer.precision) == "64-true" and self._average_model is not None:
            self._average_model.double()  # the module becomes float64 after `setup`: keep the average as precise

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._steps.attach(trainer)
        self._module = pl_module
        self._opts.resize(len(trainer.optimizers))
        if not self.warmup:  # a constant is text (and an HPARAMS column), not a flat chart
            add_text(trainer, "ema/decay", f"{self.decay:g} (constant; the first update copies the weights)")

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._steps.detach()
        self._module = None
        self._groups = None  # drop the references to the module's tensors

    def _build_groups(
        self, pl_module: torch.nn.Module, optimizers: Sequence[torch.optim.Optimizer]
    ) -> dict[int, list[tuple[list[Tensor], list[Tensor]]]]:
        """``{optimizer index: pairs}``, and ``-1`` for the buffers and the parameters no optimizer updates."""
        assert self._average_model is not None
        owner: dict[int, int] = {}
        for i, opt in enumerate(optimizers):
            for group in opt.param_groups:
                for p in group["params"]:
                    owner.setdefault(id(p), i)
        average = self._average_model.module
        pairs: dict[int, tuple[list[Tensor], list[Tensor]]] = {}
        for avg, cur in zip(average.parameters(), pl_module.parameters(), strict=True):
            avg_list, cur_list = pairs.setdefault(owner.get(id(cur), -1), ([], []))
            avg_list.append(avg.detach())
            cur_list.append(cur)
        if self._use_buffers:
            avg_list, cur_list = pairs.setdefault(-1, ([], []))
            avg_list.extend(b.detach() for b in average.buffers())
            cur_list.extend(pl_module.buffers())
        return {key: _group_pairs(*lists) for key, lists in pairs.items()}

    @torch.no_grad()
    def _update_group(self, key: int, count: int) -> float:
        """One EMA update of group ``key`` after its ``count`` earlier updates; returns the decay used."""
        assert self._groups is not None
        decay = 0.0 if count == 0 else ema_decay(self.decay, count, self.warmup)
        for averaged, current in self._groups.get(key, []):
            # Under no_grad the module's tensors are read as they are; cast only when the average is kept in another
            # dtype / on another device: a float32 average of a bf16-true module; with `device` set this copies the
            # weights to that device, a synchronization (documented above).
            if current[0].dtype != averaged[0].dtype or current[0].device != averaged[0].device:
                current = [c.to(a.device, a.dtype) for a, c in zip(averaged, current, strict=True)]
            ema_update_(averaged, current, decay)
        return decay

    def _after_step(self, index: int, count: int) -> None:
        """Step post-hook: after optimizer ``index``'s ``count``-th step, update its parameters' average if due."""
        module = self._module
        if module is None or self._average_model is None or not self.should_update(step_idx=count - 1):
            return
        if self._groups is None:
            self._groups = self._build_groups(module, module.trainer.optimizers)
        average = self._opts[index]
        average.last_decay = self._update_group(index, average.updates)
        average.updates += 1
        self._update_group(-1, self._rest_updates)
        self._rest_updates += 1
        if not self._use_buffers:
            for b_avg, b_cur in zip(self._average_model.module.buffers(), module.buffers(), strict=True):
                b_avg.detach().copy_(b_cur.detach())
        self._average_model.n_averaged.add_(1)  # device-side counter kept for AveragedModel's state; no sync
        self._num_updates += 1

    def _update(self, module: torch.nn.Module) -> None:
        """One update of every averaged tensor at once, outside a Trainer (the overhead benchmark times it): the work
        of one training step's update."""
        if self._groups is None:
            self._groups = self._build_groups(module, [])  # no optimizer: every tensor in the one group -1
        self._update_group(-1, self._rest_updates)
        self._rest_updates += 1

    def averaged_module(self) -> torch.nn.Module | None:
        """The module that validation inside ``fit`` evaluates instead of the LightningModule, or ``None`` before the
        first update (then the LightningModule's own weights are evaluated)."""
        return self._average_model.module if self._average_model is not None and self._num_updates > 0 else None

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.warmup and trainer_logs_now(trainer):  # a constant decay is written once as text (on_fit_start)
            for i, average in enumerate(self._opts):
                if average.last_decay is not None:
                    key = optimizer_key("ema/decay", i, len(self._opts))
                    pl_module.log(key, average.last_decay, on_step=True, on_epoch=False, rank_zero_only=True)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """No epoch-end updates: EMA is step-based."""

    def _tensors(self, module: torch.nn.Module) -> list[Tensor]:
        return [t.detach() for t in itertools.chain(module.parameters(), module.buffers())]

    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        average = self.averaged_module()
        if average is None or trainer.state.fn != TrainerFn.FITTING:  # validate() after fit: the module as it is
            return
        current = self._tensors(pl_module)
        # Copy in, keep the raw weights aside: unlike a swap, the average never passes through the module's dtype.
        self._backup = [t.clone() for t in current]
        torch._foreach_copy_(
            current, [a.to(c.device, c.dtype) for a, c in zip(self._tensors(average), current, strict=True)]
        )

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._backup is not None:
            torch._foreach_copy_(self._tensors(pl_module), self._backup)
            self._backup = None

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        restoring = any(isinstance(cb, RestoresBestWeights) and cb.will_restore() for cb in trainer.callbacks)
        if self.averaged_module() is not None and not restoring:  # a restore of best (averaged) weights wins
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
    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if trainer.state.fn != TrainerFn.FITTING:
            # validate/test/predict(ckpt_path=...): the module keeps the checkpoint's `state_dict`, the averaged
            # weights. Lightning's WeightAveraging would load the raw `current_model_state` instead whenever the
            # averaged copy still exists from an earlier `fit` of the same Trainer (and warn when it does not).
            return
        super().on_load_checkpoint(trainer, pl_module, checkpoint)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "num_updates": self._num_updates,
            "optimizers": self._opts.state_dict(dataclasses.asdict),
            "rest_updates": self._rest_updates,
            **self._steps.state_dict(),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._num_updates = state_dict["num_updates"]
        self._opts.load_state_dict(state_dict["optimizers"], lambda entry: _OptimizerAverage(**entry))
        self._rest_updates = state_dict["rest_updates"]
        self._steps.load_state_dict(state_dict)


@dataclasses.dataclass
class _OptimizerAverage:
    """The averaging state of one optimizer's parameters (the step rule: each optimizer has its own)."""

    updates: int = 0  # updates of this optimizer's parameters so far
    last_decay: float | None = None  # the decay of the latest one (logged with warmup=True)
