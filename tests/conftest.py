"""Shared fixtures: a fresh DDP port per test, thread settings restored, and the real Fashion-MNIST files and subset."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.data import fashion_mnist_split
from helpers.options import constructor_options as _constructor_options
from lightning.fabric.plugins.environments.lightning import find_free_network_port
from torch.utils.data import TensorDataset


@pytest.fixture(autouse=True)
def _fresh_master_port(monkeypatch: pytest.MonkeyPatch) -> None:
    """Give every test its own ``MASTER_PORT``.

    ``ddp_spawn`` writes ``MASTER_PORT`` into ``os.environ`` of the launching process, so a second DDP run in the
    same pytest process would reuse a port that may still be in TIME_WAIT. ``monkeypatch`` restores the variable.
    """
    monkeypatch.setenv("MASTER_PORT", str(find_free_network_port()))


@pytest.fixture(autouse=True)
def _restore_thread_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Undo what the CLI's thread policy does to this process (``lightning_tricks._threads.apply_threads``).

    Every ``cli_main`` sets torch's thread count and exports ``OMP_NUM_THREADS``; the next test gets both back.
    """
    import torch

    threads = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "unset"))  # records the old value ...
    if os.environ["OMP_NUM_THREADS"] == "unset":
        monkeypatch.delenv("OMP_NUM_THREADS")  # ... which monkeypatch restores (or removes) after the test
    yield
    torch.set_num_threads(threads)


def _fashion_mnist_candidates() -> list[Path]:
    places = []
    if os.environ.get("LIGHTNING_TRICKS_DATA"):
        places.append(Path(os.environ["LIGHTNING_TRICKS_DATA"]))
    places.append(Path("/usr/share/datasets/fashion-mnist"))
    return places


@pytest.fixture(scope="session")
def fashion_mnist_dir() -> Path:
    """The folder holding the real Fashion-MNIST IDX files.

    Skips when they are absent on a developer's machine; under ``CI=true`` a missing dataset is a failure.
    """
    for place in _fashion_mnist_candidates():
        if (place / "train-labels-idx1-ubyte.gz").exists() or (place / "train-labels-idx1-ubyte").exists():
            return place
    message = (
        "Fashion-MNIST not found in "
        + ", ".join(str(p) for p in _fashion_mnist_candidates())
        + ". Install it with `apt-get install dataset-fashion-mnist` or set LIGHTNING_TRICKS_DATA."
    )
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def fashion_subset(fashion_mnist_dir: Path) -> tuple[TensorDataset, TensorDataset]:
    """2000 training images and 1000 test-set images (as validation data) of the real Fashion-MNIST, in [-1, 1]."""
    return fashion_mnist_split(fashion_mnist_dir, "train", 2000), fashion_mnist_split(fashion_mnist_dir, "test", 1000)


@pytest.fixture(scope="session")
def constructor_options():
    """``constructor_options(cls)``: the options of ``cls.__init__``, ``**kwargs`` expanded to the base class's."""
    return _constructor_options
