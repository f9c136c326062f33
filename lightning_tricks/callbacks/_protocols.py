"""What callbacks ask of each other, as protocols: any callback with the method takes part, ours or a user's.

``EarlyStopping(restore_best_weights=True)`` keeps the weights validation evaluated, which are the averaged ones when
a callback swapped them in; an averaging callback copies its average into the module when training ends, unless a
callback will restore best weights then (the restore wins). Neither needs the other's class: each looks for the
method in ``trainer.callbacks``, so a user's own averaging or restoring callback works with ours without subclassing
them (``isinstance`` against a ``runtime_checkable`` protocol checks that the method exists).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import nn


@runtime_checkable
class HoldsAveragedWeights(Protocol):
    """A callback whose averaged weights stand in for the module's during validation inside ``fit`` (e.g. ``EMA``)."""

    def averaged_module(self) -> nn.Module | None:
        """The module validation evaluates instead of the LightningModule; ``None`` while the module's own is used."""


@runtime_checkable
class RestoresBestWeights(Protocol):
    """A callback that loads the best weights into the module when training ends (e.g. ``EarlyStopping``)."""

    def will_restore(self) -> bool:
        """Whether ``on_train_end`` loads (or loaded) best weights into the module."""
