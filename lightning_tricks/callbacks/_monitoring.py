"""Shared machinery for the monitoring callbacks (private; the API below is kept stable).

The rule every monitoring callback follows: statistics are computed and accumulated as *device* tensors, and copied
to the host **once per logging interval** with a single transfer (:func:`to_host`, :meth:`DeviceAccumulator.flush`).
Steps that do not log never synchronize the host with the device.

Helpers:

- :func:`resolve_every_n_steps`, :func:`logging_step`, :func:`is_logging_step`: the logging interval and the x-axis
  step, identical to the ones Lightning uses for ``self.log`` (``fit_loop.epoch_loop._batches_that_stepped``, as
  Lightning's own ``LearningRateMonitor`` does).
- :func:`to_host`, :func:`to_host_dict`: one stacked device-to-host copy for many tensors.
- :class:`DeviceAccumulator`: running sum / mean / max / min / last of device scalars across an interval.
- :func:`log_metrics`: rank-zero logging of host floats to every logger of the trainer.
- :func:`tensorboard_writers`, :func:`add_histograms`, :func:`add_text`: TensorBoard-only extras that other loggers
  skip cleanly; :func:`register_custom_scalars` / :func:`write_custom_scalars`: the ONE custom-scalar layout of a
  run, merged from every callback's categories and written once.
- :func:`layer_name`, :func:`named_optimizer_params`, :func:`group_indices`, :func:`group_norms`,
  :func:`validate_every_n`: naming, per-layer grouping and option checks.
- :class:`GradLayoutCache` / :class:`GradLayout`: for callbacks that look at gradients EVERY step, the parameters of an
  optimizer that have a gradient, their names and layer grouping, built once and reused while that set is unchanged
  (checked with one cheap pass over the optimizer's parameters), with the layer index tensor made once per device.
- :func:`index_tensor`: a small int64 index tensor on a device without a blocking host-to-device copy.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.logger import _add_prefix
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.compat.proto.summary_pb2 import Summary
from torch import Tensor

Reduction = Literal["sum", "mean", "max", "min", "last"]
_REDUCTIONS = ("sum", "mean", "max", "min", "last")


def validate_every_n(name: str, value: int | None, allow_none: bool = True) -> None:
    """Raise ``ValueError`` unless ``value`` is a positive int (or ``None`` when ``allow_none``)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        allowed = "a positive int or None" if allow_none else "a positive int"
        raise ValueError(f"Expected argument `{name}` to be {allowed}, but got {value!r}.")


def resolve_every_n_steps(trainer: pl.Trainer, value: int | None) -> int:
    """``value``, or the trainer's ``log_every_n_steps`` when ``None`` (``0`` there means: never log)."""
    return int(trainer.log_every_n_steps) if value is None else int(value)


def logging_step(trainer: pl.Trainer) -> int:
    """The step index Lightning's logger connector uses for the current training batch (same x-axis as ``self.log``).

    Valid from ``on_train_batch_start`` to ``on_train_batch_end``: Lightning increments the counter afterwards.
    """
    step = getattr(trainer.fit_loop.epoch_loop, "_batches_that_stepped", None)
    return int(trainer.global_step if step is None else step)  # (`global_step` is a property chain: only if needed)


def is_logging_step(trainer: pl.Trainer, every_n_steps: int, step: int | None = None) -> bool:
    """Whether the current training batch is a logging step for an interval of ``every_n_steps`` (``0``: never).

    Same rule as Lightning's ``LoggerConnector.should_update_logs``: ``(step + 1) % every_n_steps == 0``, with
    ``step`` the :func:`logging_step` (pass it when already at hand).
    """
    if every_n_steps <= 0:
        return False
    return ((logging_step(trainer) if step is None else step) + 1) % every_n_steps == 0


def trainer_logs_now(trainer: pl.Trainer) -> bool:
    """Whether this training batch's step metrics reach the loggers: Lightning's own rule (``should_update_logs``).

    For callbacks that log at the Trainer's ``log_every_n_steps`` (a callback with its own interval uses
    :func:`is_logging_step`). Lightning has no public equivalent of this property.
    """
    return bool(trainer.loggers) and trainer._logger_connector.should_update_logs


def to_host(tensors: Sequence[Tensor]) -> list[float]:
    """Copy many tensors to the host with ONE transfer: flatten, concatenate on the device, then ``tolist()``.

    This is a deliberate host-device synchronization; call it only on logging steps.
    """
    if len(tensors) == 0:
        return []
    device = tensors[0].device
    flat = torch.cat([t.detach().reshape(-1).to(device=device, dtype=torch.float32) for t in tensors])
    return flat.tolist()  # the one host-device sync of the logging interval


def to_host_dict(tensors: Mapping[str, Tensor]) -> dict[str, float]:
    """:func:`to_host` for named scalars: ``{name: 0-dim tensor}`` -> ``{name: float}`` with one transfer."""
    names = list(tensors)
    return dict(zip(names, to_host([tensors[n] for n in names]), strict=True))


class DeviceAccumulator:
    """Running reductions of device scalars over a logging interval, read with one host transfer.

    ``update`` never synchronizes: it only launches device ops. ``flush`` copies every value at once and resets.

    Example::

        acc = DeviceAccumulator()
        acc.update("act/mean", x.mean(), "mean")
        acc.update("act/max", x.abs().amax(), "max")
        metrics = acc.flush()  # {"act/mean": ..., "act/max": ...}, one sync
    """

    def __init__(self) -> None:
        self._values: dict[str, Tensor] = {}
        self._counts: dict[str, int] = {}
        self._reductions: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._values)

    def update(self, name: str, value: Tensor, reduce: Reduction = "mean") -> None:
        """Fold a device scalar into the running ``reduce`` of ``name`` (no host sync)."""
        if reduce not in _REDUCTIONS:
            raise ValueError(f"Expected argument `reduce` to be one of {_REDUCTIONS}, but got {reduce!r}.")
        value = value.detach().reshape(()).to(torch.float32)
        old = self._values.get(name)
        if old is None or reduce == "last":
            new = value.clone()
        elif reduce in ("sum", "mean"):
            new = old + value
        elif reduce == "max":
            new = torch.maximum(old, value)
        else:
            new = torch.minimum(old, value)
        self._values[name] = new
        self._counts[name] = self._counts.get(name, 0) + 1
        self._reductions[name] = reduce

    def flush(self) -> dict[str, float]:
        """Return ``{name: float}`` with ONE host transfer (a deliberate sync) and reset the accumulator."""
        names = list(self._values)
        values = to_host([self._values[n] for n in names])
        out = {}
        for name, value in zip(names, values, strict=True):
            out[name] = value / self._counts[name] if self._reductions[name] == "mean" else value
        self.reset()
        return out

    def reset(self) -> None:
        """Drop all values."""
        self._values.clear()
        self._counts.clear()
        self._reductions.clear()

    def state_dict(self) -> dict[str, Any]:
        """Plain-value state (the values are copied to the host: call it when checkpointing, not per step)."""
        return {
            "values": {k: v.detach().cpu() for k, v in self._values.items()},
            "counts": dict(self._counts),
            "reductions": dict(self._reductions),
        }

    def load_state_dict(self, state: Mapping[str, Any], device: torch.device | None = None) -> None:
        """Restore :meth:`state_dict`; values go to ``device`` (default: CPU until the next ``update``)."""
        self._values = {k: torch.as_tensor(v).to(device or "cpu") for k, v in state.get("values", {}).items()}
        self._counts = dict(state.get("counts", {}))
        self._reductions = dict(state.get("reductions", {}))

    def to(self, device: torch.device) -> DeviceAccumulator:
        """Move the accumulated values to ``device`` (after a checkpoint restore)."""
        self._values = {k: v.to(device) for k, v in self._values.items()}
        return self


def log_metrics(trainer: pl.Trainer, metrics: Mapping[str, float], step: int | None = None) -> None:
    """Send host floats to every logger of the trainer from global rank zero (default step: :func:`logging_step`).

    A ``TensorBoardLogger`` writing through torch's ``SummaryWriter`` gets all of them as ONE event (a ``Summary``
    with one value per key, what its ``log_metrics`` writes as one event per key): 0.17 vs 1.8 ms for the 24 scalars
    of ``ActivationStats`` on a 6-layer MLP, measured on this project's CPU. TensorBoard reads both the same way (the
    same tags, steps and values); the logger's prefix is applied as its own ``log_metrics`` does. Other loggers, and a
    ``TensorBoardLogger`` subclass that overrides ``log_metrics``, get ``log_metrics``.
    """
    if not metrics or not trainer.is_global_zero:
        return
    step = logging_step(trainer) if step is None else step
    for logger in trainer.loggers:
        writer = _file_writer(logger)
        if writer is None:
            logger.log_metrics(dict(metrics), step=step)
            continue
        prefixed = _add_prefix(dict(metrics), logger._prefix, logger.LOGGER_JOIN_CHAR)
        values = [Summary.Value(tag=key, simple_value=float(value)) for key, value in prefixed.items()]
        writer.add_summary(Summary(value=values), step)


def _file_writer(logger: Any) -> Any:
    """The event file writer behind a ``TensorBoardLogger`` using torch's ``SummaryWriter``; ``None`` otherwise, and
    for a subclass with its own ``log_metrics`` (which must see every value)."""
    if not isinstance(logger, TensorBoardLogger) or type(logger).log_metrics is not TensorBoardLogger.log_metrics:
        return None
    get = getattr(logger.experiment, "_get_file_writer", None)  # torch.utils.tensorboard.SummaryWriter
    return get() if callable(get) else None


def tensorboard_writers(trainer: pl.Trainer) -> list[Any]:
    """The ``SummaryWriter`` of every ``TensorBoardLogger`` of the trainer, on global rank zero; ``[]`` otherwise."""
    if not trainer.is_global_zero:
        return []
    return [logger.experiment for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]


def histogram_stats(tensors: Sequence[Tensor], bins: int = 64) -> Tensor:
    """Histograms of many tensors computed on their device, as one ``[len(tensors), 5 + bins]`` float tensor.

    Row ``i`` holds ``min, max, count, sum, sum of squares`` of ``tensors[i]`` followed by the counts of ``bins``
    equal-width buckets spanning ``[min, max]``. Non-finite values are left out. No host synchronization
    (``torch.histc`` of the values rescaled to ``[0, 1]``, so its bounds are Python constants).
    """
    rows = []
    for tensor in tensors:
        values = tensor.detach().reshape(-1).float()
        finite = torch.isfinite(values)
        inf = torch.tensor(math.inf, device=values.device)
        low, high = torch.where(finite, values, inf).min(), torch.where(finite, values, -inf).max()
        low, high = torch.where(finite.any(), low, 0.0), torch.where(finite.any(), high, 0.0)  # all non-finite
        kept = torch.where(finite, values, 0.0)
        # Non-finite values go to -1, outside histc's [0, 1]: they are not counted.
        scaled = torch.where(finite, (kept - low) / (high - low).clamp_min(torch.finfo(torch.float32).tiny), -1.0)
        counts = torch.histc(scaled, bins=bins, min=0.0, max=1.0)
        head = torch.stack([low, high, finite.sum().float(), kept.sum(), kept.square().sum()])
        rows.append(torch.cat([head, counts]))
    return torch.stack(rows)


def add_histograms(trainer: pl.Trainer, tensors: Mapping[str, Tensor], step: int | None = None, bins: int = 64) -> bool:
    """Write ``{tag: tensor}`` as TensorBoard histograms; returns ``False`` (and does nothing) without TensorBoard.

    The buckets are counted on the tensors' device (:func:`histogram_stats`) and copied to the host in ONE transfer
    (a deliberate sync: call it only on the rare histogram steps), then written with ``add_histogram_raw``. This is
    much cheaper than ``SummaryWriter.add_histogram``, which copies each tensor to the host and bins it with NumPy.
    """
    writers = tensorboard_writers(trainer)
    if not writers or not tensors:
        return bool(writers)
    step = logging_step(trainer) if step is None else step
    devices: dict[torch.device, list[str]] = {}
    for tag, tensor in tensors.items():
        devices.setdefault(tensor.device, []).append(tag)
    for tags in devices.values():
        table = histogram_stats([tensors[tag] for tag in tags], bins).cpu().tolist()  # the one sync per device
        for tag, row in zip(tags, table, strict=True):
            low, high, num, total, total_sq = row[:5]
            width = (high - low) / bins
            limits = [low + width * (i + 1) for i in range(bins)]
            for writer in writers:
                writer.add_histogram_raw(tag, low, high, num, total, total_sq, limits, row[5:], global_step=step)
    return True


#: Where each family's category goes in the one layout of a run (others follow in registration order).
CATEGORY_ORDER = (
    "gradient health",
    "gradient norm per parameter",
    "weight norm per parameter",
    "update / weight ratio per parameter",
    "activations",
)
#: The chart of the total gradient norm, shared by the callbacks that log or read it (see ``_grad_stats``).
TOTAL_NORM_CHART = "total gradient norm (before clipping)"
_LAYOUT = "_lightning_tricks_layout"  # attributes of a SummaryWriter: its run's layout, and what was written
_WRITTEN = "_lightning_tricks_layout_written"


def register_custom_scalars(trainer: pl.Trainer, category: str, charts: Mapping[str, Sequence[str]]) -> bool:
    """Add charts to the custom-scalar layout of the run (written later by :func:`write_custom_scalars`).

    TensorBoard's custom-scalars plugin keeps ONE layout per run (the last one written), so the callbacks of a run
    must not each write their own: they register their categories here (e.g. in ``on_fit_start``), merged per
    ``SummaryWriter``: charts of the same title in the same category get the union of their tag regexes. Each chart
    is a ``Multiline`` of every tag matching one of its regexes. Titles hold nothing run-specific (no threshold value):
    TensorBoard merges the layouts of all runs by category and chart title, so such a title would make one chart per
    value, each drawing every run. Returns ``False`` (and does nothing) without a ``TensorBoardLogger``.
    """
    writers = tensorboard_writers(trainer)
    for writer in writers:
        layout = writer.__dict__.setdefault(_LAYOUT, {}).setdefault(category, {})
        for title, regexes in charts.items():
            merged = layout.setdefault(title, [])
            merged.extend(r for r in regexes if r not in merged)
    return bool(writers)


def write_custom_scalars(trainer: pl.Trainer) -> bool:
    """Write the merged layout of each TensorBoard run once (call it in ``on_train_start``, after every callback
    registered in ``on_fit_start``; later calls write again only if the layout grew). Returns whether a layout was
    written now."""
    written = False
    for writer in tensorboard_writers(trainer):
        layout = writer.__dict__.get(_LAYOUT, {})
        snapshot = repr(layout)
        if not layout or writer.__dict__.get(_WRITTEN) == snapshot:
            continue
        rank = {c: CATEGORY_ORDER.index(c) if c in CATEGORY_ORDER else len(CATEGORY_ORDER) for c in layout}
        proto = {
            category: {title: ["Multiline", list(regexes)] for title, regexes in layout[category].items()}
            for category in sorted(layout, key=rank.__getitem__)  # stable: unknown categories keep their order
        }
        writer.add_custom_scalars(proto)
        writer.__dict__[_WRITTEN] = snapshot
        written = True
    return written


def add_text(trainer: pl.Trainer, tag: str, text: str) -> bool:
    """Write a constant (a threshold, a decay) once as TensorBoard text at step 0, instead of a flat chart."""
    writers = tensorboard_writers(trainer)
    for writer in writers:
        writer.add_text(tag, text, global_step=0)
    return bool(writers)


_REGEX_SPECIALS = re.compile(r"([.^$*+?{}\[\]\\|()])")


def tag_regex(tags: Iterable[str]) -> str:
    """One regex matching exactly these tags (labels hold ``(``, ``.`` and ``→``). Only the metacharacters common to
    Python's and JavaScript's regexes are escaped (``re.escape`` also escapes spaces, which a JavaScript regex with
    the unicode flag rejects)."""
    return "^(" + "|".join(_REGEX_SPECIALS.sub(r"\\\1", t) for t in tags) + ")$"


def layer_name(param_name: str) -> str:
    """The module that owns a parameter: ``"net.0.weight"`` -> ``"net.0"``; a root-level parameter -> ``"<root>"``."""
    head, _, _ = param_name.rpartition(".")
    return head or "<root>"


def named_optimizer_params(
    pl_module: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> list[tuple[str, torch.nn.Parameter]]:
    """``(name, param)`` for the trainable parameters of ``pl_module`` that ``optimizer`` updates (all if ``None``).

    Names are those of ``pl_module.named_parameters()`` (no DDP ``module.`` prefix); order follows the module.
    """
    named = [(n, p) for n, p in pl_module.named_parameters() if p.requires_grad]
    if optimizer is None:
        return named
    in_opt = {id(p) for group in optimizer.param_groups for p in group["params"]}
    return [(n, p) for n, p in named if id(p) in in_opt]


def group_indices(names: Iterable[str]) -> dict[str, list[int]]:
    """``{layer: [indices of its parameters]}`` for parameter names, in first-seen order."""
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        groups.setdefault(layer_name(name), []).append(i)
    return groups


def index_tensor(values: Sequence[int], device: torch.device) -> Tensor:
    """An int64 tensor of ``values`` on ``device``.

    On CUDA the values go through a pinned staging buffer with ``non_blocking=True``: a pageable, blocking copy would
    synchronize the host with the device (and fail under ``torch.cuda.set_sync_debug_mode("error")``).
    """
    cpu = torch.tensor(list(values), dtype=torch.long)
    if device.type == "cuda":
        return cpu.pin_memory().to(device, non_blocking=True)  # the caching host allocator keeps it alive until copied
    return cpu.to(device)


def group_norms(norms: Tensor, groups: Sequence[Sequence[int]]) -> Tensor:
    """Combine per-tensor L2 norms into per-group L2 norms: ``sqrt(sum of squares)`` over each group's indices."""
    order = [i for members in groups for i in members]
    index = index_tensor([g for g, members in enumerate(groups) for _ in members], norms.device)
    squares = torch.zeros(len(groups), device=norms.device, dtype=norms.dtype)
    if order != list(range(norms.shape[0])):  # groups are not the plain partition 0..P-1 in order: gather first
        norms = norms[index_tensor(order, norms.device)]
    return squares.index_add_(0, index, norms.square()).sqrt()


@dataclass(eq=False)
class GradLayout:
    """The parameters of one optimizer that have a gradient, in module order, grouped by layer (see :func:`layer_name`).

    Attributes:
        names: parameter names, as in ``pl_module.named_parameters()``.
        params: the parameters, same order.
        layers: layer names in first-seen order.
        layer_of: the position in ``layers`` of each parameter's layer.
        float32: whether every parameter (hence every gradient) is float32.
        half: whether some parameter is float16 / bfloat16 (norms of such gradients are best taken in float32).
    """

    names: list[str]
    params: list[torch.nn.Parameter]
    layers: list[str]
    layer_of: list[int]
    float32: bool
    half: bool = False
    _index: dict[torch.device, Tensor] = field(default_factory=dict, repr=False)

    @classmethod
    def from_named(cls, named: Sequence[tuple[str, torch.nn.Parameter]]) -> GradLayout:
        """Group ``(name, param)`` pairs by layer."""
        groups = group_indices(n for n, _ in named)
        layer_of = [0] * len(named)
        for g, members in enumerate(groups.values()):
            for i in members:
                layer_of[i] = g
        float32 = all(p.dtype == torch.float32 for _, p in named)
        half = any(p.dtype in (torch.float16, torch.bfloat16) for _, p in named)
        return cls([n for n, _ in named], [p for _, p in named], list(groups), layer_of, float32, half)

    def grads(self) -> list[Tensor]:
        """The current gradients (new tensor objects after each ``zero_grad(set_to_none=True)``)."""
        return [p.grad for p in self.params]  # type: ignore[misc]

    def layer_index(self, device: torch.device) -> Tensor:
        """``layer_of`` as an int64 tensor on ``device``, made once per device (no per-step host-to-device copy)."""
        index = self._index.get(device)
        if index is None:
            index = self._index[device] = index_tensor(self.layer_of, device)
        return index

    def layer_norms(self, norms: Tensor) -> Tensor:
        """Per-layer L2 norms from per-tensor L2 norms: ``(..., P) -> (..., L)``, 4 kernels, no host sync."""
        sums = norms.new_zeros((*norms.shape[:-1], len(self.layers)))
        return sums.index_add_(-1, self.layer_index(norms.device), norms.square()).sqrt()


class GradLayoutCache:
    """:class:`GradLayout` per optimizer, rebuilt only when the set of parameters with a gradient changes.

    The check each call is one pass over the optimizer's parameters building a tuple of the ids of those that require
    and have a gradient (the cache holds them, so their ids cannot be reused); walking ``named_parameters()`` and
    grouping happen only when that tuple changes (first step, frozen / unfrozen layers, ``add_param_group``).
    Renaming a module without changing its parameters is not detected.

    Example::

        layouts = GradLayoutCache()
        layout = layouts.get(pl_module, optimizer)  # None when no parameter has a gradient
        norms = torch.stack(torch._foreach_norm(layout.grads()))
        per_layer = layout.layer_norms(norms)
    """

    def __init__(self) -> None:
        self._cache: dict[int, tuple[tuple[int, ...], GradLayout | None]] = {}

    def get(self, pl_module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> GradLayout | None:
        """The layout of ``optimizer``'s parameters that have a gradient now; ``None`` if there are none."""
        key = (id(pl_module), *(
            id(p) for group in optimizer.param_groups for p in group["params"] if p.requires_grad and p.grad is not None
        ))  # fmt: skip
        hit = self._cache.get(id(optimizer))
        if hit is not None and hit[0] == key:
            return hit[1]
        named = [(n, p) for n, p in named_optimizer_params(pl_module, optimizer) if p.grad is not None]
        layout = GradLayout.from_named(named) if named else None
        self._cache[id(optimizer)] = (key, layout)
        return layout

    def clear(self) -> None:
        """Forget every layout (and the references to the parameters)."""
        self._cache.clear()
