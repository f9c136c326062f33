"""Check that the network's inputs lie in the expected value range (e.g. ``[-1, 1]`` or ``[0, 1]``).

"Keep values in range" is the first of the classic tricks (LeCun, Bottou, Orr & Müller, "Efficient BackProp",
1998, section 4.3 "Normalizing the inputs"): inputs should be centred and of unit-order scale. A forgotten
``/ 255`` or a double normalization silently slows or ruins training; this callback catches it on the first
batches and says what to change.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor
from typing_extensions import override

from lightning_tricks._validation import check_choice, check_float, check_int, invalid
from lightning_tricks.callbacks._base import TrickCallback
from lightning_tricks.callbacks._logging import log_metrics

_INPUT_KEYS = ("x", "input", "inputs", "image", "images", "pixel_values", "data")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def find_input(batch: Any, batch_key: int | str | None = None) -> Tensor:
    """The input tensor of ``batch``.

    Args:
        batch: A tensor, a ``(input, target, ...)`` sequence or a mapping.
        batch_key: Index or key of the input; ``None`` takes the tensor itself, element 0 of a sequence, or the first
            of ``x``, ``input``, ``inputs``, ``image``, ``images``, ``pixel_values``, ``data`` in a mapping.

    Raises:
        ValueError: When no floating-point tensor is found there.
    """
    if batch_key is not None:
        found = batch[batch_key]
    elif isinstance(batch, Tensor):
        found = batch
    elif isinstance(batch, dict):
        found = next((batch[k] for k in _INPUT_KEYS if k in batch), None)
    elif isinstance(batch, (list, tuple)) and batch:
        found = batch[0]
    else:
        found = None
    if not isinstance(found, Tensor) or not found.is_floating_point():
        raise ValueError(
            f"InputRangeCheck found no floating-point input tensor in the batch (a {type(batch).__name__}) with"
            f" batch_key={batch_key!r}; set `batch_key` to the input's index or key."
        )
    return found


def update_range_stats(acc: Tensor | None, count: int, x: Tensor) -> Tensor:
    """Fold ``x`` into ``acc = [min, max, mean, m2]`` (over ``count`` earlier elements), on the device, no host sync.

    ``m2`` is the sum of squared deviations from the mean; the merge is Chan et al.'s (1979) parallel update, exact
    enough in float32 over millions of elements.
    """
    x = x.detach().float()
    var, mean = torch.var_mean(x, correction=0)
    row = torch.stack([x.amin(), x.amax(), mean, var * x.numel()])
    if acc is None or count == 0:
        return row
    n = count + x.numel()
    delta = row[2] - acc[2]
    return torch.stack(
        [
            torch.minimum(acc[0], row[0]),
            torch.maximum(acc[1], row[1]),
            acc[2] + delta * (x.numel() / n),
            acc[3] + row[3] + delta * delta * (count * x.numel() / n),
        ]
    )


def merge_range_stats(rows: list[list[float]]) -> dict[str, float]:
    """Combine per-rank ``[count, min, max, mean, m2]`` rows into ``min``, ``max``, ``mean``, ``std`` (unbiased)."""
    n, lo, hi, mean, m2 = rows[0]
    for n_b, lo_b, hi_b, mean_b, m2_b in rows[1:]:
        total = n + n_b
        delta = mean_b - mean
        mean, m2 = mean + delta * n_b / total, m2 + m2_b + delta * delta * n * n_b / total
        lo, hi, n = min(lo, lo_b), max(hi, hi_b), total
    return {"min": lo, "max": hi, "mean": mean, "std": math.sqrt(m2 / max(n - 1, 1))}


def range_problem(stats: dict[str, float], expected: tuple[float, float], tolerance: float) -> str | None:
    """What is wrong with inputs of these statistics for the ``expected`` range, with the fix; ``None`` if fine."""
    lo, hi = expected
    mn, mx, mean, std = stats["min"], stats["max"], stats["mean"], stats["std"]
    seen = f"inputs span [{mn:.4g}, {mx:.4g}] (mean {mean:.4g}, std {std:.4g})"
    if not all(math.isfinite(v) for v in (mn, mx, mean, std)):
        return f"{seen}: the inputs contain NaN or Inf; check the data loading and transforms."
    if lo - tolerance <= mn and mx <= hi + tolerance:
        if std == 0.0:
            return f"{seen}: every input value is the same; check the data loading and transforms."
        return None
    fixes = []
    if mn >= 0.0 and mx > 1.0 + tolerance and mx <= 255.0 + tolerance:
        fixes.append(
            "they look like raw 8-bit pixels: divide by 255 (torchvision `ToTensor()` or `ToDtype(scale=True)`)"
        )
        if lo < 0.0:
            fixes.append(f"then map [0, 1] to [{lo:g}, {hi:g}] (e.g. `Normalize(mean=0.5, std=0.5)` for [-1, 1])")
    elif lo >= 0.0 and mn < 0.0:
        fixes.append(f"they look normalized or centred already: drop that step or map them to [{lo:g}, {hi:g}]")
    else:
        fixes.append(f"rescale them to [{lo:g}, {hi:g}] (e.g. `(x - min) / (max - min) * {hi - lo:g} + {lo:g}`)")
    fixes.append(f"or, if this range is intended, use `InputRangeCheck(expected=({mn:.4g}, {mx:.4g}))`")
    return f"{seen}, outside the expected [{lo:g}, {hi:g}] (tolerance {tolerance:g}). Fix: " + "; ".join(fixes) + "."


class InputRangeCheck(TrickCallback):
    """Check the first ``check_batches`` training batches' inputs against an expected value range.

    Runs in ``on_train_batch_start`` (the batch is already on the device). For the first ``check_batches`` training
    batches of the run (counted across epochs) the input's min / max / mean / m2 are folded into a 4-element device
    tensor (no host sync); after the last of them (or in ``on_train_end`` if the run is shorter) the per-rank
    statistics are gathered across ranks and copied to the host ONCE — the only sync this callback ever makes. Every
    rank then computes the same verdict from the same gathered numbers, so under DDP all ranks warn or raise
    together. Later batches cost nothing.

    The progress (batches checked, partial statistics, result) is saved in checkpoints; a check interrupted under
    DDP resumes from rank zero's partial statistics on every rank. Each ``fit`` starts a fresh check at ``setup``
    (a reused instance checks the new run's data), then a checkpoint, if any, restores its progress.

    Works under every precision (statistics in float32 of the input as the batch holds it) and every strategy.

    Source: LeCun et al., "Efficient BackProp" (1998), §4.3 — normalize the inputs.

    Logged keys (once, at the step the check completes): ``input/min``, ``input/max``, ``input/mean``,
    ``input/std`` over all checked batches of all ranks. The result is also kept in :attr:`stats`.

    Args:
        expected: ``(low, high)`` range the inputs should lie in, e.g. ``(-1.0, 1.0)`` or ``(0.0, 1.0)``.
        check_batches: How many training batches to check (at least 1).
        action: ``"warn"`` (``rank_zero_warn``) or ``"raise"`` (``ValueError``) when the range is violated.
        tolerance: Slack allowed beyond ``expected`` on either side (non-negative).
        batch_key: Index or key of the input in the batch; ``None`` finds it (see :func:`find_input`).

    Raises:
        ValueError: On bad options; during training with ``action="raise"`` when the inputs are out of range,
            non-finite or constant, with the observed values and the fix in the message.

    Example::

        trainer = Trainer(callbacks=[InputRangeCheck(expected=(0.0, 1.0), action="raise")])
    """

    def __init__(
        self,
        expected: tuple[float, float] = (-1.0, 1.0),
        check_batches: int = 10,
        action: Literal["warn", "raise"] = "warn",
        tolerance: float = 1e-3,
        batch_key: int | str | None = None,
    ) -> None:
        pair = isinstance(expected, (list, tuple)) and len(expected) == 2
        if not (pair and all(map(_finite, expected)) and expected[0] < expected[1]):
            raise invalid("expected", "a finite (low, high) pair with low < high", expected)
        check_int("check_batches", check_batches, 1)
        check_choice("action", action, ("warn", "raise"))
        check_float("tolerance", tolerance, 0)
        self.expected = (float(expected[0]), float(expected[1]))
        self.check_batches = check_batches
        self.action = action
        self.tolerance = tolerance
        self.batch_key = batch_key
        self.reset_fit_state()

    @override
    def reset_fit_state(self) -> None:  # a reused instance checks the new run's data
        self.checked = 0
        self.count = 0
        self.stats: dict[str, float] | None = None
        self._acc: Tensor | None = None
        self._restored: list[float] | None = None

    @property
    def done(self) -> bool:
        """Whether the check has completed."""
        return self.stats is not None

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.done:
            return
        x = find_input(batch, self.batch_key)
        if self._acc is None and self._restored is not None:
            self._acc = torch.tensor(self._restored, dtype=torch.float32, device=x.device)
        self._acc = update_range_stats(self._acc, self.count, x)
        self.count += x.numel()
        self.checked += 1
        if self.checked >= self.check_batches:
            self._finish(trainer)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.done and self.checked > 0:  # the whole run had fewer batches than `check_batches`
            self._finish(trainer)

    def _finish(self, trainer: pl.Trainer) -> None:
        acc = self._acc
        if acc is None:  # nothing checked
            return
        local = torch.cat([torch.tensor([float(self.count)], device=acc.device), acc])
        gathered = trainer.strategy.all_gather(local).reshape(-1, 5)
        # Deliberate host sync, the only one: once, after the last checked batch.
        self.stats = merge_range_stats(gathered.tolist())
        self._acc, self._restored = None, None
        log_metrics(trainer, {f"input/{k}": v for k, v in self.stats.items()})  # rank zero, current step
        problem = range_problem(self.stats, self.expected, self.tolerance)
        where = f"InputRangeCheck (first {self.checked} training batches)"
        if problem is None:
            rank_zero_info(f"{where}: inputs in [{self.stats['min']:.4g}, {self.stats['max']:.4g}], as expected.")
        elif self.action == "raise":
            raise ValueError(f"{where}: {problem}")
        else:
            rank_zero_warn(f"{where}: {problem}")

    @override
    def state_dict(self) -> dict[str, Any]:
        acc = self._restored if self._acc is None else self._acc.tolist()  # sync: checkpoint saving syncs anyway
        return {"checked": self.checked, "count": self.count, "acc": acc, "stats": self.stats}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.checked = state_dict.get("checked", 0)
        self.count = state_dict.get("count", 0)
        self.stats = state_dict.get("stats")
        self._restored = state_dict.get("acc")
        self._acc = None
