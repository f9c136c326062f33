"""Lightning's NVML-based CUDA check is skipped only where NVML cannot be loaded (``_cuda_check.py``)."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator

import lightning.pytorch  # noqa: F401  (sets PYTORCH_NVML_BASED_CUDA_CHECK=1 at import)
import pytest
import torch

from lightning_tricks import _cuda_check


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv(_cuda_check.VARIABLE, "1")  # restored after each test
    _cuda_check.nvml_loads.cache_clear()
    yield
    getattr(_cuda_check.nvml_loads, "cache_clear", lambda: None)()  # a faked CDLL's answer must not stay cached


def test_without_nvml_the_check_is_skipped_and_torch_answers_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str, *args: object, **kwargs: object) -> None:
        raise OSError(f"{name}: cannot open shared object file")

    answer = torch.cuda.is_available()
    monkeypatch.setattr(ctypes, "CDLL", missing)
    assert _cuda_check.skip_failing_nvml_check() is True
    assert _cuda_check.VARIABLE in os.environ
    assert os.environ[_cuda_check.VARIABLE] == "0"
    monkeypatch.undo()  # torch's own check loads the real library again
    assert torch.cuda.is_available() == answer


def test_with_nvml_nothing_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ctypes, "CDLL", lambda name, *args, **kwargs: object())
    assert _cuda_check.skip_failing_nvml_check() is False
    assert os.environ[_cuda_check.VARIABLE] == "1"


def test_a_variable_set_otherwise_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_cuda_check.VARIABLE, "0")
    assert _cuda_check.skip_failing_nvml_check() is False
    monkeypatch.delenv(_cuda_check.VARIABLE)
    assert _cuda_check.skip_failing_nvml_check() is False
    assert _cuda_check.VARIABLE not in os.environ


def test_classifier_setup_applies_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning_tricks.models import MLPClassifier

    monkeypatch.setattr(_cuda_check, "nvml_loads", lambda: False)
    MLPClassifier(hidden_sizes=[4]).setup("fit")
    assert os.environ[_cuda_check.VARIABLE] == "0"
