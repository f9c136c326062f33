"""The ``lightning-tricks`` CLI: fit from a YAML config, TensorBoard event files with hparams, a real server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers.tensorboard_server import tensorboard_server
from lightning.pytorch import Trainer
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_tricks.cli import cli_main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    """LightningCLI warns when given ``args`` while ``sys.argv`` holds pytest's own arguments."""
    monkeypatch.setattr(sys, "argv", ["lightning-tricks"])


def _tiny_config(tmp_path: Path, data_dir: Path) -> Path:
    """The shipped MLP config shrunk to seconds: a small subset, one short epoch, logs under tmp_path."""
    config = yaml.safe_load((REPO / "examples" / "configs" / "mlp.yaml").read_text())
    config["trainer"].update(
        max_epochs=2,
        limit_train_batches=4,
        limit_val_batches=2,
        limit_test_batches=2,
        log_every_n_steps=1,
        enable_progress_bar=False,
        default_root_dir=str(tmp_path),
    )
    config["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp_path / "logs")
    config["model"]["init_args"]["hidden_sizes"] = [32]
    config["data"]["init_args"].update(data_dir=str(data_dir), batch_size=64, train_subset=512)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _event_file(log_dir: Path) -> Path:
    files = sorted(log_dir.rglob("events.out.tfevents.*"))
    assert files, f"no TensorBoard event file under {log_dir}"
    return files[0]


def test_fit_from_yaml_writes_tensorboard_scalars_hparams_and_config(tmp_path, fashion_mnist_dir, capsys):
    config = _tiny_config(tmp_path, fashion_mnist_dir)
    cli_main(["fit", "--config", str(config)])

    run_dir = tmp_path / "logs" / "mlp" / "version_0"
    assert (run_dir / "config.yaml").exists(), "the resolved config is saved beside the TensorBoard run"
    assert (run_dir / "hparams.yaml").exists()

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    for key in ("train/loss_step", "train/acc_step", "val/loss", "val/acc", "test/acc", "test/loss"):
        assert key in scalars, f"{key} missing from {sorted(scalars)}"
    # The hparams plugin writes its session summaries as tensors; their presence is what fills the HPARAMS tab.
    hparam_tags = set(events.Tags()["tensors"]) | set(events.summary_metadata)
    assert any("_hparams_" in tag for tag in hparam_tags), sorted(hparam_tags)

    val_acc = events.Scalars("val/acc")
    assert len(val_acc) == 2, "one validation point per epoch"
    assert all(0.0 <= point.value <= 1.0 for point in val_acc)

    printed = capsys.readouterr().out
    assert "test accuracy:" in printed
    assert "tensorboard --logdir" in printed


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "examples" / "configs").glob("*.yaml")))
def test_every_shipped_config_fits_and_tests_unchanged_but_for_its_size(name, tmp_path, fashion_mnist_dir):
    """Each config in examples/configs, with its own model, optimizer, precision and data options, runs a few steps.

    The GPU configs (bf16-mixed, channels_last, on-device data) would otherwise only ever run on a GPU. Only the
    amount of work and the output folders change here; the accelerator stays ``auto``, which is the CPU on CI.
    """
    config = yaml.safe_load((REPO / "examples" / "configs" / f"{name}.yaml").read_text())
    expected = config["model"]["init_args"]
    config["trainer"].update(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        limit_test_batches=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )
    config["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp_path / "logs")
    config["data"]["init_args"].update(data_dir=str(fashion_mnist_dir), batch_size=8, train_subset=64)
    config["cpu_alternative"] = None  # a GPU config would stop at once on the CPU (see test_cli_output.py)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))

    cli = cli_main(["fit", "--config", str(path)])

    assert type(cli.model).__name__ == config["model"]["class_path"].rsplit(".", 1)[1]
    assert {k: cli.model.hparams[k] for k in expected} == expected
    assert cli.trainer.global_step == 2
    assert cli.trainer.num_val_batches == [1] and cli.trainer.num_test_batches == [1], "`1` is one batch, not 100%"
    assert 0.0 <= float(cli.trainer.callback_metrics["test/acc"]) <= 1.0
    assert (tmp_path / "logs" / name / "version_0" / "checkpoints" / "last.ckpt").exists()


@pytest.mark.parametrize(("given", "expected"), [("1", 1), ("3", 3), ("1.0", 1.0), ("0.25", 0.25)])
def test_int_or_float_trainer_options_keep_an_integer_an_integer(given, expected, tmp_path, fashion_mnist_dir):
    """Plain LightningCLI 2.6 reads ``--trainer.limit_val_batches 1`` as ``1.0``: all batches instead of one."""
    options = (
        "limit_train_batches",
        "limit_val_batches",
        "limit_test_batches",
        "val_check_interval",
        "overfit_batches",
    )
    args = [f"--trainer.{name}={given}" for name in options]
    cli = cli_main(["--config", str(_tiny_config(tmp_path, fashion_mnist_dir)), *args], run=False)
    for name in options:
        value = cli.config["trainer"][name]
        assert value == expected and type(value) is type(expected), (name, value)
    assert type(cli.trainer.limit_val_batches) is type(expected)


def test_prefer_int_over_float_reorders_only_int_float_unions():
    from lightning.pytorch.cli import LightningArgumentParser

    from lightning_tricks.cli import prefer_int_over_float

    parser = LightningArgumentParser()
    parser.add_lightning_class_args(Trainer, "trainer")
    changed = prefer_int_over_float(parser)
    limits = {f"trainer.limit_{stage}_batches" for stage in ("train", "val", "test", "predict")}
    assert limits <= set(changed)
    assert "trainer.overfit_batches" not in changed, "already int-first (Union[int, float] without None)"
    assert "trainer.max_epochs" not in changed and "trainer.devices" not in changed
    assert parser.parse_args(["--trainer.limit_val_batches=1"]).trainer.limit_val_batches == 1
    assert isinstance(parser.parse_args(["--trainer.limit_val_batches=1"]).trainer.limit_val_batches, int)
    assert prefer_int_over_float(parser) == [], "a second call finds nothing left to reorder"


def test_ckpt_path_last_finds_the_previous_runs_checkpoint_in_its_version_folder(tmp_path, fashion_mnist_dir):
    """Lightning alone looks for ``last`` in the new run's (empty) version folder and silently starts over."""
    config = str(_tiny_config(tmp_path, fashion_mnist_dir))
    cli_main(["fit", "--config", config, "--test_after_fit", "false"])
    last = tmp_path / "logs" / "mlp" / "version_0" / "checkpoints" / "last.ckpt"
    assert last.exists()

    tested = cli_main(["test", "--config", config, "--ckpt_path", "last"])
    assert tested.trainer.ckpt_path == str(last)
    resumed = cli_main(["fit", "--config", config, "--ckpt_path", "last", "--test_after_fit", "false"])
    assert resumed.trainer.ckpt_path == str(last)
    assert resumed.trainer.global_step == 2 * 4, "both epochs restored, none trained again"
    with pytest.raises(ValueError, match="onecycle schedule spans 8 optimizer steps, but this run will take 12"):
        cli_main(["fit", "--config", config, "--ckpt_path", "last", "--trainer.max_epochs", "3"])


def test_ckpt_path_last_without_any_checkpoint_refuses_to_evaluate_untrained_weights(tmp_path, fashion_mnist_dir):
    config = str(_tiny_config(tmp_path, fashion_mnist_dir))
    with pytest.raises(FileNotFoundError, match=r"no checkpoint matches .*mlp/\*/checkpoints/last\*\.ckpt"):
        cli_main(["test", "--config", config, "--ckpt_path", "last"])


def test_ckpt_path_last_with_no_checkpoint_callback_refuses_to_test(tmp_path, fashion_mnist_dir):
    args = ["test", "--model", "MLPClassifier", "--data", "FashionMNISTDataModule", "--ckpt_path", "last"]
    args += [f"--data.data_dir={fashion_mnist_dir}", f"--trainer.default_root_dir={tmp_path}"]
    args += ["--trainer.enable_checkpointing=false", f"--trainer.logger.init_args.save_dir={tmp_path}"]
    with pytest.raises(FileNotFoundError, match=r"no checkpoint callback is set"):
        cli_main(args)


def test_last_checkpoint_places_keep_remote_folders_whole(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint, OnExceptionCheckpoint
    from lightning.pytorch.loggers import TensorBoardLogger

    from lightning_tricks.cli import last_checkpoint_places

    remote, default = ModelCheckpoint(dirpath="memory://bucket/run1"), ModelCheckpoint(monitor="val/acc")
    callbacks = [remote, default, OnExceptionCheckpoint(tmp_path)]
    trainer = Trainer(default_root_dir=tmp_path, logger=TensorBoardLogger(tmp_path / "logs", name="mlp"),
                      callbacks=callbacks)  # fmt: skip
    assert last_checkpoint_places(trainer) == [
        ("memory://bucket/run1", "last*.ckpt"),  # a Path would make it "memory:/bucket/run1", a local folder
        (str(tmp_path / "logs" / "mlp"), "*/checkpoints/last*.ckpt"),
        (str(tmp_path), "on_exception.ckpt"),
    ]


def test_cli_adds_package_callbacks_by_class_name(tmp_path, fashion_mnist_dir):
    config = _tiny_config(tmp_path, fashion_mnist_dir)
    cli = cli_main(
        [
            "--config",
            str(config),
            "--trainer.callbacks+=GradientClipping",
            "--trainer.callbacks.mode=value",
            "--trainer.callbacks.threshold=0.5",
            "--trainer.callbacks+=LRDecay",
            "--trainer.callbacks.gamma=0.5",
        ],
        run=False,
    )
    names = [type(c).__name__ for c in cli.trainer.callbacks]
    assert "GradientClipping" in names and "LRDecay" in names
    clipping = next(c for c in cli.trainer.callbacks if type(c).__name__ == "GradientClipping")
    assert clipping.mode == "value" and clipping.threshold == 0.5


def test_cli_typo_gives_jsonargparse_error(tmp_path, fashion_mnist_dir, capsys):
    config = _tiny_config(tmp_path, fashion_mnist_dir)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["--config", str(config), "--model.hiden_sizes", "[8]"], run=False)
    assert exit_info.value.code != 0
    assert "hiden_sizes" in capsys.readouterr().err


def test_console_script_help_lists_subcommands():
    result = subprocess.run(
        [sys.executable, "-m", "lightning_tricks.cli", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    for subcommand in ("fit", "validate", "test", "predict"):
        assert subcommand in result.stdout
    # main() lets LightningCLI read sys.argv; passing it as `args` too made LightningCLI warn on every command.
    assert "args parameter is intended" not in result.stderr, result.stderr


def test_tensorboard_server_lists_the_runs_scalars(tmp_path, fashion_mnist_dir):
    config = _tiny_config(tmp_path, fashion_mnist_dir)
    cli_main(["fit", "--config", str(config), "--test_after_fit", "false"])
    with tensorboard_server(tmp_path / "logs") as server:
        tags = server.wait_for(
            "/data/plugin/scalars/tags", lambda tags: any("val/acc" in run_tags for run_tags in tags.values())
        )
        assert "mlp/version_0" in tags, f"runs listed: {sorted(tags)}"
        assert {"val/acc", "val/loss", "train/loss_step"} <= set(tags["mlp/version_0"])
        points = server.get("/data/plugin/scalars/scalars?run=mlp%2Fversion_0&tag=val%2Facc")
        assert len(points) == 2 and all(0.0 <= value <= 1.0 for _, _, value in points)


def test_unwritable_log_dir_fails_at_start_with_a_clear_message(tmp_path, fashion_mnist_dir):
    config = _tiny_config(tmp_path, fashion_mnist_dir)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the log folder should go")  # root can write anywhere, but not under a file
    with pytest.raises(OSError, match=r"not-a-folder.*--trainer.logger.init_args.save_dir") as error:
        cli_main(["fit", "--config", str(config), "--trainer.logger.init_args.save_dir", str(blocker / "logs")])
    assert "log directory" in str(error.value)
    assert not list(tmp_path.rglob("*.ckpt")), "nothing was trained before the failure"
