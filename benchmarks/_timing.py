"""Shared helpers of the benchmark scripts: device settings, clocks, interleaved repeats, quiet Lightning, tables.

The rules every benchmark here follows:

- variants are measured side by side in one process, interleaved (every variant once per round, the order rotating
  from round to round so drift and neighbours' load hit all of them alike), and summarized by medians;
- on a GPU, ``torch.cuda.synchronize()`` is called only at timing boundaries (never inside the timed work);
- on the CPU the default clock is the process CPU time (``time.process_time``), which ignores the time this process
  waits for a core on a shared machine; ``--clock wall`` switches to ``time.perf_counter``.

``ema_overhead.py`` still has its own (non-rotating) interleaving loop.
"""

from __future__ import annotations

import argparse
import logging
import platform
import statistics
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import torch

ClockName = Literal["process", "wall"]
T = TypeVar("T")


@dataclass(frozen=True)
class DeviceSettings:
    """Where and how a benchmark runs: the GPU settings (bf16-mixed, channels_last, on-device data) or plain CPU."""

    device: torch.device
    precision: str
    channels_last: bool
    on_device: bool

    @property
    def accelerator(self) -> str:
        return self.device.type

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self) -> Any:
        """The autocast context of a hand-written loop matching ``precision`` (a no-op in fp32)."""
        enabled = self.precision == "bf16-mixed"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)


def device_settings(device: str = "auto", precision: str | None = None) -> DeviceSettings:
    """CUDA when present (``bf16-mixed``, channels_last, on-device data), else the CPU in fp32.

    Args:
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        precision: override of the Trainer precision (``"32-true"`` or ``"bf16-mixed"``).

    Raises:
        ValueError: an unknown ``device`` or ``precision``, or ``"cuda"`` without a GPU.
    """
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"Expected `device` to be one of ['auto', 'cpu', 'cuda'], but got {device!r}.")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("`device='cuda'` was asked for, but torch.cuda.is_available() is False.")
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if precision is None:
        precision = "bf16-mixed" if cuda else "32-true"
    if precision not in ("32-true", "bf16-mixed"):
        raise ValueError(f"Expected `precision` to be one of ['32-true', 'bf16-mixed'], but got {precision!r}.")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    return DeviceSettings(torch.device("cuda" if cuda else "cpu"), precision, channels_last=cuda, on_device=cuda)


def hardware(settings: DeviceSettings) -> str:
    """A one-line description of the hardware the numbers come from."""
    if settings.cuda:
        return torch.cuda.get_device_name()
    return f"CPU ({platform.processor() or platform.machine()}), {torch.get_num_threads()} torch threads"


def make_clock(settings: DeviceSettings, clock: ClockName = "process") -> Callable[[], float]:
    """A ``now()`` that synchronizes the GPU first (timing boundaries only); on the CPU ``clock`` picks the timer.

    The GPU always uses wall time (the process CPU time does not see GPU work).
    """
    if settings.cuda:

        def now() -> float:
            torch.cuda.synchronize()  # timing boundary: wait for the queued GPU work
            return time.perf_counter()

        return now
    return time.process_time if clock == "process" else time.perf_counter


class Batches:
    """A sized iterable of ready batches (Lightning would read a plain list as a collection of loaders)."""

    def __init__(self, batches: list[tuple[torch.Tensor, torch.Tensor]], steps: int) -> None:
        self.batches, self.steps = batches, steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return (self.batches[i % len(self.batches)] for i in range(self.steps))


def interleave(names: Sequence[str], repeats: int, run: Callable[[str, int], T]) -> dict[str, list[T]]:
    """Call ``run(name, round)`` for every name in every round, rotating the order each round."""
    results: dict[str, list[T]] = {name: [] for name in names}
    for r in range(repeats):
        shift = r % len(names)
        for name in [*names[shift:], *names[:shift]]:
            results[name].append(run(name, r))
    return results


def add_threads_option(parser: argparse.ArgumentParser, default: int = 1) -> None:
    """Add ``--threads`` (torch CPU threads; 0 leaves torch's default); :func:`apply_threads` applies it."""
    why = " 1 by default: on a shared machine idle OpenMP threads spin, which the process clock would count"
    parser.add_argument(
        "--threads",
        type=int,
        default=default,
        help="torch CPU threads (0: torch's default)." + (why if default else ""),
    )


def apply_threads(threads: int) -> None:
    """``torch.set_num_threads(threads)`` when ``threads`` > 0."""
    if threads > 0:
        torch.set_num_threads(threads)


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def quiet_lightning() -> None:
    """Silence Lightning's info messages and warnings (they would drown the table)."""
    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub markdown table; floats printed with 3 decimals (4 significant digits under 1e-2)."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}" if abs(value) < 1e-2 else f"{value:.3f}"
        return str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
