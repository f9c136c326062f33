"""Per-layer activation statistics: signal scale through depth, dead ReLUs, saturated tanh / sigmoid units.

The classic initialization argument (Glorot & Bengio, "Understanding the difficulty of training deep feedforward
neural networks", AISTATS 2010; He et al., "Delving Deep into Rectifiers", ICCV 2015) is about keeping the
activation variance constant from layer to layer: with a badly scaled init the std grows or shrinks geometrically
with depth, sigmoid / tanh units saturate and ReLU units die. This callback makes that visible per layer.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle
from typing_extensions import override

from lightning_tricks._tensorboard import register_custom_scalars, write_custom_scalars
from lightning_tricks._validation import check_every_n, check_float, invalid
from lightning_tricks.callbacks._base import TrickCallback
from lightning_tricks.callbacks._compiled import run_eagerly, strip_compiled_name
from lightning_tricks.callbacks._logging import is_logging_step, log_metrics, resolve_every_n_steps
from lightning_tricks.callbacks._names import module_type

ActivationKind = Literal["rectifier", "tanh", "sigmoid", "other"]

DEFAULT_LAYER_TYPES: tuple[str, ...] = (
    "Linear", "Conv1d", "Conv2d", "Conv3d",
    "ReLU", "ReLU6", "LeakyReLU", "ELU", "SELU", "CELU", "GELU", "SiLU", "Mish", "Softplus",
    "Tanh", "Sigmoid", "Hardtanh",
)  # fmt: skip


def activation_kind(module: nn.Module) -> ActivationKind:
    """The extra statistic for ``module``'s output: dead fraction (ReLU, ReLU6) or saturation (tanh, sigmoid)."""
    if isinstance(module, (nn.ReLU, nn.ReLU6)):
        return "rectifier"
    if isinstance(module, nn.Tanh):
        return "tanh"
    if isinstance(module, nn.Sigmoid):
        return "sigmoid"
    return "other"


def _moments(x: Tensor, kind: ActivationKind, saturation_threshold: float) -> Tensor:
    """``[mean, m2, dead_fraction, saturation]`` of ``x`` in float32 on its device, where ``m2 = sum((x - mean)^2)``."""
    x = x.detach().float()
    var, mean = torch.var_mean(x, correction=0)
    m2 = var * x.numel()
    nan = torch.full_like(mean, float("nan"))
    dead = (x == 0).float().mean() if kind == "rectifier" else nan
    if kind == "tanh":
        saturation = (x.abs() > saturation_threshold).float().mean()
    elif kind == "sigmoid":
        saturation = ((x > saturation_threshold) | (x < 1.0 - saturation_threshold)).float().mean()
    else:
        saturation = nan
    return torch.stack([mean, m2, dead, saturation])


def _merge(a: Tensor, n_a: int, b: Tensor, n_b: int) -> Tensor:
    """Merge two ``_moments`` rows over ``n_a`` and ``n_b`` elements (Chan et al. 1979 parallel variance update)."""
    n = n_a + n_b
    delta = b[0] - a[0]
    mean = a[0] + delta * (n_b / n)
    m2 = a[1] + b[1] + delta * delta * (n_a * n_b / n)
    fractions = (a[2:] * n_a + b[2:] * n_b) / n
    return torch.cat([torch.stack([mean, m2]), fractions])


def _finish(moments: Tensor, n: Tensor) -> Tensor:
    """``[L, 4]`` moments over ``n`` elements each → ``[L, 4]`` ``[mean, std, dead_fraction, saturation]``.

    ``std`` is the unbiased (Bessel-corrected) standard deviation, as ``torch.std``.
    """
    std = (moments[:, 1] / (n - 1).clamp_min(1)).sqrt()
    return torch.cat([moments[:, :1], std[:, None], moments[:, 2:]], dim=1)


def activation_statistics(x: Tensor, kind: ActivationKind = "other", saturation_threshold: float = 0.99) -> Tensor:
    """Statistics of one activation tensor, computed on its device without a host sync.

    Args:
        x: The layer output.
        kind: ``"rectifier"`` adds the fraction of exact zeros (dead units), ``"tanh"`` the fraction with
            ``|x| > saturation_threshold``, ``"sigmoid"`` the fraction outside ``[1 - threshold, threshold]``.
        saturation_threshold: Where saturation starts.

    Returns:
        A float32 tensor ``[mean, std, dead_fraction, saturation]``; entries that do not apply to ``kind`` are NaN.
    """
    moments = _moments(x, kind, saturation_threshold)[None]
    return _finish(moments, torch.tensor([float(x.numel())], device=x.device))[0]


class ActivationStats(TrickCallback):
    """Log per-layer activation mean, std, dead-unit fraction (ReLU) and saturation (tanh / sigmoid).

    Forward hooks are registered in ``on_train_batch_start`` of a logging step only and removed in
    ``on_train_batch_end``, so other steps run no hook and no tensor work at all. On a logging step every selected
    layer's output is reduced on the device (one extra pass over the activations); all layers' statistics are
    stacked and copied to the host in ONE transfer at ``on_train_batch_end``. Under gradient accumulation the
    statistics of all micro-batches of the logging step are merged. Logged from rank zero with rank zero's
    statistics (no cross-rank communication).

    Compiled networks: a compiled graph does not call hooks registered on its inner modules, so on a logging step
    the compiled parts (``torch.compile(net)`` children, ``net.compile()``, ``fit(torch.compile(model))``) run
    eagerly, through their original modules, from ``on_train_batch_start`` to ``on_train_batch_end``; the compiled
    code is put back unchanged afterwards. The logging step computes the same function at eager speed. A network
    inside ``torch.compile`` of a *function* cannot be run eagerly from outside: the hooks see nothing, and the
    callback warns once instead of logging nothing in silence.

    Precision and strategies: works under every precision (statistics in float32 of the layer outputs as the
    precision plugin produced them) and every strategy, FSDP and DeepSpeed included (they shard parameters, not
    activations; rank zero's statistics are logged).

    Cost: nothing on non-logging steps (one integer test in Python); on a logging step, a few reductions over each
    watched output (float32 copy of it, so up to one activation-sized temporary at a time) and one host sync.

    Source: Glorot & Bengio (AISTATS 2010) and He et al. (ICCV 2015) — activation variance through depth as the
    criterion for weight initialization; saturation of sigmoid / tanh units and dead ReLUs.

    Logged keys (``<layer>`` is the module's qualified name in the LightningModule followed by its type, e.g.
    ``net.0 Linear(784→1024)`` or ``net.1 ReLU`` (``module_label``), without the ``_orig_mod`` a ``torch.compile``
    wrapper adds):

    - ``activation/<layer>/mean`` and ``activation/<layer>/std`` (every selected layer),
    - ``activation/<layer>/dead_fraction``: fraction of exact zeros in a ``ReLU`` / ``ReLU6`` output,
    - ``activation/<layer>/saturation``: fraction of a ``Tanh`` output with ``|y| > saturation_threshold`` or of a
      ``Sigmoid`` output outside ``[1 - saturation_threshold, saturation_threshold]``.

    The latest values are also kept in :attr:`last_stats` (a ``dict[str, float]`` with the same keys). TensorBoard
    only: an "activations" category in the run's one merged custom-scalar layout, one multi-line chart per statistic
    (a line per layer, named by the tag; use the chart's log-scale toggle when the std spans decades).

    Args:
        layer_types: ``torch.nn`` class names of the modules to watch (subclasses match too). Default: every
            ``Linear`` / ``Conv`` layer and activation module (see ``DEFAULT_LAYER_TYPES``).
        include: Glob patterns (``fnmatch``) on qualified module names; when given, only matching modules are watched.
        exclude: Glob patterns of module names never watched.
        log_every_n_steps: Logging interval in optimizer steps; ``None`` uses the Trainer's ``log_every_n_steps``.
        saturation_threshold: Saturation cut-off, in the open interval ``(0.5, 1)``.

    Raises:
        ValueError: On an unknown layer type, a non-positive interval or a threshold outside ``(0.5, 1)``.

    Example::

        trainer = Trainer(callbacks=[ActivationStats(log_every_n_steps=100, exclude=["head*"])])
    """

    def __init__(
        self,
        layer_types: list[str] | None = None,
        include: list[str] | None = None,
        exclude: list[str] | None = None,
        log_every_n_steps: int | None = None,
        saturation_threshold: float = 0.99,
    ) -> None:
        names = list(DEFAULT_LAYER_TYPES if layer_types is None else layer_types)
        types: list[type[nn.Module]] = []
        for name in names:
            cls = getattr(nn, name, None) if isinstance(name, str) else None
            if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
                allowed = "`torch.nn` module class names such as 'Linear', 'Conv2d' or 'ReLU'"
                raise invalid("layer_types", allowed, name)
            types.append(cls)
        check_every_n("log_every_n_steps", log_every_n_steps)
        check_float("saturation_threshold", saturation_threshold, 0.5, 1, low_open=True, high_open=True)
        self.layer_types = tuple(types)
        self.include = list(include) if include is not None else None
        self.exclude = list(exclude or [])
        self.log_every_n_steps = log_every_n_steps
        self.saturation_threshold = saturation_threshold
        self.last_stats: dict[str, float] = {}
        self._layers: dict[str, nn.Module] = {}
        self._labels: dict[str, str] = {}  # module name -> "net.1 Linear(784→1024)"
        self._handles: list[RemovableHandle] = []
        self._records: dict[str, tuple[Tensor, int]] = {}
        self._restore_compiled: Any = None
        self._warned_silent = False

    def select_layers(self, module: nn.Module) -> dict[str, nn.Module]:
        """The watched submodules of ``module`` by qualified name."""
        chosen = {}
        for name, sub in module.named_modules():
            name = strip_compiled_name(name)
            if not name or not isinstance(sub, self.layer_types):
                continue
            if self.include is not None and not _matches(name, self.include):
                continue
            if not _matches(name, self.exclude):
                chosen[name] = sub
        return chosen

    @override
    def reset_fit_state(self) -> None:
        self.last_stats = {}  # a reused instance reports only this fit's statistics
        self._warned_silent = False

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage != "fit":
            return
        self._layers = self.select_layers(pl_module)
        self._labels = {name: f"{name} {module_type(layer)}" for name, layer in self._layers.items()}
        if not self._layers:
            rank_zero_warn(
                f"ActivationStats: no module of {pl_module.__class__.__name__} matches layer_types / include /"
                " exclude; nothing will be logged."
            )

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        register_custom_scalars(trainer, "activations", {title: [regex] for title, regex in _CHARTS.items()})

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        write_custom_scalars(trainer)  # the run's one merged layout, once

    def _is_logging_step(self, trainer: pl.Trainer) -> bool:
        # Same rule and step count as Lightning's own `self.log` (`_LoggerConnector.should_update_logs`).
        return is_logging_step(trainer, resolve_every_n_steps(trainer, self.log_every_n_steps))

    def _hook(self, name: str, kind: ActivationKind) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            out = output[0] if isinstance(output, (tuple, list)) and output else output
            if not isinstance(out, Tensor) or not out.is_floating_point() or out.numel() == 0:
                return
            with torch.no_grad():
                row, n = _moments(out, kind, self.saturation_threshold), out.numel()
                if name in self._records:  # module called again (weight sharing, closure optimizers, accumulation)
                    prev, n_prev = self._records[name]
                    row, n = _merge(prev, n_prev, row, n), n_prev + n
            self._records[name] = (row, n)

        return hook

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._handles or not self._layers or not self._is_logging_step(trainer):
            return
        self._restore_compiled = run_eagerly(pl_module)  # hooks do not fire inside a compiled graph
        self._handles = [
            layer.register_forward_hook(self._hook(name, activation_kind(layer)))
            for name, layer in self._layers.items()
        ]

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self._handles or trainer.fit_loop.epoch_loop._should_accumulate():
            return  # not a logging step, or more micro-batches of this step follow: keep the hooks
        self._remove_hooks()
        if not self._records:
            if not self._warned_silent:  # e.g. a torch.compile'd function: its graph calls no module hooks
                rank_zero_warn(
                    f"ActivationStats: none of the {len(self._layers)} watched modules ran through its forward hooks in"
                    f" this logging step, so nothing is logged. If they run inside `torch.compile` of a function"
                    " (not of a module), compile the module instead (`torch.compile(net)` or `net.compile()`), which"
                    " ActivationStats runs eagerly on logging steps."
                )
                self._warned_silent = True
            return
        names = list(self._records)
        moments = torch.stack([self._records[k][0] for k in names])
        counts = torch.tensor([float(self._records[k][1]) for k in names], device=moments.device)
        self._records = {}
        # Deliberate host sync, once per logging step: all layers' statistics in one transfer.
        values = _finish(moments, counts).tolist()
        stats: dict[str, float] = {}
        for name, (mean, std, dead, saturation) in zip(names, values, strict=True):
            prefix = f"activation/{self._labels[name]}"
            stats[f"{prefix}/mean"] = mean
            stats[f"{prefix}/std"] = std
            kind = activation_kind(self._layers[name])
            if kind == "rectifier":
                stats[f"{prefix}/dead_fraction"] = dead
            elif kind in ("tanh", "sigmoid"):
                stats[f"{prefix}/saturation"] = saturation
        self.last_stats = stats
        log_metrics(trainer, stats)  # rank zero, at the step Lightning logs this batch under

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self._restore_compiled is not None:
            self._restore_compiled()
            self._restore_compiled = None

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._remove_hooks()
        self._records = {}

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._remove_hooks()
        self._records = {}


#: The "activations" charts of the custom-scalar layout: one per statistic, a line per layer.
_CHARTS = {
    "activation mean per layer": r"^activation/.*/mean$",
    "activation std per layer": r"^activation/.*/std$",
    "dead ReLU fraction per layer": r"^activation/.*/dead_fraction$",
    "tanh / sigmoid saturation per layer": r"^activation/.*/saturation$",
}


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)
