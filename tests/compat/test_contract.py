"""What every callback owes alike, checked once over all of them; the per-callback files keep the maths and the
behaviour, ``test_matrix.py`` runs every callback on third-party modules, and ``tests/test_bad_input.py`` checks the
validated options (every option of every public class, with each callback's message patterns).

- **Configurable from the CLI and YAML**: ``--trainer.callbacks+=Name`` with options builds the callback those
  options describe, and the config LightningCLI saves builds it again.
- **Every precision**: each callback's documented result holds under every precision Lightning offers on the CPU
  (``16-mixed`` with a real ``GradScaler``, whose routine overflow steps are not steps).
- **Works or refuses**: under each sharded strategy a callback either runs or is refused at ``setup`` with a message
  naming the strategy and the alternative.
- **Fresh per fit**: a second ``fit`` of the same instance (a new Trainer) gives exactly what a fresh instance gives,
  after a first fit that leaves behind state which would change it.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from _compat_matrix import CASES, SETTINGS, fit
from helpers.models import (
    ScaledLossModel,
    ScriptedMetricModel,
    SkippingBoringModel,
    StepRecorder,
    call_with_target,
    ema_of,
)
from helpers.trainers import PRECISIONS, WITH_VALIDATION, csv_fit, precision_options
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.strategies import SingleDeviceStrategy
from torch import nn
from torch.utils.data import DataLoader

from lightning_tricks import callbacks
from lightning_tricks.callbacks._base import SHARDED_STRATEGIES

L = " Linear(32→2)"  # the label of BoringModel's `layer` in every per-parameter key (readable names)

# --------------------------------------------------------------------------------------------------- CLI and YAML


@dataclass(frozen=True)
class Cli:
    """Options given on the command line (``--trainer.callbacks.<key>=<value>``) and the attributes they must set."""

    options: Mapping[str, str]
    expected: Mapping[str, Any]
    class_path: bool = False  # name the callback by its full class path instead of its exported name


CLI: list[tuple[str, Cli]] = [
    ("GradientClipping", Cli({"mode": "auto", "percentile": "5"}, {"mode": "auto", "percentile": 5.0})),
    (
        "LRDecay",
        Cli(
            {"mode": "cosine", "interval": "step", "warmup": "10"},
            {"mode": "cosine", "interval": "step", "warmup": 10, "gamma": 0.98},
        ),
    ),
    (
        "EarlyStopping",
        Cli(
            {"monitor": "val/loss", "restore_best_weights": "true", "start_from_epoch": "3"},
            {"monitor": "val/loss", "restore_best_weights": True, "start_from_epoch": 3},
            class_path=True,
        ),
    ),
    (
        "WeightInit",
        Cli({"scheme": "lsuv", "exclude": "[head]", "seed": "1"}, {"scheme": "lsuv", "exclude": ["head"], "seed": 1}),
    ),
    (
        "WeightInit",
        Cli(
            {"scheme": "lsuv", "lsuv_forward_fn": "helpers.models.call_with_target"},
            {"_forward_fn": call_with_target},
            class_path=True,
        ),
    ),
    (
        "WeightDecay",
        Cli(
            {"coefficient": "0.05", "mode": "decoupled", "exclude_bias_and_norm": "false"},
            {"coefficient": 0.05, "mode": "decoupled", "exclude_bias_and_norm": False},
        ),
    ),
    ("EMA", Cli({"decay": "0.95", "warmup": "true"}, {"decay": 0.95, "warmup": True}, class_path=True)),
    (
        "WeightNormMonitor",
        Cli(
            {"per_layer": "true", "histogram_every_n_epochs": "null"},
            {"per_layer": True, "histogram_every_n_epochs": None},
        ),
    ),
    ("GradientHealth", Cli({"action": "skip", "explode_factor": "4.0"}, {"action": "skip", "explode_factor": 4.0})),
    (
        "ActivationStats",
        Cli(
            {"log_every_n_steps": "5", "layer_types": "[Linear, Tanh]", "exclude": "[head*]"},
            {"log_every_n_steps": 5, "layer_types": (nn.Linear, nn.Tanh), "exclude": ["head*"]},
        ),
    ),
    (
        "InputRangeCheck",
        Cli(
            {"expected": "[0.0, 1.0]", "action": "raise", "check_batches": "3", "batch_key": "0"},
            {"expected": (0.0, 1.0), "action": "raise", "check_batches": 3, "batch_key": 0},
        ),
    ),
    ("RNGStateCheckpoint", Cli({}, {}, class_path=True)),
]


def test_every_callback_has_a_cli_case() -> None:
    assert {name for name, _ in CLI} == set(callbacks.__all__)


def _built(cli: LightningCLI, name: str) -> Callback:
    (callback,) = [c for c in cli.trainer.callbacks if isinstance(c, getattr(callbacks, name))]
    return callback


def _check_attributes(callback: Callback, expected: Mapping[str, Any]) -> None:
    for key, value in expected.items():
        actual = getattr(callback, key)
        if isinstance(value, float):
            assert math.isclose(actual, value), (key, actual)
        else:
            assert actual == value and type(actual) is type(value), (key, actual)


@pytest.mark.parametrize(("name", "case"), [pytest.param(n, c, id=f"{n}-{i}") for i, (n, c) in enumerate(CLI)])
def test_configurable_from_the_cli_and_yaml(
    name: str, case: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "argv", ["lightning-tricks"])  # LightningCLI warns when pytest's own arguments are there
    path = f"lightning_tricks.callbacks.{name}" if case.class_path else name
    args = [f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false", f"--trainer.callbacks+={path}"]
    args += [f"--trainer.callbacks.{key}={value}" for key, value in case.options.items()]
    cli = LightningCLI(BoringModel, run=False, args=args)
    _check_attributes(_built(cli, name), case.expected)
    config = tmp_path / "config.yaml"  # what `fit --print_config` shows and SaveConfigCallback writes
    config.write_text(cli.parser.dump(cli.config, skip_none=False))
    again = LightningCLI(BoringModel, run=False, args=["--config", str(config)])
    _check_attributes(_built(again, name), case.expected)


# -------------------------------------------------------------------------------------------------- precisions


@dataclass
class Fit:
    """A finished CSV-logged fit: what the checks look at. ``initial``: the module's state before ``fit``."""

    trainer: Trainer
    rows: list[dict[str, str]]
    module: LightningModule
    callbacks: list[Callback]
    initial: dict[str, torch.Tensor]
    precision: str = "32-true"


@dataclass(frozen=True)
class Scenario:
    """A fit that shows the callback's documented result: callbacks and module made fresh, then a check."""

    callbacks: Callable[[], list[Callback]]
    module: Callable[[], LightningModule]
    check: Callable[[Fit], None]
    trainer: Mapping[str, Any] = field(default_factory=dict)


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _run(root: Path, scenario: Scenario, precision: str) -> Fit:
    module, callbacks_ = scenario.module(), scenario.callbacks()
    initial = _state(module)
    trainer, rows = csv_fit(root, callbacks_, module, **scenario.trainer, **precision_options(precision))
    return Fit(trainer, rows, module, callbacks_, initial, precision)


class ClippedNorm(Callback):
    """Records the total gradient norm the optimizer will read (after the clipping callback listed before it)."""

    def __init__(self) -> None:
        self.norms: list[float] = []

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: torch.optim.Optimizer) -> None:
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if grads:
            self.norms.append(torch.nn.utils.get_total_norm(grads, foreach=True).item())


def _clipping_exact(run: Fit) -> None:
    after = run.callbacks[1]
    finite = [n for n in after.norms if math.isfinite(n)]
    assert len(after.norms) == 7 and len(finite) >= 4  # 16-mixed: the GradScaler's routine overflow steps
    assert finite == pytest.approx([0.01] * len(finite), rel=2e-2)  # clipped to the threshold (bf16 / fp16 grads)
    fractions = [float(r["grad_clip/clipped_fraction"]) for r in run.rows if r.get("grad_clip/clipped_fraction")]
    assert len(fractions) >= 7 and set(fractions) == {1.0}  # (Lightning repeats step values on the skipped batch)


def _assert_weights(model: nn.Module, expected: Mapping[str, torch.Tensor]) -> None:
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, expected[key].to(value.dtype), rtol=0, atol=0)


def _early_stopping_exact(run: Fit) -> None:
    assert run.callbacks[0].best_epoch == 1
    _assert_weights(run.module, run.module.validated[1])  # bitwise, in the module's own dtype


def _ema_exact(run: Fit) -> None:
    """The average is kept in float32 (float64 under 64-true) and equals the EMA of the weights each step left, also
    when the module is bf16 / fp16."""
    ema, recorder = run.callbacks
    average = ema._average_model.module.layer.weight
    assert average.dtype == (torch.float64 if run.precision == "64-true" else torch.float32)
    expected = ema_of(recorder.steps[0], 0.5)[0]
    torch.testing.assert_close(average.double(), expected)  # exact to the average's own precision
    layer = run.module.layer
    torch.testing.assert_close(layer.weight, expected.to(layer.weight.dtype))  # copied in at the end


def _gradient_health_exact(run: Fit) -> None:
    health = run.callbacks[0]
    norms = [float(r["grad_norm/total"]) for r in run.rows if r.get("grad_norm/total")]
    overflows = health._opts[0].counts["scaler_skipped_steps"]  # 16-mixed: the GradScaler's routine first overflow(s)
    assert len(norms) == 8 and sum(0 < n < math.inf for n in norms) == 8 - overflows
    assert overflows == 0 or run.precision == "16-mixed"
    assert health._opts[0].counts["skipped_steps"] == 0 and run.trainer.global_step == 8


def _lr_decay_exact(run: Fit) -> None:
    lrs = [lrs[0] for lrs in run.callbacks[1].lrs[0]]
    assert lrs == pytest.approx([0.1 * 0.5**k for k in range(len(lrs))])
    # 16-mixed: the steps the GradScaler skips (its routine first overflow) do not advance the schedule
    assert len(lrs) == 8 or (run.precision == "16-mixed" and 4 <= len(lrs) < 8)
    assert run.trainer.global_step == 8


def _weight_decay_exact(run: Fit) -> None:
    """Zero loss gradients: SGD's step is ``w -= lr·λ·w`` (l2) and the decoupled shrink is ``w *= 1 - lr·λ``: both
    leave ``w·0.95**k`` after k steps, in the module's own precision; the bias is left alone."""
    layer, start = run.module.layer, run.initial["layer.weight"].double()
    tolerance = {"bf16-true": 5e-2, "16-true": 1e-2}.get(run.precision, 1e-5)  # 7 roundings of a half-precision w
    torch.testing.assert_close(layer.weight.double(), start * 0.95**7, rtol=tolerance, atol=1e-6)
    assert torch.equal(layer.bias, run.initial["layer.bias"].to(layer.bias.dtype))


def _weight_norm_monitor_exact(run: Fit) -> None:
    rows = [r for r in run.rows if r.get(f"weight_norm/layer.weight{L}")]
    assert len(rows) == 8
    before = run.initial["layer.weight"].norm().item()
    assert float(rows[0][f"weight_norm/layer.weight{L}"]) == pytest.approx(before, rel=1e-2)  # bf16 / fp16 rounding
    finite = [math.isfinite(float(r["grad_norm/total"])) for r in rows]
    assert all(finite) or (run.precision == "16-mixed" and any(finite))  # 16-mixed: the scaler's routine overflow


PRECISION_SCENARIOS: dict[str, Scenario] = {
    "GradientClipping": Scenario(
        lambda: [callbacks.GradientClipping(mode="norm", threshold=0.01), ClippedNorm()],
        lambda: SkippingBoringModel([2]),
        _clipping_exact,
    ),
    "LRDecay": Scenario(
        lambda: [callbacks.LRDecay(gamma=0.5, interval="step"), StepRecorder()], SkippingBoringModel, _lr_decay_exact
    ),
    "EarlyStopping": Scenario(
        lambda: [callbacks.EarlyStopping("val_metric", patience=5, restore_best_weights=True)],
        lambda: ScriptedMetricModel([2.0, 1.0, 3.0]),
        _early_stopping_exact,
        {**WITH_VALIDATION, "max_epochs": 3},
    ),
    **{
        f"WeightDecay-{mode}": Scenario(
            lambda mode=mode: [callbacks.WeightDecay(0.5, mode=mode)],
            lambda: ScaledLossModel(0.0, skip_batches=[3]),
            _weight_decay_exact,
        )
        for mode in ("l2", "decoupled")
    },
    "EMA": Scenario(lambda: [callbacks.EMA(decay=0.5), StepRecorder()], SkippingBoringModel, _ema_exact),
    "WeightNormMonitor": Scenario(
        lambda: [callbacks.WeightNormMonitor(histogram_every_n_epochs=None)],
        SkippingBoringModel,
        _weight_norm_monitor_exact,
    ),
    "GradientHealth": Scenario(
        lambda: [callbacks.GradientHealth(action="skip", min_history=2)], SkippingBoringModel, _gradient_health_exact
    ),
}
"""Exact results per precision. ``WeightInit``, ``ActivationStats`` and ``InputRangeCheck`` are checked under every
precision by the matrix (``test_matrix.py``), where their documented result needs a third-party module."""


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("name", list(PRECISION_SCENARIOS))
def test_every_precision(name: str, precision: str, tmp_path: Path) -> None:
    scenario = PRECISION_SCENARIOS[name]
    scenario.check(_run(tmp_path, scenario, precision))


# ------------------------------------------------------------------------------------------- sharded strategies


def _named_strategy(name: str) -> SingleDeviceStrategy:
    """The CPU strategy under a sharded strategy's class name (FSDP and DeepSpeed need a GPU): the refusals key on
    the class names in ``SHARDED_STRATEGIES``, so the fit meets the same check at ``setup`` as under the real one."""
    return type(name, (SingleDeviceStrategy,), {})(device=torch.device("cpu"))


SUPPORTED_VARIANTS: dict[str, Callable[[], Callback]] = {
    "WeightInit-orthogonal": lambda: callbacks.WeightInit("orthogonal"),  # the data-free schemes run before sharding
    "EarlyStopping-without-restore": lambda: callbacks.EarlyStopping("train_loss", check_on_train_epoch_end=True),
}


@pytest.mark.parametrize("strategy", SHARDED_STRATEGIES)
@pytest.mark.parametrize("case", [*CASES, *SUPPORTED_VARIANTS])
def test_works_or_refuses_under_sharded_strategies(case: str, strategy: str, tmp_path: Path) -> None:
    if case in SUPPORTED_VARIANTS:
        fit("accumulate", [SUPPORTED_VARIANTS[case]()], tmp_path, strategy=_named_strategy(strategy))
        return
    row = CASES[case]
    callback = row.make(SETTINGS["accumulate"])
    if row.sharded == "supported":
        run = fit(
            "accumulate", [callback], tmp_path, row.keep_weights, strategy=_named_strategy(strategy), **row.trainer
        )
        row.check(run)
        return
    message = rf"^{case} does not support the {strategy} strategy: .+\. Use .+"
    with pytest.raises(MisconfigurationException, match=message):
        fit("accumulate", [callback], tmp_path, strategy=_named_strategy(strategy), **row.trainer)


# ----------------------------------------------------------------------------------------------- fresh per fit


class StartState(Callback):
    """The module's state at ``on_train_start`` (place it after the callback under test)."""

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.state = _state(pl_module)


@dataclass
class Outcome:
    """A fit of a reuse scenario: the module, the ``metrics.csv`` rows, the callback and what the recorders saw:
    ``initial`` the module before ``fit``, ``start`` at ``on_train_start``, ``steps`` each optimizer step."""

    module: LightningModule
    rows: list[dict[str, str]]
    callback: Callback
    steps: StepRecorder
    initial: dict[str, torch.Tensor]
    start: dict[str, torch.Tensor]


@dataclass(frozen=True)
class Reuse:
    """``make`` a callback, fit ``first`` with it (leaving state behind that would change the next fit if kept), then
    fit ``second`` with the same instance and with a fresh one: the two must agree, and ``check`` the reused one.
    ``raises``: the second fit must raise this message (the reused instance checked again, not "done")."""

    make: Callable[[], Callback]
    first: Callable[[], LightningModule]
    second: Callable[[], LightningModule]
    check: Callable[[Outcome], None] = lambda outcome: None
    check_first: Callable[[Outcome], None] = lambda outcome: None
    trainer: Mapping[str, Any] = field(default_factory=dict)
    raises: str | None = None


def _reuse_fit(root: Path, callback: Callback, make_module: Callable[[], LightningModule], reuse: Reuse) -> Outcome:
    seed_everything(0)  # the same initial weights for the reused and the fresh instance
    module, steps, start = make_module(), StepRecorder(), StartState()
    initial = _state(module)
    _, rows = csv_fit(root, [callback, start, steps], module, **reuse.trainer)
    return Outcome(module, rows, callback, steps, initial, start.state)


def _same(a: Any, b: Any) -> bool:
    """Equal values, tensors bitwise (NaN included), through dicts, lists and tuples."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        same_nan = torch.equal(a.isnan(), b.isnan()) if a.is_floating_point() else True
        return a.dtype == b.dtype and torch.equal(a.nan_to_num(), b.nan_to_num()) and same_nan
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


class Pixels(SkippingBoringModel):
    """``SkippingBoringModel`` on inputs in ``[0, 1]``, or raw 8-bit pixel values in ``[0, 255]`` with ``raw=True``."""

    def __init__(self, raw: bool = False) -> None:
        super().__init__()
        self.scale = 255.0 if raw else 1.0

    def train_dataloader(self) -> DataLoader:
        return DataLoader(torch.rand(64, 32, generator=torch.Generator().manual_seed(0)) * self.scale, batch_size=8)


def _auto_clip_fresh_history(outcome: Outcome) -> None:
    """AutoClip's threshold comes from the new fit's norms only (the first fit's large norms would leave it
    unclipped)."""
    norms = [float(r["grad_norm/total"]) for r in outcome.rows if r.get("grad_norm/total")]
    thresholds = [float(r["grad_clip/threshold"]) for r in outcome.rows if r.get("grad_clip/threshold")]
    assert thresholds == pytest.approx([max(norms[: k + 1]) for k in range(8)], rel=1e-5)
    assert outcome.callback.state_dict()["optimizers"][0]["num_steps"] == 8


def _stops_and_restores_the_first_best(outcome: Outcome) -> None:
    _assert_weights(outcome.module, outcome.module.validated[0])  # stops at epoch 1, restores epoch 0


def _no_stop_at_once_nor_old_restore(outcome: Outcome) -> None:
    """No stop at once, no restore of the first fit's weights: the first fit's best score and weights are gone."""
    stop = outcome.callback
    assert sorted(outcome.module.validated) == [0, 1, 2] and stop.best_epoch == 2 and stop.stopped_epoch == 0
    _assert_weights(outcome.module, outcome.module.validated[2])


def _averages_the_second_fit(outcome: Outcome) -> None:
    """The second fit updates the average (its steps count from 0) and ends with the average of its own weights."""
    assert [o.updates for o in outcome.callback._opts] == [8]
    torch.testing.assert_close(outcome.module.layer.weight.double(), ema_of(outcome.steps.steps[0], 0.5)[0])


def _reads_the_new_optimizers(outcome: Outcome) -> None:
    """The schedule starts from the new optimizer's lr at step 0."""
    assert [lrs[0] for lrs in outcome.steps.lrs[0]] == pytest.approx([0.04 * 0.5**k for k in range(8)])


def _decays_from_the_new_weights(outcome: Outcome) -> None:
    start = outcome.initial["layer.weight"]
    torch.testing.assert_close(outcome.module.layer.weight, start * 0.95**8)


def _checked_in_range(outcome: Outcome) -> None:
    assert outcome.callback.done and outcome.callback.stats["max"] <= 1.0


def _health_counts_the_second_fit(outcome: Outcome) -> None:
    health = outcome.callback
    assert health._steps.counts == [8] and health._opts[0].recorded == 8
    assert health._opts[0].counts["skipped_steps"] == 0  # judged against its own history, not the first fit's


def _logged_at_the_second_fits_steps(key: str, steps: list[int]) -> Callable[[Outcome], None]:
    def check(outcome: Outcome) -> None:
        assert [int(r["step"]) for r in outcome.rows if r.get(key)] == steps

    return check


def _lsuv_again(outcome: Outcome) -> None:
    """LSUV ran again, on the second fit's first batch: the layer's output variance there is 1 at the start."""
    weight, bias = outcome.start["layer.weight"], outcome.start["layer.bias"]
    assert not torch.equal(weight, outcome.initial["layer.weight"])
    x = next(iter(outcome.module.train_dataloader()))
    assert abs(torch.nn.functional.linear(x, weight, bias).var().item() - 1.0) <= 0.1


REUSE: dict[str, Reuse] = {
    "GradientClipping": Reuse(
        lambda: callbacks.GradientClipping(mode="auto", percentile=100),
        lambda: ScaledLossModel(100.0),
        SkippingBoringModel,
        _auto_clip_fresh_history,
    ),
    "LRDecay": Reuse(
        lambda: callbacks.LRDecay(gamma=0.5, interval="step"),
        lambda: SkippingBoringModel(lr=0.1),
        lambda: SkippingBoringModel(lr=0.04),
        _reads_the_new_optimizers,
    ),
    "EarlyStopping": Reuse(
        lambda: callbacks.EarlyStopping("val_metric", patience=0, restore_best_weights=True),
        lambda: ScriptedMetricModel([1.0, 2.0, 3.0]),
        lambda: ScriptedMetricModel([3.0, 2.0, 1.0]),  # improves every epoch
        _no_stop_at_once_nor_old_restore,
        _stops_and_restores_the_first_best,
        {**WITH_VALIDATION, "max_epochs": 3},
    ),
    "WeightInit": Reuse(
        lambda: callbacks.WeightInit("lsuv", seed=0), SkippingBoringModel, SkippingBoringModel, _lsuv_again
    ),
    "WeightDecay": Reuse(
        lambda: callbacks.WeightDecay(0.5, mode="decoupled"),
        SkippingBoringModel,
        lambda: ScaledLossModel(0.0),
        _decays_from_the_new_weights,
    ),
    "EMA": Reuse(
        lambda: callbacks.EMA(decay=0.5),
        SkippingBoringModel,
        lambda: SkippingBoringModel(lr=0.05),
        _averages_the_second_fit,
    ),
    "WeightNormMonitor": Reuse(
        lambda: callbacks.WeightNormMonitor(log_every_n_steps=3, histogram_every_n_epochs=None),
        SkippingBoringModel,
        SkippingBoringModel,
        _logged_at_the_second_fits_steps("grad_norm/total", [2, 5]),
    ),
    "GradientHealth": Reuse(
        lambda: callbacks.GradientHealth(action="skip", min_history=2),
        lambda: ScaledLossModel(100.0),  # a history of norms 100x larger: the second fit's would look vanishing
        SkippingBoringModel,
        _health_counts_the_second_fit,
    ),
    "ActivationStats": Reuse(
        lambda: callbacks.ActivationStats(log_every_n_steps=3),
        SkippingBoringModel,
        SkippingBoringModel,
        _logged_at_the_second_fits_steps(f"activation/layer{L}/mean", [2, 5]),
    ),
    "InputRangeCheck": Reuse(
        lambda: callbacks.InputRangeCheck(expected=(0.0, 1.0), check_batches=2, action="raise"),
        Pixels,
        lambda: Pixels(raw=True),
        check_first=_checked_in_range,
        trainer={"limit_train_batches": 3},
        raises="divide by 255",
    ),
}


def test_every_trick_has_a_reuse_case() -> None:
    assert set(REUSE) == set(CASES)


@pytest.mark.parametrize("name", list(REUSE))
def test_fresh_per_fit(name: str, tmp_path: Path) -> None:
    reuse = REUSE[name]
    callback = reuse.make()
    reuse.check_first(_reuse_fit(tmp_path / "first", callback, reuse.first, reuse))
    if reuse.raises is not None:
        for folder, instance in (("reused", callback), ("fresh", reuse.make())):
            with pytest.raises(ValueError, match=reuse.raises):
                _reuse_fit(tmp_path / folder, instance, reuse.second, reuse)
        return
    reused = _reuse_fit(tmp_path / "reused", callback, reuse.second, reuse)
    fresh = _reuse_fit(tmp_path / "fresh", reuse.make(), reuse.second, reuse)
    assert _same(_state(reused.module), _state(fresh.module))
    assert reused.rows == fresh.rows
    assert _same(reused.steps.lrs, fresh.steps.lrs)
    assert _same(reused.callback.state_dict(), fresh.callback.state_dict())
    reuse.check(reused)
