"""What the benchmarks share: where they run, the one clock, interleaved rounds, and the record of each result.

How every benchmark here measures:

- variants run side by side in one process, interleaved (:func:`interleave`: every variant once per round, the order
  rotating from round to round), so drift and the neighbours' load hit all of them alike;
- one clock (:func:`clock`): on the CPU the process CPU time, which leaves out the time the process waits for a core
  on a shared machine (it counts every thread of the process, so the benchmarks default to one torch thread: idle
  OpenMP threads spinning at a barrier would be counted); on a GPU the wall time, with ``torch.cuda.synchronize()``
  at the timing boundaries only;
- a result is one JSON file, ``benchmarks/results/NAME.json`` (``--save``), stamped with the machine, date, versions,
  threads, load average and the command (:func:`finish`); ``tables.py`` renders those files into
  ``docs/benchmarks.md``, so a figure there is always the rendering of a stored run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import shlex
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import lightning.pytorch as pl
import torch

from lightning_tricks import _cuda_check, _threads

T = TypeVar("T")
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class DeviceSettings:
    """Where and how a benchmark runs: on a GPU bf16-mixed, channels_last and on-device data; on the CPU fp32."""

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
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16-mixed")


def device_settings(device: str = "auto", precision: str | None = None) -> DeviceSettings:
    """CUDA when present (or asked for), else the CPU.

    Raises:
        ValueError: an unknown ``device`` or ``precision``, or ``"cuda"`` without a GPU.
    """
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"Expected `device` to be one of ['auto', 'cpu', 'cuda'], but got {device!r}.")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("`device='cuda'` was asked for, but torch.cuda.is_available() is False.")
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    precision = precision or ("bf16-mixed" if cuda else "32-true")
    if precision not in ("32-true", "bf16-mixed"):
        raise ValueError(f"Expected `precision` to be one of ['32-true', 'bf16-mixed'], but got {precision!r}.")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    return DeviceSettings(torch.device("cuda" if cuda else "cpu"), precision, channels_last=cuda, on_device=cuda)


def clock(settings: DeviceSettings) -> Callable[[], float]:
    """The one clock: process CPU time on the CPU; on a GPU wall time after waiting for the queued work."""
    if not settings.cuda:
        return time.process_time

    def now() -> float:
        torch.cuda.synchronize()  # timing boundary: wait for the queued GPU work
        return time.perf_counter()

    return now


def clock_name(settings: DeviceSettings) -> str:
    return "wall time" if settings.cuda else "process CPU time"


class Batches:
    """A sized iterable of ``steps`` ready batches, cycling (Lightning would read a plain list as several loaders)."""

    def __init__(self, batches: list[tuple[torch.Tensor, torch.Tensor]], steps: int) -> None:
        self.batches, self.steps = batches, steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return (self.batches[i % len(self.batches)] for i in range(self.steps))


def interleave(names: Sequence[str], rounds: int, run: Callable[[str, int], T]) -> dict[str, list[T]]:
    """Call ``run(name, round)`` for every name in every round, rotating the order each round."""
    results: dict[str, list[T]] = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in [*names[shift:], *names[:shift]]:
            results[name].append(run(name, r))
    return results


def ratios(numerators: Sequence[float], denominators: Sequence[float]) -> dict[str, float]:
    """Per-round ratios (round ``i`` of the numerator over round ``i`` of the denominator): median and range."""
    values = [n / d for n, d in zip(numerators, denominators, strict=True)]
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """``--threads`` (torch CPU threads, 1 by default: see the module docstring; 0 for torch's default) and
    ``--save`` (write the result to ``benchmarks/results/``)."""
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--save", action="store_true", help=f"write the result to {RESULTS}/NAME.json")


def begin(threads: int | None) -> dict[str, float]:
    """Set up a benchmark process; return what :func:`finish` needs to record the run.

    Sets torch's threads (by :func:`lightning_tricks._threads.apply_threads`, announced on stderr), skips Lightning's
    NVML-based CUDA check where NVML cannot be loaded (as ``lightning-tricks`` and ``Classifier.setup`` do) before
    any variant runs, so every variant, a hand-written loop included, runs with the same setting, and silences
    Lightning's info messages and warnings.
    """
    _cuda_check.skip_failing_nvml_check()
    _threads.apply_threads(threads, announce=lambda message: print(message, file=sys.stderr))
    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    return start()


def start() -> dict[str, float]:
    """The load average and the clocks at the start of a run (for :func:`finish`)."""
    return {"load": os.getloadavg()[0], "cpu": _cpu_seconds(), "wall": time.perf_counter()}


def _cpu_seconds() -> float:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def finish(
    name: str, command: Sequence[str], payload: dict[str, Any], started: dict[str, float], save: bool
) -> dict[str, Any]:
    """``payload`` stamped with ``benchmark``, ``command`` (the script and its arguments) and ``environment``;
    written to ``results/NAME.json`` if ``save``."""
    environment = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": pl.__version__,
        "threads": torch.get_num_threads(),
        "load_average": [round(started["load"], 2), round(os.getloadavg()[0], 2)],
        "cpu_seconds": round(_cpu_seconds() - started["cpu"], 1),
        "wall_seconds": round(time.perf_counter() - started["wall"], 1),
    }
    shown = shlex.join(["python", f"benchmarks/{command[0]}", *command[1:]])
    record = {"benchmark": name, "command": shown, "environment": environment, **payload}
    if save:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")
    return record
