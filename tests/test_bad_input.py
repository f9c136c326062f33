"""Bad input: every public option of every callback, model and data module rejects invalid values with a
``ValueError`` naming the option; CLI typos give jsonargparse's errors; wrong channels / classes give clear messages.

The option list comes from ``inspect.signature`` of each public class (a model's ``**kwargs`` expanded to
``Classifier``'s), so a new option fails ``test_every_option_is_covered`` until it gets invalid values in
``INVALID`` or a reason in ``FREE_FORM``.
"""

from __future__ import annotations

import inspect
import math
import re
import sys
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from helpers.options import constructor_options
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader, TensorDataset

from lightning_tricks import callbacks, data, models
from lightning_tricks.cli import cli_main

CLASSES: dict[str, type] = {
    name: getattr(package, name)
    for package in (callbacks, models, data)
    for name in package.__all__
    if inspect.isclass(getattr(package, name)) and not issubclass(getattr(package, name), Exception)
}


@dataclass(frozen=True)
class Says:
    """An invalid value and a pattern its message must match besides naming the option and showing the value: the
    option, the allowed values and the value given, in the order of the message template."""

    value: Any
    pattern: str


#: Arguments a class needs besides the one under test.
REQUIRED: dict[str, dict[str, Any]] = {"EarlyStopping": {"monitor": "val/loss"}}

#: Invalid values per option name, or per ``Class.option`` where one name means different things; a :class:`Says`
#: adds the pattern the message must match (each callback's allowed values).
INVALID: dict[str, list[Any]] = {
    # choices
    "GradientClipping.mode": ["bogus", Says("median", r"`mode`.*\('norm', 'value', 'agc', 'auto'\).*'median'")],
    "LRDecay.mode": ["bogus", Says("poly", r"`mode`.*\('exponential', 'step', 'cosine', 'linear'\).*'poly'")],
    "EarlyStopping.mode": [Says("avg", "`mode`.*'min', 'max'.*'avg'")],
    "WeightDecay.mode": ["l3", Says("l1", r"`mode`.*\('l2', 'decoupled'\).*'l1'")],
    "interval": [Says("batch", r"`interval`.*\('epoch', 'step'\).*'batch'")],
    "scheme": ["bogus", Says("he", "`scheme`.*xavier_uniform.*'he'")],
    "nonlinearity": ["bogus", Says("gelu", "`nonlinearity`.*relu.*'gelu'")],
    "fan_mode": ["fan_middle", Says("avg", "`fan_mode`.*fan_in.*'avg'")],
    "GradientHealth.action": ["bogus", Says("ignore", "`action` to be one of")],
    "InputRangeCheck.action": ["bogus", Says("ignore", r"`action`.*'warn', 'raise'.*'ignore'")],
    "optimizer": ["bogus"],
    "lr_schedule": ["bogus"],
    "activation": ["bogus"],
    "norm": ["bogus"],
    "value_range": ["bogus"],
    # numbers
    "threshold": [Says(0.0, r"`threshold`.*> 0.*0.0"), -1.0, math.nan],
    "norm_type": [0.0, Says(-1.0, r"`norm_type`.*-1.0")],
    "percentile": [0.0, 101.0, Says(150, r"`percentile`.*\(0, 100\].*150")],
    "history_size": [Says(0, r"`history_size`.*0")],
    "agc_eps": [-1.0, Says(0, r"`agc_eps`")],
    "gamma": [0.0, Says(1.5, r"`gamma`.*\(0, 1\].*1.5"), -0.5],
    "LRDecay.warmup": [Says(-1, r"`warmup`.*-1")],
    "min_lr": [Says(-0.1, r"`min_lr`.*-0.1")],
    "step_size": [Says(0, r"`step_size`.*0")],
    "total": [Says(0, r"`total`.*0")],
    "min_delta": [Says(-0.1, "`min_delta`.*>= 0.*-0.1")],
    "patience": [Says(-1, "`patience`.*>= 0.*-1")],
    "start_from_epoch": [-1, Says(-2, "`start_from_epoch`.*>= 0.*-2")],
    "bias": [math.nan],
    "gain": [0.0, -1.0],
    "lsuv_tolerance": [Says(0.0, "`lsuv_tolerance`.*> 0.*0.0"), -0.1],
    "lsuv_max_iters": [Says(0, "`lsuv_max_iters`.*>= 1.*0")],
    "lsuv_forward_fn": [
        Says(3, "`lsuv_forward_fn`.*callable.*but got 3"),
        "no_such_module.run",
        "not-a-path",
        Says("no_such_module.fn", "`lsuv_forward_fn`.*could not import 'no_such_module.fn'"),
    ],
    "coefficient": [Says(-1e-4, r"`coefficient`.*>= 0.*-0.0001")],
    "decay": [-0.1, Says(1.5, r"`decay`.*\[0, 1\].*1.5")],
    "update_every_n_steps": [Says(0, "`update_every_n_steps`.*>= 1.*0")],
    "update_starting_at_step": [Says(-1, "`update_starting_at_step`.*-1")],
    "EMA.device": ["no-such-device"],
    "log_every_n_steps": [0, -1],
    "ActivationStats.log_every_n_steps": [Says(0, r"`log_every_n_steps`.*positive int or None.*0"), -1],
    "GradientHealth.log_every_n_steps": [0, -1, -2],
    "histogram_every_n_epochs": [0, -1],
    "per_layer": ["yes"],  # a flag, checked in Python too
    "explode_factor": [1.0, 0.5],
    "vanish_ratio": [-0.1, 1.0, 1.5],
    "vanish_floor": [-1.0],
    "history": [0],
    "min_history": [0, 1000, 200],
    "check_every_n_steps": [0],
    "layer_types": [
        ["NoSuchLayer"],
        Says(["NotAModule"], r"`layer_types`.*'Linear'.*NotAModule"),
        Says(["functional"], r"`layer_types`.*'functional'"),
    ],
    "saturation_threshold": [0.0, Says(1.5, r"`saturation_threshold`.*\(0.5, 1\).*1.5")],
    "expected": [Says((1.0, -1.0), r"`expected`.*low < high.*\(1.0, -1.0\)")],
    "check_batches": [Says(0, r"`check_batches`.*>= 1.*0")],
    "tolerance": [-1.0, Says(-0.1, r"`tolerance`.*>= 0.*-0.1")],
    "lr": [0.0, -1.0],
    "momentum": [-0.1, 1.0],
    "weight_decay": [-1.0],
    "label_smoothing": [-0.1, 1.0],
    "num_classes": [1],
    "in_channels": [0],
    "hidden_sizes": [[0], [16, -3]],
    "dropout": [-0.1, 1.0],
    "input_size": [0],
    "stages": [[], [2, 0]],
    "width": [0],
    "stem_channels": [0],
    "members": [[]],
    "checkpoints": [[]],
    "batch_size": [0],
    "val_size": [-1],
    "crop_padding": [-1],
    "train_subset": [0],
    "num_workers": [-1],
}

#: Options with no invalid value at construction, and why.
FREE_FORM: dict[str, str] = {
    "EarlyStopping.monitor": "any metric name; strict=True checks it against the logged metrics at the first check",
    "stopping_threshold": "any float (or None) is a meaningful threshold for the monitored metric",
    "divergence_threshold": "any float (or None) is a meaningful threshold for the monitored metric",
    "include": "name patterns: any string is a valid pattern (no match just selects nothing)",
    "exclude": "name patterns: any string is a valid pattern (no match just selects nothing)",
    "seed": "any integer is a valid seed",
    "batch_key": "an index or key into the user's batch, only known when a batch arrives",
    "map_location": "passed to torch.load, which accepts devices, strings, dicts and callables",
    "data_dir": "a path; a folder without the files raises DatasetNotFoundError (listing every place) at setup",
}


def _is_flag(parameter: inspect.Parameter) -> bool:
    """Booleans have no invalid value in Python (the CLI's jsonargparse rejects non-booleans, tested below)."""
    return str(parameter.annotation) in ("bool", "bool | None")


def _lookup(table: dict[str, Any], class_name: str, option: str) -> Any:
    return table.get(f"{class_name}.{option}", table.get(option))


def _cases() -> list[Any]:
    cases = []
    for class_name, cls in CLASSES.items():
        for parameter in constructor_options(cls):
            for entry in _lookup(INVALID, class_name, parameter.name) or []:
                value, pattern = (entry.value, entry.pattern) if isinstance(entry, Says) else (entry, None)
                name = f"{class_name}.{parameter.name}={value!r}"
                cases.append(pytest.param(class_name, parameter.name, value, pattern, id=name))
    return cases


def test_every_option_is_covered():
    assert len(CLASSES) == 18, sorted(CLASSES)
    missing = [
        f"{class_name}.{p.name}"
        for class_name, cls in CLASSES.items()
        for p in constructor_options(cls)
        if not _is_flag(p)
        and _lookup(INVALID, class_name, p.name) is None
        and _lookup(FREE_FORM, class_name, p.name) is None
    ]
    assert not missing, f"options without invalid values in INVALID or a reason in FREE_FORM: {missing}"


@pytest.mark.parametrize(("class_name", "option", "value", "pattern"), _cases())
def test_invalid_option_raises_value_error_naming_it(class_name, option, value, pattern):
    kwargs = {**REQUIRED.get(class_name, {}), option: value}
    with pytest.raises(ValueError) as error:
        CLASSES[class_name](**kwargs)
    message = str(error.value)
    assert f"`{option}`" in message, f"the message does not name `{option}`: {message}"
    assert pattern is None or re.search(pattern, message), f"the message does not match {pattern!r}: {message}"
    if value == []:
        return  # nothing to show: the message says the list must not be empty
    shown = [repr(value), str(value), f"{value:g}" if isinstance(value, float) else str(value)]
    shown += [repr(item) for item in value] if isinstance(value, list) else []  # the offending element
    assert any(text in message for text in shown), f"the message does not show the value given: {message}"


# ------------------------------------------------------------------------------------------------- CLI typos
@pytest.fixture
def _plain_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["lightning-tricks"])


BASE_ARGS = ["--model=MLPClassifier", "--data=FashionMNISTDataModule", "--trainer.accelerator=cpu"]


@pytest.mark.usefixtures("_plain_argv")
@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--model.hiden_sizes=[8]"], "hiden_sizes"),
        (["--model=MLPClasifier"], "MLPClasifier"),
        (["--model.optimizer=adamm"], "optimizer"),
        (["--data.batch_sise=8"], "batch_sise"),
        (["--data.augment=maybe"], "augment"),
        (["--trainer.max_epohs=3"], "max_epohs"),  # (a unique prefix such as max_epoch is argparse-accepted)
        (["--trainer.callbacks+=GradientClipping", "--trainer.callbacks.treshold=1"], "treshold"),
        (["--trainer.callbacks+=GradientClipping", "--trainer.callbacks.mode=nrom"], "mode"),
        (["--trainer.callbacks+=GradientClippin"], "GradientClippin"),
    ],
    ids=lambda item: item if isinstance(item, str) else None,
)
def test_cli_typo_exits_nonzero_naming_the_bad_key(args, named, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main([*BASE_ARGS, *args], run=False)
    assert exit_info.value.code not in (0, None)
    assert named in capsys.readouterr().err


@pytest.mark.usefixtures("_plain_argv")
def test_cli_typo_in_a_yaml_config_names_the_key(tmp_path, capsys):
    config = tmp_path / "typo.yaml"
    config.write_text("model:\n  class_path: MLPClassifier\n  init_args:\n    hidden_size: [8]\n")
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["--config", str(config), "--data=FashionMNISTDataModule"], run=False)
    assert exit_info.value.code not in (0, None)
    assert "hidden_size" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- wrong data
def _fit(model: models.Classifier, x: torch.Tensor, y: torch.Tensor) -> None:
    trainer = Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=4))


@pytest.mark.parametrize("model_name", ["MLPClassifier", "ResNetClassifier", "InceptionClassifier"])
def test_three_channel_batch_into_a_one_channel_model_is_named(model_name):
    model = getattr(models, model_name)(**({"hidden_sizes": [4]} if model_name == "MLPClassifier" else {}))
    x, y = torch.rand(4, 3, 28, 28), torch.randint(0, 10, (4,))
    with pytest.raises(ValueError, match=r"expects images of shape \[B, 1, H, W\] \(in_channels=1\).*\(4, 3, 28, 28\)"):
        _fit(model, x, y)


def test_mlp_input_size_mismatch_is_named():
    model = models.MLPClassifier(hidden_sizes=[4], in_channels=3)  # input_size left at 784 = 1 * 28 * 28
    with pytest.raises(ValueError, match=r"input_size=784.*2352 features.*in_channels \* H \* W"):
        _fit(model, torch.rand(4, 3, 28, 28), torch.randint(0, 10, (4,)))


def test_labels_beyond_num_classes_are_named():
    model = models.MLPClassifier(hidden_sizes=[4], num_classes=10)
    y = torch.tensor([0, 3, 11, 12])  # a 13-class dataset into a 10-class model
    with pytest.raises(ValueError, match=r"labels in \[0, 10\) \(num_classes=10\), but got labels from 0 to 12"):
        _fit(model, torch.rand(4, 1, 28, 28), y)


def test_labels_beyond_num_classes_in_a_later_batch_still_stop_the_run():
    """The range is checked on each epoch's first batch; later, on the CPU, cross_entropy itself refuses."""
    model = models.MLPClassifier(hidden_sizes=[4], num_classes=10)
    y = torch.tensor([0, 3, 1, 2, 0, 3, 12, 2])  # the bad label is in the second batch of 4
    trainer = Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    with pytest.raises(IndexError, match=r"Target 12 is out of bounds"):
        trainer.fit(model, DataLoader(TensorDataset(torch.rand(8, 1, 28, 28), y), batch_size=4))


def test_float_labels_are_named():
    model = models.MLPClassifier(hidden_sizes=[4])
    with pytest.raises(ValueError, match=r"int64 class labels, but got dtype torch\.float32"):
        _fit(model, torch.rand(4, 1, 28, 28), torch.zeros(4))
