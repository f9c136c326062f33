"""Tests of the Fashion-MNIST / MNIST data modules: real files, fake IDX files, loaders, sharding, resuming, DDP."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor, nn

from lightning_tricks.data import FashionMNISTDataModule, MNISTDataModule
from lightning_tricks.data._idx import CorruptDatasetFileError, load_pair
from lightning_tricks.data._loaders import DeviceLoader, EpochShardSampler, Normalize, random_crop_flip
from lightning_tricks.data.mnist import DatasetNotFoundError

NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


# ---------------------------------------------------------------------------------------------- helpers
def _idx_images(n: int, seed: int = 0) -> bytes:
    pixels = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    return struct.pack(">iiii", 2051, n, 28, 28) + pixels.numpy().tobytes()


def _idx_labels(n: int) -> bytes:
    return struct.pack(">ii", 2049, n) + bytes(i % 10 for i in range(n))


def write_fake(folder: Path, n_train: int = 40, n_test: int = 20, gz: bool = True) -> dict[str, Path]:
    """Write four small valid IDX files into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    blobs = (_idx_images(n_train), _idx_labels(n_train), _idx_images(n_test, 1), _idx_labels(n_test))
    paths = {}
    for name, blob in zip(NAMES, blobs, strict=True):
        path = folder / (name + (".gz" if gz else ""))
        path.write_bytes(gzip.compress(blob) if gz else blob)
        paths[name] = path
    return paths


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No env var, no Debian folder, cwd in tmp_path (so no ``data/`` download folder)."""
    monkeypatch.delenv("LIGHTNING_TRICKS_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    nodeb = ((str(tmp_path / "usr-share-fashion-mnist"), "Debian package dataset-fashion-mnist"),)
    monkeypatch.setattr(FashionMNISTDataModule, "system_dirs", nodeb)
    return tmp_path


def _fingerprint(x: Tensor) -> Tensor:
    """A per-sample number that differs between different images (for set comparisons)."""
    weights = torch.linspace(0.5, 1.5, x[0].numel(), dtype=torch.float64, device=x.device)
    return (x.flatten(1).double() @ weights).round(decimals=4).cpu()


# ---------------------------------------------------------------------------------------------- real data
def test_shapes_dtypes_and_label_counts(fashion_mnist_dir: Path) -> None:
    dm = FashionMNISTDataModule(data_dir=str(fashion_mnist_dir), batch_size=64)
    dm.setup("fit")
    assert dm.num_classes == 10 and len(dm.classes) == 10 and dm.input_shape == (1, 28, 28)
    assert [len(dm.dataset(s)) for s in ("train", "val", "test")] == [55000, 5000, 10000]
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (64, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (64,) and y.dtype == torch.int64
    for loader in (dm.val_dataloader(), dm.test_dataloader(), dm.predict_dataloader()):
        xb, yb = next(iter(loader))
        assert xb.shape == (64, 1, 28, 28) and xb.dtype == torch.float32 and yb.dtype == torch.int64
    full_train = torch.cat([dm.dataset("train").labels, dm.dataset("val").labels])
    assert torch.bincount(full_train).tolist() == [6000] * 10
    assert torch.bincount(dm.dataset("test").labels).tolist() == [1000] * 10
    assert sum(len(yb) for _, yb in dm.test_dataloader()) == 10000


@pytest.mark.parametrize(
    ("value_range", "low", "high"),
    [("minus_one_to_one", -1.0, 1.0), ("zero_to_one", 0.0, 1.0), ("standardize", None, None)],
)
def test_value_ranges(fashion_mnist_dir: Path, value_range: str, low: float | None, high: float | None) -> None:
    dm = FashionMNISTDataModule(data_dir=str(fashion_mnist_dir), value_range=value_range, val_size=0, batch_size=60000)
    x, _ = next(iter(dm.train_dataloader()))
    if low is not None:
        assert x.min().item() == low and x.max().item() == high
    else:
        assert abs(x.mean().item()) < 1e-4 and abs(x.std().item() - 1.0) < 1e-4


def test_hardcoded_statistics_match_the_files(fashion_mnist_dir: Path) -> None:
    images, _ = load_pair(
        fashion_mnist_dir / "train-images-idx3-ubyte.gz", fashion_mnist_dir / "train-labels-idx1-ubyte.gz"
    )
    counts = torch.bincount(images.flatten(), minlength=256).double()
    values = torch.arange(256, dtype=torch.float64) / 255
    mean = (counts * values).sum() / counts.sum()
    std = ((counts * (values - mean) ** 2).sum() / (counts.sum() - 1)).sqrt()
    assert abs(mean.item() - FashionMNISTDataModule.mean) < 1e-6
    assert abs(std.item() - FashionMNISTDataModule.std) < 1e-6
    # parsed once per process: the second call returns the cached tensors
    again, _ = load_pair(
        fashion_mnist_dir / "train-images-idx3-ubyte.gz", fashion_mnist_dir / "train-labels-idx1-ubyte.gz"
    )
    assert again is images


def test_split_is_seeded_disjoint_and_complete(fashion_mnist_dir: Path) -> None:
    def split(seed: int, **kwargs: int) -> FashionMNISTDataModule:
        dm = FashionMNISTDataModule(data_dir=str(fashion_mnist_dir), seed=seed, **kwargs)
        dm.setup()
        return dm

    a, b, c = split(1), split(1), split(2)
    assert torch.equal(a.val_indices, b.val_indices) and torch.equal(a.dataset("val").images, b.dataset("val").images)
    assert not torch.equal(a.val_indices.sort().values, c.val_indices.sort().values)
    everything = torch.cat([a.train_indices, a.val_indices])
    assert everything.unique().numel() == 60000  # disjoint and covering the training file
    subset = split(1, train_subset=100)
    assert torch.equal(subset.train_indices, a.train_indices[:100]) and len(subset.train_dataloader().dataset) == 100


def test_augmentation_changes_images_keeps_labels_shape_range(fashion_mnist_dir: Path) -> None:
    common = {"data_dir": str(fashion_mnist_dir), "batch_size": 256, "train_subset": 512}
    plain = list(FashionMNISTDataModule(**common).train_dataloader())
    augmented = list(FashionMNISTDataModule(augment=True, **common).train_dataloader())
    for (x0, y0), (x1, y1) in zip(plain, augmented, strict=True):
        assert torch.equal(y0, y1) and x1.shape == x0.shape and x1.dtype == torch.float32
        assert x1.min() >= -1.0 and x1.max() <= 1.0
        changed = (x0 != x1).flatten(1).any(1).float().mean()
        assert changed > 0.5


def test_random_crop_flip_maths() -> None:
    x = torch.arange(2 * 1 * 4 * 5, dtype=torch.float32).view(2, 1, 4, 5)
    generator = torch.Generator().manual_seed(0)
    flipped_only = random_crop_flip(x, padding=0, hflip=True, fill=-1.0, generator=generator)
    for i in range(2):
        assert torch.equal(flipped_only[i], x[i]) or torch.equal(flipped_only[i], x[i].flip(-1))
    many = x[:1].expand(64, 1, 4, 5)
    shifted = random_crop_flip(many, padding=1, hflip=False, fill=-1.0, generator=generator)
    padded = nn.functional.pad(x[:1], (1, 1, 1, 1), value=-1.0)[0]
    crops = {padded[:, dy : dy + 4, dx : dx + 5] for dy in range(3) for dx in range(3)}
    seen = 0
    for out in shifted:
        matches = [torch.equal(out, crop) for crop in crops]
        assert sum(matches) == 1
        seen |= 1 << matches.index(True)
    assert bin(seen).count("1") > 1  # more than one offset was drawn


def test_on_device_mode_on_cpu_matches_normal_mode(fashion_mnist_dir: Path) -> None:
    common = {"data_dir": str(fashion_mnist_dir), "batch_size": 100, "train_subset": 1000, "augment": True}
    normal_loader = FashionMNISTDataModule(**common).train_dataloader()
    device_loader = FashionMNISTDataModule(on_device=True, **common).train_dataloader()
    assert isinstance(device_loader, DeviceLoader) and len(device_loader) == len(normal_loader) == 10
    for epoch in (0, 1):
        normal_loader.sampler.set_epoch(epoch)
        device_loader.sampler.set_epoch(epoch)
        normal = list(normal_loader)
        on_device = list(device_loader)
        a, b = torch.cat([_fingerprint(x) for x, _ in normal]), torch.cat([_fingerprint(x) for x, _ in on_device])
        assert sorted(a.tolist()) == sorted(b.tolist())  # same samples as sets
        assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(normal, on_device, strict=True))
    # epochs differ and shuffling does not depend on the global RNG
    torch.manual_seed(123)
    normal_loader.sampler.set_epoch(0)
    first = next(iter(normal_loader))[1]
    torch.manual_seed(456)
    assert torch.equal(next(iter(normal_loader))[1], first)
    normal_loader.sampler.set_epoch(1)
    assert not torch.equal(next(iter(normal_loader))[1], first)


# ---------------------------------------------------------------------------------------------- sharding, state
@pytest.mark.parametrize(("size", "world"), [(10, 2), (11, 2), (103, 4)])
def test_shard_sampler_disjoint_equal_sizes(size: int, world: int) -> None:
    shards = []
    for rank in range(world):
        sampler = EpochShardSampler(size, 4, shuffle=True, seed=3, rank=rank, world_size=world)
        sampler.set_epoch(5)
        shards.append(list(sampler))
    assert len({len(s) for s in shards}) == 1 and len(shards[0]) == size // world
    flat = [i for s in shards for i in s]
    assert len(set(flat)) == len(flat)  # disjoint
    padded = [list(EpochShardSampler(size, 4, shuffle=False, seed=3, rank=r, world_size=world, uneven="pad"))
              for r in range(world)]  # fmt: skip
    assert {i for s in padded for i in s} == set(range(size)) and len({len(s) for s in padded}) == 1


def test_device_loader_shards_by_rank() -> None:
    images = torch.arange(50, dtype=torch.uint8).view(50, 1, 1, 1).expand(50, 1, 28, 28).contiguous()
    labels = torch.arange(50)
    normalize = Normalize("zero_to_one", 0.0, 1.0)
    seen = []
    for rank in range(2):
        sampler = EpochShardSampler(50, 8, shuffle=True, seed=0, rank=rank, world_size=2)
        loader = DeviceLoader(images, labels, 8, sampler, normalize)
        batches = list(loader)
        assert len(batches) == len(loader) == 4
        seen.append(torch.cat([y for _, y in batches]).tolist())
    assert len(seen[0]) == len(seen[1]) == 25 and not set(seen[0]) & set(seen[1])


@pytest.mark.parametrize("on_device", [False, True])
def test_loader_state_dict_resumes_mid_epoch(tmp_path: Path, isolated: Path, on_device: bool) -> None:
    write_fake(tmp_path / "fake")
    kwargs = {
        "data_dir": str(tmp_path / "fake"),
        "batch_size": 4,
        "val_size": 5,
        "augment": True,
        "on_device": on_device,
    }
    with pytest.warns(UserWarning, match="is this the right dataset"):
        reference = FashionMNISTDataModule(**kwargs).train_dataloader()
    reference.sampler.set_epoch(2)
    full = list(reference)
    state = {"epoch": 2, "batches": 3}
    resumed = FashionMNISTDataModule(**kwargs).train_dataloader()
    resumed.load_state_dict(state)
    assert resumed.state_dict() == state
    resumed.sampler.set_epoch(2)  # Lightning calls this after loading: same epoch keeps the position
    rest = list(resumed)
    assert len(rest) == len(full) - 3
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(full[3:], rest, strict=True))
    assert resumed.state_dict() == {"epoch": 2, "batches": len(full)}
    resumed.sampler.set_epoch(3)
    assert resumed.state_dict() == {"epoch": 3, "batches": 0} and len(list(resumed)) == len(full)


# ---------------------------------------------------------------------------------------------- files
def test_missing_files_error_lists_every_place(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIGHTNING_TRICKS_DATA", str(isolated / "env-folder"))
    (isolated / "given").mkdir()
    with pytest.raises(DatasetNotFoundError) as info:
        FashionMNISTDataModule(data_dir=str(isolated / "given")).setup()
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    for place in ("given", "env-folder", "usr-share-fashion-mnist", "data/FashionMNIST/raw", "download=False"):
        assert place in message
    assert "apt-get install dataset-fashion-mnist" in message and "LIGHTNING_TRICKS_DATA" in message
    assert "download=True" in message and "train-images-idx3-ubyte" in message
    with pytest.raises(DatasetNotFoundError) as info:
        MNISTDataModule().setup()
    message = str(info.value)
    assert "data_dir argument: not given" in message and "env-folder" in message and "data/MNIST/raw" in message
    assert "apt-get" not in message and "download=True" in message


def test_env_var_honoured_and_data_dir_wins(tmp_path: Path, isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_files = write_fake(tmp_path / "env", gz=False)
    monkeypatch.setenv("LIGHTNING_TRICKS_DATA", str(tmp_path / "env"))
    with pytest.warns(UserWarning, match="is this the right dataset"):
        dm = MNISTDataModule(val_size=5, batch_size=7)
        dm.setup()
    assert dm.files == env_files
    assert [len(dm.dataset(s)) for s in ("train", "val", "test")] == [35, 5, 20]
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (7, 1, 28, 28) and y.dtype == torch.int64
    given = write_fake(tmp_path / "given" / "mnist")  # the dataset-named sub-folder is found too
    with pytest.warns(UserWarning, match="is this the right dataset"):
        dm = MNISTDataModule(data_dir=str(tmp_path / "given"), val_size=5)
        dm.setup()
    assert dm.files == given


@pytest.mark.parametrize(
    ("damage", "culprit", "match"),
    [
        ("truncate_gz", "train-images-idx3-ubyte.gz", "cannot decompress"),
        ("not_gz", "t10k-labels-idx1-ubyte.gz", "cannot decompress"),
        ("magic", "train-labels-idx1-ubyte.gz", "wrong magic number 2051"),
        ("truncate_raw", "t10k-images-idx3-ubyte", "truncated"),
        ("count", "train-labels-idx1-ubyte.gz", "do not belong together"),
        ("label_range", "t10k-labels-idx1-ubyte.gz", "out of range"),
    ],
)
def test_corrupted_files_name_the_file(tmp_path: Path, isolated: Path, damage: str, culprit: str, match: str) -> None:
    folder = tmp_path / "bad"
    paths = write_fake(folder, gz=damage != "truncate_raw")
    path = folder / culprit
    if damage == "truncate_gz":
        path.write_bytes(path.read_bytes()[:-50])
    elif damage == "not_gz":
        path.write_bytes(b"this is not gzip")
    elif damage == "magic":  # an image file where the labels should be
        path.write_bytes(gzip.compress(_idx_images(40)))
    elif damage == "truncate_raw":
        path.write_bytes(path.read_bytes()[:1000])
    elif damage == "count":
        path.write_bytes(gzip.compress(_idx_labels(39)))
    elif damage == "label_range":
        path.write_bytes(gzip.compress(struct.pack(">ii", 2049, 20) + bytes([3] * 19 + [12])))
    assert path in paths.values()
    with pytest.raises(CorruptDatasetFileError, match=match) as info:
        FashionMNISTDataModule(data_dir=str(folder), val_size=5).setup()
    assert str(path.resolve()) in str(info.value)


def test_invalid_options() -> None:
    with pytest.raises(ValueError, match=r"value_range.*'minus_one_to_one'.*'bogus'"):
        FashionMNISTDataModule(value_range="bogus")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"batch_size.*>= 1.*0"):
        FashionMNISTDataModule(batch_size=0)
    with pytest.raises(ValueError, match="train_subset"):
        MNISTDataModule(train_subset=0)
    with pytest.raises(ValueError, match="num_workers"):
        FashionMNISTDataModule(on_device=True, num_workers=2)


# ---------------------------------------------------------------------------------------------- through the Trainer
class Recorder(LightningModule):
    """Tiny model that records, per training step, the batch's fingerprint (and per rank into a file)."""

    def __init__(self, out: Path | None = None) -> None:
        super().__init__()
        self.layer = nn.Linear(784, 10)
        self.steps: list[tuple[float, int]] = []
        self.samples: list[Tensor] = []
        self.out = out

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        self.steps.append((float(x.double().sum()), int(y.sum())))
        self.samples.append(_fingerprint(x))
        return nn.functional.cross_entropy(self.layer(x.flatten(1)), y)

    def on_train_end(self) -> None:
        if self.out is not None:
            torch.save(torch.cat(self.samples), self.out / f"rank{self.global_rank}.pt")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _trainer(tmp_path: Path, **kwargs: object) -> Trainer:
    defaults = {"accelerator": "cpu", "devices": 1, "max_epochs": 3, "logger": False, "enable_progress_bar": False,
                "enable_model_summary": False, "default_root_dir": tmp_path, "limit_val_batches": 0}  # fmt: skip
    return Trainer(**{k: v for k, v in {**defaults, **kwargs}.items() if v is not None})


class Evaluator(Recorder):
    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.log("val_loss", nn.functional.cross_entropy(self.layer(batch[0].flatten(1)), batch[1]))

    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return batch[1]


@pytest.mark.parametrize("on_device", [False, True])
def test_validate_and_predict_through_the_trainer(fashion_mnist_dir: Path, tmp_path: Path, on_device: bool) -> None:
    dm = FashionMNISTDataModule(data_dir=str(fashion_mnist_dir), batch_size=1000, val_size=3000, on_device=on_device)
    trainer = _trainer(tmp_path, limit_val_batches=None)
    (result,) = trainer.validate(Evaluator(), datamodule=dm)
    assert result["val_loss"] > 0 and trainer.num_val_batches == [3]
    labels = torch.cat(trainer.predict(Evaluator(), datamodule=dm))
    assert torch.equal(labels, dm.dataset("test").labels)  # every test sample, in order


@pytest.mark.parametrize("on_device", [False, True])
def test_resume_mid_epoch_sees_the_same_batches(fashion_mnist_dir: Path, tmp_path: Path, on_device: bool) -> None:
    def data() -> FashionMNISTDataModule:
        return FashionMNISTDataModule(data_dir=str(fashion_mnist_dir), batch_size=16, train_subset=96,
                                      augment=True, on_device=on_device)  # fmt: skip

    checkpoint = ModelCheckpoint(dirpath=tmp_path, filename="{step}", every_n_train_steps=4, save_top_k=-1)
    full = Recorder()
    _trainer(tmp_path, callbacks=[checkpoint]).fit(full, datamodule=data())
    assert len(full.steps) == 18  # 6 batches x 3 epochs
    assert len(set(full.steps[:6]) & set(full.steps[6:12])) == 0  # epochs differ
    for step in (4, 12):  # mid-epoch 0 and the end of epoch 1 (12 = 2 x 6)
        resumed = Recorder()
        _trainer(tmp_path).fit(resumed, datamodule=data(), ckpt_path=tmp_path / f"step={step}.ckpt")
        assert resumed.steps == full.steps[step:], f"resumed from step {step}"


def test_ddp_spawn_ranks_see_disjoint_shards(fashion_mnist_dir: Path, tmp_path: Path) -> None:
    """Normal mode, where Lightning's ``use_distributed_sampler`` could interfere; on-device sharding uses the same
    sampler (tested with explicit ranks above)."""
    dm = FashionMNISTDataModule(data_dir=str(fashion_mnist_dir), batch_size=8, train_subset=66)
    trainer = _trainer(tmp_path, devices=2, strategy="ddp_spawn", max_epochs=1)
    trainer.fit(Recorder(out=tmp_path), datamodule=dm)
    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert len(rank0) == len(rank1) == 33  # 66 // 2 each, 5 batches (8, 8, 8, 8, 1)
    assert not set(rank0.tolist()) & set(rank1.tolist())
    dm.setup()
    everything = set(_fingerprint(dm.normalize(dm.dataset("train").images)).tolist())
    assert len(everything) == 66 and set(rank0.tolist()) | set(rank1.tolist()) <= everything
