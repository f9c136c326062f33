"""The compatibility matrix: every callback x every setting (see ``_compat_matrix.py``), the stack, DDP, its page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from _compat_matrix import (
    SETTINGS,
    TABLE_PAGE,
    cells,
    fit,
    page_with_table,
    run_cell,
    run_ddp_stack,
    run_stack,
)
from helpers.third_party import Validated
from lightning.fabric.plugins.environments.lightning import find_free_network_port
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything

from lightning_tricks.callbacks import EMA, EarlyStopping, WeightInit


@pytest.mark.parametrize(("case", "setting"), [pytest.param(c, s, id=f"{c}-{s}") for c, s in cells()])
def test_cell(case: str, setting: str, tmp_path: Path) -> None:
    run_cell(case, setting, tmp_path)


def test_compatibility_page_is_current() -> None:
    page = TABLE_PAGE.read_text()
    assert page_with_table(page) == page, f"run `python tests/compat/_compat_matrix.py` to update {TABLE_PAGE.name}"


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_stack(setting: str, tmp_path: Path) -> None:
    run_stack(setting, tmp_path)


@pytest.fixture(scope="module")
def ddp_records(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MASTER_PORT", str(find_free_network_port()))
        return run_ddp_stack(tmp_path_factory.mktemp("ddp"))


def test_ddp_stack_with_batchnorm(ddp_records: list[dict[str, Any]]) -> None:
    rank0, rank1 = ddp_records
    assert rank0["start"] == rank1["start"]  # LSUV's scales broadcast: both ranks start from the same weights
    assert rank0["params"] == rank1["params"]  # EMA's average of the synced weights, EarlyStopping's restore
    assert rank0["steps"] == rank1["steps"] and len(rank0["steps"]) == 2  # one epoch of 2 batches per rank
    lrs = [lrs[0] for _, lrs, _ in rank0["steps"]]
    assert lrs == [0.1, 0.05] and max(norm for _, _, norm in rank0["steps"]) <= 1e-3 * 1.0001  # LRDecay, clipping
    assert rank0["input_stats"] == rank1["input_stats"] and rank0["stopped_epoch"] == 0
    families = {key.split("/")[0] for key in rank0["logged"]}
    assert {"activation", "grad_norm", "grad_health", "weight_decay", "lr"} <= families  # EMA: constant decay, text


def test_ddp_early_stopping_best_weights_same_on_every_rank(ddp_records: list[dict[str, Any]]) -> None:
    assert ddp_records[0]["best_buffers"] is not None
    assert ddp_records[0]["best_buffers"] == ddp_records[1]["best_buffers"]  # BatchNorm buffers too


@pytest.mark.parametrize("setting", ["gan", "transformer"])
def test_lsuv_default_call_names_the_option(setting: str, tmp_path: Path) -> None:
    # A generator takes noise, LightningTransformer.forward takes (inputs, target): LSUV's default call cannot fit.
    with pytest.raises(RuntimeError, match=r"^WeightInit\(scheme='lsuv'\) could not run .*Pass `lsuv_forward_fn`"):
        fit(setting, [WeightInit("lsuv")], tmp_path)


class WeightsSeen(Callback):
    """The weights ``validate()`` and ``test()`` run with."""

    def __init__(self) -> None:
        self.seen: dict[str, dict[str, torch.Tensor]] = {}

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.seen["validate"] = {k: v.clone() for k, v in pl_module.state_dict().items()}

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.seen["test"] = {k: v.clone() for k, v in pl_module.state_dict().items()}


def test_ema_with_early_stopping_restore_in_either_order(tmp_path: Path) -> None:
    finals = []
    for order in ("ema_first", "early_stopping_first"):
        seed_everything(0)
        ema, stopper = EMA(decay=0.5), EarlyStopping("val_loss", patience=5, restore_best_weights=True)
        seen, model = WeightsSeen(), Validated()
        callbacks = [ema, stopper] if order == "ema_first" else [stopper, ema]
        trainer = Trainer(
            default_root_dir=tmp_path / order, accelerator="cpu", devices=1, max_epochs=3, limit_val_batches=2,
            num_sanity_val_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, callbacks=[*callbacks, seen],
        )  # fmt: skip
        trainer.fit(model)
        final = {k: v.clone() for k, v in model.state_dict().items()}
        trainer.validate(model, verbose=False)
        trainer.test(model, verbose=False)
        for name, value in final.items():  # the restored best weights, evaluated by validate() and test() alike
            assert torch.equal(value, stopper.best_weights[name]), (order, name)
            assert torch.equal(seen.seen["validate"][name], value) and torch.equal(seen.seen["test"][name], value)
        finals.append(final)
    for name, value in finals[0].items():
        assert torch.equal(value, finals[1][name]), name  # the list order does not matter
