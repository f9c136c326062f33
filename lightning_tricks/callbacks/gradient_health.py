"""Detect vanishing, exploding and non-finite gradients, and warn, skip the bad step, or stop training.

Vanishing and exploding gradients: Hochreiter (1991); Bengio, Simard & Frasconi (1994), "Learning long-term
dependencies with gradient descent is difficult"; Pascanu, Mikolov & Bengio (2013), "On the difficulty of training
recurrent neural networks" (norm spikes and clipping); Glorot & Bengio (2010) for per-layer gradient norms in deep
sigmoid networks. Skipping a step with non-finite gradients is what ``torch.amp.GradScaler`` does for fp16. Requested
upstream as Lightning issue #21589 (gradient statistics).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from typing_extensions import override

from lightning_tricks.callbacks._monitoring import (
    GradLayout,
    GradLayoutCache,
    is_logging_step,
    log_metrics,
    logging_step,
    resolve_every_n_steps,
    to_host,
    validate_every_n,
)

_ACTIONS = ("warn", "skip", "stop")
_BUFFER_STEPS = 64  # "warn": checked steps buffered before they are diagnosed together
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


class GradientHealth(Callback):
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

    Cost and syncs: ``"warn"`` does two kernels per checked step: one ``_foreach_norm`` over the gradients, whose
    per-tensor norms are stacked into a row of a preallocated device buffer. The buffered steps are diagnosed
    together, as one batch of tiny kernels, when the buffer holds 64 steps, at a logging step, when the optimizer's
    set of parameters with gradients changes, and before a checkpoint is saved; each step is judged against exactly
    the norms recorded before it, so the verdicts are those of step-by-step checking. Every flag and count stays on
    the device and is copied to the host ONCE per logging interval (zero syncs on other steps). ``"skip"`` and
    ``"stop"`` need a Python branch each checked step, so they diagnose each step at once (~25 tiny kernels) and make
    ONE host sync per checked step (a single fused flag), plus one all-reduce under DDP; use ``check_every_n_steps``
    to thin it out. The parameter list, names and layer grouping are cached per optimizer and rebuilt only when the
    set of parameters with gradients changes.

    Logged keys (rank zero, every ``log_every_n_steps``): ``grad_health/total_norm`` and ``grad_health/median_norm``
    (last checked step), ``grad_health/min_layer_ratio`` (smallest / largest layer gradient norm),
    ``grad_health/vanishing_layers`` (layers flagged in the interval), and the running counts
    ``grad_health/exploding_steps``, ``grad_health/nonfinite_steps``, ``grad_health/skipped_steps``.

    Args:
        action: what to do on an exploding or non-finite step: ``"warn"``, ``"skip"`` or ``"stop"``.
        explode_factor: total norm above this multiple of the running median counts as exploding (> 1).
        vanish_ratio: a layer below this fraction of the largest layer's gradient norm is vanishing, in [0, 1).
        vanish_floor: a layer below this absolute gradient norm is vanishing (>= 0).
        history: how many recent finite total norms the running median uses.
        min_history: norms to record before the exploding test starts, in [1, history].
        check_every_n_steps: check every N optimizer steps (others cost nothing). What remains of a check's cost
            in ``"warn"`` is mostly one read of every gradient (``_foreach_norm``): ~2-3% of a step for a
            784-256-256-10 MLP on one CPU thread, negligible next to a GPU step; N > 1 divides it by N but leaves
            the other steps unseen (with ``"skip"`` / ``"stop"``, unprotected).
        log_every_n_steps: log and warn every N steps; ``None`` uses ``Trainer(log_every_n_steps=...)``.

    Raises:
        ValueError: on an unknown ``action`` or an out-of-range number.

    Example::

        from lightning.pytorch import Trainer
        from lightning_tricks.callbacks import GradientHealth

        trainer = Trainer(callbacks=[GradientHealth(action="skip", explode_factor=20.0)])
    """

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
        if action not in _ACTIONS:
            raise ValueError(f"Expected argument `action` to be one of {_ACTIONS}, but got {action!r}.")
        if not explode_factor > 1.0:
            raise ValueError(f"Expected argument `explode_factor` to be a float > 1, but got {explode_factor!r}.")
        if not 0.0 <= vanish_ratio < 1.0:
            raise ValueError(f"Expected argument `vanish_ratio` to be a float in [0, 1), but got {vanish_ratio!r}.")
        if not vanish_floor >= 0.0:
            raise ValueError(f"Expected argument `vanish_floor` to be a float >= 0, but got {vanish_floor!r}.")
        validate_every_n("history", history, allow_none=False)
        if isinstance(min_history, bool) or not isinstance(min_history, int) or not 1 <= min_history <= history:
            allowed = f"an int in [1, history={history}]"
            raise ValueError(f"Expected argument `min_history` to be {allowed}, but got {min_history!r}.")
        validate_every_n("check_every_n_steps", check_every_n_steps, allow_none=False)
        validate_every_n("log_every_n_steps", log_every_n_steps)
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
        self._layouts = GradLayoutCache()
        # checked steps not diagnosed yet ("warn"): per-tensor gradient norms, one row per step, all of `_layout`
        self._rows: Tensor | None = None
        self._pending = 0
        self._layout: GradLayout | None = None
        # training state (see state_dict)
        self._norms: Tensor = torch.full((history,), float("nan"))  # ring buffer of recent finite total norms
        self._recorded = 0  # norms written to the ring buffer so far
        self._checks = 0  # checked steps in the current logging interval
        self._interval: dict[str, Tensor] = {}  # device accumulators of the interval
        self._layers: list[str] = []  # layer names of the vanishing counts
        self._counts = {"exploding_steps": 0, "nonfinite_steps": 0, "skipped_steps": 0}

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._every_n = resolve_every_n_steps(trainer, self.log_every_n_steps)
        self._trainer = trainer  # for diagnosing buffered steps in `state_dict`, which gets no trainer

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer, self._rows, self._layout, self._pending = None, None, None, 0
        self._layouts.clear()  # drop the references to the parameters

    def _accumulate(self, diag: GradientDiagnosis, layers: list[str]) -> None:
        """Fold a diagnosis (of one or several steps) into the interval's device accumulators, in place."""
        if layers != self._layers:  # first check, or another optimizer's layers: start fresh vanishing counts
            self._layers = layers
            self._interval.pop("vanishing", None)
        acc, device = self._interval, diag.total_norm.device
        counts = {"exploding": diag.exploding.sum(), "nonfinite": diag.nonfinite.sum()}  # int64
        counts["vanishing"] = diag.vanishing.reshape(-1, len(layers)).sum(dim=0)
        for key, count in counts.items():
            acc[key] = count if key not in acc else acc[key].to(device).add_(count)  # `.to`: after a CPU restore
        acc["total_norm"] = diag.total_norm.reshape(-1)[-1]  # the last checked step's values
        acc["median_norm"] = diag.median_norm.reshape(-1)[-1]
        acc["min_layer_ratio"] = diag.min_layer_ratio.reshape(-1)[-1]

    def _record(self, diag: GradientDiagnosis) -> None:
        """Write the diagnosed steps' total norms (NaN when non-finite, so nanmedian ignores them) to the ring."""
        values = torch.where(diag.nonfinite, torch.nan, diag.total_norm).reshape(-1)
        norms = self._norms.to(values.device)
        if values.numel() == 1:
            norms[self._recorded % self.history] = values[0]  # host-int index: no sync
        else:  # oldest-first, append, keep the last `history`, back to ring order (slot = count % history)
            chronological = torch.cat([norms.roll(-(self._recorded % self.history)), values])[-self.history :]
            norms = chronological.roll((self._recorded + values.numel()) % self.history)
        self._norms = norms
        self._recorded += values.numel()

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        step = logging_step(trainer)
        if step % self.check_every_n_steps == 0:
            self._check(trainer, pl_module, optimizer)
        if is_logging_step(trainer, self._every_n, step):
            self._flush(trainer)

    def _diagnose(self, trainer: pl.Trainer | None, layer_norms: Tensor) -> GradientDiagnosis:
        """Diagnose from per-layer gradient norms (a seam for tests and subclasses).

        ``layer_norms`` is ``(L,)`` for the current step (``"skip"`` / ``"stop"``) or ``(n, L)`` for the ``n``
        buffered steps of ``"warn"``, diagnosed later (``trainer`` is then the one of the run, or ``None``).
        """
        history = self._norms.to(layer_norms.device)
        if layer_norms.dim() == 2 and layer_norms.shape[0] > 1:
            history = history.roll(-(self._recorded % self.history))  # oldest first
        return diagnose_gradients(
            layer_norms, history, self.explode_factor, self.vanish_ratio, self.vanish_floor, self.min_history
        )

    def _defer(self, layout: GradLayout, norms: list[Tensor]) -> None:
        """Stack one step's per-tensor gradient norms into the next buffer row (one kernel, no sync)."""
        rows = self._rows
        if layout is not self._layout or rows is None or self._pending == rows.shape[0]:
            self._process()  # rows of another layout, or a full buffer: diagnose them first
            self._layout = layout
            device = norms[0].device
            if rows is None or rows.shape[1] != len(norms) or rows.device != device:
                rows = self._rows = torch.empty(_BUFFER_STEPS, len(norms), dtype=torch.float32, device=device)
        row = rows[self._pending]
        if layout.float32:
            torch.stack(norms, out=row)
        else:
            row.copy_(torch.stack(norms))  # same values as converting each norm to float32
        self._pending += 1

    def _process(self) -> None:
        """Diagnose the buffered steps as one batch and fold them into the history and the accumulators."""
        if self._pending == 0 or self._rows is None or self._layout is None:
            return
        rows, n = self._rows, self._pending
        self._pending = 0
        diag = self._diagnose(self._trainer, self._layout.layer_norms(rows[:n]))
        self._record(diag)
        self._accumulate(diag, self._layout.layers)

    def _check(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer) -> None:
        layout = self._layouts.get(pl_module, optimizer)
        if layout is None:  # no parameter of this optimizer has a gradient
            return
        with torch.no_grad():
            norms = torch._foreach_norm(layout.grads())
        self._checks += 1
        if self.action == "warn":
            self._defer(layout, norms)
            return
        self._process()  # (nothing is buffered outside "warn")
        diag = self._diagnose(trainer, layout.layer_norms(torch.stack(norms).float()))
        self._record(diag)
        self._accumulate(diag, layout.layers)
        # deliberate host sync (one per checked step): skip/stop need a Python branch on the fused flag
        bad = bool(diag.exploding | diag.nonfinite)
        if not trainer.strategy.reduce_boolean_decision(bad, all=False):  # any rank bad -> every rank acts
            return
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = None  # torch optimizers skip params without grad: weights and state stay bitwise equal
        self._counts["skipped_steps"] += 1
        # the message reads a few values on bad steps only (rare, extra syncs accepted)
        what = "exploding or non-finite" if not bad else ("non-finite" if bool(diag.nonfinite) else "exploding")
        message = (
            f"GradientHealth: {what} gradients at step {trainer.global_step} (total norm "
            f"{float(diag.total_norm):.4g}, running median {float(diag.median_norm):.4g}); the update was skipped"
        )
        if self.action == "stop":
            trainer.should_stop = True
            rank_zero_warn(f"{message} and training stops, keeping the last good weights. {_REMEDIES}.")
        else:
            rank_zero_warn(f"{message}. {_REMEDIES}.")

    def _flush(self, trainer: pl.Trainer) -> None:
        """Copy the interval's device accumulators to the host (ONE transfer), log them and warn."""
        self._process()
        if self._checks == 0:
            return
        acc, checks = self._interval, self._checks
        names = ["total_norm", "median_norm", "min_layer_ratio", "exploding", "nonfinite"]
        values = to_host([acc[n] for n in names] + [acc["vanishing"]])  # the one sync of this logging interval
        total, median, min_ratio, exploding, nonfinite = values[:5]
        vanishing = {layer: int(c) for layer, c in zip(self._layers, values[5:], strict=True) if c > 0}
        self._interval, self._checks = {}, 0
        self._counts["exploding_steps"] += int(exploding)
        self._counts["nonfinite_steps"] += int(nonfinite)
        metrics = {"grad_health/total_norm": total, "grad_health/median_norm": median}
        metrics["grad_health/min_layer_ratio"] = min_ratio
        metrics["grad_health/vanishing_layers"] = float(len(vanishing))
        metrics.update({f"grad_health/{k}": float(v) for k, v in self._counts.items()})
        log_metrics(trainer, metrics)
        if self.action == "warn" and (exploding or nonfinite):
            rank_zero_warn(
                f"GradientHealth: exploding gradients on {int(exploding)} and non-finite gradients on "
                f"{int(nonfinite)} of the last {checks} checked steps (last total norm {total:.4g}, running median "
                f"{median:.4g}, threshold {self.explode_factor:g} x median). {_REMEDIES}."
            )
        if vanishing:
            listed = ", ".join(f"{layer} ({c}/{checks} steps)" for layer, c in vanishing.items())
            rank_zero_warn(
                f"GradientHealth: vanishing gradients in {len(vanishing)} layer(s): {listed}; their gradient norm is "
                f"below {self.vanish_ratio:g} x the largest layer's or below {self.vanish_floor:g}. {_REMEDIES}; "
                "ReLU-family activations instead of sigmoid / tanh, and residual connections also help."
            )

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._flush(trainer)  # report what the last partial interval saw

    @override
    def state_dict(self) -> dict[str, Any]:
        # called when checkpointing: moving the device tensors to the host here is a (rare) deliberate sync
        self._process()  # diagnose the buffered steps now: the checkpoint holds their outcome, not the buffer
        return {
            "norms": self._norms.detach().cpu(),
            "recorded": self._recorded,
            "checks": self._checks,
            "interval": {k: v.detach().cpu() for k, v in self._interval.items()},
            "layers": list(self._layers),
            "counts": dict(self._counts),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        norms = state_dict.get("norms")
        if norms is not None and len(norms) == self.history:  # a different `history` starts a fresh buffer
            self._norms = torch.as_tensor(norms, dtype=torch.float32).clone()
            self._recorded = int(state_dict.get("recorded", 0))
        self._checks = int(state_dict.get("checks", 0))
        self._pending = 0  # buffered steps belong to the state being replaced
        self._interval = {k: torch.as_tensor(v).clone() for k, v in state_dict.get("interval", {}).items()}
        self._layers = list(state_dict.get("layers", []))
        self._counts.update(state_dict.get("counts", {}))
