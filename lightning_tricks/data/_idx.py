"""Reading MNIST-style IDX files (gzipped or raw) into uint8 tensors, with header validation and a per-process cache.

The IDX format (LeCun et al., http://yann.lecun.com/exdb/mnist/) is a big-endian header followed by raw ``uint8``
data: image files start with the magic number 2051, the count, rows and columns; label files with 2049 and the count.
torchvision's ``read_image_file`` / ``read_label_file`` only read uncompressed files and check the header with
``assert``; here the file is decompressed in memory, the header is parsed and checked with :mod:`struct` (magic
number, dimensions, declared count against the byte size) and the payload is wrapped with :func:`torch.frombuffer`
without a copy. Every problem raises :class:`CorruptDatasetFileError` naming the file.
"""

from __future__ import annotations

import functools
import gzip
import struct
import zlib
from pathlib import Path

import torch
from torch import Tensor

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049


class CorruptDatasetFileError(ValueError):
    """An IDX file is truncated, not gzip, has a wrong magic number, or does not match its partner file."""


def _read_bytes(path: Path) -> bytearray:
    """Read ``path``, decompressing it in memory when its name ends in ``.gz``."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as handle:
                return bytearray(handle.read())
        return bytearray(path.read_bytes())
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise CorruptDatasetFileError(
            f"{path}: cannot decompress ({type(error).__name__}: {error}). The file is truncated or corrupted; "
            "delete it and fetch it again."
        ) from error


def _check_size(path: Path, data: bytearray, header: int, count: int, item: int, what: str) -> None:
    expected = header + count * item
    if len(data) < expected:
        raise CorruptDatasetFileError(
            f"{path}: truncated: the header declares {count} {what} ({expected} bytes) but the file holds only "
            f"{len(data)} bytes. Delete it and fetch it again."
        )
    if len(data) > expected:
        raise CorruptDatasetFileError(
            f"{path}: corrupted: the header declares {count} {what} ({expected} bytes) but the file holds "
            f"{len(data)} bytes."
        )


def _check_magic(path: Path, data: bytearray, expected: int, header: int) -> None:
    if len(data) < header:
        raise CorruptDatasetFileError(
            f"{path}: truncated: {len(data)} bytes, shorter than the {header}-byte IDX header."
        )
    (magic,) = struct.unpack_from(">i", data, 0)
    if magic != expected:
        kind = "image" if expected == IMAGES_MAGIC else "label"
        raise CorruptDatasetFileError(
            f"{path}: wrong magic number {magic}, expected {expected} for an IDX {kind} file. "
            "Is this the right file (images vs labels), or is it corrupted?"
        )


def parse_images(path: Path, data: bytearray, shape: tuple[int, int] = (28, 28)) -> Tensor:
    """Parse IDX image bytes into a ``uint8`` tensor ``[N, rows, cols]`` sharing memory with ``data``."""
    _check_magic(path, data, IMAGES_MAGIC, 16)
    count, rows, cols = struct.unpack_from(">iii", data, 4)
    if (rows, cols) != shape:
        raise CorruptDatasetFileError(f"{path}: images are {rows}x{cols}, expected {shape[0]}x{shape[1]}.")
    _check_size(path, data, 16, count, rows * cols, "images")
    return torch.frombuffer(data, dtype=torch.uint8, offset=16).view(count, rows, cols)


def parse_labels(path: Path, data: bytearray, num_classes: int = 10) -> Tensor:
    """Parse IDX label bytes into an ``int64`` tensor ``[N]``, checking every label is in ``[0, num_classes)``."""
    _check_magic(path, data, LABELS_MAGIC, 8)
    (count,) = struct.unpack_from(">i", data, 4)
    _check_size(path, data, 8, count, 1, "labels")
    labels = torch.frombuffer(data, dtype=torch.uint8, offset=8).long()
    if count and int(labels.max()) >= num_classes:
        bad = int((labels >= num_classes).nonzero()[0, 0])
        raise CorruptDatasetFileError(
            f"{path}: label {int(labels[bad])} at index {bad} is out of range [0, {num_classes})."
        )
    return labels


@functools.lru_cache(maxsize=8)
def _load_pair_cached(images: str, labels: str, _stamp: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    images_path, labels_path = Path(images), Path(labels)
    x = parse_images(images_path, _read_bytes(images_path))
    y = parse_labels(labels_path, _read_bytes(labels_path))
    if x.shape[0] != y.shape[0]:
        raise CorruptDatasetFileError(
            f"{images_path} holds {x.shape[0]} images but {labels_path} holds {y.shape[0]} labels; the two files "
            "do not belong together."
        )
    return x, y


def load_pair(images: Path, labels: Path) -> tuple[Tensor, Tensor]:
    """Load an image file and its label file: ``uint8 [N, 28, 28]`` and ``int64 [N]``.

    Parsed once per process: the result is cached by path, size and modification time (a replaced file is re-read).
    The returned tensors are shared by every caller and must not be modified in place.

    Raises:
        CorruptDatasetFileError: a file is truncated, not valid gzip, has a wrong magic number or wrong dimensions,
            a label is out of range, or the image and label counts differ. The message names the file.
    """
    stamp = tuple(v for p in (images, labels) for v in (p.stat().st_size, p.stat().st_mtime_ns))
    return _load_pair_cached(str(images.resolve()), str(labels.resolve()), stamp)
