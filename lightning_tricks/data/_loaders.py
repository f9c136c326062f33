"""Batch making for the MNIST-style data modules: a seeded, rank-sharded, resumable sampler, vectorized augmentation,
a resumable ``DataLoader`` and a device-resident loader.

Everything random is a pure function of ``(seed, epoch, rank, batch index)`` through explicitly seeded
:class:`torch.Generator` objects, never of the global RNG state, so a run resumed mid-epoch from a checkpoint sees
exactly the batches (order and augmentation) an uninterrupted run would have seen.

Lightning's side of resuming (``lightning/pytorch/loops/fit_loop.py``): at checkpoint time the fit loop stores
``state_dict()`` of every train loader that has ``state_dict``/``load_state_dict`` (``CombinedLoader._state_dicts``);
when restarting it calls ``load_state_dict`` before creating the iterator, then calls ``sampler.set_epoch(epoch)``
(``_set_sampler_epoch``) at the start of every epoch. With a sized loader the fetcher does not prefetch, so the number
of batches a loader has handed out equals the number of batches the loop has started.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

ValueRange = Literal["minus_one_to_one", "zero_to_one", "standardize"]
Batch = tuple[Tensor, Tensor]

_MASK64 = (1 << 64) - 1


def mix_seed(*parts: int) -> int:
    """Hash integers into one 63-bit seed (splitmix64 finalizer), so nearby inputs give unrelated streams."""
    state = 0x9E3779B97F4A7C15
    for part in parts:
        state = (state ^ (part & _MASK64)) * 0xBF58476D1CE4E5B9 & _MASK64
        state = (state ^ (state >> 27)) * 0x94D049BB133111EB & _MASK64
        state ^= state >> 31
    return state >> 1


def _generator(seed: int, device: torch.device) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


class Normalize:
    """Map ``uint8`` pixels to ``float32`` in the chosen value range (picklable, for DataLoader workers)."""

    def __init__(self, value_range: ValueRange, mean: float, std: float) -> None:
        self.value_range = value_range
        self.mean = mean
        self.std = std

    def __call__(self, x: Tensor) -> Tensor:
        x = x.to(torch.float32)
        if self.value_range == "minus_one_to_one":
            return x.div_(127.5).sub_(1.0)
        x = x.div_(255.0)
        if self.value_range == "standardize":
            x = x.sub_(self.mean).div_(self.std)
        return x

    def fill_value(self) -> float:
        """The value a black (zero) pixel maps to: the padding of the random crop."""
        return float(self(torch.zeros(1, dtype=torch.uint8)))


def random_crop_flip(x: Tensor, padding: int, hflip: bool, fill: float, generator: torch.Generator) -> Tensor:
    """Random crop after padding by ``padding`` (filled with ``fill``) and random horizontal flip, per sample.

    One gather for the whole batch: per-sample row/column index grids (offsets in ``[0, 2 * padding]``, columns
    reversed for flipped samples) index the padded batch. Works on
    any device; ``generator`` must live there.

    Args:
        x: images ``[B, C, H, W]``.
        padding: zero-padding on each side before cropping back to ``H x W``; 0 disables the crop.
        hflip: flip each sample left-right with probability 1/2.
        fill: value of the padding.
        generator: source of the random offsets and flips.
    """
    batch, channels, height, width = x.shape
    device = x.device
    padded = F.pad(x, (padding, padding, padding, padding), value=fill) if padding else x
    dy = torch.randint(0, 2 * padding + 1, (batch, 1), generator=generator, device=device)
    dx = torch.randint(0, 2 * padding + 1, (batch, 1), generator=generator, device=device)
    rows = dy + torch.arange(height, device=device)
    cols = dx + torch.arange(width, device=device)
    if hflip:
        flip = torch.randint(0, 2, (batch, 1), generator=generator, device=device).bool()
        cols = torch.where(flip, cols.flip(1), cols)
    # flat positions in the padded image, [B, H * W]; one gather, cheaper than advanced indexing on the CPU
    index = (rows[:, :, None] * padded.shape[-1] + cols[:, None, :]).view(batch, 1, height * width)
    out = padded.flatten(2).gather(2, index.expand(batch, channels, height * width))
    return out.view(batch, channels, height, width)


class Augment:
    """Per-batch seeded random crop + flip: the randomness of batch ``b`` of ``epoch`` on ``rank`` depends only on
    ``(seed, epoch, rank, b)``."""

    def __init__(self, padding: int, hflip: bool, fill: float, seed: int, rank: int) -> None:
        self.padding = padding
        self.hflip = hflip
        self.fill = fill
        self.seed = seed
        self.rank = rank

    def __call__(self, x: Tensor, epoch: int, batch: int) -> Tensor:
        generator = _generator(mix_seed(self.seed, 1, epoch, self.rank, batch), x.device)
        return random_crop_flip(x, self.padding, self.hflip, self.fill, generator)


class ImageTensorDataset(Dataset[Batch]):
    """In-memory ``uint8`` images ``[N, 1, H, W]`` and ``int64`` labels, normalized on access.

    ``__getitems__`` (used by :class:`~torch.utils.data.DataLoader` for whole batches) fetches a batch with one
    indexing op and returns it already collated; pair it with ``collate_fn=identity_collate``.
    """

    def __init__(self, images: Tensor, labels: Tensor, normalize: Normalize) -> None:
        self.images = images
        self.labels = labels
        self.normalize = normalize

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, index: int) -> Batch:
        return self.normalize(self.images[index]), self.labels[index]

    def __getitems__(self, indices: list[int]) -> Batch:
        index = torch.as_tensor(indices, dtype=torch.long)
        return self.normalize(self.images[index]), self.labels[index]


def identity_collate(batch: Batch) -> Batch:
    """Collate for :class:`ImageTensorDataset`: its ``__getitems__`` already returns a batch."""
    return batch


class EpochShardSampler(DistributedSampler):
    """Per-epoch permutation of ``range(size)``, seeded by ``(seed, epoch)``, sharded by rank, resumable by batch.

    Every rank draws the same permutation and takes every ``world_size``-th element starting at its rank, so the
    shards are disjoint. ``uneven="drop"`` drops the last ``size % world_size`` elements of the permutation (a
    different few every epoch) so every rank gets ``size // world_size`` samples; ``uneven="pad"`` repeats the first
    few instead (like :class:`~torch.utils.data.distributed.DistributedSampler`, for evaluation).

    It subclasses :class:`~torch.utils.data.distributed.DistributedSampler` on purpose: Lightning's
    ``use_distributed_sampler`` leaves a loader alone when its sampler already is one, so this sharding (and its
    resumable state) is kept under DDP instead of being replaced.
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        uneven: Literal["drop", "pad"] = "drop",
    ) -> None:
        super().__init__(range(size), num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed)
        self.size = size
        self.batch_size = batch_size
        self.uneven = uneven
        per_rank = size // world_size if uneven == "drop" else -(-size // world_size)
        self.num_samples = per_rank
        self.total_size = per_rank * world_size
        self.resume_batch = 0  # batches of ``self.epoch`` to skip on the next iteration (set by a checkpoint)

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at every epoch start; a new epoch forgets a pending resume position."""
        if epoch != self.epoch:
            self.resume_batch = 0
        self.epoch = epoch

    def indices(self, device: torch.device | None = None) -> Tensor:
        """This rank's sample indices for ``self.epoch``, computed on ``device`` (CPU by default)."""
        device = torch.device("cpu") if device is None else device
        if self.shuffle:
            order = torch.randperm(self.size, generator=_generator(mix_seed(self.seed, 0, self.epoch), device),
                                   device=device)  # fmt: skip
        else:
            order = torch.arange(self.size, device=device)
        if self.total_size > self.size:  # pad: repeat from the start
            order = order.repeat(-(-self.total_size // max(self.size, 1)))
        return order[self.rank : self.total_size : self.num_replicas]

    def take_resume_batch(self) -> int:
        start, self.resume_batch = self.resume_batch, 0
        return start

    def __iter__(self) -> Iterator[int]:
        start = self.take_resume_batch() * self.batch_size
        return iter(self.indices()[start:].tolist())

    def __len__(self) -> int:
        return self.num_samples


class _ResumableMixin:
    """``state_dict`` / ``load_state_dict`` for a loader whose ``sampler`` is an :class:`EpochShardSampler`.

    The state is ``{"epoch", "batches"}``: the epoch and how many of its batches were handed out. Loading it makes
    the next iteration start at that batch of that epoch (unless Lightning moves on to another epoch first).
    """

    sampler: EpochShardSampler
    _position: tuple[int, int]

    def state_dict(self) -> dict[str, int]:
        epoch, batches = self._position
        if epoch != self.sampler.epoch:  # a new epoch was set but not started yet
            epoch, batches = self.sampler.epoch, self.sampler.resume_batch
        return {"epoch": epoch, "batches": batches}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        epoch, batches = int(state_dict.get("epoch", 0)), int(state_dict.get("batches", 0))
        self.sampler.epoch = epoch
        self.sampler.resume_batch = batches
        self._position = (epoch, batches)


class ResumableDataLoader(_ResumableMixin, DataLoader):
    """A :class:`~torch.utils.data.DataLoader` over an :class:`ImageTensorDataset` with an :class:`EpochShardSampler`,
    optional per-batch seeded augmentation in the main process, and Lightning-compatible resumable state."""

    def __init__(
        self,
        dataset: ImageTensorDataset,
        batch_size: int,
        sampler: EpochShardSampler,
        augment: Callable[[Tensor, int, int], Tensor] | None = None,
        drop_last: bool = False,
        num_workers: int = 0,
    ) -> None:
        super().__init__(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=drop_last,
            collate_fn=identity_collate,
            num_workers=num_workers,
            persistent_workers=num_workers > 0,
            # Its own generator: a DataLoader draws its workers' base seed when its iterator starts, from the
            # global RNG without one, which would shift the global stream (dropout) by one draw per epoch and make
            # a mid-epoch resume draw once more than the uninterrupted run.
            generator=torch.Generator(),
        )
        self.augment = augment
        self._position = (sampler.epoch, 0)

    def __iter__(self) -> Iterator[Batch]:  # type: ignore[override]
        sampler = self.sampler
        epoch, start = sampler.epoch, sampler.resume_batch  # read lazily: Lightning sets the epoch after iter()
        self.generator.manual_seed(mix_seed(sampler.seed, 2, epoch, sampler.rank))  # workers' seeds: per epoch
        for index, (x, y) in enumerate(super().__iter__(), start):
            if self.augment is not None:
                x = self.augment(x, epoch, index)
            self._position = (epoch, index + 1)
            yield x, y


class DeviceLoader(_ResumableMixin):
    """Batches sliced from tensors that already live on the device: shuffling (a device generator), indexing,
    normalization and augmentation all run there, with no worker processes and no host-device copies.

    Same sampling, sharding, augmentation seeding and resumable state as :class:`ResumableDataLoader`; on CPU the
    two give identical batches.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        batch_size: int,
        sampler: EpochShardSampler,
        normalize: Normalize,
        augment: Callable[[Tensor, int, int], Tensor] | None = None,
        drop_last: bool = False,
    ) -> None:
        self.images = images
        self.labels = labels
        self.batch_size = batch_size
        self.sampler = sampler  # Lightning calls ``sampler.set_epoch`` at every epoch start
        self.batch_sampler = None  # Lightning's ``_is_dataloader_shuffled`` reads it whenever ``sampler`` exists
        self.normalize = normalize
        self.augment = augment
        self.drop_last = drop_last
        self._position = (sampler.epoch, 0)

    def __len__(self) -> int:
        samples = len(self.sampler)
        return samples // self.batch_size if self.drop_last else -(-samples // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        sampler = self.sampler
        epoch, start = sampler.epoch, sampler.take_resume_batch()
        order = sampler.indices(self.images.device)
        for index in range(start, len(self)):
            chunk = order[index * self.batch_size : (index + 1) * self.batch_size]
            x = self.normalize(self.images[chunk])
            if self.augment is not None:
                x = self.augment(x, epoch, index)
            self._position = (epoch, index + 1)
            yield x, self.labels[chunk]
