"""Per-rank result files of ``ddp_spawn`` runs, and a digest to compare tensors across ranks and runs.

Under ``ddp_spawn`` the objects in the test process are not updated by the workers: each rank writes what it saw.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch


def write_rank_json(folder: str | Path, rank: int, record: Any) -> None:
    """Write ``record`` as JSON to ``folder/rank<rank>.json``."""
    (Path(folder) / f"rank{rank}.json").write_text(json.dumps(record))


def read_rank_json(folder: str | Path, world_size: int = 2) -> list[Any]:
    """The records that ranks ``0 .. world_size - 1`` wrote with :func:`write_rank_json`, in rank order."""
    return [json.loads((Path(folder) / f"rank{r}.json").read_text()) for r in range(world_size)]


def write_rank_text(folder: str | Path, rank: int, text: str, prefix: str = "rank") -> None:
    """Write ``text`` to ``folder/<prefix><rank>.txt``."""
    (Path(folder) / f"{prefix}{rank}.txt").write_text(text)


def read_rank_texts(folder: str | Path, prefix: str = "rank", world_size: int = 2) -> list[str]:
    """The texts that ranks ``0 .. world_size - 1`` wrote with :func:`write_rank_text`, in rank order."""
    return [(Path(folder) / f"{prefix}{r}.txt").read_text() for r in range(world_size)]


def tensors_digest(tensors: Iterable[torch.Tensor]) -> str:
    """SHA-256 of the tensors' bytes, in order: equal digests mean bitwise-equal tensors."""
    raw = (t.detach().cpu().reshape(-1).contiguous().view(torch.uint8) for t in tensors)  # bf16 has no numpy dtype
    return hashlib.sha256(b"".join(r.numpy().tobytes() for r in raw)).hexdigest()
