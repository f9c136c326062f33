"""Weight norms, gradient norms (before clipping) and update-to-weight ratios, logged without per-step host syncs.

Vanishing and exploding gradients are the classic worry of deep networks (Hochreiter 1991; Bengio, Simard & Frasconi
1994, "Learning long-term dependencies with gradient descent is difficult"; Glorot & Bengio 2010, "Understanding the
difficulty of training deep feedforward neural networks", which tracks per-layer weight-gradient norms). The
update-to-weight ratio ``||dw|| / ||w||`` is the rule-of-thumb health check from Karpathy's CS231n notes (about
``1e-3`` is healthy). Requested upstream as Lightning issues #20190 (weight norms) and #19743 (TensorBoard histograms).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from typing_extensions import override

from lightning_tricks._tensorboard import add_histograms, register_custom_scalars, tag_regex
from lightning_tricks._validation import check_bool, check_every_n
from lightning_tricks.callbacks._base import PerOptimizer, StrategyRefusal, TrickCallback
from lightning_tricks.callbacks._grad_stats import (
    TOTAL_NORM_CHART,
    TOTAL_NORM_KEY,
    TotalNormOwner,
    grad_stats,
    group_norms,
    owns_total_norm,
)
from lightning_tricks.callbacks._logging import (
    is_logging_step,
    log_metrics,
    logging_step,
    resolve_every_n_steps,
    to_host,
)
from lightning_tricks.callbacks._names import group_indices, layer_name, named_optimizer_params, parameter_labels
from lightning_tricks.callbacks._steps import optimizer_index, unwrap

#: Logged family -> its custom-scalars category.
_FAMILIES = {
    "grad_norm": "gradient norm per parameter",
    "weight_norm": "weight norm per parameter",
    "update_ratio": "update / weight ratio per parameter",
}


def update_ratios(
    before: Sequence[Tensor], after: Sequence[Tensor], eps: float = 1e-12, before_norms: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """``||after - before||`` per tensor and the ratio to ``||before||`` (``eps`` guards zero weights); no host sync.

    ``before_norms``: the float32 norms of ``before`` when already known (saves one pass over the weights).

    Returns:
        ``(update_norms[P], ratios[P])`` as float32 device tensors.
    """
    diffs = torch._foreach_sub([a.detach() for a in after], list(before))
    update_norms = torch.stack([n.float() for n in torch._foreach_norm(diffs)])
    weight_norms = before_norms
    if weight_norms is None:
        weight_norms = torch.stack([n.float() for n in torch._foreach_norm(list(before))])
    return update_norms, update_norms / weight_norms.clamp_min(eps)


@dataclass
class _Pending:
    """What a logging step recorded before the optimizer step, to finish after it."""

    names: list[str]
    params: list[Tensor]
    snapshot: list[Tensor]
    weight_norms: Tensor
    grad_norms: Tensor
    total: Tensor


class WeightNormMonitor(TotalNormOwner, TrickCallback):
    r"""Log weight norms, gradient norms before clipping, and update-to-weight ratios ``||dw|| / ||w||``.

    Runs in ``on_before_optimizer_step`` (gradients there are unscaled under AMP, all-reduced under DDP and not yet
    clipped) and in ``on_train_batch_end`` (after the optimizer step, for the update ratio). All maths uses
    ``torch._foreach_norm`` on the device.

    Steps (the step rule, :mod:`lightning_tricks.callbacks._steps`): a step is one optimizer step of one
    optimizer; logging follows the Trainer's ``log_every_n_steps`` (batches in which the optimizers stepped), so
    every key is logged once per logging batch. With several optimizers (a GAN, automatic or manual optimization)
    each parameter's norms come from its own optimizer's step, ``grad_norm/total`` is the norm of ALL their
    gradients together (each optimizer's as it stepped), and ``grad_norm/total/opt<i>`` is optimizer ``i``'s alone.
    An optimizer stepped several times in one batch (a WGAN critic) reports its first step's norms, and an update
    ratio that spans all of its steps in the batch. Skipped batches (``training_step`` returning ``None``) and
    accumulation micro-batches log nothing (no gradients / no step).

    Precision: every Lightning precision works (norms in float32). Sharded strategies (FSDP, DeepSpeed) are refused
    at ``setup``: each rank holds only a shard of the weights and gradients, so the norms would be wrong.

    Cost: on steps that do not log, nothing at all (no kernels, no host sync). On a logging step: two ``_foreach_norm``
    passes, over the weights and the updates (the gradient norms are shared), a temporary copy of the weights (one
    model's worth of memory until the step is done), and ONE device-to-host transfer for every value. Histogram steps
    (the first step of every ``histogram_every_n_epochs``-th epoch) copy each weight and gradient to the host.

    Shared statistics (:mod:`lightning_tricks.callbacks._grad_stats`): the gradient norms are the per-step
    statistics shared with ``GradientHealth`` and ``GradientClipping`` (one ``_foreach_norm`` per step between them),
    read before clipping by norm whatever the order of the callbacks.

    Names: ``<param>`` below is the parameter's path and its module's type, ``layer.0.weight Linear(32→16)``
    (``module_label``), and ``<layer>`` the module's, ``layer.0 Linear(32→16)``, in scalars, histograms and layouts.

    Logged keys (rank zero, to every logger, at Lightning's step index):

    - ``weight_norm/<param>``: L2 norm of the parameter before the step;
    - ``grad_norm/<param>``: L2 norm of its gradient before clipping; ``grad_norm/total``: of all gradients together
      (all optimizers); ``grad_norm/total/opt<i>`` per optimizer when there are several. The monitor owns the total:
      ``GradientHealth`` and ``GradientClipping`` then do not log it;
    - ``update_ratio/<param>``: ``||w_after - w_before|| / ||w_before||`` of that step;
    - with ``per_layer=True`` also ``weight_norm/<layer>``, ``grad_norm/<layer>``, ``update_ratio/<layer>`` for each
      module owning parameters (``<root>`` for parameters registered on the LightningModule itself);
    - TensorBoard only: histograms ``weight_hist/<param>`` and ``grad_hist/<param>``, and, in the run's one merged
      custom-scalar layout (tab "Custom Scalars"), a category per family ("gradient norm per parameter", "weight
      norm per parameter", "update / weight ratio per parameter") with one multi-line chart for the weights
      (matrices, kernels) and one for the biases and norm gains, whose norms are decades apart (plus one per layer
      with ``per_layer``), and the total norm in "gradient health". Other loggers skip these cleanly.

    Args:
        log_every_n_steps: log every N optimizer steps; ``None`` uses ``Trainer(log_every_n_steps=...)``.
        per_layer: also log norms aggregated per module.
        histogram_every_n_epochs: write weight / gradient histograms every N epochs (TensorBoard only);
            ``None`` disables them.

    Raises:
        ValueError: if ``log_every_n_steps`` or ``histogram_every_n_epochs`` is not a positive int or ``None``.

    Example::

        from lightning.pytorch import Trainer
        from lightning_tricks.callbacks import WeightNormMonitor

        trainer = Trainer(callbacks=[WeightNormMonitor(log_every_n_steps=50, per_layer=True)])
    """

    total_norm_priority = 0  # the owner of grad_norm/total when present (see _grad_stats)
    strategy_policy = StrategyRefusal(
        "each rank holds only a shard of the weights and gradients, so the norms would be wrong",
        "Use a DDP strategy, or Lightning's `lightning.pytorch.utilities.grad_norm` in your module.",
    )

    def __init__(
        self,
        log_every_n_steps: int | None = None,
        per_layer: bool = False,
        histogram_every_n_epochs: int | None = 1,
    ) -> None:
        check_every_n("log_every_n_steps", log_every_n_steps)
        check_every_n("histogram_every_n_epochs", histogram_every_n_epochs)
        check_bool("per_layer", per_layer)
        self.log_every_n_steps = log_every_n_steps
        self.per_layer = per_layer
        self.histogram_every_n_epochs = histogram_every_n_epochs
        self._every_n = 0
        self._histogram_epochs = PerOptimizer(_no_epoch)  # per optimizer: the last epoch it wrote histograms in
        self._pending: dict[int, _Pending] = {}  # per optimizer: this batch's record
        self._owns_total = True  # logs grad_norm/total (decided at fit start; see _grad_stats)
        self._labels: dict[str, str] = {}  # parameter / layer name -> "net.1.weight Linear(784→1024)"

    @override
    def reset_fit_state(self) -> None:
        self._histogram_epochs.clear()
        self._pending = {}

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._every_n = resolve_every_n_steps(trainer, self.log_every_n_steps)
        if stage == "fit" and not trainer.loggers:
            rank_zero_warn("`WeightNormMonitor` has no logger to write to: pass `Trainer(logger=...)`.")

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._owns_total = owns_total_norm(self, trainer)
        self._labels = parameter_labels(pl_module)
        params = {n: p for o in trainer.optimizers for n, p in named_optimizer_params(pl_module, unwrap(o))}
        kinds = {
            "weights": [self._labels[n] for n, p in params.items() if p.ndim > 1],
            "biases and norms": [self._labels[n] for n, p in params.items() if p.ndim <= 1],
        }
        if self._owns_total:
            register_custom_scalars(trainer, "gradient health", {TOTAL_NORM_CHART: [r"^grad_norm/total"]})
        for family, category in _FAMILIES.items():
            # Weights and biases / norm gains differ by decades: one chart each, so neither is flat at the bottom.
            charts = {f"{family}: {kind}": [tag_regex(f"{family}/{t}" for t in tags)] for kind, tags in kinds.items()}
            if self.per_layer:
                layers = {self._labels.get(layer_name(n), layer_name(n)) for n in params}
                charts[f"{family}: per layer"] = [tag_regex(f"{family}/{t}" for t in sorted(layers))]
            register_custom_scalars(trainer, category, {t: r for t, r in charts.items() if r[0] != "^()$"})

    def _label(self, name: str) -> str:
        return self._labels.get(name, name)

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        epoch, index = trainer.current_epoch, optimizer_index(trainer, optimizer)
        every_epochs = self.histogram_every_n_epochs
        done = self._histogram_epochs[index] == epoch
        histogram_now = every_epochs is not None and epoch % every_epochs == 0 and not done
        log_now = is_logging_step(trainer, self._every_n) and index not in self._pending  # its first step this batch
        if not (histogram_now or log_now):
            return  # neither a histogram nor a logging step: no parameter walk, no kernels, no sync
        stats = grad_stats(pl_module, optimizer)  # shared with GradientHealth / GradientClipping in this step
        if stats is None:
            return  # no gradient: a skipped batch, not a step
        names, params = stats.layout.names, stats.layout.params
        if histogram_now:
            self._histogram_epochs[index] = epoch
            tensors = {f"weight_hist/{self._label(n)}": p for n, p in zip(names, params, strict=True)}
            tensors.update({f"grad_hist/{self._label(n)}": p.grad for n, p in zip(names, params, strict=True)})
            add_histograms(trainer, tensors, logging_step(trainer))  # type: ignore[arg-type]
        if not log_now:
            return
        with torch.no_grad():
            weight_norms = torch.stack([n.float() for n in torch._foreach_norm([p.detach() for p in params])])
            snapshot = torch._foreach_mul([p.detach() for p in params], 1.0)  # copy of the weights before the step
        # the gradients as backward made them, whatever the order of the callbacks (see _grad_stats)
        grad_norms, total = stats.norms_before_clip.float(), stats.total_before_clip.float()
        self._pending[index] = _Pending(list(names), list(params), snapshot, weight_norms, grad_norms, total)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self._pending:
            return
        keys: list[str] = []
        tensors: list[Tensor] = []
        several = len(trainer.optimizers) > 1
        for index, rec in self._pending.items():
            # the snapshot is an exact copy of the weights whose norms were taken: reuse them
            update_norms, ratios = update_ratios(rec.snapshot, rec.params, before_norms=rec.weight_norms)
            labels = [self._label(n) for n in rec.names]
            keys += [f"weight_norm/{t}" for t in labels] + [f"grad_norm/{t}" for t in labels]
            keys += [f"update_ratio/{t}" for t in labels]
            tensors += [rec.weight_norms, rec.grad_norms, ratios]
            if several and self._owns_total:
                keys.append(f"{TOTAL_NORM_KEY}/opt{index}")
                tensors.append(rec.total)
            if self.per_layer:
                groups = group_indices(rec.names)
                members = list(groups.values())
                layer_weight = group_norms(rec.weight_norms, members)
                layer_update = group_norms(update_norms, members)
                layers = [self._label(layer) for layer in groups]
                keys += [f"weight_norm/{t}" for t in layers] + [f"grad_norm/{t}" for t in layers]
                keys += [f"update_ratio/{t}" for t in layers]
                tensors += [layer_weight, group_norms(rec.grad_norms, members)]
                tensors.append(layer_update / layer_weight.clamp_min(1e-12))
        if self._owns_total:
            totals = torch.stack([rec.total.to(tensors[0].device) for rec in self._pending.values()])
            keys.append(TOTAL_NORM_KEY)  # all gradients of the batch's steps together: sqrt of the sum of squares
            tensors.append(torch.linalg.vector_norm(totals))
        self._pending.clear()
        values = to_host(tensors)  # the one host-device sync of this logging interval
        log_metrics(trainer, dict(zip(keys, values, strict=True)))

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"histogram_epochs": self._histogram_epochs.state_dict()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._histogram_epochs.load_state_dict(state_dict["histogram_epochs"], int)


def _no_epoch() -> int:
    """The epoch an optimizer last wrote histograms in, before it wrote any."""
    return -1
