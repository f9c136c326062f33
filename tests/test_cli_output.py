"""What a CLI user sees: GPU configs that stop at once on a CPU, one checkpoint file per run, quiet output."""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from lightning_tricks import _quiet
from lightning_tricks.cli import cli_main, progress_bar_off_without_terminal

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "examples" / "configs"


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["lightning-tricks"])


def _small(name: str, tmp_path: Path, data_dir: Path, **trainer: object) -> Path:
    """The shipped config ``name`` cut to 2 steps of 8 images, logging under ``tmp_path``."""
    config = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    small = {"max_epochs": 1, "limit_train_batches": 2, "limit_val_batches": 1, "limit_test_batches": 1,
             "enable_model_summary": False, "default_root_dir": str(tmp_path)}  # fmt: skip
    config["trainer"].update({**small, **trainer})
    config["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp_path / "logs")
    config["data"]["init_args"].update(data_dir=str(data_dir), batch_size=8, train_subset=64)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("name", ["resnet", "inception"])
def test_a_gpu_config_on_the_cpu_stops_before_any_data_and_names_the_cpu_recipe(name, tmp_path, fashion_mnist_dir):
    config = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    alternative = config["cpu_alternative"]
    assert (REPO / alternative).is_file(), f"{name}.yaml points CPU users to {alternative}, which must exist"
    path = _small(name, tmp_path, fashion_mnist_dir)
    expected = rf"{path}.* is meant for a GPU .*--config {alternative}`.*--cpu_alternative null"
    with pytest.raises(RuntimeError, match=expected):
        cli_main(["fit", "--config", str(path), "--trainer.accelerator", "cpu"])
    assert not (tmp_path / "logs").exists(), "stopped before the run started"


def test_every_cpu_config_is_free_to_run_on_the_cpu():
    for path in CONFIGS.glob("*.yaml"):
        config = yaml.safe_load(path.read_text())
        if config.get("cpu_alternative") is None:
            assert config["trainer"].get("precision") in (None, "32-true"), f"{path.name}: fp32 on the CPU"


def test_a_run_keeps_one_checkpoint_file_and_a_last_link_and_prints_one_line_per_epoch(
    tmp_path, fashion_mnist_dir, capsys
):
    path = _small("small_resnet", tmp_path, fashion_mnist_dir, max_epochs=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli = cli_main(["fit", "--config", str(path)])
    folder = tmp_path / "logs" / "small_resnet" / "version_0" / "checkpoints"
    files = sorted(p.name for p in folder.iterdir())
    assert files == ["epoch=1-step=4.ckpt", "last.ckpt"], files
    assert (folder / "last.ckpt").is_symlink() and (folder / "last.ckpt").resolve().name == "epoch=1-step=4.ckpt"
    printed = capsys.readouterr()
    assert printed.out.count("epoch 1/2 (") == 1 and printed.out.count("epoch 2/2 (") == 1, printed.out
    assert "val/acc" in printed.out and "test accuracy:" in printed.out
    assert "Epoch 0:" not in printed.err + printed.out, "no progress bar in captured (non-terminal) output"
    assert not cli.trainer.progress_bar_callback
    assert not [w for w in caught if "LeafSpec" in str(w.message)], "Lightning's own deprecated-API call, filtered"
    assert not [w for w in caught if "ckpt_path" in str(w.message)], "one ModelCheckpoint: 'best' is not ambiguous"


def test_first_ckpt_path_last_starts_fresh_without_lightnings_hint(tmp_path, fashion_mnist_dir, caplog):
    path = _small("small_resnet", tmp_path, fashion_mnist_dir)
    with caplog.at_level(logging.INFO), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli = cli_main(["fit", "--config", str(path), "--ckpt_path", "last", "--test_after_fit", "false"])
    assert cli.trainer.global_step == 2
    assert "no checkpoint yet" in caplog.text
    assert not [w for w in caught if "HINT" in str(w.message) or "save_last" in str(w.message)]


def test_litlogger_tip_is_dropped_and_other_messages_kept(caplog):
    _quiet.silence_known_noise()
    _quiet.silence_known_noise()  # twice: still one filter
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    assert sum(isinstance(f, _quiet._DropMessage) for f in logger.filters) == 1
    with caplog.at_level(logging.INFO, logger=logger.name):
        logger.info("💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger](...)")
        logger.info("GPU available: False, used: False")
    assert "litlogger" not in caplog.text and "GPU available" in caplog.text


def test_progress_bar_is_left_alone_when_asked_for_or_on_a_terminal(monkeypatch):
    from jsonargparse import Namespace

    monkeypatch.setattr(_quiet, "is_terminal", lambda stream=None: False)
    asked = Namespace(trainer=Namespace(enable_progress_bar=True, callbacks=None))
    assert not progress_bar_off_without_terminal(asked) and asked.trainer.enable_progress_bar is True
    bar = [Namespace(class_path="lightning.pytorch.callbacks.TQDMProgressBar")]
    custom = Namespace(trainer=Namespace(enable_progress_bar=None, callbacks=bar))
    assert not progress_bar_off_without_terminal(custom) and custom.trainer.enable_progress_bar is None
    unset = Namespace(trainer=Namespace(enable_progress_bar=None, callbacks=None))
    assert progress_bar_off_without_terminal(unset) and unset.trainer.enable_progress_bar is False
    monkeypatch.setattr(_quiet, "is_terminal", lambda stream=None: True)
    tty = Namespace(trainer=Namespace(enable_progress_bar=None, callbacks=None))
    assert not progress_bar_off_without_terminal(tty) and tty.trainer.enable_progress_bar is None


def test_sigterm_checkpoint_saves_the_full_state_without_lightnings_weights_only_notice(
    tmp_path, fashion_mnist_dir, caplog
):
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from lightning_tricks.cli import SigtermCheckpoint

    cli = cli_main(["fit", "--config", str(_small("small_resnet", tmp_path, fashion_mnist_dir)), "--test_after_fit",
                    "false"])  # fmt: skip
    with caplog.at_level(logging.INFO):
        SigtermCheckpoint().on_exception(cli.trainer, cli.model, SIGTERMException())
    assert "weights_only" not in caplog.text and "Received SIGTERM: saved a checkpoint" in caplog.text
    saved = torch.load(SigtermCheckpoint.checkpoint_path(cli.trainer), weights_only=False)
    assert "optimizer_states" in saved and "callbacks" in saved


def test_the_main_job_shows_the_tricks_with_the_monitors_before_clipping():
    """``make train`` runs small_resnet.yaml: its TensorBoard run must show the package's callbacks at work."""
    assert "examples/configs/small_resnet.yaml" in (REPO / "Makefile").read_text()
    config = yaml.safe_load((CONFIGS / "small_resnet.yaml").read_text())
    names = [c["class_path"].rsplit(".", 1)[1] for c in config["trainer"]["callbacks"]]
    for needed in ("WeightNormMonitor", "GradientHealth", "GradientClipping", "LRDecay", "EMA"):
        assert needed in names, f"the main job lacks {needed}"
    assert names.index("WeightNormMonitor") < names.index("GradientClipping")
    assert names.index("GradientHealth") < names.index("GradientClipping")
    assert names.count("ModelCheckpoint") == 1


def test_the_test_after_fit_scores_the_weights_a_later_test_command_scores(tmp_path, fashion_mnist_dir):
    """With EMA, reloading the checkpoint inside the fit's Trainer would restore the raw weights (Lightning's
    ``WeightAveraging.on_load_checkpoint``); a fresh ``test`` scores the averaged ones. Both must agree."""
    path = str(_small("small_resnet", tmp_path, fashion_mnist_dir, max_epochs=2, limit_test_batches=4))
    fitted = cli_main(["fit", "--config", path])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tested = cli_main(["test", "--config", path, "--ckpt_path", "last"])
    messages = [str(w.message) for w in caught]
    # Neither "callbacks used to create the checkpoint need to be provided" (RNGStateCheckpoint, ...) nor
    # WeightAveraging's "loading a checkpoint outside the 'fit' stage": both are noise for a plain `test`.
    assert not [m for m in messages if "callbacks used to create the checkpoint" in m or "outside the 'fit'" in m]
    after_fit = float(fitted.trainer.callback_metrics["test/loss"])
    assert float(tested.trainer.callback_metrics["test/loss"]) == pytest.approx(after_fit, rel=1e-5)
