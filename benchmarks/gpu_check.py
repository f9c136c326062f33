"""The one-command GPU check: every CUDA path of the package run once, with its target, in about 8 minutes.

``make gpu-check`` (or ``python benchmarks/gpu_check.py``) on one H100/H200, in this order, each step within what is
left of ``--budget`` seconds (a step whose estimate no longer fits is recorded as skipped, not run):

1. ``sync_debug_tests``: ``pytest -k cuda tests``: the GPU-only tests, among them the CUDA sync-debug ones
   (``tests/callbacks/test_no_host_sync.py``: every callback under ``torch.cuda.set_sync_debug_mode("error")`` on
   the steps that do not log), fp32 and bf16. Target: all pass, none skipped.
2. ``trainer_vs_plain``: ``trainer_vs_plain.py --settings gpu-resnet18`` (bf16-mixed, channels_last, on-device
   data). Target: our Trainer setup <= 1.03x the hand-written loop.
3. ``monitors_resnet18``: ``overhead.py --suite monitors --settings gpu-resnet18``: the four monitors on a ResNet-18
   step. Target: the median over the rounds of the mean step's ratio <= 1.01x no callback.
4. ``tta_resnet``, ``tta_mlp``, ``tta_inception``: ``time_to_accuracy.py`` with each model's recipe
   (``examples/configs/*.yaml``, bf16 on-device data), ``--seeds`` seeds (1 by default, to fit the budget; the
   targets are for the mean of >= 3 seeds). Targets: ResNet >= 95.0% test accuracy in <= 30 s of ``fit``; MLP >= 91%
   in <= 10 s; Inception >= 94.0%.
5. ``compile``: ``time_to_accuracy.py --models mlp --compile`` for 2 epochs: the ``torch.compile`` path under bf16.
   Target: it trains (>= 80% test accuracy after 2 epochs); its seconds are recorded.

It writes ``gpu_check.json`` (every step: status, seconds, figures, target, met) and ``gpu_check.md`` (the same as
a table) into ``--out`` after every step, so a run cut short still leaves what it measured; ``--save`` also writes
the JSON to ``benchmarks/results/gpu_check.json`` for ``tables.py``.

``--dry-run`` runs the same steps on the CPU at toy sizes (one file of GPU tests, which skip; tiny models, one or two
batches; the compile step traces with dynamo's ``eager`` backend, as inductor's C++ build takes ~40 s on a small
CPU). Targets are not judged in a dry run (``met`` is null); ``make test`` runs it (``tests/test_benchmarks.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import _timing
import tables
import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "logs" / "gpu_check"


@dataclass(frozen=True)
class Step:
    """One check: its name, target, seconds it is expected to take on one H100/H200, and how to run it."""

    name: str
    target: str
    estimate_s: float
    run: Callable[[bool, argparse.Namespace], dict[str, Any]]  # (dry, args) -> {"figures": ..., "met": ...}


def _pytest(dry: bool, args: argparse.Namespace) -> dict[str, Any]:
    paths = ["tests/callbacks/test_no_host_sync.py"] if dry else ["tests"]
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "junit.xml"
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "cuda", *paths,
                   f"--junitxml={report}"]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        # a hung CUDA test must not eat the whole budget (pytest-timeout also ends a single test after 300 s)
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False, timeout=240)
        print(done.stdout[-4000:], done.stderr[-2000:], sep="\n")
        if not report.exists():
            raise RuntimeError(f"pytest wrote no report (exit {done.returncode}): {done.stderr[-500:]}")
        suite = ElementTree.parse(report).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}  # type: ignore[union-attr]
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    if counts["tests"] == 0:
        raise RuntimeError(f"pytest selected no test with -k cuda in {paths}")
    if counts["failures"] or counts["errors"]:
        raise RuntimeError(f"GPU tests failed: {counts}")
    return {"figures": {**counts, "command": " ".join(command[1:-1])}, "met": None if dry else counts["skipped"] == 0}


def _trainer_vs_plain(dry: bool, args: argparse.Namespace) -> dict[str, Any]:
    import trainer_vs_plain

    argv = ["--settings", "cpu-mlp", "--epochs", "2", "--rounds", "1", "--train-subset", "64"] if dry else [
        "--settings", "gpu-resnet18", "--epochs", "3", "--rounds", "3"]  # fmt: skip
    (result,) = trainer_vs_plain.main(argv)["results"]
    figures = {key: result[key] for key in ("ours_over_plain", "minimal_over_plain", "epoch_seconds")}
    return {
        "figures": {**figures, "argv": argv},
        "met": None if dry else result["ours_over_plain"]["median"] <= trainer_vs_plain.TARGET_GPU,
    }


def _monitors(dry: bool, args: argparse.Namespace) -> dict[str, Any]:
    import overhead

    argv = (
        [
            "--suite",
            "monitors",
            "--settings",
            "cpu-mlp",
            "--steps",
            "4",
            "--warmup",
            "1",
            "--epoch-steps",
            "2",
            "--rounds",
            "1",
        ]
        if dry
        else ["--suite", "monitors", "--settings", "gpu-resnet18", "--steps", "200"]
    )
    (setting,) = overhead.main(argv)["monitors"]["settings"]
    row = next(row for row in setting["rows"] if row["name"] == overhead.FOUR)
    figures = {key: row[key] for key in ("step_ms_mean", "step_ms_median", "vs_off", "target")}
    return {"figures": {**figures, "argv": argv}, "met": None if dry else row["met"]}


def _time_to_accuracy(
    model: str, accuracy: float, seconds: float | None, toy: list[str], compile: bool = False
) -> Callable[[bool, argparse.Namespace], dict[str, Any]]:
    """A step running ``time_to_accuracy.py`` on ``model``; ``toy``: the dry run's ``--set`` values (tiny sizes)."""

    def run(dry: bool, args: argparse.Namespace) -> dict[str, Any]:
        import time_to_accuracy

        seeds = [str(seed) for seed in range(args.seeds)]
        argv = ["--models", model, "--seeds", *seeds, *(["--compile"] if compile else [])]
        if dry:
            # one --set (a second one would replace the first)
            argv += ["--device", "cpu", "--epochs", "1", "--limit-batches", "1", "--set", "batch_size=32", *toy]
        elif compile:
            argv += ["--epochs", "2"]
        with _eager_compile() if dry and compile else contextlib.nullcontext():
            summary = time_to_accuracy.main(argv)["models"][model]["summary"]
        figures = {key: summary[key] for key in ("test_acc_mean", "test_acc_std", "fit_seconds_mean", "seeds")}
        met = summary["test_acc_mean"] >= accuracy and (seconds is None or summary["fit_seconds_mean"] <= seconds)
        return {"figures": {**figures, "argv": argv}, "met": None if dry else met}

    return run


@contextlib.contextmanager
def _eager_compile() -> Iterator[None]:
    """Dry run only: ``nn.Module.compile`` traces with dynamo's eager backend (no C++ build on a small CPU)."""
    original = torch.nn.Module.compile

    def eager(self: torch.nn.Module, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **{**kwargs, "backend": "eager"})

    try:
        with mock.patch.object(torch.nn.Module, "compile", eager):
            yield
    finally:
        torch._dynamo.reset()  # drop the traced graphs (a test process goes on)


STEPS = [
    Step("sync_debug_tests", "all GPU tests pass, none skipped", 90, _pytest),
    Step("trainer_vs_plain", "our Trainer setup <= 1.03x the hand-written loop (ResNet-18, bf16)", 90,
         _trainer_vs_plain),
    Step("monitors_resnet18", "the four monitors <= 1.01x the mean ResNet-18 step", 90, _monitors),
    Step("tta_resnet", "ResNet >= 95.0% test accuracy in <= 30 s of fit", 45,
         _time_to_accuracy("resnet", 0.95, 30.0, ["resnet.stages=[1]", "resnet.width=4"])),
    Step("tta_mlp", "MLP >= 91% test accuracy in <= 10 s of fit", 30,
         _time_to_accuracy("mlp", 0.91, 10.0, ["mlp.hidden_sizes=[32]"])),
    Step("tta_inception", "Inception >= 94.0% test accuracy", 75,
         _time_to_accuracy("inception", 0.94, None, ["inception.stages=[1]", "inception.width=4",
                                                     "inception.stem_channels=4"])),
    Step("compile", "torch.compile (bf16) trains the MLP to >= 80% test accuracy in 2 epochs", 45,
         _time_to_accuracy("mlp", 0.80, None, ["mlp.hidden_sizes=[32]"], compile=True)),
]  # fmt: skip


def write(payload: dict[str, Any], args: argparse.Namespace, argv: list[str], started: dict[str, float]) -> Any:
    """Stamp the check's record (:func:`_timing.finish`); write it into ``--out`` (and ``results/`` with ``--save``)."""
    record = _timing.finish("gpu_check", ["gpu_check.py", *argv], payload, started, args.save)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(record, indent=1) + "\n")
    (out / "gpu_check.md").write_text(tables.render(record) + "\n")
    return record


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="the same steps on the CPU at toy sizes")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--budget", type=float, default=480.0, help="seconds for all steps (default: 8 minutes)")
    parser.add_argument("--seeds", type=int, default=1, help="seeds per time-to-accuracy model")
    parser.add_argument("--steps", nargs="+", choices=[s.name for s in STEPS], default=[s.name for s in STEPS])
    parser.add_argument("--save", action="store_true", help="also write benchmarks/results/gpu_check.json")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        parser.error("no CUDA GPU (torch.cuda.is_available() is False): run with --dry-run for the CPU toy run")
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    started, record = _timing.start(), {}
    payload: dict[str, Any] = {"dry_run": args.dry_run, "budget_s": args.budget, "steps": []}
    start = time.perf_counter()
    for step in (s for s in STEPS if s.name in args.steps):
        entry: dict[str, Any] = {"name": step.name, "target": step.target, "figures": {}, "met": None}
        elapsed = time.perf_counter() - start
        if not args.dry_run and elapsed + step.estimate_s > args.budget:
            entry.update(status=f"skipped: {elapsed:.0f} s + ~{step.estimate_s:.0f} s exceeds the budget", seconds=0.0)
        else:
            print(f"== {step.name}: {step.target}", flush=True)
            t0 = time.perf_counter()
            try:
                entry.update(step.run(args.dry_run, args), status="ran")
            except Exception as err:  # a failed step is recorded, the others still run
                entry.update(status="error", error=f"{type(err).__name__}: {err}"[:500])
            entry["seconds"] = time.perf_counter() - t0
        payload["steps"].append(entry)
        record = write(payload, args, argv, started)
    print(tables.render(record))
    return record


if __name__ == "__main__":
    main()
