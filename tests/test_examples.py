"""Smoke tests of the example experiments: each script runs end to end in ``--smoke`` mode on real Fashion-MNIST.

The scripts are imported and their ``main(argv)`` called in this process (no interpreter start-up per script). In
``--smoke`` mode every run is 1 epoch of 2 batches per stage, so the numbers are meaningless; the tests check the
plumbing: every variant runs, its TensorBoard run folder holds event files, ``hparams.yaml`` and ``variant.json``,
the values read back from the logger are the logged ones, and the markdown table lists every variant.
"""

from __future__ import annotations

import importlib
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(autouse=True)
def _examples_importable(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Put ``examples/`` on ``sys.path`` (the scripts import ``_common``) and restore torch's thread count."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _load(name: str) -> ModuleType:
    module = sys.modules.get(name)
    return importlib.reload(module) if module is not None else importlib.import_module(name)


def _smoke(name: str, tmp_path: Path, data_dir: Path, *extra: str, figures: tuple[str, ...] = ()) -> tuple[list, str]:
    argv = ["--smoke", "--accelerator", "cpu", "--data-dir", str(data_dir), "--log-dir", str(tmp_path), *extra]
    results = _load(name).main(argv)
    table = (tmp_path / name / "results.md").read_text()
    for figure in figures or (name,):  # drawn by `lightning-tricks report` at the end of the script
        png = tmp_path / "figures" / f"{figure}.png"
        assert png.read_bytes().startswith(b"\x89PNG"), png
        rows = (tmp_path / "figures" / f"{figure}.md").read_text()
        assert rows.startswith("| variant |") and len(rows.splitlines()) > 2, rows
    return results, table


def _check_runs(results: list, table: str, tmp_path: Path, experiment: str, variants: list[str]) -> None:
    assert [r.variant for r in results] == variants
    for result in results:
        run_dir = tmp_path / experiment / result.variant
        assert Path(result.log_dir) == run_dir
        assert list(run_dir.glob("events.out.tfevents.*")), f"no TensorBoard events in {run_dir}"
        assert (run_dir / "hparams.yaml").is_file()
        settings = json.loads((run_dir / "variant.json").read_text())
        assert settings["experiment"] == experiment and settings["variant"] == result.variant
        # The table numbers are the logged values (one train epoch, one validation, one test).
        assert result.epochs == 1
        assert len(result.curve("val/acc")) == 1 and result.best_val_acc == result.curve("val/acc")[0]
        assert 0.0 <= result.test_acc <= 1.0
        assert result.test_acc == result.curve("test/acc")[-1]
        assert f"| {result.variant} |" in table


def test_dropout(tmp_path: Path, fashion_mnist_dir: Path) -> None:
    results, table = _smoke("dropout", tmp_path, fashion_mnist_dir, "--hidden", "32")
    _check_runs(results, table, tmp_path, "dropout", ["dropout_0", "dropout_0.2", "dropout_0.5", "dropout_0.8"])
    assert json.loads((tmp_path / "dropout" / "dropout_0.5" / "variant.json").read_text())["settings"]["dropout"] == 0.5
    assert "| val/acc by epoch | 1 |" in table


def test_initialization(tmp_path: Path, fashion_mnist_dir: Path) -> None:
    results, table = _smoke("initialization", tmp_path, fashion_mnist_dir, "--depth", "6", "--width", "64")
    schemes = ["standard_normal", "uniform", "xavier_normal", "kaiming_normal", "orthogonal", "lsuv"]
    _check_runs(results, table, tmp_path, "initialization", schemes)
    std = {r.variant: r.extra for r in results}
    # Read back from ActivationStats' logged values at step 0: N(0, 1) blows up, LSUV keeps unit scale.
    assert std["standard_normal"]["std_6"] > 100 * std["standard_normal"]["std_1"]
    assert std["lsuv"]["std_6"] == pytest.approx(1.0, rel=0.25)
    assert std["uniform"]["std_6"] < std["uniform"]["std_1"] / 10
    assert "| layer 6 | logits |" in table


def test_normalization(tmp_path: Path, fashion_mnist_dir: Path) -> None:
    results, table = _smoke("normalization", tmp_path, fashion_mnist_dir, "--depth", "2", "--width", "32")
    _check_runs(results, table, tmp_path, "normalization", ["norm_none", "norm_batch", "norm_layer", "norm_weight"])
    hparams = (tmp_path / "normalization" / "norm_layer" / "hparams.yaml").read_text()
    assert "norm: layer" in hparams


def test_optimizers(tmp_path: Path, fashion_mnist_dir: Path) -> None:
    results, table = _smoke("optimizers", tmp_path, fashion_mnist_dir, "--hidden", "32")
    _check_runs(results, table, tmp_path, "optimizers", ["sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam"])
    assert "optimizer: adagrad" in (tmp_path / "optimizers" / "adagrad" / "hparams.yaml").read_text()


def test_clipping_lr_decay(tmp_path: Path, fashion_mnist_dir: Path) -> None:
    results, table = _smoke(
        "clipping_lr_decay", tmp_path, fashion_mnist_dir, "--clip-depth", "2", figures=("clipping", "lr_decay")
    )
    names = ["no_clip", "clip_norm_1", "clip_agc_0.02", "lr_constant", "lr_exp_0.98", "lr_exp_0.8", "lr_cosine"]
    _check_runs(results, table, tmp_path, "clipping_lr_decay", names)
    by_name = {r.variant: r for r in results}
    assert {"grad_norm/total", "grad_clip/clipped_fraction"} <= set(by_name["clip_norm_1"].history)
    assert "grad_clip/clipped_fraction" not in by_name["no_clip"].history
    assert "lr-SGD" in by_name["lr_cosine"].history


def test_overfitting(tmp_path: Path, fashion_mnist_dir: Path) -> None:
    results, table = _smoke("overfitting", tmp_path, fashion_mnist_dir, "--members", "2")
    _check_runs(results, table, tmp_path, "overfitting", ["baseline", "early_stopping", "weight_decay_1", "ema_0.98"])
    assert all(r.model is None for r in results)  # the kept weights are freed
    ensemble_dir = tmp_path / "overfitting" / "ensemble_2"
    assert list(ensemble_dir.glob("events.out.tfevents.*"))
    members = json.loads((ensemble_dir / "variant.json").read_text())["settings"]["members"]
    assert [Path(m).name for m in members] == ["baseline", "ensemble_member2"]
    line = next(row for row in table.splitlines() if row.startswith("| ensemble of 2"))
    test_acc = float(line.split("|")[6])  # variant, train loss, train acc, val acc, gap, test acc
    assert 0.0 <= test_acc <= 1.0 and not math.isnan(test_acc)
