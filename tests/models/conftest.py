"""Fixtures for the model tests: a small real Fashion-MNIST subset and a tiny MLP factory."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset


def _read_idx(path: Path, header: int) -> torch.Tensor:
    """Read an IDX file (gzipped or not) and return its payload as uint8, skipping ``header`` bytes."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    return torch.frombuffer(bytearray(data[header:]), dtype=torch.uint8)


def _load_split(folder: Path, prefix: str, count: int) -> TensorDataset:
    def find(name: str) -> Path:
        gz = folder / f"{name}.gz"
        return gz if gz.exists() else folder / name

    images = _read_idx(find(f"{prefix}-images-idx3-ubyte"), 16).view(-1, 1, 28, 28)[:count]
    labels = _read_idx(find(f"{prefix}-labels-idx1-ubyte"), 8)[:count]
    x = images.float().div(127.5).sub(1.0)  # [-1, 1], the package's default value range
    return TensorDataset(x, labels.long())


@pytest.fixture(scope="session")
def fashion_subset(fashion_mnist_dir: Path) -> tuple[TensorDataset, TensorDataset]:
    """2000 training images and 1000 test-set images (as validation data) of the real Fashion-MNIST."""
    return _load_split(fashion_mnist_dir, "train", 2000), _load_split(fashion_mnist_dir, "t10k", 1000)
