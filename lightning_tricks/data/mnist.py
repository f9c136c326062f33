"""Fashion-MNIST and MNIST as LightningDataModules: in-memory tensors, seeded resumable shuffling, fast augmentation,
and an optional device-resident mode.

Fashion-MNIST: Xiao, Rasul & Vollgraf, "Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine Learning
Algorithms", arXiv:1708.07747 (2017). MNIST: LeCun, Bottou, Bengio & Haffner, "Gradient-based learning applied to
document recognition", Proc. IEEE (1998). Random crop with padding and horizontal flips are the classic augmentation
of Krizhevsky, Sutskever & Hinton, "ImageNet Classification with Deep Convolutional Neural Networks" (NeurIPS 2012).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.utils.data import DataLoader
from typing_extensions import override

from lightning_tricks._validation import check_choice, check_int, invalid
from lightning_tricks.data._idx import CorruptDatasetFileError, load_pair
from lightning_tricks.data._loaders import (
    Augment,
    DeviceLoader,
    EpochShardSampler,
    ImageTensorDataset,
    Normalize,
    ResumableDataLoader,
    ValueRange,
    identity_collate,
)

__all__ = ["CorruptDatasetFileError", "DatasetNotFoundError", "FashionMNISTDataModule", "MNISTDataModule"]

ENV_VAR = "LIGHTNING_TRICKS_DATA"
DOWNLOAD_ROOT = "data"
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@functools.lru_cache(maxsize=8)
def _pixel_mean(images: Tensor) -> float:
    """Mean pixel of a uint8 image tensor in [0, 1], once per tensor (``load_pair``'s are cached, never modified)."""
    return float(images.sum(dtype=torch.float64)) / (255.0 * images.numel())


class DatasetNotFoundError(FileNotFoundError):
    """None of the places searched holds the four IDX files; the message lists each place and how to fix it."""


def _find_files(folder: Path) -> dict[str, Path] | str:
    """The four IDX files in ``folder`` (raw preferred over ``.gz``), or why not."""
    if not folder.is_dir():
        return "no such folder"
    found: dict[str, Path] = {}
    missing = []
    for name in (n for pair in _FILES.values() for n in pair):
        path = next((p for p in (folder / name, folder / f"{name}.gz") if p.is_file()), None)
        if path is None:
            missing.append(f"{name}[.gz]")
        else:
            found[name] = path
    return f"missing {', '.join(missing)}" if missing else found


class _MNISTLikeDataModule(LightningDataModule):
    """Shared implementation; see :class:`FashionMNISTDataModule` for the documentation."""

    dataset_name: ClassVar[str]
    torchvision_name: ClassVar[str]
    folder_names: ClassVar[tuple[str, ...]]  # sub-folders tried inside data_dir / $LIGHTNING_TRICKS_DATA
    system_dirs: ClassVar[tuple[tuple[str, str], ...]]  # (folder, what installs it)
    mean: ClassVar[float]
    std: ClassVar[float]
    classes: ClassVar[tuple[str, ...]]
    num_classes: int = 10
    input_shape: tuple[int, int, int] = (1, 28, 28)

    def __init__(
        self,
        data_dir: str | None = None,
        batch_size: int = 128,
        val_size: int = 5000,
        value_range: ValueRange = "minus_one_to_one",
        augment: bool = False,
        crop_padding: int = 2,
        hflip: bool = True,
        on_device: bool = False,
        train_subset: int | None = None,
        num_workers: int = 0,
        seed: int = 42,
        download: bool = False,
        drop_last: bool = False,
    ) -> None:
        super().__init__()
        check_choice("value_range", value_range, ValueRange)
        check_int("batch_size", batch_size, 1)
        check_int("val_size", val_size, 0)
        check_int("crop_padding", crop_padding, 0)
        check_int("num_workers", num_workers, 0)
        check_int("train_subset", train_subset, 1, allow_none=True)
        if on_device and num_workers:
            raise invalid("num_workers", "0 with on_device=True (batches are made on the device)", num_workers)
        self.save_hyperparameters()
        self.data_dir = data_dir
        self.batch_size = batch_size
        self.val_size = val_size
        self.value_range = value_range
        self.augment = augment
        self.crop_padding = crop_padding
        self.hflip = hflip
        self.on_device = on_device
        self.train_subset = train_subset
        self.num_workers = num_workers
        self.seed = seed
        self.download = download
        self.drop_last = drop_last
        self.normalize = Normalize(value_range, self.mean, self.std)
        self.files: dict[str, Path] | None = None  # the IDX files used, set by ``setup``
        self.train_indices: Tensor | None = None  # positions in the training file of the train / val splits
        self.val_indices: Tensor | None = None
        self._splits: dict[str, tuple[Tensor, Tensor]] = {}
        self._device_splits: dict[tuple[str, str], tuple[Tensor, Tensor]] = {}

    # ------------------------------------------------------------------ locating the files
    def _candidates(self) -> list[tuple[str, Path]]:
        places: list[tuple[str, Path]] = []
        roots = [("data_dir argument", self.data_dir)]
        roots.append((f"${ENV_VAR}", os.environ.get(ENV_VAR) or None))
        for label, root in roots:
            if root is None:
                continue
            base = Path(root).expanduser()
            places += [(label, base / sub) for sub in self.folder_names] + [(label, base)]
        places += [(f"{what}", Path(folder)) for folder, what in self.system_dirs]
        places.append(("torchvision download folder", Path(DOWNLOAD_ROOT) / self.torchvision_name / "raw"))
        return places

    def _locate(self, allow_download: bool) -> dict[str, Path]:
        report = []
        if self.data_dir is None:
            report.append("  - data_dir argument: not given")
        if not os.environ.get(ENV_VAR):
            report.append(f"  - ${ENV_VAR}: not set")
        for label, folder in self._candidates():
            found = _find_files(folder)
            if isinstance(found, dict):
                if self.data_dir is not None and label != "data_dir argument":
                    rank_zero_warn(f"{self.dataset_name}: no IDX files in data_dir={self.data_dir!r}; using {folder}.")
                return found
            report.append(f"  - {folder} ({label}): {found}")
        if allow_download:
            try:
                self._download()
            except Exception as error:  # network, disk, or checksum failure: report it with the rest
                reason = f"{type(error).__name__}: {error}"
                report.append(f"  - torchvision download into {DOWNLOAD_ROOT}/: failed ({reason})")
            else:
                found = _find_files(Path(DOWNLOAD_ROOT) / self.torchvision_name / "raw")
                if isinstance(found, dict):
                    return found
                report.append(f"  - torchvision download into {DOWNLOAD_ROOT}/: finished but {found}")
        else:
            report.append(f"  - torchvision download into {DOWNLOAD_ROOT}/: not tried (download=False)")
        fixes = [f"put the four IDX files in a folder and pass data_dir=... or set {ENV_VAR}=<folder>"]
        fixes += [f"install {what} (`sudo apt-get install {what.split()[-1]}`)" for _, what in self.system_dirs]
        fixes.append("pass download=True (needs internet) to let torchvision download them")
        raise DatasetNotFoundError(
            f"{self.dataset_name} IDX files ({', '.join(n for p in _FILES.values() for n in p)}, raw or .gz) not "
            "found. Looked in:\n" + "\n".join(report) + "\nTo fix it: " + "; or ".join(fixes) + "."
        )

    def _download(self) -> None:
        import torchvision

        dataset_class = getattr(torchvision.datasets, self.torchvision_name)
        for train in (True, False):
            dataset_class(root=DOWNLOAD_ROOT, train=train, download=True)

    # ------------------------------------------------------------------ Lightning hooks
    @override
    def prepare_data(self) -> None:
        """Find the files, downloading them if allowed (Lightning runs this on one process per node)."""
        self._locate(allow_download=self.download)

    @override
    def setup(self, stage: str | None = None) -> None:
        """Parse the files once (cached per process) and make the seeded train/validation split."""
        if self._splits:
            return
        self.files = files = self._locate(allow_download=self.download)
        train_x, train_y = load_pair(*(files[n] for n in _FILES["train"]))
        test_x, test_y = load_pair(*(files[n] for n in _FILES["test"]))
        if self.val_size >= train_x.shape[0]:
            raise ValueError(
                f"Expected `val_size` to be smaller than the {train_x.shape[0]} training samples, "
                f"but got {self.val_size}."
            )
        mean = _pixel_mean(train_x)
        if abs(mean - self.mean) > 0.01:
            rank_zero_warn(
                f"{self.dataset_name}: the training images in {files[_FILES['train'][0]]} have mean {mean:.4f}, "
                f"expected {self.mean:.4f}: is this the right dataset? ('standardize' uses the expected statistics.)"
            )
        order = torch.randperm(train_x.shape[0], generator=torch.Generator().manual_seed(self.seed))
        val_index, train_index = order[: self.val_size], order[self.val_size :]
        if self.train_subset is not None:
            train_index = train_index[: self.train_subset]
        self.train_indices, self.val_indices = train_index, val_index
        self._splits = {
            "train": (train_x[train_index].unsqueeze(1), train_y[train_index]),
            "val": (train_x[val_index].unsqueeze(1), train_y[val_index]),
            "test": (test_x.unsqueeze(1), test_y),
        }

    def dataset(self, split: Literal["train", "val", "test"]) -> ImageTensorDataset:
        """The split as a map-style dataset of ``(x float32 [1, 28, 28], y int64)`` (no augmentation)."""
        self.setup()
        return ImageTensorDataset(*self._splits[split], self.normalize)

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _device(self) -> torch.device:
        trainer = self.trainer
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def _device_tensors(self, split: str) -> tuple[Tensor, Tensor]:
        device = self._device()
        key = (split, str(device))
        if key not in self._device_splits:
            x, y = self._splits[split]
            self._device_splits[key] = (x.to(device), y.to(device))
        return self._device_splits[key]

    def _make_loader(self, split: Literal["train", "val", "test"]) -> Any:
        self.setup()
        train = split == "train"
        rank, world = self._rank_world()
        augment = None
        if train and self.augment:
            augment = Augment(self.crop_padding, self.hflip, self.normalize.fill_value(), self.seed, rank)
        if not train and not self.on_device:
            # Plain loader: under DDP Lightning injects its DistributedSampler (padding to equal shards). Its own
            # generator: without one, each evaluation pass would take a draw from the global RNG (dropout's stream).
            return DataLoader(self.dataset(split), batch_size=self.batch_size, shuffle=False,
                              collate_fn=identity_collate, num_workers=self.num_workers,
                              generator=torch.Generator())  # fmt: skip
        sampler = EpochShardSampler(
            len(self._splits[split][1]),
            self.batch_size,
            shuffle=train,
            seed=self.seed,
            rank=rank,
            world_size=world,
            uneven="drop" if train else "pad",
        )
        drop_last = self.drop_last and train
        if self.on_device:
            x, y = self._device_tensors(split)
            return DeviceLoader(x, y, self.batch_size, sampler, self.normalize, augment, drop_last)
        return ResumableDataLoader(self.dataset(split), self.batch_size, sampler, augment, drop_last, self.num_workers)

    @override
    def train_dataloader(self) -> ResumableDataLoader | DeviceLoader:
        """Shuffled (seeded by ``(seed, epoch)``), sharded by rank, optionally augmented; resumable mid-epoch."""
        return self._make_loader("train")

    @override
    def val_dataloader(self) -> DataLoader | DeviceLoader | list:
        """The held-out part of the training file, in order (``[]`` when ``val_size=0``)."""
        return self._make_loader("val") if self.val_size else []

    @override
    def test_dataloader(self) -> DataLoader | DeviceLoader:
        """The 10k test file, in order."""
        return self._make_loader("test")

    @override
    def predict_dataloader(self) -> DataLoader | DeviceLoader:
        """The 10k test file, in order (batches are ``(x, y)``; a model's ``predict_step`` may ignore ``y``)."""
        return self._make_loader("test")


class FashionMNISTDataModule(_MNISTLikeDataModule):
    """Fashion-MNIST (Xiao et al., 2017, arXiv:1708.07747): 60k training and 10k test 28x28 grey images, 10 classes.

    The whole dataset is held in memory as ``uint8`` tensors (47 MB): a batch is one indexing op plus a vectorized
    normalization, so ``num_workers=0`` is usually fastest. Batches are ``(x, y)``: ``x`` float32 ``[B, 1, 28, 28]``
    in ``value_range``, ``y`` int64 ``[B]``.

    **Files.** The four IDX files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, gzipped or raw) are looked for, in order, in: the
    ``data_dir`` argument, the ``LIGHTNING_TRICKS_DATA`` environment variable (each of those folders and its
    ``fashion-mnist`` / ``FashionMNIST/raw`` sub-folders), ``/usr/share/datasets/fashion-mnist`` (Debian package
    ``dataset-fashion-mnist``), ``data/FashionMNIST/raw`` (an earlier torchvision download), and finally torchvision's
    download into ``data/`` when ``download=True``. If none works, :class:`DatasetNotFoundError` (a
    ``FileNotFoundError``) lists every place and how to fix it. Files are decompressed in memory and their headers
    checked (magic number, dimensions, size, label range, image/label counts) before ``torch.frombuffer`` wraps
    them: a bad file raises :class:`CorruptDatasetFileError` naming it. Parsing is cached per process.

    **Split.** ``val_size`` samples of the 60k training file are held out by a permutation seeded with ``seed``;
    ``train_subset`` keeps the first N of the remaining (shuffled) training samples.

    **Value range.** ``"minus_one_to_one"``: ``x / 127.5 - 1``; ``"zero_to_one"``: ``x / 255``; ``"standardize"``:
    ``(x / 255 - mean) / std`` with the statistics of the 60k training file (class attributes ``mean``, ``std``).

    **Augmentation** (``augment=True``, training set only): random crop after ``crop_padding`` pixels of black
    padding, and a horizontal flip with probability 1/2 (``hflip``), done on the whole batch with one gather.
    Randomness of batch ``b`` of epoch ``e`` on rank ``r`` is seeded by
    ``(seed, e, r, b)``. Normal mode augments in the main process after the workers' fetch; ``on_device`` on the device.

    **Shuffling, sharding and resuming.** Each epoch's order is a permutation seeded by ``(seed, epoch)`` (never the
    global RNG); under DDP every rank takes a disjoint stride of it, and the last ``N % world_size`` samples of each
    epoch's permutation are dropped so all ranks run the same number of batches. The train sampler is a
    ``DistributedSampler`` subclass, so Lightning's ``use_distributed_sampler`` does not replace it. Both train
    loaders have ``state_dict`` / ``load_state_dict`` (epoch, batches handed out): a run checkpointed mid-epoch
    resumes with exactly the remaining batches, same order and augmentation. Validation/test loaders keep every sample
    in order (under DDP Lightning's sampler, or in ``on_device`` mode the same padding rule, pads the shards).

    **Hooks and cost.** ``prepare_data`` finds (or downloads) the files on one process per node; ``setup`` parses
    them (cached per process) and splits; the ``*_dataloader`` methods build the loaders. Lightning calls
    ``train_dataloader().sampler.set_epoch(epoch)`` at every epoch start; outside Lightning call it yourself (the
    order is otherwise epoch 0's every time). Under DDP the loader state saved by rank 0 is valid on every rank (all
    ranks run the same number of batches). Logs nothing.

    **Device-resident mode** (``on_device=True``): on first use the split is copied to the trainer's
    ``strategy.root_device``; permutation (a device ``torch.Generator``), batch slicing, normalization and
    augmentation run there, with no worker processes and no per-batch host-to-device copies. On CPU it yields exactly
    the batches of the normal mode; on GPU the permutation comes from the device generator (a different, equally
    seeded, order).

    Args:
        data_dir: folder with the four IDX files; ``None`` to search the default places.
        batch_size: samples per batch (per process under DDP).
        val_size: training-file samples held out for validation (0: no validation loader).
        value_range: ``"minus_one_to_one"``, ``"zero_to_one"`` or ``"standardize"``.
        augment: random crop + horizontal flip on the training set.
        crop_padding: padding (pixels per side) of the random crop; 0 disables the crop.
        hflip: include the random horizontal flip when ``augment``.
        on_device: keep the data on the trainer's device and make batches there.
        train_subset: use only the first N training samples after the split (quick runs).
        num_workers: DataLoader worker processes (normal mode only).
        seed: seed of the split, the per-epoch shuffling and the augmentation.
        download: allow torchvision to download the files into ``data/`` as a last resort.
        drop_last: drop the last incomplete training batch of each epoch.

    Raises:
        ValueError: an option is out of range; ``val_size`` is not smaller than the training file.
        DatasetNotFoundError: the files are nowhere to be found.
        CorruptDatasetFileError: a file is truncated, corrupted, or not the expected kind.

    Example::

        from lightning.pytorch import Trainer
        from lightning_tricks.data import FashionMNISTDataModule
        from lightning_tricks.models import MLPClassifier

        data = FashionMNISTDataModule(batch_size=256, augment=True, value_range="standardize")
        Trainer(max_epochs=10).fit(MLPClassifier(), datamodule=data)
    """

    dataset_name = "Fashion-MNIST"
    torchvision_name = "FashionMNIST"
    folder_names = ("fashion-mnist", "FashionMNIST/raw")
    system_dirs = (("/usr/share/datasets/fashion-mnist", "Debian package dataset-fashion-mnist"),)
    mean = 0.2860406
    std = 0.3530242
    classes = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


class MNISTDataModule(_MNISTLikeDataModule):
    """MNIST handwritten digits (LeCun et al., 1998): same interface and behaviour as :class:`FashionMNISTDataModule`.

    Files are looked for in the ``data_dir`` argument, ``LIGHTNING_TRICKS_DATA`` (each with its ``mnist`` /
    ``MNIST/raw`` sub-folders first: the file names are the same as Fashion-MNIST's, so keep the two datasets in
    separate folders; a training-set mean far from MNIST's triggers a warning), ``data/MNIST/raw`` (an earlier
    torchvision download), then torchvision's download into ``data/`` when ``download=True``. There is no Debian
    package. ``hflip`` is usually wrong for digits: pass ``hflip=False`` with ``augment=True``.

    Example::

        data = MNISTDataModule(data_dir="~/datasets/mnist", value_range="zero_to_one")
    """

    dataset_name = "MNIST"
    torchvision_name = "MNIST"
    folder_names = ("mnist", "MNIST/raw")
    system_dirs = ()
    mean = 0.1306605
    std = 0.3081078
    classes = (
        "0 - zero", "1 - one", "2 - two", "3 - three", "4 - four",
        "5 - five", "6 - six", "7 - seven", "8 - eight", "9 - nine",
    )  # fmt: skip
