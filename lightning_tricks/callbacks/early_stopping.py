"""Early stopping with best-weight restoration and a warm-up period.

Stop training when a validation metric stops improving (Prechelt 1998, "Early stopping - but when?"), optionally put
back the weights of the best check (Keras' ``restore_best_weights``), and ignore the first epochs (Keras'
``start_from_epoch``, Lightning issue #16881). Built on Lightning's
:class:`~lightning.pytorch.callbacks.EarlyStopping`, whose options, checks and DDP reduction are kept unchanged.
"""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import EarlyStopping as _LightningEarlyStopping
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import Tensor, nn
from typing_extensions import override

from lightning_tricks._validation import check_choice, check_float, check_int
from lightning_tricks.callbacks._base import StrategyRefusal, TrickCallback
from lightning_tricks.callbacks._protocols import HoldsAveragedWeights


def cpu_state_copy(module: nn.Module) -> dict[str, Tensor]:
    """A copy of ``module.state_dict()`` (parameters and buffers) in host memory, detached from the module."""
    # Copying device tensors to the host waits for the device: a deliberate sync, done only when the metric improves.
    return {name: value.detach().to("cpu", copy=True) for name, value in module.state_dict().items()}


def is_improvement(current: Tensor, best: Tensor, min_delta: float, mode: Literal["min", "max"]) -> bool:
    """Whether ``current`` beats ``best`` by more than ``min_delta`` (the rule of Lightning's ``EarlyStopping``).

    Non-finite values never improve.
    """
    best = best.to(current.device)
    better = current < best - min_delta if mode == "min" else current > best + min_delta
    # One host sync per validation check (Lightning's own check does the same).
    return bool(torch.isfinite(current) & better)


class EarlyStopping(TrickCallback, _LightningEarlyStopping):
    r"""Lightning's ``EarlyStopping`` plus ``restore_best_weights`` and ``start_from_epoch``.

    The check runs where Lightning's runs: ``on_train_epoch_end`` when validation runs every epoch, otherwise
    ``on_validation_end`` (see ``check_on_train_epoch_end``). Patience counts checks, not epochs. Under DDP the stop
    decision is reduced over ranks (any rank stopping stops all) as in Lightning.

    ``start_from_epoch``: checks in epochs ``< start_from_epoch`` are skipped entirely: no best score is recorded,
    the patience counter does not run, neither thresholds nor non-finite values stop training, and no weights are
    kept. Useful when the metric is noisy or poor while the learning rate warms up.

    ``restore_best_weights``: when a check improves the best score (same rule as the stop decision, ``min_delta``
    included; a check that reaches ``stopping_threshold`` counts if it beats the best), a copy of the module's
    ``state_dict`` is kept in host memory (never on the accelerator). When training ends, for any reason (this
    callback, ``max_epochs`` / ``max_steps``, another callback setting ``trainer.should_stop``), the best copy is
    loaded back into the module in ``on_train_end``, so the returned module always holds the best checked weights
    (unlike Keras, which restores only when it stops training itself). Training that ends by an exception does not
    restore. The copy is part of this callback's state in checkpoints, so a resumed run still restores the true
    best. Under DDP the decision to keep a copy is broadcast from rank 0 and every rank keeps its own copy:
    parameters are identical across ranks already, and the buffers (BatchNorm statistics, which each rank updates
    from its own batches) are taken from rank 0 (one broadcast of the buffers per improvement), so every rank
    restores the same weights. Sharded strategies (FSDP, DeepSpeed) are refused at ``setup`` with
    ``restore_best_weights=True`` (each rank would keep only its shard); without it they work.

    With :class:`~lightning_tricks.callbacks.EMA` in the same Trainer (any list order): validation inside ``fit``
    ran on the averaged weights, so the copy is taken from EMA's averaged weights, the ones the metric was measured
    on, and the restore at the end of training wins over EMA's own end-of-training copy. After ``fit`` the module
    holds the averaged weights of the best check, and ``trainer.validate()`` / ``trainer.test()`` evaluate them.
    The same holds for any callback with an ``averaged_module()`` method, a user's own included
    (:class:`~lightning_tricks.callbacks._protocols.HoldsAveragedWeights`).

    Steps: patience counts validation checks, not optimizer steps, so the package's step rule
    (:mod:`lightning_tricks.callbacks._steps`) does not enter; several optimizers, accumulation and skipped batches
    change nothing here. Every Lightning precision works (the copy keeps the module's dtype, or EMA's float32 average).

    A new ``fit`` without a checkpoint starts afresh (best score, patience counter, kept weights), as when a callback
    instance is reused with a new Trainer; a checkpoint restore comes after ``setup`` and wins.

    Stopping on overfitting (validation loss rising while training loss still falls): monitor the validation loss
    with ``mode="min"`` (it stops improving once the model overfits; ``restore_best_weights=True`` gives back the
    weights from before), or log a generalization gap such as ``val/loss - train/loss`` and stop with
    ``divergence_threshold`` on it.

    Cost: one host sync per check; with ``restore_best_weights``, one device-to-host copy of the weights per
    improvement, one model-sized copy in host memory and in each checkpoint. Logs nothing (Lightning's messages
    with ``verbose=True``, plus one info line when the best weights are restored).

    Args:
        monitor: The metric to monitor, as logged (e.g. ``"val/loss"``).
        min_delta: The smallest change that counts as an improvement (``>= 0``).
        patience: Number of checks without improvement after which training stops (``>= 0``).
        verbose: Print a message on improvements and when stopping.
        mode: ``"min"`` or ``"max"``: whether lower or higher is better.
        strict: Raise if ``monitor`` is not among the logged metrics.
        check_finite: Stop when the metric becomes NaN or infinite.
        stopping_threshold: Stop once the metric is better than this.
        divergence_threshold: Stop once the metric is worse than this.
        check_on_train_epoch_end: Check at the end of the training epoch (``None``: Lightning's choice).
        log_rank_zero_only: Print messages from rank zero only.
        restore_best_weights: Keep a host copy of the best weights and load it when training ends.
        start_from_epoch: First epoch whose checks count (``>= 0``).

    Raises:
        ValueError: If ``mode`` is not ``"min"``/``"max"``, or ``min_delta``, ``patience`` or ``start_from_epoch``
            is negative.

    Example::

        from lightning.pytorch import Trainer
        from lightning_tricks.callbacks import EarlyStopping

        stop = EarlyStopping("val/loss", patience=5, restore_best_weights=True, start_from_epoch=3)
        trainer = Trainer(max_epochs=100, callbacks=[stop])
        trainer.fit(model)  # model now holds the weights of the best validation check
    """

    strategy_policy = StrategyRefusal(
        "with restore_best_weights=True each rank would keep and restore only its shard of the weights",
        "Use restore_best_weights=False with ModelCheckpoint(monitor=...) and load the best checkpoint.",
    )

    def __init__(
        self,
        monitor: str,
        min_delta: float = 0.0,
        patience: int = 3,
        verbose: bool = False,
        mode: Literal["min", "max"] = "min",
        strict: bool = True,
        check_finite: bool = True,
        stopping_threshold: float | None = None,
        divergence_threshold: float | None = None,
        check_on_train_epoch_end: bool | None = None,
        log_rank_zero_only: bool = False,
        restore_best_weights: bool = False,
        start_from_epoch: int = 0,
    ) -> None:
        check_choice("mode", mode, ("min", "max"))
        check_float("min_delta", min_delta, 0)
        check_int("patience", patience, 0)
        check_int("start_from_epoch", start_from_epoch, 0)
        super().__init__(
            monitor=monitor,
            min_delta=min_delta,
            patience=patience,
            verbose=verbose,
            mode=mode,
            strict=strict,
            check_finite=check_finite,
            stopping_threshold=stopping_threshold,
            divergence_threshold=divergence_threshold,
            check_on_train_epoch_end=check_on_train_epoch_end,
            log_rank_zero_only=log_rank_zero_only,
        )
        self.restore_best_weights = restore_best_weights
        self.start_from_epoch = start_from_epoch
        self.best_weights: dict[str, Tensor] | None = None
        self.best_epoch: int | None = None
        self._check_on_train_epoch_end_arg = check_on_train_epoch_end

    @override
    def strategy_refusal(self, stage: str) -> StrategyRefusal | None:
        return self.strategy_policy if self.restore_best_weights else None  # without it sharded strategies work

    @override
    def reset_fit_state(self) -> None:
        self._check_on_train_epoch_end = self._check_on_train_epoch_end_arg
        inf = torch.tensor(torch.inf)  # Lightning's initial values
        self.wait_count, self.stopped_epoch, self.best_score = 0, 0, inf if self.monitor_op == torch.lt else -inf
        self.stopping_reason, self.stopping_reason_message = EarlyStoppingReason.NOT_STOPPED, None
        self.best_weights, self.best_epoch = None, None

    @override
    def _run_early_stopping_check(self, trainer: pl.Trainer) -> None:
        if trainer.current_epoch < self.start_from_epoch:  # same epoch on every rank: same decision
            return
        improved = False
        current = trainer.callback_metrics.get(self.monitor)
        if self.restore_best_weights and current is not None and not trainer.fast_dev_run:
            # Lightning's min_delta is stored signed (negative in "min" mode); the rule wants its magnitude.
            improved = is_improvement(current.squeeze(), self.best_score, abs(self.min_delta), self.mode)
        super()._run_early_stopping_check(trainer)
        if not self.restore_best_weights:
            return
        # Metrics logged without sync_dist can differ per rank: rank 0 decides for all, so the copies stay identical.
        if trainer.strategy.broadcast(improved, src=0):
            self.best_weights = self._evaluated_weights(trainer)
            self.best_epoch = trainer.current_epoch

    def _evaluated_weights(self, trainer: pl.Trainer) -> dict[str, Tensor]:
        """A host copy of the weights the last validation evaluated (the average when a callback holding averaged
        weights, such as ``EMA``, swapped it in), with rank 0's buffers on every rank."""
        module: nn.Module = trainer.lightning_module
        for cb in trainer.callbacks:  # type: ignore[attr-defined]
            averaged = cb.averaged_module() if isinstance(cb, HoldsAveragedWeights) else None
            if averaged is not None:
                module = averaged
        state = cpu_state_copy(module)
        if trainer.world_size > 1:
            # BatchNorm statistics differ per rank (each rank normalizes its own batches): take rank 0's, so that
            # every rank keeps, and later restores, the same weights. Parameters are identical under DDP already.
            buffers = {name for name, _ in module.named_buffers()}
            state.update(trainer.strategy.broadcast({k: v for k, v in state.items() if k in buffers}, src=0))
        return state

    def will_restore(self) -> bool:
        """Whether ``on_train_end`` loads (or loaded) the best weights into the module."""
        return self.restore_best_weights and self.best_weights is not None

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.restore_best_weights and self.best_weights is not None:
            pl_module.load_state_dict(self.best_weights)
            rank_zero_info(f"EarlyStopping: restored the weights of epoch {self.best_epoch} (best `{self.monitor}`).")

    @override
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "best_weights": self.best_weights, "best_epoch": self.best_epoch}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.best_weights = state_dict.get("best_weights")
        self.best_epoch = state_dict.get("best_epoch")
