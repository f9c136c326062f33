"""Data for the tests: fixed random inputs, ``metrics.csv`` rows, and a subset of the real Fashion-MNIST."""

from __future__ import annotations

import csv
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_tricks.data._idx import load_pair
from lightning_tricks.data.mnist import _FILES, _find_files


def fixed_inputs(n: int = 64, seed: int = 0, scale: float = 1.0, features: int = 32) -> torch.Tensor:
    """``n`` rows of ``features`` N(0, 1) values times ``scale``, from their own generator: the same on every call."""
    x = torch.randn(n, features, generator=torch.Generator().manual_seed(seed))
    return x if scale == 1.0 else x * scale


def fixed_loader(
    n: int = 64, batch_size: int = 8, seed: int = 0, scale: float = 1.0, tensor_dataset: bool = False
) -> DataLoader:
    """An unshuffled loader over :func:`fixed_inputs` (BoringModel's input size, 32 features).

    Batches are plain tensors, or one-element lists ``[x]`` with ``tensor_dataset=True``.
    """
    data = fixed_inputs(n, seed, scale)
    return DataLoader(TensorDataset(data) if tensor_dataset else data, batch_size=batch_size)


def metrics_rows(log_dir: str | Path, key: str | None = None) -> list[dict[str, str]]:
    """The rows of ``log_dir/metrics.csv`` (a CSVLogger's file); with ``key``, only the rows where it has a value.
    No file (nothing was logged) reads as no rows."""
    if not (Path(log_dir) / "metrics.csv").exists():
        return []
    with open(Path(log_dir) / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return rows if key is None else [row for row in rows if row.get(key)]


def fashion_mnist_split(folder: Path, split: str, count: int) -> TensorDataset:
    """The first ``count`` images and labels of Fashion-MNIST's ``"train"`` or ``"test"`` split in ``folder``, read by
    the package's own IDX reader; images ``[N, 1, 28, 28]`` in ``[-1, 1]`` (the package's default value range)."""
    files = _find_files(folder)
    assert isinstance(files, dict), f"{folder}: {files}"
    images, labels = load_pair(*(files[name] for name in _FILES[split]))
    x = images[:count].unsqueeze(1).float().div(127.5).sub(1.0)
    return TensorDataset(x, labels[:count].clone())
