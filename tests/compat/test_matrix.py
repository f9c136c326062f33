"""The compatibility matrix: every callback x every setting (see ``_compat_matrix.py``), the stack, DDP, README."""

from __future__ import annotations

from pathlib import Path

import pytest
from _compat_matrix import (
    CASES,
    NEEDS_STEPS,
    ROOT,
    SETTINGS,
    STACK_PENDING,
    cells,
    fit,
    readme_with_table,
    run_cell,
    run_stack,
)
from lightning.fabric.utilities.exceptions import MisconfigurationException

from lightning_tricks.callbacks import _compat


def _marks(case: str, setting: str) -> list[pytest.MarkDecorator]:
    return [pytest.mark.xfail(strict=True, reason=NEEDS_STEPS)] if setting in CASES[case].pending else []


@pytest.mark.parametrize(
    ("case", "setting"), [pytest.param(c, s, id=f"{c}-{s}", marks=_marks(c, s)) for c, s in cells()]
)
def test_cell(case: str, setting: str, tmp_path: Path) -> None:
    run_cell(case, setting, tmp_path)


def test_readme_table_is_current() -> None:
    readme = (ROOT / "README.md").read_text()
    assert readme_with_table(readme) == readme, "run `python tests/compat/_compat_matrix.py` to update the README"


@pytest.mark.parametrize(
    "setting", [pytest.param(s, marks=pytest.mark.xfail(strict=True, reason=NEEDS_STEPS)) if s in STACK_PENDING else s
                for s in SETTINGS]
)  # fmt: skip
def test_stack(setting: str, tmp_path: Path) -> None:
    run_stack(setting, tmp_path)


@pytest.mark.parametrize(
    "case", [pytest.param(c, marks=pytest.mark.xfail(strict=True, reason=NEEDS_STEPS)) if CASES[c].sharded_pending
             else c for c in CASES]
)  # fmt: skip
def test_sharded_strategies(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # FSDP and DeepSpeed need a GPU. The refusals key on the strategy's class name (`_compat.SHARDED_STRATEGIES`),
    # so the CPU strategy is declared sharded here: a refusing callback must raise at setup, the others must run.
    monkeypatch.setattr(_compat, "SHARDED_STRATEGIES", ("SingleDeviceStrategy",))
    callback = CASES[case].make(SETTINGS["accumulate"])
    if CASES[case].sharded == "supported":
        fit("accumulate", [callback], tmp_path, **CASES[case].trainer)
    else:
        with pytest.raises(MisconfigurationException, match=f"^{case} does not support the SingleDeviceStrategy"):
            fit("accumulate", [callback], tmp_path, **CASES[case].trainer)
