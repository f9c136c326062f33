"""``TrickCallback``: what every callback of the package does alike, written once.

- **Hidden per-batch hooks.** Lightning calls every callback's every hook on every batch (``trainer/call.py``:
  ``_call_callback_hooks`` looks the hook up, builds a profiler label and enters the profiler's context, then calls the
  method), and skips a hook whose attribute is not callable (``if callable(fn)``). Each instance of a subclass gets
  ``None`` for the per-batch hooks (:data:`PER_BATCH_HOOKS`) its *class* inherits unchanged from ``Callback``, so
  Lightning skips them instead of calling empty methods six times a batch. A subclass that overrides one keeps it,
  ``super().on_train_batch_end(...)`` still reaches the parent's method (``super()`` looks at classes), and hooks that
  Lightning calls directly (``state_dict``, ``on_save_checkpoint``, ...) are never hidden. Code that calls a hidden
  hook on the instance (``callback.on_after_backward(...)``, e.g. a hand-rolled harness) gets ``None``: check
  ``callable(...)`` first, as Lightning does, or call ``Callback.on_after_backward(callback, ...)``.
- **Strategy policy** (the "works or refuses" rule). The class attribute :attr:`TrickCallback.strategy_policy` says
  which strategies the callback refuses, why and what to use instead; ``setup`` raises a
  ``MisconfigurationException`` naming both before anything else runs. A refusal that depends on an option is
  :meth:`TrickCallback.strategy_refusal` returning the policy or ``None``.
- **Fresh per fit.** ``setup(stage="fit")`` calls :meth:`TrickCallback.reset_fit_state`, so a reused instance starts
  a new ``fit`` fresh; a checkpoint restore (``load_state_dict``) comes after ``setup`` and wins.
- **Per-optimizer state** (the step rule). :class:`PerOptimizer` holds one state per optimizer, made on first use,
  saved and restored as a list.

A callback that extends a Lightning callback lists ``TrickCallback`` first (``class EMA(TrickCallback,
WeightAveraging)``): ``TrickCallback.setup`` ends with ``super().setup(...)``, which reaches the Lightning class's own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

import lightning.pytorch as pl
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Callback
from typing_extensions import override

T = TypeVar("T")

#: The hooks Lightning calls for every batch (training, validation, test, predict).
PER_BATCH_HOOKS = (
    "on_train_batch_start",
    "on_train_batch_end",
    "on_before_backward",
    "on_after_backward",
    "on_before_optimizer_step",
    "on_before_zero_grad",
    "on_validation_batch_start",
    "on_validation_batch_end",
    "on_test_batch_start",
    "on_test_batch_end",
    "on_predict_batch_start",
    "on_predict_batch_end",
)

#: Strategies whose ranks hold only a shard of the parameters / gradients (matched by class name along the MRO).
SHARDED_STRATEGIES = ("FSDPStrategy", "DeepSpeedStrategy", "ModelParallelStrategy")


@dataclass(frozen=True)
class StrategyRefusal:
    """Strategies a callback refuses at ``setup``, what would go wrong under them, and what to use instead.

    Attributes:
        why: e.g. ``"each rank holds only a shard of the gradients, so the norms would be wrong"``.
        alternative: e.g. ``"Use Trainer(gradient_clip_val=...), which the sharded strategies implement."``.
        strategies: class names of the refused strategies; ``None``: the sharded ones (:data:`SHARDED_STRATEGIES`).
    """

    why: str
    alternative: str
    strategies: tuple[str, ...] | None = None

    def refuses(self, strategy: Any) -> bool:
        """Whether ``strategy`` (an instance) is one of the refused strategies or a subclass of one."""
        names = SHARDED_STRATEGIES if self.strategies is None else self.strategies
        return any(cls.__name__ in names for cls in type(strategy).__mro__)

    def message(self, callback: Callback, strategy: Any) -> str:
        return (
            f"{type(callback).__name__} does not support the {type(strategy).__name__} strategy: {self.why}."
            f" {self.alternative}"
        )


class TrickCallback(Callback):
    """Base of the package's callbacks: hidden unused per-batch hooks, the strategy policy, fresh per fit (see the
    module docstring). Subclasses that override ``setup`` call ``super().setup(trainer, pl_module, stage)`` first."""

    #: The strategies this callback refuses at ``setup`` (``None``: it works under every strategy).
    strategy_policy: ClassVar[StrategyRefusal | None] = None
    #: The per-batch hooks this class inherits unchanged from ``Callback`` (set for each subclass).
    _hidden_hooks: ClassVar[tuple[str, ...]] = PER_BATCH_HOOKS

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._hidden_hooks = tuple(name for name in PER_BATCH_HOOKS if getattr(cls, name) is getattr(Callback, name))

    def __new__(cls, *args: Any, **kwargs: Any) -> TrickCallback:
        callback = super().__new__(cls)
        for name in cls._hidden_hooks:  # on the instance: the class keeps its methods for subclasses and super()
            setattr(callback, name, None)
        return callback

    def strategy_refusal(self, stage: str) -> StrategyRefusal | None:
        """The refusal that applies with this instance's options at ``stage`` (default: :attr:`strategy_policy`)."""
        return self.strategy_policy

    def reset_fit_state(self) -> None:
        """Put every per-fit state back to its start (called at ``setup(stage="fit")``; nothing by default)."""

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        refusal = self.strategy_refusal(stage)
        if refusal is not None and refusal.refuses(trainer.strategy):
            raise MisconfigurationException(refusal.message(self, trainer.strategy))
        if stage == "fit":
            self.reset_fit_state()
        super().setup(trainer, pl_module, stage)


class PerOptimizer(Generic[T]):
    """One ``T`` per optimizer, indexed by its position in ``trainer.optimizers`` (the step rule: never mixed across
    optimizers), made by ``new()`` when an index is first used.

    Example::

        self._state = PerOptimizer(_ClipState)  # in __init__
        state = self._state[index]  # in a hook: optimizer `index`'s, made on first use
        {"optimizers": self._state.state_dict(_ClipState.to_dict)}  # state_dict
        self._state.load_state_dict(saved["optimizers"], _ClipState.from_dict)  # load_state_dict: exactly as saved
    """

    def __init__(self, new: Callable[[], T]) -> None:
        self._new = new
        self._items: list[T] = []

    def __getitem__(self, index: int) -> T:
        while len(self._items) <= index:
            self._items.append(self._new())
        return self._items[index]

    def __setitem__(self, index: int, value: T) -> None:
        self[index]  # make the entries before it
        self._items[index] = value

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[T]:
        return iter(self._items)

    def clear(self) -> None:
        """Forget every optimizer's state."""
        self._items = []

    def resize(self, count: int) -> None:
        """Keep the states of the first ``count`` optimizers and make the missing ones."""
        del self._items[count:]
        if count:
            self[count - 1]

    def state_dict(self, save: Callable[[T], Any] = lambda item: item) -> list[Any]:
        """``[save(state) for each optimizer]``: plain values for a checkpoint."""
        return [save(item) for item in self._items]

    def load_state_dict(self, saved: Sequence[Any], load: Callable[[Any], T] = lambda entry: entry) -> None:
        """Restore :meth:`state_dict` exactly: one state per saved entry, ``load(entry)`` each."""
        self._items = [load(entry) for entry in saved]
