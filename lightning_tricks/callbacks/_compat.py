"""Setting checks shared by the callbacks: one way to refuse, at ``setup``, a Lightning setting a callback cannot serve.

Rule 8 of the design: every setting Lightning offers (precision plugins, strategies, compiled modules, frozen
parameters, manual optimization) either works or is refused at ``setup`` with a message that names the setting and
the alternative. These helpers give those messages one shape. (No callback refuses a precision: all ten work under
every precision Lightning offers on the CPU, see the README's compatibility table.)
"""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.fabric.utilities.exceptions import MisconfigurationException

#: Strategies whose ranks hold only a shard of the parameters / gradients (GPU-only here).
SHARDED_STRATEGIES = ("FSDPStrategy", "DeepSpeedStrategy", "ModelParallelStrategy")


def strategy_is_sharded(trainer: pl.Trainer) -> bool:
    """Whether the trainer's strategy shards parameters or gradients across ranks (FSDP, DeepSpeed, ModelParallel)."""
    return any(cls.__name__ in SHARDED_STRATEGIES for cls in type(trainer.strategy).__mro__)


def refuse_sharded(callback: pl.Callback, trainer: pl.Trainer, why: str, alternative: str) -> None:
    """Raise ``MisconfigurationException`` at ``setup`` when the strategy is sharded (see :data:`SHARDED_STRATEGIES`).

    Args:
        callback: the refusing callback (its class names the message).
        trainer: the trainer being set up.
        why: what would go wrong, e.g. ``"each rank holds only part of the gradients, so the norm would be wrong"``.
        alternative: what to use instead, e.g. ``"use Trainer(gradient_clip_val=...)"``.
    """
    if strategy_is_sharded(trainer):
        raise MisconfigurationException(
            f"{type(callback).__name__} does not support the {type(trainer.strategy).__name__} strategy: {why}."
            f" {alternative}"
        )
