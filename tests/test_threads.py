"""The CPU thread policy (``lightning_tricks._threads``) and how the CLI and the example scripts apply it."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest
import torch

from lightning_tricks import _threads


@pytest.fixture(autouse=True)
def _restore_threads(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Start without thread variables (``conftest.py`` restores them and torch's thread count afterwards)."""
    for name in _threads.THREAD_ENV_VARS:
        monkeypatch.setenv(name, "1")  # so that monkeypatch records (and later restores) the old value
        monkeypatch.delenv(name)
    monkeypatch.setattr(_threads, "_announced", False)
    yield


def test_default_is_one_thread_on_two_cores_and_torchs_own_above():
    assert _threads.default_threads(1) == 1
    assert _threads.default_threads(2) == 1
    assert _threads.default_threads(8) is None


def test_an_explicit_request_wins_over_the_environment_which_wins_over_the_default(monkeypatch):
    monkeypatch.setattr(_threads, "usable_cores", lambda: 2)
    assert _threads.choose_threads()[0] == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    threads, why = _threads.choose_threads()
    assert threads is None and "OMP_NUM_THREADS=2" in why, "torch already read the variable: leave it be"
    assert _threads.choose_threads(3) == (3, "--threads")
    assert _threads.choose_threads(0)[0] is None, "0 asks for torch's default"


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2"])
def test_a_bad_request_names_the_option_and_the_value(bad):
    with pytest.raises(ValueError, match=r"`threads`.*int >= 1.*" + repr(bad).replace(".", r"\.")):
        _threads.choose_threads(bad)


def test_apply_sets_torch_exports_the_count_and_announces_once(monkeypatch):
    monkeypatch.setattr(_threads, "usable_cores", lambda: 2)
    said: list[str] = []
    assert _threads.apply_threads(announce=said.append) == 1
    assert torch.get_num_threads() == 1
    assert _threads.os.environ["OMP_NUM_THREADS"] == "1", "DDP ranks and workers started later follow it"
    _threads.apply_threads(2, announce=said.append)
    assert torch.get_num_threads() == 2
    assert said == ["CPU threads: 1 (the default on a machine with 2 cores: faster than 2 here, see "
                    "benchmarks/RESULTS.md; override with --threads N or OMP_NUM_THREADS)."]  # fmt: skip


def test_more_threads_than_the_default_on_a_small_machine_suggest_passive_waiting(monkeypatch):
    monkeypatch.setattr(_threads, "usable_cores", lambda: 2)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    said: list[str] = []
    _threads.apply_threads(2, announce=said.append)
    assert said[0].startswith("CPU threads: 2 (--threads).") and "OMP_WAIT_POLICY=PASSIVE" in said[0]
    assert _threads.passive_wait_hint(1) == ""
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    assert _threads.passive_wait_hint(2) == ""
    monkeypatch.setattr(_threads, "usable_cores", lambda: 16)
    monkeypatch.delenv("OMP_WAIT_POLICY")
    assert _threads.passive_wait_hint(8) == ""


def test_cli_threads_option_sets_torch_and_rejects_a_negative_count(monkeypatch, tmp_path, caplog):
    from lightning_tricks.cli import cli_main

    monkeypatch.setattr(sys, "argv", ["lightning-tricks"])
    args = ["--model", "MLPClassifier", "--data", "FashionMNISTDataModule", "--trainer.logger", "false",
            "--trainer.default_root_dir", str(tmp_path)]  # fmt: skip
    torch.set_num_threads(2)
    cli_main([*args, "--threads", "1"], run=False)
    assert torch.get_num_threads() == 1
    with pytest.raises(ValueError, match=r"--threads: Expected `threads` to be an int >= 1 .* but got -1"):
        cli_main([*args, "--threads", "-1"], run=False)
