"""Detect vanishing, exploding and non-finite gradients, and warn, skip the bad step, or stop training.

Vanishing and exploding gradients: Hochreiter (1991); Bengio, Simard & Frasconi (1994), "Learning long-term
dependencies with gradient descent is difficult"; Pascanu, Mikolov & Bengio (2013), "On the difficulty of training
recurrent neural networks" (norm spikes and clipping); Glorot & Bengio (2010) for per-layer gradient norms in deep
sigmoid networks. Skipping a step with non-finite gradients is what ``torch.amp.GradScaler`` does for fp16. Requested
upstream as Lightning issue #21589 (gradient statistics).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from typing_extensions import override

from lightning_tricks._tensorboard import register_custom_scalars
from lightning_tricks._validation import check_choice, check_every_n, check_float, check_int
from lightning_tricks.callbacks._base import PerOptimizer, StrategyRefusal, TrickCallback
from lightning_tricks.callbacks._grad_stats import (
    TOTAL_NORM_CHART,
    TOTAL_NORM_KEY,
    GradLayout,
    TotalNormOwner,
    grad_stats,
    owns_total_norm,
)
from lightning_tricks.callbacks._logging import is_logging_step, log_metrics, resolve_every_n_steps, to_host
from lightning_tricks.callbacks._names import parameter_labels
from lightning_tricks.callbacks._steps import OptimizerSteps, optimizer_key

_ACTIONS = ("warn", "skip", "stop")
_COUNTS = ("exploding_steps", "nonfinite_steps", "skipped_steps", "scaler_skipped_steps")
_BUFFER_STEPS = 64  # "warn": checked steps buffered before they are diagnosed together
_SCALER_STREAK = 32  # consecutive GradScaler-skipped steps that are no routine overflow (2**16 -> 1 takes 16)
_REMEDIES = (
    "Classic remedies: normalization layers (batch / layer norm), a better initialization (Xavier / Kaiming, "
    "e.g. `WeightInit`), gradient clipping (e.g. `GradientClipping`), a lower learning rate, or an adaptive "
    "optimizer such as Adam"
)


@dataclass
class GradientDiagnosis:
    """Device tensors describing the gradients of one step (shapes ``()`` / ``(L,)``) or of ``n`` consecutive steps
    (shapes ``(n,)`` / ``(n, L)``); no host sync was needed to build them."""

    total_norm: Tensor  # L2 norm of all gradients
    median_norm: Tensor  # median of the recent recorded total norms (NaN before any)
    nonfinite: Tensor  # bool: some gradient is NaN or infinite
    exploding: Tensor  # bool: total norm > explode_factor x median (after min_history recorded norms)
    vanishing: Tensor  # bool per layer: norm < vanish_ratio x largest layer norm, or < vanish_floor
    min_layer_ratio: Tensor  # smallest layer norm / largest layer norm


def diagnose_gradients(
    layer_norms: Tensor,
    history: Tensor,
    explode_factor: float = 10.0,
    vanish_ratio: float = 1e-3,
    vanish_floor: float = 1e-7,
    min_history: int = 10,
) -> GradientDiagnosis:
    """Classify gradients from per-layer L2 norms and a buffer of recent total norms (NaN = empty slot).

    Args:
        layer_norms: ``(L,)`` per-layer norms of one step, or ``(n, L)`` for ``n`` consecutive steps.
        history: ``(H,)`` recorded total norms before the first step, NaN for empty slots and non-finite steps. For
            ``n > 1`` it must be oldest first: step ``i`` is then judged against the ``H`` norms recorded just before
            it (the end of ``history``, then steps ``0 .. i-1``, NaN where non-finite), exactly as if the steps were
            diagnosed one at a time and recorded in between. For one step its order does not matter.
        explode_factor: see :class:`GradientHealth`.
        vanish_ratio: see :class:`GradientHealth`.
        vanish_floor: see :class:`GradientHealth`.
        min_history: see :class:`GradientHealth`.

    Returns:
        A :class:`GradientDiagnosis` with one entry per step (no step dimension for ``(L,)`` input).

    Pure tensor maths, branch-free (branches depend on shapes only), no host sync.
    """
    rows = layer_norms if layer_norms.dim() == 2 else layer_norms.unsqueeze(0)
    total = torch.linalg.vector_norm(rows, dim=1)
    nonfinite = ~torch.isfinite(total)
    if rows.shape[0] == 1:
        windows = history.unsqueeze(0)
    else:  # row i: the H norms recorded before step i (a sliding-window view, no copy)
        recorded = torch.where(nonfinite[:-1], torch.nan, total[:-1])
        windows = torch.cat([history, recorded]).unfold(0, history.numel(), 1)
    median = torch.nanmedian(windows, dim=1).values
    enough = (~torch.isnan(windows)).sum(dim=1) >= min_history
    exploding = enough & (total > explode_factor * median)
    largest = rows.nan_to_num(0.0, 0.0, 0.0).amax(dim=1, keepdim=True)  # largest finite layer norm (norms are >= 0)
    vanishing = rows < (vanish_ratio * largest).clamp_min_(vanish_floor)  # below the ratio OR below the floor
    min_ratio = rows.amin(dim=1) / largest.squeeze(1).clamp_min(torch.finfo(rows.dtype).tiny)
    if layer_norms.dim() == 1:
        return GradientDiagnosis(total[0], median[0], nonfinite[0], exploding[0], vanishing[0], min_ratio[0])
    return GradientDiagnosis(total, median, nonfinite, exploding, vanishing, min_ratio)


class GradientHealth(TotalNormOwner, TrickCallback):
    r"""Detect vanishing, exploding and non-finite gradients; warn, skip the bad step, or stop training.

    Runs in ``on_before_optimizer_step``: gradients are unscaled under AMP, all-reduced under DDP and not yet clipped
    (put it before any clipping callback in ``callbacks=[...]``). A *layer* is a module owning parameters.

    - exploding: the total gradient norm exceeds ``explode_factor`` times the running median of the last ``history``
      finite total norms (checked once ``min_history`` norms are recorded), or is non-finite. A non-finite loss shows
      up here as non-finite gradients.
    - vanishing: a layer's gradient norm is below ``vanish_ratio`` times the largest layer's, or below
      ``vanish_floor``. Vanishing is chronic, so it is always reported as a warning, never skipped or stopped on.

    Actions on an exploding or non-finite step: ``"warn"`` reports it; ``"skip"`` drops that step's update: every
    gradient of the optimizer is set to ``None`` so torch optimizers leave those parameters AND their state
    (moments, step counts) bitwise untouched (``torch.amp.GradScaler`` then skips as usual); ``"stop"`` skips the
    step too (so a ``ModelCheckpoint`` only ever sees the last good weights) and sets ``trainer.should_stop``.
    Under DDP a step is skipped on every rank when any rank flags it (``reduce_boolean_decision(all=False)``).

    Steps (the step rule, :mod:`lightning_tricks.callbacks._steps`): a step is one optimizer step of one
    optimizer. Every optimizer (a GAN's generator and discriminator, automatic or manual optimization) has its own
    norm history, counts and logged keys, so one optimizer's gradients are never judged against another's. Skipped
    batches (``training_step`` returning ``None``) and accumulation micro-batches are not checked;
    ``check_every_n_steps`` counts each optimizer's own steps.

    Precision: every Lightning precision works. Under ``16-mixed`` with a ``GradScaler``, non-finite gradients are
    the scaler's routine overflow (it skips that step and lowers its scale): they are counted as
    ``scaler_skipped_steps``, never as non-finite or exploding, and never skip or stop anything; a warning says when
    the scaler has skipped 32 checked steps in a row (seen at logging steps: a NaN loss, not an overflow). Norms of
    ``16-true`` / ``bf16-true`` gradients are taken in float32. Sharded strategies (FSDP, DeepSpeed) are refused at
    ``setup``: each rank holds only a shard of the gradients.

    Cost and syncs: ``"warn"`` does three kernels per checked step: one ``_foreach_norm`` over the gradients (shared),
    whose per-tensor norms are stacked and copied into a row of a preallocated device buffer. The buffered steps are
    diagnosed together, as one batch of tiny kernels, when the buffer holds 64 steps, at a logging step, when the
    optimizer's set of parameters with gradients changes, and before a checkpoint is saved; each step is judged against
    exactly the norms recorded before it, so the verdicts are those of step-by-step checking. Every flag and count stays
    on the device and is copied to the host ONCE per logging interval (zero syncs on other steps). ``"skip"`` and
    ``"stop"`` need a Python branch each checked step, so they diagnose each step at once (~25 tiny kernels) and make
    ONE host sync per checked step (a single fused flag), plus one all-reduce under DDP; use ``check_every_n_steps`` to
    thin it out. The parameter list, names and layer grouping are cached per optimizer and rebuilt only when the set of
    parameters with gradients changes.

    Shared statistics (:mod:`lightning_tricks.callbacks._grad_stats`): the per-parameter gradient norms of a step are
    computed once and shared with ``GradientClipping`` and ``WeightNormMonitor``; they are those of the gradients
    before clipping by norm, whatever the order of the callbacks.

    Logged keys (rank zero, every ``log_every_n_steps``, at the end of the batch): ``grad_health/median_norm`` (last
    checked step), ``grad_health/min_layer_ratio`` (smallest / largest layer gradient norm),
    ``grad_health/vanishing_layers`` (layers flagged in the interval, from the first such layer on), and the running
    event counts ``grad_health/exploding_steps``, ``grad_health/nonfinite_steps``, ``grad_health/skipped_steps``,
    ``grad_health/scaler_skipped_steps``, each logged from its first event on (a chart of zeros says nothing; one
    "events" chart of the custom-scalar layout gathers them). ``grad_norm/total`` (the last checked step's total
    norm) only when no ``WeightNormMonitor`` is in the trainer: the total is logged once, by one owner. With several
    optimizers every key ends in ``/opt<i>`` (``i``: the optimizer's index in ``trainer.optimizers``), e.g.
    ``grad_health/median_norm/opt1``. TensorBoard only: these charts in the "gradient health" category of the run's
    one custom-scalar layout.

    Args:
        action: what to do on an exploding or non-finite step: ``"warn"``, ``"skip"`` or ``"stop"``.
        explode_factor: total norm above this multiple of the running median counts as exploding (> 1).
        vanish_ratio: a layer below this fraction of the largest layer's gradient norm is vanishing, in [0, 1).
        vanish_floor: a layer below this absolute gradient norm is vanishing (>= 0).
        history: how many recent finite total norms the running median uses.
        min_history: norms to record before the exploding test starts, in [1, history].
        check_every_n_steps: check every N optimizer steps (others cost nothing). What remains of a check's cost
            in ``"warn"`` is mostly one read of every gradient (``_foreach_norm``); N > 1 divides it by N but leaves
            the other steps unseen (with ``"skip"`` / ``"stop"``, unprotected).
        log_every_n_steps: log and warn every N steps; ``None`` uses ``Trainer(log_every_n_steps=...)``.

    Raises:
        ValueError: on an unknown ``action`` or an out-of-range number.

    Example::

        from lightning.pytorch import Trainer
        from lightning_tricks.callbacks import GradientHealth

        trainer = Trainer(callbacks=[GradientHealth(action="skip", explode_factor=20.0)])
    """

    total_norm_priority = 1  # logs grad_norm/total unless a WeightNormMonitor does (see _grad_stats)
    strategy_policy = StrategyRefusal(
        "each rank holds only a shard of the gradients, so the norms and the decisions would differ per rank",
        "Use a DDP strategy, or leave GradientHealth out.",
    )

    def __init__(
        self,
        action: Literal["warn", "skip", "stop"] = "warn",
        explode_factor: float = 10.0,
        vanish_ratio: float = 1e-3,
        vanish_floor: float = 1e-7,
        history: int = 100,
        min_history: int = 10,
        check_every_n_steps: int = 1,
        log_every_n_steps: int | None = None,
    ) -> None:
        check_choice("action", action, _ACTIONS)
        check_float("explode_factor", explode_factor, 1, low_open=True, finite=False)
        check_float("vanish_ratio", vanish_ratio, 0, 1, high_open=True)
        check_float("vanish_floor", vanish_floor, 0)
        check_every_n("history", history, allow_none=False)
        check_int("min_history", min_history, 1, history)
        check_every_n("check_every_n_steps", check_every_n_steps, allow_none=False)
        check_every_n("log_every_n_steps", log_every_n_steps)
        self.action = action
        self.explode_factor = float(explode_factor)
        self.vanish_ratio = float(vanish_ratio)
        self.vanish_floor = float(vanish_floor)
        self.history = history
        self.min_history = min_history
        self.check_every_n_steps = check_every_n_steps
        self.log_every_n_steps = log_every_n_steps
        self._every_n = 0
        self._trainer: pl.Trainer | None = None
        self._owns_total = True  # logs grad_norm/total unless a WeightNormMonitor does (decided at fit start)
        self._labels: dict[str, str] = {}
        self._scaled = False  # a GradScaler handles non-finite gradients (16-mixed)
        self._steps = OptimizerSteps()
        # training state, one per optimizer (see state_dict)
        self._opts = PerOptimizer(functools.partial(_OptimizerHealth.empty, history))

    @override
    def reset_fit_state(self) -> None:
        self._opts.clear()
        self._steps.reset()

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._every_n = resolve_every_n_steps(trainer, self.log_every_n_steps)
        self._trainer = trainer  # for diagnosing buffered steps in `state_dict`, which gets no trainer
        self._scaled = getattr(trainer.precision_plugin, "scaler", None) is not None

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._steps.attach(trainer)
        self._owns_total = owns_total_norm(self, trainer)
        self._labels = parameter_labels(pl_module)  # warnings name layers as "net.1 Linear(784→1024)"
        charts = {"median of recent total norms": [r"^grad_health/median_norm"]}
        if self._owns_total:
            charts = {TOTAL_NORM_CHART: [r"^grad_norm/total"], **charts}
        charts["events: exploding, non-finite, skipped steps (running counts)"] = [r"^grad_health/.*_steps"]
        charts["vanishing layers; smallest / largest layer norm"] = [r"^grad_health/(vanishing_layers|min_layer_ratio)"]
        register_custom_scalars(trainer, "gradient health", charts)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = None
        for state in self._opts:
            state.rows, state.layout = [], None
        self._steps.detach()
        super().teardown(trainer, pl_module, stage)  # drop the shared statistics (and their references to parameters)

    def _masked(self, diag: GradientDiagnosis) -> tuple[Tensor, Tensor, Tensor]:
        """``(exploding, nonfinite, scaler_skipped)`` flags. Under a GradScaler non-finite gradients are the scaler's
        routine overflow (it skips that step and lowers its scale): not exploding, not non-finite."""
        if not self._scaled:
            return diag.exploding, diag.nonfinite, torch.zeros_like(diag.nonfinite)
        return diag.exploding & ~diag.nonfinite, torch.zeros_like(diag.nonfinite), diag.nonfinite

    def _accumulate(self, state: _OptimizerHealth, diag: GradientDiagnosis, layers: list[str]) -> None:
        """Fold a diagnosis (of one or several steps) into the interval's device accumulators, in place."""
        if layers != state.layers:  # first check, or other layers (frozen / unfrozen): start fresh vanishing counts
            state.layers = layers
            state.interval.pop("vanishing", None)
        acc, device = state.interval, diag.total_norm.device
        exploding, nonfinite, scaler_skipped = self._masked(diag)
        counts = {"exploding": exploding.sum(), "nonfinite": nonfinite.sum(), "scaler_skipped": scaler_skipped.sum()}
        counts["vanishing"] = diag.vanishing.reshape(-1, len(layers)).sum(dim=0)
        for key, count in counts.items():
            acc[key] = count if key not in acc else acc[key].to(device).add_(count)  # `.to`: after a CPU restore
        acc["total_norm"] = diag.total_norm.reshape(-1)[-1]  # the last checked step's values
        acc["median_norm"] = diag.median_norm.reshape(-1)[-1]
        acc["min_layer_ratio"] = diag.min_layer_ratio.reshape(-1)[-1]

    def _record(self, state: _OptimizerHealth, diag: GradientDiagnosis) -> None:
        """Write the diagnosed steps' total norms (NaN when non-finite, so nanmedian ignores them) to the ring."""
        values = torch.where(diag.nonfinite, torch.nan, diag.total_norm).reshape(-1).float()
        norms = state.norms.to(values.device)
        if values.numel() == 1:
            norms[state.recorded % self.history] = values[0]  # host-int index: no sync
        else:  # oldest-first, append, keep the last `history`, back to ring order (slot = count % history)
            chronological = torch.cat([norms.roll(-(state.recorded % self.history)), values])[-self.history :]
            norms = chronological.roll((state.recorded + values.numel()) % self.history)
        state.norms = norms
        state.recorded += values.numel()

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        index = self._steps.index(optimizer)
        if self._steps.count(index) % self.check_every_n_steps == 0:  # this optimizer's own steps (the step rule)
            self._check(trainer, pl_module, optimizer, index)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if is_logging_step(trainer, self._every_n):
            self._flush(trainer)

    def _diagnose(self, state: _OptimizerHealth, layer_norms: Tensor) -> GradientDiagnosis:
        """Diagnose from per-layer gradient norms against ``state``'s history (a seam for tests and subclasses).

        ``layer_norms`` is ``(L,)`` for the current step (``"skip"`` / ``"stop"``) or ``(n, L)`` for the ``n``
        buffered steps of ``"warn"``.
        """
        history = state.norms.to(layer_norms.device)
        if layer_norms.dim() == 2 and layer_norms.shape[0] > 1:
            history = history.roll(-(state.recorded % self.history))  # oldest first
        return diagnose_gradients(
            layer_norms, history, self.explode_factor, self.vanish_ratio, self.vanish_floor, self.min_history
        )

    def _defer(self, state: _OptimizerHealth, layout: GradLayout, norms: Tensor) -> None:
        """Keep one step's ``[P]`` per-tensor gradient norms for the next batch diagnosis (no kernel, no sync).

        The tensor is the shared statistics' own, which nothing changes in place (post-clip norms are new tensors).
        """
        if layout is not state.layout or len(state.rows) == _BUFFER_STEPS:
            self._process(state)  # rows of another layout, or a full buffer: diagnose them first
            state.layout = layout
        state.rows.append(norms)

    def _process(self, state: _OptimizerHealth) -> None:
        """Diagnose the buffered steps as one batch and fold them into the history and the accumulators."""
        if not state.rows or state.layout is None:
            return
        rows, state.rows = torch.stack(state.rows).float(), []  # float32, as converting each norm to float32
        diag = self._diagnose(state, state.layout.layer_norms(rows))
        self._record(state, diag)
        self._accumulate(state, diag, state.layout.layers)

    def _check(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer, index: int
    ) -> None:
        # One _foreach_norm per step, shared with WeightNormMonitor and GradientClipping (float32 norms of 16-bit
        # gradients: a 16-true gradient norm above 65504 must not read as inf); the gradients as backward made them.
        stats = grad_stats(pl_module, optimizer)
        if stats is None:  # no parameter of this optimizer has a gradient: not a step (a skipped batch)
            return
        layout, norms = stats.layout, stats.norms_before_clip
        state = self._opts[index]
        state.checks += 1
        if self.action == "warn":
            self._defer(state, layout, norms)
            return
        diag = self._diagnose(state, layout.layer_norms(norms.float()))
        self._record(state, diag)
        self._accumulate(state, diag, layout.layers)
        exploding, nonfinite, _ = self._masked(diag)
        # deliberate host sync (one per checked step): skip/stop need a Python branch on the fused flag
        bad = bool(exploding | nonfinite)
        if not trainer.strategy.reduce_boolean_decision(bad, all=False):  # any rank bad -> every rank acts
            return
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = None  # torch optimizers skip params without grad: weights and state stay bitwise equal
        state.counts["skipped_steps"] += 1
        # the message reads a few values on bad steps only (rare, extra syncs accepted)
        what = "exploding or non-finite" if not bad else ("non-finite" if bool(nonfinite) else "exploding")
        message = (
            f"GradientHealth: {what} gradients at step {self._steps.count(index)} of optimizer {index} (total norm "
            f"{float(diag.total_norm):.4g}, running median {float(diag.median_norm):.4g}); the update was skipped"
        )
        if self.action == "stop":
            trainer.should_stop = True
            rank_zero_warn(f"{message} and training stops, keeping the last good weights. {_REMEDIES}.")
        else:
            rank_zero_warn(f"{message}. {_REMEDIES}.")

    def _flush(self, trainer: pl.Trainer) -> None:
        """Copy every optimizer's interval accumulators to the host (ONE transfer), log them and warn."""
        names = ["total_norm", "median_norm", "min_layer_ratio", "exploding", "nonfinite", "scaler_skipped"]
        for state in self._opts:
            self._process(state)
        active = [(i, state) for i, state in enumerate(self._opts) if state.checks > 0]
        if not active:
            return
        # the one sync of this logging interval
        values = to_host([t for _, state in active for t in [*(state.interval[n] for n in names), state.vanishing]])
        metrics: dict[str, float] = {}
        for i, state in active:
            row, values = values[: len(names) + len(state.layers)], values[len(names) + len(state.layers) :]
            metrics.update(self._report(i, state, dict(zip(names, row, strict=False)), row[len(names) :]))
        log_metrics(trainer, metrics)

    def _report(
        self, index: int, state: _OptimizerHealth, acc: dict[str, float], vanishing_counts: list[float]
    ) -> dict[str, float]:
        """One optimizer's logged values for an interval (and its warnings); resets its interval."""
        checks, total, median = state.checks, acc["total_norm"], acc["median_norm"]
        exploding, nonfinite = int(acc["exploding"]), int(acc["nonfinite"])
        vanishing = {layer: int(c) for layer, c in zip(state.layers, vanishing_counts, strict=True) if c > 0}
        state.interval, state.checks = {}, 0
        state.counts["exploding_steps"] += exploding
        state.counts["nonfinite_steps"] += nonfinite
        state.counts["scaler_skipped_steps"] += int(acc["scaler_skipped"])
        # A GradScaler that skips every step is no longer a routine overflow: training is not moving (a NaN loss).
        state.scaler_streak = state.scaler_streak + checks if int(acc["scaler_skipped"]) == checks else 0
        if state.scaler_streak >= _SCALER_STREAK and not state.warned_streak:
            state.warned_streak = True
            rank_zero_warn(
                f"GradientHealth{'' if len(self._opts) <= 1 else f' (optimizer {index})'}: the GradScaler skipped the"
                f" last {state.scaler_streak} checked steps (non-finite gradients every time), so the weights are not"
                f" being updated: the loss is probably NaN or inf, not an fp16 overflow. {_REMEDIES}."
            )
        values = {"grad_health/median_norm": median, "grad_health/min_layer_ratio": acc["min_layer_ratio"]}
        state.vanishing_seen = state.vanishing_seen or bool(vanishing)
        if state.vanishing_seen:  # like the event counters below: from the first vanishing layer on
            values["grad_health/vanishing_layers"] = float(len(vanishing))
        # event counters are drawn from their first event on: a chart of zeros says nothing
        values.update({f"grad_health/{k}": float(v) for k, v in state.counts.items() if v > 0})
        if self._owns_total:
            values[TOTAL_NORM_KEY] = total
        where = "" if len(self._opts) <= 1 else f" (optimizer {index})"
        if self.action == "warn" and (exploding or nonfinite):
            rank_zero_warn(
                f"GradientHealth{where}: exploding gradients on {exploding} and non-finite gradients on "
                f"{nonfinite} of the last {checks} checked steps (last total norm {total:.4g}, running median "
                f"{median:.4g}, threshold {self.explode_factor:g} x median). {_REMEDIES}."
            )
        if vanishing:
            labels = self._labels
            listed = ", ".join(f"{labels.get(layer, layer)} ({c}/{checks} steps)" for layer, c in vanishing.items())
            rank_zero_warn(
                f"GradientHealth{where}: vanishing gradients in {len(vanishing)} layer(s): {listed}; their gradient "
                f"norm is below {self.vanish_ratio:g} x the largest layer's or below {self.vanish_floor:g}. "
                f"{_REMEDIES}; ReLU-family activations instead of sigmoid / tanh, and residual connections also help."
            )
        return {optimizer_key(k, index, len(self._opts)): v for k, v in values.items()}

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._flush(trainer)  # report what the last partial interval saw

    @override
    def state_dict(self) -> dict[str, Any]:
        # called when checkpointing: moving the device tensors to the host here is a (rare) deliberate sync
        for state in self._opts:
            self._process(state)  # diagnose the buffered steps now: the checkpoint holds their outcome
        return {"optimizers": self._opts.state_dict(_OptimizerHealth.to_dict), **self._steps.state_dict()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._opts.load_state_dict(
            state_dict["optimizers"], lambda entry: _OptimizerHealth.empty(self.history).load(entry)
        )
        self._steps.load_state_dict(state_dict)


@dataclass
class _OptimizerHealth:
    """The training state of :class:`GradientHealth` for one optimizer (the step rule: never mixed across them)."""

    norms: Tensor  # ring buffer of recent finite total norms (NaN: empty / non-finite)
    recorded: int = 0  # norms written to the ring buffer so far
    checks: int = 0  # checked steps in the current logging interval
    interval: dict[str, Tensor] = field(default_factory=dict)  # device accumulators of the interval
    layers: list[str] = field(default_factory=list)  # layer names of the vanishing counts
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_COUNTS, 0))  # running counts
    scaler_streak: int = 0  # consecutive checked steps the GradScaler skipped (known at logging steps)
    warned_streak: bool = False
    vanishing_seen: bool = False  # a layer has vanished once: `vanishing_layers` is logged from then on
    # "warn": checked steps not diagnosed yet (each step's [P] per-tensor gradient norms, all of `layout`)
    rows: list[Tensor] = field(default_factory=list)
    layout: GradLayout | None = None

    @classmethod
    def empty(cls, history: int) -> _OptimizerHealth:
        """The state of an optimizer not checked yet: a ring of ``history`` empty (NaN) slots."""
        return cls(torch.full((history,), float("nan")))

    @property
    def vanishing(self) -> Tensor:
        """Per-layer vanishing counts of the interval."""
        return self.interval["vanishing"]

    def to_dict(self) -> dict[str, Any]:
        """Plain values (device tensors copied to the host)."""
        return {
            "norms": self.norms.detach().cpu(),
            "recorded": self.recorded,
            "checks": self.checks,
            "interval": {k: v.detach().cpu() for k, v in self.interval.items()},
            "layers": list(self.layers),
            "counts": dict(self.counts),
            "scaler_streak": self.scaler_streak,
            "vanishing_seen": self.vanishing_seen,
        }

    def load(self, entry: dict[str, Any]) -> _OptimizerHealth:
        """Restore :meth:`to_dict` into this state and return it (a ring of another size than this one's stays fresh:
        ``history`` changed)."""
        norms = entry.get("norms")
        if norms is not None and len(norms) == len(self.norms):
            self.norms = torch.as_tensor(norms, dtype=torch.float32).clone()
            self.recorded = int(entry.get("recorded", 0))
        self.checks = int(entry.get("checks", 0))
        self.interval = {k: torch.as_tensor(v).clone() for k, v in entry.get("interval", {}).items()}
        self.layers = list(entry.get("layers", []))
        self.counts.update(entry.get("counts", {}))
        self.scaler_streak = int(entry.get("scaler_streak", 0))
        self.vanishing_seen = bool(entry.get("vanishing_seen", False))
        return self
