"""Shared helpers of the benchmark scripts: device settings, clocks, interleaved repeats, quiet Lightning, tables.

The rules every benchmark here follows:

- variants are measured side by side in one process, interleaved (every variant once per round, the order rotating
  from round to round so drift and neighbours' load hit all of them alike), and summarized by medians;
- on a GPU, ``torch.cuda.synchronize()`` is called only at timing boundaries (never inside the timed work);
- on the CPU the default clock is the process CPU time (``time.process_time``), which ignores the time this process
  waits for a core on a shared machine; ``--clock wall`` switches to ``time.perf_counter``.

- every ratio is printed beside its noise floor: the same ratio for a do-nothing callback (:class:`DoNothing`)
  measured the same way; a ratio below ``1 - noise`` is flagged as implausible and never called "ok"
  (:func:`verdict`).
"""

from __future__ import annotations

import argparse
import logging
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import lightning.pytorch as pl
import torch

from lightning_tricks import _cuda_check, _threads

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


def add_threads_option(parser: argparse.ArgumentParser, default: int | None = 1) -> None:
    """Add ``--threads`` (torch CPU threads; 0: torch's default); :func:`apply_threads` applies it.

    ``default=None`` follows :mod:`lightning_tricks._threads` (``OMP_NUM_THREADS`` when set, else 1 on 2 cores).
    """
    why = " 1 by default: on a shared machine idle OpenMP threads spin, which the process clock would count"
    parser.add_argument(
        "--threads",
        type=int,
        default=default,
        help="torch CPU threads (0: torch's default)." + (why if default == 1 else ""),
    )


def apply_threads(threads: int | None) -> int:
    """Set torch's CPU threads by :func:`lightning_tricks._threads.apply_threads`; say so once on stderr.

    (Standard error: standard output carries the benchmark's JSON.) Also skips Lightning's NVML-based CUDA check
    where NVML cannot be loaded, as ``lightning-tricks`` and ``Classifier.setup`` do (:mod:`lightning_tricks.
    _cuda_check`), before any variant runs: every variant, the hand-written loop included, runs with the same
    setting (a plain PyTorch script, without Lightning's variable, takes the same path).
    """
    _cuda_check.skip_failing_nvml_check()
    return _threads.apply_threads(threads, announce=lambda message: print(message, file=sys.stderr))


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


# --- Noise floor and verdicts: a ratio is read against a do-nothing callback measured the same way. ---


class DoNothing(pl.Callback):
    """A callback whose per-step and per-epoch hooks do nothing: ``do-nothing / off`` is the noise floor of a ratio
    (what the hook dispatch, and the rounds' drift, cost when no work is done)."""

    def on_train_batch_start(self, *args: Any) -> None:
        pass

    def on_before_backward(self, *args: Any) -> None:
        pass

    def on_after_backward(self, *args: Any) -> None:
        pass

    def on_before_optimizer_step(self, *args: Any) -> None:
        pass

    def on_before_zero_grad(self, *args: Any) -> None:
        pass

    def on_train_batch_end(self, *args: Any) -> None:
        pass

    def on_train_epoch_start(self, *args: Any) -> None:
        pass

    def on_train_epoch_end(self, *args: Any) -> None:
        pass


def noise_floor(off: Sequence[float], null: Sequence[float], pooled_ratio: float) -> float:
    """The noise of an ``on / off`` ratio: the largest ``|do-nothing / off - 1|``, per round and pooled.

    Args:
        off: one figure per round (e.g. each fit's mean step) with nothing on.
        null: the same figure per round with :class:`DoNothing` on (same rounds, same order).
        pooled_ratio: ``do-nothing / off`` of the pooled figures (what the reported ratios are).
    """
    per_round = [abs(n / o - 1.0) for o, n in zip(off, null, strict=True) if o > 0]
    return max([abs(pooled_ratio - 1.0), *per_round])


def verdict(ratio: float, noise: float, target: float | None = None) -> tuple[str, str | None]:
    """``(text, warning)`` for an ``on / off`` ratio: no "ok" for an implausible one.

    A ratio below ``1 - noise`` says that adding work made the step faster by more than the measured noise: the
    measurement, not the callback, is at fault (drift, a neighbour's load, too few repeats), so it is flagged and
    never reported as meeting a target.
    """
    if ratio < 1.0 - noise:
        return "implausible", (
            f"ratio {ratio:.3f} is below 1 - noise ({1.0 - noise:.3f}): faster with the work than without it by more "
            "than the measured noise; rerun with more --repeats / --steps on a quieter machine"
        )
    if target is None:
        return "-", None
    return ("ok" if ratio <= target else "over"), None


def warn(message: str) -> None:
    """Print a measurement warning to stderr (``quiet_lightning`` silences the ``warnings`` module)."""
    print(f"WARNING: {message}", file=sys.stderr, flush=True)


NULL = "do-nothing"


def step_ratios(runs: dict[str, list[list[float]]], off: str = "off") -> dict[str, dict[str, float]]:
    """Per configuration: median and mean step (ms), their ``on / off`` ratios and noise floors.

    ``runs[name]`` holds one list of step seconds per round (warm-up dropped), the rounds in the same order for every
    name. The median ratio is of the pooled median steps (the typical step); the mean ratio is of the medians over the
    rounds of each fit's mean step (amortized: logging steps and per-epoch hooks included). The noise floors come
    from ``runs[NULL]`` (:func:`noise_floor`); without it they are 0 and only a ratio below 1 is flagged.
    """
    medians = {name: [statistics.median(run) for run in rounds] for name, rounds in runs.items()}
    means = {name: [statistics.fmean(run) for run in rounds] for name, rounds in runs.items()}
    pooled = {name: statistics.median(t for run in rounds for t in run) for name, rounds in runs.items()}
    mean = {name: statistics.median(values) for name, values in means.items()}
    noise_median = noise_mean = 0.0
    if NULL in runs:
        noise_median = noise_floor(medians[off], medians[NULL], pooled[NULL] / pooled[off])
        noise_mean = noise_floor(means[off], means[NULL], mean[NULL] / mean[off])
    return {
        name: {
            "off_median_ms": 1e3 * pooled[off],
            "on_median_ms": 1e3 * pooled[name],
            "off_mean_ms": 1e3 * mean[off],
            "on_mean_ms": 1e3 * mean[name],
            "ratio_median": pooled[name] / pooled[off],
            "ratio_mean": mean[name] / mean[off],
            "noise_median": noise_median,
            "noise_mean": noise_mean,
        }
        for name in runs
        if name != off
    }


def judge(row: dict[str, Any], target: float | None = None) -> dict[str, Any]:
    """Add ``verdict`` (``ok`` / ``over`` / ``implausible`` / ``-``), ``warning`` and ``within_noise`` to a
    :func:`step_ratios` row.

    The target applies to the mean ratio; either ratio below its noise floor makes the row implausible (and warns).
    ``within_noise``: the mean ratio is within its noise of the target, so "ok" or "over" is not settled by this run.
    """
    _, median_warning = verdict(row["ratio_median"], row["noise_median"])
    text, mean_warning = verdict(row["ratio_mean"], row["noise_mean"], target)
    warning = None
    if mean_warning or median_warning:
        warning = f"mean step: {mean_warning}" if mean_warning else f"median step: {median_warning}"
    within = target is not None and abs(row["ratio_mean"] - target) <= row["noise_mean"]
    row.update(target=target, verdict="implausible" if warning else text, warning=warning, within_noise=within)
    if warning:
        warn(f"{row.get('name', '')}: {warning}")
    return row


def ratio_cell(ratio: float, noise: float) -> str:
    """``1.043 ± 0.012``: a ratio beside its noise floor."""
    return f"{ratio:.3f} ± {noise:.3f}"


def target_cell(row: dict[str, Any]) -> str:
    """``<= 1.05 (ok)``, ``<= 1.05 (over, within noise)``, ``implausible``, or ``-`` for a :func:`judge` row."""
    if row["verdict"] == "implausible":
        return "implausible (see warning)"
    within = ", within noise" if row.get("within_noise") else ""
    return "-" if row["target"] is None else f"<= {row['target']} ({row['verdict']}{within})"


def ratio_table(payload: dict[str, Any], key: str, label: str) -> str:
    """The markdown table of an overhead script's JSON line: one row per ``payload["results"]`` entry (named by
    ``key``), ratios beside their noise floors, then the notes."""
    header = ["setting", label, "hardware, precision, clock", "off ms/step (median / mean)",
              "on ms/step (median / mean)", "on/off median ± noise", "on/off mean ± noise",
              "target (mean)"]  # fmt: skip
    rows = [
        [r["setting"], r[key], ", ".join(str(r[k]) for k in ("hardware", "precision", "clock") if k in r),
         f"{r['off_median_ms']:.3f} / {r['off_mean_ms']:.3f}", f"{r['on_median_ms']:.3f} / {r['on_mean_ms']:.3f}",
         ratio_cell(r["ratio_median"], r["noise_median"]), ratio_cell(r["ratio_mean"], r["noise_mean"]),
         target_cell(r)]
        for r in payload["results"]
    ]  # fmt: skip
    return "\n".join([markdown_table(header, rows), *(f"Note: {note}" for note in payload["notes"])])
