"""Per-step gradient statistics computed once and shared by the callbacks that read gradients (the "shared gradient
statistics" rule of the design).

``GradientHealth``, ``GradientClipping`` and ``WeightNormMonitor`` all need the per-parameter L2 norms of the
gradients, and their total, in ``on_before_optimizer_step``. :func:`grad_stats` computes them with ONE
``torch._foreach_norm`` per optimizer step (on the device, no host sync) and hands the same :class:`GradStats` to
every caller of that step, so three callbacks cost one pass over the gradients. Each callback still works alone: the
first caller of a step computes, the others reuse.

**Which step.** Statistics belong to one optimizer (the step rule: a GAN's two optimizers never share them) and to
its *current* gradients: the cache remembers the gradient tensors (weakly, so no gradient memory is kept alive) and
their in-place version counters (``Tensor._version``). A new backward, ``zero_grad``, a skipped update
(``GradientHealth`` sets the gradients to ``None``) or any in-place change (a ``WeightDecay(mode="l2")`` penalty,
clipping by value or AGC) makes them stale, and the next caller recomputes. Reading the versions is host-side: no
device work, no sync.

**Before and after clipping.** ``GradientClipping`` by norm (``"norm"``, ``"auto"``) rescales every gradient by one
factor ``c``; it then calls :meth:`GradStats.scaled_`: the post-clip ``norms`` / ``total`` are derived as ``c`` times
the pre-clip ones (when first read; nothing if nobody reads them), never recomputed from the gradients, and the
pre-clip values stay in ``norms_before_clip`` / ``total_before_clip``. The
monitors read those, so they report the gradients as backward made them whatever the order of the callbacks. (After
clipping by value or AGC the pre-clip norms are gone: put the monitors before such a clipping callback.)

**Maths.** ``norms[i] = ‖g_i‖₂`` in the gradients' dtype (float32 for float16 / bfloat16 gradients, so a norm above
65504 does not read as ``inf``), ``total = vector_norm(norms)``: exactly what ``clip_grad_norm_(foreach=True)`` and
``get_total_norm`` compute for float32 / float64 gradients, in the module's parameter order.

**Layout.** :class:`GradLayout` holds the parameters of an optimizer that have a gradient, their names and their
layers, with the layer index tensor made once per device; :class:`GradLayoutCache` rebuilds it only when that set
changes (checked with one cheap pass over the optimizer's parameters).

**Cost.** Per optimizer step: one ``_foreach_norm`` and two tiny kernels (stack, total) for the first caller; for
every caller a Python pass over the optimizer's parameters (the cache check). No host sync.

**One key for the total.** The total gradient norm is logged once, as ``grad_norm/total`` (``/opt<i>`` per optimizer
with several), by one owner: the first ``WeightNormMonitor`` of ``trainer.callbacks`` if there is one, else the first
``GradientHealth``, else ``GradientClipping`` (:func:`owns_total_norm`). The others log only what is theirs.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.optim import Optimizer

from lightning_tricks._tensorboard import write_custom_scalars
from lightning_tricks.callbacks._names import group_indices, named_optimizer_params
from lightning_tricks.callbacks._steps import unwrap

#: The one logged key of the total gradient norm, and its chart in the "gradient health" category of the layout.
TOTAL_NORM_KEY = "grad_norm/total"
TOTAL_NORM_CHART = "total gradient norm (before clipping)"


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
    """The parameters of one optimizer that have a gradient, in module order, grouped by layer (``layer_name``).

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


@dataclass(eq=False)
class GradStats:
    """L2 norms of one optimizer's current gradients (device tensors; see the module docstring).

    Attributes:
        layout: the parameters with a gradient, their names and layers (:class:`GradLayout`), in module order.
        norms_before_clip: ``[P]`` per-parameter gradient norms before a clipping callback rescaled the gradients.
        total_before_clip: L2 norm of all of them (a property: computed when first read).
        norms: ``[P]`` per-parameter gradient norms of the gradients as they are now (derived after clipping).
        total: L2 norm of the gradients as they are now.
    """

    layout: GradLayout
    norms_before_clip: Tensor
    _total: Tensor | None = field(default=None, repr=False)  # total_before_clip, computed when first read
    _coef: Tensor | None = field(default=None, repr=False)  # product of the clip factors applied since
    _derived: tuple[Tensor, Tensor] | None = field(default=None, repr=False)
    _refs: list[weakref.ref[Tensor]] = field(default_factory=list, repr=False)
    _versions: list[int] = field(default_factory=list, repr=False)

    @property
    def total_before_clip(self) -> Tensor:
        if self._total is None:  # one tiny kernel, only for a reader of the total (GradientHealth's "warn" is not)
            self._total = torch.linalg.vector_norm(self.norms_before_clip)
        return self._total

    @property
    def norms(self) -> Tensor:
        return self._current()[0]

    @property
    def total(self) -> Tensor:
        return self._current()[1]

    def _current(self) -> tuple[Tensor, Tensor]:
        if self._coef is None:
            return self.norms_before_clip, self.total_before_clip
        if self._derived is None:  # derived when first read: two tiny kernels, none if nobody reads them
            coef = self._coef.to(self.norms_before_clip.dtype)
            self._derived = (self.norms_before_clip * coef, self.total_before_clip * coef)
        return self._derived

    def _remember(self, grads: list[Tensor]) -> None:
        self._refs = [weakref.ref(g) for g in grads]
        self._versions = [g._version for g in grads]

    def current(self, grads: list[Tensor | None]) -> bool:
        """Whether these statistics describe ``grads`` as they are now (same tensors, not changed in place)."""
        if len(grads) != len(self._refs):
            return False
        return all(
            g is not None and r() is g and g._version == v
            for r, g, v in zip(self._refs, grads, self._versions, strict=True)
        )

    def scaled_(self, coef: Tensor) -> None:
        """Record that every gradient was just multiplied in place by ``coef`` (a 0-dim device tensor): the new norms
        are ``coef`` times the old (derived when read, no pass over the gradients); the pre-clip ones are kept."""
        self._coef = coef if self._coef is None else self._coef * coef
        self._derived = None
        self._remember(self.layout.grads())


@dataclass
class _Entry:
    layouts: GradLayoutCache = field(default_factory=GradLayoutCache)
    stats: GradStats | None = None


# Per torch optimizer; weak keys, so a finished fit's optimizers (and the parameters the layouts hold) can go.
_ENTRIES: weakref.WeakKeyDictionary[Optimizer, _Entry] = weakref.WeakKeyDictionary()


def gradient_norms(grads: list[Tensor], half: bool) -> Tensor:
    """``[P]`` L2 norms of ``grads``: one ``torch._foreach_norm`` and one stack on their device, no host sync
    (float32 norms of float16 / bfloat16 gradients)."""
    with torch.no_grad():
        return torch.stack(torch._foreach_norm(grads, dtype=torch.float32 if half else None))


def grad_stats(pl_module: torch.nn.Module, optimizer: Any) -> GradStats | None:
    """The statistics of ``optimizer``'s current gradients, computed now or reused from earlier in this step.

    Args:
        pl_module: the module whose named parameters name the statistics.
        optimizer: a torch optimizer or a ``LightningOptimizer``.

    Returns:
        ``None`` when no parameter of the optimizer has a gradient (a skipped batch: not a step).
    """
    optimizer = unwrap(optimizer)
    entry = _ENTRIES.get(optimizer)
    if entry is None:
        entry = _ENTRIES[optimizer] = _Entry()
    stats = entry.stats
    # Fast path for the second and third reader of a step: the same gradient tensors, unchanged. (No parameter can
    # have gained a gradient meanwhile without the others changing: a backward makes new or bumped gradients.)
    if stats is not None and stats.current(stats.layout.grads()):
        return stats
    layout = entry.layouts.get(pl_module, optimizer)
    if layout is None:
        entry.stats = None
        return None
    grads = layout.grads()
    norms = gradient_norms(grads, layout.half)
    stats = entry.stats = GradStats(layout, norms)
    stats._remember(grads)
    return stats


def covers_optimizer(stats: GradStats, optimizer: Any) -> bool:
    """Whether ``stats`` covers every parameter of ``optimizer`` that has a gradient (not so for parameters the
    optimizer holds outside the module): only then may a clipping callback use its total."""
    with_grad = sum(1 for group in unwrap(optimizer).param_groups for p in group["params"] if p.grad is not None)
    return with_grad == len(stats.layout.params)


def release(trainer: pl.Trainer) -> None:
    """Forget the statistics and layouts of ``trainer``'s optimizers (at ``teardown``: drop parameter references)."""
    for optimizer in trainer.optimizers:
        _ENTRIES.pop(unwrap(optimizer), None)


class TotalNormOwner:
    """Mixin (before ``Callback``) of the callbacks that read the shared statistics and may log ``grad_norm/total``;
    a lower ``total_norm_priority`` wins. Its hooks write the run's merged custom-scalar layout at train start (after
    every callback registered its charts in ``on_fit_start``) and drop the statistics at teardown."""

    total_norm_priority: ClassVar[int] = 99

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        write_custom_scalars(trainer)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        release(trainer)


def owns_total_norm(callback: pl.Callback, trainer: pl.Trainer) -> bool:
    """Whether ``callback`` is the one that logs the total gradient norm in ``trainer`` (see the module docstring)."""
    candidates = [cb for cb in trainer.callbacks if isinstance(cb, TotalNormOwner)]
    return bool(candidates) and min(candidates, key=lambda cb: cb.total_norm_priority) is callback
