"""Gradient clipping: by total norm, by value, unit-wise adaptive (AGC), or with an adaptive percentile (AutoClip).

Sources:

- ``"norm"``: the classic rule (Pascanu et al. 2013, "On the difficulty of training recurrent neural networks"): if
  ``‖∇L‖ ≤ θ`` keep the gradient, else rescale it to norm ``θ``.
- ``"value"``: clamp every gradient element to ``[-θ, θ]``.
- ``"agc"``: unit-wise adaptive gradient clipping, Brock et al. 2021, "High-Performance Large-Scale Image Recognition
  Without Normalization" (reference code: timm ``utils/agc.py``): each output unit's gradient is rescaled so that
  ``‖G_i‖ ≤ λ · max(‖W_i‖, eps)``.
- ``"auto"``: AutoClip, Seetharaman et al. 2020, "AutoClip: Adaptive Gradient Clipping for Source Separation
  Networks": the norm threshold is the p-th percentile of the history of total gradient norms.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.optim import Optimizer
from typing_extensions import override

from lightning_tricks._tensorboard import add_text, register_custom_scalars
from lightning_tricks._validation import check_choice, check_float, check_int
from lightning_tricks.callbacks._base import PerOptimizer, StrategyRefusal, TrickCallback
from lightning_tricks.callbacks._grad_stats import (
    TOTAL_NORM_CHART,
    TOTAL_NORM_KEY,
    GradStats,
    TotalNormOwner,
    covers_optimizer,
    grad_stats,
    gradient_norms,
    owns_total_norm,
)
from lightning_tricks.callbacks._logging import trainer_logs_now
from lightning_tricks.callbacks._steps import optimizer_index, optimizer_key

ClipMode = Literal["norm", "value", "agc", "auto"]
#: "norm" mode keeps each step's 0-dim pre-clip norm until it is counted; at most this many between two counts.
_MAX_KEPT_NORMS = 256


def clip_coefficient(max_norm: Tensor | float, total_norm: Tensor) -> Tensor:
    """``min(max_norm / (total_norm + 1e-6), 1)``, the factor of :func:`torch.nn.utils.clip_grads_with_norm_`."""
    return torch.clamp(max_norm / (total_norm + 1e-6), max=1.0)


def clip_to_max_norm_(grads: list[Tensor], max_norm: Tensor | float, total_norm: Tensor) -> Tensor | None:
    """Rescale ``grads`` in place by ``min(max_norm / (total_norm + 1e-6), 1)``; no host sync on an accelerator.

    Unlike :func:`torch.nn.utils.clip_grads_with_norm_`, ``max_norm`` may be a device tensor (AutoClip's threshold).

    Returns:
        The factor the gradients were multiplied by, or ``None`` when they were left untouched (a factor of 1).

    On the CPU, where reading a value costs no device synchronization, a norm within the threshold (a factor of
    exactly 1) skips the work: with a float threshold the comparison is made on the host before any kernel (with a
    margin of a few float32 ulps, so that every skipped step is one where torch's float32 factor is exactly 1), and
    otherwise after computing the factor. Multiplying by 1 would leave every gradient bitwise unchanged, so the
    result is :func:`torch.nn.utils.clip_grads_with_norm_`'s; what is saved is one read and one write of every
    gradient on the steps that are not clipped. On an accelerator the multiplication always runs, so that nothing
    waits for the device.
    """
    if not grads:
        return None
    on_host = reads_are_free(total_norm.device) and reads_are_free(grads[0].device)
    if on_host and isinstance(max_norm, float) and total_norm.item() * (1 + 1e-6) + 2e-6 <= max_norm:
        return None  # NaN / inf norms fail the comparison and are multiplied, as by torch
    coef = clip_coefficient(max_norm, total_norm)
    if on_host and coef.item() == 1.0:
        return None
    torch._foreach_mul_(grads, coef.to(grads[0].device))
    return coef


def reads_are_free(device: torch.device) -> bool:
    """Whether reading a tensor's value on ``device`` from Python costs no synchronization (the CPU's memory)."""
    return device.type == "cpu"


def adaptive_clip_grad_(
    parameters: Iterable[Tensor], clip_factor: float, eps: float = 1e-3, norm_type: float = 2.0
) -> Tensor:
    """Unit-wise adaptive gradient clipping (AGC, Brock et al. 2021), in place, without host sync.

    For every unit ``i`` (a row of a weight: dim 0 of a tensor with ``ndim > 1``; the whole tensor when ``ndim <= 1``)
    the gradient is rescaled to norm ``clip_factor · max(‖W_i‖, eps)`` when it is larger. Same maths as timm's
    ``adaptive_clip_grad``.

    Returns:
        A 0-dim float tensor: the fraction of units whose gradient was rescaled (``0.0`` if no gradient).
    """
    clipped, units = [], 0
    for p in parameters:
        if p.grad is None:
            continue
        dims = tuple(range(1, p.ndim)) if p.ndim > 1 else None
        w_norm = torch.linalg.vector_norm(p.detach(), norm_type, dim=dims, keepdim=p.ndim > 1)
        g_norm = torch.linalg.vector_norm(p.grad.detach(), norm_type, dim=dims, keepdim=p.ndim > 1)
        max_norm = w_norm.clamp(min=eps).mul_(clip_factor)
        too_big = g_norm > max_norm
        p.grad.detach().mul_(torch.where(too_big, max_norm / g_norm.clamp(min=1e-6), 1.0).to(p.grad.dtype))
        clipped.append(too_big.sum())
        units += too_big.numel()
    if not clipped:
        return torch.zeros(())
    return torch.stack(clipped).sum().float() / units


def autoclip_threshold(history: Tensor, percentile: float) -> Tensor:
    """AutoClip's threshold: the ``percentile``-th percentile (linear interpolation) of the finite entries of
    ``history`` (unused slots and non-finite norms are NaN). Returns ``inf`` (no clipping) if there is none."""
    threshold = torch.nanquantile(history, percentile / 100.0)
    return torch.nan_to_num(threshold, nan=math.inf)


class GradientClipping(TotalNormOwner, TrickCallback):
    """Clip gradients before every optimizer step: by total norm, by value, unit-wise (AGC) or adaptively (AutoClip).

    Runs in ``on_before_optimizer_step``: gradients there are unscaled under AMP, already all-reduced under DDP (so
    every rank computes the same norms and makes the same decision without communication), and are clipped before the
    optimizer reads them. Works with manual optimization too (the hook runs inside ``optimizer.step()``). Put a
    :class:`~lightning_tricks.callbacks.WeightDecay` in ``mode="l2"`` *before* this callback in the list so that the
    penalty's gradient is clipped as well. Sharded strategies (FSDP, DeepSpeed) are refused at ``setup``: there each
    rank holds only a part of the gradients; use ``Trainer(gradient_clip_val=...)`` there.

    Steps (the step rule, :mod:`lightning_tricks.callbacks._steps`): a step is one optimizer step of one
    optimizer, and each optimizer is clipped on its own gradients: with several optimizers (a GAN) the total norm is
    that optimizer's, AutoClip keeps one norm history per optimizer, and the logged keys end in ``/opt<i>``. Skipped
    batches (``training_step`` returning ``None``: no gradient) and accumulation micro-batches are not steps.

    Precision: every Lightning precision works. Under ``16-mixed`` the gradients are unscaled here; the non-finite
    norms of the steps the ``GradScaler`` skips are not recorded by AutoClip.

    Modes (``θ`` = ``threshold``):

    - ``"norm"``: if the total ``norm_type``-norm of all gradients exceeds ``θ``, rescale them to norm ``θ``
      (``clip_grad_norm_(foreach=True)``). One fused norm plus one fused multiply per step.
    - ``"value"``: clamp every element to ``[-θ, θ]`` (``clip_grad_value_(foreach=True)``); one extra fused max-norm
      pass per step to count clipped steps.
    - ``"agc"``: ``θ`` is AGC's clipping ratio ``λ`` (Brock et al. use 0.01 to 0.16): per output unit,
      ``G_i ← G_i · λ·max(‖W_i‖, eps)/‖G_i‖`` when ``‖G_i‖`` is larger. A few small kernels per parameter tensor.
    - ``"auto"``: AutoClip: the norm threshold is the ``percentile``-th percentile of all total gradient norms seen so
      far (including the current one), kept in a ``history_size`` ring buffer on the device; ``threshold`` is unused.
      Adds a ``nanquantile`` over the buffer per step. The buffer is training state, saved in the checkpoint.
      Non-finite norms (steps a ``16-mixed`` GradScaler skips) are not recorded.

    Nothing is copied to the host except once per logging interval (``trainer.log_every_n_steps``).

    Shared statistics (:mod:`lightning_tricks.callbacks._grad_stats`): in ``"norm"`` and ``"auto"`` mode with the L2
    norm, the total norm comes from the per-step gradient statistics shared with ``GradientHealth`` and
    ``WeightNormMonitor`` (one ``_foreach_norm`` per step between them), and after clipping the post-clip norms are
    derived (``coefficient x`` the pre-clip ones), not recomputed. Alone (no such callback in the trainer, decided at
    fit start) it skips the sharing's bookkeeping and computes the norm itself. Same maths as
    ``clip_grad_norm_(foreach=True)``, bit for bit on float32 / float64 gradients (float32 norms of float16 /
    bfloat16 gradients).

    Logged keys (at logging steps only, through ``pl_module.log``; ``/opt<i>`` appended with several optimizers):

    - ``grad_clip/clipped_fraction``: fraction of optimizer steps since the last log whose gradients were changed
      (``"norm"``, ``"auto"``: total norm above the threshold; ``"value"``: any element beyond ``±θ``); for ``"agc"``
      the mean fraction of units rescaled per step.
    - ``grad_clip/threshold``: ``"auto"`` only, AutoClip's current percentile. A constant threshold is no chart: it is
      written once as TensorBoard text ``grad_clip/threshold`` (and is an HPARAMS column).
    - ``grad_norm/total``: the total gradient norm before clipping (of the last optimizer step), only when no
      ``WeightNormMonitor`` or ``GradientHealth`` is in the trainer: the total is logged once, by one owner.

    TensorBoard only: the charts "total gradient norm (before clipping)" (with AutoClip's threshold) and "fraction of
    steps clipped" in the "gradient health" category of the run's one custom-scalar layout.

    Args:
        mode: ``"norm"``, ``"value"``, ``"agc"`` or ``"auto"``.
        threshold: ``θ`` for ``"norm"`` / ``"value"`` (typically 1 or 10), the ratio ``λ`` for ``"agc"`` (e.g. 0.01).
        norm_type: the p of the p-norm (``float("inf")`` allowed) for ``"norm"``, ``"agc"``, ``"auto"`` and the
            logged total norm.
        percentile: ``"auto"`` only: the percentile of the norm history used as threshold, in ``(0, 100]``.
        history_size: ``"auto"`` only: how many past total norms are kept (a ring buffer on the device).
        agc_eps: ``"agc"`` only: the floor of the weight norm, so that zero-initialized weights can still move.
        agc_skip_last_layer: ``"agc"`` only: leave the last ``nn.Linear`` of the module (the classifier) unclipped,
            as Brock et al. recommend.

    Raises:
        ValueError: if an option is out of range.
        MisconfigurationException: at ``setup`` if ``Trainer(gradient_clip_val=...)`` is also set.

    Example::

        from lightning.pytorch import Trainer
        from lightning_tricks.callbacks import GradientClipping

        trainer = Trainer(callbacks=[GradientClipping(mode="norm", threshold=1.0)])
        trainer = Trainer(callbacks=[GradientClipping(mode="agc", threshold=0.01)])
        trainer = Trainer(callbacks=[GradientClipping(mode="auto", percentile=10)])
    """

    total_norm_priority = 2  # a WeightNormMonitor or GradientHealth logs the total norm before it
    strategy_policy = StrategyRefusal(
        "each rank holds only a shard of the gradients, so the norms and thresholds would be wrong",
        "Use Trainer(gradient_clip_val=...), which the sharded strategies implement.",
    )

    def __init__(
        self,
        mode: ClipMode = "norm",
        threshold: float = 1.0,
        norm_type: float = 2.0,
        percentile: float = 10.0,
        history_size: int = 10000,
        agc_eps: float = 1e-3,
        agc_skip_last_layer: bool = True,
    ) -> None:
        check_choice("mode", mode, ClipMode)
        check_float("threshold", threshold, 0, low_open=True)
        check_float("norm_type", norm_type, 0, low_open=True, finite=False)
        check_float("percentile", percentile, 0, 100, low_open=True)
        check_int("history_size", history_size, 1)
        check_float("agc_eps", agc_eps, 0, low_open=True)
        self.mode = mode
        self.threshold = float(threshold)
        self.norm_type = float(norm_type)
        self.percentile = float(percentile)
        self.history_size = history_size
        self.agc_eps = float(agc_eps)
        self.agc_skip_last_layer = agc_skip_last_layer
        self._state = PerOptimizer(_ClipState)  # training state per optimizer (saved in checkpoints)
        self._skip: set[int] = set()
        self._owns_total = True  # logs grad_norm/total unless a monitor does (decided at fit start)
        self._shares_stats = True  # reads the shared statistics: another callback does too (decided at fit start)

    @override
    def reset_fit_state(self) -> None:
        self._state.clear()

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if trainer.gradient_clip_val:
            raise MisconfigurationException(
                f"`GradientClipping` callback and `Trainer(gradient_clip_val={trainer.gradient_clip_val!r})` would both"
                " clip the gradients. Remove one of them."
            )
        if self.mode == "agc" and self.agc_skip_last_layer:
            linears = [m for m in pl_module.modules() if isinstance(m, nn.Linear)]
            self._skip = {id(p) for p in linears[-1].parameters()} if linears else set()
            if linears and not any(id(p) not in self._skip for p in pl_module.parameters()):
                rank_zero_warn(
                    "GradientClipping(mode='agc', agc_skip_last_layer=True): the last nn.Linear holds every parameter"
                    " of the module, so nothing will be clipped. Pass `agc_skip_last_layer=False`."
                )

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._owns_total = owns_total_norm(self, trainer)
        # Alone, the sharing's bookkeeping (cache checks, remembering the gradients, deriving post-clip norms) buys
        # nothing: nobody else reads the statistics.
        self._shares_stats = any(isinstance(cb, TotalNormOwner) and cb is not self for cb in trainer.callbacks)
        if self.mode != "auto":  # a constant is text (and an HPARAMS column), not a flat chart
            add_text(trainer, "grad_clip/threshold", f"{self.threshold:g} (mode {self.mode!r})")
        total = [r"^grad_norm/total", r"^grad_clip/threshold"] if self.mode == "auto" else [r"^grad_norm/total"]
        charts = {TOTAL_NORM_CHART: total, "fraction of steps clipped": [r"^grad_clip/clipped_fraction"]}
        register_custom_scalars(trainer, "gradient health", charts)

    def _pre_clip_norm(
        self, pl_module: pl.LightningModule, optimizer: Optimizer, grads: list[Tensor]
    ) -> tuple[Tensor, GradStats | None]:
        """The total norm of the gradients as they are now, and the shared statistics it comes from: shared
        (:mod:`._grad_stats`) for the L2 norm of the module's parameters, computed here otherwise (``None``)."""
        if self.norm_type != 2.0:
            return torch.nn.utils.get_total_norm(grads, self.norm_type, foreach=True), None
        stats = grad_stats(pl_module, optimizer) if self._shares_stats else None
        if stats is not None and covers_optimizer(stats, optimizer):
            return stats.total, stats
        # the shared statistics' maths (get_total_norm's, with float32 norms of half-precision gradients)
        half = any(g.dtype in (torch.float16, torch.bfloat16) for g in grads)
        return torch.linalg.vector_norm(gradient_norms(grads, half)), None

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Optimizer
    ) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not params:
            return  # no gradient: a skipped batch, not a step
        index = optimizer_index(trainer, optimizer)
        state = self._state[index]
        grads = [p.grad for p in params]
        log = trainer_logs_now(trainer)
        total_norm: Tensor | None = None  # pre-clip norm; for "value" / "agc" only computed when it is logged
        threshold: Tensor | float = self.threshold
        clipped: Tensor | None
        if self.mode in ("norm", "auto"):
            # Same maths as clip_grad_norm_(foreach=True) (get_total_norm, then one foreach multiply by the clamped
            # coefficient), with the total shared with the monitors and the post-clip norms derived, not recomputed.
            total_norm, stats = self._pre_clip_norm(pl_module, optimizer, grads)
            if self.mode == "auto":
                history = state.device_history(total_norm.device, self.history_size)
                history[state.num_steps % self.history_size] = torch.where(total_norm.isfinite(), total_norm, math.nan)
                threshold = autoclip_threshold(history, self.percentile)
            coef = clip_to_max_norm_(grads, threshold, total_norm)
            if stats is not None and coef is not None:  # every gradient was multiplied by one factor: the post-clip
                stats.scaled_(coef)  # norms are derived (untouched gradients: the statistics stay current)
            if self.mode == "norm":  # a constant threshold: compared with the kept norms when logged, no kernel now
                state.norms_since_log.append(total_norm)
                if len(state.norms_since_log) >= _MAX_KEPT_NORMS:  # bounded memory without a logger
                    state.count_clipped_norms(self.threshold)
                clipped = None
            else:
                clipped = total_norm > threshold
        else:
            if log and self._owns_total:  # the pre-clip norm is only needed for logging
                total_norm = self._pre_clip_norm(pl_module, optimizer, grads)[0]
            if self.mode == "value":
                max_abs = torch.stack(torch._foreach_norm(grads, math.inf)).max()
                torch.nn.utils.clip_grad_value_(params, self.threshold, foreach=True)
                clipped = max_abs > self.threshold
            else:
                kept = [p for p in params if id(p) not in self._skip]
                clipped = (
                    adaptive_clip_grad_(kept, self.threshold, self.agc_eps, self.norm_type)
                    if kept
                    else grads[0].new_zeros((), dtype=torch.float32)
                )
        state.num_steps += 1
        state.steps_since_log += 1
        if clipped is not None:  # float + bool: one kernel (a bool indicator is never converted on its own)
            state.clipped_sum = (
                clipped.float() if state.clipped_sum is None else state.clipped_sum.to(clipped.device) + clipped
            )
        if log:
            self._log(trainer, pl_module, state, index, total_norm, threshold)

    def _log(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        state: _ClipState,
        index: int,
        total_norm: Tensor | None,
        threshold: Tensor | float,
    ) -> None:
        state.count_clipped_norms(self.threshold)
        assert state.clipped_sum is not None  # a step was counted just before
        values = {"grad_clip/clipped_fraction": state.clipped_sum.float() / state.steps_since_log}
        if self.mode == "auto":  # AutoClip's threshold moves; a constant one is written once as text
            values["grad_clip/threshold"] = torch.as_tensor(threshold).float()
        if self._owns_total and total_norm is not None:
            values[TOTAL_NORM_KEY] = total_norm.float()
        device = state.clipped_sum.device
        # Deliberate host sync, once per logging interval: one transfer for all logged values.
        host = torch.stack([v.to(device) for v in values.values()]).tolist()
        n = len(trainer.optimizers)
        metrics = {optimizer_key(k, index, n): v for k, v in zip(values, host, strict=True)}
        pl_module.log_dict(metrics, on_step=True, on_epoch=False)
        state.clipped_sum = None
        state.steps_since_log = 0

    @override
    def state_dict(self) -> dict[str, Any]:
        for state in self._state:
            state.count_clipped_norms(self.threshold)
        return {"optimizers": self._state.state_dict(_ClipState.to_dict)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._state.load_state_dict(state_dict["optimizers"], _ClipState.from_dict)


@dataclass
class _ClipState:
    """The training state of :class:`GradientClipping` for one optimizer (the step rule: never mixed)."""

    history: Tensor | None = None  # AutoClip norms, NaN = empty slot
    num_steps: int = 0  # steps of this optimizer, the ring buffer's write position
    clipped_sum: Tensor | None = None  # clipped indicator summed since the last log, on the device
    steps_since_log: int = 0
    norms_since_log: list[Tensor] = field(default_factory=list)  # "norm" mode: pre-clip norms not yet counted

    def count_clipped_norms(self, threshold: float) -> None:
        """Add the kept pre-clip norms above ``threshold`` to ``clipped_sum`` (a few kernels per logging interval
        instead of two per step) and forget them."""
        if not self.norms_since_log:
            return
        count = (torch.stack(self.norms_since_log) > threshold).sum(dtype=torch.float32)
        self.clipped_sum = count if self.clipped_sum is None else self.clipped_sum.to(count.device) + count
        self.norms_since_log = []

    def device_history(self, device: torch.device, size: int) -> Tensor:
        """The AutoClip ring buffer on ``device`` with ``size`` slots (a checkpoint's other size is carried over)."""
        if self.history is None or self.history.numel() != size:
            old = self.history
            self.history = torch.full((size,), math.nan, device=device)
            if old is not None:  # a checkpoint written with another history_size (order does not matter)
                n = min(old.numel(), size)
                self.history[:n] = old[:n].to(device)
        elif self.history.device != device:
            self.history = self.history.to(device)
        return self.history

    def to_dict(self) -> dict[str, Any]:
        """Plain values (device tensors copied to the host)."""
        return {
            "history": None if self.history is None else self.history.detach().cpu(),
            "num_steps": self.num_steps,
            "clipped_sum": None if self.clipped_sum is None else self.clipped_sum.detach().cpu(),
            "steps_since_log": self.steps_since_log,
        }

    @classmethod
    def from_dict(cls, entry: dict[str, Any]) -> _ClipState:
        """Restore :meth:`to_dict`."""
        return cls(
            entry.get("history"), entry.get("num_steps", 0), entry.get("clipped_sum"), entry.get("steps_since_log", 0)
        )
