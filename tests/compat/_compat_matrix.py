"""The compatibility matrix: every callback of ``lightning_tricks.callbacks`` x the settings real projects use.

One table drives both the tests (``test_matrix.py``: one cell = one short ``fit`` whose result is checked against
what the callback documents) and the table of ``docs/compatibility.md`` (:func:`markdown_table`; ``python
tests/compat/_compat_matrix.py`` rewrites it, a test checks it is current). A cell is "works" unless the callback
lists the setting in ``refused``: then the fit must raise that message.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # run as a script: `helpers` lives in tests/
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from helpers.ranks import tensors_digest
from helpers.third_party import (
    GAN,
    Boring,
    BoringBatchNorm,
    CompiledMLP,
    PartlyUnused,
    Plain,
    ResNet18,
    TinyTransformer,
    gan_forward,
    transformer_forward,
)
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from lightning.pytorch.loggers import Logger
from torch import Tensor, nn

from lightning_tricks.callbacks import (
    EMA,
    ActivationStats,
    EarlyStopping,
    GradientClipping,
    GradientHealth,
    InputRangeCheck,
    LRDecay,
    WeightDecay,
    WeightInit,
    WeightNormMonitor,
)
from lightning_tricks.callbacks._compiled import call_eagerly
from lightning_tricks.callbacks._lsuv import default_forward
from lightning_tricks.callbacks.weight_init import target_layers

ROOT = Path(__file__).resolve().parents[2]
# ------------------------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Setting:
    """A column: a third-party module and the Trainer options of a real project."""

    label: str
    module: Callable[[], LightningModule]
    trainer: Mapping[str, Any] = field(default_factory=dict)
    forward_fn: Callable[[nn.Module, Any], Any] | None = None
    reuse: Callable[[], LightningModule] | None = None  # a second fit, same callback instance, new Trainer


def _precision(precision: str) -> Setting:
    return Setting(f"`{precision}`", Plain, {"precision": precision})


SETTINGS: dict[str, Setting] = {
    "boring": Setting("`BoringModel`", Boring),
    "transformer": Setting("`LightningTransformer`", TinyTransformer, forward_fn=transformer_forward),
    "resnet18": Setting("torchvision `resnet18`", ResNet18),
    "gan": Setting("GAN: manual optimization, 2 optimizers", GAN, forward_fn=gan_forward),
    "compiled": Setting("`torch.compile`d network", CompiledMLP),
    "frozen": Setting("frozen backbone (`resnet18`)", partial(ResNet18, frozen=True)),
    "no_grad": Setting("parameters without gradients on some steps", PartlyUnused),
    "accumulate": Setting("`accumulate_grad_batches=2`", Plain, {"accumulate_grad_batches": 2}),
    **{p: _precision(p) for p in ("64-true", "bf16-mixed", "bf16-true", "16-true")},
    "16-mixed": Setting("`16-mixed` (on the CPU Lightning runs it as `bf16-mixed`)", Plain, {"precision": "16-mixed"}),
    "reuse": Setting("reused instance (2nd `fit`, new `Trainer`)", Plain, reuse=partial(Plain, lr=0.05)),
}
LOW_PRECISION = {"bf16-mixed", "bf16-true", "16-mixed", "16-true"}

# ------------------------------------------------------------------------------------------------------ recording


class RecordingLogger(Logger):
    """Keeps every ``log_metrics`` call: ``logged[key] = {step: value}``."""

    def __init__(self) -> None:
        super().__init__()
        self.logged: dict[str, dict[int, float]] = {}

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        for key, value in metrics.items():
            self.logged.setdefault(key, {})[int(step or 0)] = float(value)


def _state(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


class Probe(Callback):
    """Placed after the callback under test: records what the checks compare against.

    Per optimizer step (``on_before_optimizer_step``, after the callback under test): the optimizer's index, its
    learning rates and the total 2-norm of the gradients it will apply; after it, the raw weights (when
    ``keep_weights``). Per batch: the input's min / max. At ``on_train_start``: the weights, the optimizers'
    configured learning rates, and the output variance of the first trainable Linear / Conv layer that runs in LSUV's
    forward call on the first batch.
    """

    def __init__(self, setting: Setting, keep_weights: bool = False) -> None:
        self.setting, self.keep_weights = setting, keep_weights
        self.steps: list[tuple[int, list[float], float]] = []
        self.weights: list[tuple[int, dict[str, Tensor]]] = []  # (optimizer index, weights after its step)
        self.input_ranges: list[tuple[float, float]] = []
        self._handles: list[Any] = []

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.start = _state(pl_module)
        self.first_variance = self._first_layer_variance(trainer, pl_module)
        self.configured_lrs = [opt.defaults["lr"] for opt in trainer.optimizers]
        if self.keep_weights:
            for index, opt in enumerate(trainer.optimizers):
                self._handles.append(opt.register_step_post_hook(partial(self._keep, index, pl_module)))

    def _keep(self, index: int, pl_module: LightningModule, *_: Any) -> None:
        self.weights.append((index, {k: v.detach().clone() for k, v in pl_module.named_parameters()}))

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        for handle in self._handles:
            handle.remove()

    def _first_layer_variance(self, trainer: Trainer, pl_module: LightningModule) -> float:
        outputs: list[Tensor] = []
        handles = [
            layer.register_forward_hook(lambda m, a, out: outputs.append(out.detach().float()))
            for _, layer in target_layers(pl_module, include_frozen=False)
        ]
        batch = trainer.precision_plugin.convert_input(next(iter(pl_module.train_dataloader())))
        forward = self.setting.forward_fn or default_forward
        training = pl_module.training
        pl_module.eval()
        try:
            with torch.no_grad(), trainer.precision_plugin.forward_context():
                call_eagerly(pl_module, lambda: forward(pl_module, batch))
        finally:
            pl_module.train(training)
            for handle in handles:
                handle.remove()
        return outputs[0].var().item()

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        self.input_ranges.append((x.min().item(), x.max().item()))

    def on_before_optimizer_step(
        self, trainer: Trainer, pl_module: LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        grads = [p.grad.double() for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item()
        index = next(i for i, opt in enumerate(trainer.optimizers) if opt is optimizer)
        self.steps.append((index, [g["lr"] for g in optimizer.param_groups], norm))


@dataclass
class Run:
    """One finished cell: what the checks look at."""

    setting_name: str
    trainer: Trainer
    module: LightningModule
    callbacks: list[Callback]
    probe: Probe
    initial: dict[str, Tensor]

    @property
    def logged(self) -> dict[str, dict[int, float]]:
        return self.trainer.logger.logged  # type: ignore[union-attr]

    @property
    def log_steps(self) -> set[int]:
        """The steps at which Lightning's own ``self.log("train_loss")`` reached the logger."""
        return set(self.logged["train_loss"])

    def keys(self, prefix: str) -> dict[str, dict[int, float]]:
        return {k: v for k, v in self.logged.items() if k.startswith(prefix)}

    @property
    def low_precision(self) -> bool:
        return self.setting_name in LOW_PRECISION

    def grad_norms(self) -> list[float]:
        return [norm for _, _, norm in self.probe.steps]


def fit(setting_name: str, callbacks: list[Callback], root: Path, keep_weights: bool = False, **trainer: Any) -> Run:
    """Fit the setting's module with ``callbacks`` (then a :class:`Probe`) and a :class:`RecordingLogger`."""
    setting = SETTINGS[setting_name]
    for attempt in range(2 if setting.reuse else 1):
        seed_everything(attempt)
        module = setting.reuse() if attempt and setting.reuse else setting.module()
        initial, probe = _state(module), Probe(setting, keep_weights)
        options: dict[str, Any] = {
            "default_root_dir": root / str(attempt),
            "accelerator": "cpu",
            "devices": 1,
            "max_epochs": 1,
            "limit_val_batches": 0,
            "log_every_n_steps": 2,
            "logger": RecordingLogger(),
            "enable_checkpointing": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "callbacks": [*callbacks, probe],
        }
        options.update(setting.trainer)
        options.update(trainer)
        trainer_ = Trainer(**options)
        trainer_.fit(module)
    return Run(setting_name, trainer_, module, callbacks, probe, initial)


# ---------------------------------------------------------------------------------------------------------- checks


def _find(run: Run, cls: type[Callback]) -> Any:
    return next(cb for cb in run.callbacks if isinstance(cb, cls))


def _close(a: float, b: float, run: Run, rel: float = 1e-3) -> bool:
    return math.isclose(a, b, rel_tol=0.05 if run.low_precision else rel, abs_tol=1e-6)


def _logged_at_lightning_steps(run: Run, key: str) -> dict[int, float]:
    values = run.logged.get(key, {})
    assert set(values) == run.log_steps, (key, sorted(values), sorted(run.log_steps))
    assert all(math.isfinite(v) for v in values.values()), (key, values)
    return values


def _per_optimizer(run: Run, key: str) -> list[tuple[int, str]]:
    """``(index, key)`` per optimizer: the callbacks append ``/opt<i>`` to their keys when there are several."""
    count = len(run.trainer.optimizers)
    return [(0, key)] if count == 1 else [(i, f"{key}/opt{i}") for i in range(count)]


def check_clipping(run: Run) -> None:
    threshold = _find(run, GradientClipping).threshold
    assert run.probe.steps and max(run.grad_norms()) <= threshold * (1.02 if run.low_precision else 1.0001)
    for _, key in _per_optimizer(run, "grad_norm/total"):  # alone, clipping owns the total norm (before clipping)
        before = _logged_at_lightning_steps(run, key)
        assert max(before.values()) > threshold  # the norms were above the threshold: clipping did something


def check_lr_decay(run: Run) -> None:
    gamma = _find(run, LRDecay).gamma
    for index in {i for i, _, _ in run.probe.steps}:
        lrs = [lrs[0] for i, lrs, _ in run.probe.steps if i == index]
        initial = run.probe.configured_lrs[index]
        expected = [initial * gamma**k for k in range(len(lrs))]
        assert all(math.isclose(a, b, rel_tol=1e-9) for a, b in zip(lrs, expected, strict=True)), (index, lrs)
    assert _logged_at_lightning_steps(run, "lr/opt0_group0")


def check_early_stopping(run: Run) -> None:
    stopper = _find(run, EarlyStopping)
    assert run.trainer.current_epoch == 1 and stopper.stopped_epoch == 0 and run.trainer.should_stop
    assert len(run.probe.input_ranges) == run.trainer.num_training_batches  # one epoch ran of max_epochs=2
    best = stopper.best_weights
    assert best is not None
    for name, value in run.module.state_dict().items():
        assert torch.equal(value, best[name].to(value.device)), name  # the best weights are in the module


def check_weight_init(run: Run) -> None:
    tolerance = 0.3 if run.low_precision else 0.1
    assert abs(run.probe.first_variance - 1.0) <= tolerance, run.probe.first_variance
    for name, param in run.module.named_parameters():
        if not param.requires_grad:  # frozen parameters are left alone
            assert torch.equal(run.probe.start[name], run.initial[name]), name


def check_weight_decay(run: Run) -> None:
    penalty = _logged_at_lightning_steps(run, "weight_decay/penalty")
    assert all(v > 0 for v in penalty.values())


def _owners(run: Run) -> dict[str, int]:
    """The index of the optimizer that steps each parameter."""
    ids = {id(p): i for i, opt in enumerate(run.trainer.optimizers) for g in opt.param_groups for p in g["params"]}
    return {name: ids[id(p)] for name, p in run.module.named_parameters() if id(p) in ids}


def check_ema(run: Run) -> None:
    decay, owners = _find(run, EMA).decay, _owners(run)
    expected: dict[str, Tensor] = {}
    for index, weights in run.probe.weights:  # each optimizer's parameters: an update right after each of its steps
        for name, value in weights.items():
            if owners.get(name, index) != index:
                continue
            expected[name] = value.double() if name not in expected else decay * expected[name] + (1 - decay) * value
    atol = 2e-2 if run.low_precision else 1e-5
    for name, param in run.module.named_parameters():
        assert torch.allclose(param.double(), expected[name], atol=atol), name  # the average is in the module
    assert not run.keys("ema/decay")  # a constant decay is TensorBoard text, not a flat chart


def _values_match_probe(run: Run, values: Mapping[int, float]) -> None:
    norms = run.grad_norms()
    for value in values.values():
        assert any(_close(value, norm, run) for norm in norms), (value, norms)


def check_weight_norm_monitor(run: Run) -> None:
    total = _logged_at_lightning_steps(run, "grad_norm/total")
    if len({i for i, _, _ in run.probe.steps}) == 1:
        _values_match_probe(run, total)
    else:  # "all gradients together": the norm over every optimizer's gradients of the step
        per_step = [math.hypot(a[2], b[2]) for a, b in zip(run.probe.steps[::2], run.probe.steps[1::2], strict=True)]
        assert all(any(_close(v, n, run) for n in per_step) for v in total.values()), (total, per_step)
    assert run.keys("weight_norm/")


def _clipped(run: Run, norm: float) -> float:
    """The norm the optimizer applies after a ``GradientClipping(mode="norm")`` of the run (``norm`` without one)."""
    clip = next((cb for cb in run.callbacks if isinstance(cb, GradientClipping) and cb.mode == "norm"), None)
    return norm if clip is None else norm * min(1.0, clip.threshold / (norm + 1e-6))


def check_gradient_health(run: Run) -> None:
    # grad_norm/total: logged by GradientHealth alone, by WeightNormMonitor in the stack; the norm BEFORE clipping
    # (shared statistics), whatever the list order, so it is compared with the probe's applied norm through the clip
    for index, key in _per_optimizer(run, "grad_norm/total"):
        norms = [norm for i, _, norm in run.probe.steps if i == index]
        for value in _logged_at_lightning_steps(run, key).values():
            assert any(_close(_clipped(run, value), norm, run) for norm in norms), (index, value, norms)
    assert not run.keys("grad_health/nonfinite_steps")  # counters are logged from their first event on


def check_activation_stats(run: Run) -> None:
    means = {k: v for k, v in run.keys("activation/").items() if k.endswith("/mean")}
    assert means and all(set(v) == run.log_steps for v in means.values()), means
    assert not any("_orig_mod" in k for k in means)
    stds = [v for k, values in run.keys("activation/").items() if k.endswith("/std") for v in values.values()]
    assert stds and all(s > 0 and math.isfinite(s) for s in stds)


def check_input_range(run: Run) -> None:
    stats = _find(run, InputRangeCheck).stats
    first = run.probe.input_ranges[:2]
    assert stats is not None and _close(stats["min"], min(lo for lo, _ in first), run)
    assert _close(stats["max"], max(hi for _, hi in first), run)
    assert set(run.keys("input/")) == {"input/min", "input/max", "input/mean", "input/std"}


# ----------------------------------------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    """A row: a callback made for a setting, the check of its documented behaviour, its refusals."""

    make: Callable[[Setting], Callback]
    check: Callable[[Run], None]
    refused: Mapping[str, str] = field(default_factory=dict)  # setting -> the start of the refusal's message
    refused_when: str = "at fit start"  # when the refusal comes, for docs/compatibility.md
    sharded: str = "supported"  # FSDP / DeepSpeed: "supported", or why it is refused at setup
    keep_weights: bool = False
    trainer: Mapping[str, Any] = field(default_factory=dict)


_NO_FLOAT_INPUT = "InputRangeCheck found no floating-point input tensor in the batch"

CASES: dict[str, Case] = {
    "GradientClipping": Case(
        lambda s: GradientClipping("norm", threshold=1e-3),
        check_clipping,
        sharded="each rank holds only a shard of the gradients, so the norms and thresholds would be wrong;"
        " use `Trainer(gradient_clip_val=...)`",
    ),
    "LRDecay": Case(
        lambda s: LRDecay("exponential", gamma=0.5, interval="step"),
        check_lr_decay,
        refused={"boring": "`LRDecay` sets the learning rate itself, but `configure_optimizers` also returned"},
    ),
    "EarlyStopping": Case(
        lambda s: EarlyStopping(
            "train_loss", stopping_threshold=1e9, check_on_train_epoch_end=True, restore_best_weights=True
        ),
        check_early_stopping,
        trainer={"max_epochs": 2},
        sharded="with `restore_best_weights=True` each rank would keep and restore only its shard of the weights;"
        " use `ModelCheckpoint(monitor=...)` and load the best checkpoint",
    ),
    "WeightInit": Case(
        lambda s: WeightInit("lsuv", seed=0, lsuv_forward_fn=s.forward_fn),
        check_weight_init,
        sharded="`lsuv` only: LSUV rescales whole weight tensors, which this strategy splits across ranks"
        " (the data-free schemes run before sharding: supported)",
    ),
    "WeightDecay": Case(
        lambda s: WeightDecay(1e-2, mode="decoupled"),
        check_weight_decay,
        sharded="flattened 1-D shards hide which parameters are biases and norm layers; use the optimizer's own"
        " `weight_decay` with parameter groups",
    ),
    "EMA": Case(
        lambda s: EMA(decay=0.5),
        check_ema,
        keep_weights=True,
        sharded="the average would be a full, unsharded copy of the module on every rank; use DDP or Lightning's"
        " `EMAWeightAveraging`",
    ),
    "WeightNormMonitor": Case(
        lambda s: WeightNormMonitor(),
        check_weight_norm_monitor,
        sharded="each rank holds only a shard of the weights and gradients, so the norms would be wrong; use DDP or"
        " `lightning.pytorch.utilities.grad_norm`",
    ),
    "GradientHealth": Case(
        lambda s: GradientHealth("warn"),
        check_gradient_health,
        sharded="each rank holds only a shard of the gradients, so the norms and decisions would differ per rank;"
        " use DDP",
    ),
    "ActivationStats": Case(lambda s: ActivationStats(), check_activation_stats),
    "InputRangeCheck": Case(
        lambda s: InputRangeCheck(expected=(-10.0, 10.0), check_batches=2, action="raise"),
        check_input_range,
        refused={"transformer": _NO_FLOAT_INPUT},
        refused_when="at the first batch",
    ),
}


def cells() -> list[tuple[str, str]]:
    return [(case, setting) for case in CASES for setting in SETTINGS]


# The realistic stack, in the order a project would list them. EMA and EarlyStopping(restore_best_weights) both
# write the final weights (their interplay has its own test); WeightNormMonitor owns `grad_norm/total` here, which
# GradientHealth's check reads (norms before clipping, shared, whatever the list order): the stack checks the others.
STACK = ("WeightInit", "InputRangeCheck", "GradientClipping", "WeightDecay", "LRDecay", "EMA", "EarlyStopping",
         "WeightNormMonitor", "GradientHealth", "ActivationStats")  # fmt: skip
_STACK_SKIPS_CHECK = {"EMA", "EarlyStopping", "WeightNormMonitor"}


def run_stack(setting_name: str, root: Path) -> Run:
    """Fit the setting with every callback that does not refuse it; check each that the stack leaves checkable."""
    names = [name for name in STACK if setting_name not in CASES[name].refused]
    callbacks = [CASES[name].make(SETTINGS[setting_name]) for name in names]
    run = fit(setting_name, callbacks, root, max_epochs=2)
    for name in names:
        if name not in _STACK_SKIPS_CHECK:
            CASES[name].check(run)
    assert run.keys("grad_norm/") and _find(run, EMA)._num_updates and run.trainer.should_stop  # the others ran too
    return run


def run_cell(case_name: str, setting_name: str, root: Path) -> Run | None:
    """Run one cell; a refused cell must raise its message (returns ``None``), any other must pass its check."""
    case = CASES[case_name]
    callback = case.make(SETTINGS[setting_name])
    expected = case.refused.get(setting_name)
    if expected is not None:
        try:
            fit(setting_name, [callback], root, case.keep_weights, **case.trainer)
        except Exception as err:  # the refusal: the message names the setting and the alternative
            assert str(err).startswith(expected), err
            return None
        raise AssertionError(f"{case_name} under {setting_name} ran; expected the refusal {expected!r}")
    run = fit(setting_name, [callback], root, case.keep_weights, **case.trainer)
    case.check(run)
    return run


# ------------------------------------------------------------------------------------------------------------- DDP


class RankRecord(Callback):
    """Last in the list under ``ddp_spawn``: writes what each rank ended with to ``<folder>/rank<r>.json``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        probe = next(cb for cb in trainer.callbacks if isinstance(cb, Probe))  # type: ignore[attr-defined]
        stopper = next(cb for cb in trainer.callbacks if isinstance(cb, EarlyStopping))  # type: ignore[attr-defined]
        buffers = dict(pl_module.named_buffers())
        record = {
            "start": tensors_digest(probe.start.values()),
            "params": tensors_digest(pl_module.parameters()),
            "best_buffers": tensors_digest(stopper.best_weights[k] for k in buffers) if stopper.best_weights else None,
            "steps": probe.steps,
            "input_stats": next(cb for cb in trainer.callbacks if isinstance(cb, InputRangeCheck)).stats,  # type: ignore[attr-defined]
            "logged": sorted(trainer.logger.logged) if trainer.is_global_zero else [],  # type: ignore[union-attr]
            "stopped_epoch": stopper.stopped_epoch,
        }
        (self.folder / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


def run_ddp_stack(folder: Path) -> list[dict[str, Any]]:
    """One 2-process ``ddp_spawn`` fit of ``BoringModel`` with BatchNorm and the whole stack; each rank's record."""
    setting = Setting("DDP", BoringBatchNorm)
    callbacks = [CASES[name].make(setting) for name in STACK]
    seed_everything(0)
    trainer = Trainer(
        default_root_dir=folder, accelerator="cpu", devices=2, strategy="ddp_spawn", max_epochs=2,
        limit_val_batches=0, log_every_n_steps=2, logger=RecordingLogger(), enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
        callbacks=[*callbacks, Probe(setting), RankRecord(folder)],
    )  # fmt: skip
    trainer.fit(BoringBatchNorm())
    return [json.loads((folder / f"rank{rank}.json").read_text()) for rank in range(2)]


# ------------------------------------------------------------------------------------------ docs/compatibility.md


def _cell_text(case: Case, setting_name: str) -> str:
    if setting_name in case.refused:
        return f"refused {case.refused_when}: {case.refused[setting_name]}"
    return "works"


def markdown_table() -> str:
    """The compatibility table: a row per setting (DDP and FSDP / DeepSpeed last), a column per callback."""
    header = ["setting", *(f"`{name}`" for name in CASES), "all together"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for setting_name, setting in SETTINGS.items():
        cells = [_cell_text(case, setting_name) for case in CASES.values()]
        lines.append(f"| {setting.label} | " + " | ".join([*cells, "works"]) + " |")
    lines.append("| DDP, 2 processes (`ddp_spawn`), BatchNorm | " + " | ".join(["works"] * (len(CASES) + 1)) + " |")
    sharded = [
        "supported" if case.sharded == "supported" else f"refused at setup: {case.sharded}" for case in CASES.values()
    ]
    lines.append("| FSDP / DeepSpeed (GPU only) | " + " | ".join([*sharded, ""]) + " |")
    return "\n".join(lines)


#: The page that shows the table, between the two markers.
TABLE_PAGE = ROOT / "docs" / "compatibility.md"
BEGIN, END = "<!-- compat-table: begin -->", "<!-- compat-table: end -->"


def page_with_table(page: str) -> str:
    """``page`` with the text between the compat-table markers replaced by :func:`markdown_table`."""
    if BEGIN not in page or END not in page:
        raise ValueError(f"{TABLE_PAGE} has lost its markers: put {BEGIN} and {END} where the table goes")
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.DOTALL)
    return pattern.sub(lambda _: f"{BEGIN}\n{markdown_table()}\n{END}", page)


if __name__ == "__main__":  # python tests/compat/_compat_matrix.py: rewrite the table of docs/compatibility.md
    TABLE_PAGE.write_text(page_with_table(TABLE_PAGE.read_text()))
    sys.exit(0)
