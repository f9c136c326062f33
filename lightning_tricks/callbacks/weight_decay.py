"""Weight decay as a callback: an explicit L2 penalty, or decoupled weight decay, excluding biases and norm layers.

Sources: the L2 penalty ``λ/2·‖w‖²`` on the loss (Krogh & Hertz 1992, "A Simple Weight Decay Can Improve
Generalization"), and decoupled weight decay, Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization"
(the ``AdamW`` / ``SGDW`` rule ``w ← w - lr·λ·w``, applied apart from the adaptive gradient step).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.optim import Optimizer
from typing_extensions import override

from lightning_tricks._validation import check_choice, check_float
from lightning_tricks.callbacks._base import StrategyRefusal, TrickCallback
from lightning_tricks.callbacks._logging import logging_step, trainer_logs_now

DecayMode = Literal["l2", "decoupled"]
NORM_LAYERS: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,  # BatchNorm*d, SyncBatchNorm, InstanceNorm*d
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.RMSNorm,
)


def decay_parameters(module: nn.Module, exclude_bias_and_norm: bool = True) -> list[nn.Parameter]:
    """The trainable parameters of ``module`` that weight decay applies to.

    With ``exclude_bias_and_norm``, leaves out every parameter of a normalization layer (:data:`NORM_LAYERS`) and every
    parameter with ``ndim <= 1`` (biases, scales). Shared parameters are listed once.
    """
    excluded: set[int] = set()
    if exclude_bias_and_norm:
        for m in module.modules():
            if isinstance(m, NORM_LAYERS):
                excluded.update(id(p) for p in m.parameters(recurse=False))
    return [
        p
        for p in module.parameters()
        if p.requires_grad and id(p) not in excluded and not (exclude_bias_and_norm and p.ndim <= 1)
    ]


@torch.no_grad()
def add_l2_gradient_(params: list[Tensor], coefficient: float) -> None:
    """``grad ← grad + λ·w`` in place: the gradient of the penalty ``λ/2·‖w‖²``. Parameters without grad are skipped."""
    params = [p for p in params if p.grad is not None]
    if params:
        torch._foreach_add_([p.grad for p in params], params, alpha=coefficient)


@torch.no_grad()
def decoupled_decay_(
    params: list[Tensor], lr: float | Tensor, coefficient: float, skipped: Tensor | None = None
) -> None:
    """``w ← w·(1 - lr·λ)`` in place (decoupled weight decay, as ``torch.optim.AdamW`` does before its update).

    ``skipped``: a device flag (nonzero: the step will be skipped, e.g. by a ``GradScaler``); the weights are then left
    unchanged, decided on the device (``torch.where``), without a host sync.
    """
    if not params:
        return
    factor = 1.0 - lr * coefficient
    if skipped is not None:
        factor = torch.where(skipped.to(params[0].device) > 0, 1.0, torch.as_tensor(factor, device=params[0].device))
    torch._foreach_mul_(params, factor)


def scaler_skips(trainer: pl.Trainer, optimizer: Optimizer) -> Tensor | None:
    """A device flag, nonzero when the trainer's ``GradScaler`` found non-finite gradients for ``optimizer`` (it will
    skip this step); ``None`` without a scaler or before it unscaled this optimizer's gradients.

    Lightning's ``MixedPrecision`` unscales before ``on_before_optimizer_step``; the flags are the scaler's own
    (``GradScaler._per_optimizer_states``, private to torch: if its layout changes, this returns ``None`` and the
    shrink happens on skipped steps too).
    """
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    states = getattr(scaler, "_per_optimizer_states", None)
    found = states.get(id(optimizer), {}).get("found_inf_per_device") if isinstance(states, dict) else None
    if not found:
        return None
    flags = list(found.values())
    return torch.stack([f.to(flags[0].device) for f in flags]).sum()


@torch.no_grad()
def l2_penalty(params: Iterable[Tensor], coefficient: float) -> Tensor:
    """``λ/2·Σ‖w‖²`` as a 0-dim device tensor (no host sync); ``0`` for no parameter."""
    params = list(params)
    if not params:
        return torch.zeros(())
    norms = torch.stack([n.float() for n in torch._foreach_norm(params)])
    return 0.5 * coefficient * norms.square().sum()


class WeightDecay(TrickCallback):
    """Weight decay without touching ``configure_optimizers``: explicit L2 gradient or decoupled shrinking.

    Both modes run in ``on_before_optimizer_step``, once per optimizer step, on the parameters of the optimizer being
    stepped that weight decay applies to (by default: not biases, not 1-D parameters, not normalization layers):

    - ``mode="l2"``: ``grad ← grad + λ·w``, the gradient of ``λ/2·‖w‖²`` added to the loss (like the
      ``weight_decay`` of ``torch.optim.SGD``). Gradients there are unscaled (AMP) and all-reduced (DDP), so every rank
      adds the same term. To clip the penalty's gradient too, list this callback *before*
      :class:`~lightning_tricks.callbacks.GradientClipping`.
    - ``mode="decoupled"``: ``w ← w·(1 - lr·λ)`` with each param group's current ``lr``, just before the optimizer's
      update (exactly ``torch.optim.AdamW``'s rule, Loshchilov & Hutter 2019). Under ``16-mixed`` the steps the
      ``GradScaler`` skips are not shrunk either (decided on the device from the scaler's own flag, no sync).

    Steps (the step rule, :mod:`lightning_tricks.callbacks._steps`): a step is one optimizer step of one
    optimizer; each optimizer's parameters are decayed at that optimizer's steps only (a GAN's generator and
    discriminator each at their own). Skipped batches (``training_step`` returning ``None``: no gradient) and
    accumulation micro-batches are not decayed. Put :class:`~lightning_tricks.callbacks.GradientHealth` before this
    callback so that an update it drops is not decayed either. ``weight_decay/penalty`` is logged once per logging
    batch, over the decayed parameters of all optimizers.

    Precision: every Lightning precision works. Sharded strategies (FSDP, DeepSpeed) are refused at ``setup``: they
    flatten parameters into 1-D shards, so the bias / norm-layer exclusion cannot be applied.

    Cost: one fused ``_foreach_add_`` or ``_foreach_mul_`` per step; at logging steps one fused norm and one host copy.
    Put the optimizer's own ``weight_decay`` to 0 (a warning says so otherwise), or the decay is applied twice.

    Logged keys (at logging steps only): ``weight_decay/penalty``, the value ``λ/2·Σ‖w‖²`` over the decayed
    parameters.

    Args:
        coefficient: ``λ``, >= 0.
        mode: ``"l2"`` or ``"decoupled"``.
        exclude_bias_and_norm: leave out biases, all 1-D parameters and every parameter of normalization layers
            (``BatchNorm``, ``InstanceNorm``, ``LayerNorm``, ``GroupNorm``, ``LocalResponseNorm``, ``RMSNorm``).

    Raises:
        ValueError: if an option is out of range.

    Example::

        from lightning.pytorch import Trainer
        from lightning_tricks.callbacks import WeightDecay

        trainer = Trainer(callbacks=[WeightDecay(coefficient=5e-4)])  # L2 on weights, not biases / norms
        trainer = Trainer(callbacks=[WeightDecay(coefficient=0.05, mode="decoupled")])  # with Adam -> AdamW
    """

    strategy_policy = StrategyRefusal(
        "it flattens parameters into 1-D shards, so biases and normalization layers cannot be told apart",
        "Use the optimizer's own weight_decay (e.g. AdamW) with parameter groups.",
    )

    def __init__(self, coefficient: float = 1e-4, mode: DecayMode = "l2", exclude_bias_and_norm: bool = True) -> None:
        check_choice("mode", mode, DecayMode)
        check_float("coefficient", coefficient, 0)
        self.coefficient = float(coefficient)
        self.mode = mode
        self.exclude_bias_and_norm = exclude_bias_and_norm
        self._params: list[nn.Parameter] = []
        self._ids: set[int] = set()
        self._logged_step = -1

    @override
    def reset_fit_state(self) -> None:
        self._logged_step = -1  # a new fit's logging steps start again at 0

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._params = decay_parameters(pl_module, self.exclude_bias_and_norm)
        self._ids = {id(p) for p in self._params}
        if not self._params:
            rank_zero_warn("`WeightDecay`: no parameter of the module is decayed (all are biases or normalization).")
        for i, opt in enumerate(trainer.optimizers):
            for j, group in enumerate(opt.param_groups):
                if group.get("weight_decay", 0) and any(id(p) in self._ids for p in group["params"]):
                    rank_zero_warn(
                        f"`WeightDecay` callback: optimizer {i} ({type(opt).__name__}) param group {j} already has"
                        f" weight_decay={group['weight_decay']}, so those parameters are decayed twice. Set the"
                        " optimizer's weight_decay to 0."
                    )

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Optimizer
    ) -> None:
        # once per logging batch, however many optimizers step in it
        if trainer_logs_now(trainer) and self._logged_step != (step := logging_step(trainer)):
            self._logged_step = step
            # Deliberate host sync, once per logging interval.
            penalty = l2_penalty(self._params, self.coefficient).item()
            pl_module.log("weight_decay/penalty", penalty, on_step=True, on_epoch=False)
        if self.coefficient == 0:
            return
        if self.mode == "l2":
            params = [p for group in optimizer.param_groups for p in group["params"] if id(p) in self._ids]
            add_l2_gradient_(params, self.coefficient)
        else:
            skipped = scaler_skips(trainer, optimizer)
            for group in optimizer.param_groups:
                params = [p for p in group["params"] if p.grad is not None and id(p) in self._ids]
                decoupled_decay_(params, group["lr"], self.coefficient, skipped)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {}  # nothing changes during training: the decayed set is recomputed from the module at fit start
