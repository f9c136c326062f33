"""What "a step" means to every callback of this package (the step rule of the design), in one place.

**The rule.** A step is one optimizer step of one optimizer: one call of that optimizer's ``step()`` that was reached
with at least one gradient. Hence:

- two optimizers (a GAN, actor-critic; automatic or manual optimization) make two steps per batch, one each, and
  anything that could mix them (norm histories, counters, schedules, totals) is kept per optimizer, indexed by the
  optimizer's position in ``trainer.optimizers``;
- gradient-accumulation micro-batches are not steps (their ``optimizer.step()`` is not called);
- a skipped batch (``training_step`` returning ``None``: Lightning still calls ``optimizer.step()``, with every
  gradient ``None``) is not a step, nor is an update that ``GradientHealth(action="skip")`` dropped (it sets the
  gradients to ``None``);
- a step that a ``16-mixed`` ``GradScaler`` skips because of non-finite gradients is not a step (the scaler does not
  call ``optimizer.step()``).

Logging intervals and the logged x-axis stay Lightning's (``log_every_n_steps`` counts batches in which the
optimizers stepped, ``_batches_that_stepped``), so every key lands on the same x as ``self.log``; per-step quantities
of several optimizers are logged under per-optimizer keys (:func:`optimizer_key`).

How: :class:`OptimizerSteps` registers a ``torch.optim.Optimizer.register_step_post_hook`` on each optimizer at fit
start (the one place where every step of every optimizer, under every kind of optimization, is seen after it happened)
and counts there; callbacks that act before a step read :meth:`OptimizerSteps.count` in ``on_before_optimizer_step``
(the steps that optimizer completed so far). Lightning's ``trainer.global_step`` is not used: it counts every
optimizer's steps together and also counts skipped batches.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
from lightning.fabric.utilities.exceptions import MisconfigurationException
from torch.optim import Optimizer

StepListener = Callable[[int, int], None]
"""Called after every step as ``listener(optimizer_index, steps_of_that_optimizer_so_far)``."""


def unwrap(optimizer: Any) -> Optimizer:
    """The torch optimizer inside a ``LightningOptimizer`` (or the optimizer itself)."""
    return getattr(optimizer, "_optimizer", optimizer)


def has_gradients(optimizer: Optimizer) -> bool:
    """Whether any parameter of ``optimizer`` has a gradient (a Python walk, no device work, stops at the first)."""
    return any(p.grad is not None for group in optimizer.param_groups for p in group["params"])


def optimizer_key(key: str, index: int, num_optimizers: int) -> str:
    """``key`` with one optimizer; ``key/opt<index>`` with several, so that two optimizers never share a logged key."""
    return key if num_optimizers <= 1 else f"{key}/opt{index}"


class OptimizerSteps:
    """Per-optimizer step counts of one fit, following the rule of this module.

    Call :meth:`attach` in ``on_fit_start`` (the optimizers exist from there on) and :meth:`detach` in
    ``on_fit_end`` / ``teardown``; :meth:`reset` at ``setup(stage="fit")`` so that a reused callback starts fresh (a
    checkpoint restore comes later and wins); save :meth:`state_dict` with the callback's state.

    Cost: a Python ``any()`` over the optimizer's parameters after each ``optimizer.step()`` (stops at the first
    parameter with a gradient); no device work, no host sync.

    Example::

        steps = OptimizerSteps(on_step=lambda i, n: print(f"optimizer {i} made its step {n}"))
        steps.attach(trainer)  # in on_fit_start
        t = steps.count(steps.index(optimizer))  # in on_before_optimizer_step: steps completed before this one
    """

    def __init__(self, on_step: StepListener | None = None) -> None:
        self.counts: list[int] = []
        self._on_step = on_step
        self._ids: dict[int, int] = {}
        self._handles: list[Any] = []

    def reset(self) -> None:
        """Forget every count (a new fit without a checkpoint)."""
        self.counts = []

    def attach(self, trainer: pl.Trainer) -> None:
        """Start counting the steps of ``trainer.optimizers`` (re-attaching replaces the previous hooks)."""
        self.detach()
        optimizers = [unwrap(o) for o in trainer.optimizers]
        self._ids = {id(o): i for i, o in enumerate(optimizers)}
        self.counts = (self.counts + [0] * len(optimizers))[: len(optimizers)]
        for i, opt in enumerate(optimizers):
            if not hasattr(opt, "register_step_post_hook"):  # e.g. an optimizer wrapper that is no torch Optimizer
                raise MisconfigurationException(
                    f"Optimizer {i} ({type(opt).__name__}) is not a `torch.optim.Optimizer`, so its steps cannot be"
                    " counted (lightning_tricks counts steps with `register_step_post_hook`). Use a torch optimizer,"
                    " or leave out the callbacks that count steps (EMA, GradientHealth, LRDecay(interval='step'))."
                )
            self._handles.append(opt.register_step_post_hook(self._post_hook(i)))

    def detach(self) -> None:
        """Remove the step hooks (keeps the counts)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _post_hook(self, index: int) -> Callable[..., None]:
        def hook(optimizer: Optimizer, args: Any, kwargs: Any) -> None:
            # After `step()` the gradients are still there (zero_grad comes later): none at all means the batch was
            # skipped or GradientHealth dropped the update, so the optimizer changed nothing.
            if has_gradients(optimizer):
                self.counts[index] += 1
                if self._on_step is not None:
                    self._on_step(index, self.counts[index])

        return hook

    def index(self, optimizer: Any) -> int:
        """The position of ``optimizer`` (torch or ``LightningOptimizer``) in ``trainer.optimizers``; 0 if unknown."""
        return self._ids.get(id(unwrap(optimizer)), 0)

    def count(self, index: int) -> int:
        """The steps optimizer ``index`` completed so far in this fit."""
        return self.counts[index] if index < len(self.counts) else 0

    @property
    def num_optimizers(self) -> int:
        """How many optimizers are being counted."""
        return len(self.counts)

    def state_dict(self) -> dict[str, Any]:
        """Plain values for the callback's checkpoint state."""
        return {"optimizer_steps": list(self.counts)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.counts = [int(c) for c in state["optimizer_steps"]]


def optimizer_index(trainer: pl.Trainer, optimizer: Any) -> int:
    """The position of ``optimizer`` (torch or ``LightningOptimizer``) in ``trainer.optimizers``; 0 if absent."""
    target = id(unwrap(optimizer))
    return next((i for i, o in enumerate(trainer.optimizers) if id(unwrap(o)) == target), 0)
