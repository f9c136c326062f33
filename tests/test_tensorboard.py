"""What a person sees: a real TensorBoard server on the runs (HPARAMS columns, custom-scalar layout, scalar tags),
and ``lightning-tricks report`` drawing them (PNG written, markdown table equal to the logged values).

Three tiny runs of one experiment on real Fashion-MNIST: ``plain/seed0`` and ``plain/seed1`` (no callbacks, fp32)
and ``tricks`` (GradientClipping, EMA and LRDecay, bf16-mixed), so that callbacks, a trainer setting and the seed
differ between runs.
"""

from __future__ import annotations

import math
import statistics
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers.tensorboard_server import tensorboard_server
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

from lightning_tricks.callbacks import EMA, GradientClipping, LRDecay
from lightning_tricks.cli import main as cli_entry_point
from lightning_tricks.data import FashionMNISTDataModule
from lightning_tricks.models import MLPClassifier
from lightning_tricks.models.classifier import HPARAMS_METRICS

RUNS = {
    "plain/seed0": (0, "32-true", list),
    "plain/seed1": (1, "32-true", list),
    "tricks": (
        0,
        "bf16-mixed",
        lambda: [GradientClipping(mode="agc", threshold=0.02), EMA(decay=0.9), LRDecay(gamma=0.5)],
    ),
}


class _RecordValAcc(Callback):
    """Keeps each epoch's ``val/acc`` as Lightning computed it: the reference the report's table is checked against."""

    def __init__(self) -> None:
        self.val_acc: list[float] = []

    def on_validation_end(self, trainer: Trainer, pl_module: Any) -> None:
        self.val_acc.append(float(trainer.callback_metrics["val/acc"]))


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory, fashion_mnist_dir: Path) -> dict[str, Any]:
    logs = tmp_path_factory.mktemp("tb") / "logs"
    logged: dict[str, dict[str, Any]] = {}
    for version, (seed, precision, callbacks) in RUNS.items():
        seed_everything(seed, verbose=False)
        recorder = _RecordValAcc()
        trainer = Trainer(
            accelerator="cpu",
            devices=1,
            precision=precision,
            max_epochs=2,
            limit_train_batches=3,
            limit_val_batches=1,
            limit_test_batches=1,
            log_every_n_steps=1,
            logger=TensorBoardLogger(logs, name="exp", version=version, default_hp_metric=False),
            # A checkpoint folder inside each run's own folder: a path that differs between runs by construction.
            callbacks=[*callbacks(), recorder, ModelCheckpoint(monitor="val/acc", mode="max")],
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
        )
        data = FashionMNISTDataModule(
            data_dir=str(fashion_mnist_dir), batch_size=16, val_size=32, train_subset=64, seed=seed
        )
        model = MLPClassifier(hidden_sizes=[16], lr=0.01)
        trainer.fit(model, datamodule=data)
        trainer.test(model, datamodule=data, verbose=False)
        logged[version] = {
            "val/acc": recorder.val_acc,
            "test/acc": float(trainer.callback_metrics["test/acc"]),
        }
    return {"logs": logs, "logged": logged}


def test_tensorboard_shows_metrics_first_and_hparams_columns_that_tell_runs_apart(experiment):
    with tensorboard_server(experiment["logs"]) as server:
        tags = server.wait_for(
            "/data/plugin/scalars/tags",
            lambda t: all(f"exp/{run}" in t and "test/acc" in t[f"exp/{run}"] for run in RUNS),
        )
        assert {"train/loss_epoch", "val/acc", "val/loss", "test/acc"} <= set(tags["exp/tricks"])

        # CUSTOM SCALARS opens on the metrics family: loss, accuracy, learning rate.
        layout = server.get("/data/plugin/custom_scalars/layout")
        first = layout["category"][0]
        assert first["title"] == "metrics", [c["title"] for c in layout["category"]]
        charts = {chart["title"]: chart["multiline"]["tag"] for chart in first["chart"]}
        assert charts["loss: train (epoch mean), val, test"] == ["^train/loss_epoch$", "^val/loss$", "^test/loss$"]
        assert "^val/acc$" in charts["accuracy: train (epoch mean), val, test"]
        assert charts["learning rate"] == ["^lr-", "^lr/"]

        # HPARAMS: callbacks and trainer settings are columns; those that differ come first; metrics are the real ones.
        experiment_info = server.post("/data/plugin/hparams/experiment", {"experimentName": "", "includeMetrics": True})
        infos = {info["name"]: info for info in experiment_info["hparamInfos"]}
        expected = {"run", "callbacks", "callback/GradientClipping", "callback/EMA", "callback/LRDecay"}
        expected |= {"trainer/precision", "trainer/devices", "trainer/strategy", "trainer/max_epochs", "batch_size"}
        assert expected <= set(infos), sorted(infos)
        differs = [info["name"] for info in experiment_info["hparamInfos"] if info.get("differs")]
        assert {"run", "callbacks", "callback/EMA", "trainer/precision", "seed"} <= set(differs), differs
        assert not {"optimizer", "hidden_sizes", "trainer/devices", "batch_size"} & set(differs), differs
        assert "callback/ModelCheckpoint" in infos and "callback/ModelCheckpoint" not in differs, "no per-run path"
        order = [info["name"] for info in experiment_info["hparamInfos"]]
        assert order[: len(differs)] == differs, "the columns that differ are listed (and shown) first"
        assert [m["name"]["tag"] for m in experiment_info["metricInfos"]] == list(HPARAMS_METRICS)

        body = {
            "experimentName": "",
            "allowedStatuses": ["STATUS_SUCCESS", "STATUS_UNKNOWN", "STATUS_RUNNING", "STATUS_FAILURE"],
            "colParams": [{"hparam": "run"}, {"metric": {"tag": "val/acc", "group": ""}}],
            "startIndex": 0,
            "sliceSize": 10,
            "includeMetrics": True,
        }
        groups = {g["name"]: g for g in server.post("/data/plugin/hparams/session_groups", body)["sessionGroups"]}
        assert set(groups) == {f"exp/{run}" for run in RUNS}, sorted(groups)
        tricks = groups["exp/tricks"]["hparams"]
        assert tricks["run"] == "exp/tricks", "the variant named in full"
        assert tricks["callbacks"] == "GradientClipping, EMA, LRDecay, _RecordValAcc, ModelCheckpoint"
        assert tricks["callback/ModelCheckpoint"].startswith("ModelCheckpoint(monitor=val/acc, mode=max")
        assert tricks["callback/GradientClipping"] == "GradientClipping(mode=agc, threshold=0.02)"
        assert tricks["callback/EMA"] == "EMA(decay=0.9)"
        assert tricks["callback/LRDecay"] == "LRDecay(gamma=0.5)"
        assert tricks["trainer/precision"] == "bf16-mixed" and tricks["trainer/strategy"] == "SingleDevice"
        assert tricks["trainer/devices"] == 1 and tricks["trainer/max_epochs"] == 2 and tricks["batch_size"] == 16
        assert tricks["channels_last"] == "false", "a boolean reads as a word, not 0.0000"
        assert tricks["hidden_sizes"] == "[16]"
        plain = groups["exp/plain/seed1"]["hparams"]
        assert plain["trainer/precision"] == "32-true" and "callback/EMA" not in plain
        val_acc = {v["name"]["tag"]: v["value"] for v in groups["exp/tricks"]["metricValues"]}["val/acc"]
        assert val_acc == pytest.approx(experiment["logged"]["tricks"]["val/acc"][-1])


def _row(table: str, variant: str) -> list[str]:
    lines = [line for line in table.splitlines() if line.startswith(f"| {variant} |")]
    assert len(lines) == 1, table
    return [cell.strip() for cell in lines[0].strip("|").split("|")]


def test_report_writes_a_png_and_a_table_of_the_logged_values(experiment, tmp_path, monkeypatch, capsys):
    out = tmp_path / "figures"
    argv = ["lightning-tricks", "report", str(experiment["logs"] / "exp"), "--output", str(out), "--note", "tiny"]
    monkeypatch.setattr(sys, "argv", argv)
    cli_entry_point()
    assert str(out / "exp.png") in capsys.readouterr().out

    png = (out / "exp.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000, len(png)

    table = (out / "exp.md").read_text()
    header = [cell.strip() for cell in table.splitlines()[0].strip("|").split("|")]
    assert header[0] == "variant" and "last val/acc" in header and "last test/acc" in header
    assert header[-2:] == ["best val/acc (epoch)", "seeds"]
    logged = experiment["logged"]
    tricks = dict(zip(header, _row(table, "tricks"), strict=True))
    assert tricks["last val/acc"] == f"{logged['tricks']['val/acc'][-1]:.3f}"
    assert tricks["last test/acc"] == f"{logged['tricks']['test/acc']:.3f}"
    best = max(logged["tricks"]["val/acc"])
    assert tricks["best val/acc (epoch)"] == f"{best:.3f} ({logged['tricks']['val/acc'].index(best) + 1})"
    assert tricks["seeds"] == "1"
    plain = dict(zip(header, _row(table, "plain"), strict=True))
    finals = [logged[f"plain/seed{k}"]["test/acc"] for k in (0, 1)]
    assert plain["last test/acc"] == f"{statistics.fmean(finals):.3f} ± {statistics.stdev(finals):.3f}"
    assert plain["seeds"] == "2"
    assert all(math.isfinite(float(cell.split()[0])) for cell in _row(table, "plain")[1:])


def test_report_refuses_an_unknown_tag_and_a_folder_without_runs(experiment, tmp_path, monkeypatch, capsys):
    from lightning_tricks.report import main

    with pytest.raises(SystemExit):
        main([str(experiment["logs"] / "exp"), "--output", str(tmp_path), "--tags", "val/accuracy"])
    assert "['val/accuracy'] logged by no run" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(experiment["logs"] / "exp"), "--output", str(tmp_path), "--profile", "val/acc"])
    assert "needs a group for the layer" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(experiment["logs"] / "exp"), "--output", str(tmp_path), "--profile", r"activation/net\.(\d+)/std"])
    assert "matches no tag logged under" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit):
        main([str(tmp_path / "empty"), "--output", str(tmp_path)])
    assert "holds no TensorBoard event file with scalars" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.png"))


def test_the_summary_run_never_goes_into_the_working_directory(tmp_path, monkeypatch):
    """Lightning's default logger saves under the working directory (a project folder): no file there, no search."""
    from lightning_tricks._tensorboard import summary_folders

    monkeypatch.chdir(tmp_path)

    def folders(save_dir: str, name: str) -> list[Path]:
        return [Path(folder) for folder in summary_folders(TensorBoardLogger(save_dir, name=name))]

    assert folders(".", "lightning_logs") == [Path("lightning_logs")]
    assert folders(".", "") == []
    assert folders("logs", "mlp") == [Path("logs"), Path("logs/mlp")]


def test_the_band_is_the_spread_between_seeds_of_per_epoch_means():
    from lightning_tricks.report import Run, _band

    epochs = [(0, 0.0), (1, 0.0), (2, 1.0), (3, 1.0)]  # steps 0-1 in epoch 0, steps 2-3 in epoch 1
    seed0 = Run("v", "seed0", Path("a"), 0.0, {"epoch": epochs, "loss": [(0, 4.0), (1, 2.0), (2, 1.0), (3, 1.0)]})
    seed1 = Run("v", "seed1", Path("b"), 1.0, {"epoch": epochs, "loss": [(0, 2.0), (1, 2.0), (2, 3.0), (3, math.nan)]})
    xs, means, stds = _band([seed0, seed1], "loss", "epoch")
    assert xs == [1.0, 2.0]
    assert means[0] == pytest.approx(2.5) and stds[0] == pytest.approx(statistics.stdev([3.0, 2.0]))
    assert math.isnan(means[1]), "a non-finite value is never averaged away"
    assert _band([seed0], "loss", "step") == ([0.0, 1.0, 2.0, 3.0], [4.0, 2.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0])
